"""Alignment: the similarity refinement that minimises the scan-to-mesh distance.

Levenberg-Marquardt steps on the exact distances, from the landmark fit
(`similarity.fit_similarity`) on.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from flame.geometry import rotation_from_axis_angle, rowdot
from ringnet_tf.evaluate.geometry.similarity import Similarity
from ringnet_tf.evaluate.geometry.surface import CachedQuery, MeshSurface

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
        size = float(np.sqrt(rowdot(rel, rel).max())) or 1.0
        u = state.directions
        jac = np.concatenate([u, np.cross(rel, u), rowdot(u, rel)[:, None]], axis=1)  # [M, 7]
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
