"""systemd notifications (``sd_notify``) and the watchdog, without libsystemd.

The protocol is one datagram of ``KEY=value`` lines sent to the AF_UNIX socket named by
``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). Outside systemd
(``NOTIFY_SOCKET`` unset) every call is a no-op, so the daemon calls these unconditionally::

    notifier = Notifier.from_env()
    notifier.notify(READY=1, STATUS="3 pipelines running")
    ...  # on SIGHUP
    notifier.reloading()          # RELOADING=1 + MONOTONIC_USEC
    notifier.notify(READY=1, STATUS="configuration reloaded")
    ...  # on SIGTERM
    notifier.notify(STOPPING=1, STATUS="draining in-flight batches")

:class:`Watchdog` sends ``WATCHDOG=1`` every half ``WatchdogSec=`` only while a health
check passes, so systemd restarts a daemon whose supervisor is stuck.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

__all__ = ["Notifier", "Watchdog"]

log = logging.getLogger(__name__)


class Notifier:
    """Sends ``sd_notify`` messages to ``address`` (``None``: every call does nothing).

    ``address`` is written as in ``$NOTIFY_SOCKET``: an absolute path, or ``@name`` for a
    Linux abstract socket. Sending never raises: failures are logged at debug level and
    reported by the ``False`` return value. Thread-safe.
    """

    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        self.address = address or None
        self.watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._target: str | bytes | None = _socket_address(self.address)
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, unset_environment: bool = False
    ) -> Notifier:
        """A notifier from ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``.

        The watchdog applies only when ``WATCHDOG_PID`` is unset or names this process.
        With ``unset_environment`` the three variables are removed from ``os.environ`` so
        child processes do not inherit them (like ``sd_notify(unset_environment=1)``).
        """
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        usec: int | None = None
        raw_usec, raw_pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
        if raw_usec:
            try:
                usec = int(raw_usec)
                if raw_pid and int(raw_pid) != os.getpid():
                    usec = None  # the watchdog is meant for another process
            except ValueError:
                log.debug(
                    "ignoring malformed watchdog variables",
                    extra={"watchdog_usec": raw_usec, "watchdog_pid": raw_pid},
                )
                usec = None
        if unset_environment and environ is None:
            for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                os.environ.pop(name, None)
        return cls(address, watchdog_usec=usec)

    @property
    def enabled(self) -> bool:
        """Whether messages go anywhere (``NOTIFY_SOCKET`` was set and usable)."""
        return self._target is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between ``WATCHDOG=1`` pings: half of ``WATCHDOG_USEC``; None: no watchdog."""
        if self.watchdog_usec is None or not self.enabled:
            return None
        return self.watchdog_usec / 2_000_000

    def notify(self, **fields: object) -> bool:
        """Send ``fields`` as one message: ``notify(READY=1, STATUS="running")``.

        Keys are upper-cased; ``True`` is sent as ``1``; newlines in values become spaces.
        Returns whether the datagram was sent (``False`` when disabled or on any error).
        """
        if self._target is None or not fields:
            return False
        lines = []
        for key, value in fields.items():
            text = "1" if value is True else "0" if value is False else str(value)
            lines.append(f"{key.upper()}={text.replace(chr(10), ' ')}")
        data = "\n".join(lines).encode("utf-8")
        try:
            with self._lock:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.sendto(data, self._target)
        except OSError as exc:
            log.debug("sd_notify failed", extra={"notify_socket": self.address, "error": str(exc)})
            return False
        return True

    # -- the usual messages ------------------------------------------------------------------
    def ready(self, status: str | None = None) -> bool:
        return self._send(status, READY=1)

    def status(self, status: str) -> bool:
        return self.notify(STATUS=status)

    def reloading(self, status: str | None = None) -> bool:
        """``RELOADING=1`` (with ``MONOTONIC_USEC``, which ``Type=notify-reload`` requires).

        Send :meth:`ready` when the reload is done (or has failed and the old config stays).
        """
        usec = time.monotonic_ns() // 1000  # CLOCK_MONOTONIC on Linux, as systemd expects
        return self._send(status, RELOADING=1, MONOTONIC_USEC=usec)

    def stopping(self, status: str | None = None) -> bool:
        return self._send(status, STOPPING=1)

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def extend_timeout(self, seconds: float) -> bool:
        """Ask systemd for ``seconds`` more (startup, reload or stop), e.g. while draining."""
        return self.notify(EXTEND_TIMEOUT_USEC=int(seconds * 1_000_000))

    def _send(self, status: str | None, **fields: object) -> bool:
        if status is not None:
            fields["STATUS"] = status
        return self.notify(**fields)

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def __repr__(self) -> str:
        return f"Notifier({self.address!r}, watchdog_usec={self.watchdog_usec!r})"


def _socket_address(address: str | None) -> str | bytes | None:
    if not address:
        return None
    if address.startswith("@"):
        return b"\0" + address[1:].encode("utf-8")  # Linux abstract namespace
    if address.startswith("/"):
        return address
    log.debug(
        "unsupported NOTIFY_SOCKET address; notifications disabled",
        extra={"notify_socket": address},
    )
    return None


class Watchdog:
    """A thread that pings the systemd watchdog while ``healthy()`` returns True.

    Every ``interval`` seconds (default: :meth:`Notifier.watchdog_interval`, i.e. half of
    ``WatchdogSec=``) it calls ``healthy()``; only a ``True`` result sends ``WATCHDOG=1``. A
    health check that raises counts as unhealthy. A health check that *blocks* stops the
    pings too, which is the point: systemd then kills and restarts the daemon. Without a
    watchdog interval, :meth:`start` does nothing.
    """

    def __init__(
        self,
        notifier: Notifier,
        healthy: Callable[[], bool],
        *,
        interval: float | None = None,
    ) -> None:
        self.notifier = notifier
        self.healthy = healthy
        self.interval = interval if interval is not None else notifier.watchdog_interval()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.pings = 0  # WATCHDOG=1 messages sent
        self.misses = 0  # checks that failed

    @property
    def active(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def start(self) -> bool:
        """Start pinging; returns False (and starts nothing) when there is no interval."""
        if self.interval is None or self.interval <= 0 or not self.notifier.enabled:
            return False
        if self._thread is not None:
            raise RuntimeError("Watchdog already started")
        self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)
        self._thread.start()
        return True

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop pinging and wait for the thread. Idempotent."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def __enter__(self) -> Watchdog:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        assert self.interval is not None
        was_healthy = True
        while not self._stop.is_set():
            ok = self._check()
            if ok:
                if self.notifier.watchdog():
                    self.pings += 1
                if not was_healthy:
                    log.info("health check passes again; watchdog pings resume")
            else:
                self.misses += 1
                if was_healthy:
                    log.warning("health check failed; withholding watchdog pings")
            was_healthy = ok
            if self._stop.wait(self.interval):
                break

    def _check(self) -> bool:
        try:
            return bool(self.healthy())
        except Exception:
            log.exception("health check raised; counting it as unhealthy")
            return False
