"""The API budget shared through Redis (the machine's Redis on 127.0.0.1:6379).

Skipped with the reason when Redis cannot be reached, unless RECSYNC_REQUIRE_SERVICES=1.
Each test uses its own key prefix and deletes its keys.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from recsync.budget import RedisRateLimiter, live_nodes, redis_client, set_live_nodes_source
from recsync.clock import FakeClock

REDIS_URL = os.environ.get("RECSYNC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def require_redis() -> None:
    try:
        redis_client(REDIS_URL).ping()
    except redis.RedisError as exc:
        reason = f"Redis at {REDIS_URL} is unreachable: {exc}"
        if os.environ.get("RECSYNC_REQUIRE_SERVICES") == "1":
            pytest.fail(reason + " (RECSYNC_REQUIRE_SERVICES=1)")
        pytest.skip(reason)


@pytest.fixture
def prefix() -> Iterator[str]:
    require_redis()
    pre = f"rstest:{uuid.uuid4().hex[:10]}:"
    yield pre
    client = redis_client(REDIS_URL)
    keys = list(client.scan_iter(match=pre + "*"))
    if keys:
        client.delete(*keys)


def _limiter(prefix: str, max_requests: int = 10, window: float = 60.0,
             **kw: object) -> RedisRateLimiter:
    return RedisRateLimiter(redis_client(REDIS_URL), "sf:test", max_requests, window,
                            prefix=prefix, **kw)  # type: ignore[arg-type]


def test_window_is_exact_under_concurrent_nodes(prefix: str) -> None:
    """Eight limiters (eight nodes, each its own connection) race for a window of 50: 50
    requests are granted, not one more, and every refusal says how long to wait."""
    limiters = [_limiter(prefix, 50) for _ in range(8)]
    start = threading.Barrier(8)

    def race(lim: RedisRateLimiter) -> tuple[int, list[float]]:
        start.wait()
        got, waits = 0, []
        for _ in range(30):
            wait = lim.try_acquire()
            if wait == 0.0:
                got += 1
            else:
                waits.append(wait)
        return got, waits

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(race, limiters))
    assert sum(got for got, _ in results) == 50
    refusals = [w for _, ws in results for w in ws]
    assert len(refusals) == 8 * 30 - 50
    assert all(0 < w <= 61.0 for w in refusals)  # the window, with its margin (1s)
    assert limiters[0].usage() == (50, 50)


def test_window_is_exact_across_processes(prefix: str, tmp_path: Path) -> None:
    """Three processes take from one window of 40: 40 granted in all."""
    script = tmp_path / "take.py"
    script.write_text(
        "import sys\n"
        "from recsync.budget import RedisRateLimiter, redis_client\n"
        "lim = RedisRateLimiter(redis_client(sys.argv[1]), 'sf:test', 40, 60.0,"
        " prefix=sys.argv[2])\n"
        "sys.stdin.readline()\n"
        "print(sum(1 for _ in range(30) if lim.try_acquire() == 0.0))\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, str(script), REDIS_URL, prefix],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(3)]
    outs = [p.communicate("go\n", timeout=60)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(int(o) for o in outs) == 40


def test_read_leaves_the_write_reserve(prefix: str) -> None:
    lim = _limiter(prefix, 8, write_reserve=2)
    assert [lim.try_acquire(read=True) for _ in range(6)] == [0.0] * 6
    assert lim.try_acquire(read=True) > 0  # reads stop at 6
    assert lim.try_acquire() == 0.0 and lim.try_acquire() == 0.0  # writes have 2 more
    assert lim.try_acquire() > 0


def test_retry_after_from_one_node_holds_every_node(prefix: str) -> None:
    a, b = _limiter(prefix), _limiter(prefix)
    assert b.try_acquire() == 0.0
    a.block_until(30.0)
    wait = b.try_acquire()
    assert 29.0 < wait <= 30.0
    assert 29.0 < b.wait_seconds() <= 30.0
    a.block_until(5.0)  # a shorter block never shortens a longer one
    assert b.try_acquire() > 29.0


def test_remote_budget_reported_by_one_node_counts_for_all(prefix: str) -> None:
    """REQUEST_LIMIT figures: a reported remaining allocation of 3 is shared; the fourth
    request on any node waits until the reset."""
    a, b = _limiter(prefix, 100), _limiter(prefix, 100)
    a.set_remote_budget(3, time.time() + 20.0)
    assert [b.try_acquire(), a.try_acquire(), b.try_acquire()] == [0.0] * 3
    assert 19.0 < a.try_acquire() <= 20.0
    assert 19.0 < b.try_acquire() <= 20.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OwnRedis:
    """A redis-server of the test's own on a free port, stopped and started at will."""

    def __init__(self, tmp: Path) -> None:
        self.port, self.tmp = _free_port(), tmp
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.tmp)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                assert self.proc.poll() is None, "redis-server exited"
                threading.Event().wait(0.05)  # polled with a deadline

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=20)
            self.proc = None


def test_redis_down_falls_back_to_a_share_then_back(tmp_path: Path) -> None:
    """Redis stops mid-way: the limiter keeps budget / live nodes locally and says so, and
    honours a Retry-After it saw before; Redis back: shared again (its window counts)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = OwnRedis(tmp_path)
    server.start()
    clock = FakeClock()
    try:
        lim = RedisRateLimiter(redis_client(f"redis://127.0.0.1:{server.port}/0"), "sf:o",
                               12, 60.0, clock, prefix="t:", nodes=lambda: 3,
                               retry_interval=5.0)
        assert [lim.try_acquire() for _ in range(2)] == [0.0, 0.0]
        assert lim.shared and lim.budget_note().startswith("shared through Redis")
        server.stop()
        granted = sum(1 for _ in range(10) if lim.try_acquire() == 0.0)
        assert granted == 4  # 12 / 3 nodes
        assert not lim.shared
        note = lim.budget_note()
        assert note.startswith("Redis unreachable") and "4 of 12" in note
        assert lim.usage() == (4, 4)
        server.start()
        clock.advance(5.0)  # the retry interval: Redis is asked again
        assert lim.try_acquire() == 0.0
        assert lim.shared
        assert lim.usage() == (1, 12)  # the fresh server's window
    finally:
        server.stop()


def test_unreachable_from_the_start_and_retry_after_kept(prefix: str) -> None:
    """Pointed at a closed port: the fallback from the first call; a Retry-After holds it."""
    clock = FakeClock()
    lim = RedisRateLimiter(redis_client(f"redis://127.0.0.1:{_free_port()}/0"), "sf:x", 10,
                           60.0, clock, nodes=lambda: 2)
    assert lim.try_acquire() == 0.0
    assert not lim.shared and "5 of 10" in lim.budget_note()
    lim.block_until(7.0)
    assert lim.try_acquire() == pytest.approx(7.0)


def test_the_local_share_follows_the_live_nodes_while_redis_is_down() -> None:
    """Redis unreachable: each node keeps budget / live nodes, counted on every use, not
    once when Redis went away: a second node joining halves this one's share (the two
    together stay within the budget), and a reconfigure during the outage gives the new
    figures' share at once, the requests already taken in the window still counting."""
    clock = FakeClock()
    live = [1]
    lim = RedisRateLimiter(redis_client(f"redis://127.0.0.1:{_free_port()}/0"), "sf:n", 10,
                           60.0, clock, nodes=lambda: live[0], retry_interval=5.0)
    assert [lim.try_acquire() for _ in range(3)] == [0.0] * 3
    assert "keeps 10 of 10" in lim.budget_note()
    live[0] = 2  # a second node joins, Redis still down
    assert "keeps 5 of 10" in lim.budget_note()
    assert sum(1 for _ in range(10) if lim.try_acquire() == 0.0) == 2  # 3 + 2 = its 5
    assert lim.usage() == (5, 5)
    clock.advance(5.0)  # Redis asked again (still down): the share holds
    assert lim.try_acquire() > 0
    lim.reconfigure(20, 60.0)
    assert "keeps 10 of 20" in lim.budget_note()
    assert lim.usage() == (5, 10)  # the window's requests kept counting
    assert sum(1 for _ in range(10) if lim.try_acquire() == 0.0) == 5
    live[0] = 1  # the other node left: the whole budget again
    assert "keeps 20 of 20" in lim.budget_note()
    assert lim.usage() == (10, 20)


def test_live_nodes_source() -> None:
    assert live_nodes(3) == 3
    set_live_nodes_source(lambda: 5)
    try:
        assert live_nodes(3) == 5
    finally:
        set_live_nodes_source(None)
    assert live_nodes(0) == 1
