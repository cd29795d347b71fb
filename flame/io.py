"""Reading FLAME's files into a `FlameModel`: without chumpy, without unsafe unpickling, validated.

FLAME ships as Python pickles, many of them written by Python 2 and holding chumpy objects; chumpy
no longer installs on current Python / NumPy. This module reads them with a restricted unpickler
that knows NumPy arrays, SciPy's sparse matrices and a small set of harmless helpers, turns every
chumpy object into the plain array it stores, and refuses anything else (a pickle can name any
callable, so an unrestricted `pickle.load` on a downloaded file runs whatever the file says).

Files read (letters: V vertices, F faces, J = 5 joints):
  - the model: a pickle or an `.npz` holding `v_template` [V, 3], `f` [F, 3], `shapedirs`
    [V, 3, 400] (300 identity then 100 expression components), `posedirs` [V, 3, 36],
    `J_regressor` [5, V] (dense or scipy.sparse), `weights` [V, 5], `kintree_table` [2, 5];
  - `flame_static_embedding.pkl`: a dict with `lmk_face_idx` [51] and `lmk_b_coords` [51, 3];
  - `flame_dynamic_embedding.npy`: a 0-d object array holding a dict with `lmk_face_idx` [79, 17]
    and `lmk_b_coords` [79, 17, 3].

Model file names looked for in a folder (`MODEL_FILENAMES`), each as `.pkl` and as `.npz`:
  - `generic_model`, `male_model`, `female_model`: the 2017, 2019 and 2020 releases;
  - `FLAME_NEUTRAL`, `FLAME_MALE`, `FLAME_FEMALE`: the layout the smplx package expects
    (`FLAME_{GENDER}.{pkl,npz}`);
  - `flame2023`, `flame2023_no_jaw`: the FLAME 2023 release (revised eye region);
  - `flame2023_Open`: the FLAME 2023 Open release (CC-BY-4.0).
Names are matched without regard to case. Every error is a `FlameFileError`: one line that starts
with the offending file's path, then says what is wrong and what was expected.
"""
from __future__ import annotations

import io
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.lib.format as npy_format
import scipy.sparse

try:  # NumPy 2 (this project); the fallback keeps NumPy 1.x working.
    from numpy._core import multiarray as _np_multiarray
    from numpy._core import numeric as _np_numeric
except ImportError:  # pragma: no cover
    from numpy.core import multiarray as _np_multiarray
    from numpy.core import numeric as _np_numeric

from flame import constants as C
from flame.model import DYNAMIC_EMBEDDING_FILENAME, STATIC_EMBEDDING_FILENAME, FlameModel

__all__ = [
    "FlameFileError",
    "MODEL_FILENAMES",
    "EMBEDDINGS_SOURCE",
    "find_model_file",
    "load_flame",
    "read_model_arrays",
    "read_static_embedding",
    "read_dynamic_embedding",
]

# Model file stems of FLAME's releases (see the module docstring), each as .pkl and .npz.
_MODEL_STEMS: tuple[str, ...] = (
    "generic_model", "male_model", "female_model",  # FLAME 2017 / 2019 / 2020
    "FLAME_NEUTRAL", "FLAME_MALE", "FLAME_FEMALE",  # smplx's layout
    "flame2023", "flame2023_no_jaw",  # FLAME 2023
    "flame2023_Open",  # FLAME 2023 Open (CC-BY-4.0)
)
MODEL_FILENAMES: tuple[str, ...] = tuple(
    stem + ext for stem in _MODEL_STEMS for ext in (".pkl", ".npz"))

# Where users get the landmark embeddings: the FLAME model downloads do not contain them.
EMBEDDINGS_SOURCE = ("FLAME's landmark embeddings are distributed with RingNet "
                     "(https://github.com/soubhiksanyal/RingNet, folder flame_model/)")

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

# Recognisable starts of files that are not pickles: what users actually feed a loader by mistake.
_FOREIGN_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive (unpack it first)"),
    (b"Rar!", "a RAR archive (unpack it first)"),
    (b"7z\xbc\xaf", "a 7-Zip archive (unpack it first)"),
    (b"\x93NUMPY", "a NumPy .npy array file"),
    (b"version https://git-lfs", "a Git LFS pointer, not the file itself (run `git lfs pull`)"),
)
_ZIP_MAGIC = b"PK\x03\x04"
_NPY_MAGIC = b"\x93NUMPY"

# The unpickler can raise almost anything on corrupt input; these are what it does raise
# (truncation, bad opcodes, bad arguments to the allowed constructors, absurd sizes).
_CORRUPT_PICKLE_ERRORS: tuple[type[BaseException], ...] = (
    pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
    KeyError, OverflowError, MemoryError, RecursionError)

# Nesting depth up to which loaded containers are searched for chumpy objects (FLAME's are at 1).
_MAX_WALK_DEPTH = 32


class FlameFileError(ValueError):
    """A FLAME file that is missing, unreadable or not what FLAME ships.

    The message is one line: the file's path, a colon, then what is wrong (and what was expected).

    Attributes:
      path: the offending file or folder.
      problem: what is wrong with it.
    """

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = os.fspath(path)
        # One line always: the message goes to logs and CLI output as a single record.
        self.problem = " ".join(str(problem).split())
        shown = str(self.path).replace("\n", "\\n").replace("\r", "\\r")
        super().__init__(f"{shown}: {self.problem}")

    def __reduce__(self):  # keeps the two-argument constructor picklable (multiprocessing)
        return (type(self), (self.path, self.problem))


# ----------------------------------------------------------------------------------------------
# Restricted unpickling


class _ChumpyStandIn:
    """Takes the place of a chumpy object while unpickling: keeps its state, runs no chumpy code.

    Subclassed once per chumpy global (`chumpy_global` names it, for messages).
    """

    chumpy_global = "chumpy"
    state: Any = None  # class defaults: copyreg._reconstructor bypasses __new__

    def __new__(cls, *args: Any, **kwargs: Any) -> _ChumpyStandIn:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state


_CHUMPY_MODULE = re.compile(r"chumpy(\.[A-Za-z_]\w*)*")
_IDENTIFIER = re.compile(r"[A-Za-z_]\w*")
_chumpy_stand_ins: dict[tuple[str, str], type[_ChumpyStandIn]] = {}


def _chumpy_stand_in(module: str, name: str) -> type[_ChumpyStandIn]:
    key = (module, name)
    if key not in _chumpy_stand_ins:
        _chumpy_stand_ins[key] = type(
            f"ChumpyStandIn_{name}", (_ChumpyStandIn,), {"chumpy_global": f"{module}.{name}"})
    return _chumpy_stand_ins[key]


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only globals a FLAME pickle may name, under every spelling Python 2 and 3 wrote."""
    import copyreg
    import _codecs

    allowed: dict[tuple[str, str], Any] = {}
    # NumPy's array and scalar reconstruction; numpy.core became numpy._core in NumPy 2, and the
    # old spelling is mapped here without importing the deprecated numpy.core shim.
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = _np_multiarray._reconstruct
        allowed[(module, "scalar")] = _np_multiarray.scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module, "_frombuffer")] = _np_numeric._frombuffer  # protocol-5 arrays
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    # Protocol 0/1 object reconstruction and Python 3's protocol-2 spelling of bytes.
    for module in ("copy_reg", "copyreg"):
        allowed[(module, "_reconstructor")] = copyreg._reconstructor
    allowed[("_codecs", "encode")] = _codecs.encode
    # Builtins, Python 2 and 3 spellings: protocol 2 writes b"" (an empty array's buffer) as
    # bytes(), and chumpy's state holds a set of dirty variables.
    for module in ("__builtin__", "builtins"):
        allowed[(module, "bytes")] = bytes
        allowed[(module, "object")] = object
        allowed[(module, "set")] = set
        allowed[(module, "frozenset")] = frozenset
    # SciPy's sparse matrices (J_regressor); scipy.sparse.csc became scipy.sparse._csc in 1.8.
    for fmt in ("csc", "csr"):
        for module in (f"scipy.sparse.{fmt}", f"scipy.sparse._{fmt}"):
            allowed[(module, f"{fmt}_matrix")] = getattr(scipy.sparse, f"{fmt}_matrix")
            allowed[(module, f"{fmt}_array")] = getattr(scipy.sparse, f"{fmt}_array")
    return allowed


_ALLOWED_GLOBALS = _allowed_globals()


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only `_ALLOWED_GLOBALS` and chumpy classes (to stand-ins)."""

    def __init__(self, file: io.BytesIO, path: str | os.PathLike) -> None:
        # latin1 turns Python 2 byte strings (array buffers among them) back into their bytes.
        super().__init__(file, encoding="latin1")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is not None:
            return allowed
        if _CHUMPY_MODULE.fullmatch(module) and _IDENTIFIER.fullmatch(name):
            return _chumpy_stand_in(module, name)
        raise FlameFileError(
            self._path,
            f"refused to load: the pickle asks for the global {module}.{name}, which a FLAME file "
            "never holds (only NumPy arrays, SciPy sparse matrices and chumpy arrays are allowed)")

    def persistent_load(self, pid: Any) -> Any:
        raise FlameFileError(self._path, "refused to load: the pickle uses persistent ids, "
                                         "which a FLAME file never holds")


def _read_bytes(path: Path) -> bytes:
    if path.is_dir():
        raise FlameFileError(path, "is a folder, expected a file")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FlameFileError(path, "no such file") from None
    except OSError as e:
        raise FlameFileError(path, f"cannot be read ({e.strerror or e})") from None


def _describe_foreign(data: bytes) -> str | None:
    """Names what a non-pickle file looks like, from its first bytes, or None if unrecognised."""
    if not data:
        return "is empty"
    for magic, what in _FOREIGN_MAGIC:
        if data.startswith(magic):
            return f"is {what}"
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
        return "is an HTML/XML page (a failed or login-walled download?)"
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _unpickle(path: Path, data: bytes, what: str) -> Any:
    """Unpickles `data` (the bytes of `path`) with the restricted unpickler; chumpy resolved.

    Args:
      what: what the file should be, for messages ("a FLAME model pickle").
    """
    foreign = _describe_foreign(data)
    if foreign is not None:
        raise FlameFileError(path, f"{foreign}, not {what}")
    try:
        # From memory, not the file: a corrupt length field then fails as truncation instead of
        # asking the file object for gigabytes.
        obj = _RestrictedUnpickler(io.BytesIO(data), path).load()
    except FlameFileError:
        raise
    except _CORRUPT_PICKLE_ERRORS as e:
        raise FlameFileError(
            path, f"is not a readable pickle ({_first_line(e)}); expected {what}: the file is "
                  "corrupt or incomplete, download it again") from None
    return _resolve_chumpy(obj, path, where="", depth=0)


def _chumpy_value(obj: _ChumpyStandIn, path: Path, where: str, depth: int) -> np.ndarray:
    """The plain array a chumpy object stores in its `x` (chumpy's Ch keeps its value there)."""
    state = obj.state
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
        state = state[0]  # (dict state, slot state), as protocol 2 writes for slotted classes
    x = state.get("x") if isinstance(state, dict) else None
    if isinstance(x, _ChumpyStandIn) and depth < _MAX_WALK_DEPTH:
        return _chumpy_value(x, path, where, depth + 1)
    label = where or "the top-level object"
    if x is None:
        raise FlameFileError(
            path, f"{label} is a chumpy object ({obj.chumpy_global}) without a stored array 'x' "
                  "(a chumpy expression, not a value); expected chumpy.Ch arrays or plain arrays")
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise FlameFileError(
            path, f"{label} is a chumpy object ({obj.chumpy_global}) whose 'x' is not a "
                  f"numeric array (dtype {arr.dtype})")
    return arr


def _resolve_chumpy(obj: Any, path: Path, where: str, depth: int) -> Any:
    """Replaces every chumpy stand-in inside dicts, lists, tuples and object arrays by its array."""
    if depth > _MAX_WALK_DEPTH:
        return obj
    if isinstance(obj, _ChumpyStandIn):
        return _chumpy_value(obj, path, where, depth)
    if isinstance(obj, dict):
        return {k: _resolve_chumpy(v, path, f"{where}[{k!r}]" if where else f"key {k!r}",
                                   depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [_resolve_chumpy(v, path, f"{where or 'item'}[{i}]", depth + 1)
                 for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.ndim == 0:
        out = np.empty((), dtype=object)
        out[()] = _resolve_chumpy(obj[()], path, where, depth + 1)
        return out
    return obj


# ----------------------------------------------------------------------------------------------
# Array checks (each raises FlameFileError naming the file and the key)


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


# ----------------------------------------------------------------------------------------------
# File readers


def _read_npz(path: Path, data: bytes) -> dict[str, Any]:
    """The model keys of an .npz, loaded without pickle (object arrays are refused)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            names = list(npz.files)
            if names and not any(name in MODEL_KEYS for name in names) and all(
                    "." in name for name in names):
                raise FlameFileError(
                    path, f"is a zip archive of files ({', '.join(names[:4])}), not an .npz of "
                          "FLAME arrays: unzip it and name the model file inside")
            out = {}
            for key in names:
                if key not in MODEL_KEYS:
                    continue
                try:
                    out[key] = npz[key]
                except ValueError as e:
                    if "allow_pickle" in str(e):
                        raise FlameFileError(
                            path, f"{key} is stored as a pickled object; this reader loads .npz "
                                  "files without pickle, so store it as a dense array") from None
                    raise
            return out
    except FlameFileError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise FlameFileError(path, f"is not a readable .npz archive ({_first_line(e)}): the file "
                                   "is corrupt or incomplete, download it again") from None


def read_model_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads and validates a FLAME model file: a pickle (any release, chumpy or not) or an .npz.

    The format is told by the content, not the name. Pickles go through the restricted unpickler;
    chumpy objects become the arrays they hold; a sparse J_regressor becomes dense.

    Returns:
      v_template [V, 3] float64, f [F, 3] int64, shapedirs [V, 3, 400] float64 (300 identity then
      100 expression components), posedirs [V, 3, 36] float64, J_regressor [5, V] float64 (dense),
      weights [V, 5] float64 (rows sum to 1), kintree_table [2, 5] int64 (as stored: the root's
      parent may be 4294967295).

    Raises:
      FlameFileError: the file is missing, unreadable, not a FLAME model or inconsistent.
    """
    path = Path(path)
    data = _read_bytes(path)
    if data.startswith(_ZIP_MAGIC):
        raw = _read_npz(path, data)
    else:
        raw = _unpickle(path, data, "a FLAME model pickle")
        if not isinstance(raw, dict):
            raise FlameFileError(path, f"holds a {type(raw).__name__}, expected a dict of FLAME "
                                       f"arrays ({', '.join(MODEL_KEYS)})")
    return _validate_model(path, raw)


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


def read_static_embedding(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Reads `flame_static_embedding.pkl`: the 51 static landmarks as barycentric points.

    Returns:
      faces: [51] int64 face indices (not yet checked against a model's faces: `load_flame` does).
      bary: [51, 3] float64 barycentric coordinates, rows summing to 1.

    Raises:
      FlameFileError: missing, unreadable or not FLAME's static embedding layout.
    """
    path = Path(path)
    obj = _unpickle(path, _read_bytes(path), "FLAME's static landmark embedding pickle")
    return _embedding_arrays(path, obj, (C.NUM_STATIC_LANDMARKS,))


def _read_npy_object(path: Path, data: bytes) -> Any:
    """The object inside a .npy holding a 0-d object array, unpickled with the restricted unpickler.

    np.load(allow_pickle=True) would unpickle without restriction, so the header is parsed here
    and only the pickle that follows it goes through `_unpickle`.
    """
    if not data.startswith(_NPY_MAGIC):
        foreign = _describe_foreign(data)
        what = foreign if foreign is not None else "is not a NumPy .npy file"
        raise FlameFileError(path, f"{what}; expected FLAME's dynamic landmark embedding (.npy)")
    stream = io.BytesIO(data)
    try:
        version = npy_format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = npy_format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, _, dtype = npy_format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except ValueError as e:
        raise FlameFileError(path, f"has a corrupt .npy header ({_first_line(e)})") from None
    if dtype != np.dtype(object) or tuple(shape) != ():
        raise FlameFileError(path, f"holds a {dtype} array of shape {tuple(shape)}, expected a 0-d "
                                   "object array holding a dict (FLAME's dynamic embedding)")
    arr = _unpickle(path, data[stream.tell():], "a pickled 0-d object array")
    if isinstance(arr, np.ndarray) and arr.dtype == object and arr.ndim == 0:
        return arr[()]
    raise FlameFileError(path, f"holds a {type(arr).__name__} after its header, expected a 0-d "
                               "object array")


def read_dynamic_embedding(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Reads `flame_dynamic_embedding.npy`: 17 contour landmarks for each whole degree of yaw.

    Returns:
      faces: [79, 17] int64 face indices, one row per yaw from 0 to 39 then -1 to -39 degrees.
      bary: [79, 17, 3] float64 barycentric coordinates, rows summing to 1.

    Raises:
      FlameFileError: missing, unreadable or not FLAME's dynamic embedding layout.
    """
    path = Path(path)
    obj = _read_npy_object(path, _read_bytes(path))
    return _embedding_arrays(path, obj, (C.CONTOUR_NUM_ROWS, C.NUM_CONTOUR_LANDMARKS))


# ----------------------------------------------------------------------------------------------
# Loading a model


def find_model_file(folder: str | os.PathLike) -> Path:
    """The one FLAME model file (a name in `MODEL_FILENAMES`, any case) in `folder`.

    Raises:
      FlameFileError: none of the names is there, or several are (then the user must name one).
    """
    folder = Path(folder)
    wanted = {name.lower(): rank for rank, name in enumerate(MODEL_FILENAMES)}
    try:
        entries = sorted(p for p in folder.iterdir() if p.is_file())
    except OSError as e:
        raise FlameFileError(folder, f"cannot be listed ({e.strerror or e})") from None
    found = sorted((p for p in entries if p.name.lower() in wanted),
                   key=lambda p: wanted[p.name.lower()])
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise FlameFileError(
            folder, f"holds several FLAME models ({names}); name the one to load, e.g. "
                    f"{folder / found[0].name}")
    others = [p.name for p in entries if p.suffix.lower() in (".pkl", ".npz")
              and p.name.lower() != STATIC_EMBEDDING_FILENAME.lower()]
    hint = f"; it holds {', '.join(others[:5])}: name the model file" if others else ""
    raise FlameFileError(folder, f"holds no FLAME model: looked for {', '.join(_MODEL_STEMS)} "
                                 f"(each .pkl or .npz){hint}")


def _embedding_path(given: str | os.PathLike | None, model_file: Path, name: str,
                    role: str) -> Path:
    path = Path(given) if given is not None else model_file.parent / name
    if not path.is_file():
        where = "given" if given is not None else "expected next to the model"
        raise FlameFileError(path, f"missing: FLAME's {role} landmark embedding ({where}); "
                                   f"{EMBEDDINGS_SOURCE}")
    return path


def load_flame(model_path: str | os.PathLike | None = None,
               static_embedding: str | os.PathLike | None = None,
               dynamic_embedding: str | os.PathLike | None = None) -> FlameModel:
    """Loads a FLAME model and its landmark embeddings into a validated `FlameModel`.

    Args:
      model_path: a model file (.pkl or .npz, any release) or a folder holding exactly one of
        `MODEL_FILENAMES`. None loads this project's own open head model (`flame.openhead`).
      static_embedding: `flame_static_embedding.pkl`; default: next to the model file.
      dynamic_embedding: `flame_dynamic_embedding.npy`; default: next to the model file.

    Returns:
      The model in float64 / int64 arrays: shapedirs [V, 3, 300], exprdirs [V, 3, 100], parents
      [5] with -1 for the root, `source` the model file's path.

    Raises:
      FlameFileError: a file is missing, unreadable, of another model, or inconsistent.
    """
    if model_path is None:
        from flame.openhead import ensure_open_head  # lazy: only this path needs it

        model_path = ensure_open_head()  # a folder holding the model and both embeddings
    model_path = Path(model_path)
    if model_path.is_dir():
        model_file = find_model_file(model_path)
    elif model_path.exists():
        model_file = model_path
    else:
        raise FlameFileError(model_path, "no such file or folder; expected a FLAME model file "
                                         f"or a folder holding one of {', '.join(_MODEL_STEMS)}")
    arrays = read_model_arrays(model_file)
    static_path = _embedding_path(static_embedding, model_file, STATIC_EMBEDDING_FILENAME,
                                  "static")
    dynamic_path = _embedding_path(dynamic_embedding, model_file, DYNAMIC_EMBEDDING_FILENAME,
                                   "dynamic")
    static_faces, static_bary = read_static_embedding(static_path)
    dynamic_faces, dynamic_bary = read_dynamic_embedding(dynamic_path)
    num_faces = arrays["f"].shape[0]
    for path, faces in ((static_path, static_faces), (dynamic_path, dynamic_faces)):
        # Checked here, not in the readers: only now is the model's face count known.
        _check_indices(path, "lmk_face_idx", faces, num_faces, f"faces of the model {model_file}")

    shapedirs = arrays["shapedirs"]
    return FlameModel(
        v_template=arrays["v_template"],
        faces=arrays["f"],
        shapedirs=np.ascontiguousarray(shapedirs[:, :, :C.NUM_SHAPE_TOTAL]),
        exprdirs=np.ascontiguousarray(shapedirs[:, :, C.NUM_SHAPE_TOTAL:]),
        posedirs=arrays["posedirs"],
        j_regressor=arrays["J_regressor"],
        weights=arrays["weights"],
        parents=_parents_from_kintree(arrays["kintree_table"]),
        static_lmk_faces=static_faces,
        static_lmk_bary=static_bary,
        dynamic_lmk_faces=dynamic_faces,
        dynamic_lmk_bary=dynamic_bary,
        source=str(model_file),
    )
