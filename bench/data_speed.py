"""Training-data speed, in images per second: synthetic rings, and preparing real photos.

    python bench/data_speed.py [--images 48] [--min_face 40] [--workers 1 2] [--synthetic 64]

Synthetic: `ringnet_tf.data.synthetic.generate` of the open head model at 256 px (FLAME decode,
render, blur and noise, JPEG, visibility, manifest and ground truth), with each worker count,
against the renderer alone on the same meshes in one process (the part it cannot avoid).

Preparation: `ringnet_tf.data.prepare` on copies of the astronaut photo (tests/data/astronaut.jpg)
placed in 640 x 480 frames (face about 80 px, as in a loosely framed web photo), spread over 4
identities, run end to end (decode, detection, the predictor on the image and its mirror, crop,
JPEG, journal, manifest) with each worker count; a multi-worker run includes starting the worker
processes and loading dlib's 100 MB predictor in each (about 1 to 2 s; shown by timing a run of
one image per worker), which a real run of thousands of images amortises.

Two baselines, one core, frames already decoded: dlib as usually called (`detector(image, 1)` and
one predictor) and the tool's own detection (the frame resized for --min_face, then dlib at its
native scale; cheaper than dlib's own upsampling) with one predictor; the second is the part the
tool cannot avoid, and the ratio to it is the tool's overhead (decoding, the mirror prediction,
crop, JPEG, journal, processes). Other load on the machine skews all rows: the load average is
printed. Needs `pip install -r requirements-data.txt`.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from ringnet_tf import preprocess  # noqa: E402
from ringnet_tf.data import landmarks_dlib as L  # noqa: E402
from ringnet_tf.data import prepare as P  # noqa: E402

PHOTO = Path(__file__).resolve().parents[1] / "tests" / "data" / "astronaut.jpg"
FRAME = (480, 640)  # height, width
IDENTITIES = 4


def make_frames(count: int, seed: int = 0) -> list[np.ndarray]:
    """`count` different 640 x 480 BGR frames holding the photo (shifted, mirrored, re-lit)."""
    try:
        photo = cv2.cvtColor(preprocess.read_image(PHOTO), cv2.COLOR_RGB2BGR)
    except preprocess.ImageReadError as e:
        raise SystemExit(str(e)) from None
    rng = np.random.default_rng(seed)
    h, w = FRAME
    frames = []
    for i in range(count):
        side = int(rng.integers(400, 460))
        face = cv2.resize(photo, (side, side), interpolation=cv2.INTER_LINEAR)
        if i % 2:
            face = face[:, ::-1]
        frame = np.full((h, w, 3), int(rng.integers(60, 200)), np.uint8)
        x, y = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
        frame[y:y + side, x:x + side] = face
        gain = rng.uniform(0.8, 1.2, 3)
        frames.append(np.clip(frame * gain, 0, 255).astype(np.uint8))
    return frames


def _write_input(frames: list[np.ndarray], root: Path) -> Path:
    for i, frame in enumerate(frames):
        folder = root / f"person{i % IDENTITIES:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i:05d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return root


def baseline_rates(frames: list[np.ndarray], min_face: float, repeats: int = 3) -> dict[str, float]:
    """Images per second, one core, frames already decoded, of detection plus one landmark
    prediction: dlib as usually called (`detector(image, 1)`), and the tool's own detection
    (`landmarks_dlib`: the frame resized for --min_face, then `detector.run(image, 0, 0)`)."""
    import dlib

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(L.find_predictor()))
    ours = L.DlibLandmarker(min_face=min_face)
    rgbs = [cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in frames]

    def plain(rgb):
        rects = detector(rgb, 1)
        if rects:
            predictor(rgb, rects[0])

    def tool_detection(rgb):
        dets = ours.detect(rgb)
        if dets:
            d = dets[0]
            predictor(rgb, dlib.rectangle(*(int(round(v)) for v in (d.left, d.top, d.right, d.bottom))))

    rates = {}
    for name, fn in (("dlib detector(image, 1) + 1 predictor", plain),
                     (f"landmarks_dlib detect (min_face {min_face:g}) + 1 predictor", tool_detection)):
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            for rgb in rgbs:
                fn(rgb)
            runs.append(len(rgbs) / (time.perf_counter() - start))
        rates[name] = statistics.median(runs)
    return rates


def bench_prepare(num_images: int, min_face: float, workers: list[int]) -> list[tuple[str, float, str]]:
    """(label, images per second, note) rows: the baselines, then prepare per worker count."""
    frames = make_frames(num_images)
    settings = P.Settings(min_face=min_face)
    rows = [(f"baseline: {name}", rate, "1 core, decoded frames")
            for name, rate in baseline_rates(frames, min_face).items()]
    with tempfile.TemporaryDirectory(prefix="data_speed_") as tmp:
        images = _write_input(frames, Path(tmp) / "photos")
        P._landmarker(settings)  # the in-process run's one-time load, outside the timing
        for n in workers:
            startup = 0.0
            if n > 1:  # start-up: a run with one image per worker
                few = _write_input(frames[:n], Path(tmp) / f"few{n}")
                start = time.perf_counter()
                P.prepare(few, Path(tmp) / f"few_out{n}", dataclasses.replace(settings, min_images=1),
                          workers=n, progress=False)
                startup = time.perf_counter() - start
            out = Path(tmp) / f"out{n}"
            start = time.perf_counter()
            summary = P.prepare(images, out, settings, workers=n, progress=False)
            seconds = time.perf_counter() - start
            if summary.num_images != num_images:
                print(f"  warning: {num_images - summary.num_images} frames skipped: {summary.skipped}")
            label = f"prepare --workers {n} --min_face {min_face:g}"
            if n == 1:
                rows.append((label, num_images / seconds, "in process, dlib loaded"))
            else:
                rows.append((label, num_images / seconds,
                             f"incl. start-up; a run of {n} images, one per worker, takes {startup:.1f} s"))
            shutil.rmtree(out)
    return rows


def bench_synthetic(num_images: int, workers: list[int], size: int = 256) -> list[tuple[str, float, str]]:
    """Synthetic generation rates, and the renderer alone on the same open-head meshes."""
    import tensorflow as tf

    from flame.io import load_flame
    from flame.layer import FlameLayer
    from ringnet_tf import render
    from ringnet_tf.data.synthetic import SynthConfig, framing_camera, generate

    per_identity = 8
    cfg = SynthConfig(identities=max(1, num_images // per_identity), images_per_identity=per_identity,
                      size=size)
    n = cfg.identities * per_identity
    model = load_flame(None)
    layer = FlameLayer(model, cfg.num_shape, cfg.num_expression)
    rng = np.random.default_rng(0)
    out = layer(tf.constant(rng.normal(size=(n, cfg.num_shape)), tf.float32),
                tf.constant(rng.normal(size=(n, cfg.num_expression)), tf.float32),
                tf.constant(0.3 * rng.normal(size=(n, 6)), tf.float32))
    verts, lms = out["vertices"].numpy(), out["landmarks"].numpy()
    start = time.perf_counter()
    for v, lm in zip(verts, lms):
        render.render(v, model.faces, framing_camera(lm), size)
    rows = [("renderer alone, 1 process (baseline)", n / (time.perf_counter() - start), f"{n} renders")]
    for w in workers:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            generate(Path(tmp) / "d", cfg, workers=w, progress=False)
            rows.append((f"synthetic generate --workers {w}", n / (time.perf_counter() - start),
                         f"{n} images incl. start-up"))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=48, help="frames to prepare per run")
    parser.add_argument("--min_face", type=float, default=P.Settings().min_face)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--synthetic", type=int, default=64, help="synthetic images per run (0: skip)")
    args = parser.parse_args()
    if args.synthetic:
        rows = bench_synthetic(args.synthetic, args.workers)
        base = rows[0][1]
        print(f"synthetic rings, 256 px (x = relative to the renderer alone; load average "
              f"{os.getloadavg()[0]:.1f}):")
        for label, rate, note in rows:
            print(f"  {label:64s} {rate:6.2f} img/s  x{rate / base:5.2f}  ({note})")
    try:
        L.check_installed()
    except L.MissingDependency as e:
        print(f"data_speed: real-photo preparation skipped: {e}")
        return 0
    load = os.getloadavg()
    print(f"cpu cores: {os.cpu_count()}, dlib {L.dlib_version()}, OpenCV {cv2.__version__}, "
          f"{args.images} frames of {FRAME[1]} x {FRAME[0]}")
    rows = bench_prepare(args.images, args.min_face, args.workers)
    base = rows[1][1]
    print(f"preparation of real photos (images per second; x = relative to the tool's own detection "
          f"+ 1 predictor; load average before: {load[0]:.1f}, after: {os.getloadavg()[0]:.1f}):")
    for label, rate, note in rows:
        print(f"  {label:64s} {rate:6.2f} img/s  x{rate / base:5.2f}  ({note})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
