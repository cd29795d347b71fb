"""Refinement speed: `ringnet_tf.refine` against the implementation it replaced, in the same run.

    python -m ringnet_tf.data.synthetic --out /tmp/syn1 --identities 40 --images-per-identity 8 --seed 1
    python bench/refine_speed.py --data /tmp/syn1 [--checkpoint checkpoints/ringnet_default] [--repeats 5]

Starts from the network's predictions on the dataset's first images and fits their true
landmarks. Prints, for a batch of 32 (the target: at most 0.1 s per image on 2 cores, at the
default steps) and for other batch sizes: the median wall time per call of the new refinement at
its defaults (traced or compiled once per batch bucket and reused, so the first call is shown
apart; for small batches, the graph loop against the XLA-compiled one, first and later calls), and
of the previous implementation (`legacy_refine`, kept verbatim below: Adam on the confidence-
weighted L1 loss, 200 steps, a new XLA compilation on every call, as `demo.py --refine 200` paid
it); the legacy loop's own time without its compilation (200 steps minus 0 steps); and each one's
mean landmark error after the fit (face sizes) as a quality check. Quality on the 3D metric: the
synthetic benchmark (`python -m ringnet_tf.evaluate synthetic`).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ringnet_tf.cli import DEFAULT_CHECKPOINT, quiet_tensorflow  # noqa: E402

quiet_tensorflow()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.timing import median_seconds  # noqa: E402
from flame.layer import FlameLayer  # noqa: E402
from ringnet_tf import camera  # noqa: E402
from ringnet_tf.params import ParamSpec  # noqa: E402

TARGET_S_PER_IMAGE = 0.1
LEGACY_STEPS = 200
BATCH = 32


def legacy_refine(flame, params, landmarks, image_size, steps, learning_rate=0.01, shape_prior=1e-3,
                  expression_prior=1e-3):
    """The refinement before issue 11, verbatim (ringnet_tf/refine.py at commit df33eeb)."""
    spec = ParamSpec(flame.num_shape, flame.num_expression)
    target = np.asarray(landmarks, np.float32)
    target = np.concatenate([camera.pixels_to_normalised(target[..., :2], image_size), target[..., 2:]], -1)
    weights = tf.constant([shape_prior, expression_prior], tf.float32)

    def objective(theta, target):
        parts = spec.split(theta)
        out = flame(parts["shape"], parts["expression"], parts["pose"])
        pred = camera.project_normalised(out["landmarks"], parts["cam"])
        per_image = tf.reduce_mean(target[..., 2] * tf.reduce_sum(tf.abs(pred - target[..., :2]), -1), -1)
        prior = (weights[0] * tf.reduce_sum(tf.square(parts["shape"]), -1)
                 + weights[1] * tf.reduce_sum(tf.square(parts["expression"]), -1))
        return per_image + prior

    @tf.function(jit_compile=True)
    def run(theta, target, steps):
        m, v = tf.zeros_like(theta), tf.zeros_like(theta)
        before = objective(theta, target)
        b1, b2, eps = 0.9, 0.999, 1e-8
        for i in tf.range(steps):
            with tf.GradientTape() as tape:
                tape.watch(theta)
                loss = tf.reduce_sum(objective(theta, target))
            g = tape.gradient(loss, theta)
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            t = tf.cast(i + 1, tf.float32)
            theta = theta - learning_rate * (m / (1 - b1 ** t)) / (tf.sqrt(v / (1 - b2 ** t)) + eps)
        return theta, tf.stack([before, objective(theta, target)])

    theta, report = run(tf.constant(params, tf.float32), tf.constant(target), tf.constant(steps))
    return theta.numpy(), report.numpy()


def landmark_error(flame: FlameLayer, params: np.ndarray, targets: np.ndarray, size: int) -> float:
    """Mean landmark distance over the batch (params [B, P], targets [B, 68, 3] crop pixels), in
    face sizes (bounding box of the targets)."""
    from ringnet_tf.evaluate.synthetic import fitted_landmarks_px, landmark_face_size

    d = np.linalg.norm(fitted_landmarks_px(flame, params, size) - targets[..., :2], axis=-1).mean(1)
    return float(np.mean(d / landmark_face_size(targets)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, type=Path, help="synthetic dataset (at least 64 images)")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)

    from ringnet_tf.evaluate.synthetic import load_bench
    from ringnet_tf.inference import load_predictor
    from ringnet_tf.refine import DEFAULT_STEPS, refine

    predictor = load_predictor(args.checkpoint)
    bench = load_bench(predictor, args.data, limit=64)
    flame, size = predictor.flame_layer, predictor.image_size
    if len(bench.params) < BATCH:
        print(f"error: {args.data}: fewer than {BATCH} images", file=sys.stderr)
        return 1
    print(f"{os.cpu_count()} cores; TensorFlow {tf.__version__}; refine defaults: at most "
          f"{DEFAULT_STEPS} steps (stopping rule); legacy: {LEGACY_STEPS} steps")
    start, targets = bench.params[:BATCH], bench.targets[:BATCH]

    t0 = time.perf_counter()
    first = refine(flame, start, targets, size)
    first_s = time.perf_counter() - t0
    new_s, legacy_s, legacy0_s = median_seconds(
        lambda: refine(flame, start, targets, size),
        lambda: legacy_refine(flame, start, targets, size, LEGACY_STEPS),
        lambda: legacy_refine(flame, start, targets, size, 0),
        repeats=args.repeats, warmup=0)
    legacy_params, _ = legacy_refine(flame, start, targets, size, LEGACY_STEPS)
    print(f"batch {BATCH}:")
    print(f"  new     {new_s:7.3f} s per call = {new_s / BATCH:.4f} s per image (first call, with "
          f"compilation: {first_s:.2f} s); ran {first.steps} steps (per image mean "
          f"{first.image_steps.mean():.0f}); landmark error "
          f"{landmark_error(flame, first.params, targets, size):.4f} face sizes")
    print(f"  legacy  {legacy_s:7.3f} s per call = {legacy_s / BATCH:.4f} s per image; its "
          f"{LEGACY_STEPS}-step loop alone (minus a 0-step call) {legacy_s - legacy0_s:.3f} s = "
          f"{(legacy_s - legacy0_s) / BATCH:.4f} s per image; landmark error "
          f"{landmark_error(flame, legacy_params, targets, size):.4f} face sizes")
    ok = new_s / BATCH <= TARGET_S_PER_IMAGE
    print(f"  target <= {TARGET_S_PER_IMAGE} s per image: {'met' if ok else 'NOT met'} "
          f"({legacy_s / new_s:.0f}x faster than legacy per call)")
    # Which loop small batches run (refine.GRAPH_MAX_ROWS): each path's first call on a bucket it
    # has not seen (graph: tracing; XLA: tracing and compiling) and its later calls.
    import ringnet_tf.refine as R

    default_max = R.GRAPH_MAX_ROWS
    print(f"graph loop against XLA-compiled loop (refine uses the graph for <= {default_max} rows):")
    try:
        for b in (1, 4, 8, 16):
            s, t_ = bench.params[:b], bench.targets[:b]
            row = []
            for name, max_rows in (("graph", 10**9), ("XLA", 0)):
                R.GRAPH_MAX_ROWS = max_rows
                t0 = time.perf_counter()
                refine(flame, s, t_, size)
                first_call = time.perf_counter() - t0
                later = median_seconds(lambda: refine(flame, s, t_, size), repeats=args.repeats, warmup=0)[0]
                row.append(f"{name} first call {first_call:6.2f} s, then {later:6.3f} s")
            print(f"  batch {b:3d}: " + "; ".join(row))
    finally:
        R.GRAPH_MAX_ROWS = default_max
    for b in (1, 8, 64):
        if b > len(bench.params):
            continue
        s, t_ = bench.params[:b], bench.targets[:b]
        refine(flame, s, t_, size)  # compile this bucket
        sec = median_seconds(lambda: refine(flame, s, t_, size), repeats=args.repeats, warmup=0)[0]
        print(f"batch {b:3d}: new {sec:7.3f} s per call = {sec / b:.4f} s per image")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
