"""Inference speed: cold start to the first mesh, per-image latency, batch throughput.

    python bench/infer_speed.py [--checkpoint checkpoints/ringnet_default] [--batch 32]

- cold start: `demo.py` on the bundled example photo in a fresh process (Python and TensorFlow
  start-up, loading the checkpoint, face detection, the network, writing the OBJ), wall time;
- latency: one face crop through the exported SavedModel (median of repeated calls);
- throughput: batches of crops through the SavedModel against a bare ResNet-50 forward pass of the
  same input size and batch, measured in the same run (target: 0.9 of the backbone's rate or better).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ringnet_tf.cli import DEFAULT_CHECKPOINT, add_flame_model_argument, quiet_tensorflow  # noqa: E402

quiet_tensorflow()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.timing import median_seconds  # noqa: E402
from ringnet_tf import preprocess  # noqa: E402
from ringnet_tf.export import export_saved_model  # noqa: E402
from ringnet_tf.inference import KerasPredictor, load_predictor  # noqa: E402
from ringnet_tf.model import build_backbone  # noqa: E402

PHOTO = ROOT / "examples" / "astronaut.jpg"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    add_flame_model_argument(p)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(ROOT / "demo.py"), "--img", str(PHOTO), "--out", f"{tmp}/cold.obj",
               "--checkpoint", args.checkpoint]
        if args.flame_model:
            cmd += ["--flame_model", args.flame_model]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        cold = time.perf_counter() - start
        if proc.returncode != 0:
            print(f"demo.py failed: {proc.stderr.strip().splitlines()[-1]}")
            return 1
        print(f"cold start, demo.py on {PHOTO.name} to the first mesh: {cold:.1f} s")

        predictor = load_predictor(args.checkpoint, args.flame_model)
        assert isinstance(predictor, KerasPredictor)
        sm = tf.saved_model.load(str(export_saved_model(predictor.net, Path(tmp) / "sm")))
        size = predictor.image_size
        rng = np.random.default_rng(0)
        one = tf.constant(rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8))
        (latency,) = median_seconds(lambda: sm.serve(one)["vertices"].numpy(), repeats=args.repeats * 3)
        print(f"latency, one {size} px crop through the SavedModel: {1e3 * latency:.1f} ms")

        batch = tf.constant(rng.integers(0, 256, (args.batch, size, size, 3), dtype=np.uint8))
        backbone = build_backbone(size)
        forward = tf.function(lambda x: backbone(x, training=False))
        floats = preprocess.normalise(batch)
        ours_s, bare_s = median_seconds(lambda: sm.serve(batch)["vertices"].numpy(),
                                        lambda: forward(floats).numpy(), repeats=args.repeats)
        ours, bare = args.batch / ours_s, args.batch / bare_s
        ratio = ours / bare
        print(f"throughput, batch {args.batch}: SavedModel {ours:.1f} img/s, bare ResNet-50 forward "
              f"{bare:.1f} img/s, ratio {ratio:.2f} (target >= 0.9: {'met' if ratio >= 0.9 else 'MISSED'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
