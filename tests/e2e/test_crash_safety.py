"""kill -9 at random moments during a 20,000-record sync loses and duplicates nothing."""

from __future__ import annotations

import random
import subprocess
import time
from pathlib import Path

from tests.e2e.helpers import (
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
    kills = 0
    for _ in range(KILLS):
        proc = subprocess.Popen(recsyncd_cmd(tmp_path, state, "--once"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # A random moment: from start-up through reading, queueing and writing.
        deadline = time.monotonic() + rng.uniform(0.3, 2.0)
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            kills += 1
        proc.wait()
    progress = sql(tmp_path / "b.sqlite", "SELECT COUNT(*) FROM users")[0][0]
    assert kills >= KILLS * 0.8, "the sync finished before most kills: make it bigger"

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
    for _ in range(5):
        proc = subprocess.Popen(recsyncd_cmd(tmp_path, tmp_path / "state", "--once"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=rng.uniform(0.3, 1.0))
        except subprocess.TimeoutExpired:
            proc.kill()
        proc.wait()
        if (tmp_path / "out.csv").exists():  # never half a file: every row parses whole
            assert all(r["status"] == "active" for r in read_csv(tmp_path / "out.csv"))
    result = run_once(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = read_csv(tmp_path / "out.csv")
    assert len(out) == 5000
    assert sorted(int(r["record_id"]) for r in out) == list(range(1, 5001))
