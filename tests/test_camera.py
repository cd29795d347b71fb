"""The weak-perspective camera: hand-worked values, NumPy and TF agree, the y flip."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from ringnet_tf.camera import pixels_to_normalised, project


def test_hand_worked_projection():
    points = np.array([[0.0, 0.0, 0.3], [0.1, 0.2, -1.0]])
    cam = np.array([2.0, 0.05, -0.1])
    # x_n = 2 * (0 + 0.05) = 0.1 -> u = 1.1 * 112 - 0.5 = 122.7; y_n = 2 * (0 - 0.1) = -0.2 ->
    # v = 1.2 * 112 - 0.5 = 133.9; x_n = 2 * 0.15 = 0.3 -> u = 145.1; y_n = 0.2 -> v = 89.1 (up is
    # smaller v). Pixel centres at whole numbers: the image spans -0.5 .. 223.5.
    np.testing.assert_allclose(project(points, cam, 224), [[122.7, 133.9], [145.1, 89.1]], atol=1e-4)
    corners = project(np.array([[-1.0, 1.0, 0.0], [1.0, -1.0, 0.0]]), np.array([1.0, 0.0, 0.0]), 224)
    np.testing.assert_allclose(corners, [[-0.5, -0.5], [223.5, 223.5]])


def test_numpy_and_tf_agree_with_batches():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(4, 68, 3)).astype(np.float32)
    cam = rng.normal(size=(4, 3)).astype(np.float32)
    expected = project(points, cam, 224)
    got = project(tf.constant(points), tf.constant(cam), 224)
    assert isinstance(got, tf.Tensor) and got.shape == (4, 68, 2)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)


def test_round_trip_to_normalised():
    rng = np.random.default_rng(1)
    points = rng.normal(size=(10, 3))
    cam = np.array([1.5, 0.0, 0.0])
    np.testing.assert_allclose(pixels_to_normalised(project(points, cam, 160), 160),
                               1.5 * points[:, :2], atol=1e-6)


def test_reframe_camera_matches_pixel_map():
    """Projecting with the reframed camera equals mapping the old pixels by scale and offset."""
    from ringnet_tf.camera import project, reframe_camera

    rng = np.random.default_rng(3)
    points = rng.normal(scale=0.1, size=(50, 3))
    cam = np.array([6.5, 0.01, -0.02])
    for scale, offset, new_size in [(1.0, (0.0, 0.0), 224), (0.37, (12.5, -40.0), 512),
                                    (2.5, (-3.0, 7.0), 97)]:
        new = reframe_camera(cam, 224, scale, offset, new_size)
        want = scale * project(points, cam, 224) + np.asarray(offset)
        np.testing.assert_allclose(project(points, new, new_size), want, atol=1e-9)
