"""Synthetic rings with ground truth: rendered faces of a FLAME model, in the dataset format.

    python -m ringnet_tf.data.synthetic --out DIR --identities N --images-per-identity K --seed S

Each identity draws FLAME identity coefficients, a skin tone, per-vertex albedo variation and an
eye colour (with `--appearance image`, each image draws its own skin, albedo and eyes instead, so
that colour carries no identity); each of its images draws an expression, a jaw opening, a head pose (yaw up to
+-60 degrees, pitch, roll), a camera scale and offset, lighting, a background, blur and noise.
The 68 landmarks come from the same FLAME landmark function as the model's (dynamic contour
included) through the project's camera; landmarks hidden by the head itself get confidence
`HIDDEN_CONFIDENCE`. Ground truth (parameters and 3D landmarks per image, neutral mesh per identity) goes to
`ground_truth.npz`. Identity names carry the seed (`s<seed>_<index>`), so datasets made with
different seeds never share an identity: make the validation set with another seed.

Same arguments, same bytes: every random draw comes from a generator keyed by (seed, identity,
image), whatever the number of worker processes.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import multiprocessing as mp
import os
import sys
from pathlib import Path

import cv2
import numpy as np

from flame import constants as C
from flame.fileutil import atomic_write, check_new_dir, staged_dir
from ringnet_tf.cli import add_flame_model_argument
from ringnet_tf.progress import Progress

HIDDEN_CONFIDENCE = 0.3
APPEARANCE = ("identity", "image")
_CHUNK_IDENTITIES = 64  # identities decoded by FLAME at once (bounds memory)


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    identities: int
    images_per_identity: int
    seed: int = 0
    size: int = 256
    num_shape: int = 100
    num_expression: int = 50
    shape_std: float = 1.0
    expression_std: float = 1.0
    max_yaw_deg: float = 60.0
    max_pitch_deg: float = 20.0
    max_roll_deg: float = 15.0
    max_jaw_deg: float = 20.0
    # Framing: the image is the shared preprocessing's crop box around the 68 projected landmarks
    # (as real photos are cropped), jittered like a face detector: side * (1 +- max_box_scale),
    # centre moved by up to max_box_shift of the side.
    max_box_scale: float = 0.1
    max_box_shift: float = 0.05
    image_format: str = "jpg"  # jpg (quality 95) or png
    # Appearance (skin tone, albedo blotches, eyebrows, iris colour) drawn once per identity, as
    # people look, or afresh for every image: then colour says nothing about who it is, and a ring
    # loss can only tell people apart by geometry.
    appearance: str = "identity"  # identity | image

    def __post_init__(self) -> None:
        if self.appearance not in APPEARANCE:
            raise ValueError(f"appearance must be one of {APPEARANCE}; got {self.appearance!r}")
        for name in ("identities", "images_per_identity", "size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1; got {getattr(self, name)}")
        if self.image_format not in ("jpg", "png"):
            raise ValueError(f"image_format must be jpg or png; got {self.image_format!r}")


def _euler_to_rotvec(yaw: float, pitch: float, roll: float) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_euler("YXZ", [yaw, pitch, roll], degrees=True).as_rotvec()


def _identity_draws(cfg: SynthConfig, ident: int, num_vertices: int, masks: dict[str, np.ndarray]):
    """Per identity: shape coefficients [S], per-vertex albedo [V, 3] in [0, 1].

    With `appearance="image"` the albedo returned here is unused: `_image_albedo` draws one per image.
    """
    rng = np.random.default_rng([cfg.seed, ident, 0])
    shape = cfg.shape_std * rng.standard_normal(cfg.num_shape)
    return shape, _albedo(rng, num_vertices, masks)


def _image_albedo(cfg: SynthConfig, ident: int, k: int, num_vertices: int,
                  masks: dict[str, np.ndarray]) -> np.ndarray:
    """Per image (appearance="image"): an albedo [V, 3] of its own, from its own generator."""
    return _albedo(np.random.default_rng([cfg.seed, ident, k + 1, 1]), num_vertices, masks)


def _albedo(rng: np.random.Generator, num_vertices: int, masks: dict[str, np.ndarray]) -> np.ndarray:
    """A skin tone, blotches, lips, eyebrows and an iris colour: per-vertex albedo [V, 3] in [0, 1]."""
    # Skin tones from light to dark along a brownish line, with a little hue spread.
    t = rng.uniform(0.0, 1.0)
    skin = (1 - t) * np.array([0.93, 0.78, 0.68]) + t * np.array([0.36, 0.24, 0.18])
    skin = np.clip(skin * rng.uniform(0.95, 1.05, 3), 0, 1)
    albedo = np.tile(skin, (num_vertices, 1))
    # Smooth blotchiness: a few random low-frequency waves over the vertex positions.
    pos = masks["_positions"]
    wave = np.zeros(num_vertices)
    for _ in range(4):
        k = rng.normal(size=3) * 40.0
        wave += np.sin(pos @ k + rng.uniform(0, 2 * np.pi))
    albedo *= (1.0 + 0.04 * wave / 2.0)[:, None]
    albedo *= rng.uniform(0.97, 1.03, (num_vertices, 1))  # fine grain
    if "lips" in masks:
        albedo[masks["lips"]] = skin * np.array([0.85, 0.62, 0.62])
    if "eyebrows" in masks:
        albedo[masks["eyebrows"]] = skin * rng.uniform(0.25, 0.6)
    iris = rng.choice([np.array([0.30, 0.18, 0.08]), np.array([0.25, 0.40, 0.55]),
                       np.array([0.30, 0.42, 0.25]), np.array([0.12, 0.08, 0.05])])
    for side in ("left_eyeball", "right_eyeball"):
        if side in masks:
            ids = np.flatnonzero(masks[side])
            centre = pos[ids].mean(axis=0)
            front = (pos[ids] - centre)[:, 2] / np.ptp(pos[ids][:, 2]).clip(1e-6)
            colour = np.where(front[:, None] > 0.42, iris, np.array([0.92, 0.90, 0.88]))
            colour = np.where(front[:, None] > 0.48, np.array([0.03, 0.03, 0.03]), colour)
            albedo[ids] = colour
    return np.clip(albedo, 0, 1)


def _image_draws(cfg: SynthConfig, ident: int, k: int):
    """Per image: expression [E], pose [15], box jitter [3], light, shading, a render/noise seed."""
    rng = np.random.default_rng([cfg.seed, ident, k + 1])
    expression = cfg.expression_std * rng.standard_normal(cfg.num_expression) * rng.uniform(0.2, 1.0)
    pose = np.zeros(C.FULL_POSE_DIM)
    pose[0:3] = _euler_to_rotvec(rng.uniform(-cfg.max_yaw_deg, cfg.max_yaw_deg),
                                 rng.uniform(-cfg.max_pitch_deg, cfg.max_pitch_deg),
                                 rng.uniform(-cfg.max_roll_deg, cfg.max_roll_deg))
    pose[6] = np.radians(rng.uniform(0.0, cfg.max_jaw_deg) * rng.uniform() ** 2)  # mostly closed
    jitter = np.array([rng.uniform(-cfg.max_box_scale, cfg.max_box_scale),
                       *rng.uniform(-cfg.max_box_shift, cfg.max_box_shift, 2)])
    light = np.array([rng.uniform(-1, 1), rng.uniform(-0.3, 1), rng.uniform(0.5, 2.0)])
    shading = (rng.uniform(0.25, 0.55), rng.uniform(0.5, 0.9))
    return expression, pose, jitter, light, shading, int(rng.integers(2**31))


def landmarks3d_pixels(landmarks3d: np.ndarray, cam: np.ndarray, size: int) -> np.ndarray:
    """The dataset's 3D landmarks: [68, 3] posed model-frame points -> x, y in the image's pixels
    (the 2D landmarks' convention) and z, the depth towards the camera, in pixels of the same scale
    (the weak-perspective scale applied to Z). See `ringnet_tf.data.dataset`."""
    from ringnet_tf.camera import project

    z = landmarks3d[:, 2:3] * (cam[0] * size / 2.0)
    return np.concatenate([project(landmarks3d, cam, size), z], axis=1).astype(np.float32)


def framing_camera(landmarks3d: np.ndarray, jitter: np.ndarray | None = None) -> np.ndarray:
    """The weak-perspective camera whose image is the crop box of the projected landmarks.

    landmarks3d: [68, 3] posed landmarks (model frame); jitter: [3] (relative size change, x shift,
    y shift as fractions of the side), None for none. Returns cam [3] = (s, tx, ty): the box (in
    model units, y down, as `preprocess.box_from_landmarks` sees pixels) spans the image, its
    centre in the middle.
    """
    from ringnet_tf.preprocess import box_from_landmarks

    if jitter is None:
        jitter = np.zeros(3)
    box = box_from_landmarks(landmarks3d[:, :2] * np.array([1.0, -1.0]))
    side = box.size * (1.0 + jitter[0])
    cx, cy = box.cx + jitter[1] * box.size, box.cy + jitter[2] * box.size
    # x_n = s (X + tx) is 0 at X = cx and spans [-1, 1] over the side; model Y = -cy likewise.
    return np.array([2.0 / side, -cx, cy])


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    kind = rng.integers(3)
    if kind == 0:  # vertical gradient between two colours
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        t = np.linspace(0, 1, size)[:, None, None]
        img = np.broadcast_to((1 - t) * a + t * b, (size, size, 3))
    elif kind == 1:  # blurred blobs
        small = rng.uniform(0, 255, (6, 6, 3))
        img = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
    else:  # random rectangles, like a room
        img = np.full((size, size, 3), rng.uniform(0, 255, 3))
        for _ in range(rng.integers(3, 9)):
            x0, y0 = rng.integers(0, size, 2)
            w, h = rng.integers(size // 8, size // 2, 2)
            img[y0:y0 + h, x0:x0 + w] = rng.uniform(0, 255, 3)
        img = cv2.GaussianBlur(img, (0, 0), 2.0)
    return np.clip(img, 0, 255).astype(np.uint8)


def _render_job(job):
    """Worker: render one image and write it. Returns (relative path, [68, 3] landmarks)."""
    (out_dir, rel, vertices, faces, landmarks3d, albedo, cam, light, shading, seed, size, fmt) = job
    from ringnet_tf import render
    from ringnet_tf.camera import project

    rng = np.random.default_rng(seed)
    result = render.render(vertices, faces, cam, size, colors=albedo, light_dir=light,
                           ambient=shading[0], diffuse=shading[1], background=_background(rng, size))
    image = result.image.astype(np.float32)
    sigma = rng.uniform(0.0, 1.2)
    if sigma > 0.3:
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    image += rng.normal(0.0, rng.uniform(0.0, 6.0), image.shape)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    visible = render.visible_points(landmarks3d, result, cam, size)
    # Contour points lie on the silhouette by construction: always visible.
    visible[:C.NUM_CONTOUR_LANDMARKS] = True
    xy = project(landmarks3d, cam, size)
    conf = np.where(visible, 1.0, HIDDEN_CONFIDENCE)
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if fmt == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 6]
    ok, data = cv2.imencode(f".{fmt}", bgr, params)
    if not ok:
        raise OSError(f"cannot encode {rel}")
    path = Path(out_dir) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.tobytes())
    return rel, np.concatenate([xy, conf[:, None]], axis=1).astype(np.float32)


def generate(out_dir: str | os.PathLike, cfg: SynthConfig, flame_model: str | None = None,
             workers: int | None = None, progress: bool = True, force: bool = False) -> Path:
    """Writes a synthetic dataset into a new folder `out_dir`, whole or not at all (built in a
    hidden sibling, `fileutil.staged_dir`). An existing non-empty `out_dir` is an error
    (FileExistsError) unless `force`, which replaces it once the new dataset is complete."""
    import tensorflow as tf

    from flame.io import load_flame
    from flame.layer import FlameLayer
    from ringnet_tf.data import dataset as D

    out = check_new_dir(out_dir, force)  # before the model loads: fail fast
    model = load_flame(flame_model)
    layer = FlameLayer(model, cfg.num_shape, cfg.num_expression)
    masks = _region_masks(model)
    workers = workers or os.cpu_count() or 1
    total = cfg.identities * cfg.images_per_identity
    records, neutral = [], []
    gt_rows = {k: [] for k in ("shape", "expression", "pose", "cam", "landmarks3d")}
    ctx = mp.get_context("spawn")  # workers never touch TensorFlow
    with staged_dir(out, force) as tmp, contextlib.closing(
            Progress(total, "synthetic", enabled=progress)) as bar:
        with ctx.Pool(workers) if workers > 1 else _SerialPool() as pool:
            for first in range(0, cfg.identities, _CHUNK_IDENTITIES):
                idents = range(first, min(first + _CHUNK_IDENTITIES, cfg.identities))
                jobs, meta = [], []
                for i in idents:
                    shape, albedo = _identity_draws(cfg, i, model.num_vertices, masks)
                    draws = [_image_draws(cfg, i, k) for k in range(cfg.images_per_identity)]
                    args = [np.repeat(shape[None], len(draws) + 1, 0),
                            np.stack([d[0] for d in draws] + [np.zeros(cfg.num_expression)]),
                            np.stack([d[1] for d in draws] + [np.zeros(C.FULL_POSE_DIM)])]
                    out_flame = layer(*(tf.constant(a, tf.float32) for a in args))
                    verts = out_flame["vertices"].numpy()
                    lms = out_flame["landmarks"].numpy()
                    neutral.append(verts[-1])
                    for k, d in enumerate(draws):
                        rel = f"images/s{cfg.seed}_{i:05d}/{k:04d}.{cfg.image_format}"
                        cam = framing_camera(lms[k], d[2])
                        look = (albedo if cfg.appearance == "identity"
                                else _image_albedo(cfg, i, k, model.num_vertices, masks))
                        jobs.append((str(tmp), rel, verts[k], model.faces, lms[k], look, cam, d[3],
                                     d[4], d[5], cfg.size, cfg.image_format))
                        meta.append((f"s{cfg.seed}_{i:05d}", shape, d, cam,
                                     landmarks3d_pixels(lms[k], cam, cfg.size)))
                for (rel, lm), (ident, shape, d, cam, lm3d) in zip(pool.imap(_render_job, jobs, chunksize=4), meta):
                    records.append(D.Record(rel, ident, lm))
                    gt_rows["shape"].append(shape)
                    gt_rows["expression"].append(d[0])
                    gt_rows["pose"].append(d[1])
                    gt_rows["cam"].append(cam)
                    gt_rows["landmarks3d"].append(lm3d)
                    bar.update()
        D.write_manifest(tmp, records)
        D.write_ground_truth(tmp, {
            "image": np.array([r.image for r in records]),
            **{k: np.asarray(v, np.float32) for k, v in gt_rows.items()},
            "neutral_identity": np.array([f"s{cfg.seed}_{i:05d}" for i in range(cfg.identities)]),
            "neutral_vertices": np.asarray(neutral, np.float32)})
        D.write_meta(tmp, {"source": "synthetic", "num_images": total, "num_identities": cfg.identities,
                           "image_size": cfg.size, "flame_fingerprint": model.fingerprint(),
                           "flame_source": str(model.source) if flame_model else "open head model",
                           "synth_config": dataclasses.asdict(cfg)})
    return out


class _SerialPool:
    """The Pool interface in-process, for workers=1 (and for tests)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def imap(self, fn, jobs, chunksize=1):
        return map(fn, jobs)


def _region_masks(model) -> dict[str, np.ndarray]:
    """Region masks of the open head model (eyeballs, lips, brows) where available; positions always."""
    masks: dict[str, np.ndarray] = {}
    try:
        from flame.openhead import region_masks

        masks = dict(region_masks(model))
    except (ImportError, ValueError):
        pass  # a real FLAME: uniform skin
    masks["_positions"] = np.asarray(model.v_template)
    return masks


def preview(dataset_dir: str | os.PathLike, out_png: str | os.PathLike, count: int = 16) -> Path:
    """A grid of the first `count` images with their landmarks (green visible, red hidden)."""
    from ringnet_tf.data import dataset as D
    from ringnet_tf.preprocess import read_image

    records = D.read_manifest(dataset_dir)[:count]
    tiles = []
    for r in records:
        img = read_image(Path(dataset_dir) / r.image)  # RGB
        for x, y, c in r.landmarks:
            cv2.circle(img, (int(round(x)), int(round(y))), 2, (0, 200, 0) if c >= 1 else (255, 0, 0), -1)
        tiles.append(img)
    cols = int(np.ceil(np.sqrt(len(tiles))))
    blank = np.zeros_like(tiles[0])
    tiles += [blank] * (cols * int(np.ceil(len(tiles) / cols)) - len(tiles))
    grid = np.vstack([np.hstack(tiles[i:i + cols]) for i in range(0, len(tiles), cols)])
    ok, data = cv2.imencode(".png", cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"{out_png}: PNG encoding failed")
    return atomic_write(out_png, lambda f: f.write(data.tobytes()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ringnet_tf.data.synthetic",
                                description="Render synthetic FLAME faces with ground truth into the dataset format.")
    p.add_argument("--out", required=True, type=Path, help="new dataset folder")
    p.add_argument("--identities", type=int, required=True, help="number of identities")
    p.add_argument("--images-per-identity", "--images_per_identity", type=int, required=True)
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0); use another for validation")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    add_flame_model_argument(p, help="FLAME model (default: the open head model)")
    p.add_argument("--workers", type=int, default=None, help="render processes (default: all cores)")
    p.add_argument("--format", choices=["jpg", "png"], default="jpg", help="image format (default jpg)")
    p.add_argument("--appearance", choices=list(APPEARANCE), default="identity",
                   help="draw skin tone and albedo once per identity (default) or for every image, so "
                        "that colour says nothing about identity")
    p.add_argument("--preview", type=Path, default=None, help="also write a grid of samples to this PNG")
    p.add_argument("--tfrecords", action="store_true", help="also write the TFRecord form")
    p.add_argument("--force", action="store_true",
                   help="replace --out if it exists (once the new dataset is complete)")
    args = p.parse_args(argv)
    try:
        cfg = SynthConfig(args.identities, args.images_per_identity, seed=args.seed, size=args.size,
                          image_format=args.format, appearance=args.appearance)
        out = generate(args.out, cfg, args.flame_model, args.workers, force=args.force)
    except (ValueError, FileExistsError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {cfg.identities * cfg.images_per_identity} images of {cfg.identities} identities to {out}")
    if args.tfrecords:
        from ringnet_tf.data.dataset import write_tfrecords

        print(f"wrote TFRecords to {write_tfrecords(out)}")
    if args.preview:
        print(f"wrote preview {preview(out, args.preview)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
