"""One image (read, choose the face, landmark, crop, write the crop) and running many of them, in
this process or in a pool of worker processes, each with its own dlib."""
from __future__ import annotations

import contextlib
import multiprocessing
import signal
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from flame.fileutil import atomic_write
from ringnet_tf import preprocess
from ringnet_tf.data import landmarks_dlib as L
from ringnet_tf.data.prepare.settings import (R_EMPTY, R_ERROR, R_NOT_IMAGE, R_UNREADABLE, Settings,
                                              Skip, Source)
from ringnet_tf.progress import Progress


def read_rgb(path: str | Path) -> np.ndarray:
    """Reads an image file as [H, W, 3] uint8 RGB (the shared reader); raises Skip with the reason."""
    try:
        return preprocess.read_image(path)
    except preprocess.ImageReadError as e:
        reason = {"empty": R_EMPTY, "not an image": R_NOT_IMAGE}.get(e.kind, R_UNREADABLE)
        raise Skip(reason, e.detail) from None


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
        det, lm = L.choose_face(_landmarker(settings), rgb, settings.face_policy())
        image, points, box = crop_face(rgb, lm, settings)
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_JPEG_QUALITY, settings.jpeg_quality])
        if not ok:
            raise Skip(R_ERROR, "JPEG encoding failed")
    except L.Rejected as s:  # Skip or FaceRejected
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


def run_tasks(tasks: list[Source], images_dir: Path, out: Path, settings: Settings, workers: int,
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
