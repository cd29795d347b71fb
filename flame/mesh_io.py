"""Mesh export (OBJ, PLY) through trimesh, keeping FLAME's vertex order and faces as they are."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import trimesh

from flame.fileutil import atomic_write

MESH_FORMATS = (".obj", ".ply")


def write_mesh(path: str | os.PathLike, vertices: np.ndarray, faces: np.ndarray,
               colors: np.ndarray | None = None) -> Path:
    """Writes a triangle mesh as OBJ or PLY (by the file's suffix), atomically.

    Vertex order and duplicated vertices are preserved (no merging), so a written mesh indexes
    exactly like the model's `vertices`: FLAME's landmark and region indices stay valid.

    Args:
      path: output file, `.obj` or `.ply`.
      vertices: [V, 3] float.
      faces: [F, 3] int vertex indices.
      colors: optional per-vertex colours, [V, 3] or [V, 4], floats in [0, 1] or uint8.
    Returns:
      The written path.
    Raises:
      ValueError: an unknown suffix, or arrays of the wrong shape (naming the path).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MESH_FORMATS:
        raise ValueError(f"{path}: unknown mesh format {suffix!r}; use one of {', '.join(MESH_FORMATS)}")
    vertices = np.asarray(vertices, np.float64)
    faces = np.asarray(faces, np.int64)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"{path}: vertices must be [V, 3]; got {vertices.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.min(initial=0) < 0 \
            or faces.max(initial=0) >= len(vertices):
        raise ValueError(f"{path}: faces must be [F, 3] indices below {len(vertices)}")
    vertex_colors = None
    if colors is not None:
        colors = np.asarray(colors)
        if colors.shape[0] != len(vertices) or colors.shape[1] not in (3, 4):
            raise ValueError(f"{path}: colors must be [V, 3] or [V, 4]; got {colors.shape}")
        if colors.dtype != np.uint8:
            colors = np.round(np.clip(colors, 0.0, 1.0) * 255).astype(np.uint8)
        vertex_colors = colors
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, vertex_colors=vertex_colors, process=False)
    if suffix == ".obj":
        data = mesh.export(file_type="obj", include_color=colors is not None, include_normals=False,
                           include_texture=False, digits=6).encode()
    else:
        data = mesh.export(file_type="ply", encoding="binary")
    return atomic_write(path, lambda f: f.write(data))


def read_mesh(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Reads an OBJ or PLY without merging vertices. Returns vertices [V, 3] float64, faces [F, 3]."""
    mesh = trimesh.load(str(path), process=False, force="mesh")
    return np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64)
