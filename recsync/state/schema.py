"""The pipeline state file: one SQLite database (WAL) per customer pipeline.

Tables:
- ``cursors``: per side, the last read position that is durably queued.
- ``links``: per record key, the content hash last written or seen on each side (NULL when
  the record is absent there), the record timestamps, and when we last wrote each side.
  ``stale`` marks hashes computed under rules that have since changed: they cannot tell a
  change on the target from a change of the mapping, so no conflict is inferred from them.
- ``queue``: pending work, one row per (direction, key) (a newer change replaces a pending
  one); ``state`` is ready or failed (the dead letter, kept with its error). Which items
  are in flight only the running queue actor knows: after a restart none is.
  ``src_hash`` is the source's content hash when the item was observed there.
- ``history``: what happened to a record: every sync (create, update, delete; its
  direction), conflicts and who won, failures, retries; pruned by ``Store.prune_history``.
- ``listing_seen``: keys seen by a full listing in progress, to find deletes at its end.
- ``meta``: counters and flags (synced totals, mass-delete guard).
- ``bulk_jobs``: bulk write jobs submitted to a target and not yet applied here (job id,
  the direction, the operation, each record's key with a mark of what was sent), written by
  the connector before the job's data is uploaded and deleted with the job's outcomes, so a
  job in flight at a crash is found again by its id instead of being submitted twice.
- ``rekeys``: records a target created under a key of its own: the queued write of that
  key back to the source (``direction``, new ``key``) and the key the source holds now.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cursors (side TEXT PRIMARY KEY, cursor TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS links (
    key TEXT PRIMARY KEY,
    a_hash TEXT, b_hash TEXT,
    a_modified REAL, b_modified REAL,
    a_written REAL, b_written REAL,
    synced_at REAL,
    stale INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS queue (
    direction TEXT NOT NULL,
    key TEXT NOT NULL,
    op TEXT NOT NULL,
    content BLOB,
    hash TEXT,
    src_hash TEXT,
    modified REAL,
    observed REAL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    last_error TEXT,
    enqueued_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    gen INTEGER NOT NULL,
    PRIMARY KEY (direction, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS queue_ready ON queue (direction, next_at) WHERE state = 'ready';
CREATE INDEX IF NOT EXISTS queue_failed ON queue (state) WHERE state = 'failed';
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    at REAL NOT NULL,
    event TEXT NOT NULL,
    detail TEXT,
    direction TEXT
);
CREATE INDEX IF NOT EXISTS history_key ON history (key, id);
CREATE TABLE IF NOT EXISTS listing_seen (
    side TEXT NOT NULL, key TEXT NOT NULL, PRIMARY KEY (side, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS bulk_jobs (
    job_id TEXT PRIMARY KEY, scope TEXT NOT NULL, operation TEXT NOT NULL,
    rows TEXT NOT NULL, created_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rekeys (
    direction TEXT NOT NULL, key TEXT NOT NULL, old_key TEXT NOT NULL,
    PRIMARY KEY (direction, key)
) WITHOUT ROWID;
"""


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open a state file; the writer creates the schema, readers only read (WAL)."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0,
                               check_same_thread=False)
        conn.execute("PRAGMA query_only = 1")
        return conn
    path.parent.mkdir(parents=True, exist_ok=True)
    # the queue actor uses it from whichever pool thread runs it, one message at a time
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    # NORMAL keeps every committed transaction across a process crash (kill -9); only an
    # OS crash or power cut can lose the last transactions.
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("PRAGMA cache_size = -16000")
    conn.executescript(SCHEMA)
    _add_columns(conn)
    conn.execute(
        "INSERT OR IGNORE INTO meta (name, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
    )
    return conn


# Columns added after a table was first created: (table, column, declaration).
ADDED_COLUMNS = (("history", "direction", "TEXT"),)


def _add_columns(conn: sqlite3.Connection) -> None:
    """Bring a state file of an earlier recsync up to date (in place, nothing lost)."""
    for table, column, decl in ADDED_COLUMNS:
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
