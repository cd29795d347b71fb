"""The training curves of a run, as a figure: `python -m ringnet_tf.plot_run RUN_DIR --out curve.png`.

Reads the run's TensorBoard scalars (train/* every log interval, interval/val_* at each
checkpoint) and draws the weighted total, the landmark loss, the shape-consistency loss and the
mean squared norm of the shape coefficients over the steps, training and validation. Several run
directories (a run and its `--init_from` fine-tuning) are drawn one after the other on one step
axis, with a dashed line where each stage starts.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

PANELS = (("loss", "total loss"), ("landmarks", "landmark loss (normalised L1)"),
          ("shape_consistency", "shape consistency (hinge)"), ("shape_prior", "mean ||shape||^2"))
# Drawn when a run logged them (ringnet_tf.train_head on data with ground truth).
OPTIONAL_PANELS = (("shape_correlation", "validation shape correlation"),)


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


def read_stages(run_dirs: list[str | Path]) -> tuple[dict[str, list[tuple[int, float]]], list[int]]:
    """The scalars of consecutive runs on one step axis: each run's steps are offset by the last
    step of the run before. Returns ({tag: [(step, value)]}, [first step of each later stage])."""
    merged: dict[str, list[tuple[int, float]]] = defaultdict(list)
    offset, starts = 0, []
    for i, run_dir in enumerate(run_dirs):
        series = read_scalars(run_dir)
        if i:
            starts.append(offset)
        for tag, points in series.items():
            merged[tag].extend((offset + step, value) for step, value in points)
        offset += max((step for points in series.values() for step, _ in points), default=0)
    return dict(merged), starts


def plot(run_dirs: str | Path | list[str | Path], out: str | Path) -> Path:
    """Draws the runs' curves (`read_stages`) into the PNG `out` (written whole or not at all).

    On its own Agg canvas, without pyplot: the caller's matplotlib backend and pyplot state are
    left as they are.
    """
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from flame.fileutil import atomic_write

    run_dirs = [run_dirs] if isinstance(run_dirs, (str, Path)) else list(run_dirs)
    series, starts = read_stages(run_dirs)
    panels = PANELS + tuple(p for p in OPTIONAL_PANELS if f"interval/val_{p[0]}" in series)
    fig = Figure(figsize=(4.5 * len(panels), 3.6))
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas
    axes = fig.subplots(1, len(panels))
    for ax, (name, title) in zip(axes, panels):
        for tag, label, style in ((f"train/{name}", "training", "-"), (f"interval/val_{name}", "validation", "o-")):
            if tag in series:
                steps, values = zip(*series[tag])
                ax.plot(steps, values, style, label=label, markersize=3)
        for start in starts:
            ax.axvline(start, color="grey", linestyle="--", linewidth=1)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "not logged", transform=ax.transAxes, ha="center", color="grey")
    fig.suptitle("RingNet training: " + " then ".join(Path(r).name for r in run_dirs))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return atomic_write(out, lambda f: f.write(buf.getvalue()))


def main(argv: list[str] | None = None) -> int:
    from ringnet_tf.cli import EXIT_OK, fail, quiet_tensorflow

    quiet_tensorflow()  # read_scalars imports TensorFlow
    p = argparse.ArgumentParser(prog="python -m ringnet_tf.plot_run", description=__doc__.split("\n")[0])
    p.add_argument("run_dir", type=Path, nargs="+",
                   help="a train.py --out directory; several: consecutive stages (--init_from)")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = p.parse_args(argv)
    try:
        print(f"wrote {plot(args.run_dir, args.out)}")
    except FileNotFoundError as e:
        return fail(str(e))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
