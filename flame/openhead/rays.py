"""Rays and ray casting: each skin vertex is the outermost surface point on a ray from inside.

Rays fan out from one origin; below the neck bend they turn into parallel rays whose origin slides
down the neck (no crossings, even sampling of the neck and under the chin). A sample direction u
[N, 3] (unit) names its ray; `_directions_of_points` inverts the map.
"""
from __future__ import annotations

import numpy as np

from flame.openhead.anatomy import _DEG
from flame.openhead.sculpt import head_sdf

# Rays: every vertex of the skin is the outermost surface point on a ray from inside the head.
# Rays fan out from _RAY_ORIGIN; below _NECK_BEND_ELEV they bend into parallel rays whose origin
# slides down the neck (no ray crossings, even sampling of the neck and under the chin).
_RAY_ORIGIN = np.array([0.0, 0.0, -0.005])
_NECK_BEND_ELEV = -30.0 * _DEG
_NECK_BEND_WIDTH = 10.0 * _DEG
_NECK_DROP_RATE = 0.22  # metres of origin drop per radian of sample elevation
_RAY_T_MAX = 0.18
_RAY_STEP = 0.003
_RAY_BISECTIONS = 22


def _rays(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ray origins [N, 3] and unit directions [N, 3] for sample directions u [N, 3] (unit)."""
    elev = np.arcsin(np.clip(u[:, 1], -1.0, 1.0))
    horiz = u[:, [0, 2]] / np.maximum(np.linalg.norm(u[:, [0, 2]], axis=1, keepdims=True), 1e-12)
    depth = np.maximum(_NECK_BEND_ELEV - elev, 0.0)
    w = _NECK_BEND_WIDTH
    ray_elev = np.where(depth > 0, _NECK_BEND_ELEV - w * np.tanh(depth / w), elev)
    drop = _NECK_DROP_RATE * (depth - w * np.tanh(depth / w))
    origin = np.tile(_RAY_ORIGIN, (len(u), 1))
    origin[:, 1] -= drop
    c = np.cos(ray_elev)
    direction = np.stack([c * horiz[:, 0], np.sin(ray_elev), c * horiz[:, 1]], axis=1)
    return origin, direction


def _directions_of_points(p: np.ndarray) -> np.ndarray:
    """Inverse of `_rays`: the sample directions u [N, 3] whose rays pass through p [N, 3]."""
    rel = p - _RAY_ORIGIN
    hd = np.linalg.norm(rel[:, [0, 2]], axis=1)
    horiz = rel[:, [0, 2]] / np.maximum(hd, 1e-12)[:, None]
    elev = np.arctan2(rel[:, 1], hd)
    low = elev < _NECK_BEND_ELEV
    if low.any():
        # Bisection on the bend depth: the ray's height at p's horizontal distance falls with it.
        lo = np.zeros(low.sum())
        hi = np.full(low.sum(), np.pi / 2 + _NECK_BEND_ELEV)
        w = _NECK_BEND_WIDTH
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            ray_elev = _NECK_BEND_ELEV - w * np.tanh(mid / w)
            drop = _NECK_DROP_RATE * (mid - w * np.tanh(mid / w))
            height = -drop + hd[low] * np.tan(ray_elev)
            above = height > rel[low, 1]
            lo = np.where(above, mid, lo)
            hi = np.where(above, hi, mid)
        elev = elev.copy()
        elev[low] = _NECK_BEND_ELEV - 0.5 * (lo + hi)
    c = np.cos(elev)
    return np.stack([c * horiz[:, 0], np.sin(elev), c * horiz[:, 1]], axis=1)


def _cast(origin: np.ndarray, direction: np.ndarray, sdf=head_sdf,
          bisections: int = _RAY_BISECTIONS, t_max: float = _RAY_T_MAX) -> np.ndarray:
    """Outermost surface points [N, 3]: march inward from t_max, then bisect the crossing."""
    n = len(origin)
    lo = np.zeros(n)
    hi = np.zeros(n)
    pending = np.arange(n)
    t = t_max
    while len(pending) and t > 0:
        inside = sdf(origin[pending] + t * direction[pending]) < 0
        hit = pending[inside]
        lo[hit], hi[hit] = t, t + _RAY_STEP
        pending = pending[~inside]
        t -= _RAY_STEP
    if len(pending):
        raise RuntimeError(f"{len(pending)} rays missed the head surface")
    for _ in range(bisections):
        mid = 0.5 * (lo + hi)
        inside = sdf(origin + mid[:, None] * direction) < 0
        lo = np.where(inside, mid, lo)
        hi = np.where(inside, hi, mid)
    return origin + (0.5 * (lo + hi))[:, None] * direction


def _cast_directions(u: np.ndarray, bisections: int = _RAY_BISECTIONS) -> np.ndarray:
    return _cast(*_rays(u), bisections=bisections)
