"""Resilience primitives: a sliding-window rate limiter, a circuit breaker, backoff delays.

Pure logic on an injected :class:`~recsync.clock.Clock` (no sleeping, no I/O). The limiter
and the breaker are thread-safe: several connector actors share one limiter per external
system.
"""

from __future__ import annotations

import random
import threading
from collections import deque
from typing import Literal

from recsync.clock import Clock, SystemClock

__all__ = ["BreakerState", "CircuitBreaker", "RateLimiter", "backoff_cap", "backoff_delay",
           "write_reserve_for"]

# Float slack: a wait computed as ``t - now`` and then slept (or advanced) must count as
# elapsed even when ``now + (t - now)`` rounds to a hair below ``t``.
_EPS = 1e-9

BreakerState = Literal["closed", "open", "half_open"]


class BudgetFigures:
    """The figures of a request budget (max_requests per window_seconds, the reserve kept
    from the remote allocation, the write reserve), set together and checked first."""

    _max: int
    _window: float
    _reserve: int
    _write_reserve: int

    def _set_figures(self, max_requests: int, window_seconds: float, reserve: int | None,
                     write_reserve: int | None) -> None:
        """Set the figures (None: keep that reserve); ValueError, and nothing changed,
        when they do not hold together. The caller holds the object's lock, if any."""
        new_reserve = self._reserve if reserve is None else reserve
        new_write = self._write_reserve if write_reserve is None else write_reserve
        _check_limits(max_requests, window_seconds, new_reserve)
        _check_write_reserve(max_requests, new_write)
        self._max = max_requests
        self._window = float(window_seconds)
        self._reserve = new_reserve
        self._write_reserve = new_write


class RateLimiter(BudgetFigures):
    """Sliding-window limiter: at most ``max_requests`` in any ``window_seconds``.

    Besides the local window it honours two signals from the remote system:

    * :meth:`block_until` -- "retry after X seconds" (HTTP 429 ``Retry-After``);
    * :meth:`set_remote_budget` -- the remaining allocation the API reports
      (Salesforce ``Sforce-Limit-Info: api-usage=USED/MAX``, Outreach
      ``X-RateLimit-Remaining``/``X-RateLimit-Reset``). Acquires that would leave fewer
      than ``reserve`` remote calls wait until the reported reset.

    ``write_reserve`` requests of the window are kept for writes: a read (a poll) waits
    once the window holds ``max_requests - write_reserve``, so polling never holds up the
    writes of queued changes.
    """

    def __init__(
        self,
        max_requests: int,
        window_seconds: float,
        clock: Clock | None = None,
        *,
        reserve: int = 0,
        write_reserve: int = 0,
    ) -> None:
        self._set_figures(max_requests, window_seconds, reserve, write_reserve)
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._lock = threading.Lock()
        self._log: deque[float] = deque()  # monotonic timestamps, one per request
        self._blocked_until = 0.0  # monotonic
        self._remote_remaining: int | None = None
        self._remote_until = 0.0  # monotonic time the remote budget figure expires
        self.acquired = 0  # requests taken so far (for metrics)
        self.limit_hits = 0  # acquires told to wait (for metrics)

    @property
    def clock(self) -> Clock:
        return self._clock

    def try_acquire(self, n: int = 1, *, read: bool = False) -> float:
        """Take ``n`` requests if they fit now: return 0.0 and record them.

        Otherwise record nothing and return the seconds to wait until they would fit
        (assuming no one else acquires meanwhile). A ``read`` fits only below the
        ``write_reserve``.
        """
        if n < 1:
            raise ValueError(f"n must be at least 1, not {n}")
        with self._lock:
            cap = self._max - (self._write_reserve if read else 0)
            if n > cap:
                raise ValueError(
                    f"{n} requests can never fit a window of {cap}; split the batch"
                )
            now = self._clock.monotonic()
            self._prune(now)
            wait = self._blocked_until - now
            if self._remote_remaining is not None:
                if now + _EPS >= self._remote_until:
                    self._remote_remaining = None
                elif self._remote_remaining - n < self._reserve:
                    wait = max(wait, self._remote_until - now)
            excess = len(self._log) + n - cap
            if excess > 0:
                wait = max(wait, self._log[excess - 1] + self._window - now)
            if wait > _EPS:
                self.limit_hits += 1
                return wait
            self.acquired += n
            self._log.extend([now] * n)
            if self._remote_remaining is not None:
                self._remote_remaining -= n
            return 0.0

    def reconfigure(
        self, max_requests: int, window_seconds: float, *, reserve: int | None = None,
        write_reserve: int | None = None,
    ) -> None:
        """Change the limits live; requests already made keep counting."""
        with self._lock:
            self._set_figures(max_requests, window_seconds, reserve, write_reserve)

    def wait_seconds(self, n: int = 1) -> float:
        """Seconds until ``n`` requests would fit (0.0: now), without taking them.

        Counts a Retry-After block, a remote budget kept in reserve and a full window.
        """
        with self._lock:
            now = self._clock.monotonic()
            self._prune(now)
            wait = self._blocked_until - now
            if (self._remote_remaining is not None and now + _EPS < self._remote_until
                    and self._remote_remaining - n < self._reserve):
                wait = max(wait, self._remote_until - now)
            excess = len(self._log) + n - self._max
            if excess > 0:
                wait = max(wait, self._log[excess - 1] + self._window - now)
            return wait if wait > _EPS else 0.0

    def usage(self) -> tuple[int, int]:
        """``(requests in the current window, max_requests)``."""
        with self._lock:
            self._prune(self._clock.monotonic())
            return len(self._log), self._max

    def block_until(self, seconds_from_now: float) -> None:
        """No acquire succeeds for ``seconds_from_now`` (extends, never shortens, a block)."""
        with self._lock:
            until = self._clock.monotonic() + seconds_from_now
            self._blocked_until = max(self._blocked_until, until)

    def set_remote_budget(self, remaining: int, reset_at: float | None) -> None:
        """Record the allocation the remote API says is left.

        ``reset_at`` is wall-clock epoch seconds when the allocation refills (``None``: not
        known; the figure is then trusted for one window). Until then each acquire counts
        against ``remaining``, and an acquire that would leave fewer than ``reserve`` waits
        until the reset. A later report replaces this one.
        """
        with self._lock:
            now = self._clock.monotonic()
            if reset_at is None:
                self._remote_until = now + self._window
            else:
                self._remote_until = now + max(0.0, reset_at - self._clock.time())
            self._remote_remaining = remaining

    def _prune(self, now: float) -> None:
        log, horizon = self._log, now + _EPS - self._window
        while log and log[0] <= horizon:
            log.popleft()

    def __repr__(self) -> str:
        used, limit = self.usage()
        return f"RateLimiter({used}/{limit} per {self._window}s, reserve={self._reserve})"


def _check_limits(max_requests: int, window_seconds: float, reserve: int) -> None:
    if max_requests < 1:
        raise ValueError(f"max_requests must be at least 1, not {max_requests}")
    if not window_seconds > 0:
        raise ValueError(f"window_seconds must be positive, not {window_seconds}")
    if reserve < 0:
        raise ValueError(f"reserve must not be negative, not {reserve}")


def _check_write_reserve(max_requests: int, write_reserve: int) -> None:
    if not 0 <= write_reserve < max_requests:
        raise ValueError(f"write_reserve must be from 0 to max_requests - 1 ({max_requests - 1}),"
                         f" not {write_reserve}")


def write_reserve_for(max_requests: int) -> int:
    """The share of a budget kept for writes: a quarter of it (none below 4 requests)."""
    return max_requests // 4


class CircuitBreaker:
    """Stops calls to a failing system, then lets one probe through to test it.

    * ``closed``: every call allowed; ``failure_threshold`` consecutive failures open it.
    * ``open``: no calls until ``reset_timeout`` has passed since it opened; then the next
      :meth:`allow` moves it to ``half_open`` and lets exactly one probe through.
    * ``half_open``: the probe is out, other calls are refused. Its success closes the
      breaker, its failure re-opens it with a fresh timeout. A probe whose outcome is never
      recorded is given up after ``reset_timeout`` and another probe is allowed.
    """

    def __init__(
        self, failure_threshold: int, reset_timeout: float, clock: Clock | None = None
    ) -> None:
        _check_breaker(failure_threshold, reset_timeout)
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._lock = threading.Lock()
        self._threshold = failure_threshold
        self._timeout = float(reset_timeout)
        self._state: BreakerState = "closed"
        self._failures = 0
        self._since = 0.0  # monotonic: when it opened, or when the probe went out

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._state

    @property
    def failures(self) -> int:
        """Consecutive failures counted so far."""
        with self._lock:
            return self._failures

    @property
    def retry_at(self) -> float | None:
        """Monotonic time the next probe is allowed; ``None`` while closed."""
        with self._lock:
            if self._state == "closed":
                return None
            return self._since + self._timeout

    def allow(self) -> bool:
        """May a call go out now? In half-open, ``True`` means "you are the probe"."""
        with self._lock:
            if self._state == "closed":
                return True
            now = self._clock.monotonic()
            if now + _EPS < self._since + self._timeout:
                return False
            self._state = "half_open"
            self._since = now
            return True

    def record_success(self) -> None:
        """A call succeeded: close the breaker and forget the failures."""
        with self._lock:
            self._state = "closed"
            self._failures = 0

    def record_failure(self) -> None:
        """A call failed: count it; open at the threshold, re-open after a failed probe."""
        with self._lock:
            self._failures += 1
            if self._state == "half_open" or (
                self._state == "closed" and self._failures >= self._threshold
            ):
                self._state = "open"
                self._since = self._clock.monotonic()

    def reconfigure(self, failure_threshold: int, reset_timeout: float) -> None:
        """Change the limits live; they apply from the next failure / the current timeout."""
        _check_breaker(failure_threshold, reset_timeout)
        with self._lock:
            self._threshold = failure_threshold
            self._timeout = float(reset_timeout)

    def __repr__(self) -> str:
        return f"CircuitBreaker(state={self.state!r}, failures={self.failures})"


def _check_breaker(failure_threshold: int, reset_timeout: float) -> None:
    if failure_threshold < 1:
        raise ValueError(f"failure_threshold must be at least 1, not {failure_threshold}")
    if reset_timeout < 0:
        raise ValueError(f"reset_timeout must not be negative, not {reset_timeout}")


def backoff_cap(attempt: int, base: float, maximum: float) -> float:
    """The capped exponential ``min(maximum, base * 2**(attempt-1))`` for attempt >= 1."""
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, not {attempt}")
    if base < 0 or maximum < 0:
        raise ValueError(f"base and maximum must not be negative ({base}, {maximum})")
    try:
        exponential = base * 2.0 ** (attempt - 1)
    except OverflowError:
        exponential = float("inf")
    return min(maximum, exponential)


def backoff_delay(
    attempt: int, base: float, maximum: float, rng: random.Random | None = None
) -> float:
    """Exponential backoff with equal jitter for retry number ``attempt`` (>= 1).

    With ``cap = min(maximum, base * 2**(attempt-1))`` the delay is ``cap/2`` plus a random
    share of ``cap/2``: always within ``[cap/2, cap]``.
    """
    cap = backoff_cap(attempt, base, maximum)
    draw = rng.random() if rng is not None else random.random()
    half = cap / 2
    return half + half * draw
