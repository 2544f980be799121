"""Where the daemon's pipelines keep their state: a SQLite file each in the state
directory (no ``[cluster]``), or the rows of each in the cluster's PostgreSQL schema.

``open_store`` opens a pipeline's store for its queue actor (a connection of its own);
``reader`` gives the control plane's read-only view (a file's own read-only connection,
or one PostgreSQL connection shared by every reader).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recsync.clock import Clock
from recsync.config import ClusterConfig
from recsync.state.backend import Fence, SqlBackend, SqliteBackend
from recsync.state.errors import backend_error
from recsync.state.paths import state_file_name
from recsync.state.store import Store


class StateAccess:
    """The state of every pipeline of one daemon (see the module)."""

    def __init__(self, state_dir: Path, cluster: ClusterConfig | None = None, *,
                 schema: str | None = None, fence: Fence | None = None) -> None:
        self.state_dir = state_dir
        self.cluster = cluster
        # None: [cluster] schema (default ``recsync``); tests use their own
        self.schema = schema or (cluster.schema if cluster is not None else None)
        self.fence = fence  # the seam of leases: checked in each state transaction
        # the seam of the ttl/2 rule: asked before each external write of a pipeline, None
        # when it may go out, else why not (set by recsync.cluster.node.join)
        self.permit: Callable[[str], str | None] | None = None
        self._lock = threading.Lock()
        self._conn: Any = None

    @property
    def shown(self) -> str:
        """Where the state is, for logs (a password masked)."""
        if self.cluster is None:
            return f"state files in {self.state_dir}"
        return f"PostgreSQL state {self.cluster.shown()}"

    def state_file(self, pipeline_id: str) -> Path:
        return self.state_dir / state_file_name(pipeline_id)

    def open_store(self, pipeline_id: str, clock: Clock) -> Store:
        """The pipeline's store, for its writer.

        Raises:
            StateError: the state cannot be opened (``StateUnavailable``: for now).
        """
        if self.cluster is None:
            return Store(self.state_file(pipeline_id), clock)
        return Store(self.open_backend(pipeline_id), clock)

    def open_backend(self, pipeline_id: str) -> SqlBackend:
        """A connection of its own to the pipeline's state (e.g. a connector's journal).

        Raises:
            StateError: the state cannot be opened (``StateUnavailable``: for now).
        """
        if self.cluster is None:
            path = self.state_file(pipeline_id)
            try:
                return SqliteBackend(path)
            except Exception as exc:
                error = backend_error(f"state file {path}", exc)
                if error is None:
                    raise
                raise error from exc
        from recsync.state.pgbackend import SCHEMA, PostgresBackend

        try:
            backend = PostgresBackend(self.cluster.state_url(), pipeline_id,
                                      schema=self.schema or SCHEMA)
        except Exception as exc:
            error = backend_error(f"{self.shown} (pipeline {pipeline_id})", exc)
            if error is None:
                raise
            raise error from exc
        backend.fence = self.fence
        if self.fence is not None:
            # a write transaction holds its lease row (the fence's FOR SHARE): a node cut
            # off in the middle of one must not keep others from taking the lease over at
            # its expiry, so the server ends such a session after lease_ttl/2 of silence
            ms = max(1, int(self.cluster.lease_ttl * 500))
            try:
                backend.conn.execute(f"SET idle_in_transaction_session_timeout = {ms}")
            except Exception as exc:
                backend.close()
                error = backend_error(f"{self.shown} (pipeline {pipeline_id})", exc)
                if error is None:
                    raise
                raise error from exc
        return backend

    def reader(self, pipeline_id: str) -> Path | SqlBackend:
        """What the control plane reads a pipeline's state through.

        Raises:
            StateError: the PostgreSQL state cannot be reached.
        """
        if self.cluster is None:
            return self.state_file(pipeline_id)
        from recsync.state.pgbackend import SCHEMA, PostgresBackend, connect

        url = self.cluster.state_url()
        schema = self.schema or SCHEMA
        with self._lock:
            if self._conn is None or self._conn.closed or self._conn.broken:
                try:
                    self._conn = connect(url, schema)
                except Exception as exc:
                    error = backend_error(self.shown, exc)
                    if error is None:
                        raise
                    raise error from exc
            conn = self._conn
        return PostgresBackend(url, pipeline_id, schema=schema, conn=conn, lock=self._lock)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
