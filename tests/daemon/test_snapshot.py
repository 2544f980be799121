"""The status snapshot the control front serves, and the stats, kept current row by row:
a changed pipeline's figures appear, the file holds what a full rebuild gives, and an idle
tick does not rewrite it (a real daemon: supervisor, pipelines, SQLite and CSV sides)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from recsync.config import load_config
from recsync.daemon import Daemon
from recsync.daemon import protocol as p
from recsync.daemon.service import ControlService
from tests.e2e.helpers import make_users, wait_for

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
PIPELINES = 3


def pipeline_toml(i: int) -> str:
    return (f"[customers.c{i}.pipelines.p]\nrules = \"contacts\"\n"
            f"a = {{ connector = \"sqlite\", path = \"a{i}.sqlite\", table = \"users\", "
            "key = \"record_id\" }\n"
            f"b = {{ connector = \"file\", path = \"b{i}.csv\", key = \"record_id\" }}\n\n")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[Daemon, ControlService]]:
    for i in range(PIPELINES + 1):
        make_users(tmp_path / f"a{i}.sqlite", [(1, "One", "1@x.org", "active")])
    (tmp_path / "customer_settings.toml").write_text(
        "[defaults]\npoll_interval = 0.1\nflush_interval = 0.05\n\n"
        + "".join(pipeline_toml(i) for i in range(PIPELINES)))
    (tmp_path / "rules.toml").write_text(RULES)
    d = Daemon(load_config(tmp_path), tmp_path / "state", config_dir=tmp_path)
    service = ControlService(d)
    d.snapshot_path = tmp_path / "status.snapshot"
    d.status_rows = service.pipeline_statuses
    d.start()
    try:
        yield d, service
    finally:
        d.stop()


def snapshot(d: Daemon) -> dict[str, Any]:
    assert d.snapshot_path is not None
    return msgspec.msgpack.decode(d.snapshot_path.read_bytes())  # type: ignore[no-any-return]


def synced(d: Daemon) -> dict[str, tuple[int, int]]:
    """Per pipeline: records synced as the snapshot's stats and status rows say."""
    snap = snapshot(d)
    status = {r["pipeline"]: r["synced_a_to_b"] for r in snap["status"]["pipelines"]}
    return {r["pipeline"]: (r["synced"], status[r["pipeline"]]) for r in snap["stats"]}


def full(d: Daemon, service: ControlService) -> dict[str, Any]:
    """What the snapshot held when every row was rebuilt and encoded on every write."""
    return {"status": msgspec.to_builtins(service.status(p.StatusGet())),
            "stats": msgspec.to_builtins(d.stats_snapshot())}


def test_a_changed_pipeline_shows_and_the_snapshot_is_the_full_overview(
    daemon: tuple[Daemon, ControlService],
) -> None:
    d, service = daemon
    ones = {f"c{i}/p": (1, 1) for i in range(PIPELINES)}
    wait_for(lambda: d.refresh_stats() or synced(d) == ones, what="the first syncs")
    with sqlite3.connect(d.config_dir / "a1.sqlite") as db:
        db.execute("INSERT INTO users (record_id, full_name, email_address, status) "
                   "VALUES (2, 'Two', '2@x.org', 'active')")
    db.close()
    wait_for(lambda: d.refresh_stats() or synced(d) == {**ones, "c1/p": (2, 2)},
             what="the change on c1/p in the snapshot's stats and status")
    assert snapshot(d) == full(d, service)
    # a pipeline added by a reload gets its rows; a removed one loses them
    settings = d.config_dir / "customer_settings.toml"
    text = settings.read_text()
    settings.write_text(text.replace(pipeline_toml(0), "") + pipeline_toml(PIPELINES))
    d.reload_config()
    want = {f"c{i}/p": (1, 1) for i in (2, 3)} | {"c1/p": (2, 2)}
    wait_for(lambda: d.refresh_stats() or synced(d) == want, what="the reloaded rows")
    assert snapshot(d) == full(d, service)


def test_an_idle_tick_leaves_the_snapshot_as_it_is(
    daemon: tuple[Daemon, ControlService],
) -> None:
    d, _service = daemon
    ones = {f"c{i}/p": (1, 1) for i in range(PIPELINES)}
    wait_for(lambda: d.refresh_stats() or synced(d) == ones, what="the first syncs")
    assert d.snapshot_path is not None
    path = d.snapshot_path

    def unchanged_by_a_tick() -> bool:
        before = path.stat()
        d.refresh_stats()
        after = path.stat()
        return (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)

    # every tick rewrote the whole file before (a thousand rows a second)
    wait_for(unchanged_by_a_tick, what="a stats tick that leaves the snapshot alone")
