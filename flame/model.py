"""The FLAME model as plain NumPy arrays: one dataclass, its fingerprint, and its writer.

Reading FLAME's files (with validation and without chumpy) lives in `flame.io`; the TF maths lives
in `flame.lbs` and `flame.layer`. Letters used in shapes: V vertices, F faces, J = 5 joints,
S identity components, E expression components.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import scipy.sparse

from flame import constants as C
from flame.fileutil import atomic_write

# File names of FLAME's official releases, as written by `save_flame_files`.
MODEL_FILENAME = "generic_model.pkl"
STATIC_EMBEDDING_FILENAME = "flame_static_embedding.pkl"
DYNAMIC_EMBEDDING_FILENAME = "flame_dynamic_embedding.npy"

# The fingerprint rounds to this many decimals (1e-6 m, 1e-6 weight) so that a last-bit
# difference between BLAS builds does not change a model's identity.
_FINGERPRINT_DECIMALS = 6


@dataclasses.dataclass(frozen=True, eq=False)
class FlameModel:
    """A FLAME-topology head model: everything the forward pass and the landmarks need.

    Attributes:
      v_template: [V, 3] float64, the mean head in metres (y up, z out of the face).
      faces: [F, 3] int64 vertex indices.
      shapedirs: [V, 3, S] float64 identity blend shapes (S = 300 in FLAME's files).
      exprdirs: [V, 3, E] float64 expression blend shapes (E = 100 in FLAME's files).
      posedirs: [V, 3, 36] float64 pose correctives, driven by (R - I) of joints 1..4.
      j_regressor: [J, V] float64 dense joint regressor.
      weights: [V, J] float64 skinning weights, rows sum to 1.
      parents: [J] int64, -1 for the root.
      static_lmk_faces: [51] int64 face indices of the static landmarks.
      static_lmk_bary: [51, 3] float64 barycentric coordinates in those faces.
      dynamic_lmk_faces: [79, 17] int64 contour faces, one row per whole degree of yaw.
      dynamic_lmk_bary: [79, 17, 3] float64 contour barycentric coordinates.
      source: where it was loaded from (for messages), or a description.
    """

    v_template: np.ndarray
    faces: np.ndarray
    shapedirs: np.ndarray
    exprdirs: np.ndarray
    posedirs: np.ndarray
    j_regressor: np.ndarray
    weights: np.ndarray
    parents: np.ndarray
    static_lmk_faces: np.ndarray
    static_lmk_bary: np.ndarray
    dynamic_lmk_faces: np.ndarray
    dynamic_lmk_bary: np.ndarray
    source: str = "<memory>"

    @property
    def num_vertices(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    @property
    def num_shape(self) -> int:
        return int(self.shapedirs.shape[-1])

    @property
    def num_expression(self) -> int:
        return int(self.exprdirs.shape[-1])

    def fingerprint(self) -> str:
        """A short hex digest of the arrays (not `source`); equal models give equal digests."""
        h = hashlib.sha256()
        for field in dataclasses.fields(self):
            if field.name == "source":
                continue
            arr = np.asarray(getattr(self, field.name))
            if np.issubdtype(arr.dtype, np.floating):
                # +0.0 turns -0.0 into 0.0 so that rounding noise around zero hashes alike.
                arr = np.round(arr.astype(np.float64), _FINGERPRINT_DECIMALS) + 0.0
            else:
                arr = arr.astype(np.int64)
            h.update(field.name.encode())
            h.update(str(arr.shape).encode())
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()[:16]


def save_flame_files(model: FlameModel, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Writes `model` in exactly FLAME's file formats, readable by any FLAME consumer (smplx too).

    Writes `generic_model.pkl` (keys v_template, f, shapedirs [V,3,400], posedirs, J_regressor as
    scipy.sparse.csc_matrix, weights, kintree_table, J, bs_style, bs_type; pickle protocol 2),
    `flame_static_embedding.pkl` (lmk_face_idx, lmk_b_coords) and `flame_dynamic_embedding.npy`
    (a 0-d object array holding lmk_face_idx [79, 17] and lmk_b_coords [79, 17, 3]).

    Returns: the written paths by role ("model", "static", "dynamic").
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if model.num_shape != C.NUM_SHAPE_TOTAL or model.num_expression != C.NUM_EXPRESSION_TOTAL:
        raise ValueError(
            f"FLAME files hold {C.NUM_SHAPE_TOTAL} identity and {C.NUM_EXPRESSION_TOTAL} expression "
            f"components; got {model.num_shape} and {model.num_expression}")
    parents = np.asarray(model.parents, dtype=np.int64)
    # FLAME stores the root's parent as the largest uint32, as SMPL's files do.
    kintree = np.stack([np.where(parents < 0, 4294967295, parents), np.arange(len(parents))])
    model_dict = {
        "v_template": np.asarray(model.v_template, np.float64),
        "f": np.asarray(model.faces, np.uint32),
        "shapedirs": np.concatenate([model.shapedirs, model.exprdirs], axis=-1).astype(np.float64),
        "posedirs": np.asarray(model.posedirs, np.float64),
        "J_regressor": scipy.sparse.csc_matrix(np.asarray(model.j_regressor, np.float64)),
        "weights": np.asarray(model.weights, np.float64),
        "kintree_table": kintree.astype(np.int64),
        "J": np.asarray(model.j_regressor @ model.v_template, np.float64),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }
    static = {
        "lmk_face_idx": np.asarray(model.static_lmk_faces, np.int64),
        "lmk_b_coords": np.asarray(model.static_lmk_bary, np.float64),
    }
    dynamic = np.empty((), dtype=object)
    dynamic[()] = {
        "lmk_face_idx": np.asarray(model.dynamic_lmk_faces, np.int64),
        "lmk_b_coords": np.asarray(model.dynamic_lmk_bary, np.float64),
    }
    paths = {
        "model": out / MODEL_FILENAME,
        "static": out / STATIC_EMBEDDING_FILENAME,
        "dynamic": out / DYNAMIC_EMBEDDING_FILENAME,
    }
    atomic_write(paths["model"], lambda f: pickle.dump(model_dict, f, protocol=2))
    atomic_write(paths["static"], lambda f: pickle.dump(static, f, protocol=2))
    atomic_write(paths["dynamic"], lambda f: np.save(f, dynamic, allow_pickle=True))
    return paths
