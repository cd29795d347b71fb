"""Rig: joint regressor, skinning weights and pose correctives of FLAME's five joints."""
from __future__ import annotations

import numpy as np

from flame import constants as C
from flame.openhead.anatomy import (JAW_JOINT, MOUTH_HALF_WIDTH, MOUTH_Y, NECK_JOINT, ROOT_JOINT,
                                    _jawline_y, _smoothstep)
from flame.openhead.sampling import _MOUTH_VERMILION_LOOP
from flame.openhead.topology import _Geometry, _mesh_adjacency, _smooth_field


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

    def add(joint_block: int, axis: int, field: np.ndarray) -> None:
        # half on each antisymmetric feature: the field [ns, 3] moves per unit of the axis component
        i, j = _antisym_feature_columns(joint_block, axis)
        posedirs[:ns, :, i] += 0.5 * field
        posedirs[:ns, :, j] -= 0.5 * field

    # jaw opening (rotation about +x), metres per radian
    jaw = np.zeros((ns, 3))
    cheek = gauss([0.040, MOUTH_Y, 0.060], [0.012, 0.014, 0.014]) * weights[:ns, C.JAW] ** 0.5
    jaw[:, 0] = -0.0035 * sx * cheek
    jaw[:, 2] = -0.0012 * cheek
    chin = gauss([0.0, -0.118, 0.040], [0.020, 0.008, 0.018])
    jaw[:, 1] += 0.0030 * chin
    jaw[:, 2] += -0.0015 * chin
    add(1, 0, jaw)
    # neck nod (about +x: face down): throat bunches forward, nape stretches back
    nod = np.zeros((ns, 3))
    throat = gauss([0.0, -0.125, 0.040], [0.035, 0.018, 0.02]) * (1.0 - weights[:ns, C.JAW])
    nod[:, 2] += 0.008 * throat
    nape = gauss([0.0, -0.09, -0.075], [0.04, 0.03, 0.02])
    nod[:, 2] += -0.003 * nape
    add(0, 0, nod)
    # neck turn (about +y): the middle of the neck turns a little further (smoother twist)
    twist = np.zeros((ns, 3))
    mid = np.exp(-0.5 * ((p[:, 1] + 0.13) / 0.02) ** 2) * (p[:, 1] < -0.08)
    rel = p - np.array([0.0, 0.0, -0.02])
    twist[:, 0] = 0.25 * rel[:, 2] * mid
    twist[:, 2] = -0.25 * rel[:, 0] * mid
    add(0, 1, twist)
    return posedirs
