"""The shared preprocessing: crop boxes, the affine map of pixels and points, normalisation."""
import numpy as np
import pytest

from ringnet_tf import preprocess as P


def test_points_follow_pixels_through_the_crop():
    # A white dot at a known place must land where transform_points puts it.
    image = np.zeros((300, 400, 3), np.uint8)
    image[180:183, 250:253] = 255
    box = P.Box(cx=230.0, cy=160.0, size=120.0)
    out = P.crop(image, box, 224)
    dot = P.transform_points(np.array([[251.0, 181.0]]), box.affine(224))[0]
    ys, xs = np.nonzero(out[..., 0] > 128)
    assert abs(xs.mean() - dot[0]) < 1.0 and abs(ys.mean() - dot[1]) < 1.0


def test_box_from_landmarks_is_loose_and_square():
    lm = np.array([[100.0, 100.0, 1.0], [200.0, 250.0, 0.5]])
    box = P.box_from_landmarks(lm)
    assert box.size == pytest.approx(P.CROP_SCALE * 150)
    assert box.cx == pytest.approx(150) and box.cy < 175  # shifted up to keep the forehead
    with pytest.raises(ValueError, match="no area"):
        P.box_from_landmarks(np.ones((68, 2)))


def test_confidence_passes_through_and_centre_box_matches_ringnet():
    pts = P.transform_points(np.array([[10.0, 20.0, 0.3]]), P.Box(50, 50, 100).affine(224))
    assert pts[0, 2] == 0.3
    box = P.centre_box(300, 400)
    assert (box.cx, box.cy, box.size) == (199.5, 149.5, 400)
    # The whole image maps onto the whole crop: corners' pixel centres stay corners.
    corners = P.transform_points(np.array([[0.0, 0.0], [399.0, 399.0]]), P.Box(199.5, 199.5, 400).affine(224))
    np.testing.assert_allclose(corners, [[0.0, 0.0], [223.0, 223.0]], atol=0.3)


def test_normalise_numpy_and_tf():
    import tensorflow as tf
    img = np.array([[[0, 255, 51]]], np.uint8)
    np.testing.assert_allclose(P.normalise(img), [[[-1.0, 1.0, -0.6]]], atol=1e-6)
    np.testing.assert_allclose(P.normalise(tf.constant(img)).numpy(), [[[-1.0, 1.0, -0.6]]], atol=1e-6)
