"""The one image preprocessing of the project, shared by data preparation, training, demo and export.

Steps:
0. Read: any image file as uint8 RGB, EXIF orientation applied (`read_image`; training decodes
   its stored bytes with the same `decode_image`).
1. Crop: a square box around the face (from its 68 landmarks), enlarged by `CROP_SCALE` so the
   whole head and some background fit ("loosely cropped"), resampled to a square image (`crop`).
   Points (landmarks) go through the same affine map as the pixels (`transform_points`).
   Training warps its stored crops to the network input inside tf.data (`warp`: the
   augmentation's random similarity, the same bilinear sampling and edge replication).
   The SavedModel's signatures take crops of any size and resample them in its graph
   (`resize_to_input`); their landmarks go back with `resize_points`.
2. Normalise: uint8 RGB -> float32 in [-1, 1] (`2 * (x / 255 - 0.5)`, as RingNet; `normalise`;
   back to uint8 for showing: `denormalise`).

Without a face box, `centre_box` + `crop` reproduce the original RingNet demo's preprocessing
exactly (RingNet's util/image.py, after HMR): scale the longer side to the crop size, pad by edge
replication, crop the centred square (see `CentreBox`).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    import tensorflow as tf

# Box side relative to the landmarks' extent (max of width and height of their bounding box).
CROP_SCALE = 1.6
# The box centre sits this fraction of the side above the landmarks' centre, to keep the forehead.
CENTRE_SHIFT_UP = 0.1


# Alpha (transparent) pixels are composited over this grey.
ALPHA_BACKGROUND = 128.0
IMAGE_SUFFIXES = frozenset({
    ".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".gif", ".jp2", ".pbm",
    ".pgm", ".ppm", ".pnm", ".pxm", ".ras", ".sr", ".exr", ".hdr", ".pic", ".avif", ".heic"})


class ImageReadError(ValueError):
    """An image that cannot be used. kind: "unreadable", "empty" or "not an image"."""

    def __init__(self, path: str | os.PathLike, kind: str, detail: str):
        super().__init__(f"{path}: {kind}: {detail}")
        self.path, self.kind, self.detail = str(path), kind, detail


def to_rgb8(image: np.ndarray, path: str | os.PathLike = "<image>") -> np.ndarray:
    """Any decoded OpenCV image (grey, BGR, BGRA; 8/16-bit or float) -> [H, W, 3] uint8 RGB."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4):
        raise ImageReadError(path, "unreadable", f"unsupported image shape {image.shape}")
    channels = image.shape[2]
    if image.dtype == np.uint8 and channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.dtype == np.uint8:
        x = image.astype(np.float32) / 255.0
    elif image.dtype == np.uint16:
        x = image.astype(np.float32) / 65535.0
    elif np.issubdtype(image.dtype, np.floating):
        x = np.clip(np.nan_to_num(image.astype(np.float32)), 0.0, 1.0)
    else:
        raise ImageReadError(path, "unreadable", f"unsupported pixel type {image.dtype}")
    if channels in (2, 4):  # colour (or grey) with alpha: composite over mid-grey
        alpha = x[:, :, -1:]
        x = x[:, :, :-1] * alpha + (ALPHA_BACKGROUND / 255.0) * (1.0 - alpha)
    if x.shape[2] == 1:
        x = np.repeat(x, 3, axis=2)
    else:
        x = x[:, :, ::-1]  # BGR -> RGB
    return np.ascontiguousarray(np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Reads an image file as [H, W, 3] uint8 RGB: grey, alpha, 16-bit and EXIF-rotated JPEGs
    included. Raises ImageReadError (naming the file and the problem) when it cannot."""
    try:
        data = np.fromfile(path, np.uint8)
    except OSError as e:
        raise ImageReadError(path, "unreadable", e.strerror or str(e)) from None
    return decode_image(data, path)


def decode_image(data: bytes | np.ndarray, path: str | os.PathLike = "<image>") -> np.ndarray:
    """An encoded image file's contents (bytes, or [N] uint8) -> [H, W, 3] uint8 RGB, as
    `read_image` (which reads the file and calls this; training decodes its stored bytes with it).
    `path` only names the image in an ImageReadError."""
    data = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    if data.size == 0:
        raise ImageReadError(path, "empty", "0 bytes")
    if data[:2].tobytes() == b"\xff\xd8":
        # JPEG: IMREAD_COLOR applies the EXIF orientation (IMREAD_UNCHANGED would not); a JPEG has
        # no alpha and (almost always) 8 bits, so nothing is lost.
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    else:
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        if Path(path).suffix.lower() in IMAGE_SUFFIXES:
            raise ImageReadError(path, "unreadable", "OpenCV cannot decode it: corrupt or an unsupported format")
        raise ImageReadError(path, "not an image", "OpenCV cannot decode it")
    if image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        # In place: the decoded array is ours, and a second copy of a large photo costs memory.
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)
    return to_rgb8(image, path)


@dataclasses.dataclass(frozen=True)
class Box:
    """A square crop box in source-image pixels: centre (cx, cy) and side length.

    Coordinates put pixel centres at whole numbers (the first pixel's centre is 0, 0), as the
    landmarks and the training warp do; the box centre maps to the crop's centre, (n - 1) / 2.
    """

    cx: float
    cy: float
    size: float

    def affine(self, out_size: int) -> np.ndarray:
        """[2, 3] float64 map from source pixels to pixels of the out_size x out_size crop."""
        s = out_size / self.size
        c = (out_size - 1) / 2
        return np.array([[s, 0.0, c - s * self.cx],
                         [0.0, s, c - s * self.cy]])


def box_from_landmarks(landmarks: np.ndarray, scale: float = CROP_SCALE) -> Box:
    """Loose square box around 68 landmarks. landmarks: [68, 2+] pixels (confidence ignored)."""
    pts = np.asarray(landmarks, np.float64)[:, :2]
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    size = scale * float(max(hi - lo))
    if not np.isfinite(size) or size <= 0:
        raise ValueError(f"landmarks span no area: {lo} .. {hi}")
    cx, cy = (lo + hi) / 2
    return Box(float(cx), float(cy - CENTRE_SHIFT_UP * size), size)


@dataclasses.dataclass(frozen=True)
class CentreBox(Box):
    """The original RingNet demo's crop of a whole `height` x `width` image, for any crop size n.

    RingNet's steps (util/image.py, from HMR), which `crop` and `affine` follow to the integer:
      scale = n / max(h, w) (1 if max(h, w) == n); cv2.resize (bilinear) to
      (floor(h scale), floor(w scale)); centre = round((h, w) / 2) (NumPy's half-to-even), scaled by
      the actual per-axis factors and rounded; np.pad by n // 2 with mode "edge"; the n x n
      square starting n // 2 before the centre (RingNet's n is even: 224). A sliver that
      would scale to no rows (or columns) keeps one, where RingNet's demo fails.
    `cx`, `cy`, `size` are the nominal box (the whole image's centre and longer side); the exact
    map, which the rounding can shift by a fraction of a pixel per axis, is `affine(n)`.
    """

    height: int = 0
    width: int = 0

    def steps(self, out_size: int) -> tuple[int, int, int, int]:
        """(scaled width, scaled height, crop start x, crop start y) in scaled-image pixels."""
        h, w = self.height, self.width
        scale = float(out_size) / max(h, w) if max(h, w) != out_size else 1.0
        # At least one row and column: RingNet's demo fails on a sliver that would scale to none.
        new_h, new_w = (max(1, int(v)) for v in np.floor(np.array([h, w]) * scale))
        centre = np.round(np.array([h, w]) / 2).astype(int)[::-1]  # (x, y)
        scaled = np.round(centre * np.array([new_w / w, new_h / h])).astype(int)
        start = scaled - out_size // 2
        return new_w, new_h, int(start[0]), int(start[1])

    def affine(self, out_size: int) -> np.ndarray:
        """[2, 3] float64 source pixels -> crop pixels: OpenCV's resize (x + 0.5) f - 0.5, then the shift."""
        new_w, new_h, x0, y0 = self.steps(out_size)
        fx, fy = new_w / self.width, new_h / self.height
        return np.array([[fx, 0.0, 0.5 * fx - 0.5 - x0],
                         [0.0, fy, 0.5 * fy - 0.5 - y0]])


def centre_box(height: int, width: int) -> CentreBox:
    """The original RingNet demo's crop: the image's longer side, centred (padding by replication).
    `crop` with this box does exactly what RingNet's demo did (see `CentreBox`)."""
    return CentreBox((width - 1) / 2, (height - 1) / 2, float(max(height, width)), int(height), int(width))


def _crop_like_ringnet(image: np.ndarray, box: CentreBox, out_size: int) -> np.ndarray:
    if image.shape[:2] != (box.height, box.width):
        raise ValueError(f"the centre box is for a {box.width} x {box.height} image, got "
                         f"{image.shape[1]} x {image.shape[0]}")
    new_w, new_h, x0, y0 = box.steps(out_size)
    scaled = cv2.resize(image, (new_w, new_h))  # bilinear, no antialiasing: as RingNet
    # RingNet pads n // 2 on every side; padding just what the window needs gives the same pixels
    # (and an odd n its last row and column).
    before = (max(0, -y0), max(0, -x0))
    after = (max(0, y0 + out_size - new_h), max(0, x0 + out_size - new_w))
    padded = np.pad(scaled, ((before[0], after[0]), (before[1], after[1]), (0, 0)), mode="edge")
    y, x = y0 + before[0], x0 + before[1]
    return np.ascontiguousarray(padded[y:y + out_size, x:x + out_size])


def crop(image: np.ndarray, box: Box, out_size: int) -> np.ndarray:
    """Resamples the box to an out_size x out_size image (bilinear; edge replication outside).
    A `CentreBox` (`centre_box`) crops exactly as RingNet's demo did (resize, pad, slice).

    image: [H, W, 3] uint8 RGB. Returns [out_size, out_size, 3] uint8.
    """
    # OpenCV, not `warp`: photos are cropped outside any graph (preparation, demo, evaluation).
    if isinstance(box, CentreBox):
        return _crop_like_ringnet(image, box, out_size)
    affine = box.affine(out_size)
    # Shrinking a lot with bilinear sampling aliases: blur first in proportion.
    shrink = box.size / out_size
    sigma = 0.5 * shrink if shrink > 2.0 else 0.0
    # Work on the window the box reads (plus the blur's reach: OpenCV's kernel radius is 4 sigma
    # for uint8), not the whole photo: same pixels, bounded time and memory for huge photos.
    margin = 4.0 * sigma + 2.0
    h, w = image.shape[:2]
    x0 = int(np.clip(np.floor(box.cx - box.size / 2 - margin), 0, w - 1))
    x1 = int(np.clip(np.ceil(box.cx + box.size / 2 + margin) + 1, x0 + 1, w))
    y0 = int(np.clip(np.floor(box.cy - box.size / 2 - margin), 0, h - 1))
    y1 = int(np.clip(np.ceil(box.cy + box.size / 2 + margin) + 1, y0 + 1, h))
    if (x0, y0, x1, y1) != (0, 0, w, h):
        image = image[y0:y1, x0:x1]
        affine = affine.copy()
        affine[:, 2] += affine[:, :2] @ np.array([x0, y0], np.float64)
    if sigma:
        image = cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma)
    return cv2.warpAffine(image, affine, (out_size, out_size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def transform_points(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Applies a [2, 3] affine map to [..., N, 2+] points; extra columns (confidence) pass through."""
    pts = np.asarray(points, np.float64)
    xy = pts[..., :2] @ affine[:, :2].T + affine[:, 2]
    return np.concatenate([xy, pts[..., 2:]], axis=-1)


def warp(image: tf.Tensor, matrix: tf.Tensor, size: int) -> tf.Tensor:
    """[H, W, C] float TF tensor -> [size, size, C]: resampled through `matrix` ([3, 3] float32, a
    map from the image's pixels to the output's, pixel centres at whole numbers), bilinear, edge
    replication outside: `crop`'s sampling as a TF op. No blur before shrinking: training's stored
    crops are within about 2x of the network input, where the two agree (tested).
    """
    import tensorflow as tf

    # A TF op, not `crop`: the augmentation draws a random similarity per image inside tf.data.
    transform = tf.reshape(tf.linalg.inv(matrix), [9])[:8][None, :]  # output -> input pixels
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=transform, output_shape=tf.constant([size, size]),
        fill_value=0.0, interpolation="BILINEAR", fill_mode="NEAREST")[0]


def resize_to_input(images, size: int):
    """[B, H, W, 3] float TF tensor -> [B, size, size, 3]: a crop of any size resampled to the
    network's input inside a TF graph (the SavedModel's signatures), antialiased bilinear.

    Not `crop`: that one runs OpenCV on the photo, outside any graph; this one receives crops
    already made (by whatever the client uses) and must stay a TF op to be exported. Not `warp`:
    a client's crop can be any size, so shrinking is antialiased (`crop` and `warp` agree with it
    at and above the input size; tested).
    """
    import tensorflow as tf

    return tf.image.resize(images, [size, size], method="bilinear", antialias=True)


def resize_points(points, from_wh, to_wh):
    """Pixel coordinates [..., 2] of an image resized from `from_wh` to `to_wh` (scalars for a
    square, or [2] width, height): a scale per axis about the image's edge, pixel centres at whole
    numbers on both sides. NumPy arrays or TF tensors."""
    return (points + 0.5) * to_wh / from_wh - 0.5


def normalise(image):
    """uint8 RGB in [0, 255] -> float32 in [-1, 1]. Works on NumPy arrays and TF tensors alike."""
    if isinstance(image, np.ndarray):
        return (image.astype(np.float32) / 255.0 - 0.5) * 2.0
    import tensorflow as tf

    return (tf.cast(image, tf.float32) / 255.0 - 0.5) * 2.0


def denormalise(image: np.ndarray) -> np.ndarray:
    """`normalise`'s inverse for showing a network input: [..., 3] float in [-1, 1] (NumPy) ->
    uint8 RGB, rounded to the nearest level and clipped."""
    return np.clip(np.rint((np.asarray(image, np.float32) / 2.0 + 0.5) * 255.0), 0, 255).astype(np.uint8)
