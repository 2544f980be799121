"""State a connector keeps beside its pipelines (the Outreach refresh token, which
Outreach rotates on every grant): in a file of the state folder on a single node, in the
cluster's PostgreSQL with ``[cluster]``, so that a pipeline moving to another node keeps
the rotated token.

``{schema}.connector_state(key, value, updated_at)``: one JSON object per key. ``locked``
holds a PostgreSQL advisory lock on the key (nodes take turns, as connectors on one host
take turns with the file lock); ``load`` / ``save`` read and replace the object. The
values are secrets: never logged, never shown.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from recsync.errors import ConnectorError
from recsync.sqlident import quote_ident

if TYPE_CHECKING:
    import psycopg

# psycopg is imported by the methods: an instance exists only with [cluster], and
# importing psycopg cost every `recsyncd` with an Outreach side 550M instructions (callgrind).

_TABLE = """CREATE TABLE IF NOT EXISTS {s}.connector_state (
    key TEXT PRIMARY KEY, value JSONB NOT NULL, updated_at TIMESTAMPTZ NOT NULL)"""
_LOCK_ID = 0x72656374  # as the leases' tables: creation raced by several nodes


class SharedConnectorState:
    """Connector state in the cluster's PostgreSQL (one connection, thread-safe)."""

    def __init__(self, dsn: str, schema: str) -> None:
        self.dsn, self.schema = dsn, schema
        self._lock = threading.RLock()
        self._conn: psycopg.Connection[Any] | None = None

    def _connection(self) -> psycopg.Connection[Any]:
        import psycopg

        if self._conn is None or self._conn.closed:
            try:
                conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=10)
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
                    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(self.schema)}")
                    conn.execute(_TABLE.format(s=quote_ident(self.schema)))
            except psycopg.Error as exc:
                raise ConnectorError(
                    "cannot reach the cluster's PostgreSQL, where the connector keeps its "
                    f"token state ({type(exc).__name__}); will retry") from exc
            self._conn = conn
        return self._conn

    def _run(self, sql: str, params: Any) -> list[tuple[Any, ...]]:
        import psycopg

        with self._lock:
            try:
                cur = self._connection().execute(
                    sql.replace("{s}", quote_ident(self.schema)), params)
                return cur.fetchall() if cur.description else []
            except psycopg.OperationalError as exc:
                self.close()  # a new connection next time
                raise ConnectorError(
                    "lost the cluster's PostgreSQL, where the connector keeps its token "
                    f"state ({type(exc).__name__}); will retry") from exc

    def load(self, key: str) -> dict[str, Any] | None:
        """The object stored under ``key``, or None."""
        rows = self._run("SELECT value FROM {s}.connector_state WHERE key = %s", (key,))
        value = rows[0][0] if rows else None
        return value if isinstance(value, dict) else None

    def save(self, key: str, value: dict[str, Any]) -> None:
        from psycopg.types.json import Jsonb

        self._run("INSERT INTO {s}.connector_state (key, value, updated_at) VALUES "
                  "(%s, %s, now()) ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                  "updated_at = excluded.updated_at", (key, Jsonb(value)))

    @contextlib.contextmanager
    def locked(self, key: str) -> Iterator[None]:
        """Hold ``key`` against the other nodes (and the other threads here)."""
        lock_id = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big",
                                 signed=True)
        with self._lock:
            self._run("SELECT pg_advisory_lock(%s)", (lock_id,))
            try:
                yield
            finally:
                with contextlib.suppress(ConnectorError):
                    self._run("SELECT pg_advisory_unlock(%s)", (lock_id,))

    def close(self) -> None:
        import psycopg

        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(psycopg.Error):
                    self._conn.close()
                self._conn = None


_current: SharedConnectorState | None = None


def install(state: SharedConnectorState | None) -> None:
    """Where this process's connectors keep their state (None: files, a single node)."""
    global _current
    if _current is not None and _current is not state:
        _current.close()
    _current = state


def current() -> SharedConnectorState | None:
    return _current
