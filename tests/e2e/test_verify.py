"""`recsync verify [--repair]` end to end: a real recsyncd process, real sides (SQLite, a
CSV file, the mock Salesforce started in the test process), sides made to drift behind
recsync's back, and the real `recsync` CLI."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from recsync.client import ControlClient
from recsync.mock.salesforce import SalesforceMock
from tests.e2e.helpers import (
    by_key,
    make_users,
    read_csv,
    recsyncd_cmd,
    sql,
    users,
    wait_for,
    write_config,
    write_csv,
)

SQLITE_A = '{ connector = "sqlite", path = "a.sqlite", table = "users", key = "record_id" }'
CSV_B = '{ connector = "file", path = "b.csv", key = "record_id" }'
ONE_WAY_RULES = """
[contacts]
a_to_b = ["create", "update", "delete"]
b_to_a = []
[contacts.mappings]
record_id = "record_id"
full_name = "name"
email_address = "email"
status = "status"
"""
SF_RULES = """
[contacts]
a_to_b = ["create", "update", "delete"]
b_to_a = ["create", "update", "delete"]
[contacts.mappings]
record_id = "Record_Id__c"
full_name = "LastName"
email_address = "Email"
status = "Status__c"
[contacts.filters]
status = { in = ["active", "pending"] }
"""
CATEGORIES = ("missing_a", "missing_b", "extra_a", "extra_b", "different")


@dataclass
class Daemon:
    folder: Path
    proc: subprocess.Popen[str]
    endpoint: str

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "recsync.cli", "--endpoint", self.endpoint, *args],
            capture_output=True, text=True, timeout=120)

    def verify(self, *args: str, code: int | None = None) -> dict[str, Any]:
        result = self.cli("--json", "verify", "test", "--pipeline", "p", *args)
        if code is not None:
            assert result.returncode == code, result.stdout + result.stderr
        (one,) = json.loads(result.stdout)
        return one  # type: ignore[no-any-return]

    def status(self) -> dict[str, Any]:
        result = self.cli("--json", "status")
        assert result.returncode in (0, 4), result.stderr  # 4: held or in error
        (one,) = json.loads(result.stdout)["pipelines"]
        return one  # type: ignore[no-any-return]

    def idle(self) -> bool:
        s = self.status()
        return s["queued"] == 0 and s["in_flight"] == 0


def start(folder: Path) -> Daemon:
    env = dict(os.environ, RUNTIME_DIRECTORY=str(folder / "run"))
    env.pop("NOTIFY_SOCKET", None)
    proc = subprocess.Popen(recsyncd_cmd(folder, folder / "state"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    daemon = Daemon(folder, proc, f"ipc://{folder}/run/control.sock")
    # 4: a pipeline in error (some tests want one): the control socket answered all the same
    wait_for(lambda: daemon.cli("status").returncode in (0, 4),
             what="recsyncd's control socket")
    return daemon


@pytest.fixture
def running() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        if d.proc.poll() is None:
            d.proc.send_signal(signal.SIGTERM)
            try:
                d.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                d.proc.kill()


def drop_triggers(db: Path, daemon: Daemon) -> None:
    """Changes made after this are invisible to recsync while the pipeline is paused (once it
    polls again, it notices the missing triggers, puts them back and lists the table)."""
    paused = daemon.cli("pause", "test")
    assert paused.returncode == 0, paused.stderr
    for name in ("recsync_users_ai", "recsync_users_au", "recsync_users_ad"):
        sql(db, f"DROP TRIGGER {name}")


def keys(result: dict[str, Any]) -> dict[str, list[str]]:
    return {c: result[c]["keys"] for c in CATEGORIES if result[c]["count"]}


def csv_rows(path: Path) -> dict[str, tuple[str, ...]]:
    return {k: (r["name"], r["email"], r["status"]) for k, r in by_key(read_csv(path)).items()}


def active(rows: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    return {k: v for k, v in rows.items() if v[2] in ("active", "pending")}


# ---------------------------------------------------------------------------- SQLite <-> CSV


def test_csv_drift_is_reported_by_category_and_repaired(
        tmp_path: Path, running: list[Daemon]) -> None:
    db = tmp_path / "a.sqlite"
    make_users(db, [(i, f"User {i}", f"u{i}@x.org", "inactive" if i == 10 else "active")
                    for i in range(1, 21)])
    write_config(tmp_path, SQLITE_A, CSV_B)  # contacts: b_to_a syncs creates and updates
    daemon = start(tmp_path)
    running.append(daemon)
    csv_path = tmp_path / "b.csv"
    wait_for(lambda: csv_path.exists() and csv_rows(csv_path) == active(users(db)),
             what="the first sync")
    agreed = daemon.verify(code=0)
    assert agreed["agree"] and (agreed["a_records"], agreed["b_records"]) == (20, 19)
    assert agreed["ignored"] == 1  # the inactive user: on A only, as the filter says

    drop_triggers(db, daemon)
    sql(db, "UPDATE users SET full_name = 'Changed Behind' WHERE record_id = 3")
    sql(db, "INSERT INTO users (record_id, full_name, email_address, status) "
            "VALUES (21, 'Extra Row', 'x21@x.org', 'active')")
    lines = read_csv(csv_path)
    write_csv(csv_path, [r for r in lines if r["record_id"] != "5"], list(lines[0]))

    found = daemon.verify(code=1)
    assert not found["agree"]
    assert keys(found) == {"missing_b": ["5"], "extra_a": ["21"], "different": ["3"]}
    human = daemon.cli("verify", "test")
    assert human.returncode == 1
    assert "test/p: sides differ" in human.stdout and "missing on b" in human.stdout

    repaired = daemon.verify("--repair", code=1)
    assert repaired["repair"] == {"queued": {"a_to_b": 3, "b_to_a": 0}, "skipped": 0,
                                  "held": None}
    wait_for(daemon.idle, what="the repair to be written")
    again = daemon.verify(code=0)
    assert again["agree"] and keys(again) == {}
    assert csv_rows(csv_path) == active(users(db))
    assert csv_rows(csv_path)["3"][0] == "Changed Behind"
    history = json.loads(daemon.cli("--json", "status", "21").stdout)["records"][0]["history"]
    assert any(h["event"] == "repair" for h in history)


def test_a_repair_that_deletes_too_much_is_held_until_confirmed(
        tmp_path: Path, running: list[Daemon]) -> None:
    db = tmp_path / "a.sqlite"
    make_users(db, [(i, f"User {i}", f"u{i}@x.org", "active") for i in range(1, 21)])
    write_config(tmp_path, SQLITE_A, CSV_B, rules=ONE_WAY_RULES)
    daemon = start(tmp_path)
    running.append(daemon)
    csv_path = tmp_path / "b.csv"
    wait_for(lambda: csv_path.exists() and len(read_csv(csv_path)) == 20,
             what="the first sync")
    wait_for(daemon.idle, what="the first sync to settle")
    drop_triggers(db, daemon)
    sql(db, "DELETE FROM users WHERE record_id > 5")  # 15 of 20, over the 0.5 threshold

    found = daemon.verify(code=1)
    assert found["missing_a"]["count"] == 15
    assert found["missing_a"]["keys"][:3] == ["6", "7", "8"]  # numbers in order
    held = daemon.verify("--repair", code=1)["repair"]
    assert "15 of 20 linked records on side b" in held["held"] and held["queued"] == {
        "a_to_b": 0, "b_to_a": 0}
    assert "`recsync deletes confirm test --pipeline p --side a`" in held["held"]
    assert len(read_csv(csv_path)) == 20  # nothing deleted
    wait_for(lambda: daemon.status()["state"] == "held", what="status to show the hold")

    confirm = daemon.cli("deletes", "confirm", "test", "--pipeline", "p", "--side", "a")
    assert confirm.returncode == 0, confirm.stderr
    done = daemon.verify("--repair", code=1)["repair"]
    assert done == {"queued": {"a_to_b": 15, "b_to_a": 0}, "skipped": 0, "held": None}
    wait_for(daemon.idle, what="the deletes to be written")
    assert daemon.verify(code=0)["agree"]
    assert sorted(by_key(read_csv(csv_path))) == ["1", "2", "3", "4", "5"]


# ---------------------------------------------------------------------------- SQLite <-> Salesforce


@pytest.fixture
def salesforce(tmp_path: Path) -> Iterator[SalesforceMock]:
    mock = SalesforceMock(data=tmp_path / "salesforce.json")
    mock.start()
    try:
        yield mock
    finally:
        mock.stop()


def sf_rows(mock: SalesforceMock) -> dict[str, tuple[str, ...]]:
    return {str(r["Record_Id__c"]): (r["LastName"], r["Email"], r["Status__c"])
            for r in mock.list_records()}


def test_salesforce_drift_is_reported_and_repaired(
        tmp_path: Path, running: list[Daemon], salesforce: SalesforceMock) -> None:
    db = tmp_path / "a.sqlite"
    make_users(db, [(i, f"User {i}", f"u{i}@x.org", "active") for i in range(1, 13)])
    side_b = ('{ connector = "salesforce", mock = true, key = "Record_Id__c", '
              f'instance_url = "{salesforce.url}", daily_reserve = 0 }}')
    write_config(tmp_path, SQLITE_A, side_b, rules=SF_RULES)
    daemon = start(tmp_path)
    running.append(daemon)
    wait_for(lambda: sf_rows(salesforce) == users(db), what="the first sync")
    assert daemon.verify(code=0)["agree"]

    drop_triggers(db, daemon)
    sql(db, "UPDATE users SET email_address = 'new4@x.org' WHERE record_id = 4")
    sql(db, "INSERT INTO users (record_id, full_name, email_address, status) "
            "VALUES (30, 'Extra Row', 'x30@x.org', 'active')")
    sql(db, "DELETE FROM users WHERE record_id = 7")
    sql(db, "INSERT INTO users (record_id, full_name, email_address, status) "
            "VALUES (31, 'Filtered Out', 'x31@x.org', 'inactive')")  # the filter leaves it

    found = daemon.verify(code=1)
    assert keys(found) == {"missing_a": ["7"], "extra_a": ["30"], "different": ["4"]}

    repaired = daemon.verify("--repair", code=1)["repair"]
    # 4 and 30 go to Salesforce; 7, which A lost, comes back from Salesforce
    assert repaired["queued"] == {"a_to_b": 2, "b_to_a": 1} and repaired["held"] is None
    wait_for(daemon.idle, what="the repair to be written")
    assert daemon.verify(code=0)["agree"]
    assert sf_rows(salesforce) == active(users(db))
    assert sf_rows(salesforce)["4"][1] == "new4@x.org"
    assert users(db)["7"] == ("User 7", "u7@x.org", "active")


def test_verify_of_an_unknown_pipeline_is_refused(
        tmp_path: Path, running: list[Daemon]) -> None:
    make_users(tmp_path / "a.sqlite", [(1, "User 1", "u1@x.org", "active")])
    write_config(tmp_path, SQLITE_A, CSV_B)
    daemon = start(tmp_path)
    running.append(daemon)
    result = daemon.cli("verify", "nobody")
    assert result.returncode == 1
    assert "customer 'nobody' has no pipelines" in result.stderr and "[NOT_FOUND]" in result.stderr
    usage = daemon.cli("verify", "--pipeline", "p")
    assert usage.returncode == 2 and "--pipeline needs a CUSTOMER" in usage.stderr
    with sqlite3.connect(tmp_path / "a.sqlite") as conn:  # nothing was changed
        assert conn.execute("SELECT COUNT(*) FROM users").fetchone() == (1,)
    conn.close()


def test_progress_goes_out_as_events_while_sides_are_listed(
        tmp_path: Path, running: list[Daemon]) -> None:
    db = tmp_path / "a.sqlite"
    make_users(db, [(i, f"User {i}", f"u{i}@x.org", "active") for i in range(1, 301)])
    write_config(tmp_path, SQLITE_A, CSV_B, settings="page_size = 100\n")
    daemon = start(tmp_path)
    running.append(daemon)
    wait_for(lambda: (tmp_path / "b.csv").exists() and len(read_csv(tmp_path / "b.csv")) == 300,
             what="the first sync")
    with ControlClient(daemon.endpoint) as client, \
            client.subscribe(["stats", "verify_progress"]) as sub:
        wait_for(lambda: sub.recv(0.5) is not None, what="the event stream")  # subscribed
        assert daemon.verify(code=0)["agree"]
        seen: list[dict[str, Any]] = []

        def finished() -> bool:
            event = sub.recv(0.5)
            if event is not None and event.kind == "verify_progress":
                seen.append(event.data)
            return any(e["phase"] == "done" for e in seen)

        wait_for(finished, what="the last progress event")
    listed_a = [e for e in seen if e["phase"] == "listing a"]
    assert listed_a[0]["done"] == 0 and listed_a[0]["total"] == 300  # SQLite knows its size
    assert listed_a[-1]["done"] == 300
    assert [e for e in seen if e["phase"] == "listing b"][-1]["done"] == 300
    assert seen[-1] == {"pipeline": "test/p", "phase": "done", "side": None, "done": 600,
                        "total": None}


def test_a_verify_held_up_by_a_rate_limit_tells_the_client_it_waits(
        tmp_path: Path, running: list[Daemon]) -> None:
    """A rate-limit wait can outlast the client's --timeout (which bounds the silence):
    verify says it waits instead of leaving the client to give up (exit 3, 'is it
    running?') while recsyncd verifies on."""
    db = tmp_path / "a.sqlite"
    make_users(db, [(i, f"User {i}", f"u{i}@x.org", "active") for i in range(1, 251)])
    side_b = ('{ connector = "file", path = "b.csv", key = "record_id", '
              'rate_limit = { max_requests = 4, window_seconds = 8 } }')
    write_config(tmp_path, SQLITE_A, side_b, settings="page_size = 100\n")
    daemon = start(tmp_path)
    running.append(daemon)
    wait_for(lambda: (tmp_path / "b.csv").exists() and len(read_csv(tmp_path / "b.csv")) == 250,
             what="the first sync")
    # three pages of b and 3 reads a window (a quarter is kept for writes): it must wait
    result = daemon.cli("--timeout", "3", "verify", "test")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "test/p: sides agree" in result.stdout
    assert "waiting until" in result.stderr


def test_a_verify_waiting_on_a_side_leaves_the_control_socket_free_and_runs_alone(
        tmp_path: Path, running: list[Daemon], salesforce: SalesforceMock) -> None:
    db = tmp_path / "a.sqlite"
    make_users(db, [(i, f"User {i}", f"u{i}@x.org", "active") for i in range(1, 6)])
    side_b = ('{ connector = "salesforce", mock = true, key = "Record_Id__c", '
              f'instance_url = "{salesforce.url}", daily_reserve = 0 }}')
    write_config(tmp_path, SQLITE_A, side_b, rules=SF_RULES)
    daemon = start(tmp_path)
    running.append(daemon)
    wait_for(lambda: sf_rows(salesforce) == users(db), what="the first sync")
    listing, release = threading.Event(), threading.Event()
    handle = salesforce.handle

    def held(method: str, target: str, headers: Any, body: bytes) -> Any:
        if "ORDER+BY+Id" in target or "ORDER%20BY%20Id" in target:  # verify's listing
            listing.set()
            release.wait(60)
        return handle(method, target, headers, body)

    salesforce.handle = held  # type: ignore[method-assign]
    result: list[subprocess.CompletedProcess[str]] = []
    # a minute of silence allowed: side b is held until the two calls below are done,
    # each a CLI process start that takes seconds on a loaded machine
    thread = threading.Thread(target=lambda: result.append(
        daemon.cli("--timeout", "60", "--json", "verify", "test")))
    thread.start()
    try:
        assert listing.wait(60), "verify never listed side b"
        status = daemon.cli("--json", "status")  # answered while verify waits on side b
        assert status.returncode == 0 and not result
        assert json.loads(status.stdout)["pipelines"][0]["pipeline"] == "test/p"
        second = daemon.cli("verify", "test")  # one verify of a pipeline at a time
        assert second.returncode == 1
        assert "pipeline test/p is being verified already" in second.stderr
        assert "[UNAVAILABLE]" in second.stderr
    finally:
        release.set()
        thread.join(60)
    assert result[0].returncode == 0, result[0].stderr
    assert json.loads(result[0].stdout)[0]["agree"]


def test_verify_of_a_pipeline_that_is_not_running_says_so(
        tmp_path: Path, running: list[Daemon]) -> None:
    make_users(tmp_path / "a.sqlite", [(1, "User 1", "u1@x.org", "active")])
    write_config(tmp_path, SQLITE_A, '{ connector = "file", path = "nowhere/b.csv", '
                                     'key = "record_id" }')
    daemon = start(tmp_path)
    running.append(daemon)
    wait_for(lambda: daemon.status()["state"] == "error", what="the pipeline to fail")
    result = daemon.cli("verify", "test")
    assert result.returncode == 1
    assert "pipeline test/p is error; verify needs the pipeline running" in result.stderr
    assert "[UNAVAILABLE]" in result.stderr


def test_a_pipeline_that_cannot_be_verified_does_not_hide_the_others(
        tmp_path: Path, running: list[Daemon]) -> None:
    make_users(tmp_path / "a.sqlite", [(1, "User 1", "u1@x.org", "active")])
    write_config(tmp_path, SQLITE_A, '{ connector = "file", path = "nowhere/b.csv", '
                                     'key = "record_id" }', settings=f"""
        [customers.test.pipelines.q]
        rules = "contacts"
        a = {SQLITE_A}
        b = {CSV_B}
        """)
    daemon = start(tmp_path)
    running.append(daemon)
    wait_for(lambda: (tmp_path / "b.csv").exists() and len(read_csv(tmp_path / "b.csv")) == 1,
             what="pipeline q to sync its record")

    result = daemon.cli("--json", "verify", "test")
    assert result.returncode == 1, result.stderr
    by_pipeline = {r["pipeline"]: r for r in json.loads(result.stdout)}
    assert by_pipeline["test/q"]["agree"] and by_pipeline["test/q"]["error"] is None
    assert by_pipeline["test/q"]["a_records"] == 1
    assert not by_pipeline["test/p"]["agree"]
    assert "[UNAVAILABLE] pipeline test/p is error" in by_pipeline["test/p"]["error"]

    human = daemon.cli("verify", "test")
    assert human.returncode == 1
    assert "test/q: sides agree" in human.stdout
    assert "test/p: not verified: [UNAVAILABLE]" in human.stdout


def test_a_repair_while_deletes_are_held_queues_nothing_and_says_why(
        tmp_path: Path, running: list[Daemon]) -> None:
    db = tmp_path / "a.sqlite"
    make_users(db, [(i, f"User {i}", f"u{i}@x.org", "active") for i in range(1, 21)])
    write_config(tmp_path, SQLITE_A, CSV_B)  # b_to_a syncs creates: a repair could undo
    daemon = start(tmp_path)
    running.append(daemon)
    csv_path = tmp_path / "b.csv"
    wait_for(lambda: csv_path.exists() and len(read_csv(csv_path)) == 20,
             what="the first sync")
    sql(db, "DELETE FROM users WHERE record_id > 5")  # 15 of 20: the guard holds the pass
    wait_for(lambda: daemon.status()["state"] == "held", what="the guard to hold")

    repair = daemon.verify("--repair", code=1)["repair"]
    assert repair["queued"] == {"a_to_b": 0, "b_to_a": 0}
    assert "held by the mass-delete guard on side a" in repair["held"]
    assert "recsync deletes confirm test --pipeline p --side a" in repair["held"]
    assert len(users(db)) == 5 and len(read_csv(csv_path)) == 20  # nothing undone
