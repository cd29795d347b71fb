"""Which 3D points a render sees: a depth test of points against the z-buffer of a `RenderResult`
(the synthetic data generator lowers the confidence of hidden landmarks with it; the texture
projection colours only texels the camera sees)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ringnet_tf.render.checks import check_cam, check_nonneg, check_size
from ringnet_tf.render.raster import raster_coordinates

if TYPE_CHECKING:
    from ringnet_tf.render.compose import RenderResult


def visible_points(points, result: RenderResult, cam, image_size: int, tol: float | None = None
                   ) -> np.ndarray:
    """Which 3D points are seen, not hidden behind the rendered surface.

    A point is visible when it projects inside the image and is not behind the surface by more
    than `tol`: Z >= min(depth over the 2 x 2 pixels whose centres surround its projection) - tol,
    empty pixels counting as -inf. Taking the nearest pixels' minimum keeps points on steep
    surfaces and on the silhouette (where the pixel centre may miss the mesh) visible, while a
    point covered by a nearer part of the mesh all around is hidden. Points in front of the surface
    count as visible.

    Args:
      points: [N, 3] model-frame points (e.g. landmarks on the rendered mesh).
      result: the `RenderResult` of the mesh, rendered with the same cam and image_size.
      cam: [3] (s, tx, ty).
      image_size: the render's side in pixels.
      tol: depth tolerance in model units; None for the model length of two pixels, 4 / (|s| size).
    Returns:
      [N] bool.
    """
    size = check_size(image_size)
    cam = check_cam(cam)
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3 or not np.isfinite(p).all():
        raise ValueError(f"points must be finite [N, 3]; got shape {p.shape}")
    if result.depth.shape != (size, size):
        raise ValueError(f"result is {result.depth.shape[1]} pixels wide, image_size is {size}")
    if tol is None:
        tol = 4.0 / (abs(cam[0]) * size)
    tol = check_nonneg("tol", tol)
    uv = raster_coordinates(p, cam, size)  # pixel (i, j) spans [j, j + 1) x [i, i + 1)
    inside = np.all((uv >= 0) & (uv < size), axis=1)
    # Pixel centres surrounding the point: columns floor(u - 0.5) and +1, clipped to the image.
    base = np.floor(uv - 0.5).astype(np.int64)
    nearest = np.full(len(p), np.inf)
    for dr in (0, 1):
        for dc in (0, 1):
            col = np.clip(base[:, 0] + dc, 0, size - 1)
            row = np.clip(base[:, 1] + dr, 0, size - 1)
            nearest = np.minimum(nearest, result.depth[row, col].astype(np.float64))
    return inside & (p[:, 2] >= nearest - tol)

