"""Triangle kernels of the scan-to-mesh metric: exact point-to-triangle distances, one triangle
per point or every triangle (the brute-force reference).

The closest-point kernel itself is `flame.geometry` (shared with the open head generator): it
works on triangles packed into a `[PACKED_ROWS, F]` table (`pack_triangles`).
"""
from __future__ import annotations

import numpy as np

from flame.geometry import closest_on_packed, closest_points_on_triangles, pack_triangles


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
    packed = pack_triangles(tri[:, 0], tri[:, 1], tri[:, 2])
    num_faces = packed.shape[1]
    per_chunk = max(1, chunk_pairs // max(num_faces, 1))
    out = np.empty(len(points))
    for start in range(0, len(points), per_chunk):
        chunk = points[start:start + per_chunk]
        p = np.repeat(chunk.T, num_faces, axis=1)
        g = np.tile(packed, (1, len(chunk)))
        _, _, d2 = closest_on_packed(p, g)
        out[start:start + len(chunk)] = np.sqrt(d2.reshape(len(chunk), num_faces).min(axis=1))
    return out

