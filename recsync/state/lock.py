"""One recsyncd per state directory: an exclusive flock on ``recsyncd.lock`` in it.

Two processes running the same pipelines on the same state files would both read, queue
and write every change and lose each other's updates. The lock is taken before anything
in the directory is touched and held for the life of the process; the kernel releases it
when the process ends, even by ``kill -9``, so a stale lock file never blocks a restart.
The file holds the holder's PID, for the refusal message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from recsync.errors import RecsyncError, StateUnavailable

LOCK_NAME = "recsyncd.lock"


class StateDirLocked(RecsyncError):
    """Another process holds the state directory's lock."""

    def __init__(self, message: str, pid: int | None) -> None:
        super().__init__(message)
        self.pid = pid


class StateDirLock:
    """The exclusive lock of a state directory (``acquire``, then ``release`` or exit)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise.

        Raises:
            StateDirLocked: another process holds it (the message names its PID).
            StateUnavailable: the directory cannot be created or written (read-only, ...).
        """
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StateUnavailable(
                f"state directory {self.state_dir} cannot be written "
                f"({exc.strerror or exc}); give --state-dir a writable folder "
                "(a read-write mount the daemon's user owns)") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pid = _read_pid(fd)
            os.close(fd)
            holder = f"recsyncd PID {pid}" if pid else "another recsyncd (PID unknown)"
            raise StateDirLocked(
                f"state directory {self.state_dir} is in use by {holder} (lock "
                f"{self.path}); stop that process, or give this one another --state-dir",
                pid) from None
        # best effort: a full disk must not stop the daemon from starting and waiting
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None

    def __enter__(self) -> StateDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
