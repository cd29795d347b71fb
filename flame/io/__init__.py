"""Reading FLAME's files into a `FlameModel`: without chumpy, without unsafe unpickling, validated.

FLAME ships as Python pickles, many of them written by Python 2 and holding chumpy objects; chumpy
no longer installs on current Python / NumPy. This package reads them with a restricted unpickler
that knows NumPy arrays, SciPy's sparse matrices and a small set of harmless helpers, turns every
chumpy object into the plain array it stores, and refuses anything else (a pickle can name any
callable, so an unrestricted `pickle.load` on a downloaded file runs whatever the file says).

Modules: `unpickler` (the restricted unpickler), `checks` (keys, shapes, ranges of the arrays),
`readers` (the three files, `load_flame_files`), `errors` (`FlameFileError`). `load_flame`, here,
adds the one default: no model given means this project's open head model (`flame.openhead`).

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

import os

from flame.io.checks import BARY_SUM_TOLERANCE, MODEL_KEYS, WEIGHT_SUM_TOLERANCE
from flame.io.errors import FlameFileError
from flame.io.readers import (EMBEDDINGS_SOURCE, MODEL_FILENAMES, find_model_file, load_flame_files,
                              read_dynamic_embedding, read_model_arrays, read_static_embedding)
from flame.model import FlameModel

__all__ = [
    "BARY_SUM_TOLERANCE",
    "EMBEDDINGS_SOURCE",
    "FlameFileError",
    "MODEL_FILENAMES",
    "MODEL_KEYS",
    "WEIGHT_SUM_TOLERANCE",
    "find_model_file",
    "load_flame",
    "load_flame_files",
    "read_dynamic_embedding",
    "read_model_arrays",
    "read_static_embedding",
]


def load_flame(model_path: str | os.PathLike | None = None,
               static_embedding: str | os.PathLike | None = None,
               dynamic_embedding: str | os.PathLike | None = None) -> FlameModel:
    """Loads a FLAME model and its landmark embeddings into a validated `FlameModel`.

    Args:
      model_path: a model file (.pkl or .npz, any release) or a folder holding exactly one of
        `MODEL_FILENAMES`. None loads this project's own open head model (`flame.openhead`),
        generated into its cache on first use.
      static_embedding: `flame_static_embedding.pkl`; default: next to the model file.
      dynamic_embedding: `flame_dynamic_embedding.npy`; default: next to the model file.

    Returns:
      The model in float64 / int64 arrays: shapedirs [V, 3, 300], exprdirs [V, 3, 100], parents
      [5] with -1 for the root, `source` the model file's path.

    Raises:
      FlameFileError: a file is missing, unreadable, of another model, or inconsistent.
    """
    if model_path is None:
        # Imported here: the generator is only needed on this path, and the readers below must
        # not depend on it.
        from flame.openhead import ensure_open_head

        model_path = ensure_open_head()  # a folder holding the model and both embeddings
    return load_flame_files(model_path, static_embedding, dynamic_embedding)
