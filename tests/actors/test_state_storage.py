"""The state storage failing under a running pipeline (real actors, real SQLite sides, a
real full or read-only filesystem): the pipeline waits with the real reason, is never
fatal for it, and resumes by itself once the storage takes writes again."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from recsync.actors.scheduler import Scheduler
from recsync.actors.supervisor import RestartPolicy, Supervisor
from recsync.config import load_config
from tests.actors.test_supervisor import RULES, side, state_of
from tests.diskfull import fill, read_only, small_disk
from tests.e2e.helpers import make_users, sql, users, wait_for, write_config

POLICY = RestartPolicy(max_restarts=2, within=60.0, backoff=0.05, max_backoffs=1,
                       max_wait=0.2)
Start = Callable[[Path], Any]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """Start test/p (a1.sqlite -> b1.sqlite) with its state in a given folder."""
    make_users(tmp_path / "a1.sqlite", [(1, "One", "1@x", "active")])
    make_users(tmp_path / "b1.sqlite", [])
    write_config(tmp_path, side("a1.sqlite"), side("b1.sqlite"), rules=RULES)
    scheduler = Scheduler()
    scheduler.start()
    refs: list[Any] = []

    def run(state_dir: Path) -> Any:
        ref = Supervisor.start(state_dir, scheduler=scheduler, policy=POLICY)
        refs.append(ref)
        config = load_config(tmp_path)
        cfg = config.pipelines["test/p"]
        ref.proxy().start_pipeline(cfg, config.rules[cfg.rules]).get()
        return ref.proxy()

    yield run
    for ref in refs:
        ref.stop()
    scheduler.stop()


def waits_without_giving_up(supervisor: Any, reason: str, path: Path) -> None:
    """The pipeline waits with ``reason`` (naming ``path``) and keeps trying, past the
    point where crash restarts would have turned it fatal."""
    info = wait_for(lambda: (i := state_of(supervisor, "test/p"))["state"] == "backoff"
                    and reason in (i["error"] or "") and i, what=f"backoff for {reason}")
    assert str(path) in info["error"]
    seen: set[str] = set()

    def tried_often() -> bool:
        i = state_of(supervisor, "test/p")
        seen.add(i["state"])
        return bool(i["restarts"] >= 6)

    wait_for(tried_often, what="starts again while the storage fails")
    assert not seen & {"fatal", "error"}, seen


def test_a_full_state_disk_waits_with_the_reason_and_resumes_when_space_returns(
    start: Start, tmp_path: Path
) -> None:
    with small_disk(tmp_path / "state") as disk:
        supervisor = start(disk)
        a, b = tmp_path / "a1.sqlite", tmp_path / "b1.sqlite"
        wait_for(lambda: "1" in users(b), what="first sync")
        filler = fill(disk)
        sql(a, "INSERT INTO users VALUES (2, 'Two', '2@x', 'active', 0)")
        waits_without_giving_up(supervisor, "database or disk is full", disk / "test__p.sqlite")
        filler.unlink()
        wait_for(lambda: "2" in users(b), what="the sync to resume once there is space")
        # and its outcome is on record: nothing is left to do
        wait_for(lambda: sql(disk / "test__p.sqlite", "SELECT key FROM links ORDER BY key")
                 == [("1",), ("2",)] and not sql(disk / "test__p.sqlite",
                                                 "SELECT key FROM queue"),
                 what="the state file to record the sync")
        wait_for(lambda: state_of(supervisor, "test/p")["state"] == "running",
                 what="running again")
        assert state_of(supervisor, "test/p")["error"] is None


def test_a_read_only_state_folder_is_named_and_waited_for(start: Start, tmp_path: Path) -> None:
    writable = tmp_path / "state-rw"
    writable.mkdir()
    with read_only(writable, tmp_path / "state") as state:
        supervisor = start(state)
        waits_without_giving_up(supervisor, "unable to open database file", state)
        assert "writable" in state_of(supervisor, "test/p")["error"]
        assert not (tmp_path / "b1.sqlite").exists() or not users(tmp_path / "b1.sqlite")
    # unmounted: the same folder takes writes now
    wait_for(lambda: "1" in users(tmp_path / "b1.sqlite"), what="the sync once writable")


def test_a_state_file_that_cannot_be_opened_is_waited_for_not_fatal(
    start: Start, tmp_path: Path
) -> None:
    """Without root: the state file's path is taken by a folder (SQLITE_CANTOPEN)."""
    blocked = tmp_path / "state" / "test__p.sqlite"
    blocked.mkdir(parents=True)
    supervisor = start(tmp_path / "state")
    waits_without_giving_up(supervisor, "unable to open database file", blocked)
    blocked.rmdir()
    wait_for(lambda: "1" in users(tmp_path / "b1.sqlite"), what="the sync once it opens")
    wait_for(lambda: state_of(supervisor, "test/p")["state"] == "running", what="running")
