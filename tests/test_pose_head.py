"""The pose guidance head: the differentiable similarity (Umeyama) and the pose solved from 3D
landmarks inside the network, against known transforms, finite differences and FLAME itself."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from flame.layer import FlameLayer
from flame.lbs import batch_rodrigues
from ringnet_tf import camera, procrustes
from ringnet_tf.model import ModelConfig, build_ringnet
from ringnet_tf.trainer import LossConfig, RingNetTrainer
from tests.conftest import make_tiny_model

RNG = np.random.default_rng(0)


def _rotations(n: int) -> tuple[np.ndarray, np.ndarray]:
    rv = RNG.normal(size=(n, 3))
    rv *= (RNG.uniform(0.1, 3.0, n) / np.linalg.norm(rv, axis=1))[:, None]  # angles up to 3 rad
    from scipy.spatial.transform import Rotation  # an independent float64 Rodrigues

    return rv, Rotation.from_rotvec(rv).as_matrix()


def _similar(x, scale, rot, trans):
    return scale[:, None, None] * np.einsum("bij,bnj->bni", rot, x) + trans[:, None]


def test_similarity_recovers_a_known_transform_exactly():
    x = RNG.normal(size=(5, 30, 3))
    _, rot = _rotations(5)
    scale, trans = RNG.uniform(0.2, 5.0, 5), RNG.normal(size=(5, 3))
    s, r, t = procrustes.similarity(tf.constant(x), tf.constant(_similar(x, scale, rot, trans)))
    np.testing.assert_allclose(s, scale, rtol=1e-9)
    np.testing.assert_allclose(r, rot, atol=1e-9)
    np.testing.assert_allclose(t, trans, atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(r.numpy()), 1.0, atol=1e-12)


def test_similarity_ignores_the_order_of_corresponding_points_and_zero_weights():
    x = RNG.normal(size=(2, 12, 3))
    _, rot = _rotations(2)
    y = _similar(x, np.array([1.5, 0.7]), rot, RNG.normal(size=(2, 3))) + 0.05 * RNG.normal(size=(2, 12, 3))
    w = RNG.uniform(0.2, 1.0, (2, 12))
    perm = RNG.permutation(12)
    a = procrustes.similarity(tf.constant(x), tf.constant(y), tf.constant(w))
    b = procrustes.similarity(tf.constant(x[:, perm]), tf.constant(y[:, perm]), tf.constant(w[:, perm]))
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, atol=1e-12)
    # A point with weight 0 changes nothing, wherever it is.
    far = np.concatenate([x, 100 * np.ones((2, 1, 3))], 1), np.concatenate([y, -50 * np.ones((2, 1, 3))], 1)
    c = procrustes.similarity(*(tf.constant(v) for v in far), tf.constant(np.concatenate([w, np.zeros((2, 1))], 1)))
    for u, v in zip(a, c):
        np.testing.assert_allclose(u, v, atol=1e-10)


def test_a_reflected_target_still_gives_a_rotation():
    x = RNG.normal(size=(1, 20, 3))
    mirrored = x * np.array([-1.0, 1.0, 1.0])  # no rotation maps x onto it
    s, r, _ = procrustes.similarity(tf.constant(x), tf.constant(mirrored))
    assert np.linalg.det(r.numpy()[0]) == pytest.approx(1.0, abs=1e-12)
    assert float(s[0]) > 0
    # It is the best rotation: no better than the reflection, but better than random rotations.
    def cost(rr, ss):
        xc, yc = x[0] - x[0].mean(0), mirrored[0] - mirrored[0].mean(0)
        return np.sum((ss * xc @ rr.T - yc) ** 2)
    best = cost(r.numpy()[0], float(s[0]))
    _, others = _rotations(50)
    assert all(best <= cost(o, float(s[0])) + 1e-9 for o in others)


def test_gradients_match_finite_differences_even_with_coincident_singular_values():
    probe = tf.constant(np.arange(9.0).reshape(3, 3))

    def f(x, w):
        def inner(y):
            s, r, t = procrustes.similarity(x, y, w)
            return tf.reduce_sum(1.3 * s) + tf.reduce_sum(r * probe) + tf.reduce_sum(0.7 * t)
        return inner

    x = tf.constant(RNG.normal(size=(3, 15, 3)))
    _, rot = _rotations(3)
    y = tf.constant(_similar(x.numpy(), np.ones(3), rot, np.zeros((3, 3))) + 0.1 * RNG.normal(size=(3, 15, 3)))
    w = tf.constant(RNG.uniform(0.3, 1.0, (3, 15)))
    analytic, numeric = tf.test.compute_gradient(f(x, w), [y])
    np.testing.assert_allclose(analytic[0], numeric[0], atol=1e-6)
    # An octahedron: all three singular values equal, where the SVD's own U, V gradients are NaN.
    octa = np.concatenate([np.eye(3), -np.eye(3)])[None]
    y_oct = tf.constant(np.einsum("ij,nj->ni", rot[0], octa[0])[None])
    analytic, numeric = tf.test.compute_gradient(f(tf.constant(octa), None), [y_oct])
    assert np.isfinite(analytic[0]).all()
    np.testing.assert_allclose(analytic[0], numeric[0], atol=1e-6)


def test_collapsed_inputs_give_finite_values_and_gradients():
    for y in (np.zeros((1, 6, 3)), np.tile([[1.0, 2.0, 3.0]], (1, 6, 1))):
        y = tf.constant(y)
        x = tf.constant(RNG.normal(size=(1, 6, 3)))
        with tf.GradientTape() as tape:
            tape.watch([x, y])
            s, r, t = procrustes.similarity(x, y, tf.zeros([1, 6], tf.float64) if y.numpy().any() else None)
            total = tf.reduce_sum(s) + tf.reduce_sum(r) + tf.reduce_sum(t)
        grads = tape.gradient(total, [x, y])
        assert np.isfinite(total.numpy()) and all(np.isfinite(g.numpy()).all() for g in grads)


def test_axis_angle_is_the_inverse_of_rodrigues():
    rv, rot = _rotations(64)
    np.testing.assert_allclose(procrustes.rotation_to_axis_angle(tf.constant(rot)), rv, atol=1e-7)
    tiny = np.array([[1e-7, -2e-7, 3e-8], [0.0, 0.0, 0.0]])
    back = procrustes.rotation_to_axis_angle(batch_rodrigues(tf.constant(tiny, tf.float32)))
    np.testing.assert_allclose(back, tiny, atol=1e-7)


# ------------------------------------------------------------------------------- in the network

@pytest.fixture(scope="module")
def flame():
    return FlameLayer(make_tiny_model(num_vertices=120), 10, 5)


def _net(flame, **kw):
    config = ModelConfig(image_size=32, backbone="tiny", num_shape=10, num_expression=5, hidden=16,
                         pose_head="landmarks", **kw)
    return build_ringnet(flame, config)


def test_the_head_recovers_flames_pose_and_camera_from_its_own_landmarks(flame):
    net = _net(flame)
    head = net.get_layer("pose_head")
    shape = RNG.normal(size=(1, 10)).astype(np.float32)
    expr = RNG.normal(size=(1, 5)).astype(np.float32)
    pose = np.array([[0.3, -0.5, 0.2, 0.15, 0.0, 0.0]], np.float32)
    cam = np.array([[6.0, 0.01, -0.02]], np.float32)
    posed = flame(shape, expr, pose)
    rest = flame(shape, expr, np.concatenate([np.zeros((1, 3)), pose[:, 3:]], 1).astype(np.float32))
    target = camera.to_camera_frame(posed["landmarks"], cam)
    # The dense layer outputs exactly the landmarks FLAME shows with this pose and camera.
    head.fc.kernel.assign(np.zeros(head.fc.kernel.shape, np.float32))
    head.fc.bias.assign(tf.reshape(target, [-1]))
    features = tf.zeros([1, head.fc.kernel.shape[0] - 10 - 5 - 9])
    theta = tf.zeros([1, 3 + 6 + 10 + 5])
    _, rotation, got_cam = head(features, theta, rest["landmarks"], rest["joints"][:, 0])
    np.testing.assert_allclose(rotation, pose[:, :3], atol=2e-5)
    np.testing.assert_allclose(got_cam, cam, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("jit", [False, True])
def test_a_training_step_with_each_head_compiles(flame, jit):
    batch = {"images": tf.random.uniform([1, 3, 32, 32, 3], -1, 1),
             "landmarks": tf.concat([tf.random.uniform([1, 3, 68, 2], 0, 31), tf.ones([1, 3, 68, 1])], -1),
             "landmarks3d": tf.random.uniform([1, 3, 68, 3], 0, 31), "has_landmarks3d": tf.constant([[1.0, 0.0, 1.0]]),
             "shape": tf.zeros([1, 3, 10]), "has_shape": tf.ones([1, 3])}
    # (The regress head's XLA step is test_training's test_xla_train_step_matches_eager.)
    for head in (("landmarks",) if jit else ("regress", "landmarks")):
        config = ModelConfig(image_size=32, backbone="tiny", num_shape=10, num_expression=5, hidden=16, pose_head=head)
        trainer = RingNetTrainer(build_ringnet(flame, config), LossConfig(landmarks3d=1.0, shape_supervised=1.0))
        trainer.compile(optimizer="adam", jit_compile=jit)
        # Built before fit, as train_lib does: else the step's first trace creates the optimizer's
        # variables and tf.function traces it all again (the same graph, twice the time).
        trainer.optimizer.build(trainer.trainable_variables)
        logs = trainer.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0).history
        assert np.isfinite(logs["loss"][0]) and logs["landmarks3d"][0] > 0
        out = trainer.net(batch["images"][0])
        # Either head's parameters decode through the same FLAME and camera as its outputs.
        decoded = flame(out["shape"], out["expression"], out["pose"])
        np.testing.assert_allclose(camera.project_normalised(decoded["landmarks"], out["cam"]),
                                   out["landmarks2d"], atol=1e-5)
        assert ("landmarks_camera" in out) == (head == "landmarks")


def test_warm_start_from_a_regress_network_copies_all_but_the_new_head(flame, tmp_path):
    from flame.model import save_flame_files
    from ringnet_tf.inference import stored_weights, save_compact
    from ringnet_tf.train_lib import warm_start

    model = make_tiny_model(num_vertices=120)
    save_flame_files(model, tmp_path / "flame")
    config = ModelConfig(image_size=32, backbone="tiny", num_shape=10, num_expression=5, hidden=16)
    source = build_ringnet(model, config)
    save_compact(source, config.__dict__, model.fingerprint(), tmp_path / "ckpt")
    target_config = ModelConfig(**{**config.__dict__, "pose_head": "landmarks"})
    target = build_ringnet(model, target_config)
    head_before = [w.numpy().copy() for w in target.get_layer("pose_head").weights]
    warm_start(target, str(tmp_path / "ckpt"), target_config, str(tmp_path / "flame"))
    head = {id(w) for w in target.get_layer("pose_head").weights}
    copied = [w for w in stored_weights(target) if id(w) not in head]
    for a, b in zip(stored_weights(source), copied, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-3)  # compact weights are float16
    for a, b in zip(head_before, target.get_layer("pose_head").weights):
        np.testing.assert_array_equal(a, b.numpy())


def test_a_landmark_head_network_round_trips_through_compact_and_savedmodel(tmp_path):
    from flame.model import save_flame_files
    from ringnet_tf.export import export_saved_model
    from ringnet_tf.inference import load_predictor, save_compact

    model = make_tiny_model(num_vertices=120)
    save_flame_files(model, tmp_path / "flame")
    config = ModelConfig(image_size=32, backbone="tiny", num_shape=10, num_expression=5, hidden=16,
                         pose_head="landmarks")
    net = build_ringnet(model, config)
    save_compact(net, config.__dict__, model.fingerprint(), tmp_path / "ckpt")
    export_saved_model(net, tmp_path / "sm")
    from ringnet_tf import preprocess

    crops = RNG.integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)  # predictors take uint8 crops
    want = {k: v.numpy() for k, v in net(preprocess.normalise(crops)).items()}
    compact = load_predictor(tmp_path / "ckpt", str(tmp_path / "flame")).predict(crops)
    saved = load_predictor(tmp_path / "sm").predict(crops)
    for got, atol in ((compact, 1e-2), (saved, 1e-5)):  # compact weights are float16
        for key in ("params", "cam", "pose", "shape"):  # (the predictors give landmarks in pixels)
            np.testing.assert_allclose(got[key], want[key], atol=atol)
