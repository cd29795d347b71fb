"""SavedModel export: outputs equal the Keras model's, uint8 and float inputs, any batch size."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from ringnet_tf import camera, preprocess
from ringnet_tf.export import export_saved_model
from ringnet_tf.model import ModelConfig, build_ringnet
from tests.conftest import make_tiny_model

CONFIG = ModelConfig(image_size=32, backbone="tiny", num_shape=10, num_expression=5)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    net = build_ringnet(make_tiny_model(), CONFIG)
    path = export_saved_model(net, tmp_path_factory.mktemp("sm") / "model")
    return net, tf.saved_model.load(str(path))


@pytest.mark.parametrize("batch", [1, 5])
def test_outputs_equal_the_keras_model(exported, batch):
    net, sm = exported
    images = np.random.default_rng(batch).integers(0, 256, (batch, 32, 32, 3)).astype(np.uint8)
    expected = net(preprocess.normalise(images), training=False)
    # serving_default (what TF Serving calls) is the uint8 signature.
    default = sm.signatures["serving_default"]
    assert [s.dtype for s in default.structured_input_signature[1].values()] == [tf.uint8]
    for out in (sm.serve(tf.constant(images)), sm.serve_float(tf.constant(preprocess.normalise(images))),
                default(images=tf.constant(images))):
        for key in ("params", "vertices", "landmarks3d", "now_landmarks", "shape"):
            np.testing.assert_allclose(out[key].numpy(), expected[key].numpy(), atol=1e-5, err_msg=key)
        pixels = camera.normalised_to_pixels(expected["landmarks2d"].numpy(), 32)
        np.testing.assert_allclose(out["landmarks2d"].numpy(), pixels, atol=1e-4)
        assert out["flame_pose"].shape == (batch, 15)


def test_landmarks_scale_to_the_given_image_size(exported):
    net, sm = exported
    small = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    big = tf.image.resize(small, [64, 96], method="nearest").numpy().astype(np.uint8)
    b = sm.serve(tf.constant(big))["landmarks2d"].numpy()
    # The network sees the image resized to its input size; its landmarks (in its input's pixels)
    # come back 3x wider and 2x taller, pixel centres at whole numbers on both sides.
    seen = preprocess.resize_to_input(preprocess.normalise(big), 32)
    a = camera.normalised_to_pixels(net(seen, training=False)["landmarks2d"].numpy(), 32)
    np.testing.assert_allclose((b + 0.5) / [3.0, 2.0] - 0.5, a, atol=1e-3)


def test_faces_and_refusal_to_overwrite(exported, tmp_path):
    net, sm = exported
    np.testing.assert_array_equal(sm.faces().numpy(), make_tiny_model().faces)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        export_saved_model(net, tmp_path / "x")
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"


def test_neutral_endpoint_is_flame_with_zero_expression_and_pose(exported):
    net, sm = exported
    shape = np.random.default_rng(3).normal(size=(2, 10)).astype(np.float32)
    from ringnet_tf.export import flame_layer_of
    flame = flame_layer_of(net)
    expected = flame(tf.constant(shape), tf.zeros((2, 5)), tf.zeros((2, 6)))
    got = sm.neutral(tf.constant(shape))
    np.testing.assert_allclose(got["vertices"].numpy(), expected["vertices"].numpy(), atol=1e-6)
    assert int(sm.image_size().numpy()) == 32
