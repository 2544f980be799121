"""SQLite errors of a state file as recsync errors: the real cause, the file, what to do.

Disk full, I/O errors, a read-only or unreachable folder and a lock held too long are
``StateUnavailable`` (transient: the pipeline waits and resumes by itself); anything else
(a corrupt file, say) is a ``StateError``.
"""

from __future__ import annotations

import errno
import functools
import os
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Concatenate, ParamSpec, Protocol, TypeVar

from recsync.errors import StateError, StateUnavailable

# primary result codes (the low byte of an extended code)
_BUSY, _LOCKED, _READONLY, _IOERR, _FULL, _CANTOPEN = 5, 6, 8, 10, 13, 14
_TRANSIENT = {_BUSY, _LOCKED, _READONLY, _IOERR, _FULL, _CANTOPEN}
_OS_TRANSIENT = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES,
                 errno.EPERM}


def _advice(code: int | None, path: Path) -> str:
    if code == _FULL:
        return (f"free space on the disk of {path.parent}; the pipeline waits and resumes "
                "by itself")
    if code in (_READONLY, _CANTOPEN):
        return (f"make {path.parent} writable (a read-write mount, owned by the daemon's "
                "user); the pipeline waits and resumes by itself")
    if code in (_BUSY, _LOCKED):
        return "another process holds the state file; the pipeline tries again"
    if code == _IOERR:
        return f"check the disk of {path.parent}; the pipeline waits and resumes by itself"
    return "the file may be damaged: move it away to start this pipeline afresh"


def state_error(path: Path, exc: BaseException) -> StateError:
    """The recsync error for ``exc`` (an ``sqlite3.Error`` or ``OSError``) on ``path``."""
    if isinstance(exc, OSError):
        transient = exc.errno in _OS_TRANSIENT
        reason = exc.strerror or str(exc)
        code = _FULL if exc.errno in (errno.ENOSPC, errno.EDQUOT) else _READONLY
        text = f"state file {path}: {reason}; {_advice(code if transient else None, path)}"
        return StateUnavailable(text) if transient else StateError(text)
    raw = getattr(exc, "sqlite_errorcode", None)
    primary = None if raw is None else int(raw) & 0xFF
    reason = str(exc)
    if primary == _IOERR and _disk_full(path.parent):
        # opening a WAL database needs room for its -shm file: SQLite says I/O error
        reason, primary = f"{reason} (the disk is full)", _FULL
    text = f"state file {path}: {reason}; {_advice(primary, path)}"
    return StateUnavailable(text) if primary in _TRANSIENT else StateError(text)


def _disk_full(folder: Path) -> bool:
    try:
        stat = os.statvfs(folder)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < 64 * 1024


class _HasPath(Protocol):
    @property
    def path(self) -> Path | str: ...


S = TypeVar("S", bound=_HasPath)
P = ParamSpec("P")
R = TypeVar("R")


def backend_error(path: Path | str, exc: BaseException) -> StateError | None:
    """The recsync error for a failure of a state backend (None: not one of theirs).

    ``path`` is a state file, or (PostgreSQL) the server and pipeline as shown to users.
    A lost or refused connection to PostgreSQL, or the server out of room, is transient.
    """
    if isinstance(exc, (sqlite3.Error, OSError)):
        return state_error(Path(path), exc)
    psycopg = sys.modules.get("psycopg")  # only loaded when a PostgreSQL state is used
    if psycopg is None or not isinstance(exc, psycopg.Error):
        return None
    reason = str(exc).strip() or type(exc).__name__
    if isinstance(exc, (psycopg.OperationalError, psycopg.errors.DiskFull,
                        psycopg.errors.InsufficientResources)):
        return StateUnavailable(f"{path}: {reason}; the pipeline waits and resumes by itself "
                                "once the PostgreSQL server can be reached and written",
                                problem=f"{path}: {reason}")
    return StateError(f"{path}: {reason}")


def translate(fn: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
    """Method decorator: errors of the state backend (SQLite, OS, PostgreSQL) leave as
    ``backend_error(self.path, ...)``."""

    def wrapper(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(self, *args, **kwargs)
        except Exception as exc:
            translated = backend_error(self.path, exc)
            if translated is None:
                raise
            raise translated from exc

    functools.update_wrapper(wrapper, fn)
    return wrapper


def rollback(db: sqlite3.Connection) -> None:
    """End a failed write transaction without hiding why it failed.

    After SQLITE_FULL or an I/O error SQLite may have rolled the transaction back itself;
    a ROLLBACK then fails with "no transaction is active", which must not replace the
    real error being raised.
    """
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the error being raised says what went wrong

