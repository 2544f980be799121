"""sd_notify without libsystemd: real AF_UNIX datagram sockets, real watchdog thread."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from recsync.daemon.notify import Notifier, Watchdog


class Listener:
    """A bound AF_UNIX datagram socket, like systemd's notify socket."""

    def __init__(self, address: str) -> None:
        self.address = address  # as in NOTIFY_SOCKET
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        target = "\0" + address[1:] if address.startswith("@") else address
        self.sock.bind(target)

    def recv(self, timeout: float = 5.0) -> str:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode("utf-8")

    def recv_fields(self, timeout: float = 5.0) -> dict[str, str]:
        return dict(line.split("=", 1) for line in self.recv(timeout).split("\n"))

    def drain(self) -> list[str]:
        self.sock.setblocking(False)
        out = []
        try:
            while True:
                out.append(self.sock.recv(4096).decode("utf-8"))
        except BlockingIOError:
            return out
        finally:
            self.sock.setblocking(True)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    path = tmp_path / "notify.sock"
    if len(str(path)) > 100:  # sun_path is 108 bytes
        path = Path(tempfile.mkdtemp(prefix="rsn")) / "n.sock"
    lst = Listener(str(path))
    yield lst
    lst.close()


@pytest.fixture
def abstract_listener() -> Iterator[Listener]:
    lst = Listener(f"@recsync-test-{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}")
    yield lst
    lst.close()


def test_no_socket_means_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    n = Notifier.from_env()
    assert not n.enabled
    assert n.notify(READY=1) is False
    assert n.ready("x") is False
    assert n.watchdog_interval() is None


def test_ready_and_status_in_one_datagram(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
    n = Notifier.from_env()
    assert n.enabled
    assert n.notify(READY=1, STATUS="3 pipelines running") is True
    assert listener.recv() == "READY=1\nSTATUS=3 pipelines running"
    assert n.notify(status="line one\nline two", watchdog=True)
    assert listener.recv() == "STATUS=line one line two\nWATCHDOG=1"
    n.close()


def test_helpers(listener: Listener) -> None:
    n = Notifier(listener.address)
    n.ready("up")
    assert listener.recv_fields() == {"READY": "1", "STATUS": "up"}
    n.stopping()
    assert listener.recv_fields() == {"STOPPING": "1"}
    n.watchdog()
    assert listener.recv_fields() == {"WATCHDOG": "1"}
    before = time.monotonic_ns() // 1000
    n.reloading("reloading configuration")
    fields = listener.recv_fields()
    assert fields["RELOADING"] == "1" and fields["STATUS"] == "reloading configuration"
    assert int(fields["MONOTONIC_USEC"]) >= before
    n.extend_timeout(2.5)
    assert listener.recv_fields() == {"EXTEND_TIMEOUT_USEC": "2500000"}
    n.close()
    n.close()


def test_abstract_namespace(abstract_listener: Listener, monkeypatch: pytest.MonkeyPatch) -> None:
    assert abstract_listener.address.startswith("@")
    monkeypatch.setenv("NOTIFY_SOCKET", abstract_listener.address)
    n = Notifier.from_env()
    assert n.notify(READY=1)
    assert abstract_listener.recv() == "READY=1"


def test_send_errors_never_raise(tmp_path: Path, listener: Listener) -> None:
    gone = Notifier(str(tmp_path / "nobody-listens.sock"))
    assert gone.enabled
    assert gone.notify(READY=1) is False
    assert Notifier("relative/path.sock").notify(READY=1) is False  # unsupported: disabled
    n = Notifier(listener.address)
    assert n.notify(READY=1)
    listener.close()  # the manager went away
    assert n.notify(STATUS="still fine") is False


def test_watchdog_interval_from_env(listener: Listener, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert Notifier.from_env().watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert Notifier.from_env().watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert Notifier.from_env().watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "soon")
    monkeypatch.delenv("WATCHDOG_PID")
    assert Notifier.from_env().watchdog_interval() is None


def test_from_env_can_unset_the_environment(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    n = Notifier.from_env(unset_environment=True)
    assert "NOTIFY_SOCKET" not in os.environ and "WATCHDOG_USEC" not in os.environ
    assert n.enabled and n.watchdog_interval() == 0.5


class CheckCounter:
    """A health check whose answer tests flip, counting the calls."""

    def __init__(self) -> None:
        self.healthy = True
        self.count = 0
        self._cond = threading.Condition()

    def __call__(self) -> bool:
        with self._cond:
            self.count += 1
            self._cond.notify_all()
        return self.healthy  # read after counting: check n+1 sees any flip made before n

    def wait_count(self, n: int, timeout: float = 5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.count >= n, timeout)


def test_watchdog_pings_only_while_healthy(listener: Listener) -> None:
    n = Notifier(listener.address, watchdog_usec=40_000)  # ping every 20 ms
    check = CheckCounter()
    dog = Watchdog(n, check)
    assert dog.interval == pytest.approx(0.02)
    assert dog.start()
    try:
        assert listener.recv() == "WATCHDOG=1"
        assert listener.recv() == "WATCHDOG=1"

        check.healthy = False  # the supervisor is stuck
        c0 = check.count
        assert check.wait_count(c0 + 1)  # earlier checks (and their pings) are done now
        listener.drain()
        assert check.wait_count(c0 + 4)  # three more unhealthy checks...
        assert listener.drain() == []  # ...sent nothing
        assert dog.misses >= 3

        check.healthy = True
        assert listener.recv() == "WATCHDOG=1"  # pings resume
    finally:
        dog.stop()
    assert not dog.active
    dog.stop()  # idempotent


def test_watchdog_check_that_raises_counts_as_unhealthy(listener: Listener) -> None:
    calls = threading.Semaphore(0)

    def broken() -> bool:
        calls.release()
        raise RuntimeError("supervisor gone")

    with Watchdog(Notifier(listener.address), broken, interval=0.01) as dog:
        for _ in range(3):
            assert calls.acquire(timeout=5.0)
        assert dog.active
    assert listener.drain() == []
    assert dog.pings == 0 and dog.misses >= 3


def test_watchdog_without_interval_does_nothing(listener: Listener) -> None:
    dog = Watchdog(Notifier(listener.address), lambda: True)  # no WATCHDOG_USEC
    assert dog.interval is None
    assert dog.start() is False
    assert not dog.active
    dog.stop()
    assert Watchdog(Notifier(None), lambda: True, interval=0.01).start() is False


def test_watchdog_stop_is_immediate(listener: Listener) -> None:
    dog = Watchdog(Notifier(listener.address), lambda: True, interval=60.0)
    dog.start()
    assert listener.recv() == "WATCHDOG=1"  # first check right away
    t0 = time.monotonic()
    dog.stop()
    assert time.monotonic() - t0 < 1.0
    assert not dog.active
