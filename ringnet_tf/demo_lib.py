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
from typing import TYPE_CHECKING, Any, TextIO

import cv2
import numpy as np

from flame.fileutil import write_all
from flame.mesh_io import MESH_FORMATS, mesh_bytes
from ringnet_tf import preprocess
from ringnet_tf.camera import reframe_camera
from ringnet_tf.progress import Progress

if TYPE_CHECKING:
    from ringnet_tf.inference import Predictor
    from ringnet_tf.refine import RefineResult
    from ringnet_tf.video import ClipInfo

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
    # Several images of one person: None (each alone), "all" (every image one person) or
    # "folder" (one person per folder); their shape is fitted jointly (see ringnet_tf.refine).
    group: str | None = None
    # Textured mesh: the UVs (vt [NVT, 2], ft [F, 3]) of the head model, None for no texture;
    # writes <stem>_textured.obj / .mtl / .png.
    texture_uv: tuple[np.ndarray, np.ndarray] | None = None
    texture_size: int = 1024


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
    if opts.texture_uv is not None:
        from ringnet_tf.texture import textured_paths

        paths.update(textured_paths(stem.with_name(stem.name + "_textured.obj")))
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

    # With several images per person, each person's outputs are claimed first (person.jpg's
    # person.npz would be the person's shape file).
    people = ({Path(os.path.abspath(p)) for im in images
               for p in person_paths(person_folder(im, root, out, opts.group)).values()}
              if opts.group else set())
    plans: list = [output_paths(im, root, out, single, opts) for im in images]
    clashing = {i for owners in claims(plans).values() if len(owners) > 1 for i in owners}
    clashing |= {i for path, owners in claims(plans).items() if path in people for i in owners}
    for i in clashing:
        plans[i] = output_paths(images[i], root, out, single, opts, qualify=True)
    for path, owners in claims(plans).items():
        if path in people:
            for i in owners:
                plans[i] = f"its output {path} is the person's output of the same name"
            continue
        for i in owners[1:]:
            if isinstance(plans[i], dict):
                plans[i] = f"its output {path} is also an output of {images[owners[0]]}"
    return plans


class Detector:
    """Face box and 68 landmarks by dlib (optional install), with the several-faces policy that
    data preparation uses (`landmarks_dlib.choose_face`, its default settings)."""

    def __init__(self):
        from ringnet_tf.data import landmarks_dlib as L  # dlib is optional: imported when needed

        self.L = L
        self.policy = L.FacePolicy()
        self.landmarker = L.default_landmarker()

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """[68, 3] landmarks (x, y, confidence) in the photo's pixels; ImageFailure without a face."""
        try:
            _, lm = self.L.choose_face(self.landmarker, rgb, self.policy)
        except self.L.FaceRejected as s:
            raise ImageFailure(f"{s.reason} ({s.detail})" if s.detail else s.reason) from None
        return lm.as_array()


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def overlay_photo(rgb: np.ndarray, box: preprocess.Box, crop_size: int, vertices: np.ndarray,
                  faces: np.ndarray, cam: np.ndarray, max_side: int = FIGURE_SIZE) -> np.ndarray:
    """The photo, shrunk to at most `max_side`, with the whole projected mesh rendered over it:
    [h, w, 3] uint8 RGB.

    The photo is shrunk first and the mesh rendered straight into its frame (the network's camera
    re-expressed for it), so memory does not grow with the photo's size and nothing is clipped to
    the crop box.
    """
    from ringnet_tf import render

    h, w = rgb.shape[:2]
    scale = max_side / max(h, w)
    fw, fh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    small = rgb if (fw, fh) == (w, h) else cv2.resize(
        rgb, (fw, fh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    # crop pixels -> photo pixels (inverse of the box's affine) -> figure pixels (cv2.resize keeps
    # pixel centres: f = (p + 0.5) r - 0.5); the box is square and axis-aligned, so one factor.
    a = box.affine(crop_size)
    k = scale / a[0, 0]
    offset = (-a[:, 2] / a[0, 0] + 0.5) * scale - 0.5
    side = max(fw, fh)
    result = render.render(vertices, faces, reframe_camera(cam, crop_size, k, offset, side), side)
    return render.overlay(small, result)  # the square render's top-left corner is the photo


def _figure(rgb: np.ndarray, box: preprocess.Box, crop_size: int, vertices: np.ndarray,
            faces: np.ndarray, cam: np.ndarray, max_side: int = FIGURE_SIZE) -> np.ndarray:
    """`overlay_photo` and a side view of the mesh beside it: [h, w + h, 3] uint8 RGB."""
    from ringnet_tf import render

    over = overlay_photo(rgb, box, crop_size, vertices, faces, cam, max_side)
    # The camera is resolution-free (normalised coordinates): render the side view at figure size.
    side_img = render.side_view(vertices, faces, cam, over.shape[0], background=(255, 255, 255)).image
    return np.concatenate([over, side_img], axis=1)


def prepare_face(rgb: np.ndarray, detector: Detector | None, size: int) -> dict[str, Any]:
    """Finds the face (or takes the centre crop) and crops it: box, crop, photo landmarks."""
    if detector is not None:
        lm_photo = detector(rgb)
        box = preprocess.box_from_landmarks(lm_photo)
    else:
        lm_photo = None
        box = preprocess.centre_box(*rgb.shape[:2])
    return {"box": box, "crop": preprocess.crop(rgb, box, size), "lm_photo": lm_photo}


def refine_items(predictor: Predictor, items: list[dict[str, Any]], params: np.ndarray, steps: int,
                 groups: np.ndarray | None = None, smooth: float = 0.0,
                 stream: TextIO | None = None) -> RefineResult:
    """Refines every item's parameters (params [N, P]) against its detected landmarks, in one
    batched call: items of one group share one shape (`groups`: [N] int, None: each image alone).
    Returns the refine module's result (params, losses, excluded images and why)."""
    from ringnet_tf.refine import refine

    size = predictor.image_size
    targets = np.stack([preprocess.transform_points(b["lm_photo"], b["box"].affine(size)) for b in items])
    result = refine(predictor.flame_layer, params, targets, size, steps, groups=groups, smooth=smooth)
    if stream is not None:
        print(f"refined {len(items)} image(s) in {result.steps} steps: landmark loss "
              f"{result.loss_before.mean():.4f} -> {result.loss_after.mean():.4f}", file=stream, flush=True)
    return result


def _groups_of(items: list[dict[str, Any]], root: Path | None, mode: str | None) -> np.ndarray | None:
    """[N] group ids: None (each image alone), "all" (one person) or "folder" (one per folder)."""
    if mode is None:
        return None
    if mode == "all":
        return np.zeros(len(items), np.int64)
    keys = [str(b["image"].parent.relative_to(root) if root is not None else Path(".")) for b in items]
    ids = {k: i for i, k in enumerate(sorted(set(keys)))}
    return np.array([ids[k] for k in keys], np.int64)


def person_folder(image: Path, root: Path | None, out: Path, group: str | None) -> Path:
    """Where the outputs of `image`'s person go: --out for one person, else its folder under --out."""
    return out if group == "all" or root is None else out / image.parent.relative_to(root)


def person_paths(folder: Path) -> dict[str, Path]:
    """A person's outputs (several images of one person): neutral mesh and shape."""
    return {"person_neutral": folder / "person_neutral.obj", "person": folder / "person.npz"}


def run_demo(predictor: Predictor, images: list[Path], root: Path | None, out: Path, opts: DemoOptions,
             stream: TextIO | None = None, err: TextIO | None = None) -> tuple[int, int]:
    """Reads, crops and regresses the images in batches; without refinement writes each batch's
    outputs at once, with it refines all images together (shared shapes with `opts.group`) and then
    writes them (and each person's outputs); returns (succeeded, failed)."""
    stream, err = stream or sys.stdout, err or sys.stderr
    detector = None if opts.no_detect else Detector()
    size = predictor.image_size
    refining = bool(opts.refine_steps) and predictor.flame_layer is not None and not opts.no_detect
    counts = {"ok": 0, "failed": 0}
    plans = plan_outputs(images, root, out, opts)
    kept: list[dict[str, Any]] = []  # items waiting for the joint refinement (params, no crop)
    progress = Progress(len(images), "reading and regressing", stream=err)
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
                # The photo is not kept (a folder of large photos would not fit in memory): an
                # overlay reads it again.
                batch.append({"image": image, "paths": paths, **prepare_face(rgb, detector, size)})
            except ImageFailure as e:
                progress.write(f"{image}: skipped: {e}", file=err)
                counts["failed"] += 1
            progress.update()
        if not batch:
            continue
        pred = predictor.predict(np.stack([b.pop("crop") for b in batch]))
        if refining:
            for b, p in zip(batch, pred["params"]):
                kept.append({**b, "params": p})
        else:
            _write_batch(predictor, batch, pred, opts, counts, stream, err)
    progress.close()
    if refining and kept:
        params = np.stack([b["params"] for b in kept])
        groups = _groups_of(kept, root, opts.group)
        result = refine_items(predictor, kept, params, opts.refine_steps, groups, stream=stream)
        for b, why in zip(kept, result.reasons):
            if why:
                print(f"{b['image']}: left out of the shared shape: {why}", file=err, flush=True)
        for start in range(0, len(kept), opts.batch_size):
            batch = kept[start:start + opts.batch_size]
            _write_batch(predictor, batch, predictor.decode(result.params[start:start + len(batch)]),
                         opts, counts, stream, err)
        if groups is not None:
            counts["failed"] += _write_people(predictor, kept, result.params, groups, result.reasons,
                                              root, out, opts, stream, err)
    elif opts.group is not None and not refining:
        print("note: no refinement, so no shared shape: each image keeps its own (--refine N, "
              "with detection and a checkpoint rather than a SavedModel, fits one)", file=err)
    return counts["ok"], counts["failed"]


def _write_batch(predictor: Predictor, batch: list[dict[str, Any]], pred: dict[str, np.ndarray],
                 opts: DemoOptions, counts: dict[str, int], stream: TextIO, err: TextIO) -> None:
    """Writes a batch's outputs (pred: `Predictor.predict`'s arrays, [B, ...]), counting successes."""
    need_neutral = opts.neutral or opts.now_root is not None
    neutral = predictor.neutral(pred["shape"]) if need_neutral else None
    for i, b in enumerate(batch):
        try:
            _write(b, {k: v[i] for k, v in pred.items()},
                   {k: v[i] for k, v in neutral.items()} if neutral else None, predictor,
                   predictor.image_size, opts)
            counts["ok"] += 1
            print(f"{b['image']} -> {b['paths']['mesh']}", file=stream, flush=True)
        except (OSError, ValueError) as e:  # ImageReadError is a ValueError
            print(f"{b['image']}: failed: {e}", file=err, flush=True)
            counts["failed"] += 1


def _write_people(predictor: Predictor, items: list[dict[str, Any]], params: np.ndarray,
                  groups: np.ndarray, excluded: list[str], root: Path | None, out: Path,
                  opts: DemoOptions, stream: TextIO, err: TextIO) -> int:
    """Each person's neutral mesh and shape (the shape shared by the images not excluded);
    params [N, P], groups [N], excluded [N] ('' or why). Returns the number of people that could
    not be written."""
    from ringnet_tf.params import ParamSpec

    flame = predictor.flame_layer  # present: people are written only after a refinement
    spec = ParamSpec(flame.num_shape, flame.num_expression)
    failures = 0
    for g in np.unique(groups):
        members = [i for i in range(len(items)) if groups[i] == g]
        kept = [i for i in members if not excluded[i]] or members
        first = items[members[0]]["image"]
        paths = person_paths(person_folder(first, root, out, opts.group))
        # Kept images share one shape after the fit; the mean is that shape.
        shape = params[kept][:, spec.slices()["shape"]].mean(axis=0)
        try:
            existing = [p for p in paths.values() if p.exists()]
            if existing and not opts.force:
                raise OSError(f"{existing[0]} exists (pass --force to overwrite)")
            neutral = predictor.neutral(shape[None])
            arrays = {"shape": shape.astype(np.float32),
                      "images": np.array([str(items[i]["image"]) for i in members]),
                      "excluded": np.array([bool(excluded[i]) for i in members]),
                      "excluded_reason": np.array([excluded[i] for i in members]),
                      "now_landmarks": neutral["now_landmarks"][0]}
            write_all({paths["person_neutral"]: mesh_bytes(paths["person_neutral"], neutral["vertices"][0],
                                                           predictor.faces),
                       paths["person"]: _npz_bytes(arrays)})
            print(f"person of {len(kept)} image(s) ({len(members) - len(kept)} left out) -> "
                  f"{paths['person_neutral']}", file=stream, flush=True)
        except OSError as e:
            print(f"{paths['person'].parent}: person outputs failed: {e}", file=err, flush=True)
            failures += 1
    return failures


def _write(b: dict[str, Any], pred: dict[str, np.ndarray], neutral: dict[str, np.ndarray] | None,
           predictor: Predictor, size: int, opts: DemoOptions) -> None:
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
    rgb = None
    if "overlay" in paths or "textured" in paths:
        rgb = preprocess.read_image(b["image"])  # not kept since the crop (memory)
    if "textured" in paths:
        from ringnet_tf import texture

        vt, ft = opts.texture_uv
        tex, _ = texture.project_texture(rgb, pred["vertices"], faces, pred["cam"], b["box"], size,
                                         vt, ft, opts.texture_size)
        files.update(texture.textured_obj_files(paths["textured"], pred["vertices"], faces, vt, ft, tex))
    if "overlay" in paths:
        fig = _figure(rgb, b["box"], size, pred["vertices"], faces, pred["cam"])
        ok, data = cv2.imencode(".png", cv2.cvtColor(fig, cv2.COLOR_RGB2BGR))
        if not ok:
            raise ValueError(f"{paths['overlay']}: PNG encoding failed")
        files[paths["overlay"]] = data.tobytes()
    write_all(files)


# ---------------------------------------------------------------------------------------------
# Video: one person, pose and expression per frame


@dataclasses.dataclass(frozen=True)
class VideoOptions:
    every: int = 1  # keep every N-th frame
    max_frames: int | None = None  # at most this many kept frames
    meshes: bool = False  # also one mesh per kept frame, in <stem>_meshes/
    smooth: float = 10.0  # temporal smoothness of pose, expression and camera (see refine.py)
    overlay_max_side: int = 960  # the overlay video's photo panel, at most this many pixels


def video_paths(clip: Path, out: Path, opts: DemoOptions) -> dict[str, Path]:
    stem = clip.stem
    paths = {"params": out / f"{stem}.npz", "person_neutral": out / f"{stem}_neutral{opts.mesh_suffix}"}
    if opts.overlay:
        from ringnet_tf.video import OVERLAY_SUFFIX

        paths["overlay"] = out / f"{stem}_overlay{OVERLAY_SUFFIX}"
    return paths


def run_video(predictor: Predictor, clip: Path, out: Path, opts: DemoOptions, vopts: VideoOptions,
              stream: TextIO | None = None, err: TextIO | None = None) -> int:
    """Reconstructs the person in a clip: one shape for the clip, pose, expression and camera per
    kept frame (temporally smoothed), written to `out`: <stem>.npz (per-frame parameters and
    landmarks), <stem>_neutral.obj, optionally per-frame meshes and an overlay video. Everything is
    written at the end, all or nothing. Returns the number of kept frames reconstructed.

    Raises VideoError (one line) when the clip does not decode or no frame shows a face.
    """
    from ringnet_tf import video as V

    stream, err = stream or sys.stdout, err or sys.stderr
    if predictor.flame_layer is None:
        raise V.VideoError(f"{clip}: video needs a checkpoint (its FLAME layer), not a SavedModel")
    cap, info = V.open_clip(clip)
    cap.release()
    paths = video_paths(clip, out, opts)
    existing = [p for p in paths.values() if p.exists()]
    mesh_dir = out / f"{clip.stem}_meshes"
    if vopts.meshes and mesh_dir.exists():
        existing.append(mesh_dir)
    if existing and not opts.force:
        raise FileExistsError(f"{existing[0]} exists (pass --force to overwrite)")
    detector = None if opts.no_detect else Detector()
    size = predictor.image_size
    expected = info.frame_count // vopts.every + 1 if info.frame_count else 0
    if vopts.max_frames:
        expected = min(expected, vopts.max_frames) if expected else vopts.max_frames
    progress = Progress(expected, f"{clip.name}: frames", stream=err, unit="frame")
    items: list[dict[str, Any]] = []
    no_face: list[int] = []
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        if batch:
            pred = predictor.predict(np.stack([b.pop("crop") for b in batch]))
            items.extend({**b, "params": p} for b, p in zip(batch, pred["params"]))
            batch.clear()

    for index, rgb in V.frames(clip, vopts.every, vopts.max_frames):
        try:
            batch.append({"frame": index, **prepare_face(rgb, detector, size)})
        except ImageFailure:
            no_face.append(index)
        if len(batch) >= opts.batch_size:
            flush()
        progress.update()
    flush()
    progress.close()
    if no_face:
        shown = ", ".join(map(str, no_face[:20])) + (" ..." if len(no_face) > 20 else "")
        print(f"{clip}: no face in {len(no_face)} frame(s), skipped: {shown}", file=err, flush=True)
    if not items:
        raise V.VideoError(f"{clip}: no face found in any of the {len(no_face)} frame(s) read")
    params = np.stack([b["params"] for b in items])
    if opts.refine_steps and predictor.flame_layer is not None and not opts.no_detect:
        result = refine_items(predictor, items, params, opts.refine_steps,
                              groups=np.zeros(len(items), np.int64), smooth=vopts.smooth, stream=stream)
        params = result.params
        for b, why in zip(items, result.reasons):
            if why:
                print(f"{clip} frame {b['frame']}: left out of the shared shape: {why}", file=err, flush=True)
    decoded = [predictor.decode(params[i:i + opts.batch_size]) for i in range(0, len(items), opts.batch_size)]
    pred = {k: np.concatenate([d[k] for d in decoded]) for k in decoded[0]}
    person_shape = pred["shape"].mean(axis=0)
    neutral = predictor.neutral(person_shape[None])
    files: dict[Path, bytes] = {
        paths["person_neutral"]: mesh_bytes(paths["person_neutral"], neutral["vertices"][0], predictor.faces)}
    lm_frame = np.stack([preprocess.transform_points(lm, cv2.invertAffineTransform(b["box"].affine(size)))
                         for lm, b in zip(pred["landmarks2d"], items)])
    arrays = {
        "frame": np.array([b["frame"] for b in items], np.int64),
        "time": np.array([b["frame"] / info.fps for b in items], np.float64),
        "cam": pred["cam"], "pose": pred["pose"], "flame_pose": pred["flame_pose"],
        "expression": pred["expression"], "shape": pred["shape"], "person_shape": person_shape,
        "landmarks2d": lm_frame.astype(np.float32), "now_landmarks": neutral["now_landmarks"][0],
        "crop_box": np.array([[b["box"].cx, b["box"].cy, b["box"].size] for b in items], np.float32),
        "frames_without_face": np.array(no_face, np.int64), "fps": np.float64(info.fps)}
    if items[0]["lm_photo"] is not None:
        arrays["detected_landmarks"] = np.stack([b["lm_photo"] for b in items]).astype(np.float32)
    files[paths["params"]] = _npz_bytes(arrays)
    if vopts.meshes:
        for i, b in enumerate(items):
            mesh = mesh_dir / f"frame_{b['frame']:06d}{opts.mesh_suffix}"
            files[mesh] = mesh_bytes(mesh, pred["vertices"][i], predictor.faces)
    if opts.overlay:
        files[paths["overlay"]] = _overlay_video(clip, info, items, pred, predictor, vopts, out, err)
    write_all(files)
    print(f"{clip}: {len(items)} frame(s) -> {paths['params']}, {paths['person_neutral']}"
          + (f", {paths['overlay']}" if opts.overlay else ""), file=stream, flush=True)
    return len(items)


def _overlay_video(clip: Path, info: ClipInfo, items: list[dict[str, Any]], pred: dict[str, np.ndarray],
                   predictor: Predictor, vopts: VideoOptions, out: Path, err: TextIO) -> bytes:
    """The overlay video's bytes: every kept frame with the mesh over it and a side view (frames
    without a face shown as they are), at the kept frames' rate. Decodes the clip a second time."""
    import tempfile

    from ringnet_tf import render
    from ringnet_tf import video as V

    by_frame = {b["frame"]: i for i, b in enumerate(items)}
    scale = min(1.0, vopts.overlay_max_side / max(info.width, info.height))
    fw, fh = max(2, int(round(info.width * scale)) // 2 * 2), max(2, int(round(info.height * scale)) // 2 * 2)
    out.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{clip.stem}_overlay.", suffix=V.OVERLAY_SUFFIX)
    os.close(fd)
    try:
        writer = V.OverlayWriter(tmp, info.fps / vopts.every, fw + fh, fh)
        progress = Progress(len(by_frame), f"{clip.name}: overlay", stream=err, unit="frame")
        blank = np.full((fh, fh, 3), 255, np.uint8)
        for index, rgb in V.frames(clip, vopts.every, vopts.max_frames):
            i = by_frame.get(index)
            if i is None:
                frame = np.concatenate([cv2.resize(rgb, (fw, fh), interpolation=cv2.INTER_AREA), blank], 1)
            else:
                over = overlay_photo(rgb, items[i]["box"], predictor.image_size, pred["vertices"][i],
                                     predictor.faces, pred["cam"][i], max(fw, fh))
                over = cv2.resize(over, (fw, fh), interpolation=cv2.INTER_AREA)
                side = render.side_view(pred["vertices"][i], predictor.faces, pred["cam"][i], fh,
                                        background=(255, 255, 255)).image
                frame = np.concatenate([over, side], axis=1)
            writer.write(frame)
            progress.update()
        writer.close()
        progress.close()
        return Path(tmp).read_bytes()
    finally:
        Path(tmp).unlink(missing_ok=True)
