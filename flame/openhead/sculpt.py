"""The sculpt: an implicit surface, negative inside (approximately a signed distance in metres).

Smooth unions and subtractions of ellipsoids, tubes, a lofted face section, a nose wedge, an ear
and the eye pockets; `head_sdf` is the whole neutral head, evaluated on |x| (mirror-symmetric).
"""
from __future__ import annotations

import functools

import numpy as np
from scipy.interpolate import PchipInterpolator

from flame.geometry import rotation_about_x, rotation_about_y
from flame.openhead.anatomy import (_DEG, EYEBALL_RADIUS, LEFT_EYE_CENTRE, LID_THICKNESS, _norm,
                                    _unit)


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
    n = rotation_about_y(_EAR_FLARE_DEG) @ np.array([1.0, 0.0, 0.0])
    up = rotation_about_x(-_EAR_TILT_DEG) @ np.array([0.0, 1.0, 0.0])
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
