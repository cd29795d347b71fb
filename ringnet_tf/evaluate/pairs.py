"""Identity on real photos: do same-person photos get closer shapes than different-person photos?

Reads a list of photo pairs marked same person or not (a CSV: two image columns and a decision
column, the layout of common face-verification lists such as `file_x,file_y,Decision` with
Yes/No), finds the face in every listed photo (dlib, as the demo does), and predicts its shape:
the network alone and, unless `--network_only`, the network refined to the detected landmarks
(the demo's default). Each pair's distance is the RMS distance in mm between the two neutral
meshes, FLAME(shape, 0, 0): both are in FLAME's frame, so no alignment is made and head size
counts as identity.

The figure of merit is the verification AUC: the probability that a same-person pair is closer
than a different-person pair (ties count half), 0.5 for shapes that carry no identity (the mean
shape's distances are all 0). Photos without a detected face are reported, and their pairs left
out. No ground-truth 3D is needed: this is the check for photos of many people, several each.
"""
from __future__ import annotations

import csv
import dataclasses
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

POSITIVE = {"yes", "y", "1", "true", "same", "positive"}
NEGATIVE = {"no", "n", "0", "false", "different", "negative"}


class PairsError(ValueError):
    """A bad pair list or image folder; the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class Pair:
    a: str
    b: str
    same: bool


def read_pairs(path: Path) -> list[Pair]:
    """The pair list: a header row, then `image_a,image_b,decision` (further columns ignored)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise PairsError(f"{path}: cannot read the pair list ({getattr(e, 'strerror', None) or e})") from None
    pairs = []
    for line, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 3:
            raise PairsError(f"{path}:{line}: expected image_a,image_b,decision; got {len(row)} column(s)")
        decision = row[2].strip().lower()
        if decision not in POSITIVE | NEGATIVE:
            raise PairsError(f"{path}:{line}: decision {row[2]!r} is neither same (Yes/1/same) nor "
                             f"different (No/0/different)")
        pairs.append(Pair(row[0].strip(), row[1].strip(), decision in POSITIVE))
    if not any(p.same for p in pairs) or all(p.same for p in pairs):
        raise PairsError(f"{path}: needs both same-person and different-person pairs "
                         f"({sum(p.same for p in pairs)} same of {len(pairs)})")
    return pairs


def verification_auc(same: np.ndarray, different: np.ndarray) -> float:
    """P(a same-person distance < a different-person distance), ties counted half (Mann-Whitney)."""
    same, different = np.asarray(same, np.float64)[:, None], np.asarray(different, np.float64)[None, :]
    return float(np.mean((same < different) + 0.5 * (same == different)))


def rms_distance_mm(a: np.ndarray, b: np.ndarray) -> float:
    """RMS distance between corresponding vertices of two [V, 3] meshes in metres, in mm."""
    return float(np.sqrt(np.mean(np.sum((a - b) ** 2, axis=-1))) * 1000.0)


def shapes_of_photos(predictor: Any, paths: list[Path], refine: bool, steps: int | None,
                     log: Callable[[str], None]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Shapes [N, S] of the photos with a face: the network's ("network") and, with `refine`, the
    refined ones ("refined", at most `steps` steps, default refine.DEFAULT_STEPS); "_names" [N]
    the photos' paths. Also the photos that failed, with why."""
    from ringnet_tf import demo_lib, preprocess
    from ringnet_tf.refine import DEFAULT_STEPS

    detector = demo_lib.Detector()
    items, failed = [], {}
    for i, path in enumerate(paths, 1):
        try:
            rgb = preprocess.read_image(path)
            items.append({"image": path, **demo_lib.prepare_face(rgb, detector, predictor.image_size)})
        except (preprocess.ImageReadError, demo_lib.ImageFailure) as e:
            failed[str(path)] = str(e)
        log(f"[{i}/{len(paths)}] {path.name}" + (f": {failed[str(path)]}" if str(path) in failed else ""))
    shapes: dict[str, np.ndarray] = {}
    if not items:
        return shapes, failed
    pred = predictor.predict(np.stack([b["crop"] for b in items]))
    shapes["network"] = pred["shape"]
    if refine:
        refined = demo_lib.refine_items(predictor, items, pred["params"], steps or DEFAULT_STEPS,
                                        stream=sys.stderr)
        shapes["refined"] = predictor.decode(refined.params)["shape"]
    shapes["_names"] = np.asarray([str(b["image"]) for b in items])
    return shapes, failed


def evaluate_pairs(predictor: Any, images: Path, pairs: list[Pair], refine: bool = True,
                   steps: int | None = None, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """The report: per method, the AUC, same/different distance medians and means (mm) and every
    used pair's distance ([image_a, image_b, same, mm])."""
    names = sorted({p.a for p in pairs} | {p.b for p in pairs})
    missing = [n for n in names if not (images / n).is_file()]
    if missing:
        raise PairsError(f"{images / missing[0]}: listed in the pair list but not found "
                         f"({len(missing)} missing)")
    shapes, failed = shapes_of_photos(predictor, [images / n for n in names], refine, steps, log)
    row_of = {str(Path(p)): i for i, p in enumerate(shapes.get("_names", []))}
    usable = [p for p in pairs if str(images / p.a) in row_of and str(images / p.b) in row_of]
    report: dict[str, Any] = {"photos": len(names), "photos_without_face": failed,
                              "pairs": len(pairs), "pairs_used": len(usable),
                              "same_pairs": sum(p.same for p in usable),
                              "different_pairs": sum(not p.same for p in usable), "methods": {}}
    if not any(p.same for p in usable) or all(p.same for p in usable):
        raise PairsError("too few photos with a face: the usable pairs are not both same- and different-person")
    for method, shape in shapes.items():
        if method.startswith("_"):
            continue
        neutral = predictor.neutral(shape)["vertices"]
        d = np.array([rms_distance_mm(neutral[row_of[str(images / p.a)]], neutral[row_of[str(images / p.b)]])
                      for p in usable])
        same = np.array([p.same for p in usable])
        report["methods"][method] = {
            "auc": verification_auc(d[same], d[~same]),
            "same_median_mm": float(np.median(d[same])), "different_median_mm": float(np.median(d[~same])),
            "same_mean_mm": float(d[same].mean()), "different_mean_mm": float(d[~same].mean()),
            "distances_mm": [[p.a, p.b, p.same, float(x)] for p, x in zip(usable, d)]}
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{report['pairs_used']} of {report['pairs']} pairs used ({report['same_pairs']} same, "
             f"{report['different_pairs']} different); {len(report['photos_without_face'])} of "
             f"{report['photos']} photos without a face",
             "| shape from | AUC (chance 0.5) | same-person median / mean (mm) | different-person median / mean (mm) |",
             "| --- | --- | --- | --- |"]
    for method, m in report["methods"].items():
        lines.append(f"| {method} | {m['auc']:.3f} | {m['same_median_mm']:.3f} / {m['same_mean_mm']:.3f} | "
                     f"{m['different_median_mm']:.3f} / {m['different_mean_mm']:.3f} |")
    return "\n".join(lines)


def main(args: Any) -> int:
    """`python -m ringnet_tf.evaluate pairs` (parsed there); exit codes as `ringnet_tf.cli`."""
    import json

    from flame.fileutil import atomic_write
    from flame.io import FlameFileError
    from ringnet_tf.cli import EXIT_OK, fail
    from ringnet_tf.inference import CheckpointError, load_predictor

    if args.out is not None and args.out.exists() and not args.force:
        return fail(f"{args.out}: exists; use --force to replace it")
    if not args.images.is_dir():
        return fail(f"{args.images}: image folder not found")
    try:
        pairs = read_pairs(args.pairs)
        predictor = load_predictor(args.checkpoint, args.flame_model)
        log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
        report = evaluate_pairs(predictor, args.images, pairs, not args.network_only, args.fit_steps, log)
    except (PairsError, CheckpointError, FlameFileError) as e:
        return fail(str(e))
    print(format_report(report))
    if args.out is not None:
        text = json.dumps({"checkpoint": str(args.checkpoint), "pairs": str(args.pairs), **report}, indent=2)
        atomic_write(args.out, lambda f: f.write(text.encode()))
        print(f"results written to {args.out}")
    return EXIT_OK
