"""Video speed: a 30 s 640 x 480 clip at `--every 5`, end to end, against detection alone.

    python bench/video_speed.py [--seconds 30] [--every 5] [--checkpoint checkpoints/ringnet_default]

Makes a clip (the bundled photo moving across a dark frame, 30 fps, with one second showing no
face), then times in one process:
- baseline: decoding the kept frames and dlib's detection and 68 landmarks on each (the floor any
  per-frame method pays);
- the demo's video path (`run_video`): decoding, detection, the network, the shared-shape fit with
  temporal smoothing (default refinement), the .npz, the neutral mesh and the overlay video.
Target (issue 11): under 2 minutes on 2 cores for the 30 s clip.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ringnet_tf.cli import DEFAULT_CHECKPOINT, add_flame_model_argument, quiet_tensorflow  # noqa: E402

quiet_tensorflow()

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from ringnet_tf import preprocess  # noqa: E402
from ringnet_tf import video as V  # noqa: E402
from ringnet_tf.demo_lib import DemoOptions, Detector, ImageFailure, VideoOptions, run_video  # noqa: E402
from ringnet_tf.inference import load_predictor  # noqa: E402
from ringnet_tf.refine import DEFAULT_STEPS  # noqa: E402

PHOTO = ROOT / "examples" / "astronaut.jpg"


def make_clip(path: Path, seconds: float, fps: int = 30, size: tuple[int, int] = (640, 480)) -> int:
    w, h = size
    photo = cv2.cvtColor(preprocess.read_image(PHOTO), cv2.COLOR_RGB2BGR)  # VideoWriter takes BGR
    scale = 0.6 * h / max(photo.shape[:2])
    small = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    n = int(seconds * fps)
    for i in range(n):
        frame = np.full((h, w, 3), 35, np.uint8)
        if not (n // 2 <= i < n // 2 + fps):  # one second without a face
            x = int((w - small.shape[1]) / 2 + 0.3 * (w - small.shape[1]) / 2 * np.sin(i / 45))
            y = int((h - small.shape[0]) / 2 + 10 * np.cos(i / 60))
            frame[y:y + small.shape[0], x:x + small.shape[1]] = small
        writer.write(frame)
    writer.release()
    return n


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--every", type=int, default=5)
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    add_flame_model_argument(p)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        frames = make_clip(clip, args.seconds)
        print(f"clip: {frames} frames, 640 x 480, 30 fps ({args.seconds:g} s); every {args.every}")
        detector = Detector()
        t0 = time.perf_counter()
        found = 0
        for _, rgb in V.frames(clip, args.every):
            try:
                detector(rgb)
                found += 1
            except ImageFailure:
                pass
        baseline = time.perf_counter() - t0
        print(f"baseline: decode + dlib detection and landmarks: {baseline:.1f} s ({found} faces)")
        predictor = load_predictor(args.checkpoint, args.flame_model)
        t0 = time.perf_counter()
        n = run_video(predictor, clip, Path(tmp) / "out",
                      DemoOptions(overlay=True, refine_steps=DEFAULT_STEPS, force=True),
                      VideoOptions(every=args.every), stream=open(os.devnull, "w"),
                      err=open(os.devnull, "w"))
        total = time.perf_counter() - t0
        print(f"demo video path ({n} frames, refinement up to {DEFAULT_STEPS} steps, overlay video): "
              f"{total:.1f} s = {total / max(baseline, 1e-9):.2f} x the baseline; target < 120 s: "
              f"{'met' if total < 120 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
