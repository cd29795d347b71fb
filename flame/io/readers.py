"""The readers of FLAME's files: model (pickle or .npz), static and dynamic landmark embeddings.

Pickles go through the restricted unpickler (`flame.io.unpickler`), arrays through the checks
(`flame.io.checks`). `load_flame_files` reads the three files of one model into a `FlameModel`;
the default model (none given) is resolved above this module, in `flame.io.load_flame`.
"""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.lib.format as npy_format

from flame import constants as C
from flame.io.checks import (MODEL_KEYS, _check_indices, _embedding_arrays, _parents_from_kintree,
                             _validate_model)
from flame.io.errors import FlameFileError, _first_line
from flame.io.unpickler import _describe_foreign, _unpickle
from flame.model import DYNAMIC_EMBEDDING_FILENAME, STATIC_EMBEDDING_FILENAME, FlameModel

# Model file stems of FLAME's releases (see `flame.io`'s docstring), each as .pkl and .npz.
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

_ZIP_MAGIC = b"PK\x03\x04"
_NPY_MAGIC = b"\x93NUMPY"


def _read_bytes(path: Path) -> bytes:
    if path.is_dir():
        raise FlameFileError(path, "is a folder, expected a file")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FlameFileError(path, "no such file") from None
    except OSError as e:
        raise FlameFileError(path, f"cannot be read ({e.strerror or e})") from None


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


def load_flame_files(model_path: str | os.PathLike,
                     static_embedding: str | os.PathLike | None = None,
                     dynamic_embedding: str | os.PathLike | None = None) -> FlameModel:
    """Loads the FLAME model at `model_path` (a file or a folder) and its landmark embeddings.

    `flame.io.load_flame` with a model given: the arguments, the result and the errors are
    documented there.
    """
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
