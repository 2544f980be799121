"""Every event kind the protocol lists is published when it happens, through a real daemon
(supervisor, pipelines, control server) and a real SUB client; `events --kind` checks."""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from recsync.cli import main as cli_main
from recsync.client import ControlClient, Subscription
from recsync.config import load_config
from recsync.daemon import Daemon
from recsync.daemon import protocol as p
from recsync.daemon.control import ControlServer
from recsync.daemon.service import ControlService
from recsync.errors import ControlError
from tests.e2e.helpers import make_users, sql, wait_for, write_config

SQLITE = '{{ connector = "sqlite", path = "{name}.sqlite", table = "users", key = "record_id" }}'
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
# side B refuses record 42 with a real constraint
BLOCK_42 = """
CREATE TRIGGER refuse BEFORE INSERT ON users WHEN NEW.record_id = 42
BEGIN SELECT RAISE(ABORT, 'record 42 is blocked by the target'); END;
"""


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Daemon, ControlClient]]:
    make_users(tmp_path / "a.sqlite", [(1, "One", "1@x.org", "active")])
    make_users(tmp_path / "b.sqlite", [])
    with sqlite3.connect(tmp_path / "b.sqlite") as db:
        db.executescript(BLOCK_42)
    db.close()
    write_config(tmp_path, SQLITE.format(name="a"), SQLITE.format(name="b"), rules=RULES,
                 settings="max_attempts = 2\n")
    sockets = Path(tempfile.mkdtemp(prefix="ev", dir="/tmp"))
    daemon = Daemon(load_config(tmp_path), tmp_path / "state", config_dir=tmp_path)
    service = ControlService(daemon)
    server = ControlServer(service.handle, inline=service.inline,
                           command_endpoint=f"ipc://{sockets}/c.sock",
                           event_endpoint=f"ipc://{sockets}/e.sock")
    server.start()
    daemon.server, daemon.endpoints = server, (server.bound[0], server.bound[1])
    daemon.start()
    client = ControlClient(server.bound[0], server.bound[1])
    try:
        yield daemon, client
    finally:
        client.close()
        daemon.stop()
        server.stop()
        shutil.rmtree(sockets, ignore_errors=True)


def next_event(sub: Subscription, kind: str, match: Callable[[dict[str, Any]], bool],
               timeout: float = 30.0) -> p.Event:
    """The next event of ``kind`` whose data ``match``es (others are skipped)."""
    def found() -> p.Event | None:
        event = sub.recv(0.2)
        if event is not None and event.kind == kind and match(event.data):
            return event
        return None

    return wait_for(found, timeout=timeout, what=f"a {kind} event")  # type: ignore[no-any-return]


def test_every_listed_kind_is_published_when_it_happens(
    running: tuple[Daemon, ControlClient],
) -> None:
    daemon, client = running
    folder = daemon.config_dir
    seen: set[str] = set()
    with client.subscribe() as sub:
        # stats: each refresh publishes the figures (refreshed until the SUB has joined)
        def stats() -> p.Event | None:
            daemon.refresh_stats()
            event = sub.recv(0.2)
            return event if event is not None and event.kind == "stats" else None

        event = wait_for(stats, what="a stats event")
        assert event.data["pipelines"][0]["pipeline"] == "test/p"
        seen.add("stats")

        client.request(p.Pause("test"))
        event = next_event(sub, "pipeline_state", lambda d: d["state"] == "paused")
        assert event.data["pipeline"] == "test/p"
        seen.add("pipeline_state")
        client.request(p.Resume("test"))
        next_event(sub, "pipeline_state", lambda d: d["state"] == "running")

        sql(folder / "a.sqlite", "INSERT INTO users (record_id, full_name, email_address, "
                                 "status) VALUES (42, 'Blocked', 'b@x.org', 'active')")
        event = next_event(sub, "record_failed", lambda d: d["key"] == "42")
        assert event.data["pipeline"] == "test/p" and event.data["direction"] == "a_to_b"
        assert "blocked by the target" in event.data["error"]
        seen.add("record_failed")

        daemon.proxy.inject_crash("test/p", "rules").get()
        event = next_event(sub, "actor_failed", lambda d: d["actor"] == "rules")
        assert event.data["pipeline"] == "test/p" and "injected crash" in event.data["error"]
        seen.add("actor_failed")

        settings = folder / "customer_settings.toml"
        settings.write_text(settings.read_text() + "\n[customers.test.pipelines.q]\n"
                            'rules = "contacts"\na = ' + SQLITE.format(name="a") + "\n"
                            "b = " + SQLITE.format(name="c") + "\n")
        make_users(folder / "c.sqlite", [])
        client.request(p.Reload())
        event = next_event(sub, "config_reloaded", lambda d: True)
        assert event.data["added"] == ["test/q"]
        seen.add("config_reloaded")

        settings.write_text(settings.read_text().replace("batch_size = 500",
                                                         "batch_size = 'many'"))
        with pytest.raises(ControlError):
            client.request(p.Reload())
        event = next_event(sub, "config_rejected", lambda d: True)
        assert "batch_size" in event.data["error"]
        seen.add("config_rejected")
        settings.write_text(settings.read_text().replace("batch_size = 'many'",
                                                         "batch_size = 500"))
        client.request(p.Reload())

        client.request(p.VerifyRun("test", "p"))
        event = next_event(sub, "verify_progress", lambda d: True)
        assert event.data["pipeline"] == "test/p"
        seen.add("verify_progress")

        for name in ("recsync_users_ai", "recsync_users_au", "recsync_users_ad"):
            sql(folder / "a.sqlite", f"DROP TRIGGER {name}")  # noticed at the next poll

        def warned() -> p.Event | None:
            daemon.refresh_stats()  # side warnings are published with the figures
            event = sub.recv(0.2)
            return event if event is not None and event.kind == "sync_warning" and (
                event.data["pipeline"], event.data["side"]) == ("test/p", "a") else None

        event = wait_for(warned, what="a sync_warning event")
        assert "trigger" in event.data["warning"]
        seen.add("sync_warning")
    assert seen == set(p.EVENT_KINDS)


def test_events_kind_rejects_an_unknown_kind_and_lists_the_valid_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli_main(["events", "--kind", "record_faild"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'record_faild'" in err
    assert all(kind in err for kind in p.EVENT_KINDS)
