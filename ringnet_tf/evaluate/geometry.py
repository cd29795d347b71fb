"""Geometry behind the scan-to-mesh metric: exact point-to-triangle distances behind a spatial index,
similarity Procrustes (Umeyama, with scale) and the similarity refinement that minimises the
scan-to-mesh distance.

Conventions: points are rows, `[N, 3] float64`; a similarity maps x to `s R x + t`. Distances are
unsigned Euclidean distances in the unit of the points they are measured between.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy.spatial import cKDTree

# A triangle counts as degenerate (a segment or a point) when |AB x AC| is below this fraction of
# its longest edge squared: the barycentric formula for the face interior divides by that area.
DEGENERATE_AREA_RATIO = 1e-12
# Slack on the pruning bound, relative to the bound and (for points on the surface) to the mesh's
# coordinate magnitude, so that rounding never drops a triangle that ties the best one; it only
# admits a few more candidates.
BOUND_RELATIVE_SLACK = 1e-9
BOUND_EXTENT_SLACK = 1e-12
# Nearest index samples examined per point before the exactness check asks for more.
DEFAULT_NEIGHBOURS = 12
# Index samples: a triangle whose bounding radius exceeds SAMPLE_RADIUS_FACTOR x the median
# radius is split (virtually) into m x m similar sub-triangles, each sampled at its centroid, so
# that every sample covers its piece within about that radius: a few large triangles then do not
# loosen the pruning bound for all the others. MAX_SUBDIVISION caps m for huge triangles.
SAMPLE_RADIUS_FACTOR = 1.25
MAX_SUBDIVISION = 32
# Refinement: stop when a step lowers the sum of squared distances by less than this fraction
# (measured, or predicted by the linearisation; 1e-7 of the energy is 5e-8 of the RMS distance,
# far below the metric's reporting precision), or when it would move no closest point by more
# than STEP_TOLERANCE x the size of the scan (round-off level). Levenberg-Marquardt damping starts
# at REFINE_INITIAL_DAMPING; a step rejected this many times in a row (damping x10 each) ends it.
REFINE_RELATIVE_TOLERANCE = 1e-7
STEP_TOLERANCE = 1e-12
REFINE_MAX_ITERATIONS = 50
REFINE_FULL_SET_MAX_ITERATIONS = 20
REFINE_INITIAL_DAMPING = 1e-6
REFINE_MAX_REJECTIONS = 6
# Refinement queries reuse each point's candidate triangles while it moves by less than this
# fraction of the median triangle radius (in the mesh frame); see CachedQuery.
CACHE_MARGIN_FACTOR = 0.05
# The refinement first converges on an evenly spread subset of at most this many scan points
# (cheap iterations), then polishes on every point; None or 0 means every point from the start.
DEFAULT_FIT_POINTS = 20_000
# Below this distance a point counts as lying on the surface: its residual direction is then the
# face normal rather than the (undefined) direction to the closest point.
ON_SURFACE_DISTANCE = 1e-12


def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot products of two `[M, 3]` arrays, `[M]`."""
    return np.einsum("ij,ij->i", a, b)


def closest_points_on_triangles(points: np.ndarray, a: np.ndarray, b: np.ndarray,
                                c: np.ndarray) -> np.ndarray:
    """Exact closest points on triangles (a, b, c), one triangle per point.

    The closest point lies in one of seven Voronoi regions of the triangle (three corners, three
    edges, the interior); the region follows from signs of dot products (see `_barycentric`). A
    degenerate triangle (collinear or coincident corners) is the segment between its two farthest
    corners.

    Args:
      points, a, b, c: `[M, 3] float64`.
    Returns:
      `[M, 3] float64` closest points.
    """
    points = np.asarray(points, np.float64)
    a = np.asarray(a, np.float64)
    packed = _pack_triangles(a, np.asarray(b, np.float64), np.asarray(c, np.float64))
    v, w, _ = _barycentric(np.ascontiguousarray(points.T), packed)
    return a + v[:, None] * packed[3:6].T + w[:, None] * packed[6:9].T


# Rows of the packed per-triangle table `[PACKED_ROWS, F]`: corner A, edge AB, edge AC, |AB|^2,
# |AC|^2, AB.AC, and 1.0 for a degenerate triangle. Rows (not columns) so that gathering a set
# of triangles gives contiguous 1-D arrays, which NumPy processes several times faster.
_A, _AB, _AC, _AB2, _AC2, _ABAC, _DEGENERATE = 0, 3, 6, 9, 10, 11, 12
PACKED_ROWS = 13


def _pack_triangles(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """`[M, 3]` corners -> `[PACKED_ROWS, M] float64` table (see the row constants above)."""
    ab = b - a
    ac = c - a
    packed = np.empty((PACKED_ROWS, len(a)))
    packed[_A:_A + 3] = a.T
    packed[_AB:_AB + 3] = ab.T
    packed[_AC:_AC + 3] = ac.T
    packed[_AB2] = _rowdot(ab, ab)
    packed[_AC2] = _rowdot(ac, ac)
    packed[_ABAC] = _rowdot(ab, ac)
    bc = ac - ab
    longest2 = np.maximum(np.maximum(packed[_AB2], packed[_AC2]), _rowdot(bc, bc))
    twice_area = np.linalg.norm(np.cross(ab, ac), axis=1)
    packed[_DEGENERATE] = twice_area <= DEGENERATE_AREA_RATIO * longest2
    return packed


def _barycentric(p: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closest points as a + v AB + w AC, and squared distances, for point-triangle pairs.

    Args:
      p: `[3, M]` points (rows x, y, z); g: `[PACKED_ROWS, M]` their triangles.
    Returns:
      v, w, squared distance, each `[M] float64`.
    """
    px, py, pz = p
    apx, apy, apz = px - g[0], py - g[1], pz - g[2]
    bx, by, bz, cx, cy, cz = g[_AB], g[_AB + 1], g[_AB + 2], g[_AC], g[_AC + 1], g[_AC + 2]
    d1 = bx * apx + by * apy + bz * apz   # AB.AP
    d2 = cx * apx + cy * apy + cz * apz   # AC.AP
    d3 = d1 - g[_AB2]                     # AB.BP, as BP = AP - AB
    d4 = d2 - g[_ABAC]                    # AC.BP
    d5 = d1 - g[_ABAC]                    # AB.CP, as CP = AP - AC
    d6 = d2 - g[_AC2]                     # AC.CP
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
    degenerate = np.flatnonzero(g[_DEGENERATE])
    if degenerate.size:
        v[degenerate], w[degenerate] = _degenerate_barycentric(p[:, degenerate], g[:, degenerate])
    ex = apx - v * bx - w * cx
    ey = apy - v * by - w * cy
    ez = apz - v * bz - w * cz
    return v, w, ex * ex + ey * ey + ez * ez


def _degenerate_barycentric(p: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(v, w) of the closest points on degenerate triangles: on the longest of their edges."""
    a = g[_A:_A + 3].T
    ab = g[_AB:_AB + 3].T
    ac = g[_AC:_AC + 3].T
    points = p.T
    starts = np.stack([a, a, a + ab], axis=1)  # edges AB, AC, BC
    ends = np.stack([a + ab, a + ac, a + ac], axis=1)
    longest = np.argmax(np.linalg.norm(ends - starts, axis=2), axis=1)
    rows = np.arange(len(points))
    start, end = starts[rows, longest], ends[rows, longest]
    direction = end - start
    length2 = _rowdot(direction, direction)
    t = np.clip(_rowdot(points - start, direction) / np.where(length2 > 0, length2, 1.0), 0.0, 1.0)
    t = np.where(length2 > 0, t, 0.0)
    v = np.select([longest == 0, longest == 1], [t, np.zeros_like(t)], 1.0 - t)
    w = np.select([longest == 0, longest == 1], [np.zeros_like(t), t], t)
    return v, w


def point_triangle_distances(points: np.ndarray, a: np.ndarray, b: np.ndarray,
                             c: np.ndarray) -> np.ndarray:
    """Exact distances from points to triangles, one triangle per point. All `[M, 3]`; returns `[M]`."""
    return np.linalg.norm(np.asarray(points, np.float64) - closest_points_on_triangles(points, a, b, c),
                          axis=1)


def brute_force_distances(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray,
                          chunk_pairs: int = 1_000_000) -> np.ndarray:
    """Reference: distance from every point to every triangle, minimum per point (no index).

    Args:
      points: `[N, 3]`; vertices: `[V, 3]`; faces: `[F, 3]` int.
      chunk_pairs: point-triangle pairs evaluated at once (bounds memory).
    Returns:
      `[N] float64` unsigned distances.
    """
    points = np.asarray(points, np.float64)
    tri = np.asarray(vertices, np.float64)[np.asarray(faces)]
    packed = _pack_triangles(tri[:, 0], tri[:, 1], tri[:, 2])
    num_faces = packed.shape[1]
    per_chunk = max(1, chunk_pairs // max(num_faces, 1))
    out = np.empty(len(points))
    for start in range(0, len(points), per_chunk):
        chunk = points[start:start + per_chunk]
        p = np.repeat(chunk.T, num_faces, axis=1)
        g = np.tile(packed, (1, len(chunk)))
        _, _, d2 = _barycentric(p, g)
        out[start:start + len(chunk)] = np.sqrt(d2.reshape(len(chunk), num_faces).min(axis=1))
    return out


@dataclasses.dataclass(frozen=True)
class SurfaceQuery:
    """Closest surface points of a query.

    Attributes:
      distances: `[N] float64` unsigned point-to-surface distances.
      closest: `[N, 3] float64` the closest points on the surface.
      faces: `[N] int64` index of the triangle holding each closest point.
    """

    distances: np.ndarray
    closest: np.ndarray
    faces: np.ndarray


def _subdivision_centroids(m: int) -> np.ndarray:
    """`[m*m, 2]` (v, w) barycentric centroids of the m x m similar sub-triangles of a triangle."""
    up = [((3 * i + 1) / (3 * m), (3 * j + 1) / (3 * m)) for i in range(m) for j in range(m - i)]
    down = [((3 * i + 2) / (3 * m), (3 * j + 2) / (3 * m)) for i in range(m - 1) for j in range(m - 1 - i)]
    return np.array(up + down, np.float64).reshape(-1, 2)


class MeshSurface:
    """A triangle mesh with an exact point-to-surface query behind a k-d tree.

    Index: one or more samples per triangle (its centroid, or the centroids of m x m similar
    sub-triangles for large triangles), each with a radius r_s such that every point of the
    sample's piece of triangle lies within r_s of it. So a triangle t is no closer to a point p
    than |p - s| - r_s for each of its samples s.

    Exactness: the exact distance to the triangle of the nearest sample gives an upper bound U;
    every triangle with a sample whose lower bound is <= U is a candidate and is measured
    exactly. Candidates come from the k nearest samples; a point whose k-th sample could still
    hide a closer triangle (|p - s_k| - max r_s <= U) asks for more neighbours, until no
    triangle outside the examined set can beat U. Degenerate triangles are handled by the exact
    kernel.

    Args:
      vertices: `[V, 3]` float; faces: `[F, 3]` int indices into vertices.
      neighbours: samples examined per point in the first round.
    """

    def __init__(self, vertices: np.ndarray, faces: np.ndarray,
                 neighbours: int = DEFAULT_NEIGHBOURS) -> None:
        vertices = np.asarray(vertices, np.float64)
        faces = np.asarray(faces, np.int64)
        if vertices.ndim != 2 or vertices.shape[1] != 3 or len(vertices) == 0:
            raise ValueError(f"vertices must be [V, 3] with V > 0, got {vertices.shape}")
        if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
            raise ValueError(f"faces must be [F, 3] with F > 0, got {faces.shape}")
        if faces.min() < 0 or faces.max() >= len(vertices):
            raise ValueError("face indices out of range")
        if not np.all(np.isfinite(vertices)):
            raise ValueError("vertices contain NaN or infinity")
        self.vertices = vertices
        self.faces = faces
        self.neighbours = max(1, int(neighbours))
        tri = vertices[faces]
        self._packed = _pack_triangles(tri[:, 0], tri[:, 1], tri[:, 2])
        normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        norms = np.linalg.norm(normals, axis=1, keepdims=True)
        self.face_normals = np.divide(normals, norms, out=np.zeros_like(normals), where=norms > 0)
        self._absolute_slack = BOUND_EXTENT_SLACK * max(float(np.abs(vertices).max()), 1e-300)
        self._build_samples(tri)

    def _build_samples(self, tri: np.ndarray) -> None:
        centroids = tri.mean(axis=1)
        radii = np.linalg.norm(tri - centroids[:, None, :], axis=2).max(axis=1)
        self.median_radius = float(np.median(radii))
        target = SAMPLE_RADIUS_FACTOR * self.median_radius
        if target > 0.0:
            split = np.clip(np.ceil(radii / target - 1e-9), 1, MAX_SUBDIVISION).astype(np.int64)
        else:
            split = np.ones(len(radii), np.int64)
        points, owners, sample_radii = [centroids[split == 1]], [np.flatnonzero(split == 1)], [radii[split == 1]]
        for m in np.unique(split[split > 1]):
            members = np.flatnonzero(split == m)
            vw = _subdivision_centroids(int(m))                                   # [m^2, 2]
            a, ab, ac = tri[members, 0], tri[members, 1] - tri[members, 0], tri[members, 2] - tri[members, 0]
            samples = (a[:, None] + vw[None, :, :1] * ab[:, None] + vw[None, :, 1:] * ac[:, None])
            points.append(samples.reshape(-1, 3))
            owners.append(np.repeat(members, len(vw)))
            # A sub-triangle is the triangle scaled by 1/m: its radius about its centroid is r/m.
            sample_radii.append(np.repeat(radii[members] / m, len(vw)))
        self._sample_face = np.concatenate(owners)
        self._sample_radius = np.concatenate(sample_radii)
        self._max_sample_radius = float(self._sample_radius.max())
        self._tree = cKDTree(np.concatenate(points))

    def query(self, points: np.ndarray) -> SurfaceQuery:
        """Exact closest surface points.

        Args:
          points: `[N, 3]` float.
        Returns:
          SurfaceQuery with `[N]` distances, `[N, 3]` closest points and `[N]` triangle indices.
        """
        points = np.asarray(points, np.float64)
        if points.ndim != 2 or points.shape[1] != 3:
            raise ValueError(f"points must be [N, 3], got {points.shape}")
        n = len(points)
        if n == 0:
            return SurfaceQuery(np.zeros(0), np.zeros((0, 3)), np.zeros(0, np.int64))
        points_t = np.ascontiguousarray(points.T)  # [3, N]
        best_d2 = np.full(n, np.inf)
        best_face = np.full(n, -1, np.int64)
        self._search(points, points_t, best_d2, best_face)
        return self._answer(points, points_t, best_face)

    def _answer(self, points: np.ndarray, points_t: np.ndarray, faces: np.ndarray) -> SurfaceQuery:
        """SurfaceQuery of points `[N, 3]` (and their transpose) on their closest triangles `[N]`."""
        g = np.take(self._packed, faces, axis=1)
        v, w, _ = _barycentric(points_t, g)
        closest = (g[_A:_A + 3] + v * g[_AB:_AB + 3] + w * g[_AC:_AC + 3]).T
        distances = np.linalg.norm(points - closest, axis=1)
        return SurfaceQuery(distances, closest, faces)

    def _pair_d2(self, points_t: np.ndarray, rows: np.ndarray, faces: np.ndarray) -> np.ndarray:
        """`[M]` squared distances from points `points_t[:, rows]` to triangles `faces`."""
        return _barycentric(np.take(points_t, rows, axis=1), np.take(self._packed, faces, axis=1))[2]

    def _search(self, points: np.ndarray, points_t: np.ndarray, best_d2: np.ndarray,
                best_face: np.ndarray, extra: float = 0.0,
                collect: list[tuple[np.ndarray, np.ndarray]] | None = None) -> None:
        """Fill best_d2 / best_face (in place) with the closest triangle of every point.

        With `extra` > 0, every triangle whose lower bound is within U + extra is examined, and
        with `collect` the (point row, triangle) pairs examined are appended to it: a candidate
        set that stays exact while the points move by at most extra / 2 (see CachedQuery).
        """
        size = self._tree.n
        rows = np.arange(len(points))
        k_done, k = 0, min(self.neighbours, size)
        while rows.size:
            sample_d, sample = self._tree.query(points[rows], k=k, workers=-1)
            sample_d = sample_d.reshape(len(rows), k)[:, k_done:]
            sample = sample.reshape(len(rows), k)[:, k_done:]
            faces = self._sample_face[sample]  # [R, k - k_done]
            if k_done == 0:
                # The triangle of the nearest sample first: it usually sets a tight bound.
                d2 = self._pair_d2(points_t, rows, faces[:, 0])
                best_d2[rows] = d2
                best_face[rows] = faces[:, 0]
                if collect is not None:
                    collect.append((rows, faces[:, 0]))
            bound = self._bound(best_d2[rows]) + extra
            candidate = sample_d - self._sample_radius[sample] <= bound[:, None]
            if k_done == 0:
                candidate[:, 0] = False  # measured above
            r_idx, c_idx = np.nonzero(candidate)
            if r_idx.size:
                if collect is not None:
                    collect.append((rows[r_idx], faces[r_idx, c_idx]))
                d2 = self._pair_d2(points_t, rows[r_idx], faces[r_idx, c_idx])
                table = np.full(candidate.shape, np.inf)
                table[r_idx, c_idx] = d2
                col = np.argmin(table, axis=1)
                new_d2 = table[np.arange(len(rows)), col]
                better = new_d2 < best_d2[rows]
                best_d2[rows[better]] = new_d2[better]
                best_face[rows[better]] = faces[better, col[better]]
            if k >= size:
                break
            # Complete when no sample beyond the k-th can carry a triangle within the bound.
            pending = sample_d[:, -1] - self._max_sample_radius <= self._bound(best_d2[rows]) + extra
            rows = rows[pending]
            k_done, k = k, min(3 * k, size)

    def _bound(self, best_d2: np.ndarray) -> np.ndarray:
        return np.sqrt(best_d2) * (1.0 + BOUND_RELATIVE_SLACK) + self._absolute_slack

    def distances(self, points: np.ndarray) -> np.ndarray:
        """`[N]` exact unsigned distances from `[N, 3]` points to the surface."""
        return self.query(points).distances


class CachedQuery:
    """Exact closest-triangle queries of a point set that moves a little between calls.

    The first call (and any call after some point moved more than `margin` from where the sets
    were built) runs the full search and keeps, per point p0, every triangle t whose lower bound
    is within U(p0) + 2 margin. For p within margin of p0 that set holds the closest triangle:
    a triangle left out has d(p, t) >= lb_t(p0) - margin > U(p0) + margin >= d(p, t*(p0)). Later
    calls then only measure the kept pairs: no tree search. The refinement's iterations move the
    points by far less than a triangle, so most calls take this path.

    Args:
      surface: the mesh.
      margin: displacement allowed before a rebuild, in the mesh's unit.
    """

    def __init__(self, surface: MeshSurface, margin: float) -> None:
        self.surface = surface
        self.margin = float(margin)
        self.rebuilds = 0
        self._anchor: np.ndarray | None = None
        self._pair_rows = np.zeros(0, np.int64)
        self._pair_faces = np.zeros(0, np.int64)
        self._starts = np.zeros(1, np.int64)

    def query(self, points: np.ndarray) -> SurfaceQuery:
        """Same answer as `surface.query(points)`; points `[N, 3]`."""
        points = np.asarray(points, np.float64)
        points_t = np.ascontiguousarray(points.T)
        if self._anchor is None or len(points) != len(self._anchor) or len(points) == 0 or \
                _rowdot(points - self._anchor, points - self._anchor).max() > self.margin ** 2:
            return self._rebuild(points, points_t)
        d2 = self.surface._pair_d2(points_t, self._pair_rows, self._pair_faces)
        row_min = np.minimum.reduceat(d2, self._starts[:-1])
        # The first pair of each row reaching its row's minimum.
        at_min = np.flatnonzero(d2 == np.repeat(row_min, np.diff(self._starts)))
        first = np.ones(len(at_min), bool)
        first[1:] = self._pair_rows[at_min[1:]] != self._pair_rows[at_min[:-1]]
        best_face = self._pair_faces[at_min[first]]
        return self.surface._answer(points, points_t, best_face)

    def _rebuild(self, points: np.ndarray, points_t: np.ndarray) -> SurfaceQuery:
        n = len(points)
        if n == 0:
            return self.surface.query(points)
        best_d2 = np.full(n, np.inf)
        best_face = np.full(n, -1, np.int64)
        pairs: list[tuple[np.ndarray, np.ndarray]] = []
        self.surface._search(points, points_t, best_d2, best_face, extra=2.0 * self.margin,
                             collect=pairs)
        rows = np.concatenate([r for r, _ in pairs])
        faces = np.concatenate([f for _, f in pairs])
        order = np.argsort(rows, kind="stable")
        self._pair_rows, self._pair_faces = rows[order], faces[order]
        self._starts = np.searchsorted(self._pair_rows, np.arange(n + 1))
        self._anchor = points.copy()
        self.rebuilds += 1
        return self.surface._answer(points, points_t, best_face)


# ----------------------------------------------------------------------------------------------
# Similarity transforms


@dataclasses.dataclass(frozen=True)
class Similarity:
    """x -> scale * rotation @ x + translation.

    Attributes:
      scale: positive float.
      rotation: `[3, 3] float64`, orthonormal, det +1 (unless a reflection was allowed).
      translation: `[3] float64`.
    """

    scale: float
    rotation: np.ndarray
    translation: np.ndarray

    @staticmethod
    def identity() -> "Similarity":
        return Similarity(1.0, np.eye(3), np.zeros(3))

    def apply(self, points: np.ndarray) -> np.ndarray:
        """`[N, 3]` -> `[N, 3]`."""
        return self.scale * np.asarray(points, np.float64) @ self.rotation.T + self.translation

    def inverse_apply(self, points: np.ndarray) -> np.ndarray:
        """The inverse map, `[N, 3]` -> `[N, 3]`."""
        return (np.asarray(points, np.float64) - self.translation) @ self.rotation / self.scale

    def then(self, outer: "Similarity") -> "Similarity":
        """The similarity applying self first, then `outer`."""
        return Similarity(outer.scale * self.scale, outer.rotation @ self.rotation,
                          outer.scale * outer.rotation @ self.translation + outer.translation)

    def as_dict(self) -> dict:
        return {"scale": float(self.scale), "rotation": self.rotation.tolist(),
                "translation": self.translation.tolist()}


def fit_similarity(source: np.ndarray, target: np.ndarray, weights: np.ndarray | None = None,
                   with_scale: bool = True, allow_reflection: bool = False) -> Similarity:
    """Least-squares similarity mapping source onto target (Umeyama 1991).

    Minimises sum_i w_i |s R source_i + t - target_i|^2.

    Args:
      source, target: `[N, 3]` corresponding points, N >= 3 and not all collinear for a unique
        rotation.
      weights: optional `[N]` non-negative weights.
      with_scale: fit the scale (else 1).
      allow_reflection: allow det R = -1 (a mirrored fit); off by default, since a mirrored face
        is a wrong face, not an alignment.
    Returns:
      The Similarity.
    """
    source = np.asarray(source, np.float64)
    target = np.asarray(target, np.float64)
    if source.shape != target.shape or source.ndim != 2 or source.shape[1] != 3:
        raise ValueError(f"source and target must both be [N, 3], got {source.shape}, {target.shape}")
    w = np.ones(len(source)) if weights is None else np.asarray(weights, np.float64)
    if w.shape != (len(source),) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weights must be [N], non-negative, not all zero")
    w = w / w.sum()
    mu_s = w @ source
    mu_t = w @ target
    xs = source - mu_s
    xt = target - mu_t
    covariance = (xt * w[:, None]).T @ xs  # [3, 3], target x source
    u, sigma, vt = np.linalg.svd(covariance)
    signs = np.ones(3)
    if not allow_reflection and np.linalg.det(u) * np.linalg.det(vt) < 0:
        signs[2] = -1.0
    rotation = (u * signs) @ vt
    variance = float(w @ np.einsum("ij,ij->i", xs, xs))
    if variance <= 0.0:
        raise ValueError("source points coincide: the similarity is undefined")
    scale = float(sigma @ signs) / variance if with_scale else 1.0
    translation = mu_t - scale * rotation @ mu_s
    return Similarity(scale, rotation, translation)


def rotation_from_axis_angle(axis_angle: np.ndarray) -> np.ndarray:
    """Rodrigues' formula: `[3]` axis-angle (radians) -> `[3, 3]` rotation."""
    axis_angle = np.asarray(axis_angle, np.float64)
    angle = float(np.linalg.norm(axis_angle))
    if angle < 1e-15:
        return np.eye(3)
    k = axis_angle / angle
    kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + math.sin(angle) * kx + (1.0 - math.cos(angle)) * kx @ kx


# ----------------------------------------------------------------------------------------------
# Refinement


@dataclasses.dataclass(frozen=True)
class Refinement:
    """Result of `refine_similarity`.

    Attributes:
      transform: the refined similarity (mesh frame -> scan frame), applied after the initial one.
      distances: `[N] float64` scan-to-mesh distances of every scan point at `transform`.
      iterations: accepted steps (subset phase + full-set phase).
      initial_rms: root mean square distance at the start (over the subset when one is used).
      final_rms: root mean square distance over every scan point at `transform`.
    """

    transform: Similarity
    distances: np.ndarray
    iterations: int
    initial_rms: float
    final_rms: float


@dataclasses.dataclass
class _State:
    transform: Similarity
    energy: float           # sum of squared distances
    distances: np.ndarray   # [M]
    closest: np.ndarray     # [M, 3] in the scan frame
    directions: np.ndarray  # [M, 3] unit: d(distance)/d(closest point) = -direction


def _evaluate(surface: MeshSurface, cache: CachedQuery, scan: np.ndarray,
              transform: Similarity) -> _State:
    # The index holds the untransformed mesh: query the scan mapped back, then scale the
    # distances (a similarity scales every distance by s), so the index is built once.
    query = cache.query(transform.inverse_apply(scan))
    distances = transform.scale * query.distances
    closest = transform.apply(query.closest)
    offsets = scan - closest
    on_surface = distances <= ON_SURFACE_DISTANCE
    safe = np.where(on_surface, 1.0, distances)
    directions = offsets / safe[:, None]
    if np.any(on_surface):
        directions[on_surface] = surface.face_normals[query.faces[on_surface]] @ transform.rotation.T
    return _State(transform, float(distances @ distances), distances, closest, directions)


def _levenberg_marquardt(surface: MeshSurface, cache: CachedQuery, scan: np.ndarray,
                         state: _State, max_iterations: int) -> tuple[_State, int]:
    """Minimise the sum of squared scan-to-mesh distances over a similarity; returns (state, steps).

    Gauss-Newton on the exact distance residuals: a small similarity about the centre o moves a
    mesh point c_i by dt + w x (c_i - o) + sigma (c_i - o), which changes the distance by
    -u_i . (that move), u_i the unit direction from c_i to the scan point (point-to-plane inside a
    face; towards the edge or corner otherwise). Curvature of the distance at edges and corners
    is left out on purpose: it holds only within thin wedges, and adding it (point-to-point
    terms) measured slower here, as for classic ICP.
    """
    damping = REFINE_INITIAL_DAMPING
    steps = 0
    for _ in range(max_iterations):
        if state.energy <= 0.0:
            break
        centre = state.closest.mean(axis=0)
        rel = state.closest - centre
        size = float(np.sqrt(_rowdot(rel, rel).max())) or 1.0
        u = state.directions
        jac = np.concatenate([u, np.cross(rel, u), _rowdot(u, rel)[:, None]], axis=1)  # [M, 7]
        normal = jac.T @ jac
        gradient = jac.T @ state.distances
        diag = np.diag(np.diag(normal)) + 1e-12 * np.trace(normal) * np.eye(7)
        accepted = None
        for _ in range(REFINE_MAX_REJECTIONS + 1):
            delta = np.linalg.lstsq(normal + damping * diag, gradient, rcond=None)[0]
            predicted = 2.0 * gradient @ delta - delta @ normal @ delta  # E - |d - J delta|^2
            moved = np.linalg.norm(delta[:3]) + (np.linalg.norm(delta[3:6]) + abs(delta[6])) * size
            if predicted <= REFINE_RELATIVE_TOLERANCE * state.energy or moved <= STEP_TOLERANCE * size:
                return state, steps  # converged: no step can help at working precision
            rotation = rotation_from_axis_angle(delta[3:6])
            scale = math.exp(float(delta[6]))
            # y -> scale R (y - o) + o + dt, applied after the current transform.
            step = Similarity(scale, rotation, centre + delta[:3] - scale * rotation @ centre)
            candidate = _evaluate(surface, cache, scan, state.transform.then(step))
            if candidate.energy < state.energy:
                accepted = candidate
                damping = max(damping / 10.0, 1e-15)
                break
            if candidate.energy - state.energy <= REFINE_RELATIVE_TOLERANCE * state.energy:
                return state, steps  # flat at working precision: converged
            damping *= 10.0
        if accepted is None:
            break
        steps += 1
        improvement = state.energy - accepted.energy
        state = accepted
        if improvement <= REFINE_RELATIVE_TOLERANCE * (state.energy + improvement):
            break
    return state, steps


def refine_similarity(surface: MeshSurface, scan: np.ndarray,
                      fit_points: int | None = DEFAULT_FIT_POINTS,
                      max_iterations: int = REFINE_MAX_ITERATIONS) -> Refinement:
    """Similarity (rotation, translation, scale) moving the mesh to minimise scan-to-mesh distance.

    Minimises sum_i d(scan_i, T(mesh))^2 over T, starting from the identity (the caller has
    already aligned the mesh by landmarks), with Levenberg-Marquardt steps on the exact
    distances. With more scan points than `fit_points`, it first converges on an evenly strided
    subset and then continues on every point, so it stops at the optimum of the full objective
    (within REFINE_RELATIVE_TOLERANCE), not of the subset's.

    Args:
      surface: the (landmark-aligned) mesh.
      scan: `[N, 3]` scan points, same unit as the mesh.
      fit_points: subset size for the first phase; None or 0 uses every point throughout.
      max_iterations: accepted steps allowed in the first phase.
    Returns:
      Refinement, whose distances are measured from every scan point.
    """
    scan = np.asarray(scan, np.float64)
    if len(scan) == 0:
        raise ValueError("no scan points to align to")
    identity = Similarity.identity()
    margin = CACHE_MARGIN_FACTOR * surface.median_radius
    full = CachedQuery(surface, margin)
    steps = 0
    if fit_points and len(scan) > fit_points:
        stride = len(scan) / fit_points
        subset = scan[(np.arange(fit_points) * stride).astype(np.int64)]
        partial = CachedQuery(surface, margin)
        start = _evaluate(surface, partial, subset, identity)
        sub_state, steps = _levenberg_marquardt(surface, partial, subset, start, max_iterations)
        state = _evaluate(surface, full, scan, sub_state.transform)
        state, more = _levenberg_marquardt(surface, full, scan, state, REFINE_FULL_SET_MAX_ITERATIONS)
    else:
        start = _evaluate(surface, full, scan, identity)
        state, more = _levenberg_marquardt(surface, full, scan, start, max_iterations)
    return Refinement(transform=state.transform, distances=state.distances, iterations=steps + more,
                      initial_rms=math.sqrt(start.energy / len(start.distances)),
                      final_rms=math.sqrt(state.energy / len(scan)))
