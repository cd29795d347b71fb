"""The on-disk cache of the open head's files, keyed by the generator's content.

`ensure_open_head` returns `<cache root>/openhead-<OPEN_HEAD_VERSION>-<cache_key()>`, generating it
on first use. The key hashes the generator's source files (this package and the `flame` modules
it builds on), NumPy's and SciPy's versions, so any change that could change the arrays gets a
cache entry of its own instead of silently reusing stale files.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import tempfile

import numpy as np
import scipy

from flame.fileutil import cache_root
from flame.model import (DYNAMIC_EMBEDDING_FILENAME, MODEL_FILENAME, STATIC_EMBEDDING_FILENAME,
                         save_flame_files)
from flame.openhead.build import OPEN_HEAD_VERSION, build_open_head

_MODEL_FILES = (MODEL_FILENAME, STATIC_EMBEDDING_FILENAME, DYNAMIC_EMBEDDING_FILENAME)

# The `flame` modules the generator builds on, besides this package: their code shapes the arrays
# (constants and the closest-point kernel) or the files (the writer).
_GENERATOR_DEPENDENCIES = ("constants.py", "geometry.py", "model.py")


# Modules of this package that only run the generator (the command line): they shape no array, so
# changing them keeps the cache.
_NOT_GENERATOR = ("cli.py", "__main__.py")


def generator_sources() -> list[pathlib.Path]:
    """The source files whose content makes the open head: every module of this package but the
    command line, then `_GENERATOR_DEPENDENCIES` from `flame/`."""
    package = pathlib.Path(__file__).resolve().parent
    return ([p for p in sorted(package.glob("*.py")) if p.name not in _NOT_GENERATOR]
            + [package.parent / n for n in _GENERATOR_DEPENDENCIES])


def cache_key(sources: list[pathlib.Path] | None = None) -> str:
    """A 16-hex-digit digest of what the generated files depend on.

    It hashes OPEN_HEAD_VERSION, NumPy's and SciPy's versions (their random streams and qhull's
    triangulation shape the arrays) and the name and bytes of every source file.

    Args:
      sources: the files to hash; None: `generator_sources()`.
    """
    h = hashlib.sha256(f"open head {OPEN_HEAD_VERSION} numpy {np.__version__} "
                       f"scipy {scipy.__version__}\n".encode())
    for path in generator_sources() if sources is None else sources:
        data = pathlib.Path(path).read_bytes()
        # name and length first: no two different file sets hash the same byte stream
        h.update(f"{pathlib.Path(path).name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()[:16]


def _complete(folder: pathlib.Path) -> bool:
    return all((folder / name).is_file() for name in _MODEL_FILES)


def ensure_open_head(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """The folder holding the open head's three FLAME files, generated on first use.

    The folder is `<cache root>/openhead-<OPEN_HEAD_VERSION>-<cache_key()>`; the cache root is
    `cache_dir` if given, else $RINGNET_TF_CACHE, else ~/.cache/ringnet_tf
    (`flame.fileutil.cache_root`). A changed generator has another key, hence a new folder. The
    files are written into a temporary sibling folder that is then renamed into place, so a crash
    never leaves a half-written cache and two processes racing both end with the same complete
    folder.

    Returns: the folder (pathlib.Path).
    """
    root = cache_root(cache_dir)
    folder = root / f"openhead-{OPEN_HEAD_VERSION}-{cache_key()}"
    if _complete(folder):
        return folder
    root.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=root))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is an ordinary folder
        save_flame_files(build_open_head(), tmp)
        for attempt in range(2):
            try:
                os.rename(tmp, folder)
                return folder
            except OSError:
                if _complete(folder):  # another process finished first: use its files
                    return folder
                if attempt == 0 and folder.exists():
                    # an incomplete leftover (not from us: ours appear atomically): set it aside
                    stale = pathlib.Path(tempfile.mkdtemp(prefix=f".{folder.name}.stale-",
                                                          dir=root))
                    try:
                        os.rename(folder, stale / "old")
                    except OSError:
                        pass
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    raise
        raise RuntimeError(f"could not create {folder}")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
