import os
import stat

import pytest

from cdnpull.files import write_private_atomically


def test_missing_directories_are_created_private_and_the_file_0600(tmp_path):  # type: ignore[no-untyped-def]
    path = tmp_path / "a" / "b" / "c" / "x.json"
    st = write_private_atomically(str(path), b"hello")
    assert path.read_bytes() == b"hello" and st.st_size == 5
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    for d in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    path = tmp_path / "x.json"
    write_private_atomically(str(path), b"old")

    def broken(fd):  # type: ignore[no-untyped-def]
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError):
        write_private_atomically(str(path), b"new")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["x.json"]
