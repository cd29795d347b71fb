"""Textured meshes from a photo: the visible part of the face projected into a UV atlas.

What the original RingNet demo's `--save_texture` did, for this project's camera and crop:

1. `load_uv` (from `flame.uv`): UV coordinates in FLAME's texture-file layout, `vt` [NVT, 2] and
   `ft` [F, 3]: from FLAME's `FLAME_texture.npz` when given, else an xatlas unwrapping of the
   model's template (cached).
2. `project_texture`: every texel of the atlas is mapped to its point on the mesh (the UV triangle
   covering the texel centre, with barycentrics), that point through the network's camera into the
   crop, and through the inverse of the crop box's affine map into the photo, which is sampled
   bilinearly. Only points the camera sees get colour: front-facing (the surface normal within
   `max_angle_deg` of the viewing direction) and not hidden behind another part of the mesh (the
   renderer's z-buffer, `ringnet_tf.render.visible_points`). Colours are then dilated a few texels
   across chart borders (no dark seams under bilinear filtering) and the rest gets one neutral
   colour.
3. `write_textured_obj`: `name.obj` (`mtllib`, `v`, `vt`, `usemtl`, `f v/vt`, FLAME's vertex order
   kept), `name.mtl` (`map_Kd name.png`) and `name.png`, all three or none (`textured_obj_files`
   gives the bytes, for a caller that writes them with its other outputs in one set).

Conventions: texture rows grow downwards and OBJ's v grows upwards, so texel (row r, column c) of a
T x T texture has its centre at UV (u, v) = ((c + 0.5) / T, 1 - (r + 0.5) / T).
Letters in shapes: V vertices, F faces, NVT texture coordinates, T texture side, H x W the photo.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path

import cv2
import numpy as np

from flame.fileutil import write_all
from flame.uv import load_uv  # noqa: F401  (re-exported: the demo's one import for textures)
from ringnet_tf import render
from ringnet_tf.camera import project
from ringnet_tf.render import checks

__all__ = ["load_uv", "uv_raster", "project_texture", "textured_obj_files", "write_textured_obj",
           "sample_texture"]

# Texels facing the camera more obliquely than this get no colour: at grazing angles one photo
# pixel smears over many texels, and the silhouette's pixels mix in the background.
DEFAULT_MAX_ANGLE_DEG = 75.0
# Texels within this many photo pixels of the mesh's outline get no colour.
DEFAULT_SILHOUETTE_MARGIN = 2.0
# Largest side of the visibility render (the z-buffer in the crop's frame, at about the photo's
# resolution of the box).
_MAX_VIS_SIZE = 1024
# ... and its smallest: occlusion is decided to about a z-buffer pixel, finer than a small crop's.
_MIN_VIS_SIZE = 512
_MATERIAL = "material0"


# ---------------------------------------------------------------------------------------------
# The atlas: which face covers each texel, and where in it.

_raster_memo: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def uv_raster(vt: np.ndarray, ft: np.ndarray, tex_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Rasterises the UV triangles into the texture: the face covering each texel centre.

    Uses the project's rasteriser (`ringnet_tf.render`) on the UV layout laid out as a flat mesh
    in the image plane, so coverage follows its exact fill rule (no cracks, no texel drawn twice).
    The last result is memoised (a demo textures many photos with one atlas).

    Args:
      vt: [NVT, 2] float UV coordinates (v up).
      ft: [F, 3] int indices into vt.
      tex_size: T, the texture's side in texels.
    Returns:
      face: [T, T] int32 index into ft of the triangle covering the texel centre; -1 where none.
      bary: [T, T, 3] float32 barycentric weights of the texel centre in that triangle (0 where
        none), in [0, 1], summing to 1.
    """
    vt = np.asarray(vt, np.float64)
    ft = np.asarray(ft, np.int64)
    key = hashlib.sha1(vt.tobytes() + ft.tobytes() + str((vt.shape, ft.shape, tex_size)).encode()
                       ).hexdigest()
    if key in _raster_memo:
        return _raster_memo[key]
    size = int(tex_size)
    # With cam (1, 0, 0), X = 2u - 1 and Y = 2v - 1 project to pixel (T u - 0.5, T (1 - v) - 0.5):
    # texel centres at whole numbers, row 0 at v = 1 (see `ringnet_tf.camera`).
    flat = np.stack([2.0 * vt[:, 0] - 1.0, 2.0 * vt[:, 1] - 1.0, np.zeros(len(vt))], axis=1)
    result = render.render(flat, ft, (1.0, 0.0, 0.0), size, ambient=1.0, diffuse=0.0)
    face = result.face_index
    rows, cols = np.nonzero(face >= 0)
    f = face[rows, cols]
    # Barycentrics of the texel centres from the exact (unsnapped) UV triangle; the rasteriser
    # snaps corners to 1/256 texel, so clip the tiny overshoot at edges and renormalise.
    corners = ft[f]                                    # [N, 3]
    pu = vt[corners, 0] * size - 0.5                   # [N, 3] texel coordinates (column)
    pv = (1.0 - vt[corners, 1]) * size - 0.5           # [N, 3] (row)
    x, y = cols.astype(np.float64), rows.astype(np.float64)
    area = (pu[:, 1] - pu[:, 0]) * (pv[:, 2] - pv[:, 0]) - (pv[:, 1] - pv[:, 0]) * (pu[:, 2] - pu[:, 0])
    w0 = ((pu[:, 1] - x) * (pv[:, 2] - y) - (pv[:, 1] - y) * (pu[:, 2] - x)) / area
    w1 = ((pu[:, 2] - x) * (pv[:, 0] - y) - (pv[:, 2] - y) * (pu[:, 0] - x)) / area
    w = np.clip(np.stack([w0, w1, 1.0 - w0 - w1], axis=1), 0.0, 1.0)
    w /= w.sum(axis=1, keepdims=True)
    bary = np.zeros((size, size, 3), np.float32)
    bary[rows, cols] = w
    face.setflags(write=False)
    bary.setflags(write=False)
    _raster_memo.clear()  # one entry: a texture at 1024 is 16 MB of barycentrics
    _raster_memo[key] = (face, bary)
    return face, bary


# ---------------------------------------------------------------------------------------------
# Projection.

def _check_photo(photo_rgb) -> np.ndarray:
    photo = np.asarray(photo_rgb)
    if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8 or photo.size == 0:
        raise ValueError(f"photo_rgb must be [H, W, 3] uint8 RGB; got {photo.shape} {photo.dtype}")
    return photo


def _check_uv(vt, ft, num_faces: int) -> tuple[np.ndarray, np.ndarray]:
    vt = np.asarray(vt, np.float64)
    ft = np.asarray(ft)
    if vt.ndim != 2 or vt.shape[1] != 2 or not np.isfinite(vt).all():
        raise ValueError(f"vt must be finite [NVT, 2]; got shape {vt.shape}")
    if ft.shape != (num_faces, 3) or not np.issubdtype(ft.dtype, np.integer):
        raise ValueError(f"ft must be [F, 3] = [{num_faces}, 3] integers (one row per face); got "
                         f"{ft.shape} {ft.dtype}")
    if ft.size and (ft.min() < 0 or ft.max() >= len(vt)):
        raise ValueError(f"ft must index the {len(vt)} rows of vt; got [{ft.min()}, {ft.max()}]")
    return vt, ft.astype(np.int64)


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[N, 3] float32 colours of an [H, W, 3] image at pixel coordinates x, y ([N], centres at
    whole numbers), clamped to the outermost pixel centres."""
    h, w = image.shape[:2]
    x = np.clip(x, 0.0, w - 1.0)
    y = np.clip(y, 0.0, h - 1.0)
    x0 = np.minimum(np.floor(x).astype(np.int64), max(w - 2, 0))
    y0 = np.minimum(np.floor(y).astype(np.int64), max(h - 2, 0))
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx = (x - x0).astype(np.float32)[:, None]
    fy = (y - y0).astype(np.float32)[:, None]
    flat = image.reshape(-1, 3)
    c00, c01 = flat[y0 * w + x0].astype(np.float32), flat[y0 * w + x1].astype(np.float32)
    c10, c11 = flat[y1 * w + x0].astype(np.float32), flat[y1 * w + x1].astype(np.float32)
    top = c00 + (c01 - c00) * fx
    bottom = c10 + (c11 - c10) * fx
    return top + (bottom - top) * fy


def _photo_pixels_per_texel(v: np.ndarray, faces: np.ndarray, vt: np.ndarray, ft: np.ndarray,
                            size: int, photo_pixels_per_unit: float) -> float:
    """Mean photo pixels across one texel: the mesh's scale in the photo over the atlas's
    (texels per model unit, from the ratio of the UV and surface areas)."""
    def area_sum(p: np.ndarray) -> float:
        e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
        if p.shape[-1] == 2:
            return 0.5 * float(np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]).sum())
        return 0.5 * float(np.linalg.norm(np.cross(e1, e2), axis=1).sum())

    surface, atlas = area_sum(v[faces]), area_sum(vt[ft])
    if surface <= 0 or atlas <= 0:
        return 1.0
    return photo_pixels_per_unit / (size * np.sqrt(atlas / surface))


def _sample_photo(photo: np.ndarray, xy: np.ndarray, pixels_per_texel: float) -> np.ndarray:
    """[N, 3] float32 bilinear photo colours at pixel points xy [N, 2], low-passed first when a
    texel spans several photo pixels (one sample per texel would alias: noisy skin, moire).

    Only the window the points read is blurred (plus the kernel's reach), so time and memory
    follow the head's size in the photo, not the photo's."""
    sigma = 0.5 * pixels_per_texel if pixels_per_texel > 2.0 else 0.0
    margin = int(np.ceil(4.0 * sigma)) + 2  # OpenCV's kernel radius is about 4 sigma
    h, w = photo.shape[:2]
    x0 = int(np.clip(np.floor(xy[:, 0].min()) - margin, 0, w - 1))
    x1 = int(np.clip(np.ceil(xy[:, 0].max()) + margin + 1, x0 + 1, w))
    y0 = int(np.clip(np.floor(xy[:, 1].min()) - margin, 0, h - 1))
    y1 = int(np.clip(np.ceil(xy[:, 1].max()) + margin + 1, y0 + 1, h))
    window = photo[y0:y1, x0:x1]
    if sigma:
        window = cv2.GaussianBlur(window, (0, 0), sigmaX=sigma, sigmaY=sigma)
    return _bilinear(np.ascontiguousarray(window), xy[:, 0] - x0, xy[:, 1] - y0)


def _dilate(colour: np.ndarray, known: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Grows known colours `steps` texels outwards, each new texel the mean of its known
    3 x 3 neighbours. colour: [T, T, 3] float32, known: [T, T] bool (both copied)."""
    colour = np.where(known[..., None], colour, 0.0).astype(np.float32)
    weight = known.astype(np.float32)
    known = known.copy()
    for _ in range(steps):
        summed = cv2.blur(colour, (3, 3), borderType=cv2.BORDER_CONSTANT)
        count = cv2.blur(weight, (3, 3), borderType=cv2.BORDER_CONSTANT)
        new = ~known & (count > 0)
        if not new.any():
            break
        colour[new] = summed[new] / count[new][:, None]
        weight[new] = 1.0
        known |= new
    return colour, known


def project_texture(photo_rgb: np.ndarray, vertices: np.ndarray, faces: np.ndarray,
                    cam: np.ndarray, box, crop_size: int, vt: np.ndarray, ft: np.ndarray,
                    tex_size: int = 1024, *, max_angle_deg: float = DEFAULT_MAX_ANGLE_DEG,
                    dilate: int | None = None, fill=None, vis_size: int | None = None,
                    tol: float | None = None, silhouette_margin: float = DEFAULT_SILHOUETTE_MARGIN
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Projects the photo onto the mesh's UV atlas: the texture of the visible surface.

    Args:
      photo_rgb: [H, W, 3] uint8 RGB, the whole photo.
      vertices: [V, 3] float, the fitted mesh in the model frame (what the network outputs).
      faces: [F, 3] int vertex indices.
      cam: [3] (s, tx, ty), the network's camera for the crop (`ringnet_tf.camera`).
      box: the crop's `preprocess.Box` in the photo (`box.affine(crop_size)`: photo -> crop pixels).
      crop_size: side of the crop the camera refers to, in pixels.
      vt: [NVT, 2] float UV coordinates in [0, 1] (v up); ft: [F, 3] int indices into vt.
      tex_size: T, the texture's side in texels.
      max_angle_deg: texels whose surface faces the camera more obliquely get no colour.
      dilate: texels the colours grow past their borders (seams); None: max(2, T // 128).
      fill: RGB (0..255) of the texels left; None: the mean colour of the projected texels.
      vis_size: side of the visibility z-buffer; None: about the box's size in photo pixels
        (at least 512, at most 1024).
      tol: depth tolerance of the visibility test, model units; None: half a z-buffer pixel's
        width (0.2 to 0.8 mm on a head filling the crop).
      silhouette_margin: texels whose point projects within this many photo pixels of the mesh's
        outline get no colour; 0 keeps them.
    Returns:
      texture: [T, T, 3] uint8 RGB, row 0 at v = 1 (as an OBJ's map_Kd image).
      mask: [T, T] bool, texels coloured from the photo (not the dilated or filled ones).
    Raises:
      ValueError: a malformed argument, named.
    """
    photo = _check_photo(photo_rgb)
    v = checks.check_vertices(vertices)
    faces = checks.check_faces(faces, len(v))
    cam = checks.check_cam(cam)
    crop_size = checks.check_size(crop_size)
    size = checks.check_size(tex_size)
    vt, ft = _check_uv(vt, ft, len(faces))
    if not np.isfinite(float(box.size)) or float(box.size) <= 0:
        raise ValueError(f"box must have a positive size; got {box!r}")
    if not 0 <= float(max_angle_deg) <= 90:
        raise ValueError(f"max_angle_deg must be in [0, 90]; got {max_angle_deg!r}")
    if dilate is not None and (isinstance(dilate, bool) or int(dilate) != dilate or dilate < 0):
        raise ValueError(f"dilate must be a whole number >= 0 or None; got {dilate!r}")
    if fill is not None and (np.shape(fill) != (3,) or not np.all((np.asarray(fill, float) >= 0)
                                                              & (np.asarray(fill, float) <= 255))):
        raise ValueError(f"fill must be None or 3 numbers in 0..255; got {fill!r}")
    vis_size = None if vis_size is None else checks.check_size(vis_size)
    silhouette_margin = checks.check_nonneg("silhouette_margin", silhouette_margin)
    face_of, bary = uv_raster(vt, ft, size)
    rows, cols = np.nonzero(face_of >= 0)
    f = face_of[rows, cols].astype(np.int64)
    w = bary[rows, cols].astype(np.float64)              # [N, 3]
    corners = faces[f]                                    # [N, 3] vertex indices
    points = (w[:, 0:1] * v[corners[:, 0]] + w[:, 1:2] * v[corners[:, 1]]
              + w[:, 2:3] * v[corners[:, 2]])             # [N, 3] surface points
    # Front-facing: the face's unit normal has z (towards the camera, whatever the sign of s: a
    # negative scale turns the image by 180 degrees, it does not mirror it) above cos(max angle).
    e1, e2 = v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]]
    normal = np.cross(e1, e2)
    length = np.linalg.norm(normal, axis=1)
    cos_view = np.divide(normal[:, 2], length, out=np.zeros(len(faces)), where=length > 0)
    facing = cos_view > np.cos(np.deg2rad(float(max_angle_deg)))
    # Visibility: the z-buffer of the mesh in the crop's view. The camera is resolution-free, so
    # it can be rendered at about the photo's resolution of the box rather than the crop's.
    if vis_size is None:
        vis_size = int(np.clip(np.ceil(float(box.size)), _MIN_VIS_SIZE, _MAX_VIS_SIZE))
    zbuf = render.render(v, faces, cam, vis_size, ambient=1.0, diffuse=0.0)
    seen = facing[f]
    if tol is None:
        # The test takes the nearest of the 2 x 2 surrounding depths, so a point on the visible
        # surface passes with next to no slack; a small one keeps thin layers apart (the open
        # head's eyeballs sit 1.7 mm behind the lids' skin).
        tol = 1.0 / (abs(cam[0]) * vis_size)
    seen[seen] = render.visible_points(points[seen], zbuf, cam, vis_size, tol=tol)
    if silhouette_margin > 0:
        # Photo pixels at the mesh's outline mix in the background (and a fitted mesh's outline
        # is never exact): skip points within the margin of it. The z-buffer spans the box, so
        # a photo pixel is vis_size / box.size of its pixels.
        radius = int(np.ceil(silhouette_margin * vis_size / float(box.size)))
        inner = cv2.erode(zbuf.mask.astype(np.uint8), np.ones((2 * radius + 1,) * 2, np.uint8),
                          borderValue=0).astype(bool)
        pix = np.rint(np.asarray(project(points[seen], cam, vis_size), np.float64)).astype(np.int64)
        pix = np.clip(pix, 0, vis_size - 1)
        seen[seen] = inner[pix[:, 1], pix[:, 0]]
    # Crop pixels -> photo pixels: the inverse of the box's affine map.
    affine = np.asarray(box.affine(crop_size), np.float64)
    crop_xy = np.asarray(project(points[seen], cam, crop_size), np.float64)
    photo_xy = (crop_xy - affine[:, 2]) @ np.linalg.inv(affine[:, :2]).T
    h, wd = photo.shape[:2]
    inside = ((photo_xy[:, 0] >= -0.5) & (photo_xy[:, 0] <= wd - 0.5)
              & (photo_xy[:, 1] >= -0.5) & (photo_xy[:, 1] <= h - 0.5))
    seen[seen] = inside
    photo_xy = photo_xy[inside]
    colour = np.zeros((size, size, 3), np.float32)
    mask = np.zeros((size, size), bool)
    r, c = rows[seen], cols[seen]
    if len(photo_xy):
        colour[r, c] = _sample_photo(photo, photo_xy, _photo_pixels_per_texel(
            v, faces, vt, ft, size, abs(cam[0]) * float(box.size) / 2.0))
    mask[r, c] = True
    steps = max(2, size // 128) if dilate is None else int(dilate)
    colour, known = _dilate(colour, mask, steps)
    if fill is None:
        fill = colour[mask].mean(axis=0) if mask.any() else (128.0, 128.0, 128.0)
    colour[~known] = np.asarray(fill, np.float32)
    texture = np.clip(np.rint(colour), 0, 255).astype(np.uint8)
    return texture, mask


def sample_texture(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """[N, 3] float32 bilinear colours of a [T, T, 3] texture at UV points [N, 2] (v up)."""
    tex = np.asarray(texture)
    uv = np.asarray(uv, np.float64)
    size_y, size_x = tex.shape[:2]
    return _bilinear(tex, uv[:, 0] * size_x - 0.5, (1.0 - uv[:, 1]) * size_y - 0.5)


# ---------------------------------------------------------------------------------------------
# Writing.

def _sidecar_stem(path: Path) -> str:
    # `mtllib` and `map_Kd` take whitespace-separated names: keep the side files' names plain.
    return re.sub(r"\s", "_", path.stem)


def textured_paths(obj: str | os.PathLike) -> dict[str, Path]:
    """The three files `textured_obj_files` writes for an OBJ path: textured, textured_mtl,
    textured_png (so a caller can check them all before writing)."""
    obj = Path(obj)
    stem = _sidecar_stem(obj)
    return {"textured": obj, "textured_mtl": obj.with_name(stem + ".mtl"),
            "textured_png": obj.with_name(stem + ".png")}


def textured_obj_files(path: str | os.PathLike, vertices: np.ndarray, faces: np.ndarray,
                       vt: np.ndarray, ft: np.ndarray, texture: np.ndarray,
                       digits: int = 6) -> dict[Path, bytes]:
    """The bytes of a textured OBJ: `name.obj`, `name.mtl` and `name.png` beside it.

    The OBJ has one `v` per vertex in the given order (FLAME's landmark and region indices stay
    valid), one `vt` per row of vt, and `f v/vt` triangles in the faces' order.

    Args:
      path: the `.obj` path; the material and texture take its stem (whitespace replaced by `_`).
      vertices: [V, 3] float; faces: [F, 3] int vertex indices.
      vt: [NVT, 2] float UV (v up); ft: [F, 3] int indices into vt.
      texture: [T, T', 3] uint8 RGB image (row 0 at v = 1).
      digits: decimals of the coordinates.
    Returns:
      {obj path: bytes, mtl path: bytes, png path: bytes}.
    Raises:
      ValueError: a wrong suffix or malformed arrays (naming the path).
    """
    path = Path(path)
    if path.suffix.lower() != ".obj":
        raise ValueError(f"{path}: a textured mesh is written as .obj; got suffix {path.suffix!r}")
    v = np.asarray(vertices, np.float64)
    if v.ndim != 2 or v.shape[1] != 3 or not np.isfinite(v).all():
        raise ValueError(f"{path}: vertices must be finite [V, 3]; got shape {v.shape}")
    f = np.asarray(faces)
    if f.ndim != 2 or f.shape[1] != 3 or not np.issubdtype(f.dtype, np.integer) \
            or (f.size and (f.min() < 0 or f.max() >= len(v))):
        raise ValueError(f"{path}: faces must be [F, 3] integer indices below {len(v)}")
    try:
        vt, ft = _check_uv(vt, ft, len(f))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    tex = np.asarray(texture)
    if tex.ndim != 3 or tex.shape[2] != 3 or tex.dtype != np.uint8 or tex.size == 0:
        raise ValueError(f"{path}: texture must be [T, T, 3] uint8 RGB; got {tex.shape} {tex.dtype}")
    stem = _sidecar_stem(path)
    mtl_path, png_path = path.with_name(stem + ".mtl"), path.with_name(stem + ".png")
    ok, png = cv2.imencode(".png", cv2.cvtColor(tex, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"{png_path}: PNG encoding failed")
    text = io.StringIO()
    text.write(f"# RingNet-TF textured mesh: {len(v)} vertices, {len(f)} faces\n")
    text.write(f"mtllib {mtl_path.name}\n")
    np.savetxt(text, v, fmt=f"v %.{digits}f %.{digits}f %.{digits}f")
    np.savetxt(text, vt, fmt=f"vt %.{digits}f %.{digits}f")
    text.write(f"usemtl {_MATERIAL}\n")
    # OBJ indices are 1-based: f v1/t1 v2/t2 v3/t3.
    pairs = np.stack([f.astype(np.int64) + 1, ft + 1], axis=2).reshape(-1, 6)
    np.savetxt(text, pairs, fmt="f %d/%d %d/%d %d/%d")
    mtl = (f"newmtl {_MATERIAL}\nKa 1.000000 1.000000 1.000000\nKd 1.000000 1.000000 1.000000\n"
           f"Ks 0.000000 0.000000 0.000000\nd 1.0\nillum 1\nmap_Kd {png_path.name}\n")
    return {path: text.getvalue().encode(), mtl_path: mtl.encode(), png_path: png.tobytes()}


def write_textured_obj(path: str | os.PathLike, vertices: np.ndarray, faces: np.ndarray,
                       vt: np.ndarray, ft: np.ndarray, texture: np.ndarray) -> list[Path]:
    """Writes `name.obj`, `name.mtl` and `name.png` (see `textured_obj_files`), all three or none
    (`flame.fileutil.write_all`: temporary files renamed into place; on any error none remains).
    Returns the three paths (obj, mtl, png)."""
    return write_all(textured_obj_files(path, vertices, faces, vt, ft, texture))
