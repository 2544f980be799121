"""Change probes for local files: what changes whenever a file's content may have."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

_GONE = ("gone",)
# One read-only descriptor per database file (by inode), kept for the life of the process:
# closing any descriptor of a file drops every POSIX lock this process holds on it, SQLite's
# included. A probe that opened and closed the file at each poll let another process's
# connection, closing, find itself the last one, checkpoint and delete the WAL under the
# daemon's open connections, whose later commits were then lost.
_descriptors: dict[tuple[str, int], int] = {}
_descriptors_lock = threading.Lock()


def _descriptor(path: str, inode: int) -> int:
    with _descriptors_lock:
        fd = _descriptors.get((path, inode))
        if fd is None:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            if os.fstat(fd).st_ino != inode:  # replaced in between: read it next time
                _descriptors[(path, os.fstat(fd).st_ino)] = fd
                raise OSError(f"{path} was replaced")
            _descriptors[(path, inode)] = fd
        return fd


def _stat(path: str) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def file_probe(path: Path) -> Callable[[], object]:
    """Size, times and inode of one file (a rewrite by rename changes the inode)."""
    name = str(path)

    def probe() -> object:
        try:
            return _stat(name)
        except OSError:
            return _GONE

    return probe


def sqlite_probe(path: Path) -> Callable[[], object]:
    """A SQLite database: the main file's stat and its header's change counter (bumped by
    every commit in rollback-journal mode), and the write-ahead log's stat (every commit in
    WAL mode appends to it, or rewrites it from the start after a checkpoint)."""
    main, wal = str(path), str(path) + "-wal"

    def probe() -> object:
        try:
            st = _stat(main)
            head = (st, os.pread(_descriptor(main, st[0]), 4, 24))
        except OSError:
            return _GONE
        try:
            return (head, _stat(wal))
        except OSError:
            return (head, None)

    return probe
