"""Writing files so that a failure never leaves a half-written one behind; the cache root."""
from __future__ import annotations

import contextlib
import errno
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


def _make_dirs(folder: Path) -> list[Path]:
    """Makes `folder` and its missing ancestors; returns the ones this call made, outermost first."""
    made = []
    for p in reversed([p for p in (folder, *folder.parents) if not p.exists()]):
        try:
            p.mkdir()
        except FileExistsError:  # made meanwhile by someone else: not ours to remove
            continue
        made.append(p)
    return made


def _remove_made_dirs(made: list[Path]) -> None:
    """Removes the folders `_make_dirs` made, innermost first, where they are still empty."""
    for folder in reversed(made):
        try:
            folder.rmdir()
        except OSError:  # not empty (someone else's files) or already gone
            pass


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
            created_dirs += _make_dirs(path.parent)
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
        _remove_made_dirs(created_dirs)
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


# A staging folder's name: `.<out name>.partial-<pid>-<random>`, so a later call can tell a killed
# run's leftovers (its process is gone) from the staging of a run still going.
_STAGING_INFIX = ".partial-"


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of what is at `path` (a link itself, not its target), None if nothing."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name != "posix":  # no harmless liveness probe (os.kill(pid, 0) signals on Windows)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, another user's
        return True
    return True


def _remove_stale_stagings(parent: Path, name: str) -> None:
    """Removes staging folders for `name` left by processes that are gone (killed mid-write);
    another live process's staging (a concurrent run writing the same `out`) is left alone."""
    prefix = f".{name}{_STAGING_INFIX}"
    for entry in parent.iterdir():
        if not entry.name.startswith(prefix):
            continue
        pid = entry.name[len(prefix):].split("-", 1)[0]
        if not (pid.isdigit() and _process_alive(int(pid))):  # no pid: an older release's leftover
            shutil.rmtree(entry, ignore_errors=True)


def _place(staging: Path, out: Path, force: bool, before: tuple[int, int] | None) -> None:
    """Renames the complete `staging` to `out`. `before`: what was at `out` when the work began;
    only that (and only with `force`) is replaced. Anything else at `out` now, bar an empty folder,
    appeared during the work: FileExistsError, and it is left as it is."""
    if force and before is not None and _identity(out) == before:
        # The output the caller asked to replace: moved aside, removed once the new one is in.
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.replace(out, old / "previous")
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        # rename(2) onto nothing or an empty folder; it refuses a folder with content and a file.
        os.replace(staging, out)
    except OSError as e:
        if e.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            raise
        raise FileExistsError(f"{out}: appeared while this output was being written (another run?); "
                              f"left as it is, the new output discarded") from None


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """A folder written whole or not at all: yields a hidden staging folder beside `out`, renamed to
    `out` when the block succeeds and removed when it fails (or the process is killed: the next
    call removes the leftovers of earlier calls for the same `out` whose process is gone), along
    with the parent folders this call made.

    Raises FileExistsError when `out` exists and is not an empty folder (a file, or a folder with
    content) unless `force`, which replaces it, but only once the new folder is complete; also when
    something other than an empty folder appeared at `out` during the block (not replaced, even
    with `force`: only what was there at the start is). NotADirectoryError / PermissionError
    (OSError) when `out`'s parent cannot hold it.
    """
    out = check_new_dir(out, force)
    made = _make_dirs(out.parent)
    try:
        _remove_stale_stagings(out.parent, out.name)
        before = _identity(out)
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}{_STAGING_INFIX}{os.getpid()}-"))
    except BaseException:
        _remove_made_dirs(made)
        raise
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_UMASK)
        _place(staging, out, force, before)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_made_dirs(made)
        raise
