"""`recsync config show` against a real recsyncd: the effective settings, each with where
it came from (default, [defaults], the customer, the pipeline, a live override), side
options with their secrets masked, and --json."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from recsync.mock.salesforce import SalesforceMock
from tests.e2e.helpers import make_users, wait_for, write_config
from tests.e2e.test_status_truth import SF_RULES, SQLITE_A, Daemon, start

SECRET = "hunter2-very-secret"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    mock = SalesforceMock()
    mock.start()
    make_users(tmp_path / "a.sqlite", [(1, "One", "1@x", "active")])
    side_b = ('{ connector = "salesforce", key = "Record_Id__c", '
              f'instance_url = "{mock.url}", username = "ops@example.com", '
              f'password = "{SECRET}", daily_reserve = 0 }}')
    write_config(tmp_path, SQLITE_A.format("a.sqlite"), side_b, rules=SF_RULES,
                 settings="page_size = 123\n")
    with (tmp_path / "customer_settings.toml").open("a") as f:
        f.write("[customers.test]\nmax_attempts = 4\n[customers.test.rate_limit]\n"
                "max_requests = 777\n")
    d = start(tmp_path)
    try:
        yield d
    finally:
        d.proc.terminate()
        d.proc.wait(timeout=30)
        mock.stop()


def shown(d: Daemon, *args: str) -> dict[str, dict[str, dict[str, object]]]:
    result = d.cli("--json", "config", "show", *args)
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout
    (row,) = json.loads(result.stdout)
    assert row["pipeline"] == "test/p" and row["rules"] == "contacts"
    return {"settings": row["settings"], **row["sides"]}


def test_each_setting_says_where_it_came_from(daemon: Daemon) -> None:
    out = shown(daemon, "test")
    settings = out["settings"]
    assert settings["page_size"] == {
        "value": 123, "source": "pipeline",
        "where": "customer_settings.toml [customers.test.pipelines.p]"}
    assert settings["max_attempts"] == {
        "value": 4, "source": "customer", "where": "customer_settings.toml [customers.test]"}
    assert settings["rate_limit.max_requests"]["value"] == 777
    assert settings["rate_limit.max_requests"]["source"] == "customer"
    assert settings["rate_limit.window_seconds"] == {
        "value": 1.0, "source": "defaults", "where": "customer_settings.toml [defaults]"}
    assert settings["batch_size"]["value"] == 500
    assert settings["history_days"] == {"value": 30.0, "source": "default",
                                        "where": "built-in default"}
    assert out["b"]["password"]["value"] == "***"
    assert out["b"]["username"]["value"] == "ops@example.com"
    assert out["b"]["username_env"]["value"] == ""  # unset: shown as unset, not masked
    assert out["b"]["connector"]["value"] == "salesforce"
    assert out["b"]["sobject"] == {"value": "Contact", "source": "default",
                                   "where": "connector default"}
    assert out["a"]["path"]["source"] == "pipeline"

    # a live override is named as such, until a reload puts the file's value back
    assert daemon.cli("config", "override", "test", "--batch-size", "9").returncode == 0
    settings = shown(daemon, "test", "--pipeline", "p")["settings"]
    assert settings["batch_size"]["value"] == 9
    assert settings["batch_size"]["source"] == "override"
    human = daemon.cli("config", "show")
    assert human.returncode == 0 and SECRET not in human.stdout
    lines = human.stdout.splitlines()
    assert lines[0] == "test/p (rules contacts)"
    batch = next(line for line in lines if line.startswith("batch_size "))
    assert batch.split()[1] == "9" and "live override" in batch
    page = next(line for line in lines if line.startswith("page_size "))
    assert page.endswith("customer_settings.toml [customers.test.pipelines.p]")
    assert any(line.startswith("b.password ") and "***" in line for line in lines)
    assert daemon.cli("reload").returncode == 0
    wait_for(lambda: shown(daemon)["settings"]["batch_size"]["source"] == "defaults",
             what="the file's value after the reload")

    missing = daemon.cli("config", "show", "nobody")
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
