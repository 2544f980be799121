"""The API budget of an external system shared by several recsyncd nodes through Redis.

:class:`RedisRateLimiter` has :class:`~recsync.resilience.RateLimiter`'s interface. Its
sliding window is a sorted set in Redis, trimmed, counted and added to by one Lua script
(atomic: two nodes can never both take the last request of a window), timed by Redis's
clock (``TIME``), never the nodes'. Limit signals (a 429's Retry-After, the remote
allocation the API reports) are Redis keys with a TTL that every node honours.

When Redis cannot be reached, the limiter falls back to a local RateLimiter with
``max_requests // live nodes`` of the budget (so the nodes together still stay within it),
says so in :meth:`RedisRateLimiter.budget_note`, and goes back to Redis as soon as it
answers again (tried at most every ``retry_interval`` seconds).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

import redis

from recsync.clock import Clock, SystemClock
from recsync.resilience import BudgetFigures, RateLimiter

__all__ = ["RedisRateLimiter", "live_nodes", "redis_client", "set_live_nodes_source"]

log = logging.getLogger(__name__)

# KEYS: window (sorted set), block (Retry-After), remote (remaining allocation)
# ARGV: n, cap (max, less the write reserve for a read), window ms, reserve, member id,
#       take (1: record the requests when they fit; 0: only say how long to wait)
# Returns 0 (taken / fits now) or the milliseconds to wait.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n, cap, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local reserve, id, take = tonumber(ARGV[4]), ARGV[5], ARGV[6] == '1'
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local wait = 0
local blocked = redis.call('PTTL', KEYS[2])
if blocked > 0 then wait = blocked end
local remote = redis.call('GET', KEYS[3])
if remote and tonumber(remote) - n < reserve then
  local left = redis.call('PTTL', KEYS[3])
  if left > wait then wait = left end
end
local excess = redis.call('ZCARD', KEYS[1]) + n - cap
if excess > 0 then
  local oldest = redis.call('ZRANGE', KEYS[1], excess - 1, excess - 1, 'WITHSCORES')
  local w = tonumber(oldest[2]) + window - now
  if w < 1 then w = 1 end
  if w > wait then wait = w end
end
if wait > 0 or not take then return wait end
for i = 1, n do redis.call('ZADD', KEYS[1], now, id .. ':' .. i) end
redis.call('PEXPIRE', KEYS[1], window + 1000)
if remote then redis.call('DECRBY', KEYS[3], n) end
return 0
"""

# KEYS: block; ARGV: ms. Extends, never shortens, a block.
_BLOCK = """
local ms = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < ms then redis.call('SET', KEYS[1], '1', 'PX', ms) end
return 0
"""

# KEYS: window; ARGV: window ms. Trims, then counts.
_USAGE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
return redis.call('ZCARD', KEYS[1])
"""

# a node must not stall on an unreachable Redis: it falls back to its local share instead
REDIS_TIMEOUT = 0.5


def redis_client(url: str) -> redis.Redis:
    """A client for ``url`` (redis://host:6379/0) with short timeouts."""
    return redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT,
                                socket_connect_timeout=REDIS_TIMEOUT)


_live_nodes_source: Callable[[], int] | None = None


def set_live_nodes_source(source: Callable[[], int] | None) -> None:
    """Where :func:`live_nodes` counts the cluster's live nodes (the nodes table, once the
    leases are in); ``None``: the ``[cluster] nodes_hint``."""
    global _live_nodes_source
    _live_nodes_source = source


def live_nodes(hint: int = 1) -> int:
    """How many nodes share the budgets now (at least 1): from the source set with
    :func:`set_live_nodes_source`, else ``hint`` (``[cluster] nodes_hint``)."""
    source = _live_nodes_source
    if source is not None:
        try:
            return max(1, int(source()))
        except Exception:  # the nodes table unreadable: the hint is the best guess
            log.warning("live nodes not counted; assuming %d", hint, exc_info=True)
    return max(1, hint)


class RedisRateLimiter(BudgetFigures):
    """At most ``max_requests`` in any ``window_seconds`` across every node on ``client``.

    Keys are ``{prefix}budget:{system_id}:window|block|remote``. ``nodes`` gives the live
    node count the local fallback divides the budget by.
    """

    def __init__(
        self, client: redis.Redis, system_id: str, max_requests: int, window_seconds: float,
        clock: Clock | None = None, *, reserve: int = 0, write_reserve: int = 0,
        prefix: str = "recsync:", nodes: Callable[[], int] = live_nodes,
        retry_interval: float = 2.0,
    ) -> None:
        self._set_figures(max_requests, window_seconds, reserve, write_reserve)
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._redis = client
        self.system_id = system_id
        base = f"{prefix}budget:{system_id}"
        self._keys = [f"{base}:window", f"{base}:block", f"{base}:remote"]
        self._nodes = nodes
        self._retry_interval = retry_interval
        self._lock = threading.Lock()
        self._acquire = client.register_script(_ACQUIRE)
        self._block = client.register_script(_BLOCK)
        self._usage = client.register_script(_USAGE)
        self._fallback: RateLimiter | None = None  # set while Redis is unreachable
        self._fallback_share = 0
        self._down_error = ""
        self._retry_at = 0.0  # monotonic: when to try Redis again
        self.limit_hits = 0  # acquires that had to wait (for metrics)
        self.acquired = 0  # requests this node took (for metrics)
        self._shadow_limiter = RateLimiter(max_requests, window_seconds, self._clock,
                                           reserve=reserve)

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def shared(self) -> bool:
        """True while the budget is kept in Redis (False: the local fallback)."""
        with self._lock:
            return self._fallback is None

    # -- the RateLimiter interface ------------------------------------------------------------
    def try_acquire(self, n: int = 1, *, read: bool = False) -> float:
        if n < 1:
            raise ValueError(f"n must be at least 1, not {n}")
        cap = self._max - (self._write_reserve if read else 0)
        if n > cap:
            raise ValueError(f"{n} requests can never fit a window of {cap}; split the batch")
        local = self._local()
        if local is not None:
            wait = local.try_acquire(n, read=read)
        else:
            ms = self._call(self._acquire, self._keys,
                            [n, cap, self._window_ms(), self._reserve, uuid.uuid4().hex, 1])
            if ms is None:  # Redis just went away: the fallback decides
                return self.try_acquire(n, read=read)
            wait = int(ms) / 1000.0
        with self._lock:
            if wait > 0:
                self.limit_hits += 1
            else:
                self.acquired += n
        return wait

    def wait_seconds(self, n: int = 1) -> float:
        local = self._local()
        if local is not None:
            return local.wait_seconds(n)
        ms = self._call(self._acquire, self._keys,
                        [n, self._max, self._window_ms(), self._reserve, "", 0])
        if ms is None:
            return self.wait_seconds(n)
        return int(ms) / 1000.0

    def usage(self) -> tuple[int, int]:
        local = self._local()
        if local is not None:
            return local.usage()
        count = self._call(self._usage, self._keys[:1], [self._window_ms()])
        if count is None:
            return self.usage()
        return int(count), self._max

    def block_until(self, seconds_from_now: float) -> None:
        """Every node waits ``seconds_from_now`` (kept locally too, for a fallback)."""
        self._ensure_fallback_block(seconds_from_now)
        if self._local() is None:
            ms = max(1, int(seconds_from_now * 1000 + 0.999))
            self._call(self._block, self._keys[1:2], [ms])

    def set_remote_budget(self, remaining: int, reset_at: float | None) -> None:
        """The allocation the API reports, shared until ``reset_at`` (else for a window)."""
        with self._lock:
            shadow = self._shadow
        shadow.set_remote_budget(remaining, reset_at)
        if self._local() is None:
            ttl = self._window if reset_at is None else reset_at - self._clock.time()
            if ttl <= 0:
                return
            self._call(lambda keys, args: self._redis.set(keys[0], args[0], px=args[1]),
                       self._keys[2:3], [remaining, max(1, int(ttl * 1000))])

    def reconfigure(
        self, max_requests: int, window_seconds: float, *, reserve: int | None = None,
        write_reserve: int | None = None,
    ) -> None:
        nodes = self._nodes()
        with self._lock:
            self._set_figures(max_requests, window_seconds, reserve, write_reserve)
            self._shadow_limiter.reconfigure(max_requests, window_seconds,
                                             reserve=self._reserve)
            if self._fallback is not None:  # the local share of the new figures, at once:
                # the requests already taken in this window keep counting
                self._resize_fallback(self._fallback, nodes, force=True)
                self._retry_at = 0.0

    def budget_note(self) -> str:
        """How this node keeps the budget, for status."""
        self._refresh_share()
        with self._lock:
            if self._fallback is None:
                return f"shared through Redis: {self._max} per {self._window:g}s"
            return (f"Redis unreachable ({self._down_error}): this node keeps "
                    f"{self._fallback_share} of {self._max} per {self._window:g}s locally")

    # -- Redis or the fallback ----------------------------------------------------------------
    @property
    def _shadow(self) -> RateLimiter:
        """A local limiter always kept (limit signals), the fallback while Redis is down."""
        return self._shadow_limiter

    def _ensure_fallback_block(self, seconds: float) -> None:
        with self._lock:
            shadow = self._shadow
            fallback = self._fallback
        shadow.block_until(seconds)
        if fallback is not None:
            fallback.block_until(seconds)

    def _local(self) -> RateLimiter | None:
        """The fallback while Redis is down, or None (use Redis); tries Redis again once
        ``retry_interval`` has passed."""
        with self._lock:
            fallback = self._fallback
            if fallback is None:
                return None
            retry = self._clock.monotonic() >= self._retry_at
            if retry:
                self._retry_at = self._clock.monotonic() + self._retry_interval
        if not retry:
            self._refresh_share()
            return fallback
        try:
            self._redis.ping()
        except redis.RedisError as exc:
            with self._lock:
                self._down_error = _short(exc)
            self._refresh_share()
            return fallback
        with self._lock:
            self._fallback = None
        log.warning("Redis is back: the %s budget is shared again", self.system_id)
        return None

    def _call(self, fn: Callable[[list[str], list[Any]], Any], keys: list[str],
              args: list[Any]) -> Any:
        """``fn(keys, args)`` on Redis; None once it failed (the fallback is then in use)."""
        try:
            return fn(keys, args)
        except redis.RedisError as exc:
            self._go_local(exc)
            return None

    def _go_local(self, exc: Exception) -> None:
        nodes = self._nodes()
        with self._lock:
            self._down_error = _short(exc)
            self._retry_at = self._clock.monotonic() + self._retry_interval
            if self._fallback is not None:
                return
            share, write = self._share_of(nodes)
            fallback = RateLimiter(share, self._window, self._clock, reserve=self._reserve,
                                   write_reserve=write)
            wait = self._shadow.wait_seconds()  # a Retry-After seen before Redis went away
            if wait > 0:
                fallback.block_until(wait)
            self._fallback, self._fallback_share = fallback, share
        log.warning("Redis unreachable (%s): the %s budget falls back to %d of %d per %gs "
                    "on this node", self._down_error, self.system_id, share, self._max,
                    self._window)

    def _share_of(self, nodes: int) -> tuple[int, int]:
        """This node's local share of the budget among ``nodes`` live nodes, and of the
        write reserve."""
        share = max(1, self._max // max(1, nodes))
        return share, min(self._write_reserve * share // self._max, share - 1)

    def _resize_fallback(self, fallback: RateLimiter, nodes: int, force: bool = False) -> bool:
        """(Under ``_lock``) the fallback's figures for ``nodes`` live nodes (``force``:
        set again even if its share is the same: the budget's figures changed); True: they
        were set."""
        share, write = self._share_of(nodes)
        if share == self._fallback_share and not force:
            return False
        fallback.reconfigure(share, self._window, reserve=self._reserve, write_reserve=write)
        self._fallback_share = share
        return True

    def _refresh_share(self) -> None:
        """While local: the share follows the live nodes counted now (a node joining
        while Redis is down halves this one's share; the nodes together stay within the
        budget)."""
        nodes = self._nodes()
        with self._lock:
            fallback = self._fallback
            if fallback is None or not self._resize_fallback(fallback, nodes):
                return
            share = self._fallback_share
        log.warning("Redis still unreachable: the %s budget's local share is now %d of %d "
                    "per %gs (%d live nodes)", self.system_id, share, self._max, self._window,
                    nodes)

    def _window_ms(self) -> int:
        """The window in Redis: a tenth longer (at most a second), so the time between taking
        a request and its arrival at the API cannot squeeze an extra one into a window."""
        ms = max(1, int(self._window * 1000))
        return ms + min(1000, ms // 10)

    def __repr__(self) -> str:
        return f"RedisRateLimiter({self.system_id!r}, {self.budget_note()})"


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]
