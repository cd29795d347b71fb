"""Putting pictures together: `render` (checks the arguments, rasterises, shades, lays the mesh
over the background, anti-aliases), `overlay` (the one blend of a render over a photo) and
`side_view` (the mesh turned about the vertical axis)."""
from __future__ import annotations

import dataclasses

import numpy as np

from flame.geometry import rotation_about_y
from ringnet_tf.render import checks
from ringnet_tf.render.raster import rasterize
from ringnet_tf.render.shading import (DEFAULT_AMBIENT, DEFAULT_DIFFUSE, DEFAULT_LIGHT_DIR, shade,
                                       to_uint8)

DEFAULT_ALPHA = 0.75
"""Opacity of a render laid over a photo (the demo's figures and overlay video)."""


@dataclasses.dataclass(frozen=True, eq=False)
class RenderResult:
    """What `render` returns; H = W = image_size.

    Attributes:
      image: [H, W, 3] uint8 RGB, the shaded mesh over the background.
      mask: [H, W] bool, pixels whose centre the mesh covers.
      depth: [H, W] float32 model-frame Z of the visible surface at the pixel centre (larger is
        nearer the camera); -inf where the mesh does not cover the pixel.
      face_index: [H, W] int32 index into `faces` of the triangle seen at the pixel; -1 where empty.
    """

    image: np.ndarray
    mask: np.ndarray
    depth: np.ndarray
    face_index: np.ndarray


def render(vertices, faces, cam, image_size: int, colors=None, light_dir=DEFAULT_LIGHT_DIR,
           ambient: float = DEFAULT_AMBIENT, diffuse: float = DEFAULT_DIFFUSE, background=None,
           cull_backfaces: bool = False, supersample: int = 1) -> RenderResult:
    """Renders a triangle mesh through the weak-perspective camera.

    Args:
      vertices: [V, 3] float, model frame (y up, z towards the camera).
      faces: [F, 3] int vertex indices, counter-clockwise seen from outside.
      cam: [3] (s, tx, ty) as in `ringnet_tf.camera.project`; s may be negative, not 0.
      image_size: side of the square image in pixels.
      colors: [V, 3] per-vertex albedo, floats in [0, 1] (or uint8), interpolated across faces;
        None for `DEFAULT_COLOR` everywhere.
      light_dir: [3] direction towards the (directional) light in the model frame.
      ambient, diffuse: the light's ambient and diffuse intensities (>= 0).
      background: None (black), an RGB tuple of 0..255, or an [H, W, 3] uint8 image.
      cull_backfaces: drop triangles that face away from the camera (a closed mesh renders the
        same, faster; an open one shows what is behind instead of its inside).
      supersample: anti-aliasing factor k >= 1: the image is rendered at k x k samples per pixel
        and box-filtered. `mask`, `depth` and `face_index` then come from sample (k // 2, k // 2)
        of each pixel, which is the pixel centre when k is odd.
    Returns:
      A `RenderResult`.
    Raises:
      ValueError: a malformed argument, named with its value or shape.
    """
    size = checks.check_size(image_size)
    v = checks.check_vertices(vertices)
    faces = checks.check_faces(faces, len(v))
    cam = checks.check_cam(cam)
    colors = checks.check_colors(colors, len(v))
    light = checks.check_light(light_dir)
    ambient = checks.check_nonneg("ambient", ambient)
    diffuse = checks.check_nonneg("diffuse", diffuse)
    image = checks.check_background(background, size)
    k = checks.check_positive_int("supersample", supersample)
    big = size * k
    frags = rasterize(v, faces, cam, big, bool(cull_backfaces))
    rgb = shade(v, frags, colors, light, ambient, diffuse)
    pix, face_index, depth = frags.pix, frags.face_index, frags.depth
    if k == 1:
        flat = image.reshape(-1, 3)
        for channel in range(3):
            flat[pix, channel] = to_uint8(rgb[channel])
    else:
        hi = np.repeat(np.repeat(image.astype(np.float64) / 255.0, k, axis=0), k, axis=1)
        flat = hi.reshape(-1, 3)
        for channel in range(3):
            flat[pix, channel] = rgb[channel]
        image = to_uint8(hi.reshape(size, k, size, k, 3).mean(axis=(1, 3)))
        face_index = face_index.reshape(size, k, size, k)[:, k // 2, :, k // 2]
        depth = depth.reshape(size, k, size, k)[:, k // 2, :, k // 2]
    face_index = face_index.reshape(size, size).astype(np.int32)
    depth = np.ascontiguousarray(depth.reshape(size, size))
    return RenderResult(image=image, mask=face_index >= 0, depth=depth, face_index=face_index)


def overlay(image, result: RenderResult, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """Blends a render over a photo where the mesh covers it.

    The photo may be smaller than the (square) render: it then covers the render's top-left
    [H, W] corner, as when a non-square photo's frame is rendered at its longer side.

    Args:
      image: [H, W, 3] uint8 photo, H and W at most the render's side.
      result: a `RenderResult`.
      alpha: opacity of the render in [0, 1].
    Returns:
      [H, W, 3] uint8: image * (1 - alpha) + render * alpha (rounded) on the mask, image elsewhere.
    """
    photo = np.asarray(image)
    side = result.image.shape[0]
    if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8 \
            or photo.shape[0] > side or photo.shape[1] > side:
        raise ValueError(f"image must be [H, W, 3] uint8 with H, W <= the render's {side}; got "
                         f"{photo.shape} {photo.dtype}")
    alpha = checks.check_alpha(alpha)
    h, w = photo.shape[:2]
    m = result.mask[:h, :w]
    out = photo.copy()
    drawn = result.image[:h, :w][m].astype(np.float64)
    blend = photo[m].astype(np.float64) * (1 - alpha) + drawn * alpha
    out[m] = np.floor(blend + 0.5).astype(np.uint8)
    return out


def rotate_y(vertices, angle_deg: float, center=None) -> np.ndarray:
    """[V, 3] vertices turned by angle_deg about the vertical (y) axis through center (default:
    the middle of their bounding box). Positive angles turn the face (+z) towards +x."""
    v = checks.check_vertices(vertices)
    if center is None:
        center = 0.5 * (v.min(0) + v.max(0)) if len(v) else np.zeros(3)
    center = np.asarray(center, np.float64)
    return (v - center) @ rotation_about_y(angle_deg).T + center


def side_view(vertices, faces, cam, image_size: int, angle_deg: float = 90.0, **kwargs
              ) -> RenderResult:
    """Renders the mesh turned about the vertical axis through its bounding-box centre (the demo's
    profile figure); 90 degrees shows the profile with the face towards the right of the image.
    Other keyword arguments go to `render`."""
    return render(rotate_y(vertices, angle_deg), faces, cam, image_size, **kwargs)
