"""The control front under load and under faults, against a real recsyncd subprocess.

Every client here is a real `recsync.client.ControlClient` that connects, asks once and
goes away, as `recsync failed` does; the daemon runs with a low RLIMIT_NOFILE.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from recsync.client import ControlClient
from recsync.daemon import protocol as p
from recsync.errors import DaemonUnreachable
from tests.e2e.helpers import make_users, recsyncd_cmd, wait_for, write_config

FD_LIMIT = 1024
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
SQLITE = '{{ connector = "sqlite", path = "{name}.sqlite", table = "users", key = "record_id" }}'


@dataclass
class Daemon:
    folder: Path
    proc: subprocess.Popen[str]
    endpoint: str

    def front_now(self) -> psutil.Process | None:
        """The control front (recsyncd's child running recsync.daemon.front), if any."""
        try:
            children = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return None
        for child in children:
            try:
                if child.status() != psutil.STATUS_ZOMBIE and \
                        "recsync.daemon.front" in child.cmdline():
                    return child
            except psutil.NoSuchProcess:
                continue
        return None

    def front(self) -> psutil.Process:
        return wait_for(self.front_now, what="the control front process")  # type: ignore[no-any-return]

    def fds(self) -> int:
        """Open descriptors of recsyncd and of its control front, from /proc/PID/fd."""
        return sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in (self.proc.pid,
                                                                   self.front().pid))

    def ask(self, timeout: float = 10.0) -> object:
        with ControlClient(self.endpoint, timeout=timeout) as client:
            return client.request(p.FailedList())

    def answers(self) -> bool:
        try:
            self.ask(timeout=2.0)
        except DaemonUnreachable:
            return False
        return True

    def log_entries(self) -> list[dict[str, object]]:
        path = self.folder / "logs" / "record_sync.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _low_fd_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, min(hard, FD_LIMIT)))


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    make_users(tmp_path / "a.sqlite", [(i, f"User {i}", f"u{i}@x.org", "active")
                                       for i in range(1, 6)])
    make_users(tmp_path / "b.sqlite", [])
    write_config(tmp_path, SQLITE.format(name="a"), SQLITE.format(name="b"), rules=RULES)
    env = dict(os.environ, RUNTIME_DIRECTORY=str(tmp_path / "run"),
               LOGS_DIRECTORY=str(tmp_path / "logs"))
    env.pop("NOTIFY_SOCKET", None)
    # its own session, as under systemd: a stopped recsyncd in the test runner's process
    # group would get the kernel's SIGHUP + SIGCONT if that group became orphaned
    proc = subprocess.Popen(recsyncd_cmd(tmp_path, tmp_path / "state"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
                            preexec_fn=_low_fd_limit, start_new_session=True)
    svc = Daemon(tmp_path, proc, f"ipc://{tmp_path}/run/control.sock")
    try:
        wait_for(svc.answers, what="recsyncd to answer")
        yield svc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def one_shot_clients(svc: Daemon, count: int, sample_every: int = 100) -> list[int]:
    """``count`` one-shot `failed` requests; the descriptor count every ``sample_every``."""
    samples = []
    for i in range(count):
        assert svc.ask() == [], f"client {i} got no proper answer"
        if (i + 1) % sample_every == 0:
            samples.append(svc.fds())
    return samples


def test_descriptors_stay_flat_over_2000_one_shot_clients(daemon: Daemon) -> None:
    assert resource.prlimit(daemon.front().pid, resource.RLIMIT_NOFILE)[0] == FD_LIMIT
    one_shot_clients(daemon, 50)
    baseline = daemon.fds()
    samples = one_shot_clients(daemon, 2000)
    # one connection per client may still be closing when sampled; a socket per client
    # ever served would add 2 descriptors each (200 per sample)
    assert max(samples) <= baseline + 32, (baseline, samples)
    wait_for(lambda: daemon.fds() <= baseline + 4, what="descriptors back to the baseline")
    assert daemon.proc.poll() is None


def _replaced(svc: Daemon, old_pid: int) -> int | None:
    """The pid of a new front that answers, once ``old_pid`` is gone; else None."""
    front = svc.front_now()
    if front is None or front.pid == old_pid:
        return None
    return front.pid if svc.answers() else None


def test_an_error_inside_the_front_is_logged_and_a_new_front_serves(daemon: Daemon) -> None:
    first = daemon.front().pid
    # SIGINT raises KeyboardInterrupt inside the front's loop: an exception it does not
    # handle, as a bug would
    os.kill(first, signal.SIGINT)
    second = wait_for(lambda: _replaced(daemon, first), what="a new front to answer")
    entries = daemon.log_entries()
    crash = [e for e in entries if e["msg"] == "control front crashed"]
    assert crash and crash[0]["front_pid"] == first and "KeyboardInterrupt" in str(
        crash[0]["exc"])
    exited = [e for e in entries if e["msg"] == "control front exited; starting a new one"]
    assert exited[0]["exit"] == "exit status 1" and exited[0]["level"] == "error"
    restarted = [e for e in entries if e["msg"] == "control front restarted"]
    assert restarted[0]["front_pid"] == second
    # killed outright: logged by recsyncd as well, and replaced again
    os.kill(second, signal.SIGKILL)
    wait_for(lambda: _replaced(daemon, second), what="a front after SIGKILL")
    assert any(e.get("exit") == "killed by SIGKILL" for e in daemon.log_entries())
    assert daemon.proc.poll() is None
    assert daemon.ask() == []


def test_a_front_that_keeps_dying_ends_recsyncd_with_status_1(daemon: Daemon) -> None:
    pids = [daemon.front().pid]
    os.kill(pids[-1], signal.SIGKILL)
    while len(pids) < 10:
        # a new front that serves, or recsyncd's exit
        new = wait_for(lambda: daemon.proc.poll() is not None or _replaced(daemon, pids[-1]),
                       what="a new front or recsyncd's exit")
        if new is True:
            break
        pids.append(new)
        os.kill(new, signal.SIGKILL)
    assert daemon.proc.wait(timeout=60) == 1
    assert len(pids) == 6  # five restarts allowed, the sixth death ends the daemon
    entries = daemon.log_entries()
    assert any(e["msg"].startswith("control front keeps failing")  # type: ignore[union-attr]
               and e["level"] == "critical" for e in entries)


def _stopped(pid: int) -> bool:
    """Every thread of process ``pid`` is stopped (state T in /proc)."""
    try:
        return all((task / "stat").read_text().rsplit(")", 1)[1].split()[0] in ("T", "t")
                   for task in Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:  # a thread ended meanwhile: look again
        return False


def test_a_stalled_daemon_gets_clients_a_busy_reply_not_a_stuck_front(daemon: Daemon) -> None:
    import zmq

    request = p.encoder.encode(p.Request(p.API_VERSION, p.FailedList()))
    count = 20_000
    with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.connect(daemon.endpoint)
        os.kill(daemon.proc.pid, signal.SIGSTOP)  # recsyncd reads nothing; its front runs
        # (every thread of it stopped before the first request: a thread still running on
        # the other core could answer it on a loaded machine)
        wait_for(lambda: _stopped(daemon.proc.pid), what="recsyncd to be stopped")
        try:
            for _ in range(count):
                sock.send_multipart([b"", request])
            assert sock.poll(30_000), "the front answered nothing while recsyncd was stopped"
            first = p.reply_decoder.decode(sock.recv_multipart()[-1])
            assert first.error is not None and first.error.code == "UNAVAILABLE"
            assert "recsyncd is busy" in first.error.message
        finally:
            os.kill(daemon.proc.pid, signal.SIGCONT)
        replies = [first]
        while sock.poll(5_000):  # until the replies stop coming
            replies.append(p.reply_decoder.decode(sock.recv_multipart()[-1]))
    busy = [r for r in replies if not r.ok]
    assert all(r.error is not None and r.error.code == "UNAVAILABLE" for r in busy)
    answered = [r for r in replies if r.ok]
    assert answered and all(r.result == [] for r in answered)  # queued ones, once it ran
    assert daemon.answers()
