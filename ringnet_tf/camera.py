"""The one camera of the project: weak perspective, HMR convention, to pixel coordinates.

A point (X, Y, Z) in the model's frame (metres, y up) goes to normalised image coordinates
x_n = s * (X + tx), y_n = s * (Y + ty) in [-1, 1] across the image, then to pixels of a square
image of side `size`: u = (x_n + 1) * size / 2 - 0.5 (right), v = (1 - y_n) * size / 2 - 0.5 (down:
image rows grow downwards while FLAME's y grows upwards). Pixel coordinates put pixel centres at
whole numbers (the first pixel's centre is (0, 0), the image spans -0.5 .. size - 0.5), the
convention of the dataset's landmarks, the crop and the training warp. Depth is ignored by the
projection; renderers use Z for visibility (larger Z is nearer the camera, which looks along -Z).

Written with plain arithmetic and slicing only, so the same functions serve NumPy arrays (data
generation, rendering) and TF tensors (the model, the losses).
"""
from __future__ import annotations

import numpy as np

# Image axes relative to the model's x and y: x stays, y flips.
_AXIS_SIGN = np.array([1.0, -1.0], np.float32)


def project_normalised(points, cam):
    """Weak-perspective projection to normalised image coordinates (y up, [-1, 1] across the image).

    Args:
      points: [..., N, 3] (or [..., N, 2]) model-frame points.
      cam: [..., 3] camera (s, tx, ty).
    Returns:
      [..., N, 2], same array type as the inputs.
    """
    return cam[..., None, 0:1] * (points[..., :2] + cam[..., None, 1:3])


def to_camera_frame(points, cam):
    """Points as the camera sees them, in normalised units: (s (X + tx), s (Y + ty), s Z).

    x, y are `project_normalised`; z is the depth towards the camera on the same scale (weak
    perspective fixes no depth origin: compare depths relative to a common reference).
    points: [..., N, 3]; cam: [..., 3] -> [..., N, 3].
    """
    xy = project_normalised(points, cam)
    z = cam[..., None, 0:1] * points[..., 2:3]
    if isinstance(xy, np.ndarray):
        return np.concatenate([xy, z], axis=-1)
    import tensorflow as tf  # tensors: the only place this module needs TF

    return tf.concat([xy, z], axis=-1)


def normalised_to_pixels(normalised, image_size: float):
    """[..., 2] normalised coordinates (y up) to pixels (u right, v down) of a square image."""
    return (normalised * _AXIS_SIGN + 1.0) * (0.5 * image_size) - 0.5


def project(points, cam, image_size: float):
    """Weak-perspective projection to pixels: [..., N, 3] points, [..., 3] cam -> [..., N, 2]."""
    return normalised_to_pixels(project_normalised(points, cam), image_size)


def pixels_to_normalised(pixels, image_size: float):
    """[..., 2] pixels (u right, v down) to normalised coordinates with y up, in [-1, 1]."""
    return ((pixels + 0.5) / (0.5 * image_size) - 1.0) * _AXIS_SIGN


def reframe_camera(cam, image_size: float, scale: float, offset, new_size: float) -> np.ndarray:
    """The camera that projects into another square image whose pixels are `scale * p + offset` of
    this one's pixels p (a zoom and shift, no rotation: e.g. crop pixels -> a figure of the photo).

    Args:
      cam: [3] (s, tx, ty) for an image of side `image_size`.
      scale: new pixels per old pixel.
      offset: [2] (x, y) pixel offset, in new pixels.
      new_size: side of the new square image.
    Returns:
      [3] float64 (s', tx', ty') with project(X, cam', new_size) == scale * project(X, cam,
      image_size) + offset for every point X.
    """
    s, tx, ty = (float(c) for c in np.asarray(cam, np.float64))
    ox, oy = (float(o) for o in np.asarray(offset, np.float64))
    s_new = scale * image_size * s / new_size
    # Where the old image's centre lands, in the new normalised frame (y up).
    cx = 2.0 / new_size * (scale * (image_size - 1) / 2 + ox + 0.5) - 1.0
    cy = 1.0 - 2.0 / new_size * (scale * (image_size - 1) / 2 + oy + 0.5)
    return np.array([s_new, tx + cx / s_new, ty + cy / s_new])
