"""kill -9 at random moments during a 20,000-record sync loses and duplicates nothing.

The kill moments are chosen from the sync's progress (how many records the target has
committed), never from a wall-clock delay: on a fast machine a timed kill lands after the
sync is over, on a slow one before it began, and the test then proves nothing.
"""

from __future__ import annotations

import random
import sqlite3
import subprocess
from pathlib import Path

from recsync.connectors.files import FileConfig, FileConnector
from tests.e2e.helpers import (
    kill_when,
    make_users,
    read_csv,
    recsyncd_cmd,
    run_once,
    sql,
    write_config,
)

RECORDS = 20_000
KILLS = 10
# The target has no unique key, so a record written twice would show up twice.
LOOSE_USERS = """
CREATE TABLE users (
    record_id INTEGER,
    full_name TEXT,
    email_address TEXT,
    status TEXT,
    updated_at REAL
)
"""
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


def test_sigkill_during_sync_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    rows = [(i, f"User {i}", f"u{i}@example.com", "active") for i in range(1, RECORDS + 1)]
    make_users(tmp_path / "a.sqlite", rows)
    make_users(tmp_path / "b.sqlite", [], schema=LOOSE_USERS)
    write_config(
        tmp_path,
        '{ connector = "sqlite", path = "a.sqlite", table = "users", key = "record_id" }',
        '{ connector = "sqlite", path = "b.sqlite", table = "users", key = "record_id" }',
        rules=RULES, settings="batch_size = 300\npage_size = 700\n")
    rng = random.Random(20_000)
    state = tmp_path / "state"
    target = tmp_path / "b.sqlite"
    kills: list[int] = []
    # First a kill during start-up: as soon as the state store exists.
    proc = subprocess.Popen(recsyncd_cmd(tmp_path, state, "--once"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(proc, lambda: len(list(state.glob("*"))) if state.exists() else 0, 1)
    for remaining in range(KILLS, 0, -1):
        done = _count(target)
        # A random point in the next slice of what is left, so the kills spread over the
        # whole sync and each run commits some records before it dies.
        step = max(1, (RECORDS - done) // (remaining + 1))
        kill_at = done + rng.randint(1, step)
        proc = subprocess.Popen(recsyncd_cmd(tmp_path, state, "--once"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if kill_when(proc, lambda: _count(target), kill_at):
            kills.append(_count(target))
    # The first kill comes after at most 1/11 of the records: no machine syncs the rest
    # between two looks at the target.
    assert kills, "recsyncd finished before the first kill point"
    progress = _count(target)
    result = run_once(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    a_rows = sql(tmp_path / "a.sqlite",
                 "SELECT record_id, full_name, email_address, status FROM users")
    b_rows = sql(tmp_path / "b.sqlite",
                 "SELECT record_id, full_name, email_address, status FROM users")
    assert len(b_rows) == RECORDS, f"{len(b_rows)} rows on B (had {progress} after the kills)"
    assert sorted(b_rows) == sorted(a_rows)
    assert len(a_rows) == RECORDS  # nothing came back to A twice either


def test_sigkill_during_file_sync_keeps_the_csv_whole(tmp_path: Path) -> None:
    rows = [(i, f"User {i}", f"u{i}@example.com", "active") for i in range(1, 5001)]
    make_users(tmp_path / "a.sqlite", rows)
    write_config(
        tmp_path,
        '{ connector = "sqlite", path = "a.sqlite", table = "users", key = "record_id" }',
        '{ connector = "file", path = "out.csv", key = "record_id" }',
        rules=RULES, settings="batch_size = 250\npage_size = 500\n")
    rng = random.Random(5)
    out_csv = tmp_path / "out.csv"
    killed = 0
    for remaining in range(5, 0, -1):
        done = _csv_rows(out_csv)
        kill_at = done + rng.randint(1, max(1, (5000 - done) // (remaining + 1)))
        proc = subprocess.Popen(recsyncd_cmd(tmp_path, tmp_path / "state", "--once"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        killed += kill_when(proc, lambda: _csv_rows(out_csv), kill_at)
        # never half a row once the side is opened again (what the next start does first:
        # an append the kill cut short is cut back), and no row twice
        FileConnector(FileConfig(path="out.csv", key="record_id"), tmp_path).open()
        if out_csv.exists():
            out = read_csv(out_csv)
            assert all(r["status"] == "active" for r in out)
            assert len({r["record_id"] for r in out}) == len(out)
    assert killed, "recsyncd finished before the first kill point"
    result = run_once(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = read_csv(tmp_path / "out.csv")
    assert len(out) == 5000
    assert sorted(int(r["record_id"]) for r in out) == list(range(1, 5001))


def _count(path: Path) -> int:
    if not path.exists():
        return 0
    conn = sqlite3.connect(path, timeout=5)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM users").fetchone()[0])
    except sqlite3.OperationalError:
        return -1  # the file caught mid-write by a kill ("disk I/O error"): look again
    finally:
        conn.close()


def _csv_rows(path: Path) -> int:
    try:
        return max(0, path.read_bytes().count(b"\n") - 1)
    except FileNotFoundError:
        return 0
