"""A small real filesystem for disk-full tests: a tmpfs mounted under the test's folder.

Mounting needs root (CAP_SYS_ADMIN); elsewhere the test is skipped, saying why. SQLite's
``PRAGMA max_page_count`` gives a real SQLITE_FULL without root, but only inside a
statement: a full disk at COMMIT (the WAL growing) needs a real full filesystem.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_disk(folder: Path, size: str = "512k") -> Iterator[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> Path:
    """Take every free byte of ``folder``'s filesystem with one file; returns it."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as f:
        chunk = b"\0" * 4096
        with contextlib.suppress(OSError):
            while f.write(chunk):
                pass
    return filler


@contextlib.contextmanager
def read_only(source: Path, target: Path) -> Iterator[Path]:
    """``source`` seen read-only at ``target`` (a read-only bind mount: root writes are
    refused too, unlike chmod)."""
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "--bind", "-o", "ro", str(source), str(target)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot make a read-only bind mount here (needs root): "
                    f"{done.stderr.strip()}")
    try:
        if os.access(target, os.W_OK) and _writable(target):
            pytest.skip("the read-only bind mount still takes writes here")
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


def _writable(folder: Path) -> bool:
    try:
        (folder / ".probe").write_bytes(b"")
    except OSError:
        return False
    (folder / ".probe").unlink()
    return True
