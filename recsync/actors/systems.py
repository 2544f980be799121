"""Budgets and breakers shared by every pipeline that talks to the same external system."""

from __future__ import annotations

import threading

from recsync.clock import Clock
from recsync.config import CircuitBreakerSettings, RateLimitSettings
from recsync.resilience import CircuitBreaker, RateLimiter, write_reserve_for


class Systems:
    """One RateLimiter and one CircuitBreaker per system id, created on first use.

    A system asked for without a limit (a local side whose config sets none) gets no
    limiter: it is not throttled. A limiter made for it earlier is kept for the pipelines
    that do configure one.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self.limiters: dict[str, RateLimiter] = {}
        self.breakers: dict[str, CircuitBreaker] = {}

    def get(
        self, system_id: str, rl: RateLimitSettings | None, cb: CircuitBreakerSettings
    ) -> tuple[RateLimiter | None, CircuitBreaker]:
        with self._lock:
            limiter = None
            if rl is not None:
                limiter = self.limiters.get(system_id)
                if limiter is None:
                    limiter = RateLimiter(rl.max_requests, rl.window_seconds, self.clock,
                                          write_reserve=write_reserve_for(rl.max_requests))
                    self.limiters[system_id] = limiter
                else:  # the most recent configuration of the system's budget applies
                    limiter.reconfigure(rl.max_requests, rl.window_seconds,
                                        write_reserve=write_reserve_for(rl.max_requests))
            breaker = self.breakers.get(system_id)
            if breaker is None:
                breaker = CircuitBreaker(cb.failure_threshold, cb.reset_timeout, self.clock)
                self.breakers[system_id] = breaker
            else:
                breaker.reconfigure(cb.failure_threshold, cb.reset_timeout)
            return limiter, breaker
