"""Argument checking of the renderer (and of `ringnet_tf.texture`, which takes the same mesh and
camera arguments): every error is a ValueError naming the argument and the offending value or shape."""
from __future__ import annotations

import numbers

import numpy as np

from ringnet_tf.render.raster import MAX_FACES


def check_positive_int(name: str, value) -> int:
    """A whole number >= 1 (not a bool)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def check_size(image_size) -> int:
    """An image side: a positive whole number of pixels (errors name it `image_size`)."""
    return check_positive_int("image_size", image_size)


def check_vertices(vertices) -> np.ndarray:
    """[V, 3] finite float64 vertices."""
    v = np.asarray(vertices, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"vertices must be [V, 3]; got shape {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError("vertices must be finite; got NaN or inf")
    return v


def check_faces(faces, num_vertices: int) -> np.ndarray:
    """[F, 3] int64 indices into `num_vertices` vertices."""
    f = np.asarray(faces)
    if f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"faces must be [F, 3]; got shape {f.shape}")
    if f.size and not np.issubdtype(f.dtype, np.integer):
        raise ValueError(f"faces must hold integer vertex indices; got dtype {f.dtype}")
    f = f.astype(np.int64, copy=False)
    if f.size and (f.min() < 0 or f.max() >= num_vertices):
        raise ValueError(f"faces must index the {num_vertices} vertices; "
                         f"got indices in [{f.min()}, {f.max()}]")
    if len(f) > MAX_FACES:
        raise ValueError(f"faces: at most {MAX_FACES} triangles; got {len(f)}")
    return f


def check_cam(cam) -> np.ndarray:
    """[3] (s, tx, ty), finite, s != 0."""
    c = np.asarray(cam, dtype=np.float64)
    if c.shape != (3,) or not np.isfinite(c).all() or c[0] == 0:
        raise ValueError(f"cam must be 3 finite numbers (s, tx, ty) with s != 0; got {cam!r}")
    return c


def check_nonneg(name: str, value) -> float:
    """A finite real number >= 0 (not a bool)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) \
            or not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
    return float(value)


def check_colors(colors, num_vertices: int) -> np.ndarray | None:
    """None, or [V, 3] per-vertex albedo as float64 in [0, 1] (uint8 is scaled by 1 / 255)."""
    if colors is None:
        return None
    c = np.asarray(colors)
    if c.shape != (num_vertices, 3):
        raise ValueError(f"colors must be [V, 3] = [{num_vertices}, 3]; got shape {c.shape}")
    if c.dtype == np.uint8:
        return c.astype(np.float64) / 255.0
    c = c.astype(np.float64)
    if not np.isfinite(c).all() or c.min(initial=0.0) < 0 or c.max(initial=0.0) > 1:
        raise ValueError(f"colors must be floats in [0, 1] (or uint8); got values in "
                         f"[{np.nanmin(c)}, {np.nanmax(c)}]")
    return c


def check_light(light_dir) -> np.ndarray:
    """[3] unit direction towards the light."""
    l = np.asarray(light_dir, dtype=np.float64)
    norm = np.linalg.norm(l) if l.shape == (3,) and np.isfinite(l).all() else 0.0
    if norm == 0:
        raise ValueError(f"light_dir must be 3 finite numbers, not all zero; got {light_dir!r}")
    return l / norm


def check_background(background, size: int) -> np.ndarray:
    """The background as an [H, W, 3] uint8 array (a fresh copy): None is black, an RGB tuple of
    0..255 a solid colour, an image is copied."""
    if background is None:
        return np.zeros((size, size, 3), np.uint8)
    if isinstance(background, np.ndarray) and background.ndim == 3:
        if background.shape != (size, size, 3) or background.dtype != np.uint8:
            raise ValueError(f"background image must be [{size}, {size}, 3] uint8; got "
                             f"{background.shape} {background.dtype}")
        return background.copy()
    rgb = np.asarray(background)
    if rgb.shape != (3,) or not np.issubdtype(rgb.dtype, np.number) \
            or not np.all((rgb >= 0) & (rgb <= 255)):
        raise ValueError(f"background must be None, an RGB tuple of 0..255 or a [{size}, {size}, 3]"
                         f" uint8 image; got {background!r}")
    out = np.empty((size, size, 3), np.uint8)
    out[...] = np.round(rgb.astype(np.float64)).astype(np.uint8)
    return out


def check_alpha(alpha) -> float:
    """An opacity in [0, 1] (not a bool)."""
    if isinstance(alpha, (bool, np.bool_)) or not isinstance(alpha, numbers.Real) \
            or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha!r}")
    return float(alpha)
