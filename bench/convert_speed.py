"""Conversion of RingNet's released checkpoint: time and verification figures, on a stand-in.

    python bench/convert_speed.py [--image_size 224] [--hidden 512] [--repeats 2]

Builds stand-ins of `ring_6_68641` in a temporary folder (`ringnet_tf.convert.standin`: TF-slim's
resnet_v2_50, HMR's 3-stage regressor of RingNet's width, random weights; one with FLAME's vertex
output from the open head model's arrays, one stripped to the parameters), converts each with
`ringnet_tf.convert_original` (the command's own code path, verification included) and prints the
wall time of each conversion (median of --repeats), the figures the command printed (largest
differences in parameters, vertices and pixels) and the process's peak memory.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ringnet_tf.cli import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

from flame.io import load_flame  # noqa: E402
from ringnet_tf.convert.original import convert  # noqa: E402
from ringnet_tf.convert.standin import build_standin  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--image_size", type=int, default=224, help="input side of the stand-in (RingNet: 224)")
    p.add_argument("--hidden", type=int, default=512, help="regressor width (RingNet's: 512)")
    p.add_argument("--repeats", type=int, default=2, help="conversions per stand-in (median time)")
    args = p.parse_args(argv)
    head = load_flame(None)
    with tempfile.TemporaryDirectory(prefix="convert_speed-") as tmp:
        for label, flame in (("with FLAME vertex output", head), ("parameters only (stripped)", None)):
            start = time.perf_counter()
            standin = build_standin(Path(tmp) / label.split()[0] / "ring_6_68641", flame,
                                    image_size=args.image_size, hidden=args.hidden)
            built = time.perf_counter() - start
            times, lines = [], []
            for i in range(args.repeats):
                lines = []
                result = convert(standin.prefix, Path(tmp) / f"out-{label.split()[0]}-{i}",
                                 say=lines.append, warn=lambda m: lines.append(f"warning: {m}"))
                times.append(result.seconds)
            print(f"stand-in {label}, {args.image_size} px, width {args.hidden}: built in {built:.1f} s; "
                  f"conversion {statistics.median(times):.1f} s (median of {len(times)}: "
                  f"{', '.join(f'{t:.1f}' for t in times)})")
            for line in lines:
                print(f"  {line}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory {peak:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
