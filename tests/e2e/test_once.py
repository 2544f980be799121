"""End to end through `recsyncd --once` in a subprocess, on real files and databases."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.e2e.helpers import (
    by_key,
    make_users,
    read_csv,
    read_jsonl,
    recsyncd_cmd,
    run_once,
    sql,
    users,
    wait_for,
    write_config,
    write_csv,
    write_jsonl,
)

SQLITE_A = '{ connector = "sqlite", path = "a.sqlite", table = "users", key = "record_id" }'
SQLITE_B = '{ connector = "sqlite", path = "b.sqlite", table = "users", key = "record_id" }'
CSV_B = '{ connector = "file", path = "contacts.csv", key = "record_id" }'
FIELDS = ["record_id", "name", "email", "status"]

ALL_WAYS = """
[contacts]
a_to_b = ["create", "update", "delete"]
b_to_a = ["create", "update", "delete"]
conflict = "{conflict}"
[contacts.mappings]
record_id = "record_id"
full_name = "{name}"
email_address = "{email}"
status = "status"
"""


def seed_rows(n: int, start: int = 1) -> list[tuple[object, ...]]:
    return [(i, f"User {i}", f"u{i}@example.com", "active" if i % 5 else "inactive")
            for i in range(start, start + n)]


def ok(result: subprocess.CompletedProcess[str], code: int = 0) -> str:
    assert result.returncode == code, result.stdout + result.stderr
    return result.stdout


def test_sqlite_to_csv_and_back_with_creates_updates_deletes(tmp_path: Path) -> None:
    make_users(tmp_path / "a.sqlite", seed_rows(20))
    write_config(tmp_path, SQLITE_A, CSV_B)
    out = ok(run_once(tmp_path))
    assert "a->b 16 synced" in out  # every 5th user is inactive: filtered out
    rows = by_key(read_csv(tmp_path / "contacts.csv"))
    assert set(rows) == {str(i) for i in range(1, 21) if i % 5}
    assert rows["3"] == {"record_id": "3", "name": "User 3", "email": "u3@example.com",
                         "status": "active"}

    a = tmp_path / "a.sqlite"
    sql(a, "UPDATE users SET full_name = 'Renamed' WHERE record_id = 3")
    sql(a, "DELETE FROM users WHERE record_id = 4")
    sql(a, "INSERT INTO users (record_id, full_name, email_address, status) "
           "VALUES (100, 'New', 'new@x.org', 'pending')")
    csv_rows = read_csv(tmp_path / "contacts.csv")
    for r in csv_rows:
        if r["record_id"] == "7":
            r["email"] = "seven@csv.org"
    csv_rows.append({"record_id": "200", "name": "From CSV", "email": "c@x.org",
                     "status": "active"})
    write_csv(tmp_path / "contacts.csv", csv_rows, FIELDS)
    out = ok(run_once(tmp_path))
    assert "a->b 3 synced" in out and "b->a 2 synced" in out

    rows = by_key(read_csv(tmp_path / "contacts.csv"))
    assert rows["3"]["name"] == "Renamed"
    assert "4" not in rows
    assert rows["100"]["status"] == "pending"
    db = users(a)
    assert db["7"][1] == "seven@csv.org"
    assert db["200"] == ("From CSV", "c@x.org", "active")


def test_second_run_writes_nothing(tmp_path: Path) -> None:
    make_users(tmp_path / "a.sqlite", seed_rows(30))
    write_config(tmp_path, SQLITE_A, CSV_B)
    ok(run_once(tmp_path))
    before = os.stat(tmp_path / "contacts.csv")
    changes_before = sql(tmp_path / "a.sqlite", "SELECT total_changes()")
    out = ok(run_once(tmp_path))
    assert "a->b 0 synced, b->a 0 synced" in out
    after = os.stat(tmp_path / "contacts.csv")
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert changes_before == sql(tmp_path / "a.sqlite", "SELECT total_changes()")


def test_sqlite_to_sqlite_both_ways_including_deletes(tmp_path: Path) -> None:
    make_users(tmp_path / "a.sqlite", seed_rows(10))
    make_users(tmp_path / "b.sqlite", seed_rows(5, start=50))
    rules = ALL_WAYS.format(conflict="last_writer_wins", name="full_name",
                            email="email_address")
    write_config(tmp_path, SQLITE_A, SQLITE_B, rules=rules)
    ok(run_once(tmp_path))
    a, b = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    assert users(a) == users(b) and len(users(a)) == 15

    sql(a, "DELETE FROM users WHERE record_id = 1")
    sql(b, "DELETE FROM users WHERE record_id = 50")
    sql(b, "UPDATE users SET status = 'pending' WHERE record_id = 2")
    out = ok(run_once(tmp_path))
    assert users(a) == users(b)
    assert "1" not in users(b) and "50" not in users(a)
    assert users(a)["2"][2] == "pending"
    assert "a->b 1 synced, b->a 2 synced" in out


def test_jsonl_to_jsonl(tmp_path: Path) -> None:
    left, right = tmp_path / "left.jsonl", tmp_path / "right.jsonl"
    write_jsonl(left, [{"record_id": i, "full_name": f"L{i}", "email_address": f"{i}@l",
                        "status": "active"} for i in range(5)])
    write_jsonl(right, [{"record_id": 9, "fn": "R9", "mail": "9@r", "status": "pending"}])
    rules = ALL_WAYS.format(conflict="last_writer_wins", name="fn", email="mail")
    write_config(tmp_path, '{ connector = "file", path = "left.jsonl", key = "record_id" }',
                 '{ connector = "file", path = "right.jsonl", key = "record_id" }', rules=rules)
    ok(run_once(tmp_path))
    assert by_key(read_jsonl(right))["3"]["fn"] == "L3"
    assert by_key(read_jsonl(left))["9"]["full_name"] == "R9"

    rows = [r for r in read_jsonl(right) if r["record_id"] != 2]
    for r in rows:
        if r["record_id"] == 4:
            r["mail"] = "four@r"
    write_jsonl(right, rows)
    ok(run_once(tmp_path))
    left_rows = by_key(read_jsonl(left))
    assert "2" not in left_rows
    assert left_rows["4"]["email_address"] == "four@r"
    assert by_key(read_jsonl(right)).keys() == left_rows.keys()


@pytest.mark.parametrize(("policy", "winner"), [("a_wins", "from A"), ("b_wins", "from B")])
def test_conflict_resolved_by_policy_and_recorded(tmp_path: Path, policy: str,
                                                  winner: str) -> None:
    make_users(tmp_path / "a.sqlite", seed_rows(3))
    make_users(tmp_path / "b.sqlite", [])
    rules = ALL_WAYS.format(conflict=policy, name="full_name", email="email_address")
    write_config(tmp_path, SQLITE_A, SQLITE_B, rules=rules)
    ok(run_once(tmp_path))
    sql(tmp_path / "a.sqlite", "UPDATE users SET full_name = 'from A' WHERE record_id = 2")
    sql(tmp_path / "b.sqlite", "UPDATE users SET full_name = 'from B' WHERE record_id = 2")
    out = ok(run_once(tmp_path))
    assert "1 conflicts" in out
    assert users(tmp_path / "a.sqlite")["2"][0] == winner
    assert users(tmp_path / "b.sqlite")["2"][0] == winner
    history = sql(tmp_path / "state" / "test__p.sqlite",
                  "SELECT event, detail FROM history WHERE key = '2'")
    assert any(event == "conflict" and policy[0] + " wins" in detail
               for event, detail in history), history


def test_last_writer_wins_takes_the_newer_record(tmp_path: Path) -> None:
    make_users(tmp_path / "a.sqlite", seed_rows(3))
    make_users(tmp_path / "b.sqlite", [])
    rules = ALL_WAYS.format(conflict="last_writer_wins", name="full_name",
                            email="email_address")
    write_config(tmp_path, SQLITE_A, SQLITE_B, rules=rules)
    ok(run_once(tmp_path))
    sql(tmp_path / "a.sqlite",
        "UPDATE users SET full_name = 'older', updated_at = 1000 WHERE record_id = 1")
    sql(tmp_path / "b.sqlite",
        "UPDATE users SET full_name = 'newer', updated_at = 2000 WHERE record_id = 1")
    ok(run_once(tmp_path))
    assert users(tmp_path / "a.sqlite")["1"][0] == "newer"
    assert users(tmp_path / "b.sqlite")["1"][0] == "newer"


def test_poison_record_fails_while_the_rest_syncs(tmp_path: Path) -> None:
    write_csv(tmp_path / "contacts.csv",
              [{"record_id": i, "name": f"N{i}", "email": "bad" if i == 3 else f"{i}@ok.org",
                "status": "active"} for i in range(1, 8)], FIELDS)
    checked = USERS_WITH_CHECK
    make_users(tmp_path / "a.sqlite", [], schema=checked)
    write_config(tmp_path, SQLITE_A, CSV_B)
    result = run_once(tmp_path)
    out = ok(result, code=1)
    assert "b->a 6 synced" in out and "1 failed" in out
    assert sorted(users(tmp_path / "a.sqlite")) == ["1", "2", "4", "5", "6", "7"]
    (row,) = sql(tmp_path / "state" / "test__p.sqlite",
                 "SELECT key, state, last_error FROM queue")
    assert row[:2] == ("3", "failed") and "CHECK constraint" in row[2]


USERS_WITH_CHECK = """
CREATE TABLE users (
    record_id INTEGER PRIMARY KEY,
    full_name TEXT NOT NULL,
    email_address TEXT CHECK (email_address LIKE '%@%'),
    status TEXT NOT NULL DEFAULT 'active',
    updated_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
)
"""


def test_target_failing_then_recovering_loses_nothing(tmp_path: Path) -> None:
    make_users(tmp_path / "a.sqlite", seed_rows(40))
    make_users(tmp_path / "b.sqlite", [])
    sqlite_b_fast_fail = ('{ connector = "sqlite", path = "b.sqlite", table = "users", '
                          'key = "record_id", busy_timeout = 0.01 }')
    rules = ALL_WAYS.format(conflict="last_writer_wins", name="full_name",
                            email="email_address")
    write_config(tmp_path, SQLITE_A, sqlite_b_fast_fail, rules=rules,
                 settings="max_attempts = 50\n")
    blocker = sqlite3.connect(tmp_path / "b.sqlite", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # every write and read of side B fails: locked
    state = tmp_path / "state" / "test__p.sqlite"
    proc = subprocess.Popen(recsyncd_cmd(tmp_path, tmp_path / "state", "--once"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def retries() -> int:
            if not state.exists():
                return 0
            try:
                rows = sql(state, "SELECT COUNT(*) FROM history WHERE event = 'retry'")
            except sqlite3.OperationalError:
                return 0  # the daemon is still creating the state file
            return int(rows[0][0]) >= 3 * 40

        wait_for(retries, timeout=60, what="three failed attempts of every record")
        blocker.execute("ROLLBACK")
        out, err = proc.communicate(timeout=60)
    finally:
        blocker.close()
        proc.kill()
    assert proc.returncode == 0, out + err
    assert "a->b 40 synced" in out and "0 failed" in out
    assert users(tmp_path / "b.sqlite") == users(tmp_path / "a.sqlite")


def test_column_mode_finds_deletes_by_listing_the_table_again(tmp_path: Path) -> None:
    a = tmp_path / "a.sqlite"
    make_users(a, seed_rows(10))
    column_a = ('{ connector = "sqlite", path = "a.sqlite", table = "users", '
                'key = "record_id", tracking = "column", relist_interval = 0.000001 }')
    write_config(tmp_path, column_a, CSV_B)
    ok(run_once(tmp_path))
    assert "3" in by_key(read_csv(tmp_path / "contacts.csv"))
    sql(a, "DELETE FROM users WHERE record_id = 3")
    out = ok(run_once(tmp_path))
    assert "a->b 1 synced" in out, out
    assert "3" not in by_key(read_csv(tmp_path / "contacts.csv"))
    # column mode added nothing to the user's database
    assert sql(a, "SELECT name FROM sqlite_master WHERE name LIKE 'recsync%'") == []


ONE_WAY = """
[contacts]
a_to_b = ["create", "update", "delete"]
b_to_a = []
conflict = "last_writer_wins"
[contacts.mappings]
record_id = "record_id"
full_name = "name"
email_address = "email"
status = "status"
"""


def test_one_way_pipeline_overwrites_hand_edits_on_its_target(tmp_path: Path) -> None:
    a = tmp_path / "a.sqlite"
    make_users(a, seed_rows(6))
    write_config(tmp_path, SQLITE_A, CSV_B, rules=ONE_WAY)
    ok(run_once(tmp_path))
    # by hand on the target: record 3 deleted, record 4 changed
    rows = [r for r in read_csv(tmp_path / "contacts.csv") if r["record_id"] != "3"]
    for r in rows:
        if r["record_id"] == "4":
            r["name"] = "Edited in CSV"
    write_csv(tmp_path / "contacts.csv", rows, FIELDS)
    sql(a, "UPDATE users SET full_name = 'Three v2' WHERE record_id = 3")
    sql(a, "UPDATE users SET full_name = 'Four v2' WHERE record_id = 4")
    out = ok(run_once(tmp_path))
    assert "b->a 0 synced" in out and "0 conflicts" in out, out
    db = users(a)
    assert db["3"][0] == "Three v2" and db["4"][0] == "Four v2"  # the source keeps its own
    csv_rows = by_key(read_csv(tmp_path / "contacts.csv"))
    assert csv_rows["3"]["name"] == "Three v2" and csv_rows["4"]["name"] == "Four v2"


def test_a_side_the_rules_never_read_keeps_its_change_log_trimmed(tmp_path: Path) -> None:
    a, b = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    make_users(a, seed_rows(8))
    make_users(b, [])
    one_way = ONE_WAY.replace('"name"', '"full_name"').replace('"email"', '"email_address"')
    b_side = SQLITE_B.replace(" }", ", changelog_retention = 0.0 }")
    write_config(tmp_path, SQLITE_A, b_side, rules=one_way)
    out = ok(run_once(tmp_path))
    assert "a->b 8 synced" in out, out
    assert len(users(b)) == 8
    # b is never read (b_to_a = []), yet the log of our writes there does not pile up
    assert sql(b, "SELECT count(*) FROM recsync_changelog_users") == [(0,)]
