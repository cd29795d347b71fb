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
import os
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


def read_pairs(path: Path) -> tuple[list[Pair], int]:
    """The pair list: a header row, then `image_a,image_b,decision` (further columns ignored).
    Names are relative to the image folder (normalised: `./a.jpg` is `a.jpg`). Returns the pairs
    and how many repeated pairs (either order, the same decision) were dropped; a pair listed with
    both decisions, a photo paired with itself, an empty name or a missing header is an error."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise PairsError(f"{path}: cannot read the pair list ({getattr(e, 'strerror', None) or e})") from None
    if rows and len(rows[0]) >= 3 and rows[0][2].strip().lower() in POSITIVE | NEGATIVE:
        raise PairsError(f"{path}:1: the first row is a pair; the list needs a header row "
                         f"(e.g. file_x,file_y,Decision)")
    pairs: list[Pair] = []
    seen: dict[frozenset, tuple[int, bool]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 3:
            raise PairsError(f"{path}:{line}: expected image_a,image_b,decision; got {len(row)} column(s)")
        a, b = (os.path.normpath(x.strip()) if x.strip() else "" for x in row[:2])
        if not a or not b:
            raise PairsError(f"{path}:{line}: an image name is empty")
        if a == b:
            raise PairsError(f"{path}:{line}: {a} is paired with itself")
        decision = row[2].strip().lower()
        if decision not in POSITIVE | NEGATIVE:
            raise PairsError(f"{path}:{line}: decision {row[2]!r} is neither same (Yes/1/same) nor "
                             f"different (No/0/different)")
        same, key = decision in POSITIVE, frozenset((a, b))
        if key in seen:
            if seen[key][1] != same:
                raise PairsError(f"{path}:{line}: {a},{b} is marked {'same' if same else 'different'} here "
                                 f"and {'same' if seen[key][1] else 'different'} on line {seen[key][0]}")
            continue
        seen[key] = (line, same)
        pairs.append(Pair(a, b, same))
    if not any(p.same for p in pairs) or all(p.same for p in pairs):
        raise PairsError(f"{path}: needs both same-person and different-person pairs "
                         f"({sum(p.same for p in pairs)} same of {len(pairs)})")
    return pairs, sum(1 for r in rows[1:] if r and "".join(r).strip()) - len(pairs)


def verification_auc(same: np.ndarray, different: np.ndarray) -> float:
    """P(a same-person distance < a different-person distance), ties counted half (Mann-Whitney)."""
    same, different = np.asarray(same, np.float64)[:, None], np.asarray(different, np.float64)[None, :]
    return float(np.mean((same < different) + 0.5 * (same == different)))


def rms_distance_mm(a: np.ndarray, b: np.ndarray) -> float:
    """RMS distance between corresponding vertices of two [V, 3] meshes in metres, in mm."""
    return float(np.sqrt(np.mean(np.sum((a - b) ** 2, axis=-1))) * 1000.0)


def missing_images(images: Path, pairs: list[Pair]) -> list[str]:
    """The listed names with no file in `images`."""
    return [n for n in photo_names(pairs) if not (images / n).is_file()]


def photo_names(pairs: list[Pair]) -> list[str]:
    return sorted({p.a for p in pairs} | {p.b for p in pairs})


PREDICT_BATCH = 32  # photos through the network at a time (crops are not kept)


def shapes_of_photos(predictor: Any, images: Path, names: list[str], refine: bool, steps: int | None,
                     log: Callable[[str], None]) -> tuple[list[str], dict[str, np.ndarray], dict[str, str]]:
    """The listed photos with a face (names, in order); their shapes [N, S]: the network's
    ("network") and, with `refine`, the refined ones ("refined", at most `steps` steps, default
    refine.DEFAULT_STEPS); and the photos left out (unreadable or no face), with why."""
    from ringnet_tf import demo_lib, preprocess
    from ringnet_tf.refine import DEFAULT_STEPS

    detector = demo_lib.Detector()
    kept: list[str] = []
    items: list[dict[str, Any]] = []  # box and detected landmarks of each kept photo (no crop)
    params, network, failed = [], [], {}
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        if batch:
            out = predictor.predict(np.stack([b.pop("crop") for b in batch]))
            params.append(out["params"])
            network.append(out["shape"])
            items.extend(batch)
            batch.clear()

    for i, name in enumerate(names, 1):
        try:
            face = demo_lib.prepare_face(preprocess.read_image(images / name), detector, predictor.image_size)
        except (preprocess.ImageReadError, demo_lib.ImageFailure) as e:
            failed[name] = str(e)
        else:
            kept.append(name)
            batch.append(face)
            if len(batch) == PREDICT_BATCH:
                flush()
        log(f"[{i}/{len(names)}] {name}" + (f": {failed[name]}" if name in failed else ""))
    flush()
    if not kept:
        return kept, {}, failed
    theta = np.concatenate(params)
    shapes = {"network": np.concatenate(network)}
    if refine:
        refined = demo_lib.refine_items(predictor, items, theta, DEFAULT_STEPS if steps is None else steps,
                                        stream=sys.stderr)
        shapes["refined"] = predictor.decode(refined.params)["shape"]
    return kept, shapes, failed


def evaluate_pairs(predictor: Any, images: Path, pairs: list[Pair], refine: bool = True,
                   steps: int | None = None, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """The report: per method, the AUC, same/different distance medians and means (mm) and every
    used pair's distance ([image_a, image_b, same, mm]). PairsError if a listed photo is missing,
    too few have a face, or a distance is not finite."""
    names = photo_names(pairs)
    missing = missing_images(images, pairs)
    if missing:
        raise PairsError(f"{images / missing[0]}: listed in the pair list but not found ({len(missing)} missing)")
    kept, shapes, failed = shapes_of_photos(predictor, images, names, refine, steps, log)
    row_of = {n: i for i, n in enumerate(kept)}
    usable = [p for p in pairs if p.a in row_of and p.b in row_of]
    report: dict[str, Any] = {"photos": len(names), "photos_left_out": failed,
                              "pairs": len(pairs), "pairs_used": len(usable),
                              "same_pairs": sum(p.same for p in usable),
                              "different_pairs": sum(not p.same for p in usable), "methods": {}}
    if not any(p.same for p in usable) or all(p.same for p in usable):
        raise PairsError("too few photos with a face: the usable pairs are not both same- and different-person")
    same = np.array([p.same for p in usable])
    for method, shape in shapes.items():
        neutral = predictor.neutral(shape)["vertices"]
        d = np.array([rms_distance_mm(neutral[row_of[p.a]], neutral[row_of[p.b]]) for p in usable])
        if not np.isfinite(d).all():
            bad = usable[int(np.flatnonzero(~np.isfinite(d))[0])]
            raise PairsError(f"{images / bad.a}, {images / bad.b}: the {method} shapes' distance is not finite")
        report["methods"][method] = {
            "auc": verification_auc(d[same], d[~same]),
            "same_median_mm": float(np.median(d[same])), "different_median_mm": float(np.median(d[~same])),
            "same_mean_mm": float(d[same].mean()), "different_mean_mm": float(d[~same].mean()),
            "distances_mm": [[p.a, p.b, p.same, float(x)] for p, x in zip(usable, d)]}
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{report['pairs_used']} of {report['pairs']} pairs used ({report['same_pairs']} same, "
             f"{report['different_pairs']} different); {len(report['photos_left_out'])} of "
             f"{report['photos']} photos left out (unreadable or no face)",
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
    from ringnet_tf.cli import EXIT_INTERRUPTED, EXIT_OK, fail
    from ringnet_tf.inference import CheckpointError, load_predictor

    if args.out is not None and args.out.is_dir():
        return fail(f"{args.out}: is a folder; --out takes a JSON file name")
    if args.out is not None and args.out.exists() and not args.force:
        return fail(f"{args.out}: exists; use --force to replace it")
    if args.fit_steps is not None and args.fit_steps < 0:
        return fail(f"--fit_steps must be >= 0; got {args.fit_steps}")
    if not args.images.is_dir():
        return fail(f"{args.images}: image folder not found")
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    try:
        pairs, repeated = read_pairs(args.pairs)
        missing = missing_images(args.images, pairs)
        if missing:  # before loading anything
            return fail(f"{args.images / missing[0]}: listed in {args.pairs} but not found "
                        f"({len(missing)} missing)")
        if repeated:
            log(f"{args.pairs}: {repeated} repeated pair(s) counted once")
        predictor = load_predictor(args.checkpoint, args.flame_model)
        if not args.network_only and predictor.flame_layer is None:
            return fail(f"{args.checkpoint}: a SavedModel has no FLAME layer to refine with; "
                        f"use --network_only or a checkpoint folder")
        report = evaluate_pairs(predictor, args.images, pairs, not args.network_only, args.fit_steps, log)
        report["repeated_pairs_dropped"] = repeated
        text = None if args.out is None else json.dumps(
            {"checkpoint": str(args.checkpoint), "pairs_file": str(args.pairs), **report}, indent=2, allow_nan=False)
        if args.out is not None:
            atomic_write(args.out, lambda f: f.write(text.encode()))
    except (PairsError, CheckpointError, FlameFileError) as e:
        return fail(str(e))
    except ImportError as e:  # dlib or its landmark model missing (landmarks_dlib.MissingDependency)
        return fail(str(e))
    except OSError as e:
        return fail(f"{e.filename or args.out}: {e.strerror or e}")
    except KeyboardInterrupt:
        print("interrupted; nothing written", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(format_report(report))
    if args.out is not None:
        print(f"results written to {args.out}")
    return EXIT_OK
