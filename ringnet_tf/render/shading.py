"""Shading of the rasteriser's fragments: colour = albedo * (ambient + diffuse * max(0, n . l)).

n is the vertex normal (area-weighted, from the faces' counter-clockwise winding) interpolated
with the fragment's barycentric weights and renormalised; l the unit direction towards the light.
Triangles seen from behind are lit two-sided: their normal is flipped towards the camera.
"""
from __future__ import annotations

import numpy as np

from ringnet_tf.render.raster import Fragments

DEFAULT_COLOR = (0.78, 0.72, 0.68)
"""The default albedo, a light skin-like grey (RGB in [0, 1])."""
DEFAULT_LIGHT_DIR = (-1.0, 1.0, 2.0)
"""Towards the light, model frame: in front, from the viewer's upper left (normalised when used)."""
DEFAULT_AMBIENT = 0.35
DEFAULT_DIFFUSE = 0.65


def _vertex_normals(v: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """[3, V] unit normals: area-weighted sums of the adjacent faces' normals (0 if isolated)."""
    x, y, z = (np.ascontiguousarray(v[:, k])[corners] for k in range(3))  # [3, F] each
    e1 = (x[1] - x[0], y[1] - y[0], z[1] - z[0])
    e2 = (x[2] - x[0], y[2] - y[0], z[2] - z[0])
    fn = (e1[1] * e2[2] - e1[2] * e2[1],
          e1[2] * e2[0] - e1[0] * e2[2],
          e1[0] * e2[1] - e1[1] * e2[0])
    vn = np.zeros((3, len(v)))
    for k in range(3):
        for i in range(3):
            vn[k] += np.bincount(corners[i], weights=fn[k], minlength=len(v))
    norm = np.sqrt((vn * vn).sum(0))
    return np.divide(vn, norm, out=np.zeros_like(vn), where=norm > 0)


def shade(v: np.ndarray, frags: Fragments, colors: np.ndarray | None, light: np.ndarray,
          ambient: float, diffuse: float) -> list[np.ndarray]:
    """The covered pixels' colours: 3 arrays [P] float64 (red, green, blue) in [0, 1].

    Args:
      v: [V, 3] float64 vertices; frags: their `raster.rasterize`.
      colors: [V, 3] float64 albedo in [0, 1], or None for `DEFAULT_COLOR` everywhere.
      light: [3] unit direction towards the light; ambient, diffuse: intensities >= 0.
    """
    if not len(frags.pix):
        return [np.zeros(0)] * 3
    corner = frags.corner
    w0, w1, w2 = frags.weights
    # Lambert with the interpolated (renormalised) vertex normal, two-sided: the normal of a face
    # seen from behind (positive area in pixels) is flipped towards the camera.
    vn = _vertex_normals(v, frags.corners)
    normal = [w0 * n.take(corner[0]) + w1 * n.take(corner[1]) + w2 * n.take(corner[2]) for n in vn]
    length = np.sqrt(normal[0] * normal[0] + normal[1] * normal[1] + normal[2] * normal[2])
    dot = normal[0] * light[0] + normal[1] * light[1] + normal[2] * light[2]
    dot *= frags.orientation
    cosine = dot / -np.maximum(length, 1e-300)  # a zero normal (dot 0) gets no diffuse light
    light_level = ambient + diffuse * np.maximum(cosine, 0.0)
    if colors is None:
        return [np.minimum(light_level * c, 1.0) for c in DEFAULT_COLOR]
    rgb = []
    for k in range(3):
        channel = np.ascontiguousarray(colors[:, k])
        albedo = (w0 * channel.take(corner[0]) + w1 * channel.take(corner[1])
                  + w2 * channel.take(corner[2]))
        rgb.append(np.clip(albedo * light_level, 0.0, 1.0))
    return rgb


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] to the nearest of 0..255 (x * 255 + 0.5 truncated: >= 0 here)."""
    return (x * 255.0 + 0.5).astype(np.uint8)
