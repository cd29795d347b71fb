"""The training curves of a run, as a figure: `python -m ringnet_tf.plot_run RUN_DIR --out curve.png`.

Reads the run's TensorBoard scalars (train/* every log interval, interval/val_* at each
checkpoint) and draws the weighted total, the landmark loss and the shape-consistency loss over
the steps, training and validation.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

PANELS = (("loss", "total loss"), ("landmarks", "landmark loss (normalised L1)"),
          ("shape_consistency", "shape consistency (hinge)"))


def read_scalars(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} from every event file under run_dir/tensorboard."""
    import tensorflow as tf

    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    files = sorted((Path(run_dir) / "tensorboard").glob("events.out.tfevents.*"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no TensorBoard events (tensorboard/events.out.tfevents.*)")
    for path in files:
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.HasField("tensor"):
                    number = float(tf.make_ndarray(value.tensor).reshape(-1)[0]) if value.tensor.dtype == 1 \
                        else None
                elif value.HasField("simple_value"):
                    number = value.simple_value
                else:
                    number = None
                if number is not None:
                    series[value.tag].append((int(event.step), number))
    return {tag: sorted(points) for tag, points in series.items()}


def plot(run_dir: str | Path, out: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from flame.fileutil import atomic_write

    series = read_scalars(run_dir)
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 3.6))
    for ax, (name, title) in zip(axes, PANELS):
        for tag, label, style in ((f"train/{name}", "training", "-"), (f"interval/val_{name}", "validation", "o-")):
            if tag in series:
                steps, values = zip(*series[tag])
                ax.plot(steps, values, style, label=label, markersize=3)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"RingNet training: {Path(run_dir).name}")
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return atomic_write(out, lambda f: f.write(buf.getvalue()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ringnet_tf.plot_run", description=__doc__.split("\n")[0])
    p.add_argument("run_dir", type=Path, help="a train.py --out directory")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = p.parse_args(argv)
    try:
        print(f"wrote {plot(args.run_dir, args.out)}")
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
