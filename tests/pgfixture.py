"""A PostgreSQL schema per test on the machine's server (127.0.0.1:5432, database test).

Tests that need it skip with the reason when the server cannot be reached, unless
RECSYNC_REQUIRE_SERVICES=1 (as in CI), where that is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

PG_DSN = os.environ.get("RECSYNC_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def _unreachable() -> str | None:
    try:
        psycopg.connect(PG_DSN, connect_timeout=3).close()
    except psycopg.Error as exc:
        return f"PostgreSQL at {PG_DSN} is unreachable: {str(exc).strip()}"
    return None


def require_pg() -> None:
    reason = _unreachable()
    if reason is None:
        return
    if os.environ.get("RECSYNC_REQUIRE_SERVICES") == "1":
        pytest.fail(reason + " (RECSYNC_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


@dataclass
class PgSchema:
    dsn: str
    schema: str

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self.dsn, autocommit=True, **kwargs)
        conn.execute(f'SET search_path = "{self.schema}"')
        return conn

    def run(self, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self.connect() as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else []

    def table(self, name: str = "users") -> str:
        return f"{self.schema}.{name}"


@pytest.fixture
def pg() -> Iterator[PgSchema]:
    require_pg()
    schema = f"rs_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield PgSchema(PG_DSN, schema)
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
