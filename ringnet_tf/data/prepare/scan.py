"""The input folder: `DIR/<identity>/<image>` (files deeper in an identity's folder belong to it)
as sources with their output names, and the files that cannot be one."""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from ringnet_tf.data.prepare.settings import IMAGES_DIR, R_CLASH, R_OUTSIDE, R_UNREADABLE, Source


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
