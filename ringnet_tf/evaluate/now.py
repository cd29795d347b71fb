"""The NoW benchmark's scan-to-mesh protocol: layout, scan crop, alignment, metric, aggregation.

What is measured (following the NoW evaluation's public code and description):
  1. Crop the ground-truth scan to a sphere around the face, from its 7 landmarks (`crop_sphere`).
  2. Align the predicted mesh to the scan by the similarity (rotation, translation, scale) that
     best maps its 7 landmarks onto the scan's (Umeyama, least squares; reflections refused).
  3. Refine rotation, translation and scale to minimise the sum of squared distances from the
     cropped scan's vertices to the predicted surface (`geometry.refine_similarity`).
  4. Measure every cropped scan vertex's exact distance to the aligned predicted surface.
  5. Pool the distances of all images: median, mean and (population) standard deviation, and the
     cumulative error curve from 0 to 8 mm.

Units: the NoW scans and their landmarks are in millimetres, FLAME predictions in metres. The
similarity alignment absorbs the prediction's unit (its scale comes out near 1000 for a metre
prediction), and distances are measured in the scan's frame, converted to millimetres by the
scan's unit (`scan_unit`, millimetres by default).

Layout (the NoW validation download and the evaluation's expectations):
  GT/imagepathsvalidation.txt        one image per line, ".../<subject>/<challenge>/<image>.jpg"
  GT/scans/<subject>/<any>.obj       the subject's scan (one OBJ per subject)
  GT/scans_lmks_onlypp/<subject>/<any>.pp   its 7 landmarks, MeshLab PickPoints
  PRED/<subject>/<challenge>/<image stem>.obj (or .ply)   the predicted (neutral) mesh
  PRED/<subject>/<challenge>/<image stem>.npy (or .txt)   its 7 landmarks, [7, 3] or [1, 7, 3]
A listed image whose mesh or landmark file is absent is counted as missing (as the official code
does); .obj is preferred over .ply and .npy over .txt when both exist (likewise).

Where this differs from the official evaluation code, on purpose:
  - The .pp files are parsed as XML and their points taken in file order (the official reader
    takes fixed lines 8-14 of the file); a file without exactly 7 points is an error.
  - The landmark Procrustes refuses reflections (the official one allows a mirrored fit when it
    fits better, which would hide a left/right swap of landmarks).
  - The refinement minimises the same sum of squared scan-to-mesh distances over rotation,
    translation and scale, by Levenberg-Marquardt on exact distances (the official code uses
    chumpy's dogleg, with a penalty only on negative scales); see geometry.refine_similarity.
  - A repeated line in the image list is an error (the official code would count it twice).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from flame import constants as C
from flame.mesh_io import MeshReadError, read_mesh, read_obj
from ringnet_tf.evaluate import geometry, landmark_files, pickpoints, plot

# The 7 NoW landmarks, in the order of the scans' .pp files and of the predictions' landmark
# files (the order of flame.constants.NOW_LANDMARKS_IN_STATIC).
LANDMARK_NAMES: tuple[str, ...] = (
    "outer right eye", "inner right eye", "inner left eye", "outer left eye", "nose bottom",
    "right mouth corner", "left mouth corner")
NUM_LANDMARKS = C.NUM_NOW_LANDMARKS
OUTER_EYES = (0, 3)
INNER_EYES = (1, 2)
NOSE_BOTTOM = 4

# Crop: centre = nose bottom + CROP_CENTRE_FRACTION x (nose bridge - nose bottom), where the nose
# bridge is the midpoint of the inner eye corners; radius = CROP_RADIUS_FACTOR x (outer-eye
# distance + nose length) / 2, the nose length being |nose bridge - nose bottom|. Vertices at
# distance <= radius are kept.
CROP_CENTRE_FRACTION = 0.3
CROP_RADIUS_FACTOR = 1.4

SCAN_UNITS_TO_MM: dict[str, float] = {"mm": 1.0, "cm": 10.0, "m": 1000.0}
IMAGE_LIST_NAMES: tuple[str, ...] = ("imagepathsvalidation.txt", "imagepathstest.txt")
SCANS_DIR = "scans"
SCAN_LANDMARKS_DIR = "scans_lmks_onlypp"
CHALLENGES: tuple[str, ...] = (
    "multiview_neutral", "multiview_expressions", "multiview_occlusions", "selfie")
MESH_SUFFIXES: tuple[str, ...] = (".obj", ".ply")         # in order of preference
LANDMARK_SUFFIXES: tuple[str, ...] = (".npy", ".txt")
# Scans kept in memory: an image list is grouped by subject, so a few cover a whole run.
SCAN_CACHE_SIZE = 4
# Per-vertex distances are stored (and pooled) as float32 millimetres: 1e-7 relative precision,
# half the memory of float64 over the ~10^8 vertices of a full NoW run.
DISTANCE_DTYPE = np.float32


class NowInputError(Exception):
    """Bad input (unreadable or inconsistent files); the message is one line naming the file."""


@dataclasses.dataclass(frozen=True)
class ImageKey:
    """One image of the benchmark: `<subject>/<challenge>/<image>`."""

    subject: str
    challenge: str
    image: str  # the image file name as listed (extension included when the list has one)

    @property
    def stem(self) -> str:
        return os.path.splitext(self.image)[0]

    @property
    def name(self) -> str:
        return f"{self.subject}/{self.challenge}/{self.stem}"


# ----------------------------------------------------------------------------------------------
# The crop


def crop_sphere(landmarks: np.ndarray) -> tuple[np.ndarray, float]:
    """NoW's face sphere from a scan's 7 landmarks.

    Args:
      landmarks: `[7, 3]` in LANDMARK_NAMES order.
    Returns:
      centre `[3] float64` and radius, in the landmarks' unit.
    """
    landmarks = np.asarray(landmarks, np.float64)
    nose_bottom = landmarks[NOSE_BOTTOM]
    nose_bridge = landmarks[list(INNER_EYES)].mean(axis=0)
    centre = nose_bottom + CROP_CENTRE_FRACTION * (nose_bridge - nose_bottom)
    outer_eye_distance = float(np.linalg.norm(landmarks[OUTER_EYES[0]] - landmarks[OUTER_EYES[1]]))
    nose_length = float(np.linalg.norm(nose_bridge - nose_bottom))
    return centre, CROP_RADIUS_FACTOR * (outer_eye_distance + nose_length) / 2.0


def crop_mask(vertices: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """`[V] bool`: scan vertices `[V, 3]` inside NoW's face sphere (boundary included)."""
    centre, radius = crop_sphere(landmarks)
    offsets = np.asarray(vertices, np.float64) - centre
    return np.einsum("ij,ij->i", offsets, offsets) <= radius * radius


# ----------------------------------------------------------------------------------------------
# The layout


def read_image_list(path: str | os.PathLike) -> list[ImageKey]:
    """Images of a NoW list file: the last three parts of each line's path.

    Blank lines and lines starting with '#' are skipped; a line with fewer than three path parts
    or repeating an earlier image is an error (NowInputError naming the file and line).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise NowInputError(f"{path}: cannot read image list: {err}") from None
    keys: list[ImageKey] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = [part for part in line.replace("\\", "/").split("/") if part]
        if len(parts) < 3:
            raise NowInputError(
                f"{path}:{number}: expected '<subject>/<challenge>/<image>', got {line!r}")
        bad = [part for part in parts[-3:] if part in (".", "..") or ":" in part]
        if bad:
            # The last three parts name files under --pred and --out: none may climb out of them.
            raise NowInputError(f"{path}:{number}: {bad[0]!r} is not allowed in "
                                f"'<subject>/<challenge>/<image>', got {line!r}")
        key = ImageKey(*parts[-3:])
        # Keyed by name (no extension): face.jpg and face.png would share one distances file.
        if key.name in seen:
            raise NowInputError(f"{path}:{number}: {key.name} repeats line {seen[key.name]}")
        seen[key.name] = number
        keys.append(key)
    if not keys:
        raise NowInputError(f"{path}: image list is empty")
    return keys


def default_image_list(gt_dir: Path) -> Path | None:
    """The NoW list file in the ground-truth folder, None if there is none."""
    found = [gt_dir / name for name in IMAGE_LIST_NAMES if (gt_dir / name).is_file()]
    if len(found) > 1:
        raise NowInputError(f"{gt_dir}: several image lists ({', '.join(p.name for p in found)}); "
                            f"choose one with --images")
    return found[0] if found else None


def discover_predictions(pred_dir: Path, exclude: Iterable[Path] = ()) -> list[ImageKey]:
    """Every `<subject>/<challenge>/<stem>.obj|.ply` under pred_dir, sorted; hidden folders and
    `exclude` (e.g. the output folder) are skipped."""
    excluded = {p.resolve() for p in exclude}
    keys = set()
    for subject in sorted(p for p in pred_dir.iterdir() if p.is_dir()):
        if subject.name.startswith(".") or subject.resolve() in excluded:
            continue
        for challenge in sorted(p for p in subject.iterdir() if p.is_dir()):
            if challenge.name.startswith("."):
                continue
            for mesh in challenge.iterdir():
                if mesh.suffix.lower() in MESH_SUFFIXES and mesh.is_file():
                    keys.add(ImageKey(subject.name, challenge.name, mesh.stem))
    return sorted(keys, key=lambda k: (k.subject, k.challenge, k.stem))


def _only_file(folder: Path, pattern: str, what: str) -> Path:
    if not folder.is_dir():
        raise NowInputError(f"{folder}: {what} folder not found")
    found = sorted(p for p in folder.glob(pattern) if p.is_file())
    if not found:
        raise NowInputError(f"{folder}: no {pattern} ({what})")
    if len(found) > 1:
        raise NowInputError(f"{folder}: {len(found)} files match {pattern} ({what}); expected one")
    return found[0]


def scan_files(gt_dir: Path, subject: str) -> tuple[Path, Path]:
    """The subject's scan OBJ and landmark `.pp` (exactly one each)."""
    return (_only_file(gt_dir / SCANS_DIR / subject, "*.obj", "scan"),
            _only_file(gt_dir / SCAN_LANDMARKS_DIR / subject, "*.pp", "scan landmarks"))


def prediction_files(pred_dir: Path, key: ImageKey) -> tuple[Path | None, Path | None]:
    """The prediction's mesh and landmark files (first existing suffix each), None when absent."""
    base = pred_dir / key.subject / key.challenge / key.stem
    mesh = next((base.with_name(base.name + s) for s in MESH_SUFFIXES
                 if base.with_name(base.name + s).is_file()), None)
    landmarks = next((base.with_name(base.name + s) for s in LANDMARK_SUFFIXES
                      if base.with_name(base.name + s).is_file()), None)
    return mesh, landmarks


@dataclasses.dataclass(frozen=True)
class CroppedScan:
    """A ground-truth scan, cropped, in millimetres.

    Attributes:
      points: `[N, 3] float64` the cropped scan vertices (mm).
      landmarks: `[7, 3] float64` (mm).
      total_vertices: vertex count before the crop.
      centre, radius: the crop sphere (mm).
      scan_path, landmarks_path: the files read.
    """

    points: np.ndarray
    landmarks: np.ndarray
    total_vertices: int
    centre: np.ndarray
    radius: float
    scan_path: Path
    landmarks_path: Path
    warnings: tuple[str, ...] = ()


def load_scan(scan_path: Path, landmarks_path: Path, scan_unit: str = "mm") -> CroppedScan:
    """Read a scan and its landmarks, convert to mm and crop.

    Raises:
      NowInputError naming the file: unreadable, wrong landmark count, empty crop.
    """
    factor = SCAN_UNITS_TO_MM[scan_unit]
    try:
        vertices, _ = read_obj(scan_path, with_faces=False)  # the metric uses vertices only
        picked = pickpoints.read_pickpoints(landmarks_path, expected_count=NUM_LANDMARKS)
    except (MeshReadError, pickpoints.PickPointsError) as err:
        raise NowInputError(str(err)) from None
    warnings = tuple(
        f"{landmarks_path}: landmark {i} ({LANDMARK_NAMES[i]}) is marked inactive; used anyway"
        for i, p in enumerate(picked) if not p.active)
    landmarks = pickpoints.pickpoints_array(picked) * factor
    vertices = vertices * factor
    centre, radius = crop_sphere(landmarks)
    mask = crop_mask(vertices, landmarks)
    if not np.any(mask):
        raise NowInputError(
            f"{scan_path}: no vertex within the crop sphere (radius {radius:.4g} mm around the "
            f"landmarks of {landmarks_path.name}); landmarks in another unit or another scan?")
    return CroppedScan(points=vertices[mask], landmarks=landmarks, total_vertices=len(vertices),
                       centre=centre, radius=radius, scan_path=scan_path,
                       landmarks_path=landmarks_path, warnings=warnings)


# ----------------------------------------------------------------------------------------------
# One image


@dataclasses.dataclass(frozen=True)
class ImageEvaluation:
    """The metric for one prediction.

    Attributes:
      distances_mm: `[N] float64` distance of every cropped scan vertex to the aligned mesh.
      landmark_transform: prediction -> scan (mm) similarity from the 7 landmarks.
      transform: the final prediction -> scan (mm) similarity (landmarks, then refinement).
      landmark_rmse_mm: RMS landmark residual after the landmark alignment.
      initial_rms_mm, final_rms_mm: RMS scan-to-mesh distance before the refinement (over its
        first-phase subset when the scan has more than fit_points vertices) and after it.
      iterations: accepted refinement steps.
    """

    distances_mm: np.ndarray
    landmark_transform: geometry.Similarity
    transform: geometry.Similarity
    landmark_rmse_mm: float
    initial_rms_mm: float
    final_rms_mm: float
    iterations: int


def evaluate_prediction(scan: CroppedScan, vertices: np.ndarray, faces: np.ndarray,
                        landmarks: np.ndarray,
                        fit_points: int | None = geometry.DEFAULT_FIT_POINTS) -> ImageEvaluation:
    """Align a predicted mesh to a cropped scan and measure the scan-to-mesh distances.

    Args:
      scan: the cropped scan (mm).
      vertices: `[V, 3]` predicted mesh vertices, any unit (metres for FLAME).
      faces: `[F, 3]` int triangles.
      landmarks: `[7, 3]` the prediction's NoW landmarks, same unit as vertices.
      fit_points: scan points of the refinement's first phase (see geometry.refine_similarity).
    """
    landmark_fit = geometry.fit_similarity(landmarks, scan.landmarks)
    residual = landmark_fit.apply(landmarks) - scan.landmarks
    surface = geometry.MeshSurface(landmark_fit.apply(vertices), faces)
    refined = geometry.refine_similarity(surface, scan.points, fit_points=fit_points)
    return ImageEvaluation(
        distances_mm=refined.distances,
        landmark_transform=landmark_fit,
        transform=landmark_fit.then(refined.transform),
        landmark_rmse_mm=float(np.sqrt(np.mean(np.sum(residual ** 2, axis=1)))),
        initial_rms_mm=refined.initial_rms,
        final_rms_mm=refined.final_rms,
        iterations=refined.iterations)


# ----------------------------------------------------------------------------------------------
# A whole run


def error_statistics(distances_mm: np.ndarray) -> dict[str, float]:
    """Median, mean and population std (as NoW reports them) of pooled distances `[N]`, in mm."""
    distances_mm = np.asarray(distances_mm)
    if distances_mm.size == 0:
        return {"median_mm": math.nan, "mean_mm": math.nan, "std_mm": math.nan}
    return {"median_mm": float(np.median(distances_mm)),
            "mean_mm": float(np.mean(distances_mm, dtype=np.float64)),
            "std_mm": float(np.std(distances_mm, dtype=np.float64))}


@dataclasses.dataclass
class NowConfig:
    """Inputs of a run. `images` None: the list file in gt_dir, else every prediction found."""

    pred_dir: Path
    gt_dir: Path
    images: Path | None = None
    scan_unit: str = "mm"
    challenge: str | None = None
    fit_points: int | None = geometry.DEFAULT_FIT_POINTS
    exclude: tuple[Path, ...] = ()  # folders of pred_dir not to search (the output folder)


@dataclasses.dataclass
class NowReport:
    """Everything a run found; `summary` is what summary.json holds."""

    summary: dict
    pooled_mm: np.ndarray

    @property
    def evaluated(self) -> int:
        return int(self.summary["evaluated"])

    @property
    def missing(self) -> int:
        return int(self.summary["missing"])


def resolve_images(config: NowConfig) -> tuple[list[ImageKey], str]:
    """The images to evaluate and a description of where they came from."""
    if not config.pred_dir.is_dir():
        raise NowInputError(f"{config.pred_dir}: prediction folder not found")
    if not config.gt_dir.is_dir():
        raise NowInputError(f"{config.gt_dir}: ground-truth folder not found")
    list_path = config.images if config.images is not None else default_image_list(config.gt_dir)
    if list_path is not None:
        keys, source = read_image_list(list_path), str(list_path)
    else:
        keys = discover_predictions(config.pred_dir, config.exclude)
        source = f"every prediction found in {config.pred_dir}"
        if not keys:
            raise NowInputError(
                f"{config.pred_dir}: no '<subject>/<challenge>/<image>.obj' prediction found, and "
                f"no image list in {config.gt_dir} ({' or '.join(IMAGE_LIST_NAMES)}); pass --images")
    if config.challenge is not None:
        keys = [k for k in keys if k.challenge == config.challenge]
        if not keys:
            raise NowInputError(f"{source}: no image of challenge {config.challenge!r}")
    return keys, source


def run_now(config: NowConfig, out_dir: Path, log: Callable[[str], None] = lambda s: None) -> NowReport:
    """Evaluate every listed image and write the results into out_dir (which must exist).

    Writes `distances/<subject>/<challenge>/<stem>.npy` as it goes (float32 mm, one value per
    cropped scan vertex, in scan vertex order), then summary.json, summary.txt,
    cumulative_error.csv and cumulative_error.png.

    Raises:
      NowInputError on bad input (one line naming the file). Missing predictions are not errors:
      they are counted and listed; but a run in which every prediction is missing raises, since
      it measured nothing (most likely a wrong --pred folder).
    """
    if config.scan_unit not in SCAN_UNITS_TO_MM:
        raise NowInputError(f"unknown scan unit {config.scan_unit!r}")
    keys, source = resolve_images(config)
    cache: collections.OrderedDict[str, CroppedScan] = collections.OrderedDict()
    pooled: list[np.ndarray] = []
    by_challenge: dict[str, list[np.ndarray]] = collections.defaultdict(list)
    missing_by_challenge: collections.Counter[str] = collections.Counter()
    images: list[dict] = []
    missing: list[dict] = []
    width = len(str(len(keys)))
    started = time.perf_counter()
    for number, key in enumerate(keys, start=1):
        tick = time.perf_counter()
        prefix = f"[{number:>{width}}/{len(keys)}] {key.name}"
        mesh_path, landmark_path = prediction_files(config.pred_dir, key)
        if mesh_path is None or landmark_path is None:
            absent = [what for what, found in (("mesh (.obj/.ply)", mesh_path),
                                               ("landmarks (.npy/.txt)", landmark_path))
                      if found is None]
            reason = (f"no prediction {' and no '.join(absent)} at "
                      f"{config.pred_dir / key.subject / key.challenge / key.stem}")
            missing.append({"image": key.name, "reason": reason})
            missing_by_challenge[key.challenge] += 1
            log(f"{prefix}: MISSING, {reason}")
            continue
        scan = cache.get(key.subject)
        if scan is None:
            scan = load_scan(*scan_files(config.gt_dir, key.subject), scan_unit=config.scan_unit)
            for warning in scan.warnings:
                log(f"warning: {warning}")
            cache[key.subject] = scan
            if len(cache) > SCAN_CACHE_SIZE:
                cache.popitem(last=False)
        cache.move_to_end(key.subject)
        try:
            vertices, faces = read_mesh(mesh_path)
            landmarks = landmark_files.read_landmarks(landmark_path, NUM_LANDMARKS)
        except MeshReadError as err:
            raise NowInputError(str(err)) from None
        try:
            result = evaluate_prediction(scan, vertices, faces, landmarks, config.fit_points)
        except ValueError as err:  # e.g. coincident landmarks: no similarity
            raise NowInputError(f"{landmark_path}: cannot align: {err}") from None
        distances = result.distances_mm.astype(DISTANCE_DTYPE)
        relative = Path("distances") / key.subject / key.challenge / f"{key.stem}.npy"
        target = out_dir / relative
        if not target.resolve().is_relative_to(out_dir.resolve()) or target.exists():
            raise NowInputError(f"{key.name}: its distances file {target} would leave --out or "
                                f"replace another image's")
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, distances)
        pooled.append(distances)
        by_challenge[key.challenge].append(distances)
        stats = error_statistics(distances)
        images.append({
            "image": key.name, "distances": relative.as_posix(), "scan_vertices": len(distances),
            **{k: round(v, 6) for k, v in stats.items()},
            "landmark_rmse_mm": round(result.landmark_rmse_mm, 6),
            "rms_before_refinement_mm": round(result.initial_rms_mm, 6),
            "rms_after_refinement_mm": round(result.final_rms_mm, 6),
            "refinement_steps": result.iterations,
            "prediction_to_scan": result.transform.as_dict(),
            "mesh": str(mesh_path), "landmarks": str(landmark_path)})
        log(f"{prefix}: {len(distances)} scan vertices, median {stats['median_mm']:.3f} mm, "
            f"mean {stats['mean_mm']:.3f} mm, scale {result.transform.scale:.4g} "
            f"({time.perf_counter() - tick:.1f} s)")
    if not pooled:
        raise NowInputError(f"{config.pred_dir}: none of the {len(keys)} listed predictions exists "
                            f"(listed by {source}); wrong --pred folder?")
    all_mm = np.concatenate(pooled)
    per_challenge = {}
    for challenge in sorted(set(by_challenge) | set(missing_by_challenge)):
        arrays = by_challenge.get(challenge, [])
        values = np.concatenate(arrays) if arrays else np.zeros(0, DISTANCE_DTYPE)
        per_challenge[challenge] = {
            "evaluated": len(arrays), "missing": missing_by_challenge[challenge],
            "scan_vertices": int(values.size),
            **{k: _round(v) for k, v in error_statistics(values).items()}}
    summary = {
        "protocol": "NoW scan-to-mesh error (ringnet_tf.evaluate now)",
        "unit": "mm",
        "images_listed": len(keys),
        "image_source": source,
        "evaluated": len(pooled),
        "missing": len(missing),
        "scan_vertices": int(all_mm.size),
        **{k: _round(v) for k, v in error_statistics(all_mm).items()},
        "per_challenge": per_challenge,
        "missing_predictions": missing,
        "settings": {
            "pred_dir": str(config.pred_dir), "gt_dir": str(config.gt_dir),
            "scan_unit": config.scan_unit, "challenge": config.challenge,
            "fit_points": config.fit_points,
            "crop_centre_fraction": CROP_CENTRE_FRACTION, "crop_radius_factor": CROP_RADIUS_FACTOR,
            "seconds": round(time.perf_counter() - started, 3)},
        "images": images,
    }
    report = NowReport(summary=summary, pooled_mm=all_mm)
    _write_summary(out_dir, report)
    return report


def _round(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)


def format_summary(report: NowReport) -> str:
    """The human-readable summary (printed and written to summary.txt)."""
    s = report.summary
    lines = [
        f"NoW scan-to-mesh error: {s['evaluated']} of {s['images_listed']} images evaluated, "
        f"{s['missing']} missing",
        f"  median {s['median_mm']:.4f} mm   mean {s['mean_mm']:.4f} mm   std {s['std_mm']:.4f} mm"
        f"   ({s['scan_vertices']} scan vertices pooled)"]
    if len(s["per_challenge"]) > 1:
        for name, c in s["per_challenge"].items():
            stats = ("no prediction" if c["evaluated"] == 0 else
                     f"median {c['median_mm']:.4f}  mean {c['mean_mm']:.4f}  std {c['std_mm']:.4f}")
            lines.append(f"  {name:<22} {c['evaluated']:>5} evaluated {c['missing']:>4} missing   {stats}")
    if s["missing"]:
        shown = s["missing_predictions"][:10]
        lines.append(f"  missing predictions ({s['missing']}):")
        lines += [f"    {m['image']}: {m['reason']}" for m in shown]
        if s["missing"] > len(shown):
            lines.append(f"    ... and {s['missing'] - len(shown)} more (summary.json lists all)")
    return "\n".join(lines)


def _write_summary(out_dir: Path, report: NowReport) -> None:
    s = report.summary
    (out_dir / "summary.json").write_text(json.dumps(s, indent=1) + "\n", encoding="utf-8")
    (out_dir / "summary.txt").write_text(format_summary(report) + "\n", encoding="utf-8")
    thresholds, percent = plot.cumulative_curve(report.pooled_mm)
    np.savetxt(out_dir / "cumulative_error.csv", np.stack([thresholds, percent], axis=1),
               fmt=("%.2f", "%.4f"), delimiter=",", header="error_mm,percent_within",
               comments="")
    images = f"{s['evaluated']} image{'s' if s['evaluated'] != 1 else ''}"
    label = (f"median {s['median_mm']:.2f} / mean {s['mean_mm']:.2f} / std {s['std_mm']:.2f} mm"
             f" ({images})")
    plot.plot_cumulative_curve(out_dir / "cumulative_error.png", thresholds, percent, label)
