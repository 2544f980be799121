"""Injectable clocks: the real one for the daemon, a fake one that tests move by hand.

Everything in recsync that measures time (rate limiters, circuit breakers, the scheduler)
takes a :class:`Clock`, so tests run on :class:`FakeClock` and never sleep.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "FakeClock", "ObservableClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """A source of time: a monotonic clock for durations and a wall clock for timestamps."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (only differences are meaningful)."""
        ...

    def time(self) -> float:
        """Wall-clock time in seconds since the epoch."""
        ...


@runtime_checkable
class ObservableClock(Clock, Protocol):
    """A clock that only moves when told to, and says so to its listeners.

    The scheduler waits on such a clock without a real-time timeout and relies on the
    listeners to be woken when the time changes.
    """

    def add_listener(self, listener: Callable[[], None]) -> None: ...

    def remove_listener(self, listener: Callable[[], None]) -> None: ...


class SystemClock:
    """The real clock: :func:`time.monotonic` and :func:`time.time`."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def __repr__(self) -> str:
        return "SystemClock()"


class FakeClock:
    """A clock for tests: stands still until :meth:`advance` moves both readings.

    Thread-safe. Listeners (e.g. a scheduler's wake-up) are called after every advance, on
    the advancing thread, outside the clock's lock.
    """

    def __init__(self, monotonic: float = 0.0, time: float = 1_700_000_000.0) -> None:
        self._lock = threading.Lock()
        self._monotonic = float(monotonic)
        self._time = float(time)
        self._listeners: list[Callable[[], None]] = []

    def monotonic(self) -> float:
        with self._lock:
            return self._monotonic

    def time(self) -> float:
        with self._lock:
            return self._time

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by ``seconds`` (>= 0) and notify the listeners."""
        if seconds < 0:
            raise ValueError(f"a clock cannot go backwards (advance by {seconds})")
        with self._lock:
            self._monotonic += seconds
            self._time += seconds
            listeners = list(self._listeners)
        for listener in listeners:
            listener()

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every :meth:`advance`."""
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[], None]) -> None:
        """Stop calling ``listener``; removing an unknown listener does nothing."""
        with self._lock, contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def __repr__(self) -> str:
        return f"FakeClock(monotonic={self._monotonic!r}, time={self._time!r})"
