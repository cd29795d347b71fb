"""A whole preparation run: the input scanned, --out checked and locked, the images not yet in the
journal processed, identities with too few images dropped, the dataset's files written."""
from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

from ringnet_tf.data import dataset as D
from ringnet_tf.data import landmarks_dlib as L
from ringnet_tf.data.prepare import journal, output, worker
from ringnet_tf.data.prepare.scan import scan
from ringnet_tf.data.prepare.settings import (JOURNAL_NAME, R_FEW, SKIPPED_NAME, WORK_DIR, NothingKept,
                                              PrepareError, Settings, Source, Summary)

log = logging.getLogger("ringnet_tf.data.prepare")


def prepare(images_dir: str | os.PathLike, out_dir: str | os.PathLike, settings: Settings = Settings(),
            workers: int = 1, tfrecords: bool = False, force: bool = False,
            progress: bool = True) -> Summary:
    """Runs the whole preparation (package docstring); returns the counts. Raises PrepareError."""
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
    fingerprint = output.run_fingerprint(images, settings)
    replace = output.check_output(out, fingerprint, force)
    with output.locked(out):
        return _prepare_locked(images, out, sources, skipped, settings, workers, tfrecords,
                               fingerprint, replace, progress)


def _prepare_locked(images: Path, out: Path, sources: list[Source], skipped: list[tuple[str, str, str]],
                    settings: Settings, workers: int, tfrecords: bool, fingerprint: dict[str, Any],
                    replace: bool, progress: bool) -> Summary:
    output.open_output(out, fingerprint, replace)
    for rel, reason, detail in skipped:
        log.info("skip %s: %s; %s", rel, reason, detail)
    journal_path = out / WORK_DIR / JOURNAL_NAME
    results = journal.load_journal(journal_path, {s.rel for s in sources})
    todo = [s for s in sources if not journal.still_valid(results.get(s.rel), s)]
    summary = Summary(num_files=len(sources) + len(skipped), reused=len(sources) - len(todo))
    if summary.reused:
        log.info("resuming: %d of %d images already done", summary.reused, len(sources))

    with open(journal_path, "a", encoding="utf-8") as journal_file:
        def record(entry: dict[str, Any]) -> None:
            journal.append_entry(journal_file, entry)
            results[entry["src"]] = journal.Result.from_entry(entry)
            summary.computed += 1

        worker.run_tasks(todo, images, out, settings, workers, record, progress, "prepare")

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
            worker.run_tasks(missing, images, out, settings, workers, record, progress,
                             "prepare (missing)")
            kept, dropped = kept_sources()
    lost = [s.image for s in kept if not (out / s.image).is_file()]
    if lost:
        raise PrepareError(f"{out / lost[0]}: missing after processing ({len(lost)} images)")

    output.remove_stale_images(out, {s.image for s in kept})
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
    output.write_skipped(out / SKIPPED_NAME, skipped)
    if not kept:
        raise NothingKept(f"no image kept (see {out / SKIPPED_NAME})")

    records = [D.Record(s.image, s.identity, results[s.rel].landmarks)
               for s in sorted(kept, key=lambda s: (s.identity, s.image))]
    output.write_dataset(out, images, settings, summary, records, tfrecords)
    return summary
