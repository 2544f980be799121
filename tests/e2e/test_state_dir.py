"""End to end, through real `recsyncd` processes: the state directory is locked against a
second daemon, and a full or read-only state disk is reported as such and waited out."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.diskfull import fill, read_only, small_disk
from tests.e2e.helpers import make_users, recsyncd_cmd, run_once, sql, users, wait_for, write_config

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
SIDE = '{{ connector = "sqlite", path = "{}", table = "users", key = "record_id" }}'


def pipeline(folder: Path, rows: int = 5) -> Path:
    make_users(folder / "a.sqlite", [(i, f"User {i}", f"u{i}@x.org", "active")
                                     for i in range(1, rows + 1)])
    make_users(folder / "b.sqlite", [])
    write_config(folder, SIDE.format("a.sqlite"), SIDE.format("b.sqlite"), rules=RULES)
    return folder


def env(folder: Path, runtime: str) -> dict[str, str]:
    out = dict(os.environ, RUNTIME_DIRECTORY=str(folder / runtime),
               LOGS_DIRECTORY=str(folder / "logs"))
    out.pop("NOTIFY_SOCKET", None)
    return out


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A recsyncd serving on tmp_path/state, with its own runtime directory."""
    pipeline(tmp_path)
    proc = subprocess.Popen(recsyncd_cmd(tmp_path, tmp_path / "state"), env=env(tmp_path, "run1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (tmp_path / "run1" / "control.sock").exists() or proc.poll() is not None,
                 what="the first daemon to serve")
        assert proc.poll() is None, proc.communicate()
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def test_a_second_recsyncd_on_the_same_state_dir_refuses_naming_the_holder(
    daemon: subprocess.Popen[str], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    assert (state / "recsyncd.lock").read_text().strip() == str(daemon.pid)
    wait_for(lambda: users(tmp_path / "b.sqlite") == users(tmp_path / "a.sqlite"),
             what="the first daemon to sync")
    # a --once run, and a second daemon with another runtime directory
    for cmd in (recsyncd_cmd(tmp_path, state, "--once"), recsyncd_cmd(tmp_path, state)):
        second = subprocess.run(cmd, env=env(tmp_path, "run2"), capture_output=True, text=True,
                                timeout=60)
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"in use by recsyncd PID {daemon.pid}" in second.stderr, second.stderr
        assert str(state) in second.stderr
    assert not (tmp_path / "run2" / "control.sock").exists()
    assert daemon.poll() is None
    # the lock dies with its holder, even by kill -9: the next run goes ahead
    daemon.send_signal(signal.SIGKILL)
    daemon.wait(timeout=30)
    sql(tmp_path / "a.sqlite", "INSERT INTO users (record_id, full_name) VALUES (6, 'Six')")
    done = run_once(tmp_path, state)
    assert done.returncode == 0, done.stdout + done.stderr
    assert users(tmp_path / "b.sqlite") == users(tmp_path / "a.sqlite")


def test_a_full_state_disk_shows_the_real_error_and_the_run_resumes_once_freed(
    tmp_path: Path,
) -> None:
    pipeline(tmp_path)
    with small_disk(tmp_path / "state") as state:
        first = run_once(tmp_path, state)
        assert first.returncode == 0, first.stdout + first.stderr
        filler = fill(state)
        sql(tmp_path / "a.sqlite", "INSERT INTO users (record_id, full_name) VALUES "
                                   "(6, 'Six'), (7, 'Seven')")
        log = tmp_path / "once.err"
        with log.open("w") as err:
            proc = subprocess.Popen(recsyncd_cmd(tmp_path, state, "--once", "--timeout", "100"),
                                    env=env(tmp_path, "run"), stdout=subprocess.PIPE,
                                    stderr=err, text=True)
        try:
            # full at the first write, or already when opening the file (no room for the
            # WAL index): either way the log says the disk is full, naming the file
            wait_for(lambda: "disk is full" in log.read_text()
                     or proc.poll() is not None, what="the disk-full error in the log")
            assert proc.poll() is None, log.read_text()
            filler.unlink()
            out, _ = proc.communicate(timeout=110)
        finally:
            proc.kill()
        text = log.read_text()
        assert proc.returncode == 0, out + text
        assert "no transaction is active" not in text, text
        assert str(state / "test__p.sqlite") in text
        assert users(tmp_path / "b.sqlite") == users(tmp_path / "a.sqlite")
        assert not sql(state / "test__p.sqlite", "SELECT key FROM queue")


def test_a_read_only_state_dir_is_refused_naming_it(tmp_path: Path) -> None:
    pipeline(tmp_path)
    (tmp_path / "state-rw").mkdir()
    with read_only(tmp_path / "state-rw", tmp_path / "state") as state:
        done = run_once(tmp_path, state)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"state directory {state} cannot be written" in done.stderr, done.stderr
    assert "Read-only file system" in done.stderr
    assert not users(tmp_path / "b.sqlite")


def two_customers(folder: Path) -> None:
    """Customer x pipeline y__z and customer x__y pipeline z: one state file, once."""
    for n, rows in ((1, 3), (2, 4)):
        make_users(folder / f"a{n}.sqlite", [(i, f"P{n} {i}", None, "active")
                                            for i in range(1, rows + 1)])
        make_users(folder / f"b{n}.sqlite", [])
    write_config(folder, SIDE.format("a1.sqlite"), SIDE.format("b1.sqlite"), rules=RULES)
    text = (folder / "customer_settings.toml").read_text()
    text = text.replace("[customers.test.pipelines.p]", "[customers.x.pipelines.y__z]")
    text += (f'\n[customers.x__y.pipelines.z]\nrules = "contacts"\n'
             f'a = {SIDE.format("a2.sqlite")}\nb = {SIDE.format("b2.sqlite")}\n')
    (folder / "customer_settings.toml").write_text(text)


def test_pipelines_whose_old_state_file_names_collide_keep_their_own_state(
    tmp_path: Path,
) -> None:
    two_customers(tmp_path)
    for _ in range(2):  # the second run finds each pipeline's own cursors and links
        done = run_once(tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        for n in (1, 2):
            assert users(tmp_path / f"b{n}.sqlite") == users(tmp_path / f"a{n}.sqlite")
    assert "x/y__z: running, a->b 0 synced, b->a 0 synced" in done.stdout, done.stdout
    assert "x__y/z: running, a->b 0 synced, b->a 0 synced" in done.stdout, done.stdout
    files = sorted(p.name for p in (tmp_path / "state").glob("*.sqlite"))
    assert files == ["x+5f+5fy__z.sqlite", "x__y__z.sqlite"]


def test_a_state_file_under_its_old_name_is_carried_over(tmp_path: Path) -> None:
    two_customers(tmp_path)
    text = (tmp_path / "customer_settings.toml").read_text()
    (tmp_path / "customer_settings.toml").write_text(
        text.split("[customers.x.pipelines.y__z]")[0]
        + "[customers.x__y.pipelines.z]" + text.split("[customers.x__y.pipelines.z]")[1])
    state = tmp_path / "state"
    done = run_once(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    # as an earlier version named it
    (state / "x+5f+5fy__z.sqlite").rename(state / "x__y__z.sqlite")
    sql(tmp_path / "a2.sqlite", "UPDATE users SET full_name = 'Changed' WHERE record_id = 1")
    done = run_once(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    # its cursors and links were found: only the one change is synced
    assert "x__y/z: running, a->b 1 synced, b->a 0 synced" in done.stdout, done.stdout
    assert sorted(p.name for p in state.glob("*.sqlite")) == ["x+5f+5fy__z.sqlite"]
    assert users(tmp_path / "b2.sqlite") == users(tmp_path / "a2.sqlite")


def status_of(endpoint: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-m", "recsync.cli", "--endpoint", endpoint,
                           "--json", "status"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    (pipe,) = json.loads(done.stdout)["pipelines"]
    return pipe  # type: ignore[no-any-return]


def test_status_shows_a_full_state_disk_and_the_daemon_resumes_by_itself(
    tmp_path: Path,
) -> None:
    pipeline(tmp_path)
    a, b = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    with small_disk(tmp_path / "state") as state:
        proc = subprocess.Popen(recsyncd_cmd(tmp_path, state), env=env(tmp_path, "run"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            endpoint = f"ipc://{tmp_path}/run/control.sock"
            wait_for(lambda: (tmp_path / "run" / "control.sock").exists() and users(b)
                     == users(a), what="the first sync")
            filler = fill(state)
            sql(a, "INSERT INTO users (record_id, full_name) VALUES (6, 'Six')")
            pipe = wait_for(lambda: (p := status_of(endpoint))["state"] == "backoff"
                            and "disk is full" in str(p["error"]) and p,
                            what="status to show the full disk")
            assert str(state / "test__p.sqlite") in str(pipe["error"])
            filler.unlink()
            wait_for(lambda: status_of(endpoint)["state"] == "running" and users(b) == users(a)
                     and not sql(state / "test__p.sqlite", "SELECT key FROM queue"),
                     timeout=60, what="the daemon to resume by itself")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
