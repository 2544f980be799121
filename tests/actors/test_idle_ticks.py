"""Idle pipelines cost almost nothing: a poll tick is skipped while the side's change probe
says nothing changed (forced every FORCED_EVERY ticks), and a change is still read at the
next tick. Real actors, real SQLite sides, the scheduler on a fake clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from recsync.actors.pipeline import FORCED_EVERY, PollTick
from recsync.actors.scheduler import Scheduler
from recsync.actors.supervisor import Supervisor
from recsync.clock import FakeClock
from recsync.config import load_config
from tests.e2e.helpers import make_users, sql, users, wait_for, write_config

SIDE = '{{ connector = "sqlite", path = "{}", table = "users", key = "record_id" }}'
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


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def supervisor(tmp_path: Path, clock: FakeClock) -> Iterator[Any]:
    scheduler = Scheduler(clock)
    scheduler.start()
    ref = Supervisor.start(tmp_path / "state", scheduler=scheduler, clock=clock)
    yield ref.proxy()
    ref.stop()
    scheduler.stop()


def cycles(pipeline: Any) -> Any:
    return (pipeline.figures.get("poller_a") or {}).get("last_cycle_started")


def tick(clock: FakeClock, poll: PollTick, interval: float) -> None:
    """One poll interval on the fake clock, and the tick it makes has run."""
    before = poll.calls
    clock.advance(interval)
    wait_for(lambda: poll.calls > before, timeout=10, what="the poll tick")


def test_an_unchanged_side_is_not_read_until_it_changes_or_the_forced_tick(
        tmp_path: Path, supervisor: Any, clock: FakeClock) -> None:
    make_users(tmp_path / "a.sqlite", [(1, "One", "1@x", "active")])
    make_users(tmp_path / "b.sqlite", [])
    write_config(tmp_path, SIDE.format("a.sqlite"), SIDE.format("b.sqlite"), rules=RULES,
                 settings="poll_interval = 1.0\nflush_interval = 0.5\n")
    config = load_config(tmp_path)
    (cfg,) = config.pipelines.values()
    assert supervisor.start_pipeline(cfg, config.rules[cfg.rules]).get() == "running"
    pipeline = supervisor.pipeline(cfg.id).get()
    poll = pipeline.ticks["a"]
    assert isinstance(poll, PollTick) and poll.probe is not None

    def settle() -> None:  # ticks until the pipeline has caught up and its poller is idle
        def done() -> bool:
            tick(clock, poll, 1.0)
            figures = pipeline.figures.get("poller_a") or {}
            return users(tmp_path / "a.sqlite") == users(tmp_path / "b.sqlite") and \
                not figures.get("busy") and poll.skipped > 0
        wait_for(done, timeout=60, what="the pipeline to catch up and go idle")

    settle()
    quiet = cycles(pipeline)
    skipped = poll.skipped
    for _ in range(FORCED_EVERY - skipped):
        tick(clock, poll, 1.0)
    assert poll.skipped == FORCED_EVERY and cycles(pipeline) == quiet  # not read at all

    tick(clock, poll, 1.0)  # the forced one
    wait_for(lambda: cycles(pipeline) != quiet, timeout=10, what="the forced poll")
    assert poll.skipped == 0

    settle()
    sql(tmp_path / "a.sqlite", "INSERT INTO users (record_id, full_name, email_address, "
                               "status) VALUES (2, 'Two', '2@x', 'active')")
    before = poll.skipped
    tick(clock, poll, 1.0)
    assert poll.skipped == 0 < before  # the probe saw the change: read at this tick

    def synced() -> bool:
        clock.advance(0.5)
        return "2" in users(tmp_path / "b.sqlite")
    wait_for(synced, timeout=30, what="the new row on the other side")
