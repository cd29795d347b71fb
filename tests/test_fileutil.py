"""flame.fileutil.atomic_write: a failing write leaves the old file as it was and no temporary."""
from __future__ import annotations

import os

import pytest

from flame.fileutil import atomic_write


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
