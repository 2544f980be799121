"""Fixtures of the dashboard tests: a real recsyncd process, a fake daemon on the real
ControlServer, and a condition poll that yields to the app (no sleeping)."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot  # noqa: TID251 (the dashboard tests drive textual)

from recsync.client import ControlClient
from tests.e2e.helpers import make_users, recsyncd_cmd
from tests.e2e.test_service import BLOCKING, RULES, SETTINGS
from tests.tui.fake import FakeDaemon


async def until(
    pilot: Pilot[Any], predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition"
) -> Any:
    """Let the app run until ``predicate()`` is truthy (fails after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await pilot.pause(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class Recsyncd:
    """A real recsyncd process on ``folder`` (restartable on the same runtime dir)."""

    folder: Path
    proc: subprocess.Popen[str] | None = None
    notify: socket.socket | None = None
    messages: list[str] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"ipc://{self.folder}/run/control.sock"

    def client(self) -> ControlClient:
        return ControlClient(self.endpoint, timeout=2.0)

    def start(self) -> None:
        if self.notify is None:
            self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.notify.bind(str(self.folder / "notify.sock"))
        self.messages.clear()
        env = dict(
            os.environ,
            RUNTIME_DIRECTORY=str(self.folder / "run"),
            NOTIFY_SOCKET=str(self.folder / "notify.sock"),
            LOGS_DIRECTORY=str(self.folder / "logs"),
        )
        env.pop("WATCHDOG_PID", None)
        env.pop("WATCHDOG_USEC", None)
        self.proc = subprocess.Popen(
            recsyncd_cmd(self.folder, self.folder / "state"),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until READY=1 arrives on the test NOTIFY_SOCKET (a blocking recv)."""
        assert self.notify is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.notify.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                message = self.notify.recv(4096).decode()
            except TimeoutError:
                break
            if "READY=1" in message.split("\n"):
                return
        raise AssertionError("recsyncd did not get ready")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def recsyncd(tmp_path: Path) -> Iterator[Recsyncd]:
    make_users(
        tmp_path / "a.sqlite", [(i, f"User {i}", f"u{i}@x.org", "active") for i in range(1, 21)]
    )
    make_users(tmp_path / "b.sqlite", [])
    with sqlite3.connect(tmp_path / "b.sqlite") as db:
        db.executescript(BLOCKING)
    db.close()
    (tmp_path / "customer_settings.toml").write_text(SETTINGS)
    (tmp_path / "rules.toml").write_text(RULES)
    daemon = Recsyncd(tmp_path)
    daemon.start()
    try:
        daemon.wait_ready()
        yield daemon
    finally:
        daemon.stop()
        if daemon.notify is not None:
            daemon.notify.close()


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeDaemon]:
    with FakeDaemon(tmp_path) as daemon:
        yield daemon
