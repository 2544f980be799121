"""A local side (SQLite, files) has no API budget: the pipeline's rate limit, meant for CRMs,
never throttles it; a limit set in the side's own config does. Real actors, real files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from recsync.actors.pipeline import side_limit
from recsync.actors.scheduler import Scheduler
from recsync.actors.supervisor import Supervisor
from recsync.config import load_config
from recsync.connectors import get_connector_class
from tests.e2e.helpers import make_users, read_jsonl, sql, wait_for

RULES = """
[contacts]
a_to_b = ["create", "update", "delete"]
b_to_a = ["create", "update"]
[contacts.mappings]
record_id = "record_id"
full_name = "full_name"
"""
# Two requests an hour for every system: any throttled side stalls after its first polls.
SETTINGS = """
[defaults]
flush_interval = 0.05
poll_interval = 0.1
[defaults.rate_limit]
max_requests = 2
window_seconds = 3600

[customers.free.pipelines.p]
rules = "contacts"
a = {{ connector = "sqlite", path = "free.sqlite", table = "users", key = "record_id" }}
b = {{ connector = "file", path = "free.jsonl", key = "record_id" }}

[customers.capped.pipelines.p]
rules = "contacts"
b = {{ connector = "file", path = "capped.jsonl", key = "record_id" }}
[customers.capped.pipelines.p.a]
connector = "sqlite"
path = "capped.sqlite"
table = "users"
key = "record_id"
rate_limit = {{ max_requests = {cap}, window_seconds = 3600 }}
"""


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Any]:
    scheduler = Scheduler()
    scheduler.start()
    ref = Supervisor.start(tmp_path / "state", scheduler=scheduler)
    yield ref.proxy()
    ref.stop()
    scheduler.stop()


def start(supervisor: Any, folder: Path, cap: int) -> None:
    for name in ("free", "capped"):
        make_users(folder / f"{name}.sqlite", [(1, "One", "1@x", "active")])
    (folder / "customer_settings.toml").write_text(SETTINGS.format(cap=cap))
    (folder / "rules.toml").write_text(RULES)
    config = load_config(folder)
    for cfg in config.pipelines.values():
        assert supervisor.start_pipeline(cfg, config.rules[cfg.rules]).get() == "running"


def names(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    return {str(r["record_id"]): str(r["full_name"]) for r in read_jsonl(path)}


def test_local_sides_are_not_throttled_by_the_default_limit(
    supervisor: Any, tmp_path: Path
) -> None:
    start(supervisor, tmp_path, cap=1000)
    health = supervisor.health().get()
    # no limiter at all on a sqlite or file side that sets none of its own
    assert health["free/p"]["rate_limit"] == {}
    assert set(health["capped/p"]["rate_limit"]) == {"a"}
    # far more than 2 requests: each change is a poll of A and a write of B
    for i in range(2, 8):
        sql(tmp_path / "free.sqlite",
            "INSERT INTO users (record_id, full_name, email_address, status) "
            "VALUES (?, ?, 'x', 'active')", (i, f"User {i}"))
        wait_for(lambda i=i: str(i) in names(tmp_path / "free.jsonl"), timeout=20,
                 what=f"record {i} in the file side")


def test_a_limit_in_the_side_config_applies(supervisor: Any, tmp_path: Path) -> None:
    start(supervisor, tmp_path, cap=3)

    def usage() -> Any:
        return supervisor.health().get()["capped/p"]["rate_limit"].get("a")

    wait_for(lambda: usage() == (3, 3), timeout=20, what="side a to use its 3 requests")
    wait_for(lambda: supervisor.progress_all().get()["capped/p"]["pollers"]["a"]["error"]
             == "waiting for rate limit or circuit", timeout=20,
             what="side a's poller to wait for its budget")
    sql(tmp_path / "free.sqlite", "UPDATE users SET full_name = 'Free' WHERE record_id = 1")
    wait_for(lambda: names(tmp_path / "free.jsonl").get("1") == "Free", timeout=20,
             what="the unthrottled pipeline to keep syncing")
    assert usage() == (3, 3)
    assert supervisor.health().get()["free/p"]["rate_limit"] == {}


def test_the_shipped_config_throttles_only_its_crm_sides() -> None:
    repo = Path(__file__).resolve().parents[2]
    config = load_config(repo)
    seen = set()
    for cfg in config.pipelines.values():
        for side in (cfg.a, cfg.b):
            cls = get_connector_class(side.connector)
            limit = side_limit(side, cls.local, cfg.settings)
            seen.add((side.connector, limit is not None))
            if side.connector in ("salesforce", "outreach"):
                assert limit == cfg.settings.rate_limit
    assert seen == {("sqlite", False), ("file", False), ("salesforce", True),
                    ("outreach", True)}
