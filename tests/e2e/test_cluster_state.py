"""`recsyncd --once` with ``[cluster] state``: the pipeline's state in PostgreSQL."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.e2e.helpers import make_users, run_once, sql, users, write_config
from tests.pgfixture import PG_DSN, require_pg

# One xdist worker runs the tests whose nodes join the machine's shared cluster tables
# (recsync.nodes / recsync.leases): a live node of another test changes the node count
# that the fair share and the budget split divide by.
pytestmark = pytest.mark.xdist_group("cluster")

SQLITE_A = '{ connector = "sqlite", path = "a.sqlite", table = "users", key = "record_id" }'
SQLITE_B = '{ connector = "sqlite", path = "b.sqlite", table = "users", key = "record_id" }'
RULES = """
[contacts]
a_to_b = ["create", "update", "delete"]
b_to_a = ["create", "update", "delete"]
[contacts.mappings]
record_id = "record_id"
full_name = "full_name"
email_address = "email_address"
status = "status"
"""
TABLES = ("meta", "cursors", "links", "queue", "history", "listing_seen", "rekeys")


@pytest.fixture
def customer() -> Iterator[str]:
    """A customer name of this test's own: its pipeline's rows, deleted after."""
    require_pg()
    name = f"c{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        for table in TABLES:
            conn.execute(f"DELETE FROM recsync.{table} WHERE pipeline = %s", (f"{name}/p",))


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def rows_of(pipeline: str, table: str) -> int:
    with psycopg.connect(PG_DSN) as conn:
        row = conn.execute(f"SELECT COUNT(*) FROM recsync.{table} WHERE pipeline = %s",
                           (pipeline,)).fetchone()
    assert row is not None
    return int(row[0])


def test_once_with_the_state_in_postgresql(tmp_path: Path, customer: str) -> None:
    a, b = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    make_users(a, [(i, f"User {i}", f"u{i}@example.com", "active") for i in range(1, 31)])
    make_users(b, [])
    write_config(tmp_path, SQLITE_A, SQLITE_B, rules=RULES,
                 settings=f'[cluster]\nstate = "{PG_DSN}"\n')
    settings = tmp_path / "customer_settings.toml"
    settings.write_text(settings.read_text().replace("customers.test.", f"customers.{customer}."))
    pipeline = f"{customer}/p"

    assert "a->b 30 synced, b->a 0 synced" in ok(run_once(tmp_path))
    assert users(a) == users(b)
    assert rows_of(pipeline, "links") == 30 and rows_of(pipeline, "cursors") == 2
    assert not list((tmp_path / "state").glob("*.sqlite"))  # no state file

    sql(a, "UPDATE users SET full_name = 'Renamed' WHERE record_id = 3")
    sql(a, "DELETE FROM users WHERE record_id = 4")
    sql(b, "UPDATE users SET status = 'pending' WHERE record_id = 7")
    assert "a->b 2 synced, b->a 1 synced" in ok(run_once(tmp_path))
    assert users(a) == users(b)
    assert users(b)["3"][0] == "Renamed" and "4" not in users(b)
    assert users(a)["7"][2] == "pending"

    # a third pass finds nothing to do: our own writes are not echoed back
    history = rows_of(pipeline, "history")
    assert "a->b 0 synced, b->a 0 synced" in ok(run_once(tmp_path))
    assert rows_of(pipeline, "history") == history
    assert rows_of(pipeline, "queue") == 0 and rows_of(pipeline, "links") == 29
