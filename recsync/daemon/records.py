"""Read-only queries on pipeline state files (own WAL reader connections, no actors)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from recsync.daemon.protocol import FailedRecord, HistoryEntry, RecordStatus
from recsync.state.schema import connect

EMPTY_COUNTS = {"queued": 0, "failed": 0, "synced_a_to_b": 0, "synced_b_to_a": 0,
                "conflicts": 0}


def _reader(path: Path) -> sqlite3.Connection | None:
    if not path.exists():
        return None
    try:
        return connect(path, readonly=True)
    except sqlite3.Error:
        return None


def pipeline_counts(path: Path) -> dict[str, int]:
    """Queued and failed items, and the synced/conflict totals of one pipeline."""
    conn = _reader(path)
    if conn is None:
        return dict(EMPTY_COUNTS)
    out = dict(EMPTY_COUNTS)
    with closing(conn):
        try:
            for state, n in conn.execute("SELECT state, COUNT(*) FROM queue GROUP BY state"):
                out["failed" if state == "failed" else "queued"] += n
            for name, value in conn.execute(
                "SELECT name, value FROM meta WHERE name IN "
                "('synced_a_to_b', 'synced_b_to_a', 'conflicts')"
            ):
                out[name] = int(value)
        except sqlite3.Error:
            pass  # a state file being created: counts are zero for now
    return out


def pipeline_cursors(path: Path) -> dict[str, str | None]:
    """The committed read position of each side (connector-specific text)."""
    conn = _reader(path)
    if conn is None:
        return {}
    with closing(conn):
        try:
            return {side: cursor for side, cursor in conn.execute(
                "SELECT side, cursor FROM cursors ORDER BY side")}
        except sqlite3.Error:
            return {}


def failed_records(path: Path, pipeline: str, limit: int) -> list[FailedRecord]:
    conn = _reader(path)
    if conn is None or limit <= 0:
        return []
    with closing(conn):
        rows = conn.execute(
            "SELECT key, direction, attempts, last_error, updated_at FROM queue "
            "WHERE state = 'failed' ORDER BY updated_at DESC LIMIT ?", (limit,)
        ).fetchall()
    return [FailedRecord(pipeline, r[0], r[1], r[2], r[3], r[4]) for r in rows]


def record_status(path: Path, pipeline: str, key: str,
                  history_limit: int = 50) -> RecordStatus | None:
    """A record's state in one pipeline: queued, failed or synced, with its history.

    Which sides hold it: what the last sync or sighting left in the links, overridden by a
    pending change (seen on its source side: an upsert there means it is there)."""
    conn = _reader(path)
    if conn is None:
        return None
    with closing(conn):
        link = conn.execute(
            "SELECT a_hash, b_hash, synced_at FROM links WHERE key = ?", (key,)
        ).fetchone()
        items = conn.execute(
            "SELECT direction, state, attempts, last_error, op FROM queue WHERE key = ? "
            "ORDER BY state = 'failed' DESC", (key,)
        ).fetchall()
        history = _history(conn, key, history_limit)
    if link is None and not items and not history:
        return None
    on = {"a": bool(link and link[0]), "b": bool(link and link[1])}
    for item in items:
        on["a" if item[0] == "a_to_b" else "b"] = item[4] != "delete"
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


def _history(conn: sqlite3.Connection, key: str, limit: int) -> list[HistoryEntry]:
    """The newest ``limit`` entries, newest first."""
    try:
        rows = conn.execute(
            "SELECT at, event, detail, direction FROM history WHERE key = ? "
            "ORDER BY id DESC LIMIT ?", (key, limit)).fetchall()
    except sqlite3.OperationalError:  # a state file of an earlier recsync, not opened yet
        rows = [(*r, None) for r in conn.execute(
            "SELECT at, event, detail FROM history WHERE key = ? ORDER BY id DESC LIMIT ?",
            (key, limit))]
    return [HistoryEntry(r[0], r[1], r[2], r[3]) for r in rows]
