"""The store's tests run on both state backends: a SQLite file, and PostgreSQL (a schema
of its own per test, dropped after; skipped when the server cannot be reached, unless
RECSYNC_REQUIRE_SERVICES=1)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from recsync.clock import Clock, FakeClock
from recsync.state.backend import SqlBackend
from recsync.state.store import Store
from tests.pgfixture import PG_DSN, require_pg

PIPELINE = "cust/pipe"


class OpenStore:
    """Opens the test's state (the same each time) on one backend."""

    def __init__(self, kind: str, path: Path, schema: str) -> None:
        self.kind, self.path, self.schema = kind, path, schema
        self._readers: list[psycopg.Connection[object]] = []

    def __call__(self, clock: Clock) -> Store:
        if self.kind == "sqlite":
            return Store(self.path, clock)
        from recsync.state.pgbackend import PostgresBackend

        return Store(PostgresBackend(PG_DSN, PIPELINE, schema=self.schema), clock)

    def reader(self) -> Path | SqlBackend:
        """What the control plane reads the state through: the file (its own read-only
        connection), or the pipeline's rows over a connection readers share."""
        if self.kind == "sqlite":
            return self.path
        from recsync.state.pgbackend import PostgresBackend, connect

        conn = connect(PG_DSN, self.schema)
        self._readers.append(conn)
        return PostgresBackend(PG_DSN, PIPELINE, schema=self.schema, conn=conn,
                               lock=threading.Lock())

    def close(self) -> None:
        for conn in self._readers:
            conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    if request.param == "postgresql":
        require_pg()
    schema = f"rs_{uuid.uuid4().hex[:12]}"
    opener = OpenStore(request.param, tmp_path / "state.sqlite", schema)
    try:
        yield opener
    finally:
        opener.close()
        if request.param == "postgresql":
            with psycopg.connect(PG_DSN, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(time=1000.0)


@pytest.fixture
def store(open_store: OpenStore, clock: FakeClock) -> Iterator[Store]:
    """The test's store, on each backend in turn."""
    s = open_store(clock)
    yield s
    s.close()
