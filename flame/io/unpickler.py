"""The restricted unpickler: reads FLAME's pickles without chumpy and without running their code.

A pickle can name any callable, so an unrestricted `pickle.load` on a downloaded file runs whatever
the file says. `_unpickle` resolves only NumPy's array and scalar reconstruction, SciPy's sparse
matrices and a few harmless builtins, under every spelling Python 2 and 3 wrote; every chumpy
object becomes a stand-in that keeps its state, then the plain array it stores. Anything else is
refused with a `FlameFileError`.
"""
from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse

try:  # NumPy 2 (this project); the fallback keeps NumPy 1.x working.
    from numpy._core import multiarray as _np_multiarray
    from numpy._core import numeric as _np_numeric
except ImportError:  # pragma: no cover
    from numpy.core import multiarray as _np_multiarray
    from numpy.core import numeric as _np_numeric

from flame.io.errors import FlameFileError, _first_line

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

# The unpickler can raise almost anything on corrupt input; these are what it does raise
# (truncation, bad opcodes, bad arguments to the allowed constructors, absurd sizes).
_CORRUPT_PICKLE_ERRORS: tuple[type[BaseException], ...] = (
    pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
    KeyError, OverflowError, MemoryError, RecursionError)

# Nesting depth up to which loaded containers are searched for chumpy objects (FLAME's are at 1).
_MAX_WALK_DEPTH = 32


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
