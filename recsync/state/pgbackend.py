"""The state of every pipeline in one PostgreSQL schema (``recsync``), rows keyed by
pipeline: the backend of ``[cluster] state`` (see ``recsync.state.backend``).

The tables are those of a state file (``recsync.state.schema``) with a ``pipeline``
column first in every key; they are created on first use (under an advisory lock, so
nodes starting together do not race). Each pipeline's writer has its own connection,
whose ``recsync.pipeline`` setting fills the column of the rows it inserts; every other
statement names its pipeline (``{W}``). Readers (the control plane) share a connection.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import msgspec
import psycopg
from psycopg.types.json import Jsonb

from recsync.dsn import mask_dsn
from recsync.sqlident import quote_ident as _ident
from recsync.state.backend import Done, SqlBackend

SCHEMA = "recsync"
_LOCK_ID = 0x72656373  # pg_advisory_xact_lock while the schema is created
_SCHEMA_LOCK_IDLE_MS = 5000  # creating the tables takes milliseconds
_FLOAT = ("modified", "observed", "next_at", "enqueued_at", "updated_at", "at", "a_modified",
          "b_modified", "a_written", "b_written", "synced_at")
_TEXT = ("key", "direction", "op", "hash", "src_hash", "state", "event", "detail", "a_hash",
         "b_hash", "old_key", "side", "cursor", "name", "last_error")
_TYPES = {**dict.fromkeys(_FLOAT, "float8"), **dict.fromkeys(_TEXT, "text"),
          "gen": "bigint", "attempts": "integer", "content": "bytea"}
_json = msgspec.json.Encoder().encode

TABLES = """
CREATE TABLE IF NOT EXISTS {s}.meta (
    pipeline TEXT NOT NULL DEFAULT current_setting('recsync.pipeline'),
    name TEXT NOT NULL, value JSONB, PRIMARY KEY (pipeline, name));
CREATE TABLE IF NOT EXISTS {s}.cursors (
    pipeline TEXT NOT NULL DEFAULT current_setting('recsync.pipeline'),
    side TEXT NOT NULL, cursor TEXT, PRIMARY KEY (pipeline, side));
CREATE TABLE IF NOT EXISTS {s}.links (
    pipeline TEXT NOT NULL DEFAULT current_setting('recsync.pipeline'),
    key TEXT NOT NULL,
    a_hash TEXT, b_hash TEXT,
    a_modified DOUBLE PRECISION, b_modified DOUBLE PRECISION,
    a_written DOUBLE PRECISION, b_written DOUBLE PRECISION,
    synced_at DOUBLE PRECISION,
    stale INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (pipeline, key));
CREATE TABLE IF NOT EXISTS {s}.queue (
    pipeline TEXT NOT NULL DEFAULT current_setting('recsync.pipeline'),
    direction TEXT NOT NULL,
    key TEXT NOT NULL,
    op TEXT NOT NULL,
    content BYTEA,
    hash TEXT,
    src_hash TEXT,
    modified DOUBLE PRECISION,
    observed DOUBLE PRECISION,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at DOUBLE PRECISION NOT NULL,
    last_error TEXT,
    enqueued_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    gen BIGINT NOT NULL,
    PRIMARY KEY (pipeline, direction, key));
CREATE INDEX IF NOT EXISTS queue_ready ON {s}.queue (pipeline, direction, next_at)
    WHERE state = 'ready';
CREATE INDEX IF NOT EXISTS queue_failed ON {s}.queue (pipeline, state)
    WHERE state = 'failed';
CREATE TABLE IF NOT EXISTS {s}.history (
    pipeline TEXT NOT NULL DEFAULT current_setting('recsync.pipeline'),
    id BIGINT GENERATED ALWAYS AS IDENTITY,
    key TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    event TEXT NOT NULL,
    detail TEXT,
    direction TEXT,
    PRIMARY KEY (pipeline, id));
CREATE INDEX IF NOT EXISTS history_key ON {s}.history (pipeline, key, id);
CREATE TABLE IF NOT EXISTS {s}.listing_seen (
    pipeline TEXT NOT NULL DEFAULT current_setting('recsync.pipeline'),
    side TEXT NOT NULL, key TEXT NOT NULL, PRIMARY KEY (pipeline, side, key));
CREATE TABLE IF NOT EXISTS {s}.bulk_jobs (
    pipeline TEXT NOT NULL DEFAULT current_setting('recsync.pipeline'),
    job_id TEXT NOT NULL, scope TEXT NOT NULL, operation TEXT NOT NULL,
    rows TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (pipeline, job_id));
CREATE TABLE IF NOT EXISTS {s}.rekeys (
    pipeline TEXT NOT NULL DEFAULT current_setting('recsync.pipeline'),
    direction TEXT NOT NULL, key TEXT NOT NULL, old_key TEXT NOT NULL,
    PRIMARY KEY (pipeline, direction, key));
"""


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def create_schema(conn: psycopg.Connection[Any], schema: str = SCHEMA) -> None:
    """Create the schema and its tables when missing (idempotent, safe to race)."""
    with conn.transaction():
        # every node takes this lock to start a pipeline: a process frozen while it holds
        # it (SIGSTOP, a paused VM) has its session ended by the server, not kept forever
        conn.execute(f"SET LOCAL idle_in_transaction_session_timeout = {_SCHEMA_LOCK_IDLE_MS}")
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_ident(schema)}")
        for statement in TABLES.format(s=_ident(schema)).split(";"):
            if statement.strip():
                conn.execute(statement)


def connect(dsn: str, schema: str = SCHEMA, pipeline: str | None = None,
            ) -> psycopg.Connection[Any]:
    """A connection with the schema (created when missing) first on its search path;
    ``pipeline``: the one whose rows its inserts make."""
    conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    try:
        create_schema(conn, schema)
        conn.execute(f"SET search_path = {_ident(schema)}")
        conn.execute("SELECT set_config('recsync.pipeline', %s, false)", (pipeline or "",))
        # As a state file's synchronous = NORMAL: a commit does not wait for its WAL to
        # reach the disk. A crash of recsyncd loses nothing; one of the server may lose
        # the last commits (under a second), never consistency, and a pipeline then
        # reads again from the cursor before them (writes are upserts).
        conn.execute("SET synchronous_commit = off")
    except BaseException:
        conn.close()
        raise
    return conn


class PostgresBackend(SqlBackend):
    """One pipeline's rows in the shared schema. Its own connection (a writer), or
    ``conn``: a connection shared by readers, serialized by ``lock``."""

    _max_params = 30000

    def __init__(self, dsn: str, pipeline: str, *, schema: str = SCHEMA,
                 conn: psycopg.Connection[Any] | None = None,
                 lock: threading.Lock | None = None) -> None:
        self._scope = f"pipeline = {_literal(pipeline)}"
        super().__init__()
        self.pipeline = pipeline
        self.where = f"PostgreSQL state {mask_dsn(dsn)} (pipeline {pipeline})"
        self._own = conn is None
        self.conn = connect(dsn, schema, pipeline) if conn is None else conn
        self._lock = lock
        self._blobs: dict[str, list[int]] = {}  # bytea columns of a rows() statement
        self._writes = 0  # statements that may have changed rows (see ``changes``)

    # many rows: one JSON array parameter (a statement planned once, parsed in C) ---------
    def rows(self, head: str, rows: Sequence[Sequence[Any]], tail: str = "") -> None:
        """``head SELECT <columns> FROM jsonb_array_elements(<the rows>) tail``: ``head``
        is an INSERT naming its columns. jsonb, not json: ``r->>n`` on a json element scans
        its text again for each column; jsonb is parsed once (a links upsert of 1,000 rows:
        6 us of backend CPU per row instead of 9; cluster_bench's state, 21.1 us of backend
        CPU per record synced instead of 22.3, three runs each)."""
        if not rows:
            return
        sql = self._rows_sql.get((head, tail, 0))
        if sql is None:
            columns = [c.strip() for c in head[head.index("(") + 1 : head.rindex(")")]
                       .split(",")]
            picks = ", ".join(
                f"decode(r->>{n}, 'hex')" if _TYPES[c] == "bytea" else f"(r->>{n})::{_TYPES[c]}"
                for n, c in enumerate(columns))
            sql = self._rows_sql[(head, tail, 0)] = self._text(
                f"{head} SELECT {picks} FROM jsonb_array_elements(?::jsonb) AS r {tail}")
            self._blobs[sql] = [n for n, c in enumerate(columns) if _TYPES[c] == "bytea"]
        blobs = self._blobs[sql]
        if blobs:
            rows = [[v.hex() if n in blobs and v is not None else v for n, v in enumerate(row)]
                    for row in rows]
        self._run(sql, [_json(rows).decode()])

    def _in(self, sql: str, keys: Sequence[str], before: Sequence[Any] = (),
            after: Sequence[Any] = ()) -> Iterator[Any]:
        if keys:
            yield self.x(sql.replace(" IN {IN}", " = ANY(?::text[])"),
                         (*before, list(keys), *after))

    def unqueue_done(self, rows: Sequence[Done]) -> None:
        if rows:
            self.x("DELETE FROM queue WHERE {W}(direction, key, gen) IN (SELECT * FROM "
                   "unnest(?::text[], ?::text[], ?::bigint[]))",
                   [list(c) for c in zip(*rows, strict=True)])

    def _placeholders(self, sql: str) -> str:
        return sql.replace("%", "%%").replace("?", "%s")

    def _run(self, sql: str, params: Sequence[Any]) -> Any:
        if sql.lstrip()[:6].upper() != "SELECT":
            self._writes += 1
        if self._lock is None:
            return self.conn.execute(sql, list(params))
        with self._lock:  # a shared reader: fetch before the next one runs
            cur = self.conn.execute(sql, list(params))
            return _Fetched(cur.fetchall() if cur.description else [], cur.rowcount)

    def xm(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._writes += 1
            with self.conn.cursor() as cur:
                cur.executemany(self._text(sql), rows)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self.conn.transaction():
            if self.fence is not None:
                self.fence(self)
            yield

    def changes(self) -> int:
        return self._writes

    def close(self) -> None:
        if self._own:
            self.conn.close()

    # meta values are JSON (numbers, text) ------------------------------------------------------
    def set_meta(self, name: str, value: Any) -> None:
        self.x("INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT ({K}name) "
               "DO UPDATE SET value = excluded.value", (name, Jsonb(value)))

    def bump(self, name: str, by: int) -> None:
        if by:
            self.x("INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT ({K}name) "
                   "DO UPDATE SET value = to_jsonb((meta.value #>> '{}')::numeric "
                   "+ (excluded.value #>> '{}')::numeric)", (name, Jsonb(by)))


class _Fetched:
    """A cursor's rows, read while the shared connection was held."""

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self.rows, self.rowcount = rows, rowcount

    def fetchone(self) -> Any:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[Any]:
        return self.rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self.rows)
