"""Read-only queries on pipeline state (no actors): a state file through its own WAL
reader connection, or any state backend (``recsync.state.backend``) given."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from recsync.daemon.protocol import FailedRecord, HistoryEntry, RecordStatus
from recsync.state.backend import SqlBackend, SqliteBackend
from recsync.state.errors import backend_error

EMPTY_COUNTS = {"queued": 0, "failed": 0, "synced_a_to_b": 0, "synced_b_to_a": 0,
                "conflicts": 0}
StateRef = Path | SqlBackend  # a state file, or a pipeline's rows on a backend


@contextmanager
def state_reader(where: StateRef) -> Iterator[SqlBackend | None]:
    if isinstance(where, SqlBackend):
        yield where
        return
    if not where.exists():
        yield None
        return
    try:
        backend = SqliteBackend(where, readonly=True)
    except sqlite3.Error:
        yield None
        return
    try:
        yield backend
    finally:
        backend.close()


def _quiet(exc: Exception) -> bool:
    """A state being created, or out of reach for now: its counts are zero."""
    return backend_error(Path("state"), exc) is not None


def pipeline_counts(where: StateRef) -> dict[str, int]:
    """Queued and failed items, and the synced/conflict totals of one pipeline."""
    out = dict(EMPTY_COUNTS)
    with state_reader(where) as db:
        if db is None:
            return out
        try:
            for _direction, state, n in db.queue_counts():
                out["failed" if state == "failed" else "queued"] += n
            for name, value in db.totals().items():
                if name in out:
                    out[name] = value
        except Exception as exc:
            if not _quiet(exc):
                raise
    return out


def pipeline_cursors(where: StateRef) -> dict[str, str | None]:
    """The committed read position of each side (connector-specific text)."""
    with state_reader(where) as db:
        if db is None:
            return {}
        try:
            return db.cursors()
        except Exception as exc:
            if not _quiet(exc):
                raise
            return {}


def failed_records(where: StateRef, pipeline: str, limit: int) -> list[FailedRecord]:
    with state_reader(where) as db:
        if db is None or limit <= 0:
            return []
        try:
            rows = db.failed(limit)
        except sqlite3.OperationalError:
            return []  # a state file its pipeline is still creating (starting): none yet
    return [FailedRecord(pipeline, *r) for r in rows]


def record_status(where: StateRef, pipeline: str, key: str,
                  history_limit: int = 50) -> RecordStatus | None:
    """A record's state in one pipeline: queued, failed or synced, with its history.

    Which sides hold it: what the last sync or sighting left in the links, overridden by a
    pending change (seen on its source side: an upsert there means it is there)."""
    with state_reader(where) as db:
        if db is None:
            return None
        try:
            link, items, rows = db.record(key, history_limit)
        except sqlite3.OperationalError:
            return None  # a state file its pipeline is still creating (starting)
    history = [HistoryEntry(*r) for r in rows]
    if link is None and not items and not history:
        return None
    on = {"a": bool(link and link[0]), "b": bool(link and link[1])}
    for item in items:
        on["a" if item.direction == "a_to_b" else "b"] = item.op != "delete"
    if items:
        direction, state, attempts, error, _op = items[0]
        state = "failed" if state == "failed" else "queued"
    else:
        direction, attempts, error = None, 0, None
        state = "synced" if link is not None and link[2] is not None else "unknown"
        if link is None and history and history[0].event == "delete":
            state = "deleted"  # synced away on both sides: the history says so
    return RecordStatus(
        pipeline=pipeline, key=key, state=state, direction=direction, attempts=attempts,
        last_error=error, on_a=on["a"], on_b=on["b"],
        synced_at=link[2] if link else None, history=history[::-1])
