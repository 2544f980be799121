"""Supervision with real actors and real SQLite sides: restart, escalation, isolation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from recsync.actors.scheduler import Scheduler
from recsync.actors.supervisor import RestartPolicy, Supervisor
from recsync.config import load_config
from tests.e2e.helpers import make_users, sql, users, wait_for, write_config

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
POLICY = RestartPolicy(max_restarts=2, within=60.0, backoff=0.05, max_backoffs=1)


def side(path: str) -> str:
    return f'{{ connector = "sqlite", path = "{path}", table = "users", key = "record_id" }}'


def two_pipelines(folder: Path) -> Path:
    for name in ("a1", "b1", "a2", "b2"):
        make_users(folder / f"{name}.sqlite", [(1, "One", "1@x", "active")] if name[0] == "a"
                   else [])
    write_config(folder, side("a1.sqlite"), side("b1.sqlite"), rules=RULES)
    text = (folder / "customer_settings.toml").read_text()
    text += ('\n[customers.other.pipelines.q]\nrules = "contacts"\n'
             f"a = {side('a2.sqlite')}\nb = {side('b2.sqlite')}\n")
    (folder / "customer_settings.toml").write_text(text)
    return folder


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Any]:
    scheduler = Scheduler()
    scheduler.start()
    ref = Supervisor.start(tmp_path / "state", scheduler=scheduler, policy=POLICY)
    yield ref.proxy()
    ref.stop()
    scheduler.stop()


def start_all(supervisor: Any, folder: Path) -> None:
    config = load_config(folder)
    for cfg in config.pipelines.values():
        assert supervisor.start_pipeline(cfg, config.rules[cfg.rules]).get() == "running"


def state_of(supervisor: Any, pid: str) -> dict[str, Any]:
    return supervisor.states().get()[pid]  # type: ignore[no-any-return]


def synced(folder: Path, n: str) -> bool:
    return users(folder / f"a{n}.sqlite") == users(folder / f"b{n}.sqlite")


def test_crashed_actor_restarts_its_pipeline_which_keeps_syncing(
    supervisor: Any, tmp_path: Path
) -> None:
    folder = two_pipelines(tmp_path)
    start_all(supervisor, folder)
    wait_for(lambda: synced(folder, "1"), what="first sync")
    for role in ("queue", "connector_b", "poller_a"):
        before = state_of(supervisor, "test/p")["incarnation"]
        supervisor.inject_crash("test/p", role).get()
        wait_for(lambda b=before: state_of(supervisor, "test/p")["incarnation"] > b
                 and state_of(supervisor, "test/p")["state"] == "running",
                 what=f"restart after {role} crashed")
        # restart intensity allows 2 per minute here: a clean slate for the next role
        supervisor.restart_times.get()["test/p"].clear()
    sql(folder / "a1.sqlite", "INSERT INTO users VALUES (2, 'Two', '2@x', 'active', 0)")
    wait_for(lambda: "2" in users(folder / "b1.sqlite"), what="sync after restarts")
    assert synced(folder, "1")
    assert state_of(supervisor, "test/p")["restarts"] == 3


def test_too_many_restarts_back_off_then_turn_fatal(supervisor: Any, tmp_path: Path) -> None:
    folder = two_pipelines(tmp_path)
    start_all(supervisor, folder)
    seen: list[str] = []

    def crash_until(target: str) -> None:
        for _ in range(20):
            info = state_of(supervisor, "test/p")
            if info["state"] == target:
                return
            if info["state"] == "running":
                inc = info["incarnation"]
                supervisor.inject_crash("test/p", "rules").get()
                wait_for(lambda i=inc: state_of(supervisor, "test/p")["incarnation"] > i
                         or state_of(supervisor, "test/p")["state"] in ("backoff", "fatal"),
                         what="the crash to be handled")
                seen.append(state_of(supervisor, "test/p")["state"])
        raise AssertionError(f"never reached {target}: {seen}")

    crash_until("backoff")
    wait_for(lambda: state_of(supervisor, "test/p")["state"] == "running",
             what="restart after backoff")
    crash_until("fatal")
    assert "backoff" in seen and seen[-1] == "fatal"
    assert state_of(supervisor, "test/p")["error"].startswith("rules: injected crash")
    # the other pipeline never restarted and still syncs
    assert state_of(supervisor, "other/q") == {"state": "running", "error": None,
                                               "restarts": 0, "incarnation": 1}
    sql(folder / "a2.sqlite", "INSERT INTO users VALUES (5, 'Five', '5@x', 'active', 0)")
    wait_for(lambda: "5" in users(folder / "b2.sqlite"), what="the healthy pipeline to sync")


def test_missing_table_is_a_clear_error_and_not_restarted(
    supervisor: Any, tmp_path: Path
) -> None:
    folder = two_pipelines(tmp_path)
    sql(folder / "b1.sqlite", "DROP TABLE users")
    config = load_config(folder)
    cfg = config.pipelines["test/p"]
    assert supervisor.start_pipeline(cfg, config.rules["contacts"]).get() == "error"
    info = state_of(supervisor, "test/p")
    assert "users" in info["error"] and "b1.sqlite" in info["error"]
    assert info["restarts"] == 0
