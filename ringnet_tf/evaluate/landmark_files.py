"""Reading the landmark files of an evaluation's predictions, with errors that name the file.

Landmarks are `.npy` (`[K, 3]` or `[1, K, 3]`) or `.txt` (one "x y z" line per landmark). Meshes
are read by `flame.mesh_io` (strict OBJ, PLY through trimesh), whose `MeshReadError` this raises.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from flame.mesh_io import MeshReadError, read_text


def read_landmarks(path: str | os.PathLike, count: int) -> np.ndarray:
    """`[count, 3] float64` landmarks from `.npy` (`[count, 3]` or `[1, count, 3]`) or `.txt`.

    Raises:
      MeshReadError naming the file for unreadable content, a wrong shape or non-finite values.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise MeshReadError(f"{path}: cannot read .npy ({err})") from None
    elif suffix == ".txt":
        rows = [line.replace(",", " ").split() for line in read_text(path).splitlines()]
        rows = [row for row in rows if row and not row[0].startswith("#")]
        try:
            array = np.array(rows, dtype=np.float64)
        except ValueError:
            raise MeshReadError(f"{path}: expected {count} lines of 3 numbers") from None
    else:
        raise MeshReadError(f"{path}: unsupported landmark format '{suffix}' (expected .npy or .txt)")
    if array.shape == (1, count, 3):
        array = array[0]
    if array.shape != (count, 3):
        raise MeshReadError(f"{path}: landmarks of shape {array.shape}, expected ({count}, 3) "
                            f"or (1, {count}, 3)")
    try:
        array = array.astype(np.float64)
    except (TypeError, ValueError):
        raise MeshReadError(f"{path}: landmarks are not numbers") from None
    if not np.all(np.isfinite(array)):
        raise MeshReadError(f"{path}: landmarks contain NaN or infinity")
    return array
