"""The open head: a FLAME-format head model generated from code, free to ship and to train on.

FLAME itself may not be redistributed, so this module builds a head model of its own, in exactly
FLAME's file formats (`flame.model.save_flame_files`), deterministically and in a few seconds:

- Geometry: a sculpted implicit surface (smooth unions of ellipsoids, tubes and a lofted face
  section, all in metres) is sampled by rays from inside the head. Ray directions are a
  mirror-symmetric variable-density Poisson-disk set (denser on the face) plus structured rings
  around the eye openings and loops around the mouth; their spherical Delaunay triangulation is
  the mesh. The eye openings are holes behind which sit two separate closed eyeball meshes; the
  mouth line is a slit (upper and lower lip vertices are distinct), so a jaw rotation opens it.
  A small pocket behind the lips (the mouth interior) shows when the mouth opens.
- Rig: FLAME's five joints (global, neck, jaw, left eye, right eye), a J_regressor of
  non-negative rows over the surface around each joint, smooth skinning weights (designed fields,
  Laplacian-smoothed over the mesh, which the slit cuts), and small pose correctives for the jaw
  and the neck.
- Blend shapes: semantic deformation fields (head size, nose, jaw, smile, brows, eyelids...) plus
  random smooth fields, orthogonalised by an SVD, so that the 300 identity and 100 expression
  components are ordered by variance and N(0, 1) coefficients give plausible heads; eyeballs
  move rigidly with their sockets (identity) and stay put (expression).
- Landmarks: 51 static iBUG landmarks and the 79 x 17 contour table, computed from the mesh the
  way FLAME's were (the jaw-line silhouette at every whole degree of yaw).

Axes as FLAME: metres, y up, z out of the face, +x toward the subject's left. Letters in shapes:
V vertices, F faces.

Public API: `build_open_head()`, `ensure_open_head(cache_dir)`, `region_masks(model)`,
`OPEN_HEAD_VERSION`. Command line: `python -m flame.openhead --out DIR [--force]`.

Deterministic: one fixed seed, a canonical face order and fixed signs of the components give the
same arrays on every call. A change of NumPy's random streams or of qhull's triangulation could
change them; the fingerprint and the tests would show it (then bump OPEN_HEAD_VERSION).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import pathlib
import sys
import tempfile
import time

import numpy as np
import scipy.sparse
from scipy.interpolate import PchipInterpolator
from scipy.spatial import ConvexHull, cKDTree

from flame import constants as C
from flame.model import (DYNAMIC_EMBEDDING_FILENAME, MODEL_FILENAME, STATIC_EMBEDDING_FILENAME,
                         FlameModel, save_flame_files)

# Bump when the generated arrays change: it names the cache folder (openhead-<version>).
OPEN_HEAD_VERSION = "1.0"

# The only seed: every random choice (sample priorities, random deformation fields) derives from it.
_SEED = 5023

# Environment variable and default for the cache root of `ensure_open_head`.
CACHE_ENV_VAR = "RINGNET_TF_CACHE"
DEFAULT_CACHE_ROOT = pathlib.Path("~/.cache/ringnet_tf")

_DEG = np.pi / 180.0

# ---------------------------------------------------------------------------------------------
# Anatomy (metres). The left side (+x) is described; everything is mirrored to the right.
# ---------------------------------------------------------------------------------------------
EYEBALL_RADIUS = 0.0120
LEFT_EYE_CENTRE = np.array([0.0320, 0.0000, 0.0620])
RIGHT_EYE_CENTRE = LEFT_EYE_CENTRE * np.array([-1.0, 1.0, 1.0])
# The eyelids are the skin wrapped over the eyeball at this extra radius.
LID_THICKNESS = 0.0015
# Lid margin vertices sit this far off the eyeball surface (no visible gap, no intersection).
LID_MARGIN_GAP = 0.0002
# Eye opening (palpebral fissure) in the eye's own angles, degrees: azimuth alpha from +z toward
# the lateral side, elevation beta. Canthi at these azimuths, lid heights at the peaks.
EYE_INNER_CANTHUS_DEG = -68.0
EYE_OUTER_CANTHUS_DEG = 76.0
EYE_UPPER_LID_DEG = 23.0
EYE_LOWER_LID_DEG = 17.0
# The outer canthus sits a little higher than the inner one (canthal tilt), degrees of elevation.
EYE_INNER_CANTHUS_ELEV_DEG = -2.0
EYE_OUTER_CANTHUS_ELEV_DEG = 3.0

# Mouth: the stomion line (where the lips meet) from corner to corner.
MOUTH_HALF_WIDTH = 0.0255
MOUTH_Y = -0.0670
MOUTH_CORNER_RISE = 0.0012
MOUTH_FRONT_Z = 0.0860

# Neck stub: the open bottom boundary of the mesh lies at this height.
NECK_BOTTOM_Y = -0.200

# Anatomical joint targets (the J_regressor reproduces them on the template).
ROOT_JOINT = np.array([0.0, -0.160, -0.020])
NECK_JOINT = np.array([0.0, -0.040, -0.026])
JAW_JOINT = np.array([0.0, -0.028, -0.002])

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


# ---------------------------------------------------------------------------------------------
# The sculpt: an implicit surface, negative inside (approximately a signed distance in metres).
# ---------------------------------------------------------------------------------------------
def _sd_ellipsoid(p: np.ndarray, centre, radii, rot: np.ndarray | None = None) -> np.ndarray:
    """Approximate signed distance [N] of points p [N, 3] to an ellipsoid (first-order correct)."""
    q = p - np.asarray(centre, float)
    if rot is not None:
        q = q @ rot
    r = np.asarray(radii, float)
    a = q / r
    k0 = np.sqrt(np.einsum("ij,ij->i", a, a))
    a = a / r
    k1 = np.sqrt(np.einsum("ij,ij->i", a, a))
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-12)


def _sd_tube(p: np.ndarray, pts, radii, scale=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Signed distance [N] to a polyline tube with radii interpolated along it (in scaled space)."""
    s = np.asarray(scale, float)
    q = p / s
    P = np.asarray(pts, float) / s
    R = np.asarray(radii, float)
    d = np.full(len(p), np.inf)
    for i in range(len(P) - 1):
        a, ab = P[i], P[i + 1] - P[i]
        t = np.clip(((q - a) @ ab) / (ab @ ab), 0.0, 1.0)
        e = q - (a + t[:, None] * ab)
        dist = np.sqrt(np.einsum("ij,ij->i", e, e)) - (R[i] + t * (R[i + 1] - R[i]))
        d = np.minimum(d, dist)
    return d * s.min()


def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth union with blend width k (metres)."""
    h = np.maximum(k - np.abs(a - b), 0.0) / k
    return np.minimum(a, b) - h * h * k * 0.25


def _smax(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    return -_smin(-a, -b, k)


def _rot_x(deg: float) -> np.ndarray:
    t = deg * _DEG
    c, s = np.cos(t), np.sin(t)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rot_y(deg: float) -> np.ndarray:
    t = deg * _DEG
    c, s = np.cos(t), np.sin(t)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


# The face section, lofted along y: height, half width, front z (midline), back z, exponent of
# the front half of the section (above 2 flattens the front of the face).
_FACE_LOFT = np.array([
    [0.055, 0.054, 0.066, -0.040, 2.4],
    [0.030, 0.060, 0.078, -0.040, 2.6],
    [0.010, 0.063, 0.077, -0.040, 2.7],
    [-0.010, 0.066, 0.075, -0.038, 2.6],
    [-0.030, 0.065, 0.080, -0.034, 2.4],
    [-0.050, 0.061, 0.084, -0.028, 2.1],
    [-0.068, 0.056, 0.084, -0.020, 2.0],
    [-0.083, 0.050, 0.080, -0.012, 2.0],
    [-0.097, 0.040, 0.080, 0.000, 2.0],
    [-0.108, 0.027, 0.075, 0.018, 2.0],
    [-0.116, 0.013, 0.066, 0.036, 2.0],
])
_LOFT_Y_RANGE = (-0.118, 0.055)


@functools.lru_cache(maxsize=1)
def _loft_splines():
    return PchipInterpolator(_FACE_LOFT[::-1, 0], _FACE_LOFT[::-1, 1:5], axis=0)


def _sd_face_loft(p: np.ndarray) -> np.ndarray:
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    y0, y1 = _LOFT_Y_RANGE
    a, zf, zb, nf = _loft_splines()(np.clip(y, y0, y1)).T
    zc, b = 0.5 * (zf + zb), 0.5 * (zf - zb)
    n = np.where(z > zc, nf, 2.0)
    u1 = np.abs(x) / a + 1e-12
    u2 = np.abs(z - zc) / b + 1e-12
    F = (u1 ** n + u2 ** n) ** (1.0 / n)
    g1 = u1 ** (n - 1) * F ** (1 - n) / a
    g2 = u2 ** (n - 1) * F ** (1 - n) / b
    dxz = (F - 1.0) / np.sqrt(g1 * g1 + g2 * g2)
    dy = np.maximum(y0 - y, y - y1)
    return np.minimum(np.maximum(dxz, dy), 0.0) + np.hypot(np.maximum(dxz, 0), np.maximum(dy, 0))


# Lip tubes (left half, from the midline to the corner): centre points and radii.
_UPPER_LIP = ([[0.0, -0.0618, 0.0830], [0.010, -0.0618, 0.0812], [0.019, -0.0636, 0.0762],
               [0.0255, -0.0660, 0.0690]], [0.0046, 0.0042, 0.0030, 0.0014])
_LOWER_LIP = ([[0.0, -0.0728, 0.0815], [0.010, -0.0726, 0.0797], [0.019, -0.0700, 0.0752],
               [0.0255, -0.0668, 0.0690]], [0.0058, 0.0052, 0.0034, 0.0014])


# Nose: the dorsum runs from the nasion to the tip; its sides are planes through the dorsum whose
# normals turn from the forward direction by an angle that grows toward the tip (a narrow bridge,
# a wider lower nose); the underside is a plane through the subnasale.
_NASION = np.array([0.0, 0.004, 0.0835])
_NOSE_TIP = np.array([0.0, -0.030, 0.1065])
_NOSE_SIDE_ANGLE_DEG = (52.0, 64.0)
_SUBNASALE = np.array([0.0, -0.0435, 0.0905])
_NOSE_UNDERSIDE_SLOPE = 0.45  # dy/dz of the underside (it rises toward the tip)


def _sd_nose(q: np.ndarray) -> np.ndarray:
    axis = _NOSE_TIP - _NASION
    length = np.linalg.norm(axis)
    axis = axis / length
    fwd = np.array([0.0, -axis[2], axis[1]])
    fwd = fwd if fwd[2] > 0 else -fwd
    r = q - _NASION
    t = r @ axis
    w = r @ fwd  # in front of the dorsum line: w > 0
    x = r[:, 0]
    phi = np.interp(t / length, [0.0, 1.0], _NOSE_SIDE_ANGLE_DEG) * _DEG
    rho = 0.0035  # rounding of the ridge
    wedge = (np.sqrt(x * x + rho * rho) - rho) * np.sin(phi) + w * np.cos(phi)
    below = (_SUBNASALE[1] + _NOSE_UNDERSIDE_SLOPE * (q[:, 2] - _SUBNASALE[2])) - q[:, 1]
    d = _smax(wedge, below, 0.004)
    d = _smax(d, t - length - 0.002, 0.006)
    d = _smax(d, -0.008 - t, 0.006)  # the wedge ends above the nasion...
    d = _smax(d, -0.03 - w, 0.006)   # ...and inside the face
    tip = _sd_ellipsoid(q, [0.0, -0.0285, 0.0985], [0.0078, 0.0074, 0.0085])
    d = _smin(d, tip, 0.006)
    ala = _sd_ellipsoid(q, [0.0118, -0.0345, 0.0870], [0.0058, 0.0054, 0.0078])
    d = _smin(d, ala, 0.005)
    nostril = _sd_ellipsoid(q, [0.0062, -0.0405, 0.0960], [0.0032, 0.0016, 0.0052])
    return _smax(d, -nostril, 0.0015)


# Ear (left): a frame whose first axis is the outward normal of the auricle (turned forward by
# _EAR_FLARE_DEG), the second up (tilted back by _EAR_TILT_DEG), the third backward.
_EAR_ORIGIN = np.array([0.0745, -0.014, -0.026])
_EAR_FLARE_DEG = 22.0
_EAR_TILT_DEG = 15.0


@functools.lru_cache(maxsize=1)
def _ear_frame() -> np.ndarray:
    n = _rot_y(_EAR_FLARE_DEG) @ np.array([1.0, 0.0, 0.0])
    up = _rot_x(-_EAR_TILT_DEG) @ np.array([0.0, 1.0, 0.0])
    up = _unit(up - (up @ n) * n)
    back = np.cross(n, up)
    back = back if back[2] < 0 else -back
    return np.stack([n, up, back], axis=1)


def _sd_ear(q: np.ndarray) -> np.ndarray:
    """The auricle: a thin oval plate, a rolled rim (helix) from the front top round the back to
    the lobe, a bowl (concha) in front of it; shapes broad enough for a few-millimetre mesh."""
    e = (q - _EAR_ORIGIN) @ _ear_frame()  # (outward, up, back)
    d = _sd_ellipsoid(e, [0.0, 0.0, 0.0], [0.0050, 0.0300, 0.0180])
    tau = np.linspace(-20.0, 200.0, 12) * _DEG
    rim = np.stack([np.full_like(tau, 0.0030), 0.0262 * np.cos(tau), 0.0142 * np.sin(tau)], axis=1)
    d = _smin(d, _sd_tube(e, rim, np.full(len(tau), 0.0045)), 0.004)
    lobe = _sd_ellipsoid(e, [0.0005, -0.0235, 0.0015], [0.0045, 0.0080, 0.0075])
    d = _smin(d, lobe, 0.006)
    concha = _sd_ellipsoid(e, [0.0080, -0.0045, -0.0015], [0.0060, 0.0110, 0.0085])
    return _smax(d, -concha, 0.004)


# The eye pocket: a cone around the eye opening (an ellipse in the eye's angles, degrees)
# limited to a ball around the eyeball. The face is carved out inside it so that the lid sphere
# is the skin around the whole opening.
_POCKET_CENTRE_DEG = (4.0, 1.0)
_POCKET_HALF_WIDTH_DEG = 84.0
_POCKET_HALF_HEIGHT_DEG = (40.0, 29.0)  # above, below
_POCKET_DEPTH = 0.007


def _sd_eye_pocket(q: np.ndarray) -> np.ndarray:
    r = q - LEFT_EYE_CENTRE
    dist = np.linalg.norm(r, axis=-1)
    alpha = np.arctan2(r[:, 0], r[:, 2]) / _DEG
    beta = np.arctan2(r[:, 1], np.hypot(r[:, 0], r[:, 2])) / _DEG
    da = (alpha - _POCKET_CENTRE_DEG[0]) / _POCKET_HALF_WIDTH_DEG
    hb = np.where(beta > _POCKET_CENTRE_DEG[1], *_POCKET_HALF_HEIGHT_DEG)
    db = (beta - _POCKET_CENTRE_DEG[1]) / hb
    ang = (np.sqrt(da * da + db * db) - 1.0) * hb * _DEG * dist
    return np.maximum(ang, dist - (EYEBALL_RADIUS + _POCKET_DEPTH))


def _norm(v: np.ndarray) -> np.ndarray:
    return np.sqrt(np.einsum("ij,ij->i", v, v))


def _blend_local(d: np.ndarray, q: np.ndarray, centre, bound: float, k: float, fn,
                 subtract: bool = False) -> np.ndarray:
    """Smooth union (or subtraction) of a local feature, evaluated only where it can matter.

    `bound` is a radius around `centre` outside which the feature's value is at least the
    distance to that ball; points whose lower bound rules out any effect are skipped.
    """
    lower = _norm(q - np.asarray(centre, float)) - bound
    sel = np.flatnonzero(lower < (-d if subtract else d) + k)
    if len(sel):
        f = fn(q[sel])
        d[sel] = _smax(d[sel], -f, k) if subtract else _smin(d[sel], f, k)
    return d


# Mandible: a tube along the lower border of the jaw, from the chin up the ramus.
_JAW_LINE = ([[0.0, -0.111, 0.064], [0.018, -0.109, 0.060], [0.037, -0.097, 0.032],
              [0.047, -0.082, -0.004], [0.052, -0.035, -0.004]],
             [0.007, 0.007, 0.007, 0.007, 0.008])
_NECK_AXIS = ([[0.0, -0.02, -0.028], [0.0, -0.30, -0.006]], [0.054, 0.054])
_NECK_SCALE = (1.0, 1.0, 0.95)
# Local ellipsoids (left side): centre, radii, blend width, subtracted?
_CHEEKBONE = ([0.046, -0.016, 0.046], [0.020, 0.014, 0.020], 0.015, False)
_CHEEK = ([0.036, -0.048, 0.050], [0.024, 0.026, 0.024], 0.020, False)
_CHIN = ([0.0, -0.101, 0.071], [0.016, 0.013, 0.010], 0.012, False)
_BROW = ([0.026, 0.021, 0.068], [0.026, 0.009, 0.016], 0.014, False)
_EYE_SOCKET = ([0.033, 0.000, 0.086], [0.020, 0.0155, 0.018], 0.014, True)
# The groove between the lower lip and the chin.
_MENTOLABIAL = ([[0.0, -0.085, 0.088], [0.016, -0.084, 0.083]], [0.0025, 0.0025])


def _lids(q: np.ndarray) -> np.ndarray:
    return _norm(q - LEFT_EYE_CENTRE) - (EYEBALL_RADIUS + LID_THICKNESS)


def _lips(q: np.ndarray) -> np.ndarray:
    return _smin(_sd_tube(q, *_UPPER_LIP), _sd_tube(q, *_LOWER_LIP), 0.002)


def head_sdf(p: np.ndarray) -> np.ndarray:
    """Signed distance-like value [N] of points p [N, 3] to the neutral head's skin (< 0 inside).

    Exactly mirror-symmetric in x (it is evaluated on |x|). The eyeballs are included, enlarged by
    the lid thickness, so that the eyelids wrap them.
    """
    q = np.array(p, dtype=float, copy=True)
    q[:, 0] = np.abs(q[:, 0])
    d = _sd_ellipsoid(q, [0.0, 0.016, -0.012], [0.074, 0.090, 0.096])  # cranium
    d = _smin(d, _sd_ellipsoid(q, [0.0, 0.042, -0.018], [0.0725, 0.061, 0.086]), 0.02)  # parietal
    d = _smin(d, _sd_face_loft(q), 0.02)
    d = _smin(d, _sd_tube(q, *_JAW_LINE), 0.015)
    d = _smin(d, _sd_tube(q, *_NECK_AXIS, scale=_NECK_SCALE), 0.03)
    for centre, radii, k, subtract in (_CHEEKBONE, _CHEEK, _CHIN, _BROW, _EYE_SOCKET):
        d = _blend_local(d, q, centre, 1.1 * max(radii), k,
                         functools.partial(_sd_ellipsoid, centre=centre, radii=radii), subtract)
    d = _blend_local(d, q, LEFT_EYE_CENTRE, EYEBALL_RADIUS + _POCKET_DEPTH, 0.003, _sd_eye_pocket,
                     subtract=True)
    d = _blend_local(d, q, LEFT_EYE_CENTRE, EYEBALL_RADIUS + LID_THICKNESS, 0.002, _lids)
    d = _blend_local(d, q, [0.0, -0.015, 0.088], 0.05, 0.007, _sd_nose)
    d = _blend_local(d, q, [0.0, -0.066, 0.078], 0.035, 0.005, _lips)
    d = _blend_local(d, q, [0.008, -0.0845, 0.0855], 0.012, 0.006,
                     functools.partial(_sd_tube, pts=_MENTOLABIAL[0], radii=_MENTOLABIAL[1]),
                     subtract=True)
    d = _blend_local(d, q, _EAR_ORIGIN, 0.036, 0.006, _sd_ear)
    return d


# ---------------------------------------------------------------------------------------------
# Rays and ray casting
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# Sampling: where the skin vertices go
# ---------------------------------------------------------------------------------------------
# Target vertex spacing (Poisson-disk radius, metres) by region.
_SPACING_FACE = 0.0031
_SPACING_NOSE = 0.0024
_SPACING_EAR = 0.0023
_SPACING_BACK = 0.0074
# Fixed points on the midline are spaced a little wider than the Poisson radius (a Poisson set's
# mean edge is longer than its radius) and free samples keep this far (x radius) from the midline,
# so that no triangle edge jumps across the midline (the mesh stays mirror-symmetric).
_MIDLINE_SPACING_FACTOR = 1.2
_MIDLINE_CLEARANCE = 0.65
# Candidate directions for the Poisson-disk selection, concentrated toward the face.
_NUM_CANDIDATES = 36000
_CANDIDATE_FOCUS_AXIS = np.array([0.0, -0.3, 1.0]) / np.linalg.norm([0.0, -0.3, 1.0])
_CANDIDATE_FOCUS = 1.5
# Extra candidates around the ear (sphere-equivalent count, cone half angle in radians).
_NUM_EAR_CANDIDATES = 160000
_EAR_CANDIDATE_CONE = 0.42

# Eye rings: offsets (metres) of the rings around the eye opening and their spacing (metres).
# Ring 0 is the lid margin (on the eyeball), ring 1 the lid's outer edge.
_EYE_RING_OFFSETS = (0.0, 0.0008, 0.0022, 0.0040, 0.0064)
_EYE_RING_SPACING = (0.0019, 0.0019, 0.0022, 0.0026, 0.0030)
# Mouth loops around the slit: (extra half width past the corner, height above, depth below),
# metres; loop 3 runs along the vermilion border (the red of the lips is inside it).
_MOUTH_LOOPS = ((0.0016, 0.0023, 0.0026), (0.0036, 0.0049, 0.0056), (0.0056, 0.0078, 0.0092),
                (0.0080, 0.0104, 0.0124), (0.0110, 0.0142, 0.0164), (0.0146, 0.0188, 0.0208))
_MOUTH_VERMILION_LOOP = 3
_MOUTH_LOOP_SPACING = (0.0016, 0.0018, 0.0020, 0.0022, 0.0026, 0.0030)
_MOUTH_SLIT_SPACING = 0.0016
# The slit (where the lips meet) is recessed this far along -z: a crease, lips with thickness.
_LIP_CURL_DEPTH = 0.0015


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _spacing(p: np.ndarray) -> np.ndarray:
    """Target vertex spacing [N] in metres at surface points p [N, 3]."""
    x, y, z = np.abs(p[:, 0]), p[:, 1], p[:, 2]
    face = (_smoothstep(-0.01, 0.045, z) * (1.0 - _smoothstep(0.05, 0.085, y))
            * _smoothstep(-0.145, -0.11, y))
    h = _SPACING_BACK + (_SPACING_FACE - _SPACING_BACK) * face
    nose = np.exp(-((x / 0.018) ** 2 + ((y + 0.02) / 0.03) ** 2 + ((z - 0.09) / 0.03) ** 2))
    h = h + (_SPACING_NOSE - h) * nose
    ear = np.exp(-(((x - 0.08) / 0.015) ** 2 + ((y + 0.012) / 0.035) ** 2
                   + ((z + 0.024) / 0.025) ** 2))
    return h + np.minimum(_SPACING_EAR - h, 0.0) * ear


def _fibonacci_sphere(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    y = 1.0 - 2.0 * i / n
    r = np.sqrt(1.0 - y * y)
    th = np.pi * (1.0 + 5.0 ** 0.5) * i
    return np.stack([r * np.cos(th), y, r * np.sin(th)], axis=1)


def _focus(u: np.ndarray, axis: np.ndarray, s: float) -> np.ndarray:
    """Conformal sphere warp (a stereographic zoom) concentrating directions toward `axis`.

    The frame's first axis is +x, so the warp commutes with the left-right mirror.
    """
    e1 = np.array([1.0, 0.0, 0.0])
    e3 = axis
    e2 = np.cross(e3, e1)
    a, b, c = u @ e1, u @ e2, u @ e3
    wa, wb = a / (1.0 + c) / s, b / (1.0 + c) / s
    r2 = wa * wa + wb * wb
    return (np.outer(2 * wa / (1 + r2), e1) + np.outer(2 * wb / (1 + r2), e2)
            + np.outer((1 - r2) / (1 + r2), e3))


def _eye_point(alpha_deg, beta_deg, radius: float, left: bool = True) -> np.ndarray:
    """3D points [N, 3] at eye-local angles (alpha toward the lateral side) and radius."""
    a, b = np.asarray(alpha_deg) * _DEG, np.asarray(beta_deg) * _DEG
    local = np.stack([np.cos(b) * np.sin(a), np.sin(b), np.cos(b) * np.cos(a)], axis=-1) * radius
    p = LEFT_EYE_CENTRE + local
    return p if left else p * np.array([-1.0, 1.0, 1.0])


def _eye_angles(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left-eye-local angles (alpha, beta) in degrees of points p [N, 3] (x folded to the left)."""
    q = np.array(p, float)
    q[:, 0] = np.abs(q[:, 0])
    r = q - LEFT_EYE_CENTRE
    alpha = np.arctan2(r[:, 0], r[:, 2]) / _DEG
    beta = np.arctan2(r[:, 1], np.hypot(r[:, 0], r[:, 2])) / _DEG
    return alpha, beta


def _eye_opening(s: np.ndarray) -> np.ndarray:
    """The lid margin in eye angles [N, 2] (degrees): s in [0, 1] runs the upper lid from the inner
    to the outer canthus, s in [1, 2] the lower lid back. Almond: the upper lid peaks a little
    medially, the lower lid is lowest a little laterally, the outer canthus is higher."""
    s = np.asarray(s, float)
    upper = s <= 1.0
    t = np.where(upper, s, 2.0 - s)
    alpha = EYE_INNER_CANTHUS_DEG + t * (EYE_OUTER_CANTHUS_DEG - EYE_INNER_CANTHUS_DEG)
    tilt = (EYE_INNER_CANTHUS_ELEV_DEG
            + t * (EYE_OUTER_CANTHUS_ELEV_DEG - EYE_INNER_CANTHUS_ELEV_DEG))
    up = EYE_UPPER_LID_DEG * np.sin(np.pi * np.clip(t, 0, 1) ** 0.85) ** 0.75
    lo = EYE_LOWER_LID_DEG * np.sin(np.pi * np.clip(t, 0, 1) ** 1.15) ** 0.85
    beta = tilt + np.where(upper, up, -lo)
    return np.stack([alpha, beta], axis=-1)


_EYE_OPENING_CENTRE = np.array([0.5 * (EYE_INNER_CANTHUS_DEG + EYE_OUTER_CANTHUS_DEG),
                                0.5 * (EYE_INNER_CANTHUS_ELEV_DEG + EYE_OUTER_CANTHUS_ELEV_DEG)])


def _eye_ring_angles(offset_deg: float, s: np.ndarray) -> np.ndarray:
    """Ring around the opening, pushed out radially (in angle space) by offset_deg: [N, 2]."""
    ab = _eye_opening(s)
    d = ab - _EYE_OPENING_CENTRE
    return ab + offset_deg * d / np.linalg.norm(d, axis=-1, keepdims=True)


def _resample_closed(points: np.ndarray, spacing: float, phase: float,
                     anchors: tuple[float, ...] = ()) -> np.ndarray:
    """Parameters (indices into a dense closed polyline, fractional) at equal 3D arc length.

    With anchors (fractions of the polyline index range), each piece between anchors is divided
    evenly so that the anchors themselves are sample points.
    """
    seg = np.linalg.norm(np.diff(np.vstack([points, points[:1]]), axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    total = cum[-1]
    idx = np.arange(len(points) + 1, dtype=float)
    if not anchors:
        n = max(3, int(round(total / spacing)))
        arc = (np.arange(n) + phase) * total / n
        return np.interp(arc, cum, idx)
    out = []
    bounds = [a * len(points) for a in anchors] + [anchors[0] * len(points) + len(points)]
    for i0, i1 in zip(bounds[:-1], bounds[1:]):
        c0, c1 = np.interp(i0, idx, cum), np.interp(i1, idx, cum)
        n = max(1, int(round((c1 - c0) / spacing)))
        arc = c0 + np.arange(n) * (c1 - c0) / n
        out.append(np.interp(arc, cum, idx))
    return np.concatenate(out)


def _left_eye_rings() -> tuple[list[np.ndarray], np.ndarray]:
    """Sample directions [n_k, 3] of each ring around the left eye opening, and the lid-margin
    parameter s [n_0] of ring 0's points (see `_eye_opening`).

    Ring 0 (the lid margin) lies on the eyeball; the outer rings are offsets of it in direction
    space (radially from the opening's centre), by _EYE_RING_OFFSETS metres at the eye's distance:
    offsets taken on the eyeball itself would fold over where it turns away from the rays (the
    inner canthus).
    """
    dense = 1200
    s = np.arange(dense) * 2.0 / dense
    ab = _eye_opening(s)
    pts = _eye_point(ab[:, 0], ab[:, 1], EYEBALL_RADIUS + LID_THICKNESS)
    idx = _resample_closed(pts, _EYE_RING_SPACING[0], 0.0, anchors=(0.0, 0.5))  # canthi are points
    margin_s = np.interp(idx, np.arange(dense + 1), np.append(s, 2.0))
    dist = np.linalg.norm(LEFT_EYE_CENTRE - _RAY_ORIGIN)

    def ring_dirs(ss, offset):
        ab = _eye_opening(ss)
        on_lids = _eye_point(ab[:, 0], ab[:, 1], EYEBALL_RADIUS + LID_THICKNESS)
        u = _unit(_directions_of_points(on_lids))
        if offset == 0.0:
            return u
        centre = _unit(_directions_of_points(LEFT_EYE_CENTRE[None]))[0]
        t = u - (u @ centre)[:, None] * centre
        t_len = np.linalg.norm(t, axis=1, keepdims=True)
        return _unit(centre + t * (1.0 + (offset / dist) / t_len))

    rings = [ring_dirs(margin_s, 0.0)]
    for k in range(1, len(_EYE_RING_OFFSETS)):
        if k == 1:
            # The lid's outer edge follows the margin point for point, a tenth of a step along:
            # every margin segment is then an edge of the Delaunay triangulation (its diametral
            # circle holds no other point), so the eye opening is exactly the margin polygon,
            # and no four points are co-circular (a unique triangulation).
            ss = margin_s + 0.1 * np.diff(np.append(margin_s, margin_s[0] + 2.0))
        else:  # the other rings: even spacing, alternate rings staggered
            offset_deg = _EYE_RING_OFFSETS[k] / EYEBALL_RADIUS / _DEG
            off_pts = _eye_point(*_eye_ring_angles(offset_deg, s).T, EYEBALL_RADIUS + LID_THICKNESS)
            idx = _resample_closed(off_pts, _EYE_RING_SPACING[k], 0.5 * (k % 2) + 0.25)
            ss = np.interp(idx, np.arange(dense + 1), np.append(s, 2.0))
        rings.append(ring_dirs(ss, _EYE_RING_OFFSETS[k]))
    return rings, margin_s


def _mouth_line_y(a: np.ndarray) -> np.ndarray:
    return MOUTH_Y + MOUTH_CORNER_RISE * (np.asarray(a) / MOUTH_HALF_WIDTH) ** 2


def _mouth_design_point(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A point near the skin at mouth chart coordinates (a = x, b = height above the mouth line)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    z = MOUTH_FRONT_Z - 12.0 * a * a - 0.15 * np.abs(b)
    return np.stack([a, _mouth_line_y(a) + b, z], axis=-1)


def _mouth_points() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mouth structure for the left half and midline: 3D design points [N, 3], loop index [N]
    (0 = slit), chart coordinates ab [N, 2]. Also the dense outer loop polygon [M, 2]."""
    loop, ab = [], []
    # slit: from the midline to the left corner
    n = int(round(MOUTH_HALF_WIDTH / _MOUTH_SLIT_SPACING))
    a = np.linspace(0.0, MOUTH_HALF_WIDTH, n + 1)
    ab.append(np.stack([a, np.zeros_like(a)], 1))
    loop.append(np.zeros(len(a), int))
    for k in range(1, len(_MOUTH_LOOPS) + 1):
        extra, up, down = _MOUTH_LOOPS[k - 1]
        w = MOUTH_HALF_WIDTH + extra
        for height, sign in ((up, 1.0), (down, -1.0)):
            # quarter ellipse from the midline (0, +-height) to the corner (w, 0), even arc length
            th = np.linspace(0, np.pi / 2, 400)
            q = np.stack([w * np.sin(th), sign * height * np.cos(th)], 1)
            q[-1] = [w, 0.0]  # the loop's corner point lies exactly on the mouth line
            cum = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(q, axis=0), axis=1))])
            m = max(2, int(round(cum[-1] / _MOUTH_LOOP_SPACING[k - 1])))
            arc = np.linspace(0, cum[-1], m + 1)
            if sign < 0:
                arc = arc[:-1]  # the corner point belongs to the upper quarter
            qq = np.stack([np.interp(arc, cum, q[:, 0]), np.interp(arc, cum, q[:, 1])], 1)
            ab.append(qq)
            loop.append(np.full(len(qq), k))
    ab = np.concatenate(ab)
    loop = np.concatenate(loop)
    outer = len(_MOUTH_LOOPS)
    extra, up, down = _MOUTH_LOOPS[outer - 1]
    th = np.linspace(0, 2 * np.pi, 721)[:-1]
    w = MOUTH_HALF_WIDTH + extra
    poly = np.stack([w * np.cos(th), np.where(np.sin(th) >= 0, up, down) * np.sin(th)], 1)
    return _mouth_design_point(ab[:, 0], ab[:, 1]), loop, ab, poly


def _points_in_polygon(pts: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd rule: which 2D points [N, 2] lie inside the closed polygon [M, 2]."""
    x, y = pts[:, 0][:, None], pts[:, 1][:, None]
    x0, y0 = poly[:, 0][None], poly[:, 1][None]
    x1, y1 = np.roll(poly[:, 0], -1)[None], np.roll(poly[:, 1], -1)[None]
    crosses = (y0 > y) != (y1 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        xint = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    return (crosses & (x < xint)).sum(axis=1) % 2 == 1


def _poisson_select(cand: np.ndarray, h: np.ndarray, fixed: np.ndarray, priority: np.ndarray
                    ) -> np.ndarray:
    """Greedy variable-radius Poisson-disk subset of candidate points [N, 3] (indices, sorted).

    Points conflict when closer than their mean spacing h; fixed points [M, 3] are accepted from
    the start. Equal to the sequential greedy pass in priority order, computed in parallel rounds
    (a candidate is taken once no undecided candidate of higher priority conflicts with it).
    """
    alive = np.ones(len(cand), bool)
    if len(fixed):
        dmat = cKDTree(cand).sparse_distance_matrix(cKDTree(fixed), h.max(),
                                                    output_type="coo_matrix")
        bad = dmat.row[dmat.data < h[dmat.row]]
        alive[bad] = False
    pairs = cKDTree(cand).query_pairs(h.max(), output_type="ndarray")
    d = np.linalg.norm(cand[pairs[:, 0]] - cand[pairs[:, 1]], axis=1)
    pairs = pairs[d < 0.5 * (h[pairs[:, 0]] + h[pairs[:, 1]])]
    # orient each conflict from the higher-priority point (smaller value) to the lower one
    hi_first = priority[pairs[:, 0]] < priority[pairs[:, 1]]
    src = np.where(hi_first, pairs[:, 0], pairs[:, 1])
    dst = np.where(hi_first, pairs[:, 1], pairs[:, 0])
    state = np.where(alive, 0, 2)  # 0 undecided, 1 taken, 2 removed
    while (state == 0).any():
        live = (state[src] == 0) & (state[dst] == 0)
        blocked = np.zeros(len(cand), bool)
        blocked[dst[live]] = True
        take = (state == 0) & ~blocked
        state[take] = 1
        knocked = np.concatenate([dst[take[src]], src[take[dst]]])
        knocked = knocked[state[knocked] == 0]
        state[knocked] = 2
    return np.flatnonzero(state == 1)


@dataclasses.dataclass
class _SkinSamples:
    """Sample directions of the skin vertices and what each one is (before the mouth slit split)."""
    u: np.ndarray            # [N, 3] unit sample directions
    kind: np.ndarray         # [N] int: _K_* below
    ring: np.ndarray         # [N] int: eye ring index or mouth loop index, -1 otherwise
    mouth_ab: np.ndarray     # [N, 2] mouth chart coordinates (nan off the mouth structure)
    eye_s: np.ndarray        # [N] lid margin parameter s in [0, 2) for eye ring 0 (nan otherwise)


# What a vertex is: a free Poisson sample, on the midline, on an eye ring, on a mouth loop, on
# the neck boundary, the pole below the neck (removed), or in the mouth pocket.
(_K_FREE, _K_MIDLINE, _K_EYE_LEFT, _K_EYE_RIGHT, _K_MOUTH, _K_NECK_RING, _K_POLE,
 _K_MOUTH_BAG) = range(8)


def _neck_ring_left(n_ring: int = 40) -> np.ndarray:
    """Sample directions [n_ring // 2 + 1, 3] of the neck's bottom boundary, azimuth 0 (front) to
    pi (back) on the left side: for each azimuth the elevation whose ray hits NECK_BOTTOM_Y."""
    phi = np.arange(n_ring // 2 + 1) * 2 * np.pi / n_ring
    elev = np.linspace(-89.5, -40.0, 199) * _DEG
    E, P = np.meshgrid(elev, phi)
    u = np.stack([np.cos(E) * np.sin(P), np.sin(E), np.cos(E) * np.cos(P)], axis=-1)
    y = _cast_directions(u.reshape(-1, 3), bisections=14)[:, 1].reshape(E.shape)
    if np.any(y[:, 0] > NECK_BOTTOM_Y) or np.any(y[:, -1] < NECK_BOTTOM_Y):
        raise RuntimeError("the neck rays do not reach NECK_BOTTOM_Y")
    e = np.array([np.interp(NECK_BOTTOM_Y, yy, elev) for yy in y])  # y grows with elevation
    u = np.stack([np.cos(e) * np.sin(phi), np.sin(e), np.cos(e) * np.cos(phi)], axis=1)
    u[[0, -1], 0] = 0.0  # exactly on the midline
    return u


def _midline_points(exclude: tuple[float, float], ends: tuple[float, float]) -> np.ndarray:
    """Midline sample directions [N, 3] spaced by the local target spacing, on the great circle
    x = 0 from angle ends[0] to ends[1] (angle psi: u = (0, sin psi, cos psi)), skipping the
    interval `exclude` (the mouth structure owns that stretch); end points excluded."""
    psi = np.linspace(ends[0], ends[1], 2400)
    u = np.stack([np.zeros_like(psi), np.sin(psi), np.cos(psi)], axis=1)
    p = _cast_directions(u, bisections=12)
    ds = np.linalg.norm(np.diff(p, axis=0), axis=1)
    h = _MIDLINE_SPACING_FACTOR * _spacing(0.5 * (p[1:] + p[:-1]))
    steps = np.concatenate([[0.0], np.cumsum(ds / h)])
    out = []
    for a, b in ((ends[0], exclude[0]), (exclude[1], ends[1])):
        na, nb = np.interp([a, b], psi, steps)
        n = max(1, int(round(nb - na)))
        targets = na + (nb - na) * np.arange(1, n) / n
        out.append(np.interp(targets, steps, psi))
    ps = np.concatenate(out)
    return np.stack([np.zeros_like(ps), np.sin(ps), np.cos(ps)], axis=1)


def _mirror(p: np.ndarray) -> np.ndarray:
    return p * np.array([-1.0, 1.0, 1.0])


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _sample_skin() -> _SkinSamples:
    """All skin sample directions: midline, left half (fixed structures + Poisson samples), the
    mirror of the left half, and a pole below the neck (removed after triangulation)."""
    rng = np.random.default_rng(_SEED)
    rings, margin_s = _left_eye_rings()
    mouth_p, mouth_loop, mouth_ab, mouth_poly = _mouth_points()
    mouth_u = _unit(_directions_of_points(mouth_p))
    mouth_u[mouth_ab[:, 0] == 0.0, 0] = 0.0
    neck_u = _neck_ring_left()

    # Midline: between the neck ring's front and back points, around the mouth structure.
    on_mid = mouth_ab[:, 0] == 0.0
    mouth_psi = np.arctan2(mouth_u[on_mid, 1], mouth_u[on_mid, 2])
    front = np.arctan2(neck_u[0, 1], neck_u[0, 2])
    back = np.pi - np.arctan2(neck_u[-1, 1], -neck_u[-1, 2])
    mid_u = _midline_points((mouth_psi.min(), mouth_psi.max()), (front, back))

    # Fixed left-half structures.
    eye_u = rings
    fixed_left_u = np.concatenate(eye_u + [mouth_u[~on_mid], neck_u[1:-1]])
    fixed_mid_u = np.concatenate([mid_u, mouth_u[on_mid], neck_u[[0, -1]]])

    # Poisson-disk samples on the left half.
    cand_u = _focus(_fibonacci_sphere(_NUM_CANDIDATES), _CANDIDATE_FOCUS_AXIS, _CANDIDATE_FOCUS)
    # the ears are small and far from the focus: extra candidates around them
    ear_dir = _unit(_EAR_ORIGIN - _RAY_ORIGIN)
    fine = _fibonacci_sphere(_NUM_EAR_CANDIDATES)
    cand_u = np.concatenate([cand_u, fine[fine @ ear_dir > np.cos(_EAR_CANDIDATE_CONE)]])
    cand_u = cand_u[cand_u[:, 0] > 1e-6]
    cand_p = _cast_directions(cand_u, bisections=10)
    h = _spacing(cand_p)
    keep = (cand_p[:, 1] > NECK_BOTTOM_Y + 0.6 * h) & (cand_p[:, 0] >= _MIDLINE_CLEARANCE * h)
    # nothing inside the eye openings' ring structure or the mouth loops
    near_eye = np.linalg.norm(cand_p - LEFT_EYE_CENTRE, axis=1) < 0.035
    al, be = _eye_angles(cand_p[near_eye])
    offset_deg = _EYE_RING_OFFSETS[-1] / EYEBALL_RADIUS / _DEG
    poly = _eye_ring_angles(offset_deg, np.arange(720) * 2.0 / 720)
    inside = np.zeros(len(cand_p), bool)
    inside[np.flatnonzero(near_eye)[_points_in_polygon(np.stack([al, be], 1), poly)]] = True
    # ...and nothing inside the outer ring's polygon in direction space
    outer = rings[-1]
    centre = _unit(_directions_of_points(LEFT_EYE_CENTRE[None]))[0]
    e1 = _unit(np.cross([0.0, 1.0, 0.0], centre))
    e2 = np.cross(centre, e1)
    in_cone = cand_u @ centre > np.cos(0.5)
    flat = np.stack([cand_u @ e1, cand_u @ e2], 1)
    ring_flat = np.stack([outer @ e1, outer @ e2], 1)
    inside[np.flatnonzero(in_cone)[_points_in_polygon(flat[in_cone], ring_flat)]] = True
    near_mouth = (cand_p[:, 2] > 0.04) & (np.abs(cand_p[:, 1] - MOUTH_Y) < 0.04)
    pm = cand_p[near_mouth]
    ab = np.stack([pm[:, 0], pm[:, 1] - _mouth_line_y(pm[:, 0])], 1)
    inside[np.flatnonzero(near_mouth)[_points_in_polygon(ab, mouth_poly)]] = True
    keep &= ~inside
    cand_u, cand_p, h = cand_u[keep], cand_p[keep], h[keep]
    fixed_p = _cast_directions(np.concatenate([fixed_left_u, fixed_mid_u]), bisections=10)
    chosen = _poisson_select(cand_p, h, fixed_p, rng.permutation(len(cand_p)))
    free_u = cand_u[chosen]

    # Assemble: midline, left, right (mirror of left), pole.
    n_eye = [len(r) for r in eye_u]
    left_u = np.concatenate([fixed_left_u, free_u])
    nl = len(left_u)
    kind_left = np.concatenate([np.full(sum(n_eye), _K_EYE_LEFT),
                                np.full((~on_mid).sum(), _K_MOUTH),
                                np.full(len(neck_u) - 2, _K_NECK_RING),
                                np.full(len(free_u), _K_FREE)])
    ring_left = np.concatenate([np.repeat(np.arange(len(n_eye)), n_eye), mouth_loop[~on_mid],
                                np.full(len(neck_u) - 2 + len(free_u), -1)])
    ab_left = np.full((nl, 2), np.nan)
    ab_left[sum(n_eye):sum(n_eye) + (~on_mid).sum()] = mouth_ab[~on_mid]
    s_left = np.full(nl, np.nan)
    s_left[:n_eye[0]] = margin_s
    kind_mid = np.concatenate([np.full(len(mid_u), _K_MIDLINE), np.full(on_mid.sum(), _K_MOUTH),
                               np.full(2, _K_NECK_RING)])
    ring_mid = np.concatenate([np.full(len(mid_u), -1), mouth_loop[on_mid], [-1, -1]])
    ab_mid = np.full((len(fixed_mid_u), 2), np.nan)
    ab_mid[len(mid_u):len(mid_u) + on_mid.sum()] = mouth_ab[on_mid]
    kind_right = np.where(kind_left == _K_EYE_LEFT, _K_EYE_RIGHT, kind_left)
    return _SkinSamples(
        u=np.concatenate([fixed_mid_u, left_u, _mirror(left_u), [[0.0, -1.0, 0.0]]]),
        kind=np.concatenate([kind_mid, kind_left, kind_right, [_K_POLE]]),
        ring=np.concatenate([ring_mid, ring_left, ring_left, [-1]]),
        mouth_ab=np.concatenate([ab_mid, ab_left, ab_left * np.array([-1.0, 1.0]),
                                 [[np.nan, np.nan]]]),
        eye_s=np.concatenate([np.full(len(fixed_mid_u), np.nan), s_left, s_left, [np.nan]]),
    )


def _triangulate_sphere(u: np.ndarray) -> np.ndarray:
    """Spherical Delaunay triangulation [F, 3] of unit vectors u [N, 3], counter-clockwise seen
    from outside (the convex hull of points on a sphere)."""
    f = ConvexHull(u).simplices.astype(np.int64)
    if len(np.unique(f)) != len(u):
        raise RuntimeError("triangulation dropped sample points (duplicates?)")
    n = np.cross(u[f[:, 1]] - u[f[:, 0]], u[f[:, 2]] - u[f[:, 0]])
    flip = np.einsum("ij,ij->i", n, u[f].sum(axis=1)) < 0
    f[flip] = f[flip][:, ::-1]
    return f


def _check_chain_edges(faces: np.ndarray, s: _SkinSamples, kind: int) -> None:
    """The lid margins and the mouth line must be chains of triangle edges (they become the eye
    openings' boundaries and the slit): fail loudly if the triangulation skipped one."""
    if kind == _K_MOUTH:
        idx = np.flatnonzero((s.kind == kind) & (s.ring == 0))
        idx = idx[np.argsort(s.mouth_ab[idx, 0])]
        chain = list(zip(idx[:-1], idx[1:]))
    else:
        idx = np.flatnonzero((s.kind == kind) & (s.ring == 0))
        idx = idx[np.argsort(s.eye_s[idx])]
        chain = list(zip(idx, np.roll(idx, -1)))
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    have = set(map(tuple, edges.tolist()))
    missing = [(int(i), int(j)) for i, j in chain if (min(i, j), max(i, j)) not in have]
    if missing:
        raise RuntimeError(f"triangulation skipped {len(missing)} feature edges (kind {kind})")


def _canonical_faces(f: np.ndarray) -> np.ndarray:
    """Same triangles, each rotated to start at its smallest index, rows sorted: an order that does
    not depend on the triangulation library's internals."""
    r = np.argmin(f, axis=1)
    f = np.stack([f[np.arange(len(f)), r], f[np.arange(len(f)), (r + 1) % 3],
                  f[np.arange(len(f)), (r + 2) % 3]], axis=1)
    return f[np.lexsort((f[:, 2], f[:, 1], f[:, 0]))]


# Tangential relaxation of the ray-cast vertices (rays graze steep surfaces such as the brow's
# underside and the nose's sides, which leaves long triangles there).
_RELAX_ITERATIONS = 8
_RELAX_STEP = 0.5


def _sdf_gradient(p: np.ndarray, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """Value [N] and central-difference gradient [N, 3] of head_sdf (one batched call)."""
    n = len(p)
    offsets = np.vstack([np.zeros(3), eps * np.eye(3), -eps * np.eye(3)])
    vals = head_sdf((p[None] + offsets[:, None]).reshape(-1, 3)).reshape(7, n)
    return vals[0], ((vals[1:4] - vals[4:7]) / (2 * eps)).T


def _project_to_surface(p: np.ndarray, steps: int = 2) -> np.ndarray:
    for _ in range(steps):
        f, g = _sdf_gradient(p)
        p = p - (f / np.maximum((g * g).sum(axis=1), 1e-12))[:, None] * g
    return p


def _relax(verts: np.ndarray, faces: np.ndarray, movable: np.ndarray, mirror: np.ndarray,
           on_midline: np.ndarray) -> np.ndarray:
    """Moves the `movable` vertices toward their neighbours' centroid within the tangent plane and
    back onto the surface, keeping the mesh mirror-symmetric and midline vertices at x = 0."""
    adj = _mesh_adjacency(faces, len(verts))
    deg = np.asarray(adj.sum(axis=1)).ravel()
    v = verts.copy()
    idx = np.flatnonzero(movable)
    for _ in range(_RELAX_ITERATIONS):
        target = (adj @ v)[idx] / deg[idx, None]
        g = _unit(_sdf_gradient(v[idx])[1])
        step = _RELAX_STEP * (target - v[idx])
        step -= (step * g).sum(axis=1, keepdims=True) * g
        v[idx] = _project_to_surface(v[idx] + step)
        v = 0.5 * (v + _mirror(v[mirror]))
        v[on_midline, 0] = 0.0
    return v


@dataclasses.dataclass
class _Geometry:
    """The neutral mesh and what each vertex is. Skin vertices first, then the two eyeballs."""
    verts: np.ndarray          # [V, 3] float64
    faces: np.ndarray          # [F, 3] int64
    num_skin: int
    kind: np.ndarray           # [V] int: _K_* (eyeball vertices: _K_EYE_LEFT/_K_EYE_RIGHT)
    ring: np.ndarray           # [V] int: eye ring / mouth loop index, -1 otherwise
    mouth_ab: np.ndarray       # [V, 2] mouth chart coordinates, nan elsewhere
    eye_s: np.ndarray          # [V] lid margin parameter of eye ring 0, nan elsewhere
    lip_side: np.ndarray       # [V] int: +1 upper lip side of the mouth, -1 lower, 0 neither
    eyeball_left: np.ndarray   # [Ne] vertex indices of the left eyeball
    eyeball_right: np.ndarray  # [Ne] vertex indices of the right eyeball
    eyeball_polar_deg: np.ndarray  # [Ne] angle of each eyeball vertex from the gaze axis
    mirror: np.ndarray         # [V] index of each vertex's mirror image (x -> -x)
    mouth_bag: np.ndarray      # [Nb] vertex indices of the mouth pocket (after the skin)
    mouth_bag_parent: np.ndarray  # [Nb] the slit vertex each pocket vertex is extruded from


# Mouth pocket: depth behind the slit (metres) and lateral shrink of each of its rings.
_POCKET_RING_DEPTH = (0.003, 0.009, 0.017, 0.026)
_POCKET_RING_WIDTH = (0.97, 0.88, 0.74, 0.58)
# ...and its height in the middle (a thin lens, not a flat sheet: no zero-area triangles).
_POCKET_RING_GAP = (0.0006, 0.0016, 0.0030, 0.0045)


def _mouth_pocket(verts: np.ndarray, faces: np.ndarray, corners: np.ndarray, upper: np.ndarray,
                  lower: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A bag extruded inward from the slit's boundary loop (right corner, upper slit vertices,
    left corner, lower slit vertices back), closed at the back by stitching its upper and lower
    walls. With the mouth closed both walls coincide (hidden behind the lips).

    Returns: vertices [Nb, 3], faces [Fb, 3] (global indices, new vertices numbered from
    len(verts)), side [Nb] (+1 upper wall, -1 lower wall, 0 corners), parent slit vertex [Nb].
    """
    loop = np.concatenate([[corners[0]], upper, [corners[1]], lower[::-1]])
    side = np.concatenate([[0], np.ones(len(upper), int), [0], -np.ones(len(lower), int)])
    m = len(loop)
    base = len(verts)
    rings = [loop]
    new_v = []
    # how far along its wall each loop vertex is (0 at the corners, 1 in the middle)
    along = np.sin(np.pi * (np.arange(m) % (len(upper) + 1)) / (len(upper) + 1))
    rings_spec = zip(_POCKET_RING_DEPTH, _POCKET_RING_WIDTH, _POCKET_RING_GAP)
    for k, (depth, width, gap) in enumerate(rings_spec):
        p = verts[loop] * [width, 1.0, 1.0] - [0.0, 0.0, depth]
        p[:, 1] += 0.5 * gap * side * along
        rings.append(base + k * m + np.arange(m))
        new_v.append(p)
    tris = []
    for a_ring, b_ring in zip(rings[:-1], rings[1:]):
        for i in range(m):
            j = (i + 1) % m
            tris.append([a_ring[i], a_ring[j], b_ring[j]])
            tris.append([a_ring[i], b_ring[j], b_ring[i]])
    # back wall: stitch the last ring's upper run to its lower run
    last = rings[-1]
    n = len(upper)
    top = np.concatenate([[last[0]], last[1:n + 1], [last[n + 1]]])
    bottom = np.concatenate([[last[0]], last[::-1][:n], [last[n + 1]]])
    for i in range(n + 1):
        if i < n + 1:
            tris.append([top[i], top[i + 1], bottom[i + 1]])
        if i > 0:
            tris.append([top[i], bottom[i + 1], bottom[i]])
    tris = np.array([t for t in tris if len(set(t)) == 3], np.int64)
    tris = _orient_consistently(np.vstack([faces, tris]), len(faces))[len(faces):]
    count = len(_POCKET_RING_DEPTH)
    return (np.concatenate(new_v), tris, np.tile(side, count), np.tile(loop, count))


def _orient_consistently(faces: np.ndarray, n_fixed: int) -> np.ndarray:
    """Flips faces[n_fixed:] so that every edge shared with an already oriented face is
    traversed in the opposite direction (a consistently oriented surface)."""
    faces = faces.copy()
    owner = {}
    for fi in range(n_fixed):
        for k in range(3):
            owner[(faces[fi, k], faces[fi, (k + 1) % 3])] = fi
    pending = list(range(n_fixed, len(faces)))
    while pending:
        progress = []
        for fi in pending:
            f = faces[fi]
            edges = [(f[k], f[(k + 1) % 3]) for k in range(3)]
            if any(e in owner for e in edges):
                faces[fi] = f[::-1]
            elif not any((e[1], e[0]) in owner for e in edges):
                continue
            for k in range(3):
                owner[(faces[fi, k], faces[fi, (k + 1) % 3])] = fi
            progress.append(fi)
        if not progress:
            raise RuntimeError("cannot orient the mouth pocket")
        pending = [fi for fi in pending if fi not in set(progress)]
    return faces


# Eyeball mesh: latitude rings (degrees from the front pole, symmetric about 90 so that the
# vertex mean is the centre), each with this many vertices.
_EYEBALL_RINGS_DEG = (7.0, 14.0, 21.0, 28.0, 35.0, 46.0, 58.0, 71.0, 84.0)
_EYEBALL_SEGMENTS = 20
IRIS_RADIUS_DEG = 31.0
PUPIL_RADIUS_DEG = 12.0


def _eyeball_mesh(centre: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A closed UV sphere around +z: vertices [Ne, 3], faces [Fe, 3] (local indices, outward
    counter-clockwise), polar angle of each vertex [Ne] (degrees)."""
    polar = np.concatenate([_EYEBALL_RINGS_DEG, 180.0 - np.array(_EYEBALL_RINGS_DEG[::-1])])
    seg = _EYEBALL_SEGMENTS
    az = np.arange(seg) * 2 * np.pi / seg
    th = np.repeat(polar * _DEG, seg)
    ph = np.tile(az, len(polar)) + np.repeat(np.arange(len(polar)) % 2, seg) * np.pi / seg
    dirs = np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], axis=1)
    v = np.vstack([[0, 0, 1], dirs, [0, 0, -1]]) * EYEBALL_RADIUS + centre
    pol = np.concatenate([[0.0], np.repeat(polar, seg), [180.0]])
    faces = []
    first, last = 0, len(v) - 1
    ring = lambda r, j: 1 + r * seg + (j % seg)  # noqa: E731
    for j in range(seg):
        faces.append([first, ring(0, j + 1), ring(0, j)])
        faces.append([last, ring(len(polar) - 1, j), ring(len(polar) - 1, j + 1)])
    for r in range(len(polar) - 1):
        for j in range(seg):
            a, b = ring(r, j), ring(r, j + 1)
            # odd rings are rotated by half a segment: pair accordingly
            if r % 2 == 0:
                c, d = ring(r + 1, j), ring(r + 1, j - 1)
                faces.append([a, b, c])
                faces.append([a, c, d])
            else:
                c, d = ring(r + 1, j + 1), ring(r + 1, j)
                faces.append([a, c, d])
                faces.append([a, b, c])
    faces = np.array(faces, np.int64)
    n = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
    flip = np.einsum("ij,ij->i", n, v[faces].mean(axis=1) - centre) < 0
    faces[flip] = faces[flip][:, ::-1]
    return v, faces, pol


def _build_geometry() -> _Geometry:
    """The neutral mesh: sample, triangulate, cut the eye openings and the mouth slit, place the
    vertices on the sculpt, relax them, then add the mouth pocket and the eyeballs."""
    s = _sample_skin()
    faces = _triangulate_sphere(s.u)
    pole = np.flatnonzero(s.kind == _K_POLE)[0]
    faces = faces[(faces != pole).all(axis=1)]
    # Eye openings: triangles spanned by lid-margin vertices only.
    for k in (_K_EYE_LEFT, _K_EYE_RIGHT):
        margin = (s.kind == k) & (s.ring == 0)
        faces = faces[~margin[faces].all(axis=1)]
    _check_chain_edges(faces, s, _K_EYE_LEFT)
    _check_chain_edges(faces, s, _K_EYE_RIGHT)
    _check_chain_edges(faces, s, _K_MOUTH)
    keep = np.arange(len(s.u)) != pole
    old_to_new = np.cumsum(keep) - 1
    faces = old_to_new[faces]
    u = s.u[keep]
    kind, ring, mouth_ab, eye_s = s.kind[keep], s.ring[keep], s.mouth_ab[keep], s.eye_s[keep]

    verts = _cast_directions(u)
    mirror_u = cKDTree(u).query(_mirror(u))[1]
    on_eye = (kind == _K_EYE_LEFT) | (kind == _K_EYE_RIGHT)
    movable = ((kind == _K_FREE) | (kind == _K_MIDLINE) | (on_eye & (ring >= 2))
               | ((kind == _K_MOUTH) & (ring > _MOUTH_VERMILION_LOOP)))
    verts = _relax(verts, faces, movable, mirror_u, u[:, 0] == 0.0)
    # Lid margins hug the eyeball.
    for k, centre in ((_K_EYE_LEFT, LEFT_EYE_CENTRE), (_K_EYE_RIGHT, RIGHT_EYE_CENTRE)):
        m = (kind == k) & (ring == 0)
        verts[m] = centre + _unit(verts[m] - centre) * (EYEBALL_RADIUS + LID_MARGIN_GAP)

    # Mouth slit: interior slit vertices get a lower-lip twin; triangles below the slit use it.
    lip_side = np.zeros(len(u), np.int64)
    on_mouth = kind == _K_MOUTH
    lip_side[on_mouth & (mouth_ab[:, 1] > 0)] = 1
    lip_side[on_mouth & (mouth_ab[:, 1] < 0)] = -1
    at_corner = np.abs(mouth_ab[:, 0]) >= MOUTH_HALF_WIDTH - 1e-9
    slit = np.flatnonzero(on_mouth & (ring == 0) & ~at_corner)
    twin = np.full(len(u), -1)
    twin[slit] = len(u) + np.arange(len(slit))
    touches = (twin[faces] >= 0).any(axis=1)
    side = np.where(lip_side[faces] != 0, lip_side[faces], 0).sum(axis=1)
    if np.any(touches & (side == 0)):
        raise RuntimeError("a triangle at the mouth slit has no vertex off the slit")
    lower = touches & (side < 0)
    ff = faces[lower]
    faces[lower] = np.where(twin[ff] >= 0, twin[ff], ff)
    slit_pts = verts[slit]
    slit_pts[:, 2] -= _LIP_CURL_DEPTH * _smoothstep(MOUTH_HALF_WIDTH, 0.6 * MOUTH_HALF_WIDTH,
                                                     np.abs(slit_pts[:, 0]))
    verts[slit] = slit_pts
    verts = np.vstack([verts, slit_pts])
    kind = np.concatenate([kind, kind[slit]])
    ring = np.concatenate([ring, ring[slit]])
    mouth_ab = np.vstack([mouth_ab, mouth_ab[slit]])
    eye_s = np.concatenate([eye_s, eye_s[slit]])
    lip_side[slit] = 1
    lip_side = np.concatenate([lip_side, np.full(len(slit), -1)])
    num_skin = len(verts)

    # Mouth pocket: a flat bag behind the slit (upper wall with the head, lower wall with the
    # jaw) so that an open mouth shows a mouth, not the inside of the head.
    upper_chain = slit[np.argsort(mouth_ab[slit, 0])]
    lower_chain = twin[upper_chain]
    at_corner = np.abs(mouth_ab[:, 0]) >= MOUTH_HALF_WIDTH - 1e-9
    corners = np.flatnonzero((kind == _K_MOUTH) & (ring == 0) & at_corner)
    corners = corners[np.argsort(mouth_ab[corners, 0])]
    bag_v, bag_f, bag_side, bag_parent = _mouth_pocket(verts, faces, corners, upper_chain,
                                                       lower_chain)
    nb = len(bag_v)
    mouth_bag = num_skin + np.arange(nb)
    verts = np.vstack([verts, bag_v])
    faces = np.vstack([faces, bag_f])
    kind = np.concatenate([kind, np.full(nb, _K_MOUTH_BAG)])
    ring = np.concatenate([ring, np.full(nb, -1)])
    mouth_ab = np.vstack([mouth_ab, np.full((nb, 2), np.nan)])
    eye_s = np.concatenate([eye_s, np.full(nb, np.nan)])
    lip_side = np.concatenate([lip_side, bag_side])
    n_front = len(verts)

    # Eyeballs.
    ev_l, ef_l, polar = _eyeball_mesh(LEFT_EYE_CENTRE)
    ev_r, ef_r, _ = _eyeball_mesh(RIGHT_EYE_CENTRE)
    ne = len(ev_l)
    eyeball_left = n_front + np.arange(ne)
    eyeball_right = n_front + ne + np.arange(ne)
    verts = np.vstack([verts, ev_l, ev_r])
    faces = np.vstack([faces, ef_l + n_front, ef_r + n_front + ne])
    kind = np.concatenate([kind, np.full(ne, _K_EYE_LEFT), np.full(ne, _K_EYE_RIGHT)])
    ring = np.concatenate([ring, np.full(2 * ne, -1)])
    mouth_ab = np.vstack([mouth_ab, np.full((2 * ne, 2), np.nan)])
    eye_s = np.concatenate([eye_s, np.full(2 * ne, np.nan)])
    lip_side = np.concatenate([lip_side, np.zeros(2 * ne, np.int64)])

    # Mirror map: the vertex at (-x, y, z) on the same side of the mouth slit.
    key = np.hstack([verts, lip_side[:, None] * 1.0])
    mkey = np.hstack([_mirror(verts), lip_side[:, None] * 1.0])
    dist, mirror = cKDTree(key).query(mkey)
    if dist.max() > 1e-9:
        raise RuntimeError(f"mesh is not mirror-symmetric (max {dist.max():.2e} m)")
    return _Geometry(verts=verts, faces=_canonical_faces(faces), num_skin=num_skin, kind=kind,
                     ring=ring, mouth_ab=mouth_ab, eye_s=eye_s, lip_side=lip_side,
                     eyeball_left=eyeball_left, eyeball_right=eyeball_right,
                     eyeball_polar_deg=polar, mirror=mirror.astype(np.int64),
                     mouth_bag=mouth_bag, mouth_bag_parent=bag_parent)


# ---------------------------------------------------------------------------------------------
# Regions (per-vertex masks for colouring and for the rig)
# ---------------------------------------------------------------------------------------------
# Eyebrow centre line (left side) from the inner to the outer end, and its half thickness.
_BROW_INNER_X = 0.0125
_BROW_OUTER_X = 0.0560


def _brow_line(t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eyebrow centre line at parameter t in [0, 1] (inner to outer): x, y, half thickness."""
    t = np.asarray(t, float)
    x = _BROW_INNER_X + t * (_BROW_OUTER_X - _BROW_INNER_X)
    y = 0.0200 + 0.0055 * np.sin(np.pi * np.clip(t, 0, 1) ** 0.75) - 0.0020 * t
    half = 0.0050 - 0.0020 * t
    return x, y, half


def _jawline_y(z: np.ndarray) -> np.ndarray:
    """Height of the lower border of the mandible (skin) along z, midline to the jaw angle."""
    return np.interp(z, [-0.10, -0.01, 0.035, 0.07], [-0.060, -0.088, -0.108, -0.118])


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


# ---------------------------------------------------------------------------------------------
# Rig: joint regressor, skinning weights, pose correctives
# ---------------------------------------------------------------------------------------------
def _tilted_weights(points: np.ndarray, prior: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Positive weights [N] summing to 1 whose weighted mean of points [N, 3] is `target`: the
    prior [N] exponentially tilted, w ~ prior * exp(lambda . (p - target)) (maximum entropy),
    with lambda found by Newton's method on the convex log-partition function."""
    r = points - target
    logp = np.log(prior / prior.sum())

    def logz(lam):
        a = logp + r @ lam
        amax = a.max()
        return amax + np.log(np.exp(a - amax).sum())

    lam = np.zeros(3)
    for _ in range(200):
        a = logp + r @ lam
        w = np.exp(a - a.max())
        w /= w.sum()
        mean = w @ r
        if np.linalg.norm(mean) < 1e-13:
            break
        cov = (r * w[:, None]).T @ r - np.outer(mean, mean)
        step = np.linalg.solve(cov + 1e-12 * np.eye(3), mean)
        f0, t = logz(lam), 1.0
        while logz(lam - t * step) > f0 - 1e-4 * t * (mean @ step) and t > 1e-8:
            t *= 0.5
        lam = lam - t * step
    a = logp + r @ lam
    w = np.exp(a - a.max())
    w /= w.sum()
    if np.linalg.norm(w @ points - target) > 1e-9:
        raise RuntimeError("joint target lies outside its vertex set")
    return w


def _joint_regressor(geo: _Geometry) -> np.ndarray:
    """[5, V] rows of non-negative weights summing to 1 that put each joint at its anatomical
    place on the template, each over the skin around the joint (eyes: their eyeball)."""
    v = geo.verts
    nv = len(v)
    skin = np.arange(geo.num_skin)
    ps = v[skin]
    reg = np.zeros((C.NUM_JOINTS, nv))
    # root: a band around the lower neck
    sel = skin[np.abs(ps[:, 1] - ROOT_JOINT[1]) < 0.02]
    prior = np.exp(-((v[sel, 1] - ROOT_JOINT[1]) / 0.012) ** 2)
    reg[C.ROOT, sel] = _tilted_weights(v[sel], prior, ROOT_JOINT)
    # neck: the skin around the skull base, behind the face
    sel = skin[(np.abs(ps[:, 1] - NECK_JOINT[1]) < 0.03) & (ps[:, 2] < 0.02)]
    prior = np.exp(-((v[sel, 1] - NECK_JOINT[1]) / 0.015) ** 2)
    reg[C.NECK, sel] = _tilted_weights(v[sel], prior, NECK_JOINT)
    # jaw: the skin over both temporomandibular joints, in front of the ears
    tmj = np.array([0.060, JAW_JOINT[1], JAW_JOINT[2] + 0.004])
    q = np.abs(ps) * [1, 1, 1]
    q[:, 1:] = ps[:, 1:]
    dist = np.linalg.norm(q - tmj, axis=1)
    sel = skin[dist < 0.022]
    reg[C.JAW, sel] = _tilted_weights(v[sel], np.exp(-(dist[dist < 0.022] / 0.012) ** 2), JAW_JOINT)
    # eyes: the eyeball's vertices, evenly (the eyeball mesh is centred on its joint)
    reg[C.LEFT_EYE, geo.eyeball_left] = 1.0 / len(geo.eyeball_left)
    reg[C.RIGHT_EYE, geo.eyeball_right] = 1.0 / len(geo.eyeball_right)
    return reg


def _mesh_adjacency(faces: np.ndarray, n: int) -> scipy.sparse.csr_matrix:
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    e = np.unique(np.sort(e, axis=1), axis=0)
    rows, cols = np.r_[e[:, 0], e[:, 1]], np.r_[e[:, 1], e[:, 0]]
    return scipy.sparse.coo_matrix((np.ones(2 * len(e)), (rows, cols)),
                                   shape=(n, n)).tocsr()


def _smooth_field(values: np.ndarray, adj: scipy.sparse.csr_matrix, fixed: np.ndarray,
                  iterations: int) -> np.ndarray:
    """Laplacian smoothing of per-vertex values (any trailing shape), `fixed` vertices held."""
    deg = np.maximum(np.asarray(adj.sum(axis=1)).ravel(), 1.0)
    out = values.copy()
    free = ~fixed
    for _ in range(iterations):
        avg = (adj @ out.reshape(len(out), -1)).reshape(out.shape)
        avg /= deg.reshape((-1,) + (1,) * (out.ndim - 1))
        out[free] = 0.5 * out[free] + 0.5 * avg[free]
    return out


# Skinning: the neck bottom follows the root below these heights (smoothly in between).
_ROOT_WEIGHT_Y = (-0.130, -0.185)


def _skinning_weights(geo: _Geometry) -> np.ndarray:
    """[V, 5] smooth skinning weights, rows summing to 1: eyeballs rigidly on their eye joints;
    the lower lip, chin and jaw on the jaw joint (upper lip and everything above it not); the
    neck bottom on the root; the rest of the head on the neck joint."""
    v = geo.verts
    nv = len(v)
    ns = geo.num_skin
    p = v[:ns]
    x, y, z = np.abs(p[:, 0]), p[:, 1], p[:, 2]
    root = _smoothstep(_ROOT_WEIGHT_Y[0], _ROOT_WEIGHT_Y[1], y)
    # The jaw's upper boundary runs from the mouth line back and up to the jaw joint.
    y_b = np.interp(z, [-0.01, 0.045], [JAW_JOINT[1] - 0.004, MOUTH_Y])
    vertical = _smoothstep(y_b + 0.006, y_b - 0.012, y)
    lips = geo.lip_side[:ns]
    vertical = np.where(lips < 0, 1.0, np.where(lips > 0, 0.0, vertical))
    back = _smoothstep(-0.03, -0.006, z)
    below = _smoothstep(_jawline_y(z) - 0.032, _jawline_y(z) - 0.006, y)
    jaw = vertical * back * below * (1.0 - root)
    adj = _mesh_adjacency(geo.faces[(geo.faces < ns).all(axis=1)], ns)
    # The slit separates the lips: everything above it stays with the head, the lower lip
    # follows the jaw; only the mouth corners blend (they stretch as the mouth opens).
    a = np.abs(np.nan_to_num(geo.mouth_ab[:ns, 0], nan=np.inf))
    upper_mouth = lips > 0
    lower_lip = ((lips < 0) & (geo.ring[:ns] <= _MOUTH_VERMILION_LOOP + 1)
                 & (a < 0.8 * MOUTH_HALF_WIDTH))
    jaw = np.where(upper_mouth, 0.0, np.where(lower_lip, 1.0, jaw))
    fixed = upper_mouth | lower_lip | (y > -0.015) | (root > 0.0) | (z < -0.04)
    jaw = np.clip(_smooth_field(jaw, adj, fixed, 12), 0.0, 1.0)
    jaw = np.where(jaw < 1e-4, 0.0, np.minimum(jaw, 1.0 - root))  # no leaks into the upper face
    w = np.zeros((nv, C.NUM_JOINTS))
    w[:ns, C.ROOT] = root
    w[:ns, C.JAW] = jaw
    w[:ns, C.NECK] = 1.0 - root - jaw
    w[geo.eyeball_left, C.LEFT_EYE] = 1.0
    w[geo.eyeball_right, C.RIGHT_EYE] = 1.0
    # mouth pocket: upper wall with the head, lower wall with the jaw, corners half way
    side = geo.lip_side[geo.mouth_bag]
    w[geo.mouth_bag, C.NECK] = np.where(side > 0, 1.0, np.where(side < 0, 0.0, 0.5))
    w[geo.mouth_bag, C.JAW] = 1.0 - w[geo.mouth_bag, C.NECK]
    return w


def _antisym_feature_columns(joint_block: int, axis: int) -> tuple[int, int]:
    """Pose-feature columns (i, j) with feature[i] - feature[j] = 2 sin(angle) * axis component:
    the antisymmetric part of (R - I) of the joint's block (0 = neck, 1 = jaw, ...)."""
    r, c = {0: (2, 1), 1: (0, 2), 2: (1, 0)}[axis]
    return 9 * joint_block + 3 * r + c, 9 * joint_block + 3 * c + r


def _pose_correctives(geo: _Geometry, weights: np.ndarray) -> np.ndarray:
    """[V, 3, 36] small corrective offsets: for the jaw, the cheeks draw in and the soft tissue
    under the chin tightens as the mouth opens; for the neck, the throat skin bunches forward
    when the head nods down and the mid neck twists a little more evenly when the head turns.
    Driven by the rotation-axis components (sin of the angle); eye features have none."""
    v = geo.verts
    nv = len(v)
    ns = geo.num_skin
    p = v[:ns]
    q = p.copy()
    q[:, 0] = np.abs(q[:, 0])
    sx = np.sign(p[:, 0])
    posedirs = np.zeros((nv, 3, C.NUM_POSE_FEATURES))

    def gauss(c, s):  # (cut to exactly zero far away: nothing moves where nothing should)
        w = np.exp(-0.5 * (((q - np.asarray(c)) / np.asarray(s)) ** 2).sum(axis=1))
        return np.where(w < 1e-3, 0.0, w)

    # jaw opening (rotation about +x), metres per radian
    jaw = np.zeros((ns, 3))
    cheek = gauss([0.040, MOUTH_Y, 0.060], [0.012, 0.014, 0.014]) * weights[:ns, C.JAW] ** 0.5
    jaw[:, 0] = -0.0035 * sx * cheek
    jaw[:, 2] = -0.0012 * cheek
    chin = gauss([0.0, -0.118, 0.040], [0.020, 0.008, 0.018])
    jaw[:, 1] += 0.0030 * chin
    jaw[:, 2] += -0.0015 * chin
    i, j = _antisym_feature_columns(1, 0)
    posedirs[:ns, :, i] += 0.5 * jaw
    posedirs[:ns, :, j] -= 0.5 * jaw
    # neck nod (about +x: face down): throat bunches forward, nape stretches back
    nod = np.zeros((ns, 3))
    throat = gauss([0.0, -0.125, 0.040], [0.035, 0.018, 0.02]) * (1.0 - weights[:ns, C.JAW])
    nod[:, 2] += 0.008 * throat
    nape = gauss([0.0, -0.09, -0.075], [0.04, 0.03, 0.02])
    nod[:, 2] += -0.003 * nape
    i, j = _antisym_feature_columns(0, 0)
    posedirs[:ns, :, i] += 0.5 * nod
    posedirs[:ns, :, j] -= 0.5 * nod
    # neck turn (about +y): the middle of the neck turns a little further (smoother twist)
    twist = np.zeros((ns, 3))
    mid = np.exp(-0.5 * ((p[:, 1] + 0.13) / 0.02) ** 2) * (p[:, 1] < -0.08)
    rel = p - np.array([0.0, 0.0, -0.02])
    twist[:, 0] = 0.25 * rel[:, 2] * mid
    twist[:, 2] = -0.25 * rel[:, 0] * mid
    i, j = _antisym_feature_columns(0, 1)
    posedirs[:ns, :, i] += 0.5 * twist
    posedirs[:ns, :, j] -= 0.5 * twist
    return posedirs


# ---------------------------------------------------------------------------------------------
# Blend shapes: deformation fields, orthogonalised by an SVD (PCA of the fields' distribution)
# ---------------------------------------------------------------------------------------------
# Random smooth fields that fill the identity and expression spaces beyond the semantic ones:
# (RBF scale in metres, number of fields, amplitude in metres at 1 sd).
_IDENTITY_RANDOM_FIELDS = ((0.045, 60, 0.0011), (0.030, 90, 0.0008), (0.020, 110, 0.0006),
                           (0.013, 120, 0.0004))
_EXPRESSION_RANDOM_FIELDS = ((0.025, 60, 0.0007), (0.016, 80, 0.0005), (0.010, 80, 0.0003))
# Deformation fields move along vertex normals smoothed over this distance (metres).
_NORMAL_SMOOTHING = 0.003
# Lateral (x) motions of mirrored fields change sign across the midline over this width.
_MIDLINE_SOFTNESS = 0.003
# Share of random fields that are mirror-symmetric (the rest act on one side only).
_SYMMETRIC_SHARE = 0.75


class _FieldContext:
    """Per-vertex quantities [V, ...] the deformation fields are written in."""

    def __init__(self, geo: _Geometry, masks: dict[str, np.ndarray]):
        self.geo = geo
        self.masks = masks
        v = geo.verts
        self.n_verts = len(v)
        self.p = v
        self.q = v.copy()  # folded onto the left side: symmetric fields are written for x > 0
        self.q[:, 0] = np.abs(v[:, 0])
        # Odd in x, smooth through the midline (a hard sign would tear the mesh along it).
        self.sx = v[:, 0] / np.sqrt(v[:, 0] ** 2 + _MIDLINE_SOFTNESS ** 2)
        self.skin = masks["skin"]
        self.normal, self.vertex_area = self._normals_and_areas()
        # Across the red of the lips: 0 at the slit, 1 mid-lip, fading past the vermilion border
        # and toward the corners (where the loops crowd together).
        profile = np.array([0.0, 0.6, 1.0, 0.8, 0.3, 0.0, 0.0])
        on_loops = (geo.kind == _K_MOUTH) & (geo.ring >= 0)
        self.vermilion = np.where(on_loops, profile[np.clip(geo.ring, 0, 6)], 0.0)
        self.vermilion *= _smoothstep(MOUTH_HALF_WIDTH + 0.004, 0.4 * MOUTH_HALF_WIDTH,
                                      np.abs(v[:, 0]))
        # Per eye: centre, eyeball vertices, lid-margin vertices, and how rigidly [V] the skin
        # around it follows the eyeball (1 at the lid margins, 0 a few millimetres out).
        self.eyes = []
        for centre, eyeball in ((LEFT_EYE_CENTRE, geo.eyeball_left),
                                (RIGHT_EYE_CENTRE, geo.eyeball_right)):
            side = _K_EYE_LEFT if centre[0] > 0 else _K_EYE_RIGHT
            lid = np.flatnonzero((geo.kind == side) & (geo.ring <= 1) & self.skin)
            dist = _norm(v - centre)
            lock = 1.0 - _smoothstep(EYEBALL_RADIUS + 0.0022, EYEBALL_RADIUS + 0.014, dist)
            self.eyes.append((centre, eyeball, lid, np.where(self.skin, lock, 0.0)))
        # Which side of the mouth a vertex is on: exactly 1/0 on the lips (the slit separates
        # them), a smooth transition beyond the mouth corners.
        x, y = self.q[:, 0], v[:, 1]
        width = 0.003 + 0.3 * np.maximum(0.0, x - MOUTH_HALF_WIDTH)
        upper = 0.5 + 0.5 * np.tanh((y - _mouth_line_y(x)) / width)
        on_lips = (geo.lip_side != 0) & (x < MOUTH_HALF_WIDTH)
        self.upper = np.where(on_lips, (geo.lip_side > 0) * 1.0, upper)
        self.lower = 1.0 - self.upper
        # Where expressions act: the face; not the scalp, ears, back of the head or the neck.
        self.face = (self.skin * _smoothstep(-0.005, 0.035, v[:, 2])
                     * (1 - _smoothstep(0.055, 0.075, y)) * _smoothstep(-0.135, -0.105, y)
                     * (1 - masks["ears"]))
        # Lid coordinates (both eyes folded onto the left one): position along the opening
        # (0 inner canthus, 1 outer) and angle (degrees) above the upper / below the lower lid.
        al, be = _eye_angles(v)
        span = EYE_OUTER_CANTHUS_DEG - EYE_INNER_CANTHUS_DEG
        self.lid_t = np.clip((al - EYE_INNER_CANTHUS_DEG) / span, 0, 1)
        lid_up = _eye_opening(self.lid_t)[:, 1]
        lid_lo = _eye_opening(2.0 - self.lid_t)[:, 1]
        near_eye = self.skin & (_norm(self.q - LEFT_EYE_CENTRE) < 0.03)
        upper_half = be >= 0.5 * (lid_up + lid_lo)
        self.above_upper_lid = np.where(near_eye & upper_half, be - lid_up, np.inf)
        self.below_lower_lid = np.where(near_eye & ~upper_half, lid_lo - be, np.inf)

    def _normals_and_areas(self) -> tuple[np.ndarray, np.ndarray]:
        """Vertex normals [V, 3] smoothed over a few millimetres, and skin vertex areas [V].

        Smoothing over 3D neighbourhoods gives both copies of a slit vertex one normal (normal
        motions keep the mouth closed) and keeps the tight curl of the lips into the slit from
        shearing them.
        """
        geo, v = self.geo, self.p
        f = geo.faces
        fa = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
        nrm = np.zeros_like(v)
        area = np.zeros(len(v))
        for k in range(3):
            np.add.at(nrm, geo.faces[:, k], fa)
            np.add.at(area, geo.faces[:, k], np.linalg.norm(fa, axis=1) / 6.0)
        skin_idx = np.flatnonzero(self.skin)
        tree = cKDTree(v[skin_idx])
        pairs = tree.sparse_distance_matrix(tree, 3 * _NORMAL_SMOOTHING, output_type="coo_matrix")
        weight = np.exp(-0.5 * (pairs.data / _NORMAL_SMOOTHING) ** 2)
        kern = scipy.sparse.coo_matrix((weight, (pairs.row, pairs.col)),
                                       shape=(len(skin_idx), len(skin_idx))).tocsr()
        kern = kern + scipy.sparse.identity(len(skin_idx), format="csr")
        nrm[skin_idx] = kern @ _unit(nrm[skin_idx] + 1e-30)
        # (a sparse distance matrix drops zero distances: add the coincident copies explicitly)
        twins = cKDTree(v).query_pairs(1e-12, output_type="ndarray")
        pair_sum = nrm[twins[:, 0]] + nrm[twins[:, 1]]
        nrm[twins[:, 0]] = pair_sum
        nrm[twins[:, 1]] = pair_sum
        return _unit(nrm + 1e-30), area * self.skin

    def gauss(self, centre, scale, mirrored: bool = True) -> np.ndarray:
        """Gaussian bump [V] (1 at the centre); on both sides unless mirrored=False."""
        pts = self.q if mirrored else self.p
        z = (pts - np.asarray(centre, float)) / np.asarray(scale, float)
        return np.exp(-0.5 * (z ** 2).sum(axis=1))

    def vec(self, weight: np.ndarray, left_vector, mirrored: bool = True) -> np.ndarray:
        """Displacement [V, 3]: weight [V] times a vector given for the left side (mirrored)."""
        v = np.tile(np.asarray(left_vector, float), (self.n_verts, 1))
        if mirrored:
            v[:, 0] *= self.sx
        return weight[:, None] * v

    def along_normal(self, weight: np.ndarray, metres: float) -> np.ndarray:
        return (weight * metres)[:, None] * self.normal

    def scale_about(self, weight: np.ndarray, centre, factors) -> np.ndarray:
        """Displacement [V, 3] of a scaling about `centre` by (1 + factors) where weight is 1."""
        return weight[:, None] * (self.p - np.asarray(centre, float)) * np.asarray(factors, float)

    def lid_rotation(self, weight: np.ndarray, radians: float) -> np.ndarray:
        """Rotates lid skin about each eye's horizontal axis (positive: lids move down); the
        linear motion is tangent to the eyeball, so lids never cut into it."""
        out = np.zeros((self.n_verts, 3))
        for centre, _, _, _ in self.eyes:
            side = np.sign(centre[0]) == np.sign(self.p[:, 0])
            r = self.p - centre
            out += (weight * radians * side)[:, None] * np.cross(np.array([1.0, 0.0, 0.0]), r)
        return out

    def finish_identity(self, d: np.ndarray) -> np.ndarray:
        """Eyeballs translate with their socket (the mean motion of the lid margins); the lids
        around them follow rigidly, so they stay on the eyeball. The mouth pocket follows the
        slit."""
        d = d * self.skin[:, None]
        for _, eyeball, lid, lock in self.eyes:
            t = d[lid].mean(axis=0)
            d = d + lock[:, None] * (t - d)
            d[eyeball] = t
        d[self.geo.mouth_bag] = d[self.geo.mouth_bag_parent]
        return d

    def finish_expression(self, d: np.ndarray, moves_lids: bool = False) -> np.ndarray:
        """Expressions leave the eyeballs still and (unless they are lid motions) the lids."""
        d = d * self.skin[:, None]
        if not moves_lids:
            for _, _, _, lock in self.eyes:
                d = d * (1.0 - lock)[:, None]
        d[self.geo.mouth_bag] = d[self.geo.mouth_bag_parent]
        return d


def _identity_fields(c: _FieldContext) -> list[tuple[str, np.ndarray]]:
    """Semantic identity deformations: (name, [V, 3] metres at one standard deviation)."""
    p, g, vec, nrm, scale = c.p, c.gauss, c.vec, c.along_normal, c.scale_about
    ones = np.ones(c.n_verts)
    front = _smoothstep(-0.01, 0.05, p[:, 2])
    neck = _smoothstep(-0.09, -0.13, p[:, 1])
    lower_face = front * _smoothstep(0.005, -0.03, p[:, 1]) * np.clip(-p[:, 1] / 0.115, 0, 1.2)
    ears = _smooth_mask(c, c.masks["ears"])
    ear_centre = _EAR_ORIGIN
    jaw_angle = [0.048, -0.082, 0.0]
    return [
        ("head size", scale(ones, [0.0, -0.02, 0.0], [0.025] * 3)),
        ("head width", scale(ones, [0.0, 0.0, 0.0], [0.030, 0.0, 0.0])),
        ("head depth", scale(ones, [0.0, 0.0, 0.0], [0.0, 0.0, 0.025])),
        ("crown height", vec(_smoothstep(-0.02, 0.11, p[:, 1]), [0, 0.006, 0])),
        ("occiput", vec(_smoothstep(0.0, -0.09, p[:, 2]) * _smoothstep(-0.09, 0.0, p[:, 1]),
                        [0, 0, -0.004])),
        ("temples", vec(g([0.062, 0.03, 0.025], [0.012, 0.025, 0.025]), [0.003, 0, 0])),
        ("face width", scale(front * (1 - neck), [0.0, 0.0, 0.0], [0.04, 0.0, 0.0])),
        ("lower face length", vec(lower_face, [0, -0.005, 0])),
        ("mid-face protrusion", vec(g([0.0, -0.055, 0.085], [0.035, 0.03, 0.03]), [0, 0, 0.003])),
        ("jaw width", vec(g(jaw_angle, [0.016, 0.02, 0.025]), [0.0045, 0, 0])),
        ("jaw angle", vec(g(jaw_angle, [0.016, 0.016, 0.02]), [0, -0.003, -0.002])),
        ("chin prominence", vec(g([0.0, -0.103, 0.072], [0.018, 0.016, 0.02]), [0, 0, 0.0035])),
        ("chin height", vec(g([0.0, -0.108, 0.065], [0.02, 0.014, 0.02]), [0, -0.003, 0])),
        # (features that straddle the midline widen by scaling about it: no crease there)
        ("chin width", scale(g([0.0, -0.106, 0.068], [0.02, 0.014, 0.02]), [0.0, 0.0, 0.0],
                             [0.17, 0.0, 0.0])),
        ("nose length", vec(g([0.0, -0.03, 0.1], [0.012, 0.012, 0.012]), [0, -0.0028, 0.0012])),
        ("nose width", scale(g([0.0, -0.035, 0.085], [0.02, 0.009, 0.012]), [0.0, 0.0, 0.0],
                             [0.16, 0.0, 0.0])),
        ("nose bridge", vec(g([0.0, -0.012, 0.092], [0.007, 0.012, 0.012]), [0, 0, 0.0018])),
        ("nose tip projection", vec(g([0.0, -0.029, 0.104], [0.009, 0.008, 0.01]), [0, 0, 0.0024])),
        ("nose tip rotation", vec(g([0.0, -0.032, 0.1], [0.01, 0.008, 0.01]), [0, 0.0018, 0])),
        ("nose bridge width", scale(g([0.0, -0.002, 0.078], [0.014, 0.012, 0.012]),
                                    [0.0, 0.0, 0.0], [0.14, 0.0, 0.0])),
        ("cheekbones", nrm(g([0.05, -0.014, 0.045], [0.014, 0.012, 0.016]), 0.0025)),
        ("cheek fullness", nrm(g([0.042, -0.052, 0.048], [0.016, 0.018, 0.018]), 0.003)),
        ("brow ridge", nrm(g([0.028, 0.021, 0.07], [0.02, 0.008, 0.016]), 0.002)),
        ("brow height", vec(g([0.03, 0.02, 0.07], [0.022, 0.01, 0.02]), [0, 0.002, 0])),
        ("eye spacing", vec(g(LEFT_EYE_CENTRE, [0.012, 0.012, 0.014]), [0.002, 0, 0])),
        ("eye height", vec(g(LEFT_EYE_CENTRE, [0.014, 0.012, 0.014]), [0, 0.0015, 0])),
        ("eye depth", vec(g(LEFT_EYE_CENTRE, [0.014, 0.012, 0.014]), [0, 0, -0.002])),
        ("forehead slope", vec(front * _smoothstep(0.02, 0.1, p[:, 1]), [0, 0, 0.004])),
        ("upper lip thickness", nrm(c.vermilion * c.upper, 0.0014)),
        ("lower lip thickness", nrm(c.vermilion * c.lower, 0.0017)),
        ("mouth width", scale(g([0.0, MOUTH_Y, 0.08], [0.03, 0.012, 0.02]), [0.0, 0.0, 0.0],
                              [0.1, 0.0, 0.0])),
        ("lip protrusion", vec(g([0.0, MOUTH_Y, 0.085], [0.022, 0.014, 0.02]), [0, 0, 0.002])),
        ("mouth height", vec(g([0.0, -0.075, 0.08], [0.03, 0.02, 0.03]), [0, -0.002, 0])),
        ("ear size", np.where(p[:, :1] < 0, scale(ears, ear_centre * [-1, 1, 1], [0.06] * 3),
                              scale(ears, ear_centre, [0.06] * 3))),
        ("ear protrusion", vec(ears * _smoothstep(-0.015, -0.04, p[:, 2]), [0.004, 0, 0])),
        ("ear height", vec(ears, [0, 0.004, 0])),
        ("neck width", scale(neck, [0.0, 0.0, -0.02], [0.07, 0.0, 0.07])),
        ("fullness", nrm(g([0.04, -0.06, 0.04], [0.025, 0.03, 0.03])
                         + g([0.0, -0.125, 0.03], [0.03, 0.015, 0.02]), 0.003)),
    ]


def _smooth_mask(c: _FieldContext, mask: np.ndarray, iterations: int = 4) -> np.ndarray:
    adj = _mesh_adjacency(c.geo.faces, c.n_verts)
    return _smooth_field(mask * 1.0, adj, np.zeros(c.n_verts, bool), iterations)


def _expression_fields(c: _FieldContext) -> list[tuple[str, np.ndarray, bool]]:
    """Semantic expressions: (name, [V, 3] metres at one standard deviation, moves the lids)."""
    p, g, vec, nrm = c.p, c.gauss, c.vec, c.along_normal
    left, right = (p[:, 0] > 0) * 1.0, (p[:, 0] < 0) * 1.0
    corner_at = [MOUTH_HALF_WIDTH, MOUTH_Y, 0.072]
    corner_size = [0.010, 0.009, 0.012]
    corner = g(corner_at, corner_size)
    corner_l = g(corner_at, corner_size, mirrored=False)
    corner_r = g(_mirror(np.array([corner_at]))[0], corner_size, mirrored=False)
    cheek = g([0.036, -0.035, 0.06], [0.014, 0.014, 0.016])
    mouth = g([0.0, MOUTH_Y, 0.085], [0.02, 0.012, 0.02])
    upper_lip = g([0.0, -0.060, 0.085], [0.022, 0.008, 0.02]) * c.upper
    lower_lip = g([0.0, -0.074, 0.083], [0.022, 0.009, 0.02]) * c.lower
    brow = g([0.03, 0.018, 0.07], [0.022, 0.012, 0.03]) * (1 - _smoothstep(0.03, 0.08, p[:, 1]))
    forehead = c.face * _smoothstep(0.0, 0.03, p[:, 1]) * (1 - _smoothstep(0.05, 0.085, p[:, 1]))
    inner_brow = g([0.014, 0.016, 0.078], [0.009, 0.01, 0.015])
    # lid skin: full weight on the margin, fading toward the crease; none at the canthi
    along = np.sin(np.pi * c.lid_t) ** 0.7
    upper_lid = along * (1 - _smoothstep(4.0, 26.0, c.above_upper_lid))
    lower_lid = along * (1 - _smoothstep(4.0, 20.0, c.below_lower_lid))
    smile = [0.0025, 0.0032, -0.0016]  # mouth corner: out, up, back
    cheek_up = [0.0, 0.002, 0.0015]
    lips = c.masks["lips"]
    narrow = -0.1 * np.stack([p[:, 0], 0 * p[:, 0], 0 * p[:, 0]], 1) * mouth[:, None]
    return [
        ("smile", vec(corner, smile) + vec(cheek, cheek_up) + c.lid_rotation(lower_lid, -0.06),
         True),
        ("smile left", vec(corner_l, smile, False) + vec(cheek * left, cheek_up, False), False),
        ("smile right", vec(corner_r, _mirror(np.array([smile]))[0], False)
         + vec(cheek * right, cheek_up, False), False),
        ("mouth corners down", vec(corner, [0.0004, -0.0025, -0.0004]), False),
        ("mouth stretch", vec(corner, [0.003, 0.0, -0.0007]) + nrm(c.vermilion, -0.0005), False),
        ("pucker", vec(mouth, [0.0, 0.0, 0.003]) + narrow, False),
        ("funnel", vec(mouth, [0, 0, 0.0025]) + vec(upper_lip, [0, 0.0012, 0])
         + vec(lower_lip, [0, -0.0015, 0]), False),
        ("lip press", vec(upper_lip * lips, [0, -0.001, -0.001])
         + vec(lower_lip * lips, [0, 0.001, -0.001]), False),
        ("upper lip raise", vec(g([0.012, -0.056, 0.084], [0.012, 0.01, 0.02]) * c.upper,
                                [0, 0.0025, 0.0005]), False),
        ("lower lip depress", vec(g([0.01, -0.078, 0.082], [0.014, 0.01, 0.02]) * c.lower,
                                  [0, -0.0025, 0.001]), False),
        ("brow raise", vec(np.maximum(brow, forehead * 0.6), [0, 0.004, 0])
         + c.lid_rotation(upper_lid * 0.25, -0.06), True),
        ("inner brow raise", vec(inner_brow, [0, 0.003, 0]), False),
        ("frown", vec(brow, [-0.0012, -0.0025, 0.0005]) + vec(inner_brow, [0, 0, 0.0008])
         + c.scale_about(g([0.0, 0.016, 0.078], [0.02, 0.01, 0.015]), [0.0, 0.0, 0.0],
                         [-0.1, 0.0, 0.0]), False),
        ("eyes close", c.lid_rotation(upper_lid, 0.30), True),
        ("left eye close", c.lid_rotation(upper_lid * left, 0.30), True),
        ("right eye close", c.lid_rotation(upper_lid * right, 0.30), True),
        ("squint", c.lid_rotation(lower_lid, -0.15) + c.lid_rotation(upper_lid, 0.08), True),
        ("cheek puff", nrm(g([0.04, -0.062, 0.045], [0.016, 0.016, 0.02]) * c.face, 0.005), False),
        ("cheek raise", vec(cheek, [0, 0.0025, 0.001]) + c.lid_rotation(lower_lid, -0.08), True),
        ("nose wrinkle", vec(g([0.011, -0.02, 0.085], [0.008, 0.014, 0.015]), [0, 0.002, 0])
         + vec(upper_lip, [0, 0.001, 0]) + vec(inner_brow, [0, -0.0015, 0]), False),
        ("mouth sideways", vec(np.minimum(mouth + 0.5 * (upper_lip + lower_lip), 1.0),
                               [0.0025, 0, 0], False), False),
        ("chin raise", vec(g([0.0, -0.1, 0.072], [0.016, 0.014, 0.02]), [0, 0.0025, 0.0005])
         + vec(lower_lip, [0, 0.0015, 0.0015]), False),
        ("dimpler", vec(corner, [0.0, 0.0, -0.002]), False),
        ("nostril flare", vec(g([0.013, -0.036, 0.086], [0.006, 0.006, 0.01]), [0.0015, 0, 0]),
         False),
        ("lips apart", vec(upper_lip, [0, 0.0015, 0]) + vec(lower_lip, [0, -0.002, 0]), False),
        ("left brow raise", vec(brow * left, [0, 0.004, 0], False), False),
        ("right brow raise", vec(brow * right, [0, 0.004, 0], False), False),
        ("jaw clench", nrm(g([0.05, -0.075, 0.0], [0.012, 0.015, 0.015]), 0.0015), False),
    ]


def _random_fields(c: _FieldContext, spec, rng: np.random.Generator, weight: np.ndarray
                   ) -> list[np.ndarray]:
    """Random smooth fields [V, 3]: each a Gaussian bump around a random surface point (mirrored
    for most) moving mostly along the normal, times `weight` [V]. spec: (scale, count,
    amplitude) triples, metres."""
    # Centres are drawn by surface area (not per vertex: the face is sampled more densely).
    prob = c.vertex_area * weight * (weight > 0.3)
    prob = prob / prob.sum()
    out = []
    for scale, count, amplitude in spec:
        for _ in range(count):
            centre = c.p[rng.choice(c.n_verts, p=prob)]
            sign = rng.choice([-1.0, 1.0])
            tangent = rng.normal(size=3) * 0.35
            symmetric = rng.random() < _SYMMETRIC_SHARE
            d = np.zeros((c.n_verts, 3))
            for mirror in ((False, True) if symmetric else (False,)):
                flip = np.array([-1.0, 1.0, 1.0]) if mirror else np.ones(3)
                w = np.exp(-0.5 * ((c.p - centre * flip) ** 2).sum(axis=1) / scale ** 2)
                d += amplitude * w[:, None] * (sign * c.normal + tangent * flip)
            out.append(d * weight[:, None])
    return out


def _principal_components(fields: list[np.ndarray], count: int) -> np.ndarray:
    """The `count` leading principal components [V, 3, count] of the distribution
    sum_k z_k D_k, z ~ N(0, I), of fields D_k [V, 3] (an SVD of the matrix of fields, via the
    eigen-decomposition of its Gram matrix): column norms are the standard deviations
    (decreasing); each column's largest entry is positive (deterministic signs)."""
    m = np.stack([f.ravel() for f in fields], axis=1)
    m[np.abs(m) < 1e-15] = 0.0  # Gaussian tails: subnormal numbers make BLAS crawl
    evals, evecs = np.linalg.eigh(m.T @ m)
    order = np.argsort(evals)[::-1][:count]
    if len(order) < count or evals[order[-1]] <= 1e-18:
        raise RuntimeError("not enough independent deformation fields")
    comps = m @ evecs[:, order]
    big = np.argmax(np.abs(comps), axis=0)
    comps *= np.sign(comps[big, np.arange(count)])
    return comps.reshape(fields[0].shape[0], 3, count)


def _blend_shapes(geo: _Geometry, masks: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Identity [V, 3, 300] and expression [V, 3, 100] components."""
    rng = np.random.default_rng(_SEED + 1)
    c = _FieldContext(geo, masks)
    ident = [c.finish_identity(f) for _, f in _identity_fields(c)]
    # Random normal offsets comparable to a feature's radius of curvature would collapse it: damp
    # them on the small, tightly curved parts (nose, ears).
    damp = 1.0 - 0.65 * _smooth_mask(c, c.masks["nose"]) - 0.5 * _smooth_mask(c, c.masks["ears"])
    ident += [c.finish_identity(f * damp[:, None])
              for f in _random_fields(c, _IDENTITY_RANDOM_FIELDS, rng, c.skin * 1.0)]
    expr = [c.finish_expression(f if lids else f * c.face[:, None], lids)
            for _, f, lids in _expression_fields(c)]
    expr += [c.finish_expression(f)
             for f in _random_fields(c, _EXPRESSION_RANDOM_FIELDS, rng, c.face)]
    return (_principal_components(ident, C.NUM_SHAPE_TOTAL),
            _principal_components(expr, C.NUM_EXPRESSION_TOTAL))


# ---------------------------------------------------------------------------------------------
# Landmarks: 51 static iBUG points and the 79 x 17 jaw-contour table
# ---------------------------------------------------------------------------------------------
def _closest_on_triangles(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Closest points [N, 3] to p [N, 3] on triangles (a, b, c) [N, 3] each, and their
    barycentric coordinates [N, 3] (region tests on the triangle's Voronoi regions)."""
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = (ab * ap).sum(1), (ac * ap).sum(1)
    bp = p - b
    d3, d4 = (ab * bp).sum(1), (ac * bp).sum(1)
    cp = p - c
    d5, d6 = (ab * cp).sum(1), (ac * cp).sum(1)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2
    n = len(p)
    bary = np.zeros((n, 3))
    done = np.zeros(n, bool)

    def put(mask, w):
        nonlocal done
        m = mask & ~done
        bary[m] = w[m]
        done |= m

    z = np.zeros(n)
    o = np.ones(n)
    with np.errstate(divide="ignore", invalid="ignore"):
        put((d1 <= 0) & (d2 <= 0), np.stack([o, z, z], 1))
        put((d3 >= 0) & (d4 <= d3), np.stack([z, o, z], 1))
        put((d6 >= 0) & (d5 <= d6), np.stack([z, z, o], 1))
        t = d1 / (d1 - d3)
        put((vc <= 0) & (d1 >= 0) & (d3 <= 0), np.stack([1 - t, t, z], 1))
        t = d2 / (d2 - d6)
        put((vb <= 0) & (d2 >= 0) & (d6 <= 0), np.stack([1 - t, z, t], 1))
        t = (d4 - d3) / ((d4 - d3) + (d5 - d6))
        put((va <= 0) & ((d4 - d3) >= 0) & ((d5 - d6) >= 0), np.stack([z, 1 - t, t], 1))
        denom = va + vb + vc
        put(np.ones(n, bool), np.stack([va / denom, vb / denom, vc / denom], 1))
    bary = np.clip(np.nan_to_num(bary), 0.0, 1.0)
    bary /= bary.sum(1, keepdims=True)
    return bary[:, :1] * a + bary[:, 1:2] * b + bary[:, 2:] * c, bary


def _closest_on_mesh(points: np.ndarray, verts: np.ndarray, faces: np.ndarray,
                     face_ids: np.ndarray, k: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Closest surface points of `points` [N, 3] on the faces `face_ids` of a mesh: (face index
    [N] into `faces`, barycentric coordinates [N, 3])."""
    cent = verts[faces[face_ids]].mean(axis=1)
    k = min(k, len(face_ids))
    _, near = cKDTree(cent).query(points, k=k)
    near = near.reshape(len(points), k)
    cand = face_ids[near]                                   # [N, k]
    tri = verts[faces[cand.ravel()]]                        # [N k, 3, 3]
    rep = np.repeat(points, k, axis=0)
    cp, bary = _closest_on_triangles(rep, tri[:, 0], tri[:, 1], tri[:, 2])
    dist = np.linalg.norm(cp - rep, axis=1).reshape(len(points), k)
    best = np.argmin(dist, axis=1)
    rows = np.arange(len(points)) * k + best
    return cand[np.arange(len(points)), best], bary[rows]


def _face_with_edge(faces: np.ndarray, i: int, j: int) -> tuple[int, np.ndarray]:
    """A face containing vertices i and j, and the positions of i and j in it."""
    hit = np.flatnonzero((faces == i).any(axis=1) & (faces == j).any(axis=1))
    if not len(hit):
        raise RuntimeError(f"no face has the edge ({i}, {j})")
    f = int(hit.min())
    slots = [int(np.flatnonzero(faces[f] == k)[0]) for k in (i, j)]
    return f, np.array(slots)


def _point_on_edge(faces: np.ndarray, i: int, j: int, t: float) -> tuple[int, np.ndarray]:
    """(face, barycentric [3]) of the point (1 - t) v_i + t v_j."""
    f, (pi, pj) = _face_with_edge(faces, i, j)
    bary = np.zeros(3)
    bary[pi] += 1.0 - t
    bary[pj] += t
    return f, bary


def _point_on_polyline(faces: np.ndarray, idx: np.ndarray, key: np.ndarray, target: float
                       ) -> tuple[int, np.ndarray]:
    """On a chain of vertices `idx` ordered by `key`, the point where key == target."""
    order = np.argsort(key)
    idx, key = idx[order], key[order]
    j = int(np.clip(np.searchsorted(key, target), 1, len(key) - 1))
    t = float(np.clip((target - key[j - 1]) / (key[j] - key[j - 1]), 0.0, 1.0))
    return _point_on_edge(faces, int(idx[j - 1]), int(idx[j]), t)


def _frontal_hits(verts: np.ndarray, faces: np.ndarray, face_ids: np.ndarray, xy: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """For each (x, y) [N, 2], the front-most of the faces `face_ids` under it seen along -z:
    (face index [N], barycentric [N, 3])."""
    tri = verts[faces[face_ids]]
    out_f, out_b = [], []
    for x, y in xy:
        a, b, c = tri[:, 0, :2], tri[:, 1, :2], tri[:, 2, :2]
        det = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1])
        with np.errstate(divide="ignore", invalid="ignore"):
            l1 = ((x - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (y - a[:, 1])) / det
            l2 = ((b[:, 0] - a[:, 0]) * (y - a[:, 1]) - (x - a[:, 0]) * (b[:, 1] - a[:, 1])) / det
        l0 = 1.0 - l1 - l2
        inside = (np.abs(det) > 1e-14) & (l0 >= -1e-9) & (l1 >= -1e-9) & (l2 >= -1e-9)
        if not inside.any():
            raise RuntimeError(f"no face under ({x:.4f}, {y:.4f})")
        zz = np.where(inside, l0 * tri[:, 0, 2] + l1 * tri[:, 1, 2] + l2 * tri[:, 2, 2], -np.inf)
        best = int(np.argmax(zz))
        bary = np.clip([l0[best], l1[best], l2[best]], 0.0, 1.0)
        out_f.append(face_ids[best])
        out_b.append(bary / bary.sum())
    return np.array(out_f, np.int64), np.array(out_b)


# Nose base points (iBUG 31..35) in the frontal view: x, y.
_NOSE_BASE_XY = ((-0.0125, -0.0392), (-0.0062, -0.0413), (0.0, -0.0423), (0.0062, -0.0413),
                 (0.0125, -0.0392))
# Lip landmark positions along the mouth, as fractions of the mouth half width.
_OUTER_LIP_FRACTIONS = (0.55, 0.25, 0.0)
_INNER_LIP_FRACTION = 0.45


def _static_landmarks(geo: _Geometry) -> tuple[np.ndarray, np.ndarray]:
    """The 51 static landmarks (iBUG 17..67) as (face indices [51], barycentric [51, 3])."""
    v, faces = geo.verts, geo.faces
    skin_faces = np.flatnonzero((faces < geo.num_skin).all(axis=1))
    lm_f = np.zeros(C.NUM_STATIC_LANDMARKS, np.int64)
    lm_b = np.zeros((C.NUM_STATIC_LANDMARKS, 3))

    def put(ibug, fb):
        lm_f[ibug - 17], lm_b[ibug - 17] = fb

    # Brows (17-21 right, outer to inner; 22-26 left, inner to outer): the brow line, seen
    # from the front.
    t = np.linspace(0.12, 1.0, 5)
    bx, by, _ = _brow_line(t)
    xy = np.concatenate([np.stack([-bx[::-1], by[::-1]], 1), np.stack([bx, by], 1)])
    f, b = _frontal_hits(v, faces, skin_faces, xy)
    for k in range(10):
        put(17 + k, (f[k], b[k]))
    # Nose bridge (27-30, top to tip) and nose base (31-35, right to left).
    vs = v[:geo.num_skin]
    mid = np.flatnonzero((np.abs(vs[:, 0]) < 1e-12) & (np.abs(vs[:, 1] + 0.02) < 0.02))
    y_tip = v[mid[np.argmax(v[mid, 2])], 1]
    y_top = 0.3 * EYE_UPPER_LID_DEG * _DEG * EYEBALL_RADIUS  # a little above the eye centres
    ys = y_top + (y_tip - y_top) * np.arange(4) / 3.0
    f, b = _frontal_hits(v, faces, skin_faces, np.stack([np.zeros(4), ys], 1))
    for k in range(4):
        put(27 + k, (f[k], b[k]))
    f, b = _frontal_hits(v, faces, skin_faces, np.array(_NOSE_BASE_XY))
    for k in range(5):
        put(31 + k, (f[k], b[k]))
    # Eyes: points on the lid margin by its parameter s (0 inner canthus, 1 outer; _eye_opening).
    eye_s = {36: 1.0, 37: 2 / 3, 38: 1 / 3, 39: 0.0, 40: 5 / 3, 41: 4 / 3,   # right eye
             42: 0.0, 43: 1 / 3, 44: 2 / 3, 45: 1.0, 46: 4 / 3, 47: 5 / 3}   # left eye
    for ibug, s in eye_s.items():
        kind = _K_EYE_RIGHT if ibug < 42 else _K_EYE_LEFT
        ring0 = np.flatnonzero((geo.kind == kind) & (geo.ring == 0)
                               & (np.arange(len(v)) < geo.num_skin))
        ss = geo.eye_s[ring0]
        # close the loop: append the first vertex at s + 2
        chain = np.append(ring0, ring0[np.argmin(ss)])
        key = np.append(ss, ss.min() + 2.0)
        put(ibug, _point_on_polyline(faces, chain, key, s))
    # Mouth.
    w = MOUTH_HALF_WIDTH
    on = (geo.kind == _K_MOUTH) & (np.arange(len(v)) < geo.num_skin)
    a, bb = geo.mouth_ab[:, 0], geo.mouth_ab[:, 1]
    corner_r = int(np.flatnonzero(on & (geo.ring == 0) & np.isclose(a, -w))[0])
    corner_l = int(np.flatnonzero(on & (geo.ring == 0) & np.isclose(a, w))[0])
    loop1_r = int(np.flatnonzero(on & (geo.ring == 1) & (bb == 0) & (a < 0))[0])
    loop1_l = int(np.flatnonzero(on & (geo.ring == 1) & (bb == 0) & (a > 0))[0])  # loop corners
    # outer corners half way out to the next loop's corner; inner corners on the corner vertex
    outer = 0.5 * (v[[corner_r, corner_l]] + v[[loop1_r, loop1_l]])
    f, b = _closest_on_mesh(outer, v, faces, skin_faces)
    put(48, (f[0], b[0]))
    put(54, (f[1], b[1]))
    for ibug, corner in ((60, corner_r), (64, corner_l)):
        fc = int(np.flatnonzero((faces == corner).any(axis=1))[0])
        put(ibug, (fc, (faces[fc] == corner) * 1.0))
    border = _MOUTH_VERMILION_LOOP
    up = np.flatnonzero(on & (geo.ring == border) & (bb > 0))
    lo = np.flatnonzero(on & (geo.ring == border) & (bb < 0))
    fr = _OUTER_LIP_FRACTIONS
    for ibug, frac in zip(range(49, 54), (-fr[0], -fr[1], fr[2], fr[1], fr[0])):
        put(ibug, _point_on_polyline(faces, up, a[up], frac * w))
    for ibug, frac in zip(range(55, 60), (fr[0], fr[1], fr[2], -fr[1], -fr[0])):
        put(ibug, _point_on_polyline(faces, lo, a[lo], frac * w))
    slit_up = np.flatnonzero(on & (geo.ring == 0) & (geo.lip_side > 0))
    slit_lo = np.flatnonzero(on & (geo.ring == 0) & (geo.lip_side < 0))
    # the corners close the chains
    chain_up = np.concatenate([slit_up, [corner_r, corner_l]])
    chain_lo = np.concatenate([slit_lo, [corner_r, corner_l]])
    fi = _INNER_LIP_FRACTION
    for ibug, frac in zip((61, 62, 63), (-fi, 0.0, fi)):
        put(ibug, _point_on_polyline(faces, chain_up, a[chain_up], frac * w))
    for ibug, frac in zip((65, 66, 67), (fi, 0.0, -fi)):
        put(ibug, _point_on_polyline(faces, chain_lo, a[chain_lo], frac * w))
    return lm_f, lm_b


# Jaw contour guide (left half, chin last): the outline of the lower face in the frontal view,
# from level with the lower eyelids in front of the ear, down the ramus and along the jaw.
_CONTOUR_GUIDE = np.array([[0.0665, -0.006, 0.014], [0.0650, -0.030, 0.010],
                           [0.0590, -0.060, 0.006], [0.0505, -0.084, 0.008],
                           [0.0385, -0.101, 0.030], [0.0200, -0.113, 0.055],
                           [0.0, -0.118, 0.064]])
# Candidate curve of each contour point: rays in its plane, from straight out (0) to forward (85).
_CONTOUR_ALPHA_DEG = (-5.0, 85.0)
_CONTOUR_SAMPLES = 360
_CONTOUR_INSET = 0.03
_CONTOUR_RESAMPLE = 0.00025  # metres between curve samples
_CONTOUR_SOFTNESS = 0.0015   # metres: temperature of the soft silhouette point


def _contour_guide_points() -> tuple[np.ndarray, np.ndarray]:
    """The 17 contour points on the guide (iBUG 0..16) [17, 3] and their outward normals in the
    frontal image plane [17, 2], equally spaced along the projected outline."""
    half = _CONTOUR_GUIDE
    curve = np.concatenate([_mirror(half), half[::-1][1:]])  # right top -> chin -> left top
    xy = curve[:, :2]
    seg = np.linalg.norm(np.diff(xy, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    s = np.linspace(0.0, cum[-1], C.NUM_CONTOUR_LANDMARKS)
    pts = np.stack([np.interp(s, cum, curve[:, k]) for k in range(3)], 1)
    ds = 0.002
    ahead = np.stack([np.interp(np.minimum(s + ds, cum[-1]), cum, xy[:, k]) for k in range(2)], 1)
    behind = np.stack([np.interp(np.maximum(s - ds, 0.0), cum, xy[:, k]) for k in range(2)], 1)
    tangent = _unit(ahead - behind)
    normal = np.stack([tangent[:, 1], -tangent[:, 0]], 1)  # outward: the curve runs clockwise
    pts[C.NUM_CONTOUR_LANDMARKS // 2, 0] = 0.0
    normal[C.NUM_CONTOUR_LANDMARKS // 2] = [0.0, -1.0]
    return pts, normal


def _contour_yaw_deg(row: int) -> int:
    """Head yaw (degrees, R_y) of a contour table row: rows 0..39 are 0..-39, 40..78 are +1..+39."""
    return -row if row <= C.CONTOUR_MAX_YAW_DEG else row - C.CONTOUR_MAX_YAW_DEG


def _contour_points_3d() -> np.ndarray:
    """[79, 17, 3] contour points on the neutral head (before snapping to the mesh): for each yaw,
    each point is the silhouette point of its candidate curve on the side turned away from the
    camera, and stays at its frontal (jaw-line) place on the side turned toward it."""
    pts, normal = _contour_guide_points()
    n3 = np.concatenate([normal, np.zeros((len(normal), 1))], 1)
    alpha = np.linspace(*_CONTOUR_ALPHA_DEG, _CONTOUR_SAMPLES) * _DEG
    dirs = (np.cos(alpha)[None, :, None] * n3[:, None, :]
            + np.sin(alpha)[None, :, None] * np.array([0.0, 0.0, 1.0]))
    origin = np.repeat(pts - _CONTOUR_INSET * n3, _CONTOUR_SAMPLES, axis=0)
    curves = _cast(origin, dirs.reshape(-1, 3), t_max=0.07).reshape(len(pts), _CONTOUR_SAMPLES, 3)

    # Resample each curve evenly by arc length (the soft support below weighs samples equally).
    even = []
    for curve in curves:
        cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(curve, axis=0), axis=1))])
        s = np.arange(0.0, cum[-1], _CONTOUR_RESAMPLE)
        even.append(np.stack([np.interp(s, cum, curve[:, k]) for k in range(3)], 1))

    def support(curve, direction):
        # A soft arg-max: the silhouette point of a curve jumps along flat stretches (the side of
        # the face is nearly straight); a softmax over the extent keeps it moving smoothly.
        val = curve @ direction
        w = np.exp((val - val.max()) / _CONTOUR_SOFTNESS)
        return (w / w.sum()) @ curve

    out = np.zeros((C.CONTOUR_NUM_ROWS, len(pts), 3))
    for row in range(C.CONTOUR_NUM_ROWS):
        th = _contour_yaw_deg(row) * _DEG
        for i, (nx, ny) in enumerate(normal):
            turned_away = nx * np.sin(th) > 1e-12
            t = th if turned_away else 0.0
            out[row, i] = support(even[i], np.array([nx * np.cos(t), ny, nx * np.sin(t)]))
    return out


def _contour_table(geo: _Geometry) -> tuple[np.ndarray, np.ndarray]:
    """(faces [79, 17], barycentric [79, 17, 3]) of the contour points snapped to the skin."""
    pts = _contour_points_3d()
    skin_faces = np.flatnonzero((geo.faces < geo.num_skin).all(axis=1))
    f, b = _closest_on_mesh(pts.reshape(-1, 3), geo.verts, geo.faces, skin_faces)
    return f.reshape(pts.shape[:2]), b.reshape(pts.shape)


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------
def build_open_head() -> FlameModel:
    """Builds the open head model from scratch (a few seconds).

    Deterministic: the same arrays on every call (fixed internal seed, canonical face order,
    fixed signs of the principal components).

    Returns: a `FlameModel` with FLAME's layout (5 joints, 300 identity and 100 expression
    components, 51 static landmarks, a 79 x 17 contour table).
    """
    geo = _build_geometry()
    masks = _region_masks_of(geo)
    weights = _skinning_weights(geo)
    shapedirs, exprdirs = _blend_shapes(geo, masks)
    static_f, static_b = _static_landmarks(geo)
    dyn_f, dyn_b = _contour_table(geo)
    return FlameModel(
        v_template=geo.verts.astype(np.float64),
        faces=geo.faces.astype(np.int64),
        shapedirs=shapedirs,
        exprdirs=exprdirs,
        posedirs=_pose_correctives(geo, weights),
        j_regressor=_joint_regressor(geo),
        weights=weights,
        parents=np.asarray(C.PARENTS, np.int64),
        static_lmk_faces=static_f,
        static_lmk_bary=static_b,
        dynamic_lmk_faces=dyn_f,
        dynamic_lmk_bary=dyn_b,
        source=f"open head {OPEN_HEAD_VERSION} (generated)",
    )


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


_MODEL_FILES = (MODEL_FILENAME, STATIC_EMBEDDING_FILENAME, DYNAMIC_EMBEDDING_FILENAME)


def _complete(folder: pathlib.Path) -> bool:
    return all((folder / name).is_file() for name in _MODEL_FILES)


def ensure_open_head(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """The folder holding the open head's three FLAME files, generated on first use.

    The folder is `<cache root>/openhead-<OPEN_HEAD_VERSION>`; the cache root is `cache_dir` if
    given, else $RINGNET_TF_CACHE, else ~/.cache/ringnet_tf. The files are written into a
    temporary sibling folder that is then renamed into place, so a crash never leaves a
    half-written cache and two processes racing both end with the same complete folder.

    Returns: the folder (pathlib.Path).
    """
    root = pathlib.Path(cache_dir or os.environ.get(CACHE_ENV_VAR) or DEFAULT_CACHE_ROOT)
    root = root.expanduser()
    folder = root / f"openhead-{OPEN_HEAD_VERSION}"
    if _complete(folder):
        return folder
    root.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=root))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is an ordinary folder
        save_flame_files(build_open_head(), tmp)
        for attempt in range(2):
            try:
                os.rename(tmp, folder)
                return folder
            except OSError:
                if _complete(folder):  # another process finished first: use its files
                    return folder
                if attempt == 0 and folder.exists():
                    # an incomplete leftover (not from us: ours appear atomically): set it aside
                    stale = pathlib.Path(tempfile.mkdtemp(prefix=f".{folder.name}.stale-",
                                                          dir=root))
                    try:
                        os.rename(folder, stale / "old")
                    except OSError:
                        pass
                    _remove_tree(stale)
                else:
                    raise
        raise RuntimeError(f"could not create {folder}")
    finally:
        if tmp.exists():
            _remove_tree(tmp)


def _remove_tree(path: pathlib.Path) -> None:
    import shutil
    shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flame.openhead",
        description="Generate the open head: a FLAME-format head model made from code (free to "
                    "ship), deterministically. Writes generic_model.pkl, "
                    "flame_static_embedding.pkl and flame_dynamic_embedding.npy, readable by any "
                    "FLAME consumer (smplx too: name the model file FLAME_NEUTRAL.pkl).")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder (created if missing)")
    parser.add_argument("--force", action="store_true",
                        help="overwrite model files already in DIR")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    existing = [name for name in _MODEL_FILES if (out / name).exists()]
    if existing and not args.force:
        print(f"error: {out} already holds {', '.join(existing)}; use --force to overwrite",
              file=sys.stderr)
        return 1
    start = time.perf_counter()
    model = build_open_head()
    paths = save_flame_files(model, out)
    for role in ("model", "static", "dynamic"):
        print(paths[role])
    print(f"open head {OPEN_HEAD_VERSION}: {model.num_vertices} vertices, {model.num_faces} faces, "
          f"built in {time.perf_counter() - start:.1f} s")
    print(f"fingerprint {model.fingerprint()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
