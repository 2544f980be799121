"""`recsync logs`: reading, filtering and following recsyncd's JSON log, from its file or
(under systemd) its journal, through the real command line."""

from __future__ import annotations

import json
import os
import queue
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from recsync.cli import logs
from recsync.daemon.logs import LogLocation, journal_unit, write_log_note
from tests.e2e.helpers import USERS_RULES, make_users, recsyncd_cmd, wait_for, write_config

ENTRIES = [
    {"ts": "2026-12-07T01:00:00.000Z", "level": "info", "logger": "recsyncd",
     "msg": "recsyncd ready", "endpoint": "ipc:///run/recsync/control.sock"},
    {"ts": "2026-12-07T01:00:01.000Z", "level": "error", "logger": "recsync.actors.queue",
     "msg": "record failed", "pipeline": "acme/people", "record": "42",
     "direction": "a_to_b", "error": "blocked by the target"},
    {"ts": "2026-12-07T01:00:02.000Z", "level": "debug", "logger": "recsync.actors.poller",
     "msg": "polled", "pipeline": "beta/copy", "changes": 3},
    {"ts": "2026-12-07T01:00:03.000Z", "level": "warning", "logger": "recsync.actors.base",
     "msg": "actor failed", "pipeline": "acme/other", "exc": "Traceback (most recent call "
     "last):\n  File \"x.py\", line 1\nValueError: bad"},
]
RAW = ["Traceback (most recent call last): not JSON", '["json", "but not an entry"]']


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "recsync.cli", *args], capture_output=True,
                          text=True, timeout=60, env=env, cwd=cwd)


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    path = tmp_path / "record_sync.log"
    lines = [json.dumps(ENTRIES[0]), RAW[0], json.dumps(ENTRIES[1]), json.dumps(ENTRIES[2]),
             RAW[1], json.dumps(ENTRIES[3])]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_prints_time_level_pipeline_message_and_fields_and_bad_lines_raw(
    log_file: Path,
) -> None:
    result = cli("logs", "--file", str(log_file))
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[0] == ("2026-12-07 01:00:00.000Z INFO     -  recsyncd ready  "
                      "endpoint=ipc:///run/recsync/control.sock")
    assert out[1] == RAW[0]
    assert out[2] == ("2026-12-07 01:00:01.000Z ERROR    acme/people  record failed  "
                      'record=42 direction=a_to_b error="blocked by the target"')
    assert out[3] == "2026-12-07 01:00:02.000Z DEBUG    beta/copy  polled  changes=3"
    assert out[4] == RAW[1]
    assert out[5] == "2026-12-07 01:00:03.000Z WARNING  acme/other  actor failed"
    assert out[6:] == ["    Traceback (most recent call last):", '      File "x.py", line 1',
                       "    ValueError: bad"]


def test_filters_by_pipeline_or_customer_and_minimum_level(log_file: Path) -> None:
    def messages(*args: str) -> list[str]:
        result = cli("logs", "--file", str(log_file), "--json", *args)
        assert result.returncode == 0, result.stderr
        return [json.loads(line).get("msg") or json.loads(line)["raw"]
                for line in result.stdout.splitlines()]

    assert messages("--pipeline", "acme/people") == ["record failed"]
    assert messages("--pipeline", "acme") == ["record failed", "actor failed"]
    assert messages("--level", "warning") == [RAW[0], "record failed", RAW[1], "actor failed"]
    assert messages("--level", "error", "--pipeline", "acme") == ["record failed"]
    assert messages("-n", "2", "--level", "info", "--pipeline", "acme") == [
        "record failed", "actor failed"]
    bad = cli("logs", "--file", str(log_file), "--level", "loud")
    assert bad.returncode == 2 and "invalid choice: 'loud'" in bad.stderr


def test_a_missing_log_is_a_clear_error(tmp_path: Path) -> None:
    env = dict(os.environ)
    for name in ("RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR", "LOGS_DIRECTORY", "RECSYNC_ENDPOINT"):
        env.pop(name, None)
    result = cli("logs", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "No recsyncd log found" in result.stderr and "--file" in result.stderr
    missing = cli("logs", "--file", str(tmp_path / "nope.log"))
    assert missing.returncode == 2 and "nope.log" in missing.stderr


class Lines:
    """The stdout lines of a running process, as they come."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.queue.put(line.rstrip("\n"))

    def until(self, needle: str, timeout: float = 30.0) -> list[str]:
        """Lines up to the first one containing ``needle``."""
        seen = []
        while True:
            try:
                line = self.queue.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no line with {needle!r}; got {seen}") from None
            seen.append(line)
            if needle in line:
                return seen


def _ctrl_c_default() -> None:
    """The follower gets Ctrl-C (SIGINT) as at a terminal, even when the suite itself runs
    with SIGINT ignored (started in the background by a script: `make test &`)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def follower(tmp_path: Path) -> Iterator[tuple[Path, Lines]]:
    path = tmp_path / "record_sync.log"
    old = [{**{k: v for k, v in e.items() if k != "exc"}, "msg": f"old {i}"}
           for i, e in enumerate(ENTRIES)]
    path.write_text("".join(json.dumps(e) + "\n" for e in old))
    proc = subprocess.Popen([sys.executable, "-m", "recsync.cli", "logs", "-f", "-n", "2",
                             "--file", str(path)], stdout=subprocess.PIPE, text=True,
                            preexec_fn=_ctrl_c_default)
    try:
        yield path, Lines(proc)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)


def _append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)


def test_follow_prints_the_last_lines_then_new_ones_across_a_rotation(
    follower: tuple[Path, Lines],
) -> None:
    path, lines = follower
    first = lines.until("old 3")
    assert len(first) == 2 and "old 2" in first[0]  # -n 2: the last two
    entry = {"ts": "2026-12-07T02:00:00.000Z", "level": "info", "msg": "new one"}
    _append(path, json.dumps(entry)[:20])  # half a line: nothing yet
    _append(path, json.dumps(entry)[20:] + "\nnot json\n")
    assert lines.until("new one") == ["2026-12-07 02:00:00.000Z INFO     -  new one"]
    assert lines.until("not json") == ["not json"]
    path.rename(path.with_name("record_sync.log.1"))  # as RotatingFileHandler does
    path.write_text(json.dumps({**entry, "msg": "after rotation"}) + "\n")
    assert "after rotation" in lines.until("after rotation")[0]
    assert lines.proc.poll() is None


def test_follows_a_real_recsyncd_found_through_its_runtime_directory(tmp_path: Path) -> None:
    make_users(tmp_path / "a.sqlite", [(1, "One", "1@x.org", "active")])
    make_users(tmp_path / "b.sqlite", [])
    side = '{{ connector = "sqlite", path = "{}.sqlite", table = "users", key = "record_id" }}'
    write_config(tmp_path, side.format("a"), side.format("b"),
                 rules=USERS_RULES.format(conflict="last_writer_wins"))
    env = dict(os.environ, RUNTIME_DIRECTORY=str(tmp_path / "run"),
               LOGS_DIRECTORY=str(tmp_path / "logs"))
    for name in ("NOTIFY_SOCKET", "JOURNAL_STREAM"):
        env.pop(name, None)
    daemon = subprocess.Popen(recsyncd_cmd(tmp_path, tmp_path / "state"), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"ipc://{tmp_path}/run/control.sock"
    follow = None
    try:
        wait_for(lambda: cli("--endpoint", endpoint, "status").returncode == 0,
                 what="recsyncd to answer")
        note = json.loads((tmp_path / "run" / "logs.json").read_text())
        assert note == {"file": str(tmp_path / "logs" / "record_sync.log"),
                        "journal_unit": None}
        result = cli("--endpoint", endpoint, "logs")  # found through the runtime directory
        assert result.returncode == 0, result.stderr
        ready = [line for line in result.stdout.splitlines() if "recsyncd ready" in line]
        assert ready and " INFO " in ready[0] and "pipelines=test/p" in ready[0]
        quiet = cli("--endpoint", endpoint, "logs", "--level", "warning")
        assert "recsyncd ready" not in quiet.stdout
        follow = subprocess.Popen(
            [sys.executable, "-m", "recsync.cli", "--endpoint", endpoint, "logs", "-f"],
            stdout=subprocess.PIPE, text=True, preexec_fn=_ctrl_c_default)
        lines = Lines(follow)
        lines.until("recsyncd ready")
        assert cli("--endpoint", endpoint, "reload").returncode == 0
        assert " INFO " in lines.until("configuration reloaded")[-1]
    finally:
        if follow is not None:
            follow.send_signal(signal.SIGINT)
            follow.wait(timeout=10)
        daemon.terminate()
        daemon.wait(timeout=60)


def test_under_systemd_the_journal_of_the_unit_is_read(tmp_path: Path) -> None:
    # recsyncd's side: its stdout is the JOURNAL_STREAM systemd set, its cgroup the unit's
    st = os.fstat(1)
    cgroup = tmp_path / "cgroup"
    cgroup.write_text("0::/system.slice/recsyncd.service\n")
    assert journal_unit({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, cgroup) == \
        "recsyncd.service"
    assert journal_unit({"JOURNAL_STREAM": "1:2"}, cgroup) is None  # output redirected
    assert journal_unit({}, cgroup) is None
    run = tmp_path / "run"
    run.mkdir()
    write_log_note(run, LogLocation(file="/var/log/recsync/record_sync.log",
                                    journal_unit="recsyncd.service"))
    # the CLI's side, with a journalctl that prints what `journalctl -o cat` would
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    journalctl = bin_dir / "journalctl"
    journalctl.write_text("#!/bin/sh\n"
                          f"echo \"$@\" > {tmp_path}/argv\n"
                          f"cat {tmp_path}/journal\n")
    journalctl.chmod(journalctl.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "journal").write_text(json.dumps(ENTRIES[1]) + "\nplain stderr line\n")
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    result = cli("--endpoint", f"ipc://{run}/control.sock", "logs", "-n", "5", env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "argv").read_text().split() == [
        "-u", "recsyncd.service", "-o", "cat", "--no-pager", "-n", "5"]
    assert result.stdout.splitlines() == [
        "2026-12-07 01:00:01.000Z ERROR    acme/people  record failed  record=42 "
        'direction=a_to_b error="blocked by the target"', "plain stderr line"]
    assert logs.journal_argv("recsyncd", True, None)[-1] == "-f"
