"""A local pipeline with a backlog on its queue (as after an outage of side B) while new
changes of the same side arrive, some of them to records of the backlog: new pages wait
for the backlog and then go to the writer whole (QueueActor._parks). Side B ends exactly
as side A, the newest change of each record winning, through a kill -9 too; a second
run writes nothing."""

from __future__ import annotations

import subprocess
from pathlib import Path

from bench.sync_bench import queue_backlog
from tests.e2e.helpers import (
    USERS_RULES,
    _env,
    kill_when,
    make_users,
    recsyncd_cmd,
    run_once,
    sql,
    users,
    write_config,
)

RECORDS = 600
BACKLOG = 200  # records 1..200 queued before the run; 150..600 changed again after
SIDE = '{{ connector = "sqlite", path = "{0}.sqlite", table = "users", key = "record_id" }}'


def pipeline_with_backlog(tmp_path: Path) -> Path:
    folder = write_config(tmp_path / "cfg", SIDE.format("a"), SIDE.format("b"),
                          rules=USERS_RULES.format(conflict="last_writer_wins"),
                          settings="batch_size = 50\npage_size = 50\n")
    make_users(folder / "a.sqlite",
               [(i, f"User {i}", f"u{i}@example.com", "active") for i in range(1, RECORDS + 1)])
    make_users(folder / "b.sqlite", [])
    first = run_once(folder)
    assert first.returncode == 0, first.stderr[-2000:]
    assert users(folder / "b.sqlite") == users(folder / "a.sqlite")
    sql(folder / "a.sqlite", "UPDATE users SET full_name = full_name || ' v1', "
        "updated_at = updated_at + 1 WHERE record_id <= ?", (BACKLOG,))
    assert queue_backlog(folder) == BACKLOG
    sql(folder / "a.sqlite", "UPDATE users SET full_name = full_name || ' v2', "
        "updated_at = updated_at + 2 WHERE record_id >= 150")
    return folder


def v2_on_b(folder: Path) -> int:
    try:
        return int(sql(folder / "b.sqlite",
                       "SELECT COUNT(*) FROM users WHERE full_name LIKE '% v2'")[0][0])
    except Exception:  # (the table is busy a moment)
        return 0


def test_new_changes_behind_a_queued_backlog_sync_exactly(tmp_path: Path) -> None:
    folder = pipeline_with_backlog(tmp_path)
    done = run_once(folder)
    assert done.returncode == 0, done.stderr[-2000:]
    a = users(folder / "a.sqlite")
    assert users(folder / "b.sqlite") == a
    assert a["1"][0] == "User 1 v1" and a["160"][0] == "User 160 v1 v2"
    assert "0 failed" in done.stdout
    again = run_once(folder)
    assert "a->b 0 synced" in again.stdout, again.stdout


def test_a_kill_while_pages_wait_for_the_backlog_loses_nothing(tmp_path: Path) -> None:
    folder = pipeline_with_backlog(tmp_path)
    proc = subprocess.Popen(recsyncd_cmd(folder, folder / "state", "--once"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    kill_when(proc, lambda: v2_on_b(folder), 100)
    done = run_once(folder)
    assert done.returncode == 0, done.stderr[-2000:]
    assert users(folder / "b.sqlite") == users(folder / "a.sqlite")
    again = run_once(folder)
    assert "a->b 0 synced" in again.stdout, again.stdout
