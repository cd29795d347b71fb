"""Checks of FLAME's arrays: keys, shapes, dtypes, index ranges, rows summing to one, the tree.

Each check raises a `FlameFileError` naming the file and the key, and returns plain float64 /
int64 C-contiguous arrays. Letters: V vertices, J = 5 joints.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse

from flame import constants as C
from flame.io.errors import FlameFileError, _first_line

MODEL_KEYS: tuple[str, ...] = (
    "v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table")
_EMBEDDING_KEYS: tuple[str, ...] = ("lmk_face_idx", "lmk_b_coords")

# Skinning weights and barycentric coordinates sum to one per row: RingNet's static embedding
# does to 1e-16 (measured), a float32 copy of a file to ~1e-7; a wrong array misses by far more.
WEIGHT_SUM_TOLERANCE = 1e-4
BARY_SUM_TOLERANCE = 1e-4

# FLAME (like SMPL) stores the root's parent in kintree_table as the largest uint32.
_ROOT_PARENT_MARKERS = (-1, 2**32 - 1)

# Signatures of the body models that share FLAME's file layout, for a clear "wrong model" message.
_SMPL_VERTEX_COUNTS = (6890, 10475)  # SMPL and SMPL-H; SMPL-X
_SMPL_JOINT_COUNTS = (22, 24, 52, 55)  # SMPL-X body, SMPL, SMPL-H, SMPL-X
_MANO_VERTEX_COUNT = 778
_MANO_JOINT_COUNT = 16
_FLAME_VERTEX_COUNT = 5023  # only for messages: tests use smaller FLAME-layout models


def _shape_of(value: Any) -> tuple[int, ...] | None:
    """The shape of an array or sparse matrix; None for anything else (or a broken matrix)."""
    if isinstance(value, np.ndarray):
        return value.shape
    if scipy.sparse.issparse(value):
        try:
            return tuple(int(n) for n in value.shape)
        except (AttributeError, TypeError, ValueError):
            return None
    return None


def _numeric(path: Path, key: str, value: Any) -> np.ndarray:
    """`value` as a numeric ndarray (not yet cast), or a FlameFileError saying what it is."""
    if scipy.sparse.issparse(value):
        raise FlameFileError(path, f"{key} is a sparse matrix, expected a dense array")
    if not isinstance(value, np.ndarray):
        raise FlameFileError(path, f"{key} is a {type(value).__name__}, expected an array")
    if value.dtype.kind not in "biuf":
        raise FlameFileError(path, f"{key} has dtype {value.dtype}, expected numbers")
    return value


def _float_array(path: Path, key: str, value: Any, shape: tuple[int, ...]) -> np.ndarray:
    """A finite float64 C-contiguous array of exactly `shape` (-1 matches any size)."""
    arr = _numeric(path, key, value)
    _check_shape(path, key, arr.shape, shape)
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if not np.isfinite(arr).all():
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise FlameFileError(path, f"{key} holds {bad} non-finite values (NaN or inf)")
    return arr


def _index_array(path: Path, key: str, value: Any, shape: tuple[int, ...]) -> np.ndarray:
    """An int64 C-contiguous array of exactly `shape`; integral floats are accepted."""
    arr = _numeric(path, key, value)
    _check_shape(path, key, arr.shape, shape)
    if arr.dtype.kind == "f":
        if not (np.isfinite(arr).all() and np.array_equal(arr, np.round(arr))):
            raise FlameFileError(path, f"{key} holds non-integer values, expected indices")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _check_shape(path: Path, key: str, got: tuple[int, ...], want: tuple[int, ...]) -> None:
    if len(got) != len(want) or any(w != -1 and g != w for g, w in zip(got, want, strict=True)):
        expected = "(" + ", ".join("*" if w == -1 else str(w) for w in want) + ")"
        raise FlameFileError(path, f"{key} has shape {tuple(got)}, expected {expected}")


def _check_indices(path: Path, key: str, idx: np.ndarray, limit: int, what: str) -> None:
    if idx.size and (idx.min() < 0 or idx.max() >= limit):
        bad = int(idx.min()) if idx.min() < 0 else int(idx.max())
        raise FlameFileError(path, f"{key} holds index {bad}, outside the {limit} {what}")


def _check_rows_sum_to_one(path: Path, key: str, arr: np.ndarray, tol: float) -> None:
    err = np.abs(arr.sum(axis=-1) - 1.0)
    if err.size and err.max() > tol:
        worst = np.unravel_index(int(np.argmax(err)), err.shape)
        raise FlameFileError(
            path, f"{key} rows must sum to 1 (within {tol:g}); row {tuple(int(i) for i in worst)} "
                  f"sums to {float(arr.sum(axis=-1)[worst]):.6g}")


def _to_dense_regressor(path: Path, value: Any, num_vertices: int) -> np.ndarray:
    """J_regressor as a dense [5, V] float64 array, from a dense array or a pickled csc/csr matrix.

    Sparse matrices are rebuilt from their stored fields (data, indices, indptr, shape) rather
    than trusted as objects: pickles from old SciPy versions carry older internal state.
    """
    key = "J_regressor"
    if not scipy.sparse.issparse(value):
        return _float_array(path, key, value, (C.NUM_JOINTS, num_vertices))
    fields = vars(value)
    shape = fields.get("_shape", fields.get("shape"))
    try:
        shape = tuple(int(n) for n in shape)
        data, indices, indptr = (np.asarray(fields[k]) for k in ("data", "indices", "indptr"))
    except (KeyError, TypeError, ValueError):
        raise FlameFileError(path, f"{key} is a sparse matrix missing its data, indices, "
                                   "indptr or shape") from None
    _check_shape(path, key, shape, (C.NUM_JOINTS, num_vertices))  # before allocating it dense
    cls = (scipy.sparse.csc_matrix
           if isinstance(value, (scipy.sparse.csc_matrix, scipy.sparse.csc_array))
           else scipy.sparse.csr_matrix)
    try:
        dense = cls((data, indices, indptr), shape=shape).toarray()
    except (TypeError, ValueError, IndexError) as e:
        raise FlameFileError(path, f"{key} is a corrupt sparse matrix ({_first_line(e)})") from None
    return _float_array(path, key, dense, (C.NUM_JOINTS, num_vertices))


def _body_model_kind(arrays: dict[str, Any]) -> str | None:
    """Names the SMPL-family or MANO model whose layout `arrays` has, or None."""
    v_shape = _shape_of(arrays.get("v_template"))
    num_vertices = v_shape[0] if v_shape else None
    joint_counts = set()
    for key, axis in (("J_regressor", 0), ("weights", -1), ("kintree_table", -1)):
        shape = _shape_of(arrays.get(key))
        if shape:
            joint_counts.add(shape[axis])
    s_shape = _shape_of(arrays.get("shapedirs"))
    facts = [f"{num_vertices} vertices" if num_vertices is not None else None,
             f"{'/'.join(str(j) for j in sorted(joint_counts))} joints" if joint_counts else None,
             f"{s_shape[-1]} shape components" if s_shape else None]
    seen = ", ".join(f for f in facts if f)
    flame = (f"FLAME has {_FLAME_VERTEX_COUNT} vertices, {C.NUM_JOINTS} joints and "
             f"{C.NUM_SHAPE_TOTAL} + {C.NUM_EXPRESSION_TOTAL} components")
    if num_vertices in _SMPL_VERTEX_COUNTS or joint_counts & set(_SMPL_JOINT_COUNTS):
        return (f"looks like an SMPL body model, not FLAME (SMPL, SMPL-H or SMPL-X: {seen}); "
                f"{flame}")
    if num_vertices == _MANO_VERTEX_COUNT or _MANO_JOINT_COUNT in joint_counts:
        return f"looks like a MANO hand model, not FLAME ({seen}); {flame}"
    return None


def _validate_model(path: Path, raw: dict[str, Any]) -> dict[str, np.ndarray]:
    """Checks FLAME's keys and shapes; returns plain float64 / int64 arrays."""
    kind = _body_model_kind(raw)
    if kind is not None:
        raise FlameFileError(path, kind)
    missing = [k for k in MODEL_KEYS if k not in raw]
    if missing:
        hint = ""
        if all(k in raw for k in _EMBEDDING_KEYS):
            hint = " (this looks like a landmark embedding, not a model)"
        raise FlameFileError(path, f"missing keys {', '.join(missing)}{hint}; a FLAME model holds "
                                   f"{', '.join(MODEL_KEYS)}")
    v_template = _float_array(path, "v_template", raw["v_template"], (-1, 3))
    num_vertices = v_template.shape[0]
    if num_vertices == 0:
        raise FlameFileError(path, "v_template has no vertices")
    faces = _index_array(path, "f", raw["f"], (-1, 3))
    _check_indices(path, "f", faces, num_vertices, "vertices of v_template")

    shapedirs = _numeric(path, "shapedirs", raw["shapedirs"])
    num_components = C.NUM_SHAPE_TOTAL + C.NUM_EXPRESSION_TOTAL
    if shapedirs.ndim == 3 and shapedirs.shape[:2] == (num_vertices, 3) \
            and shapedirs.shape[2] != num_components:
        raise FlameFileError(
            path, f"shapedirs has {shapedirs.shape[2]} components, expected {num_components} "
                  f"({C.NUM_SHAPE_TOTAL} identity then {C.NUM_EXPRESSION_TOTAL} expression), "
                  "as FLAME 2019 and later ship; older or truncated models are not supported")
    shapedirs = _float_array(path, "shapedirs", shapedirs, (num_vertices, 3, num_components))
    posedirs = _float_array(path, "posedirs", raw["posedirs"],
                            (num_vertices, 3, C.NUM_POSE_FEATURES))
    j_regressor = _to_dense_regressor(path, raw["J_regressor"], num_vertices)
    weights = _float_array(path, "weights", raw["weights"], (num_vertices, C.NUM_JOINTS))
    _check_rows_sum_to_one(path, "weights", weights, WEIGHT_SUM_TOLERANCE)

    kintree = _index_array(path, "kintree_table", raw["kintree_table"], (2, C.NUM_JOINTS))
    if not np.array_equal(kintree[1], np.arange(C.NUM_JOINTS)):
        raise FlameFileError(path, f"kintree_table[1] is {kintree[1].tolist()}, expected the joint "
                                   f"ids {list(range(C.NUM_JOINTS))}")
    parents = _parents_from_kintree(kintree)
    if tuple(parents.tolist()) != C.PARENTS:
        raise FlameFileError(path, f"kintree_table gives parents {parents.tolist()}, expected "
                                   f"FLAME's {list(C.PARENTS)} (global, neck, jaw, eyes)")
    return {"v_template": v_template, "f": faces, "shapedirs": shapedirs, "posedirs": posedirs,
            "J_regressor": j_regressor, "weights": weights, "kintree_table": kintree}


def _parents_from_kintree(kintree: np.ndarray) -> np.ndarray:
    """[J] int64 parents from kintree_table [2, J]: row 0, the root's marker turned into -1."""
    parents = kintree[0].astype(np.int64)
    parents[np.isin(parents, _ROOT_PARENT_MARKERS)] = -1
    return parents


def _embedding_arrays(path: Path, obj: Any, rows: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(faces [*rows] int64, bary [*rows, 3] float64) from an embedding dict, validated."""
    if not isinstance(obj, dict):
        raise FlameFileError(path, f"holds a {type(obj).__name__}, expected a dict with "
                                   f"{' and '.join(_EMBEDDING_KEYS)}")
    missing = [k for k in _EMBEDDING_KEYS if k not in obj]
    if missing:
        raise FlameFileError(path, f"missing keys {', '.join(missing)}; a FLAME landmark "
                                   f"embedding holds {' and '.join(_EMBEDDING_KEYS)}")
    faces = _index_array(path, "lmk_face_idx", obj["lmk_face_idx"], rows)
    if faces.size and faces.min() < 0:
        raise FlameFileError(path, f"lmk_face_idx holds the negative face index {faces.min()}")
    bary = _float_array(path, "lmk_b_coords", obj["lmk_b_coords"], rows + (3,))
    _check_rows_sum_to_one(path, "lmk_b_coords", bary, BARY_SUM_TOLERANCE)
    return faces, bary
