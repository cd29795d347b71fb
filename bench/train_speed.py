"""Training speed: the full RingNet train step against a bare ResNet-50 train step, in one run.

    python bench/train_speed.py [--image_size 224] [--ring_size 6] [--rings_per_batch 2] [--steps 10]

Both steps see the same number of images at the same resolution with the same optimizer (Adam):
the bare step is ResNet-50 -> Dense(159) with a squared loss, the full step is RingNet's network
(regressor with 3 feedback stages, FLAME, projection) and its losses on ring batches. Each is timed
without and with XLA, in float32 and with mixed precision (bfloat16 on CPU, float16 on GPU).
Target: full step at 0.9 of the bare step's images per second or better. Then the input pipeline
alone (decode, augment, batch rings from JPEG files) must deliver at least 5 times the rate the
train step consumes.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ringnet_tf.cli import add_flame_model_argument, quiet_tensorflow  # noqa: E402

quiet_tensorflow()

import cv2  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from flame.io import load_flame  # noqa: E402
from flame.model import FlameModel  # noqa: E402
from ringnet_tf.data import dataset as D  # noqa: E402
from ringnet_tf.data.rings import RingConfig, ring_dataset  # noqa: E402
from ringnet_tf.model import ModelConfig, build_backbone, build_ringnet  # noqa: E402
from ringnet_tf.trainer import RingNetTrainer  # noqa: E402


def _time_fit(model: keras.Model, data: tf.data.Dataset, steps: int) -> float:
    """Images per second over `steps` steps after a warm-up fit (tracing and compiling)."""
    model.fit(data, steps_per_epoch=2, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    return time.perf_counter() - start


def bench_pair(flame: FlameModel, args: argparse.Namespace, jit: bool, policy: str) -> tuple[float, float]:
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(0)
    n_img = args.ring_size * args.rings_per_batch
    size = args.image_size
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (n_img, size, size, 3)).astype(np.float32)
    # Bare backbone: same images, a 159-d head, a squared loss.
    backbone = build_backbone(size)
    inputs = keras.Input((size, size, 3))
    bare = keras.Model(inputs, keras.layers.Dense(159, dtype="float32")(backbone(inputs)))
    bare.compile(optimizer=keras.optimizers.Adam(1e-4), loss="mse", jit_compile=jit)
    bare_data = tf.data.Dataset.from_tensors((images, np.zeros((n_img, 159), np.float32))).repeat()
    bare_s = _time_fit(bare, bare_data, args.steps)
    # Full RingNet step on ring batches of the same images.
    net = build_ringnet(flame, ModelConfig(image_size=size))
    trainer = RingNetTrainer(net)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-4), jit_compile=jit)
    lm = np.concatenate([rng.uniform(0, size, (n_img, 68, 2)), np.ones((n_img, 68, 1))], -1)
    ring = {"images": images.reshape(args.rings_per_batch, args.ring_size, size, size, 3),
            "landmarks": lm.reshape(args.rings_per_batch, args.ring_size, 68, 3).astype(np.float32)}
    full_s = _time_fit(trainer, tf.data.Dataset.from_tensors(ring).repeat(), args.steps)
    keras.mixed_precision.set_global_policy("float32")
    return n_img * args.steps / bare_s, n_img * args.steps / full_s


def bench_pipeline(args, seconds: float = 10.0) -> float:
    """Ring images per second of the tf.data pipeline alone, from 256 px JPEG files."""
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        records = []
        for i in range(120):
            ident, name = f"id{i // 6:03d}", f"images/id{i // 6:03d}/{i:03d}.jpg"
            (Path(tmp) / name).parent.mkdir(parents=True, exist_ok=True)
            small = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
            img = cv2.resize(small, (256, 256), interpolation=cv2.INTER_CUBIC)
            cv2.imwrite(str(Path(tmp) / name), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
            lm = np.concatenate([rng.uniform(60, 200, (68, 2)), np.ones((68, 1))], 1)
            records.append(D.Record(name, ident, lm.astype(np.float32)))
        D.write_manifest(tmp, records)
        D.write_meta(tmp, {"source": "bench"})
        cfg = RingConfig(ring_size=args.ring_size, rings_per_batch=args.rings_per_batch,
                         image_size=args.image_size)
        it = iter(ring_dataset(tmp, cfg))
        for _ in range(3):
            next(it)
        start, batches = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            next(it)
            batches += 1
        return batches * args.ring_size * args.rings_per_batch / (time.perf_counter() - start)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--ring_size", type=int, default=6)
    p.add_argument("--rings_per_batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    add_flame_model_argument(p, help="FLAME model file or folder (default: the open head model)")
    p.add_argument("--quick", action="store_true", help="float32 without XLA only")
    args = p.parse_args()
    flame = load_flame(args.flame_model)
    gpu = bool(tf.config.list_logical_devices("GPU"))
    mixed = "mixed_float16" if gpu else "mixed_bfloat16"
    configs = [(False, "float32")] if args.quick else [
        (False, "float32"), (True, "float32"), (False, mixed), (True, mixed)]
    print(f"{'GPU' if gpu else 'CPU'} ({os.cpu_count()} cores), TF {tf.__version__}; batch "
          f"{args.rings_per_batch} rings x {args.ring_size} = {args.ring_size * args.rings_per_batch} "
          f"images of {args.image_size} px; {args.steps} timed steps each", flush=True)
    best_full = 0.0
    for jit, policy in configs:
        bare, full = bench_pair(flame, args, jit, policy)
        best_full = max(best_full, full)
        ratio = full / bare
        print(f"  xla={str(jit):5s} {policy:15s}  bare ResNet-50 {bare:7.2f} img/s   RingNet {full:7.2f} "
              f"img/s   ratio {ratio:.2f} (target >= 0.9: {'met' if ratio >= 0.9 else 'MISSED'})", flush=True)
    pipe = bench_pipeline(args)
    print(f"  input pipeline alone: {pipe:.1f} img/s = {pipe / best_full:.1f}x the fastest train step "
          f"(target >= 5x: {'met' if pipe >= 5 * best_full else 'MISSED'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
