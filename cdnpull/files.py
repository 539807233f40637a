"""
Private files written atomically: the one way the node puts cache objects,
the state file and replaced certificates on disk.

No Twisted here: it blocks (it fsyncs), so callers run it in a thread.
"""

from __future__ import annotations

import os
import tempfile

__all__ = ["write_private_atomically"]


def write_private_atomically(path: str, data: bytes, prefix: str = ".") -> os.stat_result:
    """
    Write C{data} to C{path} so that it appears whole or not at all, even
    after a crash: a temporary file with an unpredictable name (starting
    with C{prefix}, ending in C{.tmp}) created exclusively with mode 0600 in
    the target directory (so a planted name or link is never followed, and
    two writers of one path never share a temporary file), fsync, rename
    over C{path}, fsync of the directory.  Missing directories are created
    0700.  The temporary file is removed when anything fails.

    @return: the written file's status (as it was before the rename).
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=directory)
    except FileNotFoundError:  # only then: a write into an existing directory costs no stat
        _make_private_dirs(directory)
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            st = os.fstat(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return st


def _make_private_dirs(directory: str) -> None:
    """Create C{directory} and its missing parents, each 0700 (C{os.makedirs}
    gives its mode to the last one only)."""
    parent = os.path.dirname(directory)
    if parent != directory and not os.path.isdir(parent):
        _make_private_dirs(parent)
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
