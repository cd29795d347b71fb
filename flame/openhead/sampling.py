"""Sampling: where the skin vertices go (sample directions, before triangulation).

A mirror-symmetric variable-density Poisson-disk set of directions (denser on the face) plus
structured rings around the eye openings, loops around the mouth, the midline and the neck's
bottom boundary; `_sample_skin` assembles them and records what each sample is (`_K_*`).
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy.spatial import cKDTree

from flame.openhead.anatomy import (_DEG, _SEED, EYEBALL_RADIUS, LEFT_EYE_CENTRE, LID_THICKNESS,
                                    MOUTH_FRONT_Z, MOUTH_HALF_WIDTH, MOUTH_Y, NECK_BOTTOM_Y,
                                    _eye_angles, _eye_opening, _eye_point, _eye_ring_angles,
                                    _mirror, _mouth_line_y, _smoothstep, _unit)
from flame.openhead.rays import _RAY_ORIGIN, _cast_directions, _directions_of_points
from flame.openhead.sculpt import _EAR_ORIGIN

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
