"""Landmarks: the 51 static iBUG points and the 79 x 17 jaw-contour table, as FLAME's were made.

Each landmark is a (face index, barycentric coordinates) pair on the skin; the contour rows are
the jaw-line silhouette at every whole degree of yaw.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from flame import constants as C
from flame.geometry import closest_barycentric
from flame.openhead.anatomy import (_DEG, EYE_UPPER_LID_DEG, EYEBALL_RADIUS, MOUTH_HALF_WIDTH,
                                    _brow_line, _mirror, _unit)
from flame.openhead.rays import _cast
from flame.openhead.sampling import _K_EYE_LEFT, _K_EYE_RIGHT, _K_MOUTH, _MOUTH_VERMILION_LOOP
from flame.openhead.topology import _Geometry


# Distances (m) below which two candidate faces hold the same landmark point: round-off.
_TIE_M = 1e-9


def _closest_on_mesh(points: np.ndarray, verts: np.ndarray, faces: np.ndarray,
                     face_ids: np.ndarray, k: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Closest surface points of `points` [N, 3] on the faces `face_ids` of a mesh: (face index
    [N] into `faces`, barycentric coordinates [N, 3]). Searches the k faces with the nearest
    centroids: landmarks lie on the skin, so the closest face is among them."""
    cent = verts[faces[face_ids]].mean(axis=1)
    k = min(k, len(face_ids))
    _, near = cKDTree(cent).query(points, k=k)
    near = near.reshape(len(points), k)
    cand = face_ids[near]                                   # [N, k]
    tri = verts[faces[cand.ravel()]]                        # [N k, 3, 3]
    bary, d2 = closest_barycentric(np.repeat(points, k, axis=0), tri[:, 0], tri[:, 1], tri[:, 2])
    d2 = d2.reshape(len(points), k)
    # A point on a shared vertex or edge is equally close to several faces: take the lowest face
    # index among those whose squared distance is within (1 nm)^2 of the closest (round-off), so
    # every machine writes the same file.
    tied = d2 <= d2.min(axis=1, keepdims=True) + _TIE_M ** 2
    best = np.argmin(np.where(tied, cand, np.iinfo(np.int64).max), axis=1)
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
    """For each (x, y) [N, 2], the front-most of the faces `face_ids` (ascending) under it seen
    along -z: (face index [N], barycentric [N, 3])."""
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
        # Faces sharing the hit vertex or edge tie up to round-off: the lowest face index wins
        # (face_ids ascend), whatever the last bits of this machine's arithmetic.
        best = int(np.flatnonzero(zz >= zz.max() - _TIE_M)[0])
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
