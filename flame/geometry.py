"""NumPy geometry shared by the open head generator and the evaluation: rotations and the exact
closest point on a triangle.

`flame.lbs.batch_rodrigues` is the forward pass's Rodrigues formula in TensorFlow (batched,
differentiable, XLA-compiled, float32); `rotation_from_axis_angle` here is the float64 NumPy one
for NumPy code. They cannot be one function: one builds a graph, the other computes values.

Conventions: points are rows, `[M, 3] float64`; angles of the axis rotations are in degrees, a
positive angle turns counter-clockwise seen from the positive axis (right-handed).
"""
from __future__ import annotations

import math

import numpy as np

# A triangle counts as degenerate (a segment or a point) when |AB x AC| is below this fraction of
# its longest edge squared: the barycentric formula for the face interior divides by that area.
DEGENERATE_AREA_RATIO = 1e-12

# Rows of the packed per-triangle table `[PACKED_ROWS, M]` (see `pack_triangles`): corner A
# (3 rows), edge AB (3), edge AC (3), |AB|^2, |AC|^2, AB.AC, and 1.0 for a degenerate triangle.
# Rows, not columns, so that gathering a set of triangles gives contiguous 1-D arrays, which NumPy
# processes several times faster.
ROW_A, ROW_AB, ROW_AC, ROW_AB2, ROW_AC2, ROW_ABAC, ROW_DEGENERATE = 0, 3, 6, 9, 10, 11, 12
PACKED_ROWS = 13


# ----------------------------------------------------------------------------------------------
# Rotations


def rotation_about_x(angle_deg: float) -> np.ndarray:
    """`[3, 3] float64` rotation by `angle_deg` degrees about the x axis (y turns toward z)."""
    t = np.deg2rad(float(angle_deg))
    c, s = np.cos(t), np.sin(t)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rotation_about_y(angle_deg: float) -> np.ndarray:
    """`[3, 3] float64` rotation by `angle_deg` degrees about the y axis (z turns toward x: for a
    FLAME head, positive angles turn the face toward the subject's left, +x)."""
    t = np.deg2rad(float(angle_deg))
    c, s = np.cos(t), np.sin(t)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rotation_from_axis_angle(axis_angle: np.ndarray) -> np.ndarray:
    """Rodrigues' formula: `[3]` axis-angle (radians) -> `[3, 3] float64` rotation."""
    axis_angle = np.asarray(axis_angle, np.float64)
    angle = float(np.linalg.norm(axis_angle))
    if angle < 1e-15:
        return np.eye(3)
    k = axis_angle / angle
    kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + math.sin(angle) * kx + (1.0 - math.cos(angle)) * kx @ kx


# ----------------------------------------------------------------------------------------------
# Closest point on a triangle


def rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot products of two `[M, 3]` arrays, `[M]`."""
    return np.einsum("ij,ij->i", a, b)


def pack_triangles(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Triangles' corners `[M, 3]` each -> the packed table `[PACKED_ROWS, M] float64` that
    `closest_on_packed` reads (rows: see ROW_* above)."""
    ab = b - a
    ac = c - a
    packed = np.empty((PACKED_ROWS, len(a)))
    packed[ROW_A:ROW_A + 3] = a.T
    packed[ROW_AB:ROW_AB + 3] = ab.T
    packed[ROW_AC:ROW_AC + 3] = ac.T
    packed[ROW_AB2] = rowdot(ab, ab)
    packed[ROW_AC2] = rowdot(ac, ac)
    packed[ROW_ABAC] = rowdot(ab, ac)
    bc = ac - ab
    longest2 = np.maximum(np.maximum(packed[ROW_AB2], packed[ROW_AC2]), rowdot(bc, bc))
    twice_area = np.linalg.norm(np.cross(ab, ac), axis=1)
    packed[ROW_DEGENERATE] = twice_area <= DEGENERATE_AREA_RATIO * longest2
    return packed


def closest_on_packed(p: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closest points as a + v AB + w AC, and squared distances, for point-triangle pairs.

    The closest point lies in one of seven Voronoi regions of the triangle (three corners, three
    edges, the interior); the region follows from signs of dot products. A degenerate triangle
    (collinear or coincident corners) is the segment between its two farthest corners.

    Args:
      p: `[3, M]` points (rows x, y, z); g: `[PACKED_ROWS, M]` their triangles (`pack_triangles`).
    Returns:
      v, w, squared distance, each `[M] float64`.
    """
    px, py, pz = p
    apx, apy, apz = px - g[0], py - g[1], pz - g[2]
    bx, by, bz = g[ROW_AB], g[ROW_AB + 1], g[ROW_AB + 2]
    cx, cy, cz = g[ROW_AC], g[ROW_AC + 1], g[ROW_AC + 2]
    d1 = bx * apx + by * apy + bz * apz   # AB.AP
    d2 = cx * apx + cy * apy + cz * apz   # AC.AP
    d3 = d1 - g[ROW_AB2]                  # AB.BP, as BP = AP - AB
    d4 = d2 - g[ROW_ABAC]                 # AC.BP
    d5 = d1 - g[ROW_ABAC]                 # AB.CP, as CP = AP - AC
    d6 = d2 - g[ROW_AC2]                  # AC.CP
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2
    with np.errstate(divide="ignore", invalid="ignore"):
        # Interior first, then each boundary region overrides it, in reverse order of
        # precedence, so that the corner regions (tested first in the usual derivation) win.
        # Divisions of regions that do not apply may be 0/0; np.where discards them.
        denom = va + vb + vc
        v = vb / denom
        w = vc / denom
        e43 = d4 - d3
        e56 = d5 - d6
        on = (va <= 0) & (e43 >= 0) & (e56 >= 0)                    # edge BC
        t = e43 / (e43 + e56)
        v = np.where(on, 1.0 - t, v)
        w = np.where(on, t, w)
        on = (vb <= 0) & (d2 >= 0) & (d6 <= 0)                      # edge AC
        v = np.where(on, 0.0, v)
        w = np.where(on, d2 / (d2 - d6), w)
        on = (d6 >= 0) & (d5 <= d6)                                  # corner C
        v = np.where(on, 0.0, v)
        w = np.where(on, 1.0, w)
        on = (vc <= 0) & (d1 >= 0) & (d3 <= 0)                      # edge AB
        v = np.where(on, d1 / (d1 - d3), v)
        w = np.where(on, 0.0, w)
        on = (d3 >= 0) & (d4 <= d3)                                  # corner B
        v = np.where(on, 1.0, v)
        w = np.where(on, 0.0, w)
        on = (d1 <= 0) & (d2 <= 0)                                   # corner A
        v = np.where(on, 0.0, v)
        w = np.where(on, 0.0, w)
    degenerate = np.flatnonzero(g[ROW_DEGENERATE])
    if degenerate.size:
        v[degenerate], w[degenerate] = _degenerate_closest(p[:, degenerate], g[:, degenerate])
    ex = apx - v * bx - w * cx
    ey = apy - v * by - w * cy
    ez = apz - v * bz - w * cz
    return v, w, ex * ex + ey * ey + ez * ez


def _degenerate_closest(p: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(v, w) of the closest points on degenerate triangles: on the longest of their edges."""
    a = g[ROW_A:ROW_A + 3].T
    ab = g[ROW_AB:ROW_AB + 3].T
    ac = g[ROW_AC:ROW_AC + 3].T
    points = p.T
    starts = np.stack([a, a, a + ab], axis=1)  # edges AB, AC, BC
    ends = np.stack([a + ab, a + ac, a + ac], axis=1)
    longest = np.argmax(np.linalg.norm(ends - starts, axis=2), axis=1)
    rows = np.arange(len(points))
    start, end = starts[rows, longest], ends[rows, longest]
    direction = end - start
    length2 = rowdot(direction, direction)
    t = np.clip(rowdot(points - start, direction) / np.where(length2 > 0, length2, 1.0), 0.0, 1.0)
    t = np.where(length2 > 0, t, 0.0)
    v = np.select([longest == 0, longest == 1], [t, np.zeros_like(t)], 1.0 - t)
    w = np.select([longest == 0, longest == 1], [np.zeros_like(t), t], t)
    return v, w


def packed_points(g: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
    """`[M, 3]` points a + v AB + w AC of packed triangles `g` `[PACKED_ROWS, M]`, v and w `[M]`."""
    return (g[ROW_A:ROW_A + 3] + v * g[ROW_AB:ROW_AB + 3] + w * g[ROW_AC:ROW_AC + 3]).T


def closest_points_on_triangles(points: np.ndarray, a: np.ndarray, b: np.ndarray,
                                c: np.ndarray) -> np.ndarray:
    """Exact closest points on triangles (a, b, c), one triangle per point.

    Args:
      points, a, b, c: `[M, 3]` float.
    Returns:
      `[M, 3] float64` closest points.
    """
    packed = pack_triangles(np.asarray(a, np.float64), np.asarray(b, np.float64),
                            np.asarray(c, np.float64))
    v, w, _ = closest_on_packed(np.ascontiguousarray(np.asarray(points, np.float64).T), packed)
    return packed_points(packed, v, w)


def closest_barycentric(points: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Barycentric coordinates of the closest points on triangles (a, b, c), one per point.

    Args:
      points, a, b, c: `[M, 3]` float.
    Returns:
      bary: `[M, 3] float64` weights of (a, b, c), each in [0, 1], rows summing to 1 (round-off
        below zero is clipped: stored landmark embeddings must be valid as they are).
      d2: `[M] float64` squared distances from the points to their closest points.
    """
    packed = pack_triangles(np.asarray(a, np.float64), np.asarray(b, np.float64),
                            np.asarray(c, np.float64))
    v, w, d2 = closest_on_packed(np.ascontiguousarray(np.asarray(points, np.float64).T), packed)
    bary = np.clip(np.stack([1.0 - v - w, v, w], axis=1), 0.0, 1.0)
    return bary / bary.sum(axis=1, keepdims=True), d2
