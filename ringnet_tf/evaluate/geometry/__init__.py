"""Geometry behind the scan-to-mesh metric: exact point-to-triangle distances behind a spatial index,
similarity Procrustes (Umeyama, with scale) and the similarity refinement that minimises the
scan-to-mesh distance.

Modules: `triangles` (point-to-triangle kernels; the closest-point kernel is `flame.geometry`),
`surface` (the k-d tree index `MeshSurface` and its `CachedQuery`), `similarity` (`Similarity`,
`fit_similarity`), `alignment` (`refine_similarity`). Every name is re-exported here.

Conventions: points are rows, `[N, 3] float64`; a similarity maps x to `s R x + t`. Distances are
unsigned Euclidean distances in the unit of the points they are measured between.
"""
from __future__ import annotations

from flame.geometry import (DEGENERATE_AREA_RATIO, PACKED_ROWS, closest_points_on_triangles,
                            rotation_from_axis_angle)
from ringnet_tf.evaluate.geometry.alignment import (CACHE_MARGIN_FACTOR, DEFAULT_FIT_POINTS,
                                                    ON_SURFACE_DISTANCE,
                                                    REFINE_FULL_SET_MAX_ITERATIONS,
                                                    REFINE_INITIAL_DAMPING, REFINE_MAX_ITERATIONS,
                                                    REFINE_MAX_REJECTIONS,
                                                    REFINE_RELATIVE_TOLERANCE, STEP_TOLERANCE,
                                                    Refinement, refine_similarity)
from ringnet_tf.evaluate.geometry.similarity import Similarity, fit_similarity
from ringnet_tf.evaluate.geometry.surface import (BOUND_EXTENT_SLACK, BOUND_RELATIVE_SLACK,
                                                  DEFAULT_NEIGHBOURS, MAX_SUBDIVISION,
                                                  SAMPLE_RADIUS_FACTOR, CachedQuery, MeshSurface,
                                                  SurfaceQuery)
from ringnet_tf.evaluate.geometry.triangles import brute_force_distances, point_triangle_distances

__all__ = [
    "BOUND_EXTENT_SLACK", "BOUND_RELATIVE_SLACK", "CACHE_MARGIN_FACTOR", "DEFAULT_FIT_POINTS",
    "DEFAULT_NEIGHBOURS", "DEGENERATE_AREA_RATIO", "MAX_SUBDIVISION", "ON_SURFACE_DISTANCE",
    "PACKED_ROWS", "REFINE_FULL_SET_MAX_ITERATIONS", "REFINE_INITIAL_DAMPING",
    "REFINE_MAX_ITERATIONS", "REFINE_MAX_REJECTIONS", "REFINE_RELATIVE_TOLERANCE",
    "SAMPLE_RADIUS_FACTOR", "STEP_TOLERANCE", "CachedQuery", "MeshSurface", "Refinement",
    "Similarity", "SurfaceQuery", "brute_force_distances", "closest_points_on_triangles",
    "fit_similarity", "point_triangle_distances", "refine_similarity", "rotation_from_axis_angle",
]
