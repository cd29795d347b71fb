"""A headless CPU renderer for FLAME-topology meshes, in vectorised NumPy (no OpenGL, no display).

`render` draws a triangle mesh through the project's weak-perspective camera (`ringnet_tf.camera`):
z-buffered, smooth-shaded (per-vertex normals interpolated per pixel, Lambertian diffuse plus
ambient light), with per-vertex colours. It also returns the coverage mask, the depth and the index
of the triangle seen at every pixel, which `visible_points` uses to tell self-occluded points (the
synthetic data generator lowers the confidence of hidden landmarks with it). `overlay` blends a
render over a photo (the demo) and `side_view` renders the mesh turned about the vertical axis.

Conventions (those of `ringnet_tf.camera`): model frame y up, z towards the camera, which looks
along -Z; larger Z is nearer. Pixel (row i, column j) is sampled at its centre, (u, v) = (j, i) in
`camera.project`'s pixel coordinates, and covers u in [j - 0.5, j + 0.5), v in [i - 0.5, i + 0.5).

Rasterisation rules (what the tests check):
- Vertex positions are snapped to 1/256 pixel, and coverage is decided exactly (integer arithmetic
  carried in float64) on the snapped triangle: a pixel is covered when its centre is inside. A
  centre exactly on an edge shared by two triangles goes to exactly one of them (a top-left style
  rule: the sample is nudged infinitesimally towards -u, then slightly -v), so a closed or
  connected mesh has neither cracks nor doubly drawn pixels. A brute-force point-in-triangle test
  on the unsnapped triangle agrees everywhere except at centres within 1/256 pixel of an edge.
- Depth is interpolated on the snapped triangle (so it differs from the exact triangle's by at
  most its depth gradient times 1/256 pixel). Visibility: the largest depth wins, compared at
  float32 precision; exact ties go to the lower face index. Deterministic: the same inputs give
  the same bytes.
- Shading: colour = albedo * (ambient + diffuse * max(0, n . l)), n the interpolated vertex normal
  (normals from the faces' winding: counter-clockwise seen from outside, as trimesh and FLAME),
  l the unit direction towards the light, clipped to [0, 1] and rounded to uint8. Triangles seen
  from behind are lit two-sided (their normal is flipped towards the camera) unless culled.
- Vertices projected more than 65,536 pixels from the image's origin drop their triangles.

How it is fast: triangles are grouped by the size of their pixel bounding box (rounded up to a
power of two) and each group is tested against tiles of that size in one broadcast NumPy
expression, in chunks small enough to stay in the CPU cache; the z-buffer is one `np.maximum.at`
over 64-bit keys (depth in the high half, face index in the low half); front faces are drawn
first, and back faces that the result surely hides (most of them, on a head) are skipped; shading
is a pass over covered pixels only. A FLAME-sized head at 224 x 224 takes about 6 ms of one core
of the project's machines (4 ms with `cull_backfaces`): `bench/render_speed.py`. OpenGL through
Mesa's software rasteriser (llvmpipe, headless EGL, moderngl) draws the same pictures with about
30% less CPU there, but needs system packages and a working GL stack, and promises no identical
bytes across drivers; this module needs NumPy only.
"""
from __future__ import annotations

import ctypes
import dataclasses
import functools
import numbers
import sys

import numpy as np

from ringnet_tf.camera import project

# Sub-pixel precision of the snapped vertex positions (a power of two: exact float arithmetic).
_SUB = 256.0
_HALF = _SUB / 2
# |snapped coordinate| limit in sub-pixel units; keeps every edge value below 2**53 (exact).
_COORD_LIMIT = float(2 ** 24)
# Candidate (pixel, triangle) pairs per broadcast chunk: small enough to stay in the L2 cache.
_CHUNK = 1 << 15
_LOW31 = 0x7FFFFFFF
# The empty z-buffer key: below every drawn key (depth -inf never occurs), and it unpacks to
# depth -inf and face index -1 (see `_pack`).
_EMPTY = ((0xFF800000 ^ _LOW31) - (1 << 32)) * (1 << 32) + (1 << 31)

DEFAULT_COLOR = (0.78, 0.72, 0.68)
"""The default albedo, a light skin-like grey (RGB in [0, 1])."""
DEFAULT_LIGHT_DIR = (-1.0, 1.0, 2.0)
"""Towards the light, model frame: in front, from the viewer's upper left (normalised when used)."""
DEFAULT_AMBIENT = 0.35
DEFAULT_DIFFUSE = 0.65


@dataclasses.dataclass(frozen=True, eq=False)
class RenderResult:
    """What `render` returns; H = W = image_size.

    Attributes:
      image: [H, W, 3] uint8 RGB, the shaded mesh over the background.
      mask: [H, W] bool, pixels whose centre the mesh covers.
      depth: [H, W] float32 model-frame Z of the visible surface at the pixel centre (larger is
        nearer the camera); -inf where the mesh does not cover the pixel.
      face_index: [H, W] int32 index into `faces` of the triangle seen at the pixel; -1 where empty.
    """

    image: np.ndarray
    mask: np.ndarray
    depth: np.ndarray
    face_index: np.ndarray


# ---------------------------------------------------------------------------------------------
# The C heap. A render allocates and frees a few MB of NumPy temporaries; glibc gives freed memory
# at the top of its heap back to the kernel as soon as more than a few times the largest recent
# block is free, so the next render faults the same pages in again. On the project's (virtual)
# machines a page fault costs about 2 us: some 2,000 of them per 224 x 224 render, 4 ms, cost
# nearly as much as the rendering itself. Asking glibc to keep 64 MB of slack when it trims (M_TOP_PAD)
# removes them; it changes nothing but how soon this process returns freed memory to the system.

_M_TOP_PAD = -2  # from glibc's malloc.h
_HEAP_PAD_BYTES = 64 << 20
_heap_tuned = False


def _keep_heap_slack() -> None:
    """Once per process, on glibc only: mallopt(M_TOP_PAD, 64 MB); a no-op elsewhere."""
    global _heap_tuned
    if _heap_tuned:
        return
    _heap_tuned = True
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).mallopt(_M_TOP_PAD, _HEAP_PAD_BYTES)
    except (OSError, AttributeError):  # no mallopt in this C library: nothing to tune
        pass


# ---------------------------------------------------------------------------------------------
# Argument checking: every error names the argument and the offending value or shape.

def _check_size(image_size) -> int:
    if isinstance(image_size, (bool, np.bool_)) or not isinstance(image_size, numbers.Integral) \
            or image_size < 1:
        raise ValueError(f"image_size must be a positive integer; got {image_size!r}")
    return int(image_size)


def _check_vertices(vertices) -> np.ndarray:
    v = np.asarray(vertices, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"vertices must be [V, 3]; got shape {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError("vertices must be finite; got NaN or inf")
    return v


def _check_faces(faces, num_vertices: int) -> np.ndarray:
    f = np.asarray(faces)
    if f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"faces must be [F, 3]; got shape {f.shape}")
    if f.size and not np.issubdtype(f.dtype, np.integer):
        raise ValueError(f"faces must hold integer vertex indices; got dtype {f.dtype}")
    f = f.astype(np.int64, copy=False)
    if f.size and (f.min() < 0 or f.max() >= num_vertices):
        raise ValueError(f"faces must index the {num_vertices} vertices; "
                         f"got indices in [{f.min()}, {f.max()}]")
    if len(f) > _LOW31:
        raise ValueError(f"faces: at most {_LOW31} triangles; got {len(f)}")
    return f


def _check_cam(cam) -> np.ndarray:
    c = np.asarray(cam, dtype=np.float64)
    if c.shape != (3,) or not np.isfinite(c).all() or c[0] == 0:
        raise ValueError(f"cam must be 3 finite numbers (s, tx, ty) with s != 0; got {cam!r}")
    return c


def _check_nonneg(name: str, value) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) \
            or not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
    return float(value)


def _check_colors(colors, num_vertices: int) -> np.ndarray | None:
    if colors is None:
        return None
    c = np.asarray(colors)
    if c.shape != (num_vertices, 3):
        raise ValueError(f"colors must be [V, 3] = [{num_vertices}, 3]; got shape {c.shape}")
    if c.dtype == np.uint8:
        return c.astype(np.float64) / 255.0
    c = c.astype(np.float64)
    if not np.isfinite(c).all() or c.min(initial=0.0) < 0 or c.max(initial=0.0) > 1:
        raise ValueError(f"colors must be floats in [0, 1] (or uint8); got values in "
                         f"[{np.nanmin(c)}, {np.nanmax(c)}]")
    return c


def _check_light(light_dir) -> np.ndarray:
    l = np.asarray(light_dir, dtype=np.float64)
    norm = np.linalg.norm(l) if l.shape == (3,) and np.isfinite(l).all() else 0.0
    if norm == 0:
        raise ValueError(f"light_dir must be 3 finite numbers, not all zero; got {light_dir!r}")
    return l / norm


def _check_background(background, size: int) -> np.ndarray:
    """Returns the background as an [H, W, 3] uint8 array (a fresh copy)."""
    if background is None:
        return np.zeros((size, size, 3), np.uint8)
    if isinstance(background, np.ndarray) and background.ndim == 3:
        if background.shape != (size, size, 3) or background.dtype != np.uint8:
            raise ValueError(f"background image must be [{size}, {size}, 3] uint8; got "
                             f"{background.shape} {background.dtype}")
        return background.copy()
    rgb = np.asarray(background)
    if rgb.shape != (3,) or not np.issubdtype(rgb.dtype, np.number) \
            or not np.all((rgb >= 0) & (rgb <= 255)):
        raise ValueError(f"background must be None, an RGB tuple of 0..255 or a [{size}, {size}, 3]"
                         f" uint8 image; got {background!r}")
    out = np.empty((size, size, 3), np.uint8)
    out[...] = np.round(rgb.astype(np.float64)).astype(np.uint8)
    return out


# ---------------------------------------------------------------------------------------------
# Rasterisation.

@functools.lru_cache(maxsize=16)
def _tile_tables(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Bounding-box extent in pixels (1..size) -> (tile side: the next power of two, at most
    size; a small code that orders the sides)."""
    sides = np.ones(size + 1, np.int64)
    for n in range(2, size + 1):
        sides[n] = min(1 << (n - 1).bit_length(), size)
    codes = np.searchsorted(np.unique(sides), sides).astype(np.uint16)
    sides.setflags(write=False)
    codes.setflags(write=False)
    return sides, codes


@dataclasses.dataclass
class _Triangles:
    """The drawable triangles' set-up, one entry (or column of [3, n]) per triangle."""
    ids: np.ndarray       # [n] index into faces
    front: np.ndarray     # [n] bool, facing the camera
    box: np.ndarray       # [4, n] int64 first column, last column, first row, last row covered
    a: np.ndarray         # [3, n] edge functions E_i = a_i x + b_i y + c_i (sub-pixel units),
    b: np.ndarray         #        positive inside, exact integers in float64; c includes the
    c: np.ndarray         #        fill rule's -1 on edges that do not own their centres
    z_origin: np.ndarray  # [n] depth at sub-pixel (0, 0) of the triangle's plane
    gx: np.ndarray        # [n] depth change per sub-pixel unit of x
    gy: np.ndarray        # [n] ... of y
    z_max: np.ndarray     # [n] largest vertex depth


def _min3(v: np.ndarray) -> np.ndarray:
    return np.minimum(np.minimum(v[0], v[1]), v[2])


def _max3(v: np.ndarray) -> np.ndarray:
    return np.maximum(np.maximum(v[0], v[1]), v[2])


def _set_up(qx, qy, z, corners, size, cull_backfaces) -> _Triangles | None:
    x = qx.take(corners)  # [3, F]
    y = qy.take(corners)
    area = (x[1] - x[0]) * (y[2] - y[0]) - (y[1] - y[0]) * (x[2] - x[0])
    # Pixel rows grow downwards, so a triangle facing the camera (counter-clockwise in the model)
    # turns clockwise in pixels: negative area.
    keep = area < 0 if cull_backfaces else area != 0
    # Pixel centres covered by the bounding box, clipped to the image.
    box = np.stack([np.maximum(np.ceil((_min3(x) - _HALF) / _SUB), 0),
                    np.minimum(np.floor((_max3(x) - _HALF) / _SUB), size - 1),
                    np.maximum(np.ceil((_min3(y) - _HALF) / _SUB), 0),
                    np.minimum(np.floor((_max3(y) - _HALF) / _SUB), size - 1)])
    keep &= (box[1] >= box[0]) & (box[3] >= box[2])
    if max(np.abs(qx).max(initial=0), np.abs(qy).max(initial=0)) >= _COORD_LIMIT:
        keep &= (np.abs(x) < _COORD_LIMIT).all(0) & (np.abs(y) < _COORD_LIMIT).all(0)
    ids = np.flatnonzero(keep)
    if not len(ids):
        return None
    x, y, area = x.take(ids, axis=1), y.take(ids, axis=1), area.take(ids)
    box = box.take(ids, axis=1).astype(np.int64)
    # Edge i runs from corner i + 1 to corner i + 2, oriented so that the inside is positive:
    # E_i(p) = cross(Q - P, p - P) = a_i p_x + b_i p_y + c_i.
    sign = np.where(area < 0, -1.0, 1.0)
    px, py = x.take([1, 2, 0], axis=0), y.take([1, 2, 0], axis=0)
    dx = (x.take([2, 0, 1], axis=0) - px) * sign
    dy = (y.take([2, 0, 1], axis=0) - py) * sign
    # A centre exactly on an edge belongs to it when dy > 0, or dy == 0 and dx < 0: the same as
    # nudging the sample towards (-1, -epsilon); opposite edges of two neighbours disagree, so
    # exactly one of them takes it. Non-owned edges need E >= 1 (E is an integer).
    owner = (dy > 0) | ((dy == 0) & (dx < 0))
    c = dy * px - dx * py - ~owner
    a, b = -dy, dx
    # Depth plane of the snapped triangle: z = z_0 + gx (x - x_0) + gy (y - y_0).
    area = np.abs(area)
    fz = z.take(corners.take(ids, axis=1))
    gx = (a[0] * fz[0] + a[1] * fz[1] + a[2] * fz[2]) / area
    gy = (b[0] * fz[0] + b[1] * fz[1] + b[2] * fz[2]) / area
    return _Triangles(ids=ids, front=sign < 0, box=box, a=a, b=b, c=c,
                      z_origin=fz[0] - gx * x[0] - gy * y[0], gx=gx, gy=gy, z_max=_max3(fz))


def _draw(zbuf: np.ndarray, size: int, tri: _Triangles, sel: np.ndarray) -> None:
    """Rasterises triangles `sel` into the z-buffer keys `zbuf` ([size * size] int64)."""
    if not len(sel):
        return
    # Group triangles by tile shape (sorted once, so that groups are contiguous ranges) and test
    # each group's tiles in cache-sized broadcast chunks.
    box = tri.box.take(sel, axis=1)
    sides, codes = _tile_tables(size)
    width, height = box[1] - box[0] + 1, box[3] - box[2] + 1
    tw, th = sides.take(width), sides.take(height)
    order = np.argsort((codes.take(width) << 8) | codes.take(height), kind="stable")  # radix
    sel, tw, th = sel[order], tw[order], th[order]
    col0 = np.minimum(box[0].take(order), size - tw)  # tile origins: tiles stay inside
    row0 = np.minimum(box[2].take(order), size - th)
    xs = col0 * _SUB + _HALF  # sub-pixel coordinates of the tile origin's centre
    ys = row0 * _SUB + _HALF
    a, b = tri.a.take(sel, axis=1), tri.b.take(sel, axis=1)
    e0 = a * xs + b * ys + tri.c.take(sel, axis=1)
    step_x, step_y = a * _SUB, b * _SUB
    gx, gy = tri.gx[sel], tri.gy[sel]
    z0 = tri.z_origin[sel] + gx * xs + gy * ys
    gx, gy = gx * _SUB, gy * _SUB
    ids = tri.ids[sel]
    base = row0 * size + col0
    starts = np.flatnonzero((tw[1:] != tw[:-1]) | (th[1:] != th[:-1])) + 1
    for lo, hi in zip([0, *starts], [*starts, len(sel)]):
        w, h = int(tw[lo]), int(th[lo])
        rows = np.arange(h, dtype=np.float64).reshape(h, 1, 1)
        cols = np.arange(w, dtype=np.float64).reshape(1, w, 1)
        offsets = (np.arange(h)[:, None] * size + np.arange(w)[None, :])[:, :, None]
        chunk = max(1, _CHUNK // (w * h))
        for s0 in range(lo, hi, chunk):
            s1 = min(s0 + chunk, hi)
            # [h, w, n] edge values at the tile's pixel centres; inside where all three >= 0.
            inside = None
            for i in range(3):
                e = (e0[i, s0:s1] + step_y[i, s0:s1] * rows) + step_x[i, s0:s1] * cols
                inside = e if inside is None else np.minimum(inside, e, out=inside)
            hit = np.flatnonzero(inside >= 0)
            if len(hit):
                depth = ((z0[s0:s1] + gy[s0:s1] * rows) + gx[s0:s1] * cols).ravel().take(hit)
                pix = (base[s0:s1] + offsets).ravel().take(hit)
                face = ids.take(s0 + hit % (s1 - s0))
                np.maximum.at(zbuf, pix, _pack(depth, face))


def _block_min(keys: np.ndarray, block: int) -> np.ndarray:
    """[H, W] -> [ceil(H / block), ceil(W / block)] minima over square blocks (pads with _EMPTY)."""
    h, w = keys.shape
    n, m = -(-h // block), -(-w // block)
    if (n * block, m * block) != (h, w):
        padded = np.full((n * block, m * block), _EMPTY, keys.dtype)
        padded[:h, :w] = keys
        keys = padded
    cols = keys[:, 0::block].copy()
    for j in range(1, block):
        np.minimum(cols, keys[:, j::block], out=cols)
    out = cols[0::block].copy()
    for i in range(1, block):
        np.minimum(out, cols[i::block], out=out)
    return out


def _surely_hidden(zbuf: np.ndarray, size: int, tri: _Triangles, sel: np.ndarray) -> np.ndarray:
    """[len(sel)] bool: triangles that the z-buffer already hides everywhere they could cover.

    A conservative test on square blocks of pixels (4 and 8 wide): a triangle whose bounding box
    spans at most 2 x 2 blocks is hidden when the best key any of its samples could have (its
    nearest vertex's depth, rounded up, with the lowest face index) is below every key in those
    blocks (an empty pixel's key is the lowest of all, so a block with one hides nothing).
    Skipping such triangles cannot change a single pixel."""
    # Samples are convex combinations of the vertex depths: at most z_max, up to the rounding of
    # the plane's evaluation, which `margin` bounds generously (coordinates < 2**26 sub-pixels).
    z_max = tri.z_max.take(sel)
    margin = 1e-12 * ((np.abs(tri.gx.take(sel)) + np.abs(tri.gy.take(sel))) * 2.0 ** 26
                      + np.abs(z_max)) + 1e-30
    nearest = np.nextafter((z_max + margin).astype(np.float32), np.float32(np.inf))
    best = _pack(nearest, np.zeros(len(sel), np.int64))
    box = tri.box.take(sel, axis=1)
    blocks = _block_min(zbuf.reshape(size, size), 4)
    hidden = np.zeros(len(sel), bool)
    for block in (4, 8):
        if block == 8:
            blocks = _block_min(blocks, 2)
        c0, c1, r0, r1 = box // block
        floor = np.minimum(np.minimum(blocks[r0, c0], blocks[r0, c1]),
                           np.minimum(blocks[r1, c0], blocks[r1, c1]))
        hidden |= (c1 - c0 <= 1) & (r1 - r0 <= 1) & (best < floor)
    return hidden


def _rasterize(qx: np.ndarray, qy: np.ndarray, z: np.ndarray, corners: np.ndarray, size: int,
               cull_backfaces: bool) -> np.ndarray:
    """Z-buffered coverage.

    Front-facing triangles are drawn first; then the back-facing ones that the result does not
    surely hide (on a head, most of them sit behind the face).

    Args:
      qx, qy: [V] float64 vertex pixel coordinates (u right, v down) times _SUB, rounded.
      z: [V] float64 depth (larger is nearer).
      corners: [3, F] int64 C-contiguous: the faces' vertex indices, corner by corner.
      size: image side in pixels.
      cull_backfaces: skip triangles facing away from the camera.
    Returns:
      [size * size] int64 z-buffer keys (`_pack`; `_EMPTY` where nothing is drawn).
    """
    zbuf = np.full(size * size, _EMPTY, np.int64)
    tri = _set_up(qx, qy, z, corners, size, cull_backfaces)
    if tri is None:
        return zbuf
    _draw(zbuf, size, tri, np.flatnonzero(tri.front))
    back = np.flatnonzero(~tri.front)
    if len(back):
        _draw(zbuf, size, tri, back[~_surely_hidden(zbuf, size, tri, back)])
    return zbuf


def _order_bits(bits: np.ndarray) -> np.ndarray:
    """float32 bit patterns (as integers) <-> integers in the floats' order (an involution):
    negative floats have their 31 low bits flipped."""
    return bits ^ ((bits >> 31) & _LOW31)


def _pack(depth: np.ndarray, face: np.ndarray) -> np.ndarray:
    """Z-buffer keys: depth in float32 order in the high 32 bits (larger is nearer), then
    _LOW31 - face, so that the lower face index wins ties."""
    bits = (depth.astype(np.float32) + np.float32(0)).view(np.int32)  # + 0: no -0.0
    return (_order_bits(bits).astype(np.int64) << 32) | (_LOW31 - face)


def _unpack(zbuf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Z-buffer keys -> face index (int64, -1 where empty), depth (float32, -inf where empty)."""
    face = _LOW31 - (zbuf & 0xFFFFFFFF)
    depth = _order_bits(zbuf >> 32).astype(np.int32).view(np.float32)
    return face, depth


def _vertex_normals(v: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """[3, V] unit normals: area-weighted sums of the adjacent faces' normals (0 if isolated)."""
    x, y, z = (np.ascontiguousarray(v[:, k])[corners] for k in range(3))  # [3, F] each
    e1 = (x[1] - x[0], y[1] - y[0], z[1] - z[0])
    e2 = (x[2] - x[0], y[2] - y[0], z[2] - z[0])
    fn = (e1[1] * e2[2] - e1[2] * e2[1],
          e1[2] * e2[0] - e1[0] * e2[2],
          e1[0] * e2[1] - e1[1] * e2[0])
    vn = np.zeros((3, len(v)))
    for k in range(3):
        for i in range(3):
            vn[k] += np.bincount(corners[i], weights=fn[k], minlength=len(v))
    norm = np.sqrt((vn * vn).sum(0))
    return np.divide(vn, norm, out=np.zeros_like(vn), where=norm > 0)


def _raster_coordinates(points: np.ndarray, cam: np.ndarray, size: int) -> np.ndarray:
    """[N, 2] float64 pixel coordinates shifted by half a pixel: the rasteriser works with pixel
    (i, j) spanning [j, j + 1) x [i, i + 1), centre (j + 0.5, i + 0.5) (exact: 0.5 = 128 / 256)."""
    return np.asarray(project(points, cam, size), np.float64) + 0.5


def _render_float(v, faces, cam, size, colors, light, ambient, diffuse, cull_backfaces):
    """Rasterises and shades.

    Returns:
      face_index [size * size] int64 (-1 where empty), depth [size * size] float32 (-inf where
      empty), pix [P] the covered pixels' flat indices, rgb: 3 arrays [P] float64, the red, green
      and blue of those pixels in [0, 1].
    """
    pixels = _raster_coordinates(v, cam, size)
    qx = np.rint(pixels[:, 0] * _SUB)
    qy = np.rint(pixels[:, 1] * _SUB)
    corners = np.ascontiguousarray(faces.T)
    zbuf = _rasterize(qx, qy, v[:, 2], corners, size, cull_backfaces)
    face_index, depth = _unpack(zbuf)
    row, col = np.nonzero(face_index.reshape(size, size) >= 0)
    pix = row * size + col
    if not len(pix):
        return face_index, depth, pix, [np.zeros(0)] * 3
    # Barycentric weights of the visible triangle at each covered pixel's centre, from the snapped
    # corners (exact edge values, so the weights are in [0, 1]). Arrays are [P] or [3, P]: NumPy
    # is fast along long rows, slow along short trailing axes.
    corner = corners.take(face_index.take(pix), axis=1)
    x, y = qx.take(corner), qy.take(corner)
    xs = col * _SUB + _HALF
    ys = row * _SUB + _HALF
    area = (x[1] - x[0]) * (y[2] - y[0]) - (y[1] - y[0]) * (x[2] - x[0])
    w0 = ((x[2] - x[1]) * (ys - y[1]) - (y[2] - y[1]) * (xs - x[1])) / area
    w1 = ((x[0] - x[2]) * (ys - y[2]) - (y[0] - y[2]) * (xs - x[2])) / area
    w2 = 1.0 - w0 - w1
    # Lambert with the interpolated (renormalised) vertex normal, two-sided: the normal of a face
    # seen from behind (positive area in pixels) is flipped towards the camera.
    vn = _vertex_normals(v, corners)
    normal = [w0 * n.take(corner[0]) + w1 * n.take(corner[1]) + w2 * n.take(corner[2]) for n in vn]
    length = np.sqrt(normal[0] * normal[0] + normal[1] * normal[1] + normal[2] * normal[2])
    dot = normal[0] * light[0] + normal[1] * light[1] + normal[2] * light[2]
    dot *= np.sign(area)
    cosine = dot / -np.maximum(length, 1e-300)  # a zero normal (dot 0) gets no diffuse light
    shade = ambient + diffuse * np.maximum(cosine, 0.0)
    if colors is None:
        rgb = [np.minimum(shade * c, 1.0) for c in DEFAULT_COLOR]
    else:
        rgb = []
        for k in range(3):
            channel = np.ascontiguousarray(colors[:, k])
            albedo = (w0 * channel.take(corner[0]) + w1 * channel.take(corner[1])
                      + w2 * channel.take(corner[2]))
            rgb.append(np.clip(albedo * shade, 0.0, 1.0))
    return face_index, depth, pix, rgb


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] to the nearest of 0..255 (x * 255 + 0.5 truncated: >= 0 here)."""
    return (x * 255.0 + 0.5).astype(np.uint8)


def render(vertices, faces, cam, image_size: int, colors=None, light_dir=DEFAULT_LIGHT_DIR,
           ambient: float = DEFAULT_AMBIENT, diffuse: float = DEFAULT_DIFFUSE, background=None,
           cull_backfaces: bool = False, supersample: int = 1) -> RenderResult:
    """Renders a triangle mesh through the weak-perspective camera.

    Args:
      vertices: [V, 3] float, model frame (y up, z towards the camera).
      faces: [F, 3] int vertex indices, counter-clockwise seen from outside.
      cam: [3] (s, tx, ty) as in `ringnet_tf.camera.project`; s may be negative, not 0.
      image_size: side of the square image in pixels.
      colors: [V, 3] per-vertex albedo, floats in [0, 1] (or uint8), interpolated across faces;
        None for `DEFAULT_COLOR` everywhere.
      light_dir: [3] direction towards the (directional) light in the model frame.
      ambient, diffuse: the light's ambient and diffuse intensities (>= 0).
      background: None (black), an RGB tuple of 0..255, or an [H, W, 3] uint8 image.
      cull_backfaces: drop triangles that face away from the camera (a closed mesh renders the
        same, faster; an open one shows what is behind instead of its inside).
      supersample: anti-aliasing factor k >= 1: the image is rendered at k x k samples per pixel
        and box-filtered. `mask`, `depth` and `face_index` then come from sample (k // 2, k // 2)
        of each pixel, which is the pixel centre when k is odd.
    Returns:
      A `RenderResult`.
    Raises:
      ValueError: a malformed argument, named with its value or shape.
    """
    size = _check_size(image_size)
    v = _check_vertices(vertices)
    faces = _check_faces(faces, len(v))
    cam = _check_cam(cam)
    colors = _check_colors(colors, len(v))
    light = _check_light(light_dir)
    ambient = _check_nonneg("ambient", ambient)
    diffuse = _check_nonneg("diffuse", diffuse)
    image = _check_background(background, size)
    if isinstance(supersample, (bool, np.bool_)) or not isinstance(supersample, numbers.Integral) \
            or supersample < 1:
        raise ValueError(f"supersample must be a positive integer; got {supersample!r}")
    k = int(supersample)
    big = size * k
    _keep_heap_slack()
    face_index, depth, pix, rgb = _render_float(v, faces, cam, big, colors, light, ambient,
                                                diffuse, bool(cull_backfaces))
    if k == 1:
        flat = image.reshape(-1, 3)
        for channel in range(3):
            flat[pix, channel] = _to_uint8(rgb[channel])
    else:
        hi = np.repeat(np.repeat(image.astype(np.float64) / 255.0, k, axis=0), k, axis=1)
        flat = hi.reshape(-1, 3)
        for channel in range(3):
            flat[pix, channel] = rgb[channel]
        image = _to_uint8(hi.reshape(size, k, size, k, 3).mean(axis=(1, 3)))
        face_index = face_index.reshape(size, k, size, k)[:, k // 2, :, k // 2]
        depth = depth.reshape(size, k, size, k)[:, k // 2, :, k // 2]
    face_index = face_index.reshape(size, size).astype(np.int32)
    depth = np.ascontiguousarray(depth.reshape(size, size))
    return RenderResult(image=image, mask=face_index >= 0, depth=depth, face_index=face_index)


def visible_points(points, result: RenderResult, cam, image_size: int, tol: float | None = None
                   ) -> np.ndarray:
    """Which 3D points are seen, not hidden behind the rendered surface.

    A point is visible when it projects inside the image and is not behind the surface by more
    than `tol`: Z >= min(depth over the 2 x 2 pixels whose centres surround its projection) - tol,
    empty pixels counting as -inf. Taking the nearest pixels' minimum keeps points on steep
    surfaces and on the silhouette (where the pixel centre may miss the mesh) visible, while a
    point covered by a nearer part of the mesh all around is hidden. Points in front of the surface
    count as visible.

    Args:
      points: [N, 3] model-frame points (e.g. landmarks on the rendered mesh).
      result: the `RenderResult` of the mesh, rendered with the same cam and image_size.
      cam: [3] (s, tx, ty).
      image_size: the render's side in pixels.
      tol: depth tolerance in model units; None for the model length of two pixels, 4 / (|s| size).
    Returns:
      [N] bool.
    """
    size = _check_size(image_size)
    cam = _check_cam(cam)
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3 or not np.isfinite(p).all():
        raise ValueError(f"points must be finite [N, 3]; got shape {p.shape}")
    if result.depth.shape != (size, size):
        raise ValueError(f"result is {result.depth.shape[1]} pixels wide, image_size is {size}")
    if tol is None:
        tol = 4.0 / (abs(cam[0]) * size)
    tol = _check_nonneg("tol", tol)
    uv = _raster_coordinates(p, cam, size)  # pixel (i, j) spans [j, j + 1) x [i, i + 1)
    inside = np.all((uv >= 0) & (uv < size), axis=1)
    # Pixel centres surrounding the point: columns floor(u - 0.5) and +1, clipped to the image.
    base = np.floor(uv - 0.5).astype(np.int64)
    nearest = np.full(len(p), np.inf)
    for dr in (0, 1):
        for dc in (0, 1):
            col = np.clip(base[:, 0] + dc, 0, size - 1)
            row = np.clip(base[:, 1] + dr, 0, size - 1)
            nearest = np.minimum(nearest, result.depth[row, col].astype(np.float64))
    return inside & (p[:, 2] >= nearest - tol)


def overlay(image, result: RenderResult, alpha: float = 0.7) -> np.ndarray:
    """Blends a render over a photo where the mesh covers it.

    Args:
      image: [H, W, 3] uint8 photo, the size of the render.
      result: a `RenderResult`.
      alpha: opacity of the render in [0, 1].
    Returns:
      [H, W, 3] uint8: image * (1 - alpha) + render * alpha on the mask, image elsewhere.
    """
    photo = np.asarray(image)
    if photo.shape != result.image.shape or photo.dtype != np.uint8:
        raise ValueError(f"image must be {result.image.shape} uint8 like the render; got "
                         f"{photo.shape} {photo.dtype}")
    if isinstance(alpha, (bool, np.bool_)) or not isinstance(alpha, numbers.Real) \
            or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha!r}")
    out = photo.copy()
    m = result.mask
    blend = photo[m].astype(np.float64) * (1 - alpha) + result.image[m].astype(np.float64) * alpha
    out[m] = np.floor(blend + 0.5).astype(np.uint8)
    return out


def rotate_y(vertices, angle_deg: float, center=None) -> np.ndarray:
    """[V, 3] vertices turned by angle_deg about the vertical (y) axis through center (default:
    the middle of their bounding box). Positive angles turn the face (+z) towards +x."""
    v = _check_vertices(vertices)
    if center is None:
        center = 0.5 * (v.min(0) + v.max(0)) if len(v) else np.zeros(3)
    center = np.asarray(center, np.float64)
    t = np.deg2rad(float(angle_deg))
    rot = np.array([[np.cos(t), 0.0, np.sin(t)], [0.0, 1.0, 0.0], [-np.sin(t), 0.0, np.cos(t)]])
    return (v - center) @ rot.T + center


def side_view(vertices, faces, cam, image_size: int, angle_deg: float = 90.0, **kwargs
              ) -> RenderResult:
    """Renders the mesh turned about the vertical axis through its bounding-box centre (the demo's
    profile figure); 90 degrees shows the profile with the face towards the right of the image.
    Other keyword arguments go to `render`."""
    return render(rotate_y(vertices, angle_deg), faces, cam, image_size, **kwargs)
