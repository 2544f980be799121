"""A record's history through a real recsyncd and the real CLI: every sync with its
operation and direction, the sides it is on, and the retention settings."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from recsync.config import load_config
from recsync.errors import ConfigError
from tests.e2e.helpers import make_users, sql, users, wait_for, write_config
from tests.e2e.test_service import BLOCKING
from tests.e2e.test_status_truth import PLAIN_RULES, SQLITE_A, Daemon, start


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    make_users(tmp_path / "a.sqlite", [(i, f"U{i}", f"u{i}@x", "active") for i in range(1, 6)])
    make_users(tmp_path / "b.sqlite", [])
    with sqlite3.connect(tmp_path / "b.sqlite") as db:
        db.executescript(BLOCKING)
    db.close()
    write_config(tmp_path, SQLITE_A.format("a.sqlite"), SQLITE_A.format("b.sqlite"),
                 rules=PLAIN_RULES, settings="history_per_record = 3\n")
    d = start(tmp_path)
    try:
        yield d
    finally:
        d.proc.terminate()
        d.proc.wait(timeout=30)


def record(d: Daemon, key: str) -> dict[str, object]:
    result = d.cli("--json", "status", key)
    assert result.returncode == 0, result.stderr
    (rec,) = json.loads(result.stdout)["records"]
    return rec  # type: ignore[no-any-return]


def events(rec: dict[str, object]) -> list[tuple[object, object]]:
    """The syncs in the record's history (a retry a busy machine may add is not one)."""
    return [(h["event"], h["direction"]) for h in rec["history"]  # type: ignore[attr-defined]
            if h["event"] != "retry"]


def test_every_sync_is_in_the_record_history(daemon: Daemon) -> None:
    folder = daemon.folder
    wait_for(lambda: len(users(folder / "b.sqlite")) == 5, what="the first sync")
    wait_for(lambda: events(record(daemon, "2")) == [("create", "a_to_b")], what="the create")
    sql(folder / "a.sqlite", "UPDATE users SET full_name = 'Two' WHERE record_id = 2")
    wait_for(lambda: users(folder / "b.sqlite")["2"][0] == "Two", what="the update a->b")
    sql(folder / "b.sqlite", "UPDATE users SET full_name = 'Deux' WHERE record_id = 2")
    wait_for(lambda: users(folder / "a.sqlite")["2"][0] == "Deux", what="the update b->a")
    rec = wait_for(lambda: len(events(r := record(daemon, "2"))) == 3 and r,
                   what="three entries")
    assert events(rec) == [("create", "a_to_b"), ("update", "a_to_b"), ("update", "b_to_a")]
    assert (rec["on_a"], rec["on_b"], rec["state"]) == (True, True, "synced")
    human = daemon.cli("status", "2").stdout
    assert "create a->b" in human and "update b->a" in human
    sql(folder / "a.sqlite", "DELETE FROM users WHERE record_id = 2")
    wait_for(lambda: "2" not in users(folder / "b.sqlite"), what="the delete")
    # history_per_record = 3: the newest three are shown
    rec = wait_for(lambda: events(r := record(daemon, "2"))[-1:] == [("delete", "a_to_b")]
                   and r, what="the delete in the history")
    assert len(rec["history"]) == 3  # type: ignore[arg-type]
    assert events(rec)[-2:] == [("update", "b_to_a"), ("delete", "a_to_b")]
    assert (rec["on_a"], rec["on_b"]) == (False, False)


def test_a_failed_record_is_on_its_source_side(daemon: Daemon) -> None:
    folder = daemon.folder
    wait_for(lambda: len(users(folder / "b.sqlite")) == 5, what="the first sync")
    sql(folder / "b.sqlite", "INSERT INTO blocked VALUES (42)")
    sql(folder / "a.sqlite", "INSERT INTO users (record_id, full_name, email_address, "
                             "status) VALUES (42, 'Blocked', 'b@x.org', 'active')")
    rec = wait_for(lambda: (r := daemon.cli("--json", "status", "42")).returncode == 0
                   and json.loads(r.stdout)["records"][0]["state"] == "failed"
                   and json.loads(r.stdout)["records"][0], what="the record to fail")
    assert (rec["on_a"], rec["on_b"]) == (True, False)  # it is in a's users table
    assert "on side a:  yes" in daemon.cli("status", "42").stdout


@pytest.mark.parametrize(("line", "message"), [
    ("history_per_record = 0", "defaults.history_per_record: must be at least 1, got 0"),
    ("history_days = -1", "defaults.history_days: must be greater than 0, got -1"),
    ("history_days = 'long'", "defaults.history_days: expected a number, got a string"),
])
def test_history_settings_are_validated(tmp_path: Path, line: str, message: str) -> None:
    write_config(tmp_path, SQLITE_A.format("a.sqlite"), SQLITE_A.format("b.sqlite"),
                 rules=PLAIN_RULES)
    text = (tmp_path / "customer_settings.toml").read_text()
    (tmp_path / "customer_settings.toml").write_text(text.replace(
        "[defaults]\n", f"[defaults]\n{line}\n"))
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path)
    assert str(err.value).startswith("customer_settings.toml, line 3: ")
    assert message in str(err.value)
