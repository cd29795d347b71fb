"""The RingNet network: output layout, starting point, saving, backbone weights, mixed precision;
slim's pool1 and RingNet's output convention (for converted checkpoints)."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from flame.geometry import rotation_from_axis_angle
from ringnet_tf.model import ModelConfig, build_backbone, build_ringnet, ringnet_to_ours
from tests.conftest import make_tiny_model

CONFIG = ModelConfig(image_size=64, num_shape=20, num_expression=10)


@pytest.fixture(scope="module")
def net():
    return build_ringnet(make_tiny_model(), CONFIG)


def _images(batch=2, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (batch, 64, 64, 3)).astype(np.float32)


def test_outputs_follow_the_parameter_layout(net):
    out = net(_images(3))
    spec = CONFIG.spec
    assert out["params"].shape == (3, spec.total)
    assert out["params_stages"].shape == (3, CONFIG.num_stages, spec.total)
    for name, s in spec.slices().items():
        np.testing.assert_array_equal(out[name].numpy(), out["params"].numpy()[:, s])
    assert out["landmarks2d"].shape == (3, 68, 2) and out["vertices"].shape == (3, 64, 3)
    # landmarks2d is the weak-perspective projection of landmarks3d with the predicted camera.
    cam, lm3 = out["cam"].numpy(), out["landmarks3d"].numpy()
    expected = cam[:, None, :1] * (lm3[..., :2] + cam[:, None, 1:])
    np.testing.assert_allclose(out["landmarks2d"].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_training_starts_near_the_mean_parameters(net):
    params = net(_images(4))["params"].numpy()
    np.testing.assert_allclose(params, np.broadcast_to(CONFIG.mean_params(), params.shape), atol=0.05)


def test_save_load_round_trip(tmp_path, net):
    path = tmp_path / "ringnet.keras"
    net.save(path)
    loaded = keras.models.load_model(path)
    x = _images()
    for key, value in net(x).items():
        np.testing.assert_allclose(loaded(x)[key].numpy(), value.numpy(), atol=1e-5, err_msg=key)


def test_backbone_weights_from_a_file(tmp_path):
    source = build_backbone(64)
    path = tmp_path / "backbone.weights.h5"
    source.save_weights(path)
    loaded = build_backbone(64, str(path))
    x = _images(1)
    np.testing.assert_allclose(loaded(x).numpy(), source(x).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="missing.weights.h5"):
        build_backbone(64, str(tmp_path / "missing.weights.h5"))


def test_mixed_precision_keeps_flame_and_regressor_float32():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        net = build_ringnet(make_tiny_model(), CONFIG)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    out = net(_images())
    assert all(v.dtype == "float32" for v in out.values())
    backbone = net.get_layer("backbone")
    assert backbone.layers[2].compute_dtype == "bfloat16"


def test_bad_config_names_the_value():
    with pytest.raises(ValueError, match="got 16"):
        ModelConfig(image_size=16)
    with pytest.raises(ValueError, match="got 0"):
        ModelConfig(num_stages=0)
    with pytest.raises(ValueError, match="'avg'"):
        ModelConfig(pool1="avg")
    with pytest.raises(ValueError, match="resnet50 backbone only"):
        ModelConfig(backbone="tiny", pool1="slim")
    with pytest.raises(ValueError, match="'hmr'"):
        ModelConfig(output_convention="hmr")


def test_configs_written_before_the_new_fields_keep_keras_pool_and_our_convention():
    import dataclasses

    # The model config of the checkpoint bundled before these fields existed (git 6033d10).
    saved = {"backbone": "resnet50", "backbone_weights": "none", "dropout": 0.5, "hidden": 512,
             "image_size": 128, "init_cam_scale": 7.0, "num_expression": 50, "num_shape": 100,
             "num_stages": 3}
    config = ModelConfig(**saved)
    assert (config.pool1, config.output_convention) == ("keras", "ours")
    assert dataclasses.asdict(config)["pool1"] == "keras"  # written with every new checkpoint


def test_slim_pool1_is_a_same_max_pool_with_the_same_weights():
    import tensorflow as tf

    keras_net, slim_net = build_backbone(64), build_backbone(64, pool1="slim")
    assert [w.path for w in slim_net.weights] == [w.path for w in keras_net.weights]
    assert [tuple(w.shape) for w in slim_net.weights] == [tuple(w.shape) for w in keras_net.weights]
    slim_net.set_weights(keras_net.get_weights())
    x = _images(2)
    conv1 = keras.Model(slim_net.input, slim_net.get_layer("conv1_conv").output)(x)
    pool = keras.Model(slim_net.input, slim_net.get_layer("pool1_pool").output)(x)
    np.testing.assert_allclose(pool.numpy(), tf.nn.max_pool2d(conv1, 3, 2, "SAME").numpy(), atol=1e-6)
    # Keras' zero padding then VALID: windows shifted by one pixel, zeros that can win.
    assert np.abs(slim_net(x).numpy() - keras_net(x).numpy()).max() > 1e-3


def _ring_theta(rng, n, global_rot):
    theta = np.zeros((n, 159))
    theta[:, 0] = 8 + rng.normal(size=n)
    theta[:, 1:3] = 0.02 * rng.normal(size=(n, 2))
    theta[:, 3:6] = global_rot
    theta[:, 6:9] = 0.1 * rng.normal(size=(n, 3))
    theta[:, 9:] = rng.normal(size=(n, 150))
    return theta.astype(np.float32)


@pytest.mark.parametrize("case", ["upside_down", "identity", "half_turns", "near_pi", "large"])
def test_ringnet_convention_gives_the_same_mesh_and_pixels(case):
    """RingNet's mesh turned about the root joint by F = diag(1, -1, -1), projected to the same
    pixels (RingNet's u = (x + 1) S / 2, y down; ours camera.project)."""
    import tensorflow as tf

    from flame.layer import FlameLayer
    from ringnet_tf import camera

    rng = np.random.default_rng(["upside_down", "identity", "half_turns", "near_pi", "large"].index(case))
    n, size = 5, 224
    rot = {"upside_down": [np.pi, 0, 0] + 0.3 * rng.normal(size=(n, 3)),
           "identity": np.zeros((n, 3)) + [[1e-9, 0, 0]],
           "half_turns": np.pi * (v := rng.normal(size=(n, 3))) / np.linalg.norm(v, axis=1, keepdims=True),
           "near_pi": [np.pi, 0, 0] + 1e-6 * rng.normal(size=(n, 3)),
           "large": 3 * rng.normal(size=(n, 3))}[case]
    theta = _ring_theta(rng, n, rot)
    flame = FlameLayer(make_tiny_model(), 100, 50)

    def decode(t):
        return flame(tf.constant(t[:, 9:109]), tf.constant(t[:, 109:]), tf.constant(t[:, 3:9]))

    root = decode(np.concatenate([theta[:, :3], np.zeros((n, 6), np.float32), theta[:, 9:]], 1))["joints"].numpy()[:, 0]
    ours = ringnet_to_ours(tf.constant(theta), tf.constant(root[:, 1]), float(size)).numpy()
    flip = np.diag([1.0, -1.0, -1.0])
    for o, t in zip(ours, theta):
        np.testing.assert_allclose(rotation_from_axis_angle(o[3:6]),
                                   flip @ rotation_from_axis_angle(t[3:6]), atol=2e-6)
    np.testing.assert_array_equal(ours[:, 6:], theta[:, 6:])
    ring_v, our_v = decode(theta)["vertices"].numpy(), decode(ours)["vertices"].numpy()
    np.testing.assert_allclose(our_v, (ring_v - root[:, None]) @ flip + root[:, None], atol=1e-6)
    ring_px = (theta[:, None, :1] * (ring_v[..., :2] + theta[:, None, 1:3]) + 1) * size / 2
    np.testing.assert_allclose(camera.project(our_v, ours, size), ring_px, atol=1e-3)
    # NumPy and TF give the same conversion.
    np.testing.assert_allclose(ringnet_to_ours(theta.astype(np.float64), root[:, 1].astype(np.float64),
                                               float(size), xp=np), ours, atol=1e-5)


def test_a_ringnet_convention_network_converts_every_stage_and_round_trips(tmp_path):
    import tensorflow as tf

    config = ModelConfig(image_size=64, num_shape=100, num_expression=50, pool1="slim",
                         output_convention="ringnet", hidden=16)
    net = build_ringnet(make_tiny_model(), config)
    assert config.mean_params()[3] == pytest.approx(np.pi)  # HMR's upside-down start
    x = _images(2)
    out = net(x)
    raw = net.get_layer("regressor")(net.get_layer("backbone")(x)).numpy()  # [B, T, P], RingNet's
    flame = net.get_layer("flame")
    for t in range(config.num_stages):
        root = flame(tf.constant(raw[:, t, 9:109]), tf.constant(raw[:, t, 109:]),
                     tf.zeros((2, 6)))["joints"].numpy()[:, 0]
        expected = ringnet_to_ours(tf.constant(raw[:, t]), tf.constant(root[:, 1]), 64.0).numpy()
        np.testing.assert_allclose(out["params_stages"].numpy()[:, t], expected, atol=1e-5)
    np.testing.assert_array_equal(out["params"].numpy(), out["params_stages"].numpy()[:, -1])
    path = tmp_path / "ringnet.keras"
    net.save(path)
    loaded = keras.models.load_model(path)
    for key, value in out.items():
        np.testing.assert_allclose(loaded(x)[key].numpy(), value.numpy(), atol=1e-5, err_msg=key)
