"""Many pipelines on one recsyncd: the control socket never waits for them, one slow start
holds back no other, SIGTERM ends it whatever is still starting. (The full size and the
timings are in bench/scale_bench.py; here the promises, with 40 pipelines.)"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import install_connector, recsyncd_cmd, wait_for

PIPELINES = 40
RULES = """
[contacts]
a_to_b = ["create", "update", "delete"]
b_to_a = ["create", "update", "delete"]
[contacts.mappings]
record_id = "record_id"
full_name = "name"
email_address = "email"
status = "status"
"""
# A plug-in connector whose open() waits (like a database that does not answer) until a
# file `go` is next to its database.
SLOW = '''
import time
from pathlib import Path
from recsync.connectors.sqlite import SqliteConnector


class SlowConnector(SqliteConnector):
    def open(self):
        go = Path(self.path).parent / "go"
        deadline = time.monotonic() + 300
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        super().open()
'''


def make_db(path: Path, rows: int = 3) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (record_id INTEGER PRIMARY KEY, full_name TEXT, "
                   "email_address TEXT, status TEXT)")
        db.executemany("INSERT INTO users VALUES (?, ?, ?, 'active')",
                       [(j, f"User {j}", f"u{j}@x.org") for j in range(1, rows + 1)])
    db.close()


def side(connector: str, path: str) -> str:
    if connector == "file":
        return f'{{ connector = "file", path = "{path}", key = "record_id" }}'
    return (f'{{ connector = "{connector}", path = "{path}", table = "users", '
            'key = "record_id" }')


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    text = "[defaults]\npoll_interval = 0.5\nflush_interval = 0.2\n\n"
    for i in range(PIPELINES):
        make_db(tmp_path / f"a{i}.sqlite")
        text += (f"[customers.c{i}.pipelines.p]\nrules = \"contacts\"\n"
                 f"a = {side('sqlite', f'a{i}.sqlite')}\nb = {side('file', f'b{i}.csv')}\n\n")
    (tmp_path / "slow").mkdir()
    make_db(tmp_path / "slow" / "a.sqlite")
    text += ("[customers.slow.pipelines.p]\nrules = \"contacts\"\n"
             f"a = {side('slow', 'slow/a.sqlite')}\nb = {side('file', 'slow/b.csv')}\n")
    (tmp_path / "customer_settings.toml").write_text(text)
    (tmp_path / "rules.toml").write_text(RULES)
    install_connector(tmp_path, "slow", SLOW, "SlowConnector")
    return tmp_path


@pytest.fixture
def daemon(folder: Path) -> Iterator[subprocess.Popen[str]]:
    env = dict(os.environ, RUNTIME_DIRECTORY=str(folder / "run"))
    env.pop("NOTIFY_SOCKET", None)
    env["PYTHONPATH"] = os.pathsep.join([str(folder / "plugin"), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(recsyncd_cmd(folder, folder / "state"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def status(folder: Path) -> dict[str, str] | None:
    result = subprocess.run(
        [sys.executable, "-m", "recsync.cli", "--endpoint", f"ipc://{folder}/run/control.sock",
         "--timeout", "5", "--json", "status"], capture_output=True, text=True, timeout=60)
    if result.returncode not in (0, 4):
        return None
    rows: list[dict[str, Any]] = json.loads(result.stdout)["pipelines"]
    return {r["pipeline"]: r["state"] for r in rows}


def test_the_control_socket_answers_while_a_pipeline_cannot_start_and_the_others_run(
        folder: Path, daemon: subprocess.Popen[str]) -> None:
    first = wait_for(lambda: status(folder), timeout=60, what="the control socket")
    assert first["slow/p"] == "starting"  # its open() waits for the file `go`
    states = wait_for(
        lambda: (s := status(folder)) and all(
            st == "running" for pid, st in s.items() if pid != "slow/p") and s,
        timeout=120, what="every other pipeline to run")
    assert states["slow/p"] == "starting"
    assert len(states) == PIPELINES + 1
    wait_for(lambda: all((folder / f"b{i}.csv").exists() for i in range(PIPELINES)),
             timeout=120, what="every other pipeline's first sync")

    (folder / "slow" / "go").touch()
    wait_for(lambda: (status(folder) or {}).get("slow/p") == "running", timeout=60,
             what="the slow pipeline to run once its system answers")
    wait_for(lambda: (folder / "slow" / "b.csv").exists(), timeout=60,
             what="the slow pipeline's first sync")
    daemon.send_signal(signal.SIGTERM)
    _, err = daemon.communicate(timeout=120)
    assert daemon.returncode == 0, err


def test_sigterm_while_a_pipeline_is_still_starting_ends_the_daemon(
        folder: Path, daemon: subprocess.Popen[str]) -> None:
    wait_for(lambda: (status(folder) or {}).get("slow/p") == "starting", timeout=60,
             what="the control socket, with the slow pipeline starting")
    daemon.send_signal(signal.SIGTERM)
    # the slow start would wait 300 s: the stop must not wait for it
    _, err = daemon.communicate(timeout=120)
    assert daemon.returncode == 0, err
