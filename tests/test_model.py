"""The RingNet network: output layout, starting point, saving, backbone weights, mixed precision."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from ringnet_tf.model import ModelConfig, build_backbone, build_ringnet
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
