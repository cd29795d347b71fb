"""Shared-shape fitting over several images of a person, on the synthetic benchmark.

    python -m ringnet_tf.data.synthetic --out /tmp/syn1 --identities 40 --images-per-identity 8 --seed 1
    python bench/shared_shape.py --data /tmp/syn1 [--checkpoint checkpoints/ringnet_default]

Prints the synthetic benchmark's rows (`ringnet_tf.evaluate.synthetic`): the network, the mean
shape, single-image refinement and shared-shape fitting over 2, 4 and 8 images of a person, each
with exact landmarks and with landmarks perturbed by the measured dlib noise model; then the
target: with noisy landmarks, shared-shape fitting over 8 images at most 0.75 x the median error
of single-image refinement, and both below the mean shape.

    python bench/shared_shape.py --measure-noise DIR [--limit N]

instead measures dlib's landmark error on a synthetic dataset's renders (the noise model's
constants, `ringnet_tf.evaluate.synthetic.DLIB_NOISE`; needs requirements-data.txt).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ringnet_tf.cli import DEFAULT_CHECKPOINT, quiet_tensorflow  # noqa: E402

quiet_tensorflow()

TARGET_RATIO = 0.75


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, help="synthetic dataset (held-out identities)")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--limit", type=int, default=None, help="first N images only")
    p.add_argument("--steps", type=int, default=None, help="refinement's maximum steps (default: refine's)")
    p.add_argument("--noise-seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    p.add_argument("--measure-noise", type=Path, default=None, metavar="DIR",
                   help="measure dlib's landmark noise on this synthetic dataset instead")
    args = p.parse_args(argv)

    from ringnet_tf.evaluate import synthetic as S

    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    if args.measure_noise is not None:
        stats = S.measure_detector_noise(args.measure_noise, args.limit, log=log)
        print(S.format_noise(stats))
        if args.out:
            args.out.write_text(json.dumps(stats, indent=2))
        return 0
    if args.data is None:
        p.error("--data or --measure-noise is required")

    from ringnet_tf.inference import load_predictor

    predictor = load_predictor(args.checkpoint)
    results = S.evaluate_synthetic(predictor, args.data, args.limit, args.steps, log=log,
                                   noise_seed=args.noise_seed)
    print(S.format_table(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    single = results.get("network + refinement, noisy")
    shared = results.get("shared shape x8, noisy")
    if single is None or shared is None:
        print("no x8 rows: the dataset needs 8 images per identity")
        return 1
    mean = results["mean shape"]["median_mm"]
    ratio = shared["median_mm"] / single["median_mm"]
    ok = ratio <= TARGET_RATIO and shared["median_mm"] < mean and single["median_mm"] < mean
    print(f"noisy landmarks: shared shape x8 {shared['median_mm']:.3f} mm = {ratio:.3f} x single-image "
          f"refinement {single['median_mm']:.3f} mm (target <= {TARGET_RATIO}); mean shape {mean:.3f} mm: "
          f"target {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
