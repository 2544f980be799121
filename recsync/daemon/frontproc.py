"""Keeps the control front (recsync.daemon.front) running beside recsyncd.

The front logs JSON lines on its stdout; a thread here reads them into recsyncd's own log
(stream and log file), so the front's errors are where the operator looks. When the front
exits while recsyncd runs, that is logged with its exit status and a new front is started
(after a short pause that doubles with each quick failure). More than ``max_restarts``
restarts within ``within`` seconds: recsyncd gives up and stops with a non-zero status, so
that its service manager (systemd's Restart=on-failure) restarts the whole daemon rather
than leaving it syncing while `recsync` says it is not running.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("recsyncd.front")

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def relay_line(line: str, pid: int) -> None:
    """Log one line of the front's output into this process's log."""
    line = line.rstrip("\n")
    if not line.strip():
        return
    try:
        entry: Any = json.loads(line)
    except ValueError:
        entry = None
    if not isinstance(entry, dict) or not isinstance(entry.get("msg"), str):
        log.warning("control front output", extra={"line": line, "front_pid": pid})
        return
    level = logging.getLevelName(str(entry.get("level", "info")).upper())
    extra = {k: v for k, v in entry.items()
             if k not in ("ts", "level", "logger", "msg") and k not in _RESERVED}
    extra["front_pid"] = pid
    name = entry.get("logger") if isinstance(entry.get("logger"), str) else log.name
    logging.getLogger(name).log(level if isinstance(level, int) else logging.WARNING,
                                "%s", entry["msg"], extra=extra)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class FrontProcess:
    """The control front process, restarted when it dies; ``on_give_up(reason)`` is called
    (from the watcher thread) when it cannot be kept running."""

    def __init__(
        self, public: str, internal: str, snapshot: Path, *,
        on_give_up: Callable[[str], None], max_restarts: int = 5, within: float = 600.0,
        first_pause: float = 0.1, max_pause: float = 5.0,
    ) -> None:
        self.argv = [sys.executable, "-m", "recsync.daemon.front", public, internal,
                     str(snapshot)]
        self.public = public
        self.on_give_up = on_give_up
        self.max_restarts = max_restarts
        self.within = within
        self.first_pause = first_pause
        self.max_pause = max_pause
        self.restarts = 0
        self._times: deque[float] = deque()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None else None

    def start(self) -> bool:
        """Start the front and its watcher; False (after logging why) if it cannot listen."""
        if not self._spawn():
            return False
        self._thread = threading.Thread(target=self._watch, name="front-watch", daemon=True)
        self._thread.start()
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the front (SIGTERM, then SIGKILL) and the watcher. Safe to call again."""
        with self._lock:
            self._stopping.set()
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout)

    # ---- the watcher ---------------------------------------------------------------------

    def _spawn(self) -> bool:
        """Start a front and read its output up to "ready"; False when it exited first."""
        with self._lock:  # stop() takes the process under this lock: none starts after it
            if self._stopping.is_set():
                return False
            try:
                proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, text=True,
                                        start_new_session=True)
            except OSError as exc:  # no process or descriptor left: a failed start
                log.error("control front could not start", extra={
                    "endpoint": self.public, "error": exc.strerror or str(exc)})
                return False
            self._proc = proc
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == "ready":
                return True
            relay_line(line, proc.pid)
        code = proc.wait()
        log.error("control front could not start", extra={
            "endpoint": self.public, "exit": describe_exit(code)})
        return False

    def _relay(self, out: IO[str], pid: int) -> None:
        for line in out:
            try:
                relay_line(line, pid)
            except Exception:  # never let a strange line end the watcher
                log.exception("control front output not logged")

    def _watch(self) -> None:
        try:
            self._watch_loop()
        except Exception as exc:  # pragma: no cover - a bug here must not go unnoticed
            log.exception("control front watcher failed")
            self.on_give_up(f"the control front watcher failed: {exc}")

    def _watch_loop(self) -> None:
        proc = self._proc
        assert proc is not None
        while True:
            assert proc.stdout is not None
            self._relay(proc.stdout, proc.pid)
            code = proc.wait()
            if self._stopping.is_set():
                return
            log.error("control front exited; starting a new one",
                      extra={"exit": describe_exit(code), "front_pid": proc.pid,
                             "restarts": self.restarts})
            while True:
                pause = self._count_failure(describe_exit(code))
                if pause is None or self._stopping.wait(pause):
                    return
                self.restarts += 1
                failed = self._proc
                if self._spawn():
                    break
                if self._stopping.is_set():
                    return
                code = 1 if self._proc is failed or self._proc is None else (
                    self._proc.returncode)
            proc = self._proc
            assert proc is not None
            log.info("control front restarted", extra={"front_pid": proc.pid,
                                                       "restarts": self.restarts})

    def _count_failure(self, reason: str) -> float | None:
        """The pause before the next start, or None (after giving up) past the limit."""
        now = time.monotonic()
        while self._times and now - self._times[0] > self.within:
            self._times.popleft()
        if len(self._times) >= self.max_restarts:
            text = (f"the control front keeps failing ({len(self._times) + 1} times in "
                    f"{self.within:g} s, last: {reason})")
            log.critical("control front keeps failing; recsyncd stops so that it is "
                         "restarted", extra={"exit": reason, "restarts": self.restarts})
            self.on_give_up(text)
            return None
        self._times.append(now)
        return float(min(self.first_pause * 2 ** (len(self._times) - 1), self.max_pause))
