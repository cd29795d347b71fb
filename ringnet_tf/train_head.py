"""Trains the regressor on backbone features computed once: a fast stage for CPUs.

    python -m ringnet_tf.train_head --init_from CHECKPOINT --data DIR --out NEW_CHECKPOINT
    python -m ringnet_tf.train_head --flagfile=configs/default_checkpoint_head.flags --data ... --out ...

The backbone of `--init_from` runs once over every image of `--data` (inference mode, the shared
preprocessing: the crop the demo and the benchmark take), and its features are kept; the regressor
(and the pose guidance head, if the network has one) then trains on rings of those features with
the losses of `train.py` (`RingNetTrainer`, the same weights and flags), hundreds of steps a
minute on a CPU where `train.py` does a few. The output is a compact checkpoint (the backbone of
`--init_from` unchanged, the trained regressor), usable everywhere a checkpoint is, `--init_from`
of train.py included (for end-to-end fine-tuning after it).

Why: a network trained end to end on a CPU for hours can carry in its features what its regressor
has not learnt to read. A linear probe on the bundled checkpoint's pooled features predicted the
true shape coefficients of unseen synthetic people with a correlation of 0.35, while its
regressor's output had 0.002. What the features do not hold, this stage cannot add; no
augmentation either (each image's features are computed once), so use many images.

`--cache DIR` keeps the features (`features-<key>.npz`, keyed by the backbone's weights and the
dataset's files) so that another run on the same data and backbone skips the extraction.
Progress goes to stdout every `--log_every` steps; losses (and, on a validation set with ground
truth, the shape correlation and identity spread of the benchmark) go to `OUT/tensorboard`
(`python -m ringnet_tf.plot_run OUT`).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, TextIO

import numpy as np

from flame.fileutil import atomic_write, check_new_dir, staged_dir
from ringnet_tf.cli import EXIT_OK, add_flame_model_argument, fail, quiet_tensorflow

FEATURE_BATCH = 64
EXIT_DIVERGED = 3  # as train.py


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """A head-training run. Paths are recorded as given (relative ones stay relative)."""

    init_from: str
    data: str
    out: str
    val_data: str | None = None
    cache: str | None = None
    num_steps: int = 6000
    ring_size: int = 4
    rings_per_batch: int = 32
    learning_rate: float = 1e-3
    lr_schedule: str = "cosine"  # "constant" or "cosine" (to 0 at num_steps)
    seed: int = 0
    log_every: int = 250
    val_rings: int = 64
    dropout: float | None = None  # the regressor's dropout rate from now on; None: the checkpoint's
    loss: Any = None  # a trainer.LossConfig; None: `default_loss()`


def default_loss() -> Any:
    """RingNet's weights plus the synthetic supervision: 3D landmarks 60, neutral meshes 2 (mm)."""
    from ringnet_tf.trainer import LossConfig

    return LossConfig(shape_prior=1e-4, landmarks3d=60.0, shape_supervised=2.0)


# ----------------------------------------------------------------------------------------------
# Features


def dataset_key(backbone_weights: list[np.ndarray], data_dir: Path, image_size: int) -> str:
    """A hex key of what the features depend on: the backbone's weights, the dataset's manifest and
    ground truth (bytes), and the input size."""
    h = hashlib.sha256(str(image_size).encode())
    for w in backbone_weights:
        h.update(np.ascontiguousarray(w).tobytes())
    for name in ("manifest.csv", "ground_truth.npz"):
        path = data_dir / name
        if path.is_file():
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


def compute_features(net: Any, data_dir: Path, image_size: int,
                     log: Callable[[str], None] = lambda s: None) -> dict[str, np.ndarray]:
    """The backbone's features of every image of a dataset, with its labels in network pixels.

    Returns: features [N, F] float16; landmarks [N, 68, 3] (x, y network-input pixels, confidence);
    landmarks3d [N, 68, 3] (x, y pixels, z depth in pixels) and shape [N, S'] (zeros where the
    dataset has no ground truth, see has_labels [N]); identity [N] str.
    """
    from ringnet_tf import preprocess
    from ringnet_tf.data import dataset as D
    from ringnet_tf.progress import Progress

    records = D.read_manifest(data_dir)
    gt = D.read_ground_truth(data_dir)
    backbone = net.get_layer("backbone")
    n = len(records)
    rows = None
    if gt is not None and "shape" in gt and "landmarks3d" in gt:
        index = ({str(k): i for i, k in enumerate(gt["image"])} if "image" in gt
                 else {r.image: i for i, r in enumerate(records)})
        rows = np.asarray([index[str(r.image)] for r in records])
    out = {"features": [], "landmarks": np.zeros((n, 68, 3), np.float32),
           "landmarks3d": np.zeros((n, 68, 3), np.float32),
           "shape": (gt["shape"][rows].astype(np.float32) if rows is not None else np.zeros((n, 1), np.float32)),
           "has_labels": np.full(n, 1.0 if rows is not None else 0.0, np.float32),
           "identity": np.asarray([r.identity for r in records])}
    bar = Progress(n, f"features of {data_dir}", stream=sys.stdout)
    for start in range(0, n, FEATURE_BATCH):
        crops = []
        for i in range(start, min(start + FEATURE_BATCH, n)):
            r = records[i]
            img = preprocess.read_image(data_dir / r.image)
            box = preprocess.centre_box(*img.shape[:2])
            affine = box.affine(image_size)
            crops.append(preprocess.crop(img, box, image_size))
            out["landmarks"][i] = preprocess.transform_points(r.landmarks, affine)
            if rows is not None:
                lm3 = gt["landmarks3d"][rows[i]]
                out["landmarks3d"][i] = preprocess.transform_points(lm3, affine)
                # Depth scales with the image: by the map's linear factor (as rings' warp does).
                out["landmarks3d"][i, :, 2] = lm3[:, 2] * math.sqrt(abs(np.linalg.det(affine[:, :2])))
        feats = backbone(preprocess.normalise(np.stack(crops)), training=False)
        out["features"].append(np.asarray(feats, np.float32).astype(np.float16))
        bar.update(len(crops))
    bar.close()
    out["features"] = np.concatenate(out["features"])
    return out


def load_features(net: Any, data_dir: Path, image_size: int, cache: Path | None) -> dict[str, np.ndarray]:
    """compute_features, through the cache when one is given."""
    if cache is None:
        return compute_features(net, data_dir, image_size)
    weights = [np.asarray(w.numpy()) for w in net.get_layer("backbone").weights]
    path = cache / f"features-{dataset_key(weights, data_dir, image_size)}.npz"
    if path.is_file():
        print(f"features of {data_dir} from {path}", flush=True)
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    feats = compute_features(net, data_dir, image_size)
    cache.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: np.savez(f, **feats))
    return feats


# ----------------------------------------------------------------------------------------------
# Rings of features


def ring_indices(identity: np.ndarray, num_rings: int, ring_size: int, rng: np.random.Generator) -> np.ndarray:
    """[num_rings, R] image indices: R - 1 distinct images of one person, then one of another.

    identity: [N] labels; only people with at least R - 1 images anchor a ring. ValueError when
    fewer than two people exist or none has R - 1 images.
    """
    people, inverse = np.unique(identity, return_inverse=True)
    members = [np.flatnonzero(inverse == p) for p in range(len(people))]
    anchors = np.asarray([p for p, m in enumerate(members) if len(m) >= ring_size - 1])
    if len(people) < 2 or len(anchors) == 0:
        raise ValueError(f"rings of {ring_size} need two people and one with {ring_size - 1} images")
    out = np.empty((num_rings, ring_size), np.int64)
    for r in range(num_rings):
        a = anchors[rng.integers(len(anchors))]
        b = rng.integers(len(people) - 1)
        b += b >= a  # another person
        out[r, :-1] = rng.choice(members[a], ring_size - 1, replace=False)
        out[r, -1] = members[b][rng.integers(len(members[b]))]
    return out


def ring_batch(feats: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    """The batch RingNetTrainer takes, with features as its images: idx [NB, R] -> arrays [NB, R, ...]."""
    return {"images": feats["features"][idx].astype(np.float32), "landmarks": feats["landmarks"][idx],
            "landmarks3d": feats["landmarks3d"][idx], "has_landmarks3d": feats["has_labels"][idx],
            "shape": feats["shape"][idx], "has_shape": feats["has_labels"][idx]}


# ----------------------------------------------------------------------------------------------
# Standardised features
#
# The backbone's pooled features are a large common offset with small variations (on the stage-2
# checkpoint: mean |x| 0.30, per-feature std 0.011 to 0.19): a regressor trained on them raw
# learnt no shape (in 1,250 steps its shape correlation stayed at 0.01 while a ridge regression on
# standardised features reached 0.42), since its first layer's updates move mostly the offset.
# So it trains on (x - mean) / std, and the standardisation is folded into its first layer
# afterwards: the network and its stored format stay RingNet's.

STD_FLOOR = 1e-4  # features that (almost) never vary are left unamplified


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """features [N, F] -> mean [F], std [F] (float32, std at least STD_FLOOR)."""
    f = features.astype(np.float64)
    return f.mean(0).astype(np.float32), np.maximum(f.std(0), STD_FLOOR).astype(np.float32)


def rescale_first_layer(regressor: Any, mean: np.ndarray, std: np.ndarray, to_standardised: bool) -> None:
    """Rewrites the regressor's first layer so that it computes the same function of standardised
    features (to_standardised) or, inversely, of raw features again.

    fc1 sees [x; theta] with kernel rows K_x (F of them) for x: K_x x + b = (K_x * std) z + (b + mean K_x)
    with z = (x - mean) / std. Computed in float64.
    """
    kernel = np.asarray(regressor.fc1.kernel.numpy(), np.float64)
    bias = np.asarray(regressor.fc1.bias.numpy(), np.float64)
    m, sd = mean.astype(np.float64), std.astype(np.float64)
    f = len(m)
    if to_standardised:
        bias = bias + m @ kernel[:f]
        kernel[:f] *= sd[:, None]
    else:
        kernel[:f] /= sd[:, None]
        bias = bias - m @ kernel[:f]
    regressor.fc1.kernel.assign(kernel.astype(np.float32))
    regressor.fc1.bias.assign(bias.astype(np.float32))


# ----------------------------------------------------------------------------------------------
# Training


def train(config: HeadConfig, flame_model: str | None = None, stream: TextIO = sys.stdout) -> dict[str, Any]:
    """Runs a head-training stage and writes the checkpoint; returns the final metrics.

    Raises ValueError / CheckpointError for unusable inputs (before anything is written),
    FileExistsError for a taken --out, FloatingPointError when training diverges.
    """
    import keras
    import tensorflow as tf

    from ringnet_tf.evaluate.synthetic import shape_diagnostics
    from ringnet_tf.inference import CheckpointError, KerasPredictor, load_predictor, save_compact
    from ringnet_tf.model import ModelConfig, head_model
    from ringnet_tf.trainer import NONFINITE, RingNetTrainer

    config = dataclasses.replace(config, loss=config.loss or default_loss())
    check_new_dir(config.out, False)
    predictor = load_predictor(config.init_from, flame_model)
    if not isinstance(predictor, KerasPredictor):
        raise CheckpointError(f"{config.init_from}: a SavedModel cannot be trained; give a checkpoint")
    net, source = predictor.net, predictor.config
    model_config = ModelConfig(**{k: v for k, v in source["model"].items()
                                  if k in {f.name for f in dataclasses.fields(ModelConfig)}})
    if config.dropout is not None:  # only training sees it; recorded in the new checkpoint's config
        regressor = net.get_layer("regressor")
        regressor.drop1.rate = regressor.drop2.rate = regressor.dropout_rate = config.dropout
        model_config = dataclasses.replace(model_config, dropout=config.dropout)
    size = model_config.image_size
    cache = Path(config.cache) if config.cache else None
    train_feats = load_features(net, Path(config.data), size, cache)
    val_feats = load_features(net, Path(config.val_data), size, cache) if config.val_data else None
    rng = np.random.default_rng(config.seed)
    ring_indices(train_feats["identity"], 1, config.ring_size, rng)  # fails early on unusable data
    keras.utils.set_random_seed(config.seed)

    mean, std = feature_statistics(train_feats["features"])
    regressor = net.get_layer("regressor")
    rescale_first_layer(regressor, mean, std, to_standardised=True)
    head = head_model(net, model_config, mean, std)
    trainer = RingNetTrainer(head, config.loss, image_size=size)
    lr = (keras.optimizers.schedules.CosineDecay(config.learning_rate, config.num_steps)
          if config.lr_schedule == "cosine" else config.learning_rate)
    trainer.compile(optimizer=keras.optimizers.Adam(lr))
    step_fn = tf.function(trainer.train_step)
    eval_fn = tf.function(lambda batch: trainer.compute_ring_losses(batch, training=False)[0])
    val_batch = (ring_batch(val_feats, ring_indices(val_feats["identity"], config.val_rings, config.ring_size,
                                                    np.random.default_rng(config.seed + 1)))
                 if val_feats is not None else None)
    predict_fn = tf.function(lambda f: head(f, training=False)["shape"])

    log_dir = Path(tempfile.mkdtemp(prefix="ringnet_head_"))  # moved into --out at the end
    writer = tf.summary.create_file_writer(str(log_dir / "tensorboard"))
    print(f"training the regressor of {config.init_from} on {len(train_feats['features'])} images "
          f"({config.num_steps} steps of {config.rings_per_batch} rings of {config.ring_size})",
          file=stream, flush=True)
    final: dict[str, float] = {}
    t0 = time.time()
    for step in range(1, config.num_steps + 1):
        idx = ring_indices(train_feats["identity"], config.rings_per_batch, config.ring_size, rng)
        logs = step_fn(ring_batch(train_feats, idx))
        if float(logs[NONFINITE]) > 0:
            raise FloatingPointError(f"training diverged at step {step} (a loss or weight is not finite)")
        if step % config.log_every and step != config.num_steps:
            continue
        final = {k: float(v) for k, v in logs.items() if k != NONFINITE}
        for t in trainer.trackers.values():
            t.reset_state()
        line = [f"step {step}/{config.num_steps}", f"loss {final['loss']:.4f}",
                f"landmarks {final['landmarks']:.4f}", f"shape_supervised {final['shape_supervised']:.3f}"]
        with writer.as_default(step=step):
            for k, v in final.items():
                tf.summary.scalar(f"train/{k}", v)
            if val_batch is not None:
                val = {k: float(v) for k, v in eval_fn(val_batch).items()}
                for k, v in val.items():
                    tf.summary.scalar(f"interval/val_{k}", v)  # train.py's tags
                line.append(f"val loss {val['loss']:.4f}")
                final.update({f"val_{k}": v for k, v in val.items()})
                if val_feats["has_labels"].any():
                    pred = np.concatenate([predict_fn(val_feats["features"][i:i + 256].astype(np.float32)).numpy()
                                           for i in range(0, len(val_feats["features"]), 256)])
                    diag = shape_diagnostics(pred, val_feats["shape"], list(val_feats["identity"]))
                    for k, v in diag.items():
                        if v is not None:
                            tf.summary.scalar(f"interval/val_{k}", v)  # train.py's tags
                            final[f"val_{k}"] = v
                    line.append(f"val shape r {diag['shape_correlation'] or 0:.3f}")
        line.append(f"{step / (time.time() - t0):.1f} steps/s")
        print(", ".join(line), file=stream, flush=True)
    writer.close()
    rescale_first_layer(regressor, mean, std, to_standardised=False)

    record = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("out", "cache")}
    with staged_dir(config.out, False) as staging:
        save_compact(net, dataclasses.asdict(model_config), source["flame_fingerprint"], staging,
                     dtype="float32", extra={"trained_from": config.init_from,
                                             "training": {"stage": "train_head", **record}})
        (staging / "tensorboard").mkdir()
        for f in (log_dir / "tensorboard").iterdir():
            f.rename(staging / "tensorboard" / f.name)
        atomic_write(staging / "metrics.json", lambda f: f.write(json.dumps(final, indent=2).encode()))
    print(f"done: {config.num_steps} steps; wrote {config.out}", file=stream, flush=True)
    return final


def _parser() -> argparse.ArgumentParser:
    from ringnet_tf.trainer import LossConfig

    d = dataclasses.replace(HeadConfig("", "", ""), loss=default_loss())
    p = argparse.ArgumentParser(prog="python -m ringnet_tf.train_head", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--flagfile", metavar="FILE", help="read flags from FILE (one --name=value per line)")
    p.add_argument("--init_from", required=True, help="the checkpoint whose backbone and regressor to start from")
    p.add_argument("--data", required=True, help="training dataset (ringnet_tf.data format)")
    p.add_argument("--out", required=True, help="the new checkpoint's folder (must not exist)")
    p.add_argument("--val_data", default=None, help="validation dataset (another seed's identities)")
    p.add_argument("--cache", default=None, help="folder to keep the features in between runs")
    p.add_argument("--num_steps", type=int, default=d.num_steps, help=f"default {d.num_steps}")
    p.add_argument("--ring_size", type=int, default=d.ring_size, help=f"R (default {d.ring_size})")
    p.add_argument("--rings_per_batch", type=int, default=d.rings_per_batch, help=f"default {d.rings_per_batch}")
    p.add_argument("--learning_rate", type=float, default=d.learning_rate, help=f"Adam (default {d.learning_rate})")
    p.add_argument("--lr_schedule", choices=["constant", "cosine"], default=d.lr_schedule)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--log_every", type=int, default=d.log_every, help=f"steps (default {d.log_every})")
    p.add_argument("--dropout", type=float, default=None,
                   help="the regressor's dropout rate from now on (default: the checkpoint's)")
    p.add_argument("--val_rings", type=int, default=d.val_rings, help=f"default {d.val_rings}")
    for f in dataclasses.fields(LossConfig):
        default = getattr(d.loss, f.name)
        p.add_argument(f"--w_{f.name}" if f.name != "eta" else "--eta", type=float, default=default,
                       help=f"loss weight (default {default:g})" if f.name != "eta" else f"margin (default {default:g})")
    add_flame_model_argument(p)
    return p


def expand_flagfiles(argv: list[str]) -> list[str]:
    """`--flagfile=F` (or `--flagfile F`) replaced by F's lines (`--name=value`; blank lines and
    `#` comments skipped), as train.py reads its flagfiles; later flags override earlier ones.
    Raises ValueError naming an unreadable file."""
    out, it = [], iter(argv)
    for arg in it:
        if arg == "--flagfile" or arg.startswith("--flagfile="):
            path = arg.split("=", 1)[1] if "=" in arg else next(it, "")
            try:
                lines = Path(path).read_text().splitlines()
            except (OSError, UnicodeDecodeError) as e:
                raise ValueError(f"{path}: cannot read the flagfile ({getattr(e, 'strerror', None) or e})") from None
            out += expand_flagfiles([ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")])
        else:
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    quiet_tensorflow()
    try:
        argv = expand_flagfiles(sys.argv[1:] if argv is None else list(argv))
    except ValueError as e:
        return fail(str(e))
    args = _parser().parse_args(argv)
    from ringnet_tf.trainer import LossConfig

    for name in ("num_steps", "ring_size", "rings_per_batch", "log_every", "val_rings"):
        if getattr(args, name) < (3 if name == "ring_size" else 1):
            return fail(f"--{name} must be at least {3 if name == 'ring_size' else 1}")
    if args.learning_rate <= 0:
        return fail("--learning_rate must be positive")
    if args.dropout is not None and not 0 <= args.dropout < 1:
        return fail("--dropout must be in [0, 1)")
    loss = LossConfig(**{f.name: getattr(args, f"w_{f.name}" if f.name != "eta" else "eta")
                         for f in dataclasses.fields(LossConfig)})
    config = HeadConfig(init_from=args.init_from, data=args.data, out=args.out, val_data=args.val_data,
                        cache=args.cache, num_steps=args.num_steps, ring_size=args.ring_size,
                        rings_per_batch=args.rings_per_batch, learning_rate=args.learning_rate,
                        lr_schedule=args.lr_schedule, seed=args.seed, log_every=args.log_every,
                        val_rings=args.val_rings, dropout=args.dropout, loss=loss)
    from flame.io import FlameFileError
    from ringnet_tf.inference import CheckpointError

    try:
        train(config, args.flame_model)
    except (ValueError, CheckpointError, FlameFileError, FileExistsError) as e:
        return fail(str(e))
    except FloatingPointError as e:
        fail(str(e))
        return EXIT_DIVERGED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
