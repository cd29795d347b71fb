"""Pose head comparison: regress vs landmarks (pose guidance), with and without 3D-landmark
supervision, with appearance drawn per identity or per image; same data, steps and seed.

    python -m ringnet_tf.data.synthetic --out data/syn_cmp_identity --identities 1000 --images-per-identity 6 --seed 0 --size 160
    python bench/pose_head_compare.py --identity_data data/syn_cmp_identity --image_data data/syn_cmp_image \\
        --val data/syn_val [--init_from checkpoints/ringnet_default] [--steps 200] [--out runs/compare]

`--image_data` is the same identities, images and poses with `--appearance image` (made from
data/syn_train_v2's first identities by `--make_image_data SRC`, which links its images: same seed,
same draws, only the colours differ). Every run warm-starts from `--init_from` (a trained encoder
and regressor; the pose guidance head starts from its initialisation), trains `--steps` steps
(R = 4, 2 rings per batch, Adam 1e-4, seed 0), and is scored on `--val` (the synthetic
benchmark's network row: neutral-mesh error vs the mean shape, landmark NME, geodesic head-pose
error, shape correlation and identity spread). The starting checkpoint is scored in the same run.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ringnet_tf.cli import DEFAULT_CHECKPOINT, quiet_tensorflow  # noqa: E402

quiet_tensorflow()


def make_image_data(src: Path, out: Path, identities: int) -> None:
    """A dataset of `src`'s first `identities` identities, its images linked, not copied."""
    import numpy as np

    from ringnet_tf.data import dataset as D

    records = D.read_manifest(src)
    keep = sorted({r.identity for r in records})[:identities]
    chosen = [r for r in records if r.identity in set(keep)]
    out.mkdir(parents=True)
    (out / "images").symlink_to((src / "images").resolve())
    D.write_manifest(out, chosen)
    gt = D.read_ground_truth(src)
    rows = {str(n): i for i, n in enumerate(gt["image"])}
    idx = np.array([rows[r.image] for r in chosen])
    ids = {str(n): i for i, n in enumerate(gt["neutral_identity"])}
    arrays = {k: gt[k][idx] for k in ("image", "shape", "expression", "pose", "cam", "landmarks3d") if k in gt}
    arrays["neutral_identity"] = np.array(keep)
    arrays["neutral_vertices"] = gt["neutral_vertices"][[ids[i] for i in keep]]
    D.write_ground_truth(out, arrays)
    meta = D.read_meta(src)
    D.write_meta(out, {k: v for k, v in meta.items() if k != "format_version"} |
                 {"num_images": len(chosen), "num_identities": len(keep), "subset_of": str(src)})


def score(checkpoint: str, val: str, mean_row: dict | None = None) -> dict:
    import numpy as np

    from ringnet_tf.evaluate import synthetic as S
    from ringnet_tf.inference import load_predictor

    pred = load_predictor(checkpoint)
    bench = S.load_bench(pred, val)
    row = S.score(bench, pred, bench.shape, bench.landmarks2d, params=bench.params).summary()
    row.update(S.shape_diagnostics(bench.shape, bench.true_shapes, bench.identities))
    if mean_row is None:
        mean_row = S.score(bench, pred, np.zeros((1, pred.flame_layer.num_shape), np.float32)).summary()
    row["mean_shape_median_mm"] = mean_row["median_mm"]
    row["ratio_to_mean_shape"] = row["median_mm"] / mean_row["median_mm"]
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--identity_data", type=Path)
    p.add_argument("--image_data", type=Path)
    p.add_argument("--make_image_data", type=Path, default=None, metavar="SRC",
                   help="first make --image_data from SRC's first identities (as many as --identity_data has)")
    p.add_argument("--val", type=Path, default=Path("data/syn_val"))
    p.add_argument("--init_from", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--w_landmarks3d", type=float, default=60.0)
    p.add_argument("--out", type=Path, default=Path("runs/compare"))
    args = p.parse_args()

    from ringnet_tf.data import dataset as D
    from ringnet_tf.data.rings import RingConfig
    from ringnet_tf.model import ModelConfig
    from ringnet_tf.train_lib import TrainConfig, run
    from ringnet_tf.trainer import LossConfig

    if args.make_image_data is not None and not args.image_data.exists():
        n = len({r.identity for r in D.read_manifest(args.identity_data)})
        make_image_data(args.make_image_data, args.image_data, n)
    base = json.loads((Path(args.init_from) / "config.json").read_text())["model"]
    print(f"2 cores; init {args.init_from}; {args.steps} steps per run; val {args.val}", flush=True)
    start = time.perf_counter()
    rows = {"start (no training)": score(args.init_from, str(args.val))}
    mean_row = {"median_mm": rows["start (no training)"]["mean_shape_median_mm"]}
    for appearance, data in (("identity", args.identity_data), ("image", args.image_data)):
        for head in ("regress", "landmarks"):
            for w3d in (0.0, args.w_landmarks3d):
                name = f"{head}, 3D {'on' if w3d else 'off'}, appearance per {appearance}"
                out = args.out / f"{head}_3d{int(bool(w3d))}_{appearance}"
                config = TrainConfig(
                    data=str(data), out=str(out), model=ModelConfig(**{**base, "pose_head": head}),
                    rings=RingConfig(ring_size=4, rings_per_batch=2, image_size=base["image_size"], seed=0),
                    loss=LossConfig(landmarks3d=w3d), learning_rate=1e-4, seed=0, num_steps=args.steps,
                    checkpoint_every=args.steps, log_every=args.steps, val_steps=1, jit_compile=False,
                    export_saved_model=False, init_from=args.init_from)
                log = io.StringIO()
                t0 = time.perf_counter()
                result = run(config, stream=log)
                row = score(str(out), str(args.val), mean_row)
                row["train_seconds"] = time.perf_counter() - t0
                row["final_train_losses"] = {k: float(v) for k, v in result["metrics"].items()}
                rows[name] = row
                print(f"  {name}: median {row['median_mm']:.3f} mm (x{row['ratio_to_mean_shape']:.3f} mean shape), "
                      f"NME {row['nme']:.4f}, pose {row['pose_deg']:.2f} deg, correlation "
                      f"{row['shape_correlation']:.3f}, spread {row['identity_spread']:.2f}, ring loss "
                      f"{row['final_train_losses']['shape_consistency']:.3f}", flush=True)
    print(f"\nmean shape median {mean_row['median_mm']:.3f} mm; {time.perf_counter() - start:.0f} s in all\n")
    print(f"{'run':45s} {'median':>7s} {'x mean':>7s} {'NME':>7s} {'pose':>6s} {'corr':>6s} {'spread':>6s} {'ring':>6s}")
    for name, r in rows.items():
        ring = r.get("final_train_losses", {}).get("shape_consistency")
        print(f"{name:45s} {r['median_mm']:7.3f} {r['ratio_to_mean_shape']:7.3f} {r['nme']:7.4f} "
              f"{r['pose_deg']:6.2f} {r['shape_correlation']:6.3f} {r['identity_spread']:6.2f} "
              f"{'-' if ring is None else f'{ring:6.3f}':>6s}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
