"""Anatomy of the open head (metres) and the small vector helpers every part of the generator uses.

The left side (+x) is described; everything is mirrored to the right. Eye openings are given in
the eye's own angles (degrees): azimuth alpha from +z toward the lateral side, elevation beta.
"""
from __future__ import annotations

import numpy as np

# The only seed: every random choice (sample priorities, random deformation fields) derives from it.
_SEED = 5023

_DEG = np.pi / 180.0

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


def _norm(v: np.ndarray) -> np.ndarray:
    return np.sqrt(np.einsum("ij,ij->i", v, v))


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


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


def _mouth_line_y(a: np.ndarray) -> np.ndarray:
    return MOUTH_Y + MOUTH_CORNER_RISE * (np.asarray(a) / MOUTH_HALF_WIDTH) ** 2


def _mirror(p: np.ndarray) -> np.ndarray:
    return p * np.array([-1.0, 1.0, 1.0])


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


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
