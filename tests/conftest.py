"""Shared fixtures: small FLAME-format models built in memory, so tests need no licensed files."""
from __future__ import annotations

import numpy as np
import pytest

from flame import constants as C
from flame.model import FlameModel


def make_tiny_model(seed: int = 0, num_vertices: int = 64) -> FlameModel:
    """A small random model with FLAME's layout: 5 joints, 300 + 100 components, 51 + 79x17 landmarks.

    The geometry is meaningless (random points on a sphere, a fan of faces); it only has the right
    shapes, valid indices, skinning weights that sum to one and a regressor that averages vertices.
    """
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(num_vertices, 3))
    v = 0.1 * v / np.linalg.norm(v, axis=1, keepdims=True)
    num_faces = 2 * num_vertices
    faces = np.stack([rng.choice(num_vertices, 3, replace=False) for _ in range(num_faces)])
    weights = rng.random((num_vertices, C.NUM_JOINTS)) ** 4
    weights /= weights.sum(axis=1, keepdims=True)
    j_reg = rng.random((C.NUM_JOINTS, num_vertices))
    j_reg /= j_reg.sum(axis=1, keepdims=True)
    bary = rng.random((C.CONTOUR_NUM_ROWS, C.NUM_CONTOUR_LANDMARKS, 3)) + 0.1
    sbary = rng.random((C.NUM_STATIC_LANDMARKS, 3)) + 0.1
    return FlameModel(
        v_template=v,
        faces=faces.astype(np.int64),
        shapedirs=1e-3 * rng.normal(size=(num_vertices, 3, C.NUM_SHAPE_TOTAL)),
        exprdirs=1e-3 * rng.normal(size=(num_vertices, 3, C.NUM_EXPRESSION_TOTAL)),
        posedirs=1e-3 * rng.normal(size=(num_vertices, 3, C.NUM_POSE_FEATURES)),
        j_regressor=j_reg,
        weights=weights,
        parents=np.asarray(C.PARENTS, np.int64),
        static_lmk_faces=rng.integers(0, num_faces, C.NUM_STATIC_LANDMARKS).astype(np.int64),
        static_lmk_bary=sbary / sbary.sum(axis=1, keepdims=True),
        dynamic_lmk_faces=rng.integers(
            0, num_faces, (C.CONTOUR_NUM_ROWS, C.NUM_CONTOUR_LANDMARKS)).astype(np.int64),
        dynamic_lmk_bary=bary / bary.sum(axis=-1, keepdims=True),
        source=f"tiny model (seed {seed})",
    )


@pytest.fixture
def tiny_model() -> FlameModel:
    return make_tiny_model()
