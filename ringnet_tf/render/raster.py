"""The rasteriser: exact coverage, a z-buffer, and the fragments (covered pixels with barycentric
weights) that shading colours.

Vertex positions are snapped to 1/256 pixel and coverage is decided exactly (integer arithmetic
carried in float64) on the snapped triangle; see the package docstring (`ringnet_tf.render`) for
the fill rule, the depth rule and how it is fast. Internally pixel (i, j) spans [j, j + 1) x
[i, i + 1) with its centre at (j + 0.5, i + 0.5): `camera.project`'s coordinates plus one half.
"""
from __future__ import annotations

import dataclasses
import functools

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
# Face indices live in the key's low 31 bits.
MAX_FACES = _LOW31


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


def raster_coordinates(points: np.ndarray, cam: np.ndarray, size: int) -> np.ndarray:
    """[N, 2] float64 pixel coordinates shifted by half a pixel: the rasteriser works with pixel
    (i, j) spanning [j, j + 1) x [i, i + 1), centre (j + 0.5, i + 0.5) (exact: 0.5 = 128 / 256)."""
    return np.asarray(project(points, cam, size), np.float64) + 0.5


@dataclasses.dataclass(frozen=True, eq=False)
class Fragments:
    """The rasteriser's result for an image of N = size * size pixels, P of them covered.

    Attributes:
      face_index: [N] int64 index into faces of the triangle seen at each pixel; -1 where empty.
      depth: [N] float32 model-frame Z of the visible surface (larger is nearer); -inf where empty.
      pix: [P] flat indices of the covered pixels (row-major order).
      corner: [3, P] int64 vertex indices of the visible triangle's corners at those pixels.
      weights: 3 arrays [P] float64, the barycentric weights of the pixel centres in that
        triangle (from the snapped corners: in [0, 1]).
      orientation: [P] float64 sign of the triangle's signed area in pixels: -1 facing the camera
        (counter-clockwise in the model turns clockwise in pixels, rows growing down), +1 seen
        from behind.
      corners: [3, F] int64 C-contiguous: all faces' vertex indices, corner by corner.
    """

    face_index: np.ndarray
    depth: np.ndarray
    pix: np.ndarray
    corner: np.ndarray
    weights: tuple[np.ndarray, np.ndarray, np.ndarray]
    orientation: np.ndarray
    corners: np.ndarray


def rasterize(v: np.ndarray, faces: np.ndarray, cam: np.ndarray, size: int,
              cull_backfaces: bool) -> Fragments:
    """Z-buffered coverage of a checked mesh (`checks`): v [V, 3] float64, faces [F, 3] int64,
    cam [3], a size x size image."""
    pixels = raster_coordinates(v, cam, size)
    qx = np.rint(pixels[:, 0] * _SUB)
    qy = np.rint(pixels[:, 1] * _SUB)
    corners = np.ascontiguousarray(faces.T)
    zbuf = _rasterize(qx, qy, v[:, 2], corners, size, cull_backfaces)
    face_index, depth = _unpack(zbuf)
    row, col = np.nonzero(face_index.reshape(size, size) >= 0)
    pix = row * size + col
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
    return Fragments(face_index=face_index, depth=depth, pix=pix, corner=corner,
                     weights=(w0, w1, w2), orientation=np.sign(area), corners=corners)
