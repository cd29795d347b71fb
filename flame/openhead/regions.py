"""Regions: named per-vertex masks of the open head, for colouring and for the rig."""
from __future__ import annotations

import functools

import numpy as np

from flame.model import FlameModel
from flame.openhead.anatomy import _BROW_INNER_X, _BROW_OUTER_X, _brow_line, _jawline_y
from flame.openhead.sampling import _K_MOUTH, _MOUTH_VERMILION_LOOP
from flame.openhead.sculpt import _sd_ear, _sd_nose
from flame.openhead.topology import _build_geometry, _Geometry

IRIS_RADIUS_DEG = 31.0
PUPIL_RADIUS_DEG = 12.0

REGION_NAMES: tuple[str, ...] = (
    "skin", "face", "scalp", "neck", "ears", "nose", "eyebrows", "lips", "upper_lip", "lower_lip",
    "mouth_interior", "left_eyeball", "right_eyeball", "left_iris", "right_iris", "left_pupil",
    "right_pupil")


def _region_masks_of(geo: _Geometry) -> dict[str, np.ndarray]:
    v = geo.verts
    n = len(v)
    skin = np.zeros(n, bool)
    skin[:geo.num_skin] = True
    q = v.copy()
    q[:, 0] = np.abs(q[:, 0])
    x, y, z = q[:, 0], q[:, 1], q[:, 2]
    m = {"skin": skin}
    mouth = skin & (geo.kind == _K_MOUTH) & (geo.ring >= 0) & (geo.ring <= _MOUTH_VERMILION_LOOP)
    m["upper_lip"] = mouth & (geo.lip_side > 0)
    m["lower_lip"] = mouth & (geo.lip_side < 0)
    m["lips"] = mouth
    t = (x - _BROW_INNER_X) / (_BROW_OUTER_X - _BROW_INNER_X)
    _, by, half = _brow_line(np.clip(t, 0, 1))
    m["eyebrows"] = skin & (z > 0.03) & (t > -0.05) & (t < 1.05) & (np.abs(y - by) < half)
    m["nose"] = (skin & (_sd_nose(q) < 0.0015) & (x < 0.022) & (y > -0.047) & (y < 0.012)
                 & (z > 0.06))
    m["ears"] = skin & (_sd_ear(q) < 0.0025) & (x > 0.06)
    m["neck"] = skin & ~m["ears"] & (y < _jawline_y(z) - 0.008)
    scalp = (y > 0.066 - 0.15 * np.maximum(0.0, 0.04 - z)) | ((z < -0.035) & (y > -0.065))
    scalp |= (x > 0.058) & (z < 0.012) & (y > -0.015)  # above and in front of the ears
    m["scalp"] = skin & scalp & ~m["ears"] & ~m["neck"]
    m["face"] = skin & ~m["scalp"] & ~m["neck"] & ~m["ears"]
    m["mouth_interior"] = np.zeros(n, bool)
    m["mouth_interior"][geo.mouth_bag] = True
    for side, idx in (("left", geo.eyeball_left), ("right", geo.eyeball_right)):
        parts = (("eyeball", 181.0), ("iris", IRIS_RADIUS_DEG), ("pupil", PUPIL_RADIUS_DEG))
        for name, limit in parts:
            mask = np.zeros(n, bool)
            mask[idx[geo.eyeball_polar_deg <= limit]] = True
            m[f"{side}_{name}"] = mask
    return {k: m[k] for k in REGION_NAMES}


@functools.lru_cache(maxsize=1)
def _cached_region_masks() -> tuple[int, dict[str, np.ndarray]]:
    geo = _build_geometry()
    return len(geo.verts), _region_masks_of(geo)


def region_masks(model: FlameModel | None = None) -> dict[str, np.ndarray]:
    """Named per-vertex masks of the open head, each [V] bool (computed once per process).

    Keys (REGION_NAMES): "skin" (the outer skin surface), "face", "scalp", "neck", "ears"
    (these four partition the skin), "nose", "eyebrows", "lips" (the red of the lips, both mouth
    corners included), "upper_lip" and "lower_lip" (lips without the two corner vertices),
    "mouth_interior" (the pocket behind the lips, seen when the mouth opens), "left_eyeball",
    "right_eyeball" (closed eyeball meshes; the subject's left is +x) and their "left_iris",
    "right_iris", "left_pupil", "right_pupil" subsets. Skin, mouth interior and the two eyeballs
    partition all vertices.

    Args:
      model: the open head model the masks are for, or None. Any model with the open head's
        topology (e.g. built by `build_open_head` or loaded from its files) is accepted.

    Raises:
      ValueError: if `model` does not have the open head's number of vertices.
    """
    nv, masks = _cached_region_masks()
    if model is not None and model.num_vertices != nv:
        raise ValueError(f"region masks are for the open head ({nv} vertices); "
                         f"this model has {model.num_vertices}")
    return {k: m.copy() for k, m in masks.items()}
