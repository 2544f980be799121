"""Budgets and breakers shared by every pipeline that talks to the same external system."""

from __future__ import annotations

import threading
from typing import Any

from recsync.clock import Clock
from recsync.config import CircuitBreakerSettings, RateLimitSettings
from recsync.resilience import CircuitBreaker, RateLimiter, write_reserve_for


class Systems:
    """One RateLimiter and one CircuitBreaker per system id, created on first use.

    A system asked for without a limit (a local side whose config sets none) gets no
    limiter: it is not throttled. A limiter made for it earlier is kept for the pipelines
    that do configure one.
    """

    def __init__(self, clock: Clock, *, redis_url: str = "", nodes_hint: int = 1) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self.limiters: dict[str, Any] = {}  # RateLimiter, or RedisRateLimiter when shared
        self.breakers: dict[str, CircuitBreaker] = {}
        self.redis_url = redis_url  # [cluster] redis: the CRM budgets shared by the nodes
        self.nodes_hint = nodes_hint
        self._redis: Any = None

    def get(
        self, system_id: str, rl: RateLimitSettings | None, cb: CircuitBreakerSettings,
        *, shared: bool = False,
    ) -> tuple[RateLimiter | None, CircuitBreaker]:
        """``shared``: an external system (not a local side), whose budget is kept in Redis
        when ``[cluster] redis`` is set."""
        with self._lock:
            limiter = None
            if rl is not None:
                limiter = self.limiters.get(system_id)
                if limiter is None:
                    limiter = self._make_limiter(system_id, rl, shared)
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

    def _make_limiter(self, system_id: str, rl: RateLimitSettings, shared: bool) -> Any:
        write = write_reserve_for(rl.max_requests)
        if not (shared and self.redis_url):
            return RateLimiter(rl.max_requests, rl.window_seconds, self.clock,
                               write_reserve=write)
        from recsync.budget import RedisRateLimiter, live_nodes, redis_client

        if self._redis is None:
            self._redis = redis_client(self.redis_url)
        hint = self.nodes_hint
        return RedisRateLimiter(self._redis, system_id, rl.max_requests, rl.window_seconds,
                                self.clock, write_reserve=write,
                                nodes=lambda: live_nodes(hint))
