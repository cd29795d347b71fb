"""FlameLayer against an independent NumPy FLAME, analytic cases, gradients, XLA, saving."""
from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.spatial.transform import Rotation

from flame import constants as C
from flame import lbs
from flame.layer import FlameLayer
from tests.conftest import make_tiny_model
from tests.flame_reference import contour_row_reference, forward_reference

NUM_SHAPE, NUM_EXPR = 20, 10
# float32 maths against a float64 reference on a ~0.1 m model.
ATOL = 2e-6


def _params(rng: np.random.Generator, batch: int, pose_dim: int = 6, pose_scale: float = 0.3):
    return (rng.normal(size=(batch, NUM_SHAPE)).astype(np.float32),
            rng.normal(size=(batch, NUM_EXPR)).astype(np.float32),
            (pose_scale * rng.normal(size=(batch, pose_dim))).astype(np.float32))


def _to15(pose: np.ndarray) -> np.ndarray:
    return lbs.full_pose(tf.constant(pose)).numpy()


@pytest.fixture(scope="module")
def model():
    return make_tiny_model(seed=1)


@pytest.fixture(scope="module")
def layer(model):
    return FlameLayer(model, NUM_SHAPE, NUM_EXPR)


def test_zero_parameters_give_the_template(model, layer):
    out = layer(tf.zeros((2, NUM_SHAPE)), tf.zeros((2, NUM_EXPR)), tf.zeros((2, 6)))
    np.testing.assert_allclose(out["vertices"].numpy(), np.stack([model.v_template] * 2), atol=ATOL)
    np.testing.assert_allclose(out["joints"][0].numpy(), model.j_regressor @ model.v_template, atol=ATOL)


@pytest.mark.parametrize("pose_dim", [6, 15])
def test_matches_independent_reference(model, layer, pose_dim):
    rng = np.random.default_rng(2)
    shape, expr, pose = _params(rng, 4, pose_dim)
    transl = rng.normal(size=(4, 3)).astype(np.float32)
    out = layer(shape, expr, pose, transl)
    for b in range(4):
        ref = forward_reference(model, shape[b], expr[b], _to15(pose)[b], transl[b])
        for key, value in ref.items():
            np.testing.assert_allclose(out[key][b].numpy(), value, atol=ATOL, err_msg=key)


def test_output_shapes_are_as_documented(model, layer):
    out = layer(*_params(np.random.default_rng(0), 3))
    assert out["vertices"].shape == (3, model.num_vertices, 3)
    assert out["joints"].shape == (3, 5, 3)
    assert out["landmarks"].shape == (3, 68, 3)
    assert out["now_landmarks"].shape == (3, 7, 3)
    assert all(v.dtype == tf.float32 for v in out.values())


def test_global_rotation_rotates_every_vertex_about_the_root(model, layer):
    rotvec = np.array([0.3, -0.7, 0.2])
    pose = np.zeros((1, 6), np.float32)
    pose[0, :3] = rotvec
    out = layer(tf.zeros((1, NUM_SHAPE)), tf.zeros((1, NUM_EXPR)), pose)
    root = (model.j_regressor @ model.v_template)[C.ROOT]
    expected = Rotation.from_rotvec(rotvec).apply(model.v_template - root) + root
    np.testing.assert_allclose(out["vertices"][0].numpy(), expected, atol=ATOL)


def test_jaw_rotation_moves_only_jaw_weighted_vertices():
    base = make_tiny_model(seed=3)
    weights = base.weights.copy()
    weights[::2, C.JAW] = 0.0  # half the vertices ignore the jaw ...
    weights[1::4] = np.eye(C.NUM_JOINTS)[C.JAW]  # ... and a quarter follow it rigidly
    weights /= weights.sum(axis=1, keepdims=True)
    model = dataclasses.replace(base, weights=weights, posedirs=np.zeros_like(base.posedirs))
    layer = FlameLayer(model, NUM_SHAPE, NUM_EXPR)
    jaw = np.array([0.35, 0.05, -0.02])
    pose = np.concatenate([np.zeros(3), jaw])[None].astype(np.float32)
    verts = layer(tf.zeros((1, NUM_SHAPE)), tf.zeros((1, NUM_EXPR)), pose)["vertices"][0].numpy()
    moved = np.linalg.norm(verts - model.v_template, axis=1) > 1e-6
    assert not moved[::2].any()
    assert moved[1::4].all()
    jaw_joint = (model.j_regressor @ model.v_template)[C.JAW]
    rigid = Rotation.from_rotvec(jaw).apply(model.v_template[1::4] - jaw_joint) + jaw_joint
    np.testing.assert_allclose(verts[1::4], rigid, atol=ATOL)


def test_six_and_fifteen_value_poses_agree(layer):
    shape, expr, pose6 = _params(np.random.default_rng(4), 5)
    a = layer(shape, expr, pose6)
    b = layer(shape, expr, _to15(pose6))
    for key in a:
        np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), atol=ATOL, err_msg=key)


def test_rejects_wrong_parameter_sizes(layer):
    with pytest.raises(ValueError, match="6 or 15"):
        layer(tf.zeros((1, NUM_SHAPE)), tf.zeros((1, NUM_EXPR)), tf.zeros((1, 9)))
    with pytest.raises(ValueError, match="expects shape"):
        layer(tf.zeros((1, NUM_SHAPE + 1)), tf.zeros((1, NUM_EXPR)), tf.zeros((1, 6)))


# Yaw of the head (degrees, rotation about y) -> expected row, worked out by hand from the rule:
# y = round(min(-yaw, 39)); y >= 0 -> y; y < 0 -> 39 - y; y < -39 -> 78.
@pytest.mark.parametrize("yaw_deg,row", [
    (0.0, 0), (-10.0, 10), (-38.6, 39), (-80.0, 39), (10.0, 49), (0.6, 40), (-0.4, 0),
    (38.6, 78), (39.0, 78), (60.0, 78), (25.3, 64),
])
def test_contour_row_rule(yaw_deg, row):
    rot = Rotation.from_euler("y", yaw_deg, degrees=True).as_rotvec()
    pose = np.zeros((1, C.NUM_JOINTS, 3), np.float32)
    pose[0, C.ROOT] = rot
    assert int(lbs.contour_rows(lbs.batch_rodrigues(tf.constant(pose)))[0]) == row
    assert contour_row_reference(rot, np.zeros(3)) == row


def test_contour_row_composes_root_and_neck():
    rng = np.random.default_rng(5)
    pose = (0.5 * rng.normal(size=(64, C.NUM_JOINTS, 3))).astype(np.float32)
    rows = lbs.contour_rows(lbs.batch_rodrigues(tf.constant(pose))).numpy()
    expected = [contour_row_reference(p[C.ROOT], p[C.NECK]) for p in pose.astype(np.float64)]
    np.testing.assert_array_equal(rows, expected)
    assert len(set(expected)) > 10  # the sample covers many rows, on both signs


def test_landmarks_use_the_looked_up_contour_row(model, layer):
    for yaw in (-25.0, 0.0, 12.0, 70.0):
        pose = np.zeros((1, 6), np.float32)
        pose[0, :3] = Rotation.from_euler("y", yaw, degrees=True).as_rotvec()
        out = layer(tf.zeros((1, NUM_SHAPE)), tf.zeros((1, NUM_EXPR)), pose)
        ref = forward_reference(model, np.zeros(NUM_SHAPE), np.zeros(NUM_EXPR), _to15(pose)[0])
        np.testing.assert_allclose(out["landmarks"][0].numpy(), ref["landmarks"], atol=ATOL)


@pytest.mark.parametrize("pose_dim", [6, 15])
@pytest.mark.parametrize("at_zero_pose", [False, True])
def test_gradients_match_finite_differences(layer, pose_dim, at_zero_pose):
    rng = np.random.default_rng(6)
    inputs = list(_params(rng, 2, pose_dim, pose_scale=0.0 if at_zero_pose else 0.3))
    inputs.append(rng.normal(size=(2, 3)).astype(np.float32))
    probes = {k: tf.constant(rng.normal(size=s), tf.float64)
              for k, s in [("vertices", (2, layer.num_vertices, 3)), ("landmarks", (2, 68, 3))]}

    def objective(args, key):
        out = layer(*[tf.cast(a, tf.float32) for a in args])
        return tf.reduce_sum(tf.cast(out[key], tf.float64) * probes[key])

    def rows(pose):
        rot = lbs.batch_rodrigues(tf.reshape(lbs.full_pose(tf.cast(pose, tf.float32)), [-1, 5, 3]))
        return lbs.contour_rows(rot).numpy()

    # The outputs are linear in shape, expression and translation (pose fixed), so a unit step
    # is exact there and lifts the differences far above float32 rounding; for the pose, a step of
    # 1e-2 rad keeps both rounding noise and the O(step^2) truncation error below the tolerance.
    steps = (1.0, 1.0, 1e-2, 1.0)
    for key in probes:
        x = [tf.constant(a, tf.float64) for a in inputs]
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = objective(x, key)
        grads = tape.gradient(value, x)
        for i, g in enumerate(grads):
            assert np.isfinite(g.numpy()).all()
            step = steps[i]
            for _ in range(50):  # the contour row is a discrete choice: stay within one row
                direction = rng.normal(size=inputs[i].shape)
                direction /= np.linalg.norm(direction)
                plus = [a if j != i else a + step * direction for j, a in enumerate(x)]
                minus = [a if j != i else a - step * direction for j, a in enumerate(x)]
                if (rows(plus[2]) == rows(x[2])).all() and (rows(minus[2]) == rows(x[2])).all():
                    break
            else:
                pytest.fail("no direction keeps the contour rows fixed")
            numeric = (objective(plus, key) - objective(minus, key)).numpy() / (2 * step)
            analytic = float(tf.reduce_sum(g * direction))
            assert numeric == pytest.approx(analytic, rel=1e-2, abs=2e-5), (key, i)


def test_xla_equals_eager(layer):
    args = _params(np.random.default_rng(7), 3, 15)
    eager = layer(*args)
    compiled = tf.function(lambda *a: layer(*a), jit_compile=True)(*args)
    for key in eager:
        np.testing.assert_allclose(compiled[key].numpy(), eager[key].numpy(), atol=1e-6)


def test_any_batch_size_in_one_traced_function(layer):
    spec = [tf.TensorSpec([None, n], tf.float32) for n in (NUM_SHAPE, NUM_EXPR, 6)]
    fn = tf.function(lambda s, e, p: layer(s, e, p)["landmarks"], input_signature=spec,
                     jit_compile=True)
    rng = np.random.default_rng(8)
    big = _params(rng, 7)
    full = fn(*big).numpy()
    for batch in (1, 3):
        np.testing.assert_allclose(fn(*[a[:batch] for a in big]).numpy(), full[:batch], atol=1e-6)


def test_stays_float32_under_mixed_precision(model, layer):
    args = _params(np.random.default_rng(9), 2)
    expected = layer(*args)["vertices"].numpy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        mixed = FlameLayer(model, NUM_SHAPE, NUM_EXPR)
        out = mixed(*[tf.constant(a, tf.float16) for a in args])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert out["vertices"].dtype == tf.float32
    # Only the float16 rounding of the inputs differs.
    np.testing.assert_allclose(out["vertices"].numpy(), expected, atol=5e-4)


def _functional_model(layer: FlameLayer) -> keras.Model:
    shape = keras.Input((NUM_SHAPE,), name="shape")
    expr = keras.Input((NUM_EXPR,), name="expression")
    pose = keras.Input((6,), name="pose")
    return keras.Model([shape, expr, pose], layer(shape, expr, pose))


def test_keras_save_load_round_trip(tmp_path, model, layer):
    net = _functional_model(layer)
    args = _params(np.random.default_rng(10), 2)
    path = tmp_path / "flame.keras"
    net.save(path)
    loaded = keras.models.load_model(path)
    flame_layers = [lay for lay in loaded.layers if isinstance(lay, FlameLayer)]
    assert flame_layers[0].fingerprint == model.fingerprint()
    for key, value in net(list(args)).items():
        np.testing.assert_allclose(loaded(list(args))[key].numpy(), value.numpy(), atol=1e-6)


def test_saved_model_export_holds_the_arrays(tmp_path, layer):
    net = _functional_model(layer)
    args = _params(np.random.default_rng(11), 3)
    net.export(str(tmp_path / "sm"), verbose=False)
    reloaded = tf.saved_model.load(str(tmp_path / "sm"))
    out = reloaded.serve(list(args))
    np.testing.assert_allclose(out["vertices"].numpy(), net(list(args))["vertices"].numpy(), atol=1e-6)
