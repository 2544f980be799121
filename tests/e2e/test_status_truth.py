"""`recsync status` tells the truth: per side an open circuit, a rate-limit wait, a held
mass delete and the last error, the exit code for scripts, and the pending records of a
pipeline whose target crashes. A real recsyncd process, the real CLI, mock CRM servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from recsync.mock.salesforce import SalesforceMock
from tests.e2e.helpers import (
    install_connector,
    make_users,
    recsyncd_cmd,
    sql,
    users,
    wait_for,
    write_config,
)

SQLITE_A = '{{ connector = "sqlite", path = "{}", table = "users", key = "record_id" }}'
SF_RULES = """
[contacts]
a_to_b = ["create", "update", "delete"]
b_to_a = ["create", "update", "delete"]
[contacts.mappings]
record_id = "Record_Id__c"
full_name = "LastName"
email_address = "Email"
status = "Status__c"
"""
PLAIN_RULES = SF_RULES.replace('"Record_Id__c"', '"record_id"').replace(
    '"LastName"', '"full_name"').replace('"Email"', '"email_address"').replace(
    '"Status__c"', '"status"')


@dataclass
class Daemon:
    folder: Path
    proc: subprocess.Popen[str]

    @property
    def endpoint(self) -> str:
        return f"ipc://{self.folder}/run/control.sock"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "recsync.cli", "--endpoint", self.endpoint, *args],
            capture_output=True, text=True, timeout=60)

    def status(self) -> dict[str, dict[str, Any]]:
        """Pipeline id -> its status row."""
        result = self.cli("--json", "status")
        assert result.returncode in (0, 4), result.stdout + result.stderr
        return {p["pipeline"]: p for p in json.loads(result.stdout)["pipelines"]}


def start(folder: Path, pythonpath: Path | None = None) -> Daemon:
    env = dict(os.environ, RUNTIME_DIRECTORY=str(folder / "run"),
               LOGS_DIRECTORY=str(folder / "logs"))
    env.pop("NOTIFY_SOCKET", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(recsyncd_cmd(folder, folder / "state"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    daemon = Daemon(folder, proc)
    wait_for(lambda: proc.poll() is not None or daemon.cli("status").returncode in (0, 4),
             what="recsyncd to answer")
    assert proc.poll() is None, "recsyncd exited"
    return daemon


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        d.proc.terminate()
        try:
            d.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            d.proc.kill()


@pytest.fixture
def mocks() -> Iterator[list[SalesforceMock]]:
    running = [SalesforceMock(), SalesforceMock()]
    for mock in running:
        mock.start()
    yield running
    for mock in running:
        mock.stop()


def sf_side(mock: SalesforceMock) -> str:
    return ('{ connector = "salesforce", mock = true, key = "Record_Id__c", '
            f'instance_url = "{mock.url}", daily_reserve = 0 }}')


def test_open_circuit_rate_limit_wait_and_last_error_show_per_side(
    tmp_path: Path, mocks: list[SalesforceMock], daemons: list[Daemon]
) -> None:
    limited, broken = mocks
    for name in ("a1", "a2"):
        make_users(tmp_path / f"{name}.sqlite", [(i, f"U{i}", f"u{i}@x", "active")
                                                 for i in range(1, 6)])
    write_config(tmp_path, SQLITE_A.format("a1.sqlite"), sf_side(limited), rules=SF_RULES)
    with (tmp_path / "customer_settings.toml").open("a") as f:
        f.write(textwrap.dedent(f"""
            [customers.test.pipelines.broken]
            rules = "contacts"
            a = {SQLITE_A.format("a2.sqlite")}
            b = {sf_side(broken)}
            circuit_breaker = {{ failure_threshold = 2, reset_timeout = 120 }}
            """))
    daemon = start(tmp_path)
    daemons.append(daemon)
    wait_for(lambda: len(limited.list_records()) == 5 and len(broken.list_records()) == 5,
             what="the first sync")
    limited.set_faults(status_429_retry_after=60)
    broken.set_faults(error_rate=1.0)
    t0 = time.time()

    def truthful() -> dict[str, dict[str, Any]] | None:
        st = daemon.status()
        lim, brk = st["test/p"]["sides"]["b"], st["test/broken"]["sides"]["b"]
        return st if (lim["rate_limited_until"] and brk["circuit"] == "open"
                      and brk["last_error"]) else None

    st = wait_for(truthful, what="the circuit and the wait in status")
    lim, brk = st["test/p"]["sides"]["b"], st["test/broken"]["sides"]["b"]
    assert t0 + 30 < lim["rate_limited_until"] <= time.time() + 61
    assert lim["circuit"] == "closed"
    assert brk["circuit_retry_at"] > t0 + 60
    assert "HTTP 50" in brk["last_error"] and brk["last_error_at"] >= t0
    assert st["test/broken"]["sides"]["a"] == {
        "circuit": "closed", "circuit_retry_at": None, "rate_limited_until": None,
        "held_delete": None, "last_error": None, "last_error_at": None, "bulk": None,
        "budget": None}
    human = daemon.cli("status")
    assert human.returncode == 0, human.stderr  # running: waiting is not failing
    assert "test/p side b: rate limited until" in human.stdout
    assert "test/broken side b: circuit open (next probe" in human.stdout
    assert "last error" in human.stdout and "HTTP 50" in human.stdout
    # the live stats carry the same per-side figures (the dashboard reads them)
    stats = {s["pipeline"]: s for s in json.loads(daemon.cli("--json", "stats").stdout)}
    assert stats["test/broken"]["sides"]["b"]["circuit"] == "open"


def test_held_mass_delete_shows_and_status_exits_4_until_confirmed(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    make_users(tmp_path / "a.sqlite", [(i, f"U{i}", f"u{i}@x", "active") for i in range(1, 21)])
    make_users(tmp_path / "b.sqlite", [])
    write_config(tmp_path, SQLITE_A.format("a.sqlite"), SQLITE_A.format("b.sqlite"),
                 rules=PLAIN_RULES)
    daemon = start(tmp_path)
    daemons.append(daemon)
    wait_for(lambda: len(users(tmp_path / "b.sqlite")) == 20, what="the first sync")
    assert daemon.cli("status").returncode == 0
    sql(tmp_path / "a.sqlite", "DELETE FROM users WHERE record_id > 5")
    st = wait_for(lambda: (s := daemon.status())["test/p"]["state"] == "held" and s,
                  what="the guard to hold the pass")
    held = st["test/p"]["sides"]["a"]["held_delete"]
    assert "would delete 15 of 20" in held
    assert "recsync deletes confirm test --pipeline p --side a" in held  # what to run
    human = daemon.cli("status")
    assert human.returncode == 4, human.stdout + human.stderr
    assert "test/p side a: mass delete held: side a would delete 15 of 20" in human.stdout
    assert daemon.cli("--json", "status").returncode == 4
    assert daemon.cli("status", "3").returncode == 0  # a record's status: no such exit
    assert len(users(tmp_path / "b.sqlite")) == 20  # nothing deleted yet

    confirmed = daemon.cli("deletes", "confirm", "test", "--pipeline", "p", "--side", "a")
    assert confirmed.returncode == 0
    wait_for(lambda: len(users(tmp_path / "b.sqlite")) == 5, what="the confirmed deletes")
    wait_for(lambda: daemon.cli("status").returncode == 0, what="status to exit 0 again")
    assert daemon.status()["test/p"]["sides"]["a"]["held_delete"] is None


def test_a_mass_delete_read_as_many_pages_is_held_whole(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """One DELETE of 30 of 40 rows, read as pages of 4 (each 10% of the linked records):
    nothing is deleted on side B until the pass is confirmed, then all 30 are."""
    make_users(tmp_path / "a.sqlite", [(i, f"U{i}", f"u{i}@x", "active") for i in range(1, 41)])
    make_users(tmp_path / "b.sqlite", [])
    write_config(tmp_path, SQLITE_A.format("a.sqlite"), SQLITE_A.format("b.sqlite"),
                 rules=PLAIN_RULES, settings="page_size = 4")
    daemon = start(tmp_path)
    daemons.append(daemon)
    wait_for(lambda: len(users(tmp_path / "b.sqlite")) == 40, what="the first sync")
    sql(tmp_path / "a.sqlite", "DELETE FROM users WHERE record_id > 10")
    st = wait_for(lambda: (s := daemon.status())["test/p"]["state"] == "held" and s,
                  what="the guard to hold the pass")
    assert "of 40 linked records" in st["test/p"]["sides"]["a"]["held_delete"]
    assert len(users(tmp_path / "b.sqlite")) == 40  # the pages read so far wait too
    confirmed = daemon.cli("deletes", "confirm", "test", "--pipeline", "p", "--side", "a")
    assert confirmed.returncode == 0
    wait_for(lambda: len(users(tmp_path / "b.sqlite")) == 10, what="the confirmed deletes")
    assert sorted(users(tmp_path / "b.sqlite"), key=int) == [str(k) for k in range(1, 11)]


FULL_PAGES = '''
"""SQLite whose change pages say "more" when full (as many APIs do: a full page may have a
next one), and which dies (as by kill -9) reading the page after a full page of deletes
while a file `crash` exists."""
import os
from pathlib import Path
import msgspec
from recsync.connectors.sqlite import SqliteConnector


class FullPagesConnector(SqliteConnector):
    after_deletes = False

    def read_changes(self, cursor, limit):
        page = super().read_changes(cursor, limit)
        crash = Path(self.path).parent / "crash"
        if self.after_deletes and crash.exists() and not page.changes:
            crash.unlink()
            os._exit(9)
        full = len(page.changes) == limit
        self.after_deletes = full and all(c.op == "delete" for c in page.changes)
        if full and not page.more:
            page = msgspec.structs.replace(page, more=True)
        return page
'''


def test_deletes_held_when_a_crash_cut_their_pass_go_out_after_the_restart(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """recsyncd dies between a full page of deletes (which said "more") and the empty page
    that ends the pass: the next run ends the pass and writes them."""
    plugin = install_connector(tmp_path, "fullpages", FULL_PAGES, "FullPagesConnector")
    make_users(tmp_path / "a.sqlite", [(i, f"U{i}", f"u{i}@x", "active") for i in range(1, 41)])
    make_users(tmp_path / "b.sqlite", [])
    write_config(tmp_path, SQLITE_A.format("a.sqlite").replace('"sqlite"', '"fullpages"'),
                 SQLITE_A.format("b.sqlite"), rules=PLAIN_RULES, settings="page_size = 4")
    daemon = start(tmp_path, pythonpath=plugin)
    daemons.append(daemon)
    wait_for(lambda: len(users(tmp_path / "b.sqlite")) == 40, what="the first sync")
    (tmp_path / "crash").touch()
    sql(tmp_path / "a.sqlite", "DELETE FROM users WHERE record_id > 36")  # one full page
    wait_for(lambda: daemon.proc.poll() is not None, what="recsyncd to die mid-pass")
    assert len(users(tmp_path / "b.sqlite")) == 40  # the page's deletes were held
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(plugin),
                                                       os.environ.get("PYTHONPATH", "")]),
               RUNTIME_DIRECTORY=str(tmp_path / "run2"))
    env.pop("NOTIFY_SOCKET", None)
    done = subprocess.run(recsyncd_cmd(tmp_path, tmp_path / "state", "--once", "--timeout",
                                       "60"), capture_output=True, text=True, env=env,
                          timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(users(tmp_path / "b.sqlite"), key=int) == [str(k) for k in range(1, 37)]


CRASHY = '''
"""A plug-in connector with a bug: SQLite whose write crashes while a file `crash` exists."""
from pathlib import Path
from recsync.connectors.sqlite import SqliteConnector


class CrashyConnector(SqliteConnector):
    """SQLite with a bug in write()."""

    def write(self, ops):
        if (Path(self.path).parent / "crash").exists():
            raise RuntimeError("the connector has a bug")
        return super().write(ops)
'''


def test_a_crashing_target_shows_its_pending_records(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    make_users(tmp_path / "a.sqlite", [(i, f"U{i}", f"u{i}@x", "active") for i in range(1, 31)])
    make_users(tmp_path / "b.sqlite", [])
    crashy = '{ connector = "crashy", path = "b.sqlite", table = "users", key = "record_id" }'
    write_config(tmp_path, SQLITE_A.format("a.sqlite"), crashy, rules=PLAIN_RULES)
    (tmp_path / "crash").touch()
    daemon = start(tmp_path, pythonpath=install_connector(
        tmp_path, "crashy", CRASHY, "CrashyConnector"))
    daemons.append(daemon)
    st = wait_for(lambda: (s := daemon.status()["test/p"])["queued"] == 30
                  and s["sides"]["b"]["last_error"] and s,
                  what="the 30 unwritten records to show as queued, and the crash")
    assert st["restarts"] >= 1 and st["synced_a_to_b"] == 0
    assert "the connector has a bug" in st["sides"]["b"]["last_error"]
    assert st["sides"]["b"]["last_error"].startswith("connector_b: ")
    assert "test/p side b: last error" in daemon.cli("status").stdout
    (tmp_path / "crash").unlink()  # the bug is fixed: the next incarnation writes them
    wait_for(lambda: len(users(tmp_path / "b.sqlite")) == 30, timeout=60,
             what="the pending records to be written")
    wait_for(lambda: daemon.status()["test/p"]["queued"] == 0, what="nothing queued")
