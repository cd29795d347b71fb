"""Meshes in and out: OBJ / PLY writing through trimesh and strict reading, vertex order kept.

Writing never merges or reorders vertices, so FLAME's landmark and region indices stay valid in a
written mesh. Reading OBJ is done here, strictly (a malformed vertex or face is an error naming
the file and line, never a silently empty mesh), keeping every vertex; PLY goes through trimesh.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import trimesh

from flame.fileutil import atomic_write

MESH_FORMATS = (".obj", ".ply")


def write_mesh(path: str | os.PathLike, vertices: np.ndarray, faces: np.ndarray,
               colors: np.ndarray | None = None, digits: int = 6) -> Path:
    """Writes a triangle mesh as OBJ or PLY (by the file's suffix), atomically: see `mesh_bytes`."""
    data = mesh_bytes(path, vertices, faces, colors, digits)
    return atomic_write(path, lambda f: f.write(data))


def mesh_bytes(path: str | os.PathLike, vertices: np.ndarray, faces: np.ndarray,
               colors: np.ndarray | None = None, digits: int = 6) -> bytes:
    """The file content of a triangle mesh as OBJ or PLY (by the suffix of `path`).

    Vertex order and duplicated vertices are preserved (no merging), so a written mesh indexes
    exactly like the model's `vertices`: FLAME's landmark and region indices stay valid.

    Args:
      path: output file, `.obj` or `.ply`.
      vertices: [V, 3] float.
      faces: [F, 3] int vertex indices.
      colors: optional per-vertex colours, [V, 3] or [V, 4], floats in [0, 1] or uint8.
      digits: decimals of OBJ coordinates (6: micrometres for metres); PLY is binary, exact.
    Returns:
      The file's bytes.
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
                           include_texture=False, digits=digits).encode()
    else:
        data = mesh.export(file_type="ply", encoding="binary")
    return data


class MeshReadError(ValueError):
    """An unreadable mesh or landmark file; the message starts with the file's path."""


def read_text(path: str | os.PathLike) -> str:
    """The text of a file (UTF-8; undecodable bytes replaced), or a MeshReadError naming it."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise MeshReadError(f"{path}: cannot read: {err.strerror or err}") from None


def read_obj(path: str | os.PathLike, with_faces: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Vertices and triangles of a Wavefront OBJ file.

    Reads `v x y z [w | r g b]` and `f` records (`i`, `i/t`, `i//n`, `i/t/n`, negative indices
    counted from the end); polygons are split into triangle fans; everything else (texture
    coordinates, normals, groups, materials, comments) is skipped.

    Args:
      path: the `.obj` file.
      with_faces: False skips face records (a scan's vertices are all the metric needs).
    Returns:
      vertices `[V, 3] float64`, faces `[F, 3] int64` (empty `[0, 3]` when skipped).
    Raises:
      MeshReadError naming the file (and line) for unreadable or malformed content, or no vertex.
    """
    path = Path(path)
    text = read_text(path)
    vertex_rows: list[list[str]] = []
    vertex_lines: list[int] = []
    face_records: list[tuple[int, list[str]]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("v ") or line.startswith("v\t"):
            vertex_rows.append(line.split()[1:4])
            vertex_lines.append(number)
        elif with_faces and (line.startswith("f ") or line.startswith("f\t")):
            face_records.append((number, line.split()[1:]))
    if not vertex_rows:
        raise MeshReadError(f"{path}: no vertex ('v') records: not an OBJ mesh")
    try:
        vertices = np.array(vertex_rows, dtype=np.float64)
    except ValueError:
        vertices = None
    if vertices is None or vertices.shape != (len(vertex_rows), 3):
        for row, number in zip(vertex_rows, vertex_lines):
            try:
                ok = len(row) == 3 and all(np.isfinite(float(x)) for x in row)
            except ValueError:
                ok = False
            if not ok:
                raise MeshReadError(f"{path}:{number}: malformed vertex record")
        raise MeshReadError(f"{path}: malformed vertex records")
    if not np.all(np.isfinite(vertices)):
        bad = int(np.flatnonzero(~np.all(np.isfinite(vertices), axis=1))[0])
        raise MeshReadError(f"{path}:{vertex_lines[bad]}: vertex with NaN or infinity")
    faces = _parse_faces(path, face_records, len(vertices)) if with_faces else np.zeros((0, 3), np.int64)
    return vertices, faces


def _parse_faces(path: Path, records: list[tuple[int, list[str]]], num_vertices: int) -> np.ndarray:
    fast = _parse_triangles_fast(records, num_vertices)
    if fast is not None:
        return fast
    # General path: polygons, and the line of the first bad record for the error message.
    triangles: list[tuple[int, int, int]] = []
    for number, tokens in records:
        try:
            indices = [int(token.split("/", 1)[0]) for token in tokens]
        except ValueError:
            raise MeshReadError(f"{path}:{number}: malformed face record") from None
        if len(indices) < 3:
            raise MeshReadError(f"{path}:{number}: face with fewer than 3 vertices")
        resolved = []
        for index in indices:
            # OBJ indices are 1-based; negative ones count back from the last vertex read so far
            # (we resolve them against all vertices, which is the same for files that define
            # vertices before faces).
            value = index - 1 if index > 0 else num_vertices + index
            if index == 0 or not 0 <= value < num_vertices:
                raise MeshReadError(
                    f"{path}:{number}: face index {index} out of range (1..{num_vertices})")
            resolved.append(value)
        for k in range(1, len(resolved) - 1):
            triangles.append((resolved[0], resolved[k], resolved[k + 1]))
    return np.array(triangles, np.int64).reshape(-1, 3)


def _parse_triangles_fast(records: list[tuple[int, list[str]]], num_vertices: int) -> np.ndarray | None:
    """All-triangle face records parsed in one NumPy call; None when anything needs the slow path."""
    if not records or any(len(tokens) != 3 for _, tokens in records):
        return None
    joined = " ".join(" ".join(tokens) for _, tokens in records)
    try:
        # Keep each token's vertex index: drop "/texture/normal" suffixes.
        indices = np.array(_SLASH_SUFFIX.sub("", joined).split(), dtype=np.int64).reshape(-1, 3)
    except ValueError:
        return None
    resolved = np.where(indices > 0, indices - 1, num_vertices + indices)
    if np.any(indices == 0) or np.any(resolved < 0) or np.any(resolved >= num_vertices):
        return None
    return resolved


_SLASH_SUFFIX = re.compile(r"/\S*")


def read_mesh(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """`[V, 3] float64` vertices and `[F, 3] int64` triangles of an `.obj` or `.ply` mesh.

    Raises:
      MeshReadError naming the file, also for a mesh without triangles.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".obj":
        vertices, faces = read_obj(path)
    elif suffix == ".ply":
        vertices, faces = _read_ply(path)
    else:
        raise MeshReadError(f"{path}: unsupported mesh format '{suffix}' (expected .obj or .ply)")
    if len(faces) == 0:
        raise MeshReadError(f"{path}: no triangles")
    return vertices, faces


def _read_ply(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import trimesh  # imported here: only PLY predictions need it

    try:
        mesh = trimesh.load(path, file_type="ply", process=False, force="mesh")
        vertices = np.asarray(mesh.vertices, np.float64)
        faces = np.asarray(mesh.faces, np.int64).reshape(-1, 3)
    except Exception as err:  # trimesh raises many types for broken files
        raise MeshReadError(f"{path}: cannot read PLY ({type(err).__name__}: {err})") from None
    if len(vertices) == 0 or not np.all(np.isfinite(vertices)):
        raise MeshReadError(f"{path}: no vertices, or NaN / infinite ones")
    if len(faces) and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise MeshReadError(f"{path}: face index out of range")
    return vertices, faces
