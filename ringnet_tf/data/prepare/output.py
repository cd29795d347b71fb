"""The output folder (--out): checking it against the run, the lock, clearing and recording what
a run rewrites, and the dataset's files written at the end (skipped.csv, dataset.json, manifest,
TFRecords: the manifest last but for the TFRecords, so a folder without it is an unfinished run)."""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flame.fileutil import atomic_write
from ringnet_tf import preprocess
from ringnet_tf.data import dataset as D
from ringnet_tf.data import landmarks_dlib as L
from ringnet_tf.data.prepare.settings import (ALGORITHM_VERSION, OWNED, SETTINGS_NAME, SKIPPED_NAME,
                                              IMAGES_DIR, WORK_DIR, PrepareError, Settings, Summary)

log = logging.getLogger("ringnet_tf.data.prepare")
# Where versions before `dataset.write_tfrecords` staged its own folder built the TFRecords.
_OLD_TFRECORDS_PARTIAL = "tfrecords.partial"


def run_fingerprint(images_dir: Path, settings: Settings) -> dict[str, Any]:
    """What makes two runs the same (recorded in `.prepare/settings.json`)."""
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


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
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
    _remove(out / WORK_DIR / _OLD_TFRECORDS_PARTIAL)
    atomic_write(out / WORK_DIR / SETTINGS_NAME,
                 lambda f: f.write(json.dumps(fingerprint, indent=2, sort_keys=True).encode()))


def remove_stale_images(out: Path, keep: set[str]) -> None:
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


def write_skipped(path: Path, rows: list[tuple[str, str, str]]) -> None:
    """skipped.csv: path, reason, detail (rows as given)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "reason", "detail"])
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(buf.getvalue().encode()))


def write_dataset(out: Path, images: Path, settings: Settings, summary: Summary,
                  records: list[D.Record], tfrecords: bool) -> None:
    """dataset.json, then the manifest (a folder without one is an unfinished run), then the
    TFRecords (`dataset.write_tfrecords`: its folder appears whole or not at all)."""
    D.write_meta(out, _meta(images, settings, summary))
    D.write_manifest(out, records)
    if tfrecords:
        D.write_tfrecords(out)


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
