"""Writing files so that a failure never leaves a half-written one behind; the cache root."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()

# The project's cache root (generated models, UV atlases): this environment variable, else this
# folder.
CACHE_ENV_VAR = "RINGNET_TF_CACHE"
DEFAULT_CACHE_ROOT = Path("~/.cache/ringnet_tf")


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache root: `cache_dir` if given, else $RINGNET_TF_CACHE, else ~/.cache/ringnet_tf (with
    `~` expanded). Nothing is created."""
    return Path(cache_dir or os.environ.get(CACHE_ENV_VAR) or DEFAULT_CACHE_ROOT).expanduser()


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Calls `write(f)` on a temporary file beside `path`, then renames it into place.

    The rename is atomic on one file system: readers see the old file or the complete new one.
    On any error the temporary file is removed and the error propagates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_all(files: dict[Path, bytes]) -> list[Path]:
    """Writes a set of files whole or not at all: each to a temporary file beside it, then all
    renamed into place.

    On any error (an unwritable folder, a full disk) every temporary file is removed, so are the
    files this call had already renamed into place and the folders it created, and the error
    propagates: a set of outputs (a mesh, its parameters, its NoW files) never exists in part.
    Files replaced in place (the caller asked to overwrite) cannot be restored.
    """
    created_dirs: list[Path] = []
    temps: list[tuple[str, Path]] = []
    placed: list[Path] = []
    try:
        for path, data in files.items():
            path = Path(path)
            missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
            for folder in reversed(missing):
                folder.mkdir()
                created_dirs.append(folder)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            temps.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o666 & ~_UMASK)
        for tmp, path in temps:
            existed = path.exists()
            os.replace(tmp, path)
            if not existed:
                placed.append(path)
    except BaseException:
        for tmp, _ in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)
        for path in placed:
            path.unlink(missing_ok=True)
        for folder in reversed(created_dirs):
            try:
                folder.rmdir()
            except OSError:
                pass
        raise
    return [Path(p) for p in files]


def check_new_dir(out: str | os.PathLike, force: bool = False) -> Path:
    """Checks, without writing anything, that a new folder can be made at `out` (see `staged_dir`);
    raises FileExistsError or OSError with a one-line message naming the path."""
    out = Path(out)
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: exists{' and is not empty' if out.is_dir() else ' (a file)'}; "
                              f"pass --force to replace it")
    return check_can_create(out)


def check_can_create(out: str | os.PathLike) -> Path:
    """Checks that a folder `out` could be made: its nearest existing ancestor is a folder we may
    write in. Raises NotADirectoryError / PermissionError with one line naming both."""
    out = Path(out)
    ancestor = out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise NotADirectoryError(f"{ancestor} is a file, not a folder: cannot hold {out}")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PermissionError(f"{ancestor}: not writable, cannot hold {out}")
    return out


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """A folder written whole or not at all: yields a hidden staging folder beside `out`, renamed to
    `out` when the block succeeds and removed when it fails (or the process is killed: the next
    call removes the leftovers of earlier calls for the same `out`).

    Raises FileExistsError when `out` exists and is not an empty folder (a file, or a folder with
    content) unless `force`, which replaces it, but only once the new folder is complete.
    NotADirectoryError / PermissionError (OSError) when `out`'s parent cannot hold it.
    """
    out = check_new_dir(out, force)
    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{out.name}.partial-"
    for stale in parent.glob(prefix + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_UMASK)
        if out.exists() or out.is_symlink():
            old = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.old-"))
            os.replace(out, old / "previous")
            os.replace(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
