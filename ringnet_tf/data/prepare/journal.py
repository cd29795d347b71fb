"""The journal of finished images (`.prepare/journal.jsonl`), what makes an interrupted run
resumable: one JSON line per processed source, appended as it finishes (its crop written first)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import IO, Any

import numpy as np

from ringnet_tf.data.prepare.settings import R_ERROR, Source


@dataclasses.dataclass(slots=True)
class Result:
    """What the run keeps in memory of a journal entry (the landmarks [68, 3] as float32)."""

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


def append_entry(journal: IO[str], entry: dict[str, Any]) -> None:
    """Appends one entry as a line, flushed: an interruption loses at most the line being written."""
    journal.write(json.dumps(entry, sort_keys=True) + "\n")
    journal.flush()


def still_valid(result: Result | None, source: Source) -> bool:
    """A journal result stands unless its source changed; processing errors are tried again."""
    return (result is not None and result.size == source.size
            and result.mtime_ns == source.mtime_ns and result.image == source.image
            and result.reason != R_ERROR)
