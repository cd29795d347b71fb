"""FLAME forward speed and memory: our TF layer (eager and XLA) against smplx in the same run.

    python bench/flame_speed.py [--flame_model DIR] [--repeats 200]

Prints, per batch size (1, 64, 256): the median forward time of FlameLayer (vertices, joints and
the 68 landmarks with the dynamic contour) with RingNet's 6-d pose and with FLAME's 15-d pose,
eager and under XLA, and of smplx's FLAME (PyTorch, CPU, face contour on) as the baseline; then
the process's peak memory. Targets on a 2-core CPU: batch 64 in 3 ms or less, batch 1 in 1 ms or less.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ringnet_tf.cli import add_flame_model_argument, quiet_tensorflow  # noqa: E402

quiet_tensorflow()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.timing import median_seconds  # noqa: E402
from flame.io import load_flame  # noqa: E402
from flame.layer import FlameLayer  # noqa: E402

BATCHES = (1, 64, 256)
TARGET_MS = {1: 1.0, 64: 3.0}
NUM_SHAPE, NUM_EXPR = 100, 50


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _inputs(batch: int, pose_dim: int, seed: int = 0) -> list[tf.Tensor]:
    rng = np.random.default_rng(seed)
    return [tf.constant(rng.normal(size=(batch, NUM_SHAPE)), tf.float32),
            tf.constant(rng.normal(size=(batch, NUM_EXPR)), tf.float32),
            tf.constant(0.2 * rng.normal(size=(batch, pose_dim)), tf.float32)]


def bench_tf(layer: FlameLayer, repeats: int) -> dict[tuple[str, int, int], float]:
    results = {}
    def forward(*args):
        return layer(*args)

    for mode, jit in (("eager", None), ("xla", True)):
        fn = forward if jit is None else tf.function(forward, jit_compile=True)
        for pose_dim in (6, 15):
            for batch in BATCHES:
                args = _inputs(batch, pose_dim)
                # On CPU a call returns when its result is computed; .numpy() of one small
                # output forces completion without timing a copy of all vertices.
                ms = 1e3 * median_seconds(lambda: fn(*args)["landmarks"].numpy(),
                                          repeats=repeats if batch < 256 else repeats // 4, warmup=5)[0]
                results[(mode, pose_dim, batch)] = ms
                print(f"  FlameLayer {mode:5s} pose {pose_dim:2d}-d  batch {batch:3d}: {ms:8.3f} ms"
                      f"  ({1e3 * ms / batch:8.1f} us/example)  peak RSS {_peak_rss_mb():7.0f} MB",
                      flush=True)
    return results


def bench_smplx(model_dir: Path, repeats: int) -> dict[int, float] | None:
    try:
        import smplx
        import torch
    except ImportError:
        print("  smplx / torch not installed: no baseline (pip install -r requirements-dev.txt)")
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        # smplx looks for FLAME_NEUTRAL.pkl and the embeddings in one folder.
        (Path(tmp) / "FLAME_NEUTRAL.pkl").symlink_to(model_dir / "generic_model.pkl")
        for name in ("flame_static_embedding.pkl", "flame_dynamic_embedding.npy"):
            (Path(tmp) / name).symlink_to(model_dir / name)
        for batch in BATCHES:
            flame = smplx.FLAME(model_path=tmp, num_betas=NUM_SHAPE, num_expression_coeffs=NUM_EXPR,
                                use_face_contour=True, batch_size=batch)
            rng = np.random.default_rng(0)
            kwargs = {k: torch.tensor(rng.normal(size=(batch, n)) * s, dtype=torch.float32)
                      for k, n, s in (("betas", NUM_SHAPE, 1), ("expression", NUM_EXPR, 1),
                                      ("global_orient", 3, 0.2), ("jaw_pose", 3, 0.2))}
            with torch.no_grad():
                ms = 1e3 * median_seconds(lambda: flame(**kwargs), repeats=repeats if batch < 256 else repeats // 4,
                                          warmup=5)[0]
            results[batch] = ms
            print(f"  smplx FLAME (torch {torch.__version__}, {torch.get_num_threads()} threads) "
                  f"batch {batch:3d}: {ms:8.3f} ms  ({1e3 * ms / batch:8.1f} us/example)", flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_flame_model_argument(parser, help="FLAME model file or folder (default: the open head model)")
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per configuration")
    args = parser.parse_args()
    model = load_flame(args.flame_model)
    model_dir = Path(model.source).parent
    print(f"model: {model.source} ({model.num_vertices} vertices), fingerprint {model.fingerprint()}")
    print(f"cpu cores: {os.cpu_count()}, TensorFlow {tf.__version__}")
    layer = FlameLayer(model, NUM_SHAPE, NUM_EXPR)
    base_rss = _peak_rss_mb()
    print(f"peak RSS after loading TF and the model: {base_rss:.0f} MB")
    print("ours:")
    ours = bench_tf(layer, args.repeats)
    ours_rss = _peak_rss_mb()
    print("baseline:")
    ref = bench_smplx(model_dir, args.repeats)
    print("summary (XLA, RingNet's 6-d pose):")
    for batch in BATCHES:
        ms = ours[("xla", 6, batch)]
        line = f"  batch {batch:3d}: {ms:7.3f} ms"
        if ref:
            line += f"  vs smplx {ref[batch]:7.3f} ms  ({ref[batch] / ms:5.1f}x faster)"
        if batch in TARGET_MS:
            line += f"  target <= {TARGET_MS[batch]:.0f} ms: {'met' if ms <= TARGET_MS[batch] else 'MISSED'}"
        print(line)
    print(f"peak RSS of our runs: {ours_rss:.0f} MB ({ours_rss - base_rss:.0f} MB above TF and the "
          f"loaded model); with smplx and torch loaded: {_peak_rss_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
