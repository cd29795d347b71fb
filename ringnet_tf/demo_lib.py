"""What `demo.py` does: images in, FLAME meshes (and optional extras) out.

Per image: read it (any common format; grey, alpha and 16-bit included), find the face and its 68
landmarks (dlib; `no_detect` uses the original RingNet centre crop instead), crop it the way the
training data was cropped, run the network, optionally refine against the detected landmarks,
and write the outputs. A failing image gets one message and the others still run.
"""
from __future__ import annotations

import dataclasses
import glob
import io
import os
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from flame.fileutil import write_all
from flame.mesh_io import MESH_FORMATS, mesh_bytes
from ringnet_tf import preprocess
from ringnet_tf.camera import normalised_to_pixels, reframe_camera

# Largest side, in pixels, at which the overlay figure is rendered.
FIGURE_SIZE = 512


@dataclasses.dataclass(frozen=True)
class DemoOptions:
    neutral: bool = False  # also <stem>_neutral.obj: expression and pose zeroed
    params: bool = False  # also <stem>.npz: parameters and landmarks
    overlay: bool = False  # also <stem>_overlay.png: the mesh over the photo and a side view
    no_detect: bool = False
    refine_steps: int = 0
    batch_size: int = 8
    force: bool = False
    now_root: Path | None = None  # write NoW predictions: <now_root>/<relative path>.obj + .npy
    mesh_suffix: str = ".obj"


class ImageFailure(Exception):
    """One image could not be processed; the message says why."""


def collect_images(spec: str) -> tuple[list[Path], Path | None]:
    """Image files named by a file, a folder (recursively) or a glob; and the folder they hang from
    (for output names), None for a single file. Sorted, so runs are reproducible."""
    if not spec.strip():
        raise FileNotFoundError("--img is empty: no file, folder or glob given")
    path = Path(spec)
    if path.is_file():
        return [path], None
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in preprocess.IMAGE_SUFFIXES)
        return files, path
    matches = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
    if not matches:
        raise FileNotFoundError(f"{spec}: no such file, folder or matching files")
    common = Path(os.path.commonpath([str(m.parent) for m in matches]))
    return matches, common


def output_paths(image: Path, root: Path | None, out: Path, single: bool, opts: DemoOptions,
                 qualify: bool = False) -> dict[str, Path]:
    """Where each output of one image goes. `qualify` adds the input's suffix to the names
    (face.jpg -> face_jpg.obj), for inputs that would otherwise share them with another."""
    rel = image.relative_to(root) if root is not None else Path(image.name)
    if qualify and rel.suffix:
        rel = rel.with_name(f"{rel.stem}_{rel.suffix[1:]}")
    if single and out.suffix.lower() in MESH_FORMATS:
        mesh = out
    else:
        mesh = out / rel.with_suffix(opts.mesh_suffix)
    stem = mesh.with_suffix("")
    paths = {"mesh": mesh}
    if opts.neutral:
        paths["neutral"] = stem.with_name(stem.name + "_neutral" + mesh.suffix)
    if opts.params:
        paths["params"] = stem.with_suffix(".npz")
    if opts.overlay:
        paths["overlay"] = stem.with_name(stem.name + "_overlay.png")
    if opts.now_root is not None:
        paths["now_mesh"] = opts.now_root / rel.with_suffix(".obj")
        paths["now_landmarks"] = opts.now_root / rel.with_suffix(".npy")
    return paths


def plan_outputs(images: list[Path], root: Path | None, out: Path, opts: DemoOptions
                 ) -> list[dict[str, Path] | str]:
    """Every image's output paths, unique across the call: inputs whose outputs would collide
    (face.jpg and face.png; a.jpg's a_neutral.obj and a_neutral.jpg's a_neutral.obj) get names
    qualified by their suffix. An input still colliding gets a message instead of paths."""
    single = len(images) == 1 and root is None

    def claims(plans: list) -> dict[Path, list[int]]:
        owner: dict[Path, list[int]] = {}
        for i, paths in enumerate(plans):
            if isinstance(paths, dict):
                for p in paths.values():
                    owner.setdefault(Path(os.path.abspath(p)), []).append(i)
        return owner

    plans: list = [output_paths(im, root, out, single, opts) for im in images]
    clashing = {i for owners in claims(plans).values() if len(owners) > 1 for i in owners}
    for i in clashing:
        plans[i] = output_paths(images[i], root, out, single, opts, qualify=True)
    for path, owners in claims(plans).items():
        for i in owners[1:]:
            if isinstance(plans[i], dict):
                plans[i] = f"its output {path} is also an output of {images[owners[0]]}"
    return plans


class Detector:
    """Face box and 68 landmarks by dlib (optional install), with the preparation tool's policy."""

    def __init__(self):
        from ringnet_tf.data import landmarks_dlib as L
        from ringnet_tf.data import prepare as P

        self.P = P
        self.settings = P.Settings()
        self.landmarker = L.DlibLandmarker()

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """[68, 3] landmarks (x, y, confidence) in the photo's pixels; ImageFailure without a face."""
        try:
            _, lm = self.P.choose_face(self.landmarker, rgb, self.settings)
        except self.P.Skip as s:
            raise ImageFailure(f"{s.reason} ({s.detail})" if s.detail else s.reason) from None
        return lm.as_array()


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _figure(rgb: np.ndarray, box: preprocess.Box, crop_size: int, vertices: np.ndarray,
            faces: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """The photo with the whole projected mesh rendered over it, and a side view: [h, 2w, 3] uint8
    RGB at most FIGURE_SIZE pixels high and wide per panel.

    The photo is shrunk to figure size first and the mesh rendered straight into the figure's frame
    (the network's camera re-expressed for it), so memory does not grow with the photo's size and
    nothing is clipped to the crop box.
    """
    from ringnet_tf import render

    h, w = rgb.shape[:2]
    scale = FIGURE_SIZE / max(h, w)
    fw, fh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    small = cv2.resize(rgb, (fw, fh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    # crop pixels -> photo pixels (inverse of the box's affine) -> figure pixels (cv2.resize keeps
    # pixel centres: f = (p + 0.5) r - 0.5); the box is square and axis-aligned, so one factor.
    a = box.affine(crop_size)
    k = scale / a[0, 0]
    offset = (-a[:, 2] / a[0, 0] + 0.5) * scale - 0.5
    side = max(fw, fh)
    canvas_cam = reframe_camera(cam, crop_size, k, offset, side)
    result = render.render(vertices, faces, canvas_cam, side)
    mask = result.mask[:fh, :fw, None]
    over = np.where(mask, (small * 0.25 + result.image[:fh, :fw] * 0.75 + 0.5).astype(np.uint8), small)
    # The camera is resolution-free (normalised coordinates): render the side view at figure size.
    side_img = render.side_view(vertices, faces, cam, fh, background=(255, 255, 255)).image
    return np.concatenate([over, side_img], axis=1)


def run_demo(predictor, images: list[Path], root: Path | None, out: Path, opts: DemoOptions,
             stream=None, err=None) -> tuple[int, int]:
    """Processes the images in batches; returns (succeeded, failed)."""
    stream, err = stream or sys.stdout, err or sys.stderr
    detector = None
    if not opts.no_detect:
        detector = Detector()
    size = predictor.image_size
    ok = failed = 0
    plans = plan_outputs(images, root, out, opts)
    for start in range(0, len(images), opts.batch_size):
        batch: list[dict[str, Any]] = []
        for image, paths in zip(images[start:start + opts.batch_size], plans[start:start + opts.batch_size]):
            try:
                if isinstance(paths, str):
                    raise ImageFailure(paths)
                existing = [p for p in paths.values() if p.exists()]
                if existing and not opts.force:
                    raise ImageFailure(f"{existing[0]} exists (pass --force to overwrite)")
                try:
                    rgb = preprocess.read_image(image)
                except preprocess.ImageReadError as e:
                    raise ImageFailure(f"{e.kind}: {e.detail}") from None
                if detector is not None:
                    lm_photo = detector(rgb)
                    box = preprocess.box_from_landmarks(lm_photo)
                else:
                    lm_photo = None
                    box = preprocess.centre_box(*rgb.shape[:2])
                crop = preprocess.crop(rgb, box, size)
                batch.append({"image": image, "paths": paths, "rgb": rgb, "box": box, "crop": crop,
                              "lm_photo": lm_photo})
            except ImageFailure as e:
                print(f"{image}: skipped: {e}", file=err, flush=True)
                failed += 1
        if not batch:
            continue
        pred = predictor.predict(np.stack([b["crop"] for b in batch]))
        if opts.refine_steps and predictor.flame_layer is not None:
            from ringnet_tf.refine import refine

            targets = np.stack([preprocess.transform_points(b["lm_photo"], b["box"].affine(size)) for b in batch])
            pred["params"], report = refine(predictor.flame_layer, pred["params"], targets, size, opts.refine_steps)
            pred = _decode(predictor, pred["params"])
            print(f"  refined {len(batch)} image(s): landmark loss {report[0].mean():.4f} -> "
                  f"{report[1].mean():.4f}", file=stream)
        need_neutral = opts.neutral or opts.now_root is not None
        neutral = predictor.neutral(pred["shape"]) if need_neutral else None
        for i, b in enumerate(batch):
            try:
                _write(b, {k: v[i] for k, v in pred.items()},
                       {k: v[i] for k, v in neutral.items()} if neutral else None, predictor, size)
                ok += 1
                print(f"{b['image']} -> {b['paths']['mesh']}", file=stream, flush=True)
            except (OSError, ValueError) as e:
                print(f"{b['image']}: failed: {e}", file=err, flush=True)
                failed += 1
    return ok, failed


def _decode(predictor, params: np.ndarray) -> dict[str, np.ndarray]:
    """Network-style outputs for given parameters (after refinement), through the FLAME layer."""
    import tensorflow as tf

    from flame import lbs
    from ringnet_tf import camera
    from ringnet_tf.params import ParamSpec

    flame = predictor.flame_layer
    spec = ParamSpec(flame.num_shape, flame.num_expression)
    parts = spec.split(params)
    out = flame(*(tf.constant(parts[k], tf.float32) for k in ("shape", "expression", "pose")))
    lm2d = normalised_to_pixels(camera.project_normalised(out["landmarks"].numpy(), parts["cam"]),
                                predictor.image_size)
    return {**parts, "params": params, "flame_pose": lbs.full_pose(tf.constant(parts["pose"])).numpy(),
            "vertices": out["vertices"].numpy(), "landmarks3d": out["landmarks"].numpy(),
            "now_landmarks": out["now_landmarks"].numpy(), "landmarks2d": lm2d}


def _write(b: dict[str, Any], pred: dict[str, np.ndarray], neutral: dict[str, np.ndarray] | None,
           predictor, size: int) -> None:
    """Writes one image's outputs, all of them or (on any error) none."""
    paths, faces = b["paths"], predictor.faces
    files: dict[Path, bytes] = {paths["mesh"]: mesh_bytes(paths["mesh"], pred["vertices"], faces)}
    if "neutral" in paths:
        files[paths["neutral"]] = mesh_bytes(paths["neutral"], neutral["vertices"], faces)
    if "now_mesh" in paths:
        files[paths["now_mesh"]] = mesh_bytes(paths["now_mesh"], neutral["vertices"], faces)
        buf = io.BytesIO()
        np.save(buf, neutral["now_landmarks"].astype(np.float64))
        files[paths["now_landmarks"]] = buf.getvalue()
    if "params" in paths:
        inv = cv2.invertAffineTransform(b["box"].affine(size))
        lm_photo = preprocess.transform_points(pred["landmarks2d"], inv)
        arrays = {"cam": pred["cam"], "pose": pred["pose"], "shape": pred["shape"],
                  "expression": pred["expression"], "flame_pose": pred["flame_pose"],
                  "landmarks2d": lm_photo.astype(np.float32), "landmarks3d": pred["landmarks3d"],
                  "now_landmarks": pred["now_landmarks"],
                  "crop_box": np.array([b["box"].cx, b["box"].cy, b["box"].size], np.float32)}
        if b["lm_photo"] is not None:
            arrays["detected_landmarks"] = b["lm_photo"].astype(np.float32)
        files[paths["params"]] = _npz_bytes(arrays)
    if "overlay" in paths:
        fig = _figure(b["rgb"], b["box"], size, pred["vertices"], faces, pred["cam"])
        ok, data = cv2.imencode(".png", cv2.cvtColor(fig, cv2.COLOR_RGB2BGR))
        if not ok:
            raise ValueError(f"{paths['overlay']}: PNG encoding failed")
        files[paths["overlay"]] = data.tobytes()
    write_all(files)
