"""flame.fileutil: a failing atomic_write leaves the old file as it was and no temporary; staged_dir
leaves nothing of a failed folder (parents it made included) and never replaces an output that
appeared while it worked."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from flame.fileutil import atomic_write, staged_dir


class DiskFull(OSError):
    pass


def _failing_write(f) -> None:
    f.write(b"the first half of the new cont")  # partly written when the error comes
    raise DiskFull("no space left on device")


@pytest.mark.parametrize("error", [DiskFull, KeyboardInterrupt])
def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, error):
    path = tmp_path / "result.json"
    path.write_bytes(b"old contents")
    before = path.stat()

    def write(f):
        f.write(b"the first half of the new cont")
        raise error("stopped")

    with pytest.raises(error, match="stopped"):
        atomic_write(path, write)
    assert path.read_bytes() == b"old contents"
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_failed_write_of_a_new_file_creates_nothing(tmp_path):
    path = tmp_path / "sub" / "new.bin"
    with pytest.raises(DiskFull):
        atomic_write(path, _failing_write)
    assert not path.exists()
    assert list(path.parent.iterdir()) == []  # the folder may be made, but holds no temporary


def test_successful_write_replaces_the_file_with_a_plain_files_mode(tmp_path):
    path = tmp_path / "result.json"
    path.write_bytes(b"old contents")
    assert atomic_write(path, lambda f: f.write(b"new")) == path
    assert path.read_bytes() == b"new"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_failed_staged_dir_removes_the_parents_it_made(tmp_path):
    (tmp_path / "kept").mkdir()
    with pytest.raises(DiskFull):
        with staged_dir(tmp_path / "kept" / "new" / "deeper" / "out") as staging:
            (staging / "half.bin").write_bytes(b"half")
            raise DiskFull("no space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]  # made by the caller: stays
    assert list((tmp_path / "kept").iterdir()) == []


def test_failed_staged_dir_keeps_a_made_parent_that_others_filled(tmp_path):
    out = tmp_path / "new" / "out"
    with pytest.raises(DiskFull):
        with staged_dir(out):
            (tmp_path / "new" / "theirs.txt").write_text("another program's file")
            raise DiskFull("no space left on device")
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["theirs.txt"]


def _appear(out, kind: str) -> None:
    if kind == "file":
        out.write_text("theirs")
    else:
        out.mkdir()
        (out / "theirs.txt").write_text("theirs")


@pytest.mark.parametrize("kind", ["folder", "file"])
@pytest.mark.parametrize("force", [False, True])
def test_staged_dir_never_replaces_an_output_that_appeared_meanwhile(tmp_path, kind, force):
    out = tmp_path / "out"
    with pytest.raises(FileExistsError, match="appeared while"):
        with staged_dir(out, force) as staging:
            (staging / "mine.txt").write_text("mine")
            _appear(out, kind)  # another run finished first
    assert (out.read_text() if kind == "file" else (out / "theirs.txt").read_text()) == "theirs"
    if kind == "folder":
        assert [p.name for p in out.iterdir()] == ["theirs.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging left


def test_forced_staged_dir_replaces_only_what_was_there_at_the_start(tmp_path):
    out = tmp_path / "out"
    _appear(out, "folder")
    (out / "theirs.txt").write_text("old output")
    with staged_dir(out, force=True) as staging:  # the old output, as asked
        (staging / "mine.txt").write_text("mine")
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    with pytest.raises(FileExistsError, match="appeared while"):
        with staged_dir(out, force=True) as staging:
            (staging / "second.txt").write_text("second")
            os.rename(out, tmp_path / "moved")  # replaced meanwhile by another run's output
            _appear(out, "folder")
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["moved", "out"]


def test_staged_dir_fills_an_empty_folder_that_appeared(tmp_path):
    out = tmp_path / "out"
    with staged_dir(out) as staging:
        (staging / "mine.txt").write_text("mine")
        out.mkdir()  # holds nothing to lose
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_staged_dir_removes_a_killed_runs_staging_but_not_a_live_ones(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    dead, live = int(finished.stdout), os.getppid()
    for name in (f".out.partial-{dead}-ab12", f".out.partial-{live}-cd34", ".out.partial-old9x"):
        (tmp_path / name).mkdir()
    with staged_dir(tmp_path / "out") as staging:
        (staging / "mine.txt").write_text("mine")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".out.partial-{live}-cd34", "out"]
