"""The smaller `recsync` commands through the real CLI (subprocesses) against a real
recsyncd: mock faults, deletes confirm, pause/resume counts, rules test, sync event,
demo seed, and what --help offers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import make_users, recsyncd_cmd, sql, users, wait_for

RULES = """
[contacts]
a_to_b = ["create", "update", "delete"]
b_to_a = ["create", "update"]
[contacts.mappings]
record_id = "record_id"
full_name = "full_name"
email_address = "email_address"
status = "status"
[contacts.filters]
status = { in = ["active", "pending"] }

[contacts_sf]
a_to_b = ["create", "update"]
b_to_a = []
[contacts_sf.mappings]
record_id = "Record_Id__c"
full_name = "LastName"

[prospects]
a_to_b = ["create", "update"]
b_to_a = []
[prospects.mappings]
record_id = "externalId"
full_name = "lastName"
"""
SETTINGS = """
[defaults]
flush_interval = 0.05
poll_interval = 0.1
retry_base_delay = 0.05
retry_max_delay = 0.2
[defaults.rate_limit]
max_requests = 100000
window_seconds = 1

[customers.acme.pipelines.people]
rules = "contacts"
a = { connector = "sqlite", path = "a.sqlite", table = "users", key = "record_id" }
b = { connector = "sqlite", path = "b.sqlite", table = "users", key = "record_id" }

[customers.acme.pipelines.crm]
rules = "contacts_sf"
a = { connector = "sqlite", path = "crm.sqlite", table = "users", key = "record_id" }
b = { connector = "salesforce", mock = true, key = "Record_Id__c", daily_reserve = 0 }

[customers.acme.pipelines.prospects]
rules = "prospects"
a = { connector = "sqlite", path = "crm.sqlite", table = "users", key = "record_id" }
b = { connector = "outreach", mock = true, key = "externalId" }
"""


@dataclass
class Daemon:
    folder: Path
    proc: subprocess.Popen[str]
    endpoint: str

    def cli(self, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        result = cli("--endpoint", self.endpoint, *args)
        assert result.returncode == code, result.stdout + result.stderr
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.cli("--json", *args).stdout)

    def state(self, pipeline: str) -> str:
        status = cli("--endpoint", self.endpoint, "--json", "status")
        assert status.returncode in (0, 4), status.stderr  # 4: a pipeline is held
        rows = json.loads(status.stdout)["pipelines"]
        return str(next(r["state"] for r in rows if r["pipeline"] == pipeline))


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "recsync.cli", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    make_users(tmp_path / "a.sqlite", [(i, f"User {i}", f"u{i}@x.org", "active")
                                       for i in range(1, 21)])
    make_users(tmp_path / "b.sqlite", [])
    make_users(tmp_path / "crm.sqlite", [(1, "Crm One", "c1@x.org", "active")])
    (tmp_path / "customer_settings.toml").write_text(SETTINGS)
    (tmp_path / "rules.toml").write_text(RULES)
    env = dict(os.environ, RUNTIME_DIRECTORY=str(tmp_path / "run"),
               LOGS_DIRECTORY=str(tmp_path / "logs"))
    env.pop("NOTIFY_SOCKET", None)
    proc = subprocess.Popen(recsyncd_cmd(tmp_path, tmp_path / "state"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    d = Daemon(tmp_path, proc, f"ipc://{tmp_path}/run/control.sock")
    try:
        wait_for(lambda: (tmp_path / "run" / "control.sock").exists(), what="recsyncd ready")
        wait_for(lambda: users(tmp_path / "b.sqlite") == users(tmp_path / "a.sqlite"),
                 what="the first sync")
        wait_for(lambda: all(d.state(f"acme/{n}") == "running" for n in ("crm", "prospects")),
                 what="the CRM pipelines")
        yield d
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def sf_names(d: Daemon) -> dict[str, str]:
    return {str(r["Record_Id__c"]): r["LastName"] for r in d.json("mock", "list", "salesforce")}


def test_mock_faults_print_exactly_turn_429_off_and_clear(daemon: Daemon) -> None:
    out = daemon.cli("mock", "faults", "salesforce", "--error-rate", "0.02",
                     "--retry-after", "5").stdout
    shown = dict(line.split(":", 1) for line in out.splitlines()[1:])
    assert {k.strip(): v.strip() for k, v in shown.items()} == {
        "error_rate": "0.02", "latency": "0.0", "status_429_retry_after": "5.0",
        "limit_after": "off", "drop_rate": "0.0", "error_status": "503"}
    # --retry-after 0 turns 429s off: the mock answers again and a change syncs
    out = daemon.cli("mock", "faults", "salesforce", "--retry-after", "0").stdout
    assert "status_429_retry_after: off" in out
    assert daemon.json("mock", "faults", "salesforce")["status_429_retry_after"] is None
    daemon.cli("mock", "faults", "salesforce", "--error-rate", "0")
    sql(daemon.folder / "crm.sqlite",
        "INSERT INTO users (record_id, full_name, status) VALUES (2, 'After 429', 'active')")
    wait_for(lambda: sf_names(daemon).get("2") == "After 429", what="record 2 in Salesforce")
    # --clear turns every fault off at once
    daemon.cli("mock", "faults", "salesforce", "--latency", "0.25", "--drop-rate", "0.1",
               "--limit-after", "1000", "--retry-after", "7")
    cleared = daemon.json("mock", "faults", "salesforce", "--clear")
    assert {k: cleared[k] for k in ("error_rate", "latency", "status_429_retry_after",
                                    "limit_after", "drop_rate")} == {
        "error_rate": 0.0, "latency": 0.0, "status_429_retry_after": None,
        "limit_after": None, "drop_rate": 0.0}
    assert daemon.json("mock", "faults", "outreach", "--clear")["latency"] == 0.0
    bad = daemon.cli("mock", "faults", "outreach", "--limit-after", "3", code=1)
    assert "has no fault 'limit_after'" in bad.stderr


def test_mock_faults_refuse_values_out_of_range_and_keep_the_faults(daemon: Daemon) -> None:
    daemon.cli("mock", "faults", "salesforce", "--error-rate", "0.1")
    for flag, value in (("--error-rate", "7"), ("--drop-rate", "-1"), ("--latency", "-3"),
                        ("--latency", "1e308"), ("--error-rate", "nan"),
                        ("--limit-after", "-2")):
        bad = daemon.cli("mock", "faults", "salesforce", flag, value, code=1)
        assert flag.lstrip("-").replace("-", "_") in bad.stderr, bad.stderr
        assert "[INVALID]" in bad.stderr, bad.stderr
    now = daemon.json("mock", "faults", "salesforce")
    assert (now["error_rate"], now["drop_rate"], now["latency"]) == (0.1, 0.0, 0.0)
    assert daemon.cli("mock", "faults", "outreach", "--latency", "-1", code=1).stderr
    assert daemon.json("mock", "faults", "outreach")["latency"] == 0.0
    names = daemon.json("mock", "list", "salesforce")  # the mock still answers
    assert names


def test_mock_commands_list_their_kinds() -> None:
    for command in ("serve", "push", "list", "faults"):
        assert "salesforce or outreach" in cli("mock", command, "--help").stdout


def test_help_offers_only_what_the_command_uses() -> None:
    tui = cli("tui", "--help").stdout
    assert "--json" not in tui and "--endpoint" in tui
    schema = cli("schema", "--help").stdout
    assert "--endpoint" not in schema and "--json" not in schema
    assert "StatusGet" in json.loads(cli("schema").stdout)["$defs"]


def test_deletes_confirm_takes_pipeline_and_says_when_nothing_is_held(daemon: Daemon) -> None:
    nothing = daemon.cli("deletes", "confirm", "acme", "--pipeline", "people").stdout
    assert "nothing is held by the mass-delete guard in acme/people" in nothing
    assert daemon.json("deletes", "confirm", "acme")["count"] == 0
    # deleting 15 of the 20 linked records trips the guard (threshold 0.5)
    sql(daemon.folder / "a.sqlite", "DELETE FROM users WHERE record_id > 5")
    wait_for(lambda: daemon.state("acme/people") == "held", what="the guard to hold")
    assert len(users(daemon.folder / "b.sqlite")) == 20
    out = daemon.cli("deletes", "confirm", "acme", "--pipeline", "people", "--side", "a").stdout
    assert out.strip() == "acme/people: the held deletes on side a go through once"
    wait_for(lambda: len(users(daemon.folder / "b.sqlite")) == 5, what="the deletes")
    again = daemon.cli("deletes", "confirm", "acme", "--pipeline", "people").stdout
    assert "nothing is held" in again


def test_pause_and_resume_count_only_the_pipelines_they_change(daemon: Daemon) -> None:
    assert daemon.cli("resume", "acme").stdout.strip() == \
        "no paused pipeline of customer acme: nothing resumed"
    assert daemon.json("resume", "acme")["count"] == 0
    assert daemon.cli("pause", "acme", "--pipeline", "people").stdout.strip() == \
        "paused acme/people"
    resumed = daemon.json("resume", "acme")
    assert resumed == {"count": 1, "pipelines": ["acme/people"]}
    daemon.cli("pause", "acme")
    assert daemon.json("pause", "acme")["count"] == 0
    assert daemon.json("resume", "acme")["count"] == 3


def test_rules_test_with_an_unknown_rule_set_lists_them(daemon: Daemon) -> None:
    bad = daemon.cli("rules", "test", "contact", '{"record_id": 1}', code=1)
    assert "no rule set 'contact'" in bad.stderr
    assert "there are: contacts, contacts_sf, prospects" in bad.stderr


def test_sync_event_says_what_the_other_side_will_do(daemon: Daemon) -> None:
    def event(side: str, op: str, record: dict[str, Any]) -> str:
        return daemon.cli("sync", "event", "acme", "--pipeline", "people", "--side", side,
                          "--op", op, json.dumps(record)).stdout.strip()

    row = {"record_id": 3, "full_name": "Three", "email_address": "3@x", "status": "active"}
    assert event("a", "update", row).endswith(
        "side b (sqlite) will update its copy of the record at the next flush")
    assert event("a", "create", {**row, "record_id": 99}).endswith(
        "side b (sqlite) will create the record at the next flush")
    assert event("a", "update", {**row, "record_id": 98, "status": "inactive"}).endswith(
        "side b (sqlite) will not change: the record does not pass the filters of rule set "
        "'contacts' (status in ['active', 'pending'], but it is 'inactive')")
    assert event("b", "delete", row).endswith(
        "side a (sqlite) will not change: rule set 'contacts' does not sync a delete from "
        "b to a (it syncs: create, update)")
    wait_for(lambda: users(daemon.folder / "b.sqlite").get("3", ("",))[0] == "Three",
             what="the event to sync")


def test_demo_seed_reports_the_record_ids_it_inserted(tmp_path: Path) -> None:
    first = cli("demo", "seed", "--count", "5", cwd=tmp_path).stdout.strip()
    assert first == "data/demo.sqlite: inserted 5 demo users (record_id 1-5)"
    more = cli("demo", "seed", "--count", "8", cwd=tmp_path).stdout.strip()
    assert more == ("data/demo.sqlite: inserted 3 demo users (record_id 6-8); 5 already "
                    "there, left as they were (record_id 1-5)")
    rows = sql(tmp_path / "data" / "demo.sqlite", "SELECT record_id FROM users")
    assert sorted(r[0] for r in rows) == list(range(1, 9))
