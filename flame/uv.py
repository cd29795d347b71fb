"""UV coordinates for FLAME-topology meshes, in the layout of FLAME's texture-space file.

FLAME's texture space (`FLAME_texture.npz`, from the FLAME website; licence-bound, never shipped
here) holds `vt` [NVT, 2] float UV coordinates in [0, 1] (v up, as in OBJ files) and `ft` [F, 3] int
per-face indices into `vt`, in the model's face order (plus an albedo model, `mean` / `tex_dir`,
not used here). A vertex on a seam has several `vt` entries, so UVs are per face corner, not per
vertex: an OBJ writes them as `f v/vt`.

The open head model (`flame.openhead`) has no such file: `load_uv` then unwraps the model's
template with xatlas (charts by surface curvature, packed into one square atlas), once per mesh:
the result is cached under `<cache root>/uv/`, keyed by a hash of the vertices and faces, the
xatlas version and this module's options. xatlas is deterministic for a given input and version
(no random seed to set; the tests compare two runs).

Letters in shapes: V vertices, F faces, NVT texture coordinates.
"""
from __future__ import annotations

import hashlib
import io
import os
import pathlib
import zipfile

import numpy as np

from flame.fileutil import atomic_write, cache_root
from flame.io import FlameFileError
from flame.model import FlameModel

# Bump when the conversion below changes: it is part of the cache key (as are xatlas's version
# and the options).
UV_ATLAS_VERSION = "1"
# Padding between charts in xatlas's own atlas texels (its atlas is about 500 texels wide for a
# head); the texture projection also dilates colours across chart borders.
_PADDING = 2
# Chart growing: xatlas's defaults (made for light maps) leave some 110 charts of 1 to 9 faces on
# the open head; more iterations, a higher cost limit and rounder charts give about 40 charts
# (6 tiny) at the same stretch and packing, i.e. fewer seams across the face.
_CHART_OPTIONS = {"max_iterations": 4, "max_cost": 4.0, "roundness_weight": 0.1}


def _xatlas_version() -> str:
    import xatlas

    return str(getattr(xatlas, "__version__", "unknown"))


def mesh_key(vertices: np.ndarray, faces: np.ndarray) -> str:
    """A hex digest of a mesh's content (float32 vertices, int64 faces) and of the unwrapper."""
    h = hashlib.sha256()
    h.update(f"uv-atlas {UV_ATLAS_VERSION} xatlas {_xatlas_version()} {sorted(_CHART_OPTIONS.items())}"
             f" padding {_PADDING}".encode())
    for arr in (np.asarray(vertices, np.float32), np.asarray(faces, np.int64)):
        h.update(str(arr.shape).encode())
        # + 0: -0.0 and 0.0 hash alike.
        h.update(np.ascontiguousarray(arr + arr.dtype.type(0)).tobytes())
    return h.hexdigest()[:24]


def compute_uv_atlas(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unwraps a triangle mesh into one square UV atlas with xatlas (no cache).

    Args:
      vertices: [V, 3] float.
      faces: [F, 3] int vertex indices.
    Returns:
      vt: [NVT, 2] float64 UV coordinates in [0, 1] (v up as in OBJ; a texel row r of a T-row image
        holds v = 1 - (r + 0.5) / T).
      ft: [F, 3] int64 indices into vt, face for face as `faces`.
    Raises:
      ValueError: xatlas did not return one atlas whose faces match the input's.
    """
    import xatlas

    v = np.ascontiguousarray(vertices, np.float32)
    f = np.ascontiguousarray(faces, np.uint32)
    atlas = xatlas.Atlas()
    atlas.add_mesh(v, f)
    chart_options = xatlas.ChartOptions()
    for name, value in _CHART_OPTIONS.items():
        setattr(chart_options, name, value)
    pack_options = xatlas.PackOptions()
    pack_options.padding = _PADDING
    pack_options.bilinear = True  # keep a texel of gutter for bilinear filtering
    # resolution and texels_per_unit stay 0: xatlas picks the scale that fills one atlas.
    atlas.generate(chart_options, pack_options)
    vmapping, indices, uvs = atlas[0]
    vmapping = np.asarray(vmapping, np.int64)
    ft = np.asarray(indices, np.int64).reshape(-1, 3)
    if atlas.atlas_count != 1 or ft.shape != f.shape or not np.array_equal(vmapping[ft], f):
        raise ValueError(f"xatlas returned {atlas.atlas_count} atlases and {len(ft)} faces for a "
                         f"mesh of {len(f)}: cannot map its UVs onto the mesh's faces")
    # xatlas normalises u by the atlas's width and v by its height, which differ: rescale both by
    # the larger side so that charts keep their proportions in a square texture.
    width, height = float(atlas.width), float(atlas.height)
    side = max(width, height)
    vt = np.asarray(uvs, np.float64) * np.array([width / side, height / side])
    # Centre the packed rectangle in the square (the unused strip is split between two sides).
    vt += np.array([(side - width) / (2 * side), (side - height) / (2 * side)])
    return vt, ft


def _npz_bytes(vt: np.ndarray, ft: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, vt=vt, ft=ft)
    return buf.getvalue()


def uv_atlas(vertices: np.ndarray, faces: np.ndarray, cache_dir: str | os.PathLike | None = None,
             use_cache: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """`compute_uv_atlas`, cached: `<cache root>/uv/xatlas-<mesh_key>.npz`, written atomically.

    A cache file that cannot be read or does not fit the mesh is recomputed and replaced. With
    `use_cache` False nothing is read or written. Returns (vt [NVT, 2] float64, ft [F, 3] int64).
    """
    faces = np.asarray(faces, np.int64)
    path = cache_root(cache_dir) / "uv" / f"xatlas-{mesh_key(vertices, faces)}.npz"
    if use_cache and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as npz:
                vt, ft = np.asarray(npz["vt"], np.float64), np.asarray(npz["ft"], np.int64)
            _check_uv(path, vt, ft, len(faces))
            return vt, ft
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # a damaged or stale entry: recompute below
    vt, ft = compute_uv_atlas(vertices, faces)
    if use_cache:
        data = _npz_bytes(vt, ft)
        try:
            atomic_write(path, lambda f: f.write(data))
        except OSError:
            pass  # a read-only cache costs time, not correctness
    return vt, ft


def _check_uv(path: str | os.PathLike, vt: np.ndarray, ft: np.ndarray, num_faces: int) -> None:
    """Raises FlameFileError (one line naming `path`) unless vt / ft fit a mesh of num_faces."""
    if vt.ndim != 2 or vt.shape[1] != 2 or len(vt) == 0:
        raise FlameFileError(path, f"vt must be [NVT, 2] texture coordinates; got shape {vt.shape}")
    if not np.issubdtype(vt.dtype, np.floating) and not np.issubdtype(vt.dtype, np.integer):
        raise FlameFileError(path, f"vt must hold numbers; got dtype {vt.dtype}")
    if not np.all(np.isfinite(vt)):
        raise FlameFileError(path, "vt holds NaN or infinite values")
    if ft.ndim != 2 or ft.shape != (num_faces, 3):
        raise FlameFileError(path, f"ft must be [F, 3] = [{num_faces}, 3] (one row per face of the "
                                   f"model); got shape {ft.shape}: a texture file of another model?")
    if not np.issubdtype(ft.dtype, np.integer):
        raise FlameFileError(path, f"ft must hold integer indices into vt; got dtype {ft.dtype}")
    if ft.min() < 0 or ft.max() >= len(vt):
        raise FlameFileError(path, f"ft indexes vt out of range: indices in [{ft.min()}, {ft.max()}],"
                                   f" vt has {len(vt)} rows")


def read_texture_file(path: str | os.PathLike, num_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """`vt` and `ft` of FLAME's texture-space file (`FLAME_texture.npz`), validated.

    Args:
      path: the .npz (read without pickle; other keys, such as the albedo model, are ignored).
      num_faces: the model's face count F, which `ft` must match.
    Returns:
      vt [NVT, 2] float64, ft [F, 3] int64.
    Raises:
      FlameFileError: one line naming the file: missing, unreadable, a missing key or wrong shapes.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FlameFileError(path, "no such file; expected FLAME's texture space, FLAME_texture.npz")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("vt", "ft") if k not in npz.files]
            if missing:
                raise FlameFileError(path, f"no {' or '.join(missing)} array (keys: "
                                           f"{', '.join(npz.files) or 'none'}); expected FLAME's "
                                           "texture space with vt [NVT, 2] and ft [F, 3]")
            vt, ft = np.asarray(npz["vt"]), np.asarray(npz["ft"])
    except FlameFileError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        detail = " ".join(str(e).split()) or type(e).__name__
        raise FlameFileError(path, f"not a readable .npz of arrays ({detail})") from None
    _check_uv(path, vt, ft, num_faces)
    vt = vt.astype(np.float64)
    # A little slack for float rounding in the file; a real layout lies inside the unit square.
    if vt.min() < -1e-4 or vt.max() > 1 + 1e-4:
        raise FlameFileError(path, f"vt must lie in [0, 1]; got values in [{vt.min():.4g}, "
                                   f"{vt.max():.4g}]")
    return np.clip(vt, 0.0, 1.0), ft.astype(np.int64)


def load_uv(flame_model: FlameModel, texture_file: str | os.PathLike | None = None,
            cache_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """UV coordinates for a model's mesh: from FLAME's texture file when given, else an xatlas
    unwrapping of the model's template (`uv_atlas`, cached).

    Args:
      flame_model: the model whose `faces` the UVs must follow.
      texture_file: FLAME_texture.npz, or None.
      cache_dir: cache root for the atlas (default: $RINGNET_TF_CACHE or ~/.cache/ringnet_tf).
    Returns:
      vt [NVT, 2] float64 in [0, 1] (v up), ft [F, 3] int64 indices into vt, one row per face.
    Raises:
      FlameFileError: the texture file is unreadable or does not fit the model (one line).
    """
    if texture_file is not None:
        return read_texture_file(texture_file, flame_model.num_faces)
    return uv_atlas(flame_model.v_template, flame_model.faces, cache_dir=cache_dir)
