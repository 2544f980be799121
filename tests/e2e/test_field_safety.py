"""End to end: what users and a hostile environment hit first (issue 11, items 1, 6, 7):
a SQLite table rebuilt under the daemon, records that cannot be read, CRM records that
come without the other side's key."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import (
    make_users,
    recsyncd_cmd,
    run_once,
    sql,
    users,
    wait_for,
    write_config,
)

SQLITE_A = '{ connector = "sqlite", path = "a.sqlite", table = "users", key = "record_id" }'
SQLITE_B = '{ connector = "sqlite", path = "b.sqlite", table = "users", key = "record_id" }'
SAME_NAMES = """
[contacts]
a_to_b = ["create", "update", "delete"]
b_to_a = ["create", "update", "delete"]
conflict = "last_writer_wins"
[contacts.mappings]
record_id = "record_id"
full_name = "full_name"
email_address = "email_address"
status = "status"
"""
# SQLite's documented way to change a table's schema (it drops the table's triggers),
# then changes made before recsync looks again
REBUILD = """
BEGIN;
CREATE TABLE new_users (
    record_id INTEGER PRIMARY KEY,
    full_name TEXT NOT NULL,
    email_address TEXT,
    status TEXT NOT NULL DEFAULT 'active',
    updated_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0),
    phone TEXT
);
INSERT INTO new_users (record_id, full_name, email_address, status, updated_at)
    SELECT record_id, full_name, email_address, status, updated_at FROM users;
DROP TABLE users;
ALTER TABLE new_users RENAME TO users;
COMMIT;
INSERT INTO users (record_id, full_name, email_address, status)
    VALUES (100, 'Added after rebuild', 'new@x.org', 'active');
UPDATE users SET full_name = 'Renamed after rebuild' WHERE record_id = 2;
DELETE FROM users WHERE record_id = 3;
"""


def seed(n: int) -> list[tuple[object, ...]]:
    return [(i, f"User {i}", f"u{i}@x.org", "active") for i in range(1, n + 1)]


def script(path: Path, text: str) -> None:
    import sqlite3

    db = sqlite3.connect(path)
    db.executescript(text)
    db.close()


def ok(result: subprocess.CompletedProcess[str], code: int = 0) -> str:
    assert result.returncode == code, result.stdout + result.stderr
    return result.stdout


@dataclass
class Daemon:
    folder: Path
    proc: subprocess.Popen[str]
    endpoint: str

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "recsync.cli", "--endpoint", self.endpoint, *args],
            capture_output=True, text=True, timeout=60)
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.cli("--json", *args).stdout)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    env = dict(os.environ, RUNTIME_DIRECTORY=str(tmp_path / "run"),
               LOGS_DIRECTORY=str(tmp_path / "logs"))
    env.pop("NOTIFY_SOCKET", None)
    proc = subprocess.Popen(recsyncd_cmd(tmp_path, tmp_path / "state"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    d = Daemon(tmp_path, proc, f"ipc://{tmp_path}/run/control.sock")
    try:
        wait_for(lambda: d.cli("status", check=False).returncode == 0, timeout=60,
                 what="the control socket")
        yield d
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


# ---- item 1: a rebuilt SQLite table ---------------------------------------------------------


def test_table_rebuilt_between_two_runs_is_synced_in_full(tmp_path: Path) -> None:
    a, b = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    make_users(a, seed(10))
    make_users(b, [])
    write_config(tmp_path, SQLITE_A, SQLITE_B, rules=SAME_NAMES)
    ok(run_once(tmp_path))
    assert users(b) == users(a)
    script(a, REBUILD)
    out = ok(run_once(tmp_path))
    assert "warning: side a:" in out and "listed again" in out, out
    assert users(b) == users(a)
    assert users(b)["100"][0] == "Added after rebuild" and "3" not in users(b)
    # capture is on again: the next change is seen from the change log
    sql(a, "UPDATE users SET full_name = 'After' WHERE record_id = 4")
    out = ok(run_once(tmp_path))
    assert "a->b 1 synced" in out and "warning" not in out, out
    assert users(b) == users(a)


def test_every_pipeline_on_a_table_rebuilt_while_stopped_catches_up(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.sqlite", tmp_path / "b.sqlite", tmp_path / "c.sqlite"
    make_users(a, seed(6))
    make_users(b, [])
    make_users(c, [])
    write_config(tmp_path, SQLITE_A, SQLITE_B, rules=SAME_NAMES)
    with (tmp_path / "customer_settings.toml").open("a") as f:
        f.write('[customers.test.pipelines.q]\nrules = "contacts"\n'
                f"a = {SQLITE_A}\nb = {SQLITE_B.replace('b.sqlite', 'c.sqlite')}\n")
    ok(run_once(tmp_path))
    assert users(b) == users(a) == users(c)
    script(a, REBUILD)
    out = ok(run_once(tmp_path))
    assert out.count("warning: side a:") == 2, out
    assert users(b) == users(a) == users(c)


@pytest.fixture
def same_names_folder(tmp_path: Path) -> Path:
    """Ten users on side A, none on B, the same field names on both sides."""
    make_users(tmp_path / "a.sqlite", seed(10))
    make_users(tmp_path / "b.sqlite", [])
    write_config(tmp_path, SQLITE_A, SQLITE_B, rules=SAME_NAMES)
    return tmp_path


def test_table_rebuilt_while_the_daemon_runs_is_synced_and_status_warns(
    same_names_folder: Path, daemon: Daemon
) -> None:
    a, b = daemon.folder / "a.sqlite", daemon.folder / "b.sqlite"
    events = subprocess.Popen(
        [sys.executable, "-m", "recsync.cli", "--endpoint", daemon.endpoint, "--json",
         "events"], stdout=subprocess.PIPE, text=True)
    assert events.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(events.stdout or ()), daemon=True)
    reader.start()
    try:
        wait_for(lambda: users(b) == users(a), what="the first sync")
        wait_for(lambda: lines, what="the event stream (stats every second)")
        script(a, REBUILD)
        wait_for(lambda: users(b) == users(a), what="the changes made around the rebuild")
        assert "3" not in users(b) and users(b)["2"][0] == "Renamed after rebuild"
        (pipe,) = wait_for(lambda: [p for p in daemon.json("status")["pipelines"]
                                    if p.get("warnings")], what="a warning in status")
        assert "rebuilt" in pipe["warnings"][0] and pipe["state"] == "running"
        # it stays until recsyncd restarts: it says when it happened
        assert re.match(r"side a, \d{4}-\d\d-\d\d \d\d:\d\d:\d\d: ", pipe["warnings"][0])
        assert "warnings:" in daemon.cli("status").stdout
        wait_for(lambda: any('"sync_warning"' in line for line in lines),
                 what="the sync_warning event")
    finally:
        events.terminate()
        events.wait(timeout=10)
        reader.join(timeout=10)
    warned = [e["data"] for e in map(json.loads, filter(str.strip, lines))
              if e["kind"] == "sync_warning"]
    assert [(w["pipeline"], w["side"]) for w in warned] == [("test/p", "a")]
    # and capture goes on: a later insert is synced from the change log
    sql(a, "INSERT INTO users (record_id, full_name, status) VALUES (200, 'Later', 'active')")
    wait_for(lambda: "200" in users(b), what="a change after the rebuild")


# ---- item 6: records that cannot be read ----------------------------------------------------

CSV_B = '{ connector = "file", path = "contacts.csv", key = "record_id" }'
JSONL_B = '{ connector = "file", path = "contacts.jsonl", key = "record_id" }'
MAPPED = SAME_NAMES.replace('full_name = "full_name"', 'full_name = "name"').replace(
    'email_address = "email_address"', 'email_address = "email"')


def failed(folder: Path) -> list[Any]:
    from recsync.actors.pipeline import state_file
    from recsync.daemon.records import failed_records

    return failed_records(state_file(folder / "state", "test/p"), "test/p", 100)


def test_a_csv_line_with_a_bad_byte_is_a_failed_record_and_deletes_nothing(
    tmp_path: Path
) -> None:
    a, csv_path = tmp_path / "a.sqlite", tmp_path / "contacts.csv"
    make_users(a, seed(5))
    write_config(tmp_path, SQLITE_A, CSV_B, rules=MAPPED)
    ok(run_once(tmp_path))
    good = csv_path.read_bytes()
    lines = good.split(b"\n")
    assert lines[3].startswith(b"3,")
    lines[3] = lines[3].replace(b"User 3", b"User \xff3")  # not UTF-8
    csv_path.write_bytes(b"\n".join(lines))
    out = ok(run_once(tmp_path), code=1)
    assert "1 failed" in out, out
    (bad,) = failed(tmp_path)
    assert bad.key == "contacts.csv:4" and bad.direction == "b_to_a"
    assert "Line 4 of" in (bad.last_error or "") and "utf-8" in (bad.last_error or "")
    assert "3" in users(a)  # the line it could not read is no delete
    csv_path.write_bytes(good.replace(b"User 3", b"User Three"))  # fixed by hand
    ok(run_once(tmp_path))
    assert failed(tmp_path) == [] and users(a)["3"][0] == "User Three"


def test_a_json_lines_line_that_is_not_json_is_a_failed_record(tmp_path: Path) -> None:
    a, path = tmp_path / "a.sqlite", tmp_path / "contacts.jsonl"
    make_users(a, [])
    path.write_text('{"record_id": 1, "name": "One", "email": "1@x.org", "status": "active"}\n'
                    '{"record_id": 2, "name": "Two", "email": \n')
    write_config(tmp_path, SQLITE_A, JSONL_B, rules=MAPPED)
    out = ok(run_once(tmp_path), code=1)
    assert "b->a 1 synced" in out and "1 failed" in out, out
    (bad,) = failed(tmp_path)
    assert bad.key == "contacts.jsonl:2" and "not valid JSON" in (bad.last_error or "")


TEXT_KEY_USERS = """
CREATE TABLE users (
    record_id TEXT,
    full_name TEXT NOT NULL,
    email_address TEXT,
    status TEXT NOT NULL DEFAULT 'active'
)
"""


def test_a_row_without_a_key_is_a_failed_record_until_it_gets_one(tmp_path: Path) -> None:
    a, b = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    make_users(a, [("1", "One", "1@x.org", "active"), (None, "Keyless", "k@x.org", "active")],
               schema=TEXT_KEY_USERS)
    make_users(b, [])
    write_config(tmp_path, SQLITE_A, SQLITE_B, rules=SAME_NAMES)
    out = ok(run_once(tmp_path), code=1)
    assert "a->b 1 synced" in out and "1 failed" in out, out
    (bad,) = failed(tmp_path)
    assert bad.key == "users rowid 2" and "NULL" in (bad.last_error or "")
    assert "'record_id'" in (bad.last_error or "")
    sql(a, "UPDATE users SET record_id = '2' WHERE rowid = 2")
    out = ok(run_once(tmp_path))
    assert failed(tmp_path) == [] and set(users(b)) == {"1", "2"}


@pytest.fixture
def bad_csv_setup(tmp_path: Path) -> Path:
    make_users(tmp_path / "a.sqlite", seed(3))
    (tmp_path / "contacts.csv").write_bytes(
        b"record_id,name,email,status\n7,Se\xffven,7@x.org,active\n")
    write_config(tmp_path, SQLITE_A, CSV_B, rules=MAPPED)
    return tmp_path


def test_recsync_failed_names_the_file_and_line_and_a_retry_reads_it_again(
    bad_csv_setup: Path, daemon: Daemon
) -> None:
    rows = wait_for(lambda: daemon.json("failed"), what="the unreadable line as failed")
    assert rows[0]["key"] == "contacts.csv:2"
    assert "contacts.csv:2" in daemon.cli("failed").stdout
    # a retry reads the file again: the line is still bad, so it is failed again
    assert "queued for retry" in daemon.cli("retry", "contacts.csv:2").stdout
    history = wait_for(
        lambda: [h["event"] for h in
                 daemon.json("status", "contacts.csv:2")["records"][0]["history"]
                 if h["event"] == "failed"][1:],
        what="the line to fail again")
    assert history == ["failed"]
    (daemon.folder / "contacts.csv").write_text(
        "record_id,name,email,status\n7,Seven,7@x.org,active\n")
    wait_for(lambda: "7" in users(daemon.folder / "a.sqlite"), what="the fixed line")
    wait_for(lambda: daemon.json("failed") == [], what="the failed record to go")


# ---- a mapping that names a column a side does not have -------------------------------------

MISTYPED = SAME_NAMES.replace('full_name = "full_name"', 'full_name = "fullname"').replace(
    'email_address = "email_address"', 'emial_address = "email_address"')


def test_a_mapping_to_a_missing_column_stops_the_pipeline_and_names_the_field(
        tmp_path: Path) -> None:
    a, b = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    make_users(a, seed(3))
    make_users(b, [])
    write_config(tmp_path, SQLITE_A, SQLITE_B, rules=MISTYPED)
    out = run_once(tmp_path).stdout
    assert "test/p: error: rules.toml [contacts.mappings]" in out, out
    assert "side a (sqlite) has no field 'emial_address'" in out, out
    assert "side b (sqlite) has no field 'fullname'" in out, out
    assert users(b) == {}  # nothing synced with empty names and emails


def test_a_reload_that_maps_a_missing_column_fails_the_pipeline_until_fixed(
        same_names_folder: Path, daemon: Daemon) -> None:
    a, b = daemon.folder / "a.sqlite", daemon.folder / "b.sqlite"
    wait_for(lambda: users(b) == users(a), what="the first sync")

    (daemon.folder / "rules.toml").write_text(MISTYPED)
    daemon.cli("reload")

    def pipeline() -> dict[str, Any]:
        result = daemon.cli("--json", "status", check=False)  # 4: a pipeline in error
        (one,) = json.loads(result.stdout)["pipelines"]
        return one  # type: ignore[no-any-return]

    status = wait_for(lambda: (s := pipeline())["state"] == "error" and s,
                      what="the pipeline to fail on the new mapping")
    assert "side b (sqlite) has no field 'fullname'" in status["error"], status
    sql(a, "UPDATE users SET full_name = 'Changed' WHERE record_id = 1")

    (daemon.folder / "rules.toml").write_text(SAME_NAMES)
    daemon.cli("reload")
    wait_for(lambda: users(b) == users(a), what="the change synced once the rules are fixed")
    assert pipeline()["state"] == "running"


A_TO_B_ONLY = MAPPED.replace('b_to_a = ["create", "update", "delete"]', "b_to_a = []")


def test_a_mapping_to_a_column_a_read_csv_lacks_stops_the_pipeline(tmp_path: Path) -> None:
    """The rules read the CSV (b_to_a): a column its header lacks would come as an empty
    value in every record, so the pipeline stops and names it."""
    make_users(tmp_path / "a.sqlite", seed(3))
    (tmp_path / "contacts.csv").write_text(
        "record_id,name,mail,status\n7,Seven,7@x.org,active\n")
    write_config(tmp_path, SQLITE_A, CSV_B, rules=MAPPED)
    out = run_once(tmp_path).stdout
    assert "side b (file) has no field 'email'" in out, out
    assert "'name'" not in out and "7" not in users(tmp_path / "a.sqlite")


def test_a_csv_only_written_to_takes_a_mapped_name_as_a_new_column(tmp_path: Path) -> None:
    """Rules that only write the CSV: a name its header lacks becomes a new column."""
    make_users(tmp_path / "a.sqlite", seed(2))
    csv_path = tmp_path / "contacts.csv"
    csv_path.write_text("record_id,name,status\n7,Seven,active\n")
    write_config(tmp_path, SQLITE_A, CSV_B, rules=A_TO_B_ONLY)
    ok(run_once(tmp_path))
    header, *rows = csv_path.read_text().splitlines()
    assert header.split(",")[-1] == "email" and len(rows) == 3, csv_path.read_text()
