"""Command line: `python -m ringnet_tf.evaluate <protocol> ...`.

Protocols: `now` (the NoW benchmark's scan-to-mesh error), `synthetic` (the same metric on
synthetic faces whose true shape is known, with baselines) and `pairs` (real photos without 3D:
whether same-person photos get closer shapes than different-person ones).
Exit codes (`ringnet_tf.cli`): 0 done (missing predictions included, and counted), 2 bad usage,
bad input or a refused output folder, 130 interrupted.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from ringnet_tf.cli import EXIT_INTERRUPTED, EXIT_OK, add_flame_model_argument, fail, quiet_tensorflow
from ringnet_tf.evaluate import geometry, now

quiet_tensorflow()  # neither imports TensorFlow; `synthetic` and `pairs` do, later

DEFAULT_OUT_NAME = "now_eval"

_LAYOUT = "\n".join(f"  {path:<44}{what}" for path, what in [
    (f"GT/{now.IMAGE_LIST_NAMES[0]}", "lines '<subject>/<challenge>/<image>.jpg'"),
    ("", f"(or {now.IMAGE_LIST_NAMES[1]}, or --images)"),
    (f"GT/{now.SCANS_DIR}/<subject>/*.obj", "the scan (mm unless --scan-unit)"),
    (f"GT/{now.SCAN_LANDMARKS_DIR}/<subject>/*.pp", "its 7 landmarks (MeshLab PickPoints)"),
    ("PRED/<subject>/<challenge>/<stem>.obj|.ply", "the predicted mesh (any unit, e.g. metres)"),
    ("PRED/<subject>/<challenge>/<stem>.npy|.txt", "its 7 landmarks, [7, 3] or [1, 7, 3]"),
])
_LANDMARK_ORDER = "\n".join(
    textwrap.wrap("Landmark order (scans and predictions): " + ", ".join(now.LANDMARK_NAMES) + ".", 96))

NOW_DESCRIPTION = f"""\
The NoW benchmark's scan-to-mesh error of predicted neutral face meshes.

For each image: crop the subject's scan to a sphere around the face (from its 7 landmarks),
align the predicted mesh by the similarity that maps its 7 landmarks onto the scan's, refine
rotation, translation and scale to minimise the scan-to-mesh distance, then measure every cropped
scan vertex's exact distance to the predicted surface. The distances of all images are pooled:
median, mean and (population) standard deviation in mm, and a cumulative error curve (0-8 mm).

Layout read:
{_LAYOUT}
{_LANDMARK_ORDER}

Written to --out (default PRED/{DEFAULT_OUT_NAME}/), all at once when the run succeeds:
  summary.txt, summary.json (also per image and per challenge), cumulative_error.png and .csv,
  distances/<subject>/<challenge>/<stem>.npy (float32 mm, one per cropped scan vertex).

Exit codes: 0 done, also when listed images have no prediction (they are counted and reported
as missing); 2 bad usage or bad input: an unreadable or inconsistent file (a one-line error names
it), no prediction at all, or an existing --out without --force; no output is left behind then.
"""


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ringnet_tf.evaluate",
        description="Evaluate predicted 3D faces against ground truth.")
    commands = parser.add_subparsers(dest="command", metavar="PROTOCOL", required=True)
    p = commands.add_parser("now", help="NoW benchmark: scan-to-mesh error (mm)",
                            description=NOW_DESCRIPTION,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pred", required=True, type=Path, metavar="DIR",
                   help="predictions: DIR/<subject>/<challenge>/<image stem>.obj + .npy")
    p.add_argument("--gt", required=True, type=Path, metavar="DIR",
                   help=f"NoW ground truth: DIR/{now.SCANS_DIR}/, DIR/{now.SCAN_LANDMARKS_DIR}/ "
                        "and the image list")
    p.add_argument("--images", type=Path, metavar="LIST",
                   help="image list file (default: the list file found in --gt; if none, every "
                        "prediction found in --pred)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help=f"result folder (default: PRED/{DEFAULT_OUT_NAME}); must not exist")
    p.add_argument("--force", action="store_true",
                   help="replace an existing result folder (only once the new run has succeeded)")
    p.add_argument("--scan-unit", choices=sorted(now.SCAN_UNITS_TO_MM), default="mm",
                   help="unit of the scans and their landmarks (default: mm, as NoW ships them); "
                        "errors are always reported in mm")
    p.add_argument("--challenge", choices=now.CHALLENGES,
                   help="evaluate only this challenge's images")
    p.add_argument("--fit-points", type=int, default=geometry.DEFAULT_FIT_POINTS, metavar="N",
                   help="the refinement converges on N evenly spread scan vertices before "
                        "polishing on all of them (default: %(default)s; 0 = all from the start)")
    p.add_argument("--quiet", action="store_true", help="no progress line per image")

    s = commands.add_parser(
        "synthetic", help="synthetic faces with known shape: 3D error (mm) and landmark NME, "
                          "against mean-shape and landmark-fitting baselines",
        description=(__import__("ringnet_tf.evaluate.synthetic", fromlist=["x"]).__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--checkpoint", required=True, help="run directory or compact checkpoint")
    s.add_argument("--data", required=True, type=Path,
                   help="synthetic dataset of held-out identities (made with another --seed)")
    add_flame_model_argument(s)
    s.add_argument("--limit", type=int, default=None, help="evaluate the first N images only")
    s.add_argument("--fit_steps", type=int, default=None,
                   help="refinement and landmark-fitting steps at most (default: ringnet_tf.refine.DEFAULT_STEPS)")
    s.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    s.add_argument("--force", action="store_true", help="replace --out")
    s.add_argument("--quiet", action="store_true", help="no progress lines")
    s.add_argument("--network_only", action="store_true",
                   help="only the network and mean-shape rows (no fitting: a quick check of a run)")

    q = commands.add_parser(
        "pairs", help="real photos, no 3D: are same-person shapes closer than different-person ones (AUC)",
        description=(__import__("ringnet_tf.evaluate.pairs", fromlist=["x"]).__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("--checkpoint", required=True,
                   help="run directory, compact checkpoint or SavedModel (a SavedModel needs --network_only)")
    q.add_argument("--images", required=True, type=Path, help="folder the pair list's image names are in")
    q.add_argument("--pairs", required=True, type=Path,
                   help="CSV with a header: image_a,image_b,decision (Yes/No, 1/0 or same/different)")
    add_flame_model_argument(q)
    q.add_argument("--fit_steps", type=int, default=None,
                   help="refinement steps at most (default: ringnet_tf.refine.DEFAULT_STEPS)")
    q.add_argument("--network_only", action="store_true", help="only the network's shapes (no refinement)")
    q.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    q.add_argument("--force", action="store_true", help="replace --out")
    q.add_argument("--quiet", action="store_true", help="no progress line per photo")
    return parser


def _run_now(args: argparse.Namespace) -> int:
    from flame.fileutil import staged_dir

    pred = args.pred
    out = args.out if args.out is not None else pred / DEFAULT_OUT_NAME
    if args.fit_points < 0:
        return fail("--fit-points must be >= 0")
    if out.exists() and not args.force:
        return fail(f"{out}: already exists (a previous result?); use --force to replace it "
                    f"or --out to write elsewhere")
    if not pred.is_dir():
        return fail(f"{pred}: prediction folder not found")
    log = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    try:
        # Written whole or not at all: a staging folder beside `out`, renamed to it at the end.
        with staged_dir(out, args.force) as staging:
            config = now.NowConfig(pred_dir=pred, gt_dir=args.gt, images=args.images,
                                   scan_unit=args.scan_unit, challenge=args.challenge,
                                   fit_points=args.fit_points or None, exclude=(out, staging))
            report = now.run_now(config, staging, log)
    except (now.NowInputError, FileExistsError) as err:
        return fail(str(err))
    except OSError as err:
        return fail(f"{err.filename or out}: {err.strerror or err}")
    print(now.format_summary(report))
    print(f"results written to {out}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "now":
        try:
            return _run_now(args)
        except KeyboardInterrupt:  # the partial output is already removed
            print("interrupted; nothing written", file=sys.stderr)
            return EXIT_INTERRUPTED
    if args.command == "synthetic":
        from ringnet_tf.evaluate import synthetic

        return synthetic.main(args)
    if args.command == "pairs":
        from ringnet_tf.evaluate import pairs

        return pairs.main(args)
    raise AssertionError(args.command)  # argparse allows only the commands above


if __name__ == "__main__":
    sys.exit(main())
