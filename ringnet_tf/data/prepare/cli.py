"""The command line: `python -m ringnet_tf.data.prepare --images DIR --out DIR ...`."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import cv2

from ringnet_tf.data import dataset as D
from ringnet_tf.data import landmarks_dlib as L
from ringnet_tf.data.prepare.run import prepare
from ringnet_tf.data.prepare.settings import SKIPPED_NAME, PrepareError, Settings, Summary
from ringnet_tf.cli import quiet_tensorflow


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    d = Settings()
    p = _Parser(
        prog="python -m ringnet_tf.data.prepare",
        description="Detect, landmark (68 iBUG points with confidences) and crop the faces of "
                    "DIR/<identity>/<image> photos into a RingNet training dataset "
                    "(images/, manifest.csv, dataset.json, skipped.csv; optionally tfrecords/). "
                    "Needs: pip install -r requirements-data.txt. Interrupted runs resume when "
                    "rerun with the same arguments.",
        epilog="Example: python -m ringnet_tf.data.prepare --images vggface2/train "
               "--out data/vggface2 --tfrecords. Skipped files and why: OUT/skipped.csv. "
               "The landmark confidence and the several-faces policy are defined in the "
               "docstring of ringnet_tf/data/landmarks_dlib.py.")
    arg = p.add_argument
    arg("--images", required=True, metavar="DIR",
        help="input photos: DIR/<identity>/<image> (files deeper in an identity's folder count for it)")
    arg("--out", required=True, metavar="DIR",
        help="output dataset folder (created; an unfinished run of the same command is resumed)")
    arg("--size", type=int, default=d.size,
        help="side of the stored square crops in pixels; the model reads 224, the extra resolution "
             "serves augmentation (default %(default)s)")
    arg("--crop_scale", type=float, default=d.crop_scale,
        help="crop side / extent of the 68 landmarks; preprocess.CROP_SCALE is the model's crop "
             "(default %(default)s)")
    arg("--min_face", type=float, default=d.min_face,
        help="smallest face kept: detector box side in source pixels; detection time grows as "
             "1 / min_face^2 (80 is about 4x faster than 40) (default %(default)s)")
    arg("--face_ratio", type=float, default=d.face_ratio,
        help="with several faces, keep the largest only if its area is at least this times the "
             "next one's; otherwise skip the image as ambiguous (default %(default)s)")
    arg("--min_confidence", type=float, default=d.min_confidence,
        help="a detection counts as a face only if the mean agreement of its landmarks with "
             "those of the mirror image reaches this (0..1) (default %(default)s)")
    arg("--clear_score", type=float, default=d.clear_score,
        help="detections scoring below this are weak: they never make an image ambiguous and are "
             "only used when there is no clear face (default %(default)s)")
    arg("--tolerance", type=float, default=d.tolerance,
        help="landmark confidence scale: the image/mirror disagreement (fraction of the face "
             "size) at which a landmark's confidence is 0.61 (default %(default)s)")
    arg("--detector_threshold", type=float, default=d.detector_threshold,
        help="dlib detection score threshold (dlib's own is 0) (default %(default)s)")
    arg("--min_images", type=int, default=d.min_images,
        help="drop identities with fewer kept images (default %(default)s)")
    arg("--jpeg_quality", type=int, default=d.jpeg_quality,
        help="JPEG quality of the stored crops (default %(default)s)")
    arg("--predictor", default="", metavar="FILE",
        help="dlib 68-point predictor (.dat); default: the one face-recognition-models ships")
    arg("--workers", type=int, default=default_workers(),
        help="parallel processes (default: the cores available, here %(default)s)")
    arg("--tfrecords", action="store_true", help="also write the TFRecord form (OUT/tfrecords)")
    arg("--force", action="store_true", help="replace an --out that holds another dataset")
    arg("--quiet", action="store_true", help="no progress bar and no per-file skip lines")
    return p


def default_workers() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def format_summary(summary: Summary, out: Path) -> str:
    """The run's closing lines: what was prepared and, if any, what was skipped and why."""
    lines = [f"prepared {summary.num_images} images of {summary.num_identities} identities from "
             f"{summary.num_files} files into {out} ({summary.computed} processed, {summary.reused} "
             "reused from an earlier run)"]
    total = sum(summary.skipped.values())
    if total:
        parts = ", ".join(f"{n} {reason}" for reason, n in summary.skipped.items())
        lines.append(f"skipped {total}: {parts} (details in {out / SKIPPED_NAME})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit code (0, 1: nothing kept or a missing dependency,
    2: bad arguments or --out, 130: interrupted)."""
    args = build_parser().parse_args(argv)
    quiet_tensorflow()  # --tfrecords imports TensorFlow
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s",
                        stream=sys.stderr)
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    settings = Settings(size=args.size, crop_scale=args.crop_scale, min_face=args.min_face,
                        face_ratio=args.face_ratio, min_confidence=args.min_confidence,
                        clear_score=args.clear_score,
                        detector_threshold=args.detector_threshold, tolerance=args.tolerance,
                        jpeg_quality=args.jpeg_quality, min_images=args.min_images,
                        predictor=str(Path(args.predictor).resolve()) if args.predictor else "")
    prog = "prepare"
    try:
        summary = prepare(args.images, args.out, settings, workers=args.workers,
                          tfrecords=args.tfrecords, force=args.force, progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except (PrepareError, L.MissingDependency, D.DatasetError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_code if isinstance(e, PrepareError) else 1
    print(format_summary(summary, Path(args.out)))
    return 0

