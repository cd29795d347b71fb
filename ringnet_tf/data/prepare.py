"""Turns identity folders of photos into a ring dataset: faces found, landmarked, cropped.

    python -m ringnet_tf.data.prepare --images DIR --out DIR [--size 256] [--workers N] [--tfrecords]

Input: `DIR/<identity>/<image>` (VGGFace2's layout); files deeper in an identity's folder belong to
it too (`DIR/<identity>/<video>/<frame>`, as frames extracted from VoxCeleb2). Any format OpenCV
decodes; every image becomes 8-bit RGB: grey is repeated over the channels, 16-bit and float images
are scaled to 8 bits, an alpha channel is composited over mid-grey (128, zero after the model's
normalisation), and a JPEG's EXIF orientation is applied (OpenCV does it when decoding a JPEG).

Per image (in parallel over `--workers` processes, each with its own dlib):
1. faces: dlib's HOG detector and 68-point predictor (`landmarks_dlib`, where the per-landmark
   confidence is defined: agreement of the predictions on the image and on its mirror image).
2. which face (the several-faces policy):
   - detections: dlib's, scoring at least `--detector_threshold` (dlib's own 0); overlapping ones
     (IoU >= 0.5) are one face; at most the 5 largest are looked at;
   - a detection is a face only if its landmarks agree with those of the mirror image: mean
     agreement (the confidence before the inside-the-image factor) at least `--min_confidence`
     (0.4); none left: "no face";
   - a face is clear if its detection score is at least `--clear_score` (0.5), else weak. Weak
     faces never make an image ambiguous; they are only candidates when there is no clear face;
   - the subject is the largest candidate (detector box area); if another candidate has more
     than 1 / `--face_ratio` of its area, the image is skipped as "several faces" (ambiguous: the
     identity label may belong to either); smaller faces in the background do not matter;
   - a subject whose box side is below `--min_face` pixels: "face too small".
   Why both tests: in 640 x 480 frames of the test photo, dlib also fires on the suit's mission
   patch, as large as the face, scoring 0.05 to 0.35 (the face: 0.7 to 1.4) with a mirror
   agreement of 0.27 to 0.73 (the face: 0.98 to 0.99). The agreement test alone left 17 of 48
   such frames "several faces"; the score tier settles them all. The agreement test still
   decides among weak detections when there is no clear face.
3. crop: `preprocess.box_from_landmarks` (the model's loose crop, `--crop_scale`) resampled to
   `--size` pixels (default 256: the same box as the model's 224 input, with resolution to spare
   for training's scale augmentation); landmarks mapped into the crop's pixels.
After all images: identities with fewer than `--min_images` kept images are dropped.

Output (`--out`):
- the dataset format of `ringnet_tf.data.dataset`: `images/<identity>/<name>.jpg`, `manifest.csv`
  (sorted by identity, then image path, whatever the number of workers), `dataset.json`
  (source "prepare", counts, image size, crop, landmark and confidence settings, skip counts);
  with `--tfrecords` also `tfrecords/` (`dataset.write_tfrecords`);
- `skipped.csv`: `path` (relative to --images), `reason`, `detail`, one row per file left out.
  Reasons: "not in an identity folder", "empty file", "not an image", "unreadable image",
  "no face", "several faces", "face too small", "output name clash", "processing error",
  "too few images in identity";
- `.prepare/`: the run's settings, a journal of finished images (for resuming) and a lock (one
  run at a time per --out).

Resuming: every finished image is appended to `.prepare/journal.jsonl` (its crop is written
atomically first). Rerunning the same command skips images already in the journal (unless the
source file's size or modification time changed, or it met a processing error) and gives the same
dataset, byte for byte. An
`--out` prepared from other `--images` or with other settings is refused unless `--force`, which
deletes what an earlier run wrote there. The derived files (manifest, metadata, skipped.csv,
TFRecords) are removed when a run starts and written at its end, the manifest last but for the
TFRecords: a folder without `manifest.csv` is an unfinished run.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import json
import logging
import multiprocessing
import os
import shutil
import signal
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from flame.fileutil import atomic_write
from ringnet_tf import preprocess
from ringnet_tf.data import dataset as D
from ringnet_tf.data import landmarks_dlib as L
from ringnet_tf.progress import Progress

log = logging.getLogger("ringnet_tf.data.prepare")

# Bump when a change alters per-image results: an --out prepared by another version is refused.
ALGORITHM_VERSION = 1
WORK_DIR = ".prepare"
SETTINGS_NAME = "settings.json"
JOURNAL_NAME = "journal.jsonl"
SKIPPED_NAME = "skipped.csv"
IMAGES_DIR = "images"
# What a run owns in --out (what --force deletes).
OWNED = (D.MANIFEST_NAME, D.META_NAME, SKIPPED_NAME, D.TFRECORD_DIR, IMAGES_DIR, WORK_DIR)
IMAGE_SUFFIXES = preprocess.IMAGE_SUFFIXES
MAX_CANDIDATES = 5  # detections (largest first) whose landmarks are checked
DUPLICATE_IOU = 0.5

# Skip reasons (the `reason` column of skipped.csv).
R_OUTSIDE = "not in an identity folder"
R_EMPTY = "empty file"
R_NOT_IMAGE = "not an image"
R_UNREADABLE = "unreadable image"
R_NO_FACE = "no face"
R_SEVERAL = "several faces"
R_SMALL = "face too small"
R_CLASH = "output name clash"
R_ERROR = "processing error"
R_FEW = "too few images in identity"


class PrepareError(RuntimeError):
    """A problem with the arguments or the output folder; the message is one line."""

    exit_code = 2


class NothingKept(PrepareError):
    """Every file was skipped (skipped.csv says why)."""

    exit_code = 1


class Skip(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything that shapes the dataset (recorded in `.prepare/settings.json` and dataset.json)."""

    size: int = 256
    crop_scale: float = preprocess.CROP_SCALE
    min_face: float = L.DEFAULT_MIN_FACE
    face_ratio: float = 2.0
    min_confidence: float = 0.4
    clear_score: float = 0.5
    detector_threshold: float = L.DEFAULT_THRESHOLD
    tolerance: float = L.DEFAULT_TOLERANCE
    jpeg_quality: int = 95
    min_images: int = 2
    predictor: str = ""  # path of the dlib predictor file; "" = the one face-recognition-models ships

    def check(self) -> None:
        problems = []
        if self.size < 32:
            problems.append(f"--size must be at least 32 (got {self.size})")
        if self.crop_scale <= 0:
            problems.append(f"--crop_scale must be positive (got {self.crop_scale})")
        if self.min_face < 8:
            problems.append(f"--min_face must be at least 8 pixels (got {self.min_face})")
        if self.face_ratio < 1:
            problems.append(f"--face_ratio must be at least 1 (got {self.face_ratio})")
        if not 0 <= self.min_confidence <= 1:
            problems.append(f"--min_confidence must be in [0, 1] (got {self.min_confidence})")
        if self.tolerance <= 0:
            problems.append(f"--tolerance must be positive (got {self.tolerance})")
        if not 1 <= self.jpeg_quality <= 100:
            problems.append(f"--jpeg_quality must be in 1..100 (got {self.jpeg_quality})")
        if self.min_images < 1:
            problems.append(f"--min_images must be at least 1 (got {self.min_images})")
        if problems:
            raise PrepareError(problems[0])


@dataclasses.dataclass(frozen=True)
class Source:
    rel: str  # path relative to --images, '/'-separated
    identity: str
    image: str  # output path relative to --out
    size: int
    mtime_ns: int


@dataclasses.dataclass
class Summary:
    num_files: int = 0
    num_images: int = 0
    num_identities: int = 0
    computed: int = 0
    reused: int = 0
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)


# ----------------------------------------------------------------------------- reading images

def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Reads an image file as [H, W, 3] uint8 RGB (the shared reader); raises Skip with the reason."""
    try:
        return preprocess.read_image(path)
    except preprocess.ImageReadError as e:
        reason = {"empty": R_EMPTY, "not an image": R_NOT_IMAGE}.get(e.kind, R_UNREADABLE)
        raise Skip(reason, e.detail) from None


# ----------------------------------------------------------------------------- one image

def choose_face(landmarker: L.DlibLandmarker, rgb: np.ndarray,
                settings: Settings) -> tuple[L.Detection, L.FaceLandmarks]:
    """The subject's face under the several-faces policy (module docstring), or Skip."""
    detections = landmarker.detect(rgb)
    if not detections:
        raise Skip(R_NO_FACE, "no detection")
    faces: list[tuple[L.Detection, L.FaceLandmarks]] = []
    best_rejected = None
    for det in detections[:MAX_CANDIDATES]:
        if any(det.iou(f[0]) >= DUPLICATE_IOU for f in faces):
            continue
        lm = landmarker.landmarks(rgb, det)
        if lm.mean_agreement >= settings.min_confidence:
            faces.append((det, lm))
        elif best_rejected is None or lm.mean_agreement > best_rejected:
            best_rejected = lm.mean_agreement
    if not faces:
        raise Skip(R_NO_FACE, f"{len(detections)} detection(s), landmarks unreliable (mean agreement "
                              f"{best_rejected:.2f} < --min_confidence {settings.min_confidence:g})")
    clear = [f for f in faces if f[0].score >= settings.clear_score]
    candidates = clear or faces  # still largest first
    det, lm = candidates[0]
    if len(candidates) > 1 and det.area < settings.face_ratio * candidates[1][0].area:
        raise Skip(R_SEVERAL, f"{len(candidates)} faces, the largest only "
                              f"{det.area / candidates[1][0].area:.2f}x the next in area "
                              f"(--face_ratio {settings.face_ratio:g})")
    if det.size < settings.min_face:
        raise Skip(R_SMALL, f"{det.size:.0f} px < --min_face {settings.min_face:g}")
    return det, lm


def crop_face(rgb: np.ndarray, lm: L.FaceLandmarks,
              settings: Settings) -> tuple[np.ndarray, np.ndarray, preprocess.Box]:
    """The stored crop [size, size, 3], its landmarks [68, 3] (crop pixels, confidence) and the
    crop's box in the source image."""
    box = preprocess.box_from_landmarks(lm.points, settings.crop_scale)
    image = preprocess.crop(rgb, box, settings.size)
    points = preprocess.transform_points(lm.as_array(), box.affine(settings.size))
    return image, points, box


_LANDMARKER: L.DlibLandmarker | None = None
_LANDMARKER_KEY: tuple | None = None
_WORKER_ERROR: BaseException | None = None


def _landmarker(settings: Settings) -> L.DlibLandmarker:
    """The process's detector and predictor (loaded once per process and settings)."""
    global _LANDMARKER, _LANDMARKER_KEY
    key = (settings.predictor, settings.min_face, settings.detector_threshold, settings.tolerance)
    if _LANDMARKER is None or _LANDMARKER_KEY != key:
        _LANDMARKER = L.DlibLandmarker(settings.predictor or None, settings.min_face,
                                       settings.detector_threshold, settings.tolerance)
        _LANDMARKER_KEY = key
    return _LANDMARKER


def process_image(images_dir: str, out_dir: str, source: Source, settings: Settings) -> dict[str, Any]:
    """Reads, landmarks and crops one image; writes the crop; returns its journal entry."""
    entry: dict[str, Any] = {"src": source.rel, "size": source.size, "mtime_ns": source.mtime_ns,
                             "image": source.image}
    try:
        rgb = read_rgb(Path(images_dir) / source.rel)
        det, lm = choose_face(_landmarker(settings), rgb, settings)
        image, points, box = crop_face(rgb, lm, settings)
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_JPEG_QUALITY, settings.jpeg_quality])
        if not ok:
            raise Skip(R_ERROR, "JPEG encoding failed")
    except Skip as s:
        entry.update(status="skip", reason=s.reason, detail=s.detail)
        return entry
    except L.MissingDependency:
        raise
    except Exception as e:  # one strange file must not stop a run over millions (retried on a rerun)
        entry.update(status="skip", reason=R_ERROR, detail=f"{type(e).__name__}: {e}")
        return entry
    # Not caught: failing to write the output (disk full, permissions) stops the run.
    atomic_write(Path(out_dir) / source.image, lambda f: f.write(encoded.tobytes()))
    # face: detector box (left, top, right, bottom; source pixels) and score; crop_box: the crop's
    # box (centre x, centre y, side; source pixels), to map crop pixels back to the photo.
    entry.update(status="ok", landmarks=np.round(points, 3).tolist(),  # the manifest's precision
                 face=[det.left, det.top, det.right, det.bottom, det.score],
                 crop_box=[box.cx, box.cy, box.size],
                 source_shape=list(rgb.shape[:2]), mean_agreement=lm.mean_agreement)
    return entry


def _init_worker(settings: Settings) -> None:
    global _WORKER_ERROR
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops the pool
    cv2.setNumThreads(1)
    try:
        _landmarker(settings)
    except BaseException as e:  # a raising initializer makes a Pool respawn workers forever
        _WORKER_ERROR = e


def _worker_task(args: tuple[str, str, Source, Settings]) -> dict[str, Any]:
    if _WORKER_ERROR is not None:
        raise _WORKER_ERROR
    return process_image(*args)


# ----------------------------------------------------------------------------- the input folder

def scan(images_dir: Path) -> tuple[list[Source], list[tuple[str, str, str]]]:
    """Sources (sorted by identity, then path) and the files that can't be one (path, reason, detail)."""
    sources: list[Source] = []
    skipped: list[tuple[str, str, str]] = []
    for entry in sorted(os.scandir(images_dir), key=lambda e: e.name):
        if entry.is_file():
            skipped.append((_printable(entry.name), R_OUTSIDE, "files belong in DIR/<identity>/"))
            continue
        if not entry.is_dir():
            continue
        identity = entry.name
        files: list[str] = []
        for root, dirs, names in os.walk(entry.path):
            dirs.sort()
            rel_root = os.path.relpath(root, entry.path)
            for name in sorted(names):
                files.append(name if rel_root == "." else f"{Path(rel_root).as_posix()}/{name}")
        for rel, out_name in _output_names(files).items():
            path = Path(entry.path) / rel
            if not _is_utf8(f"{identity}/{rel}"):
                skipped.append((_printable(f"{identity}/{rel}"), R_UNREADABLE,
                                "file or folder name is not valid UTF-8"))
                continue
            try:
                st = path.stat()
            except OSError as e:
                skipped.append((f"{identity}/{rel}", R_UNREADABLE, e.strerror or str(e)))
                continue
            if out_name is None:
                skipped.append((f"{identity}/{rel}", R_CLASH, "another file maps to the same output name"))
                continue
            sources.append(Source(f"{identity}/{rel}", identity, f"{IMAGES_DIR}/{identity}/{out_name}",
                                  st.st_size, st.st_mtime_ns))
    return sources, skipped


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes, kept by os as surrogates
        return False
    return True


def _printable(name: str) -> str:
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _output_names(files: list[str]) -> dict[str, str | None]:
    """Source path (in an identity folder) -> output name: `<stem>.jpg`, or `<stem>_<suffix>.jpg`
    when stems clash (a.jpg and a.png), compared case-insensitively; None if still clashing."""
    def parent_and(rel: str, name: str) -> str:
        parent = rel.rpartition("/")[0]
        return f"{parent}/{name}" if parent else name

    stems = Counter(parent_and(f, Path(f).stem).lower() for f in files)
    names = {}
    for f in files:
        p = Path(f)
        if stems[parent_and(f, p.stem).lower()] == 1:
            names[f] = parent_and(f, p.stem + ".jpg")
        else:
            names[f] = parent_and(f, f"{p.stem}_{p.suffix.lstrip('.')}.jpg")
    taken = Counter(n.lower() for n in names.values())
    return {f: (n if taken[n.lower()] == 1 else None) for f, n in names.items()}


# ----------------------------------------------------------------------------- the output folder

def _fingerprint(images_dir: Path, settings: Settings) -> dict[str, Any]:
    predictor = Path(settings.predictor) if settings.predictor else L.find_predictor()
    fields = dataclasses.asdict(settings)
    fields["predictor"] = {"name": predictor.name, "bytes": predictor.stat().st_size}
    return {"algorithm": ALGORITHM_VERSION, "images": str(images_dir), **fields}


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(set(old) | set(new), key=lambda k: (k != "images", k))
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return "; ".join(diffs[:3])


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def check_output(out: Path, fingerprint: dict[str, Any], force: bool) -> bool:
    """Checks --out against this run: True if an earlier, different run's outputs are to be
    replaced (--force); False for a new folder or a resume; PrepareError otherwise."""
    if out.exists() and not out.is_dir():
        raise PrepareError(f"--out {out}: exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return False
    old = None
    try:
        old = json.loads((out / WORK_DIR / SETTINGS_NAME).read_text())
    except (OSError, ValueError):
        pass
    if old == fingerprint:
        return False
    if old is None and [p.name for p in out.iterdir()] == [WORK_DIR]:
        return True  # only a run's work folder, without settings (stopped at its very start)
    if not force:
        if old is None:
            raise PrepareError(f"--out {out}: not empty and not a prepare output; "
                               "choose another folder or pass --force to replace its dataset")
        raise PrepareError(f"--out {out}: holds a dataset prepared differently "
                           f"({_differences(old, fingerprint)}); pass --force to replace it")
    return True


def open_output(out: Path, fingerprint: dict[str, Any], replace: bool) -> None:
    """Clears what this run rewrites (all of an earlier run's outputs if `replace`) and records
    the run's settings. Runs with `.prepare/lock` held."""
    if replace:
        log.info("removing an earlier run's outputs in %s", out)
        for name in OWNED:
            if name == WORK_DIR:
                for path in (out / WORK_DIR).iterdir():
                    if path.name != "lock":
                        _remove(path)
            else:
                _remove(out / name)
    # The derived files describe a finished run; this run rewrites them at its end.
    for name in (D.MANIFEST_NAME, D.META_NAME, SKIPPED_NAME, D.TFRECORD_DIR):
        _remove(out / name)
    _remove(out / WORK_DIR / "tfrecords.partial")
    atomic_write(out / WORK_DIR / SETTINGS_NAME,
                 lambda f: f.write(json.dumps(fingerprint, indent=2, sort_keys=True).encode()))


@dataclasses.dataclass(slots=True)
class Result:
    """What the run keeps in memory of a journal entry (the landmarks as float32)."""

    size: int
    mtime_ns: int
    image: str
    ok: bool
    reason: str = ""
    detail: str = ""
    landmarks: np.ndarray | None = None

    @classmethod
    def from_entry(cls, e: dict[str, Any]) -> "Result":
        if e["status"] == "ok":
            lm = np.asarray(e["landmarks"], np.float32).reshape(68, 3)
            return cls(e["size"], e["mtime_ns"], e["image"], True, landmarks=lm)
        if e["status"] == "skip":
            return cls(e["size"], e["mtime_ns"], e["image"], False, e["reason"], e.get("detail", ""))
        raise ValueError(f"status {e['status']!r}")


def load_journal(path: Path, keep: set[str]) -> dict[str, Result]:
    """The journal's last entry per source (sources in `keep` only). A line torn by an
    interruption (the file's end without a newline) is cut off, so appending can go on."""
    results: dict[str, Result] = {}
    if not path.exists():
        return results
    with open(path, "rb+") as f:
        end = 0
        for raw in f:
            if not raw.endswith(b"\n"):
                break  # the torn last line
            end += len(raw)
            try:
                entry = json.loads(raw)
                if entry["src"] in keep:
                    results[entry["src"]] = Result.from_entry(entry)
            except (ValueError, KeyError, TypeError):
                continue  # an unreadable line: its image is simply done again
        f.truncate(end)
    return results


def _still_valid(result: Result | None, source: Source) -> bool:
    """A journal result stands unless its source changed; processing errors are tried again."""
    return (result is not None and result.size == source.size
            and result.mtime_ns == source.mtime_ns and result.image == source.image
            and result.reason != R_ERROR)


# ----------------------------------------------------------------------------- running

def _run(tasks: list[Source], images_dir: Path, out: Path, settings: Settings, workers: int,
         on_entry: Callable[[dict[str, Any]], None], progress: bool, desc: str) -> None:
    """Processes `tasks` in this process (workers 1) or a pool; entries arrive in any order."""
    if not tasks:
        return
    bar = Progress(len(tasks), desc, enabled=progress)
    args = [(str(images_dir), str(out), s, settings) for s in tasks]
    with contextlib.ExitStack() as stack:
        stack.callback(bar.close)
        if workers <= 1:
            entries: Iterable[dict[str, Any]] = (process_image(*a) for a in args)
        else:
            # spawn: the workers must not inherit a parent's TensorFlow or dlib threads.
            ctx = multiprocessing.get_context("spawn")
            pool = stack.enter_context(ctx.Pool(min(workers, len(tasks)), initializer=_init_worker,
                                                initargs=(settings,)))
            entries = pool.imap_unordered(_worker_task, args, chunksize=1)
        for entry in entries:
            on_entry(entry)
            if entry["status"] == "skip":
                bar.write(f"skip {entry['src']}: {entry['reason']}; {entry['detail']}")
            bar.update()


def prepare(images_dir: str | os.PathLike, out_dir: str | os.PathLike, settings: Settings = Settings(),
            workers: int = 1, tfrecords: bool = False, force: bool = False,
            progress: bool = True) -> Summary:
    """Runs the whole preparation (module docstring); returns the counts. Raises PrepareError."""
    settings.check()
    if workers < 1:
        raise PrepareError(f"--workers must be at least 1 (got {workers})")
    images = Path(images_dir).resolve()
    out = Path(out_dir).resolve()
    if not images.is_dir():
        raise PrepareError(f"--images {images_dir}: not a folder")
    if out == images or images in out.parents or out in images.parents:
        raise PrepareError(f"--out {out_dir} and --images {images_dir} must not contain one another")
    sources, skipped = scan(images)
    if not sources and not skipped:
        raise PrepareError(f"--images {images_dir}: empty (expected DIR/<identity>/<image>)")
    if not sources:
        raise PrepareError(f"--images {images_dir}: no files in identity folders "
                           "(expected DIR/<identity>/<image>)")
    L.check_installed(settings.predictor or None)
    fingerprint = _fingerprint(images, settings)
    replace = check_output(out, fingerprint, force)
    with _locked(out):
        return _prepare_locked(images, out, sources, skipped, settings, workers, tfrecords,
                               fingerprint, replace, progress)


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Holds `.prepare/lock` for the run, so that two runs never write to one --out at once."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    path = out / WORK_DIR / "lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise PrepareError(f"--out {out}: another prepare run is writing there") from None
        yield


def _prepare_locked(images: Path, out: Path, sources: list[Source], skipped: list[tuple[str, str, str]],
                    settings: Settings, workers: int, tfrecords: bool, fingerprint: dict[str, Any],
                    replace: bool, progress: bool) -> Summary:
    open_output(out, fingerprint, replace)
    for rel, reason, detail in skipped:
        log.info("skip %s: %s; %s", rel, reason, detail)
    journal_path = out / WORK_DIR / JOURNAL_NAME
    results = load_journal(journal_path, {s.rel for s in sources})
    todo = [s for s in sources if not _still_valid(results.get(s.rel), s)]
    summary = Summary(num_files=len(sources) + len(skipped), reused=len(sources) - len(todo))
    if summary.reused:
        log.info("resuming: %d of %d images already done", summary.reused, len(sources))

    with open(journal_path, "a", encoding="utf-8") as journal:
        def record(entry: dict[str, Any]) -> None:
            journal.write(json.dumps(entry, sort_keys=True) + "\n")
            journal.flush()
            results[entry["src"]] = Result.from_entry(entry)
            summary.computed += 1

        _run(todo, images, out, settings, workers, record, progress, "prepare")

        # Identities with too few images are dropped; kept images missing on disk (deleted since
        # the journal entry was written) are made again.
        def kept_sources() -> tuple[list[Source], list[Source]]:
            ok = [s for s in sources if results[s.rel].ok]
            counts = Counter(s.identity for s in ok)
            return ([s for s in ok if counts[s.identity] >= settings.min_images],
                    [s for s in ok if counts[s.identity] < settings.min_images])

        kept, dropped = kept_sources()
        missing = [s for s in kept if not (out / s.image).is_file()]
        if missing:
            log.info("%d finished images are missing from %s; making them again", len(missing), out)
            _run(missing, images, out, settings, workers, record, progress, "prepare (missing)")
            kept, dropped = kept_sources()
    lost = [s.image for s in kept if not (out / s.image).is_file()]
    if lost:
        raise PrepareError(f"{out / lost[0]}: missing after processing ({len(lost)} images)")

    _remove_stale_images(out, {s.image for s in kept})
    counts = Counter(s.identity for s in sources if results[s.rel].ok)
    for s in dropped:
        skipped.append((s.rel, R_FEW, f"{counts[s.identity]} < --min_images {settings.min_images}"))
    for s in sources:
        r = results[s.rel]
        if not r.ok:
            skipped.append((s.rel, r.reason, r.detail))
    skipped.sort()
    summary.skipped = dict(sorted(Counter(r for _, r, _ in skipped).items()))
    summary.num_images = len(kept)
    summary.num_identities = len({s.identity for s in kept})
    _write_skipped(out / SKIPPED_NAME, skipped)
    if not kept:
        raise NothingKept(f"no image kept (see {out / SKIPPED_NAME})")

    records = [D.Record(s.image, s.identity, results[s.rel].landmarks)
               for s in sorted(kept, key=lambda s: (s.identity, s.image))]
    D.write_meta(out, _meta(images, settings, summary))
    D.write_manifest(out, records)
    if tfrecords:
        partial = out / WORK_DIR / "tfrecords.partial"
        D.write_tfrecords(out, partial)
        os.replace(partial, out / D.TFRECORD_DIR)
    return summary


def _remove_stale_images(out: Path, keep: set[str]) -> None:
    """Deletes files under images/ that are not the dataset's (dropped identities, earlier names,
    temporary files of an interrupted write) and the folders left empty."""
    root = out / IMAGES_DIR
    if not root.is_dir():
        return
    for folder, dirs, names in os.walk(root, topdown=False):
        for name in names:
            path = Path(folder) / name
            if path.relative_to(out).as_posix() not in keep:
                path.unlink()
        if folder != str(root) and not any(Path(folder).iterdir()):
            Path(folder).rmdir()


def _write_skipped(path: Path, rows: list[tuple[str, str, str]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "reason", "detail"])
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(buf.getvalue().encode()))


def _meta(images: Path, settings: Settings, summary: Summary) -> dict[str, Any]:
    return {
        "source": "prepare",
        "images_dir": str(images),
        "num_images": summary.num_images,
        "num_identities": summary.num_identities,
        "num_files": summary.num_files,
        "image_size": settings.size,
        "crop": {"box": "preprocess.box_from_landmarks", "scale": settings.crop_scale,
                 "centre_shift_up": preprocess.CENTRE_SHIFT_UP, "size": settings.size},
        "landmarks": {
            "detector": "dlib HOG frontal face detector",
            "predictor": Path(settings.predictor).name if settings.predictor else L.PREDICTOR_FILE,
            "dlib": L.dlib_version(),
            "confidence": "mirror agreement: c = exp(-r^2 / (2 tolerance^2)) * inside, "
                          "r = |p - q| / (2 S) (ringnet_tf.data.landmarks_dlib)",
            "tolerance": settings.tolerance,
        },
        "settings": dataclasses.asdict(settings),
        "skipped": summary.skipped,
    }


# ----------------------------------------------------------------------------- command line

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
               "docstrings of ringnet_tf/data/landmarks_dlib.py and ringnet_tf/data/prepare.py.")
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
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def format_summary(summary: Summary, out: Path) -> str:
    lines = [f"prepared {summary.num_images} images of {summary.num_identities} identities from "
             f"{summary.num_files} files into {out} ({summary.computed} processed, {summary.reused} "
             "reused from an earlier run)"]
    total = sum(summary.skipped.values())
    if total:
        parts = ", ".join(f"{n} {reason}" for reason, n in summary.skipped.items())
        lines.append(f"skipped {total}: {parts} (details in {out / SKIPPED_NAME})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # --tfrecords imports TensorFlow
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


if __name__ == "__main__":
    sys.exit(main())
