"""The surface index: exact closest points on a triangle mesh behind a k-d tree of triangle samples.

`MeshSurface` answers exact point-to-surface queries; `CachedQuery` answers them again for a point
set that moves a little between calls (the refinement's iterations) without a new tree search.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy.spatial import cKDTree

from flame.geometry import closest_on_packed, pack_triangles, packed_points, rowdot

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
        self._packed = pack_triangles(tri[:, 0], tri[:, 1], tri[:, 2])
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
        v, w, _ = closest_on_packed(points_t, g)
        closest = packed_points(g, v, w)
        distances = np.linalg.norm(points - closest, axis=1)
        return SurfaceQuery(distances, closest, faces)

    def _pair_d2(self, points_t: np.ndarray, rows: np.ndarray, faces: np.ndarray) -> np.ndarray:
        """`[M]` squared distances from points `points_t[:, rows]` to triangles `faces`."""
        return closest_on_packed(np.take(points_t, rows, axis=1), np.take(self._packed, faces, axis=1))[2]

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
                rowdot(points - self._anchor, points - self._anchor).max() > self.margin ** 2:
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

