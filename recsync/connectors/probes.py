"""Change probes for local files: what changes whenever a file's content may have."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

_GONE = ("gone",)


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
            with open(main, "rb") as f:
                header = f.read(28)[24:28]
            head = (_stat(main), header)
        except OSError:
            return _GONE
        try:
            return (head, _stat(wal))
        except OSError:
            return (head, None)

    return probe
