"""LISTEN for a table's NOTIFY on a connection of its own, and wake the poller.

A notification whose payload ``ignore(payload)`` is true (our own writes, tagged with
the pipeline's origin) wakes nobody. The thread reconnects by itself after the server
restarts or the connection drops (polling is the safety net meanwhile), and stops when
asked.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)


class Listener:
    def __init__(self, dsn: str, channel: str, wake: Callable[[], None], *,
                 connect_timeout: float = 10.0, retry_delay: float = 1.0,
                 ignore: Callable[[str], bool] | None = None) -> None:
        self._dsn = dsn
        self._channel = channel
        self._wake = wake
        self._ignore = ignore
        self.ignored = 0  # notifications that woke nobody
        self._connect_timeout = connect_timeout
        self._retry_delay = retry_delay
        self._stop = threading.Event()
        self.listening = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"pg-listen-{channel}",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop; wait up to ``timeout`` seconds for the thread (0: do not wait, it ends
        within half a second and wakes nobody meanwhile)."""
        self._stop.set()
        if timeout > 0:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True,
                                     connect_timeout=max(1, int(self._connect_timeout))) as conn:
                    conn.execute(sql.SQL("LISTEN {c}").format(c=sql.Identifier(self._channel)))
                    self.listening.set()
                    if not self._stop.is_set():
                        self._wake()  # anything that happened while not listening
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5, stop_after=1):
                            if self._stop.is_set():
                                break
                            if self._ignore is not None and self._ignore(note.payload):
                                self.ignored += 1
                            else:
                                self._wake()
            except psycopg.Error as exc:
                log.debug("LISTEN connection lost; reconnecting", extra={
                    "channel": self._channel, "error": type(exc).__name__})
            except Exception:  # the wake callback failed: keep listening
                log.exception("LISTEN wake-up failed", extra={"channel": self._channel})
            finally:
                self.listening.clear()
            with contextlib.suppress(Exception):
                self._stop.wait(self._retry_delay)
