"""Rate limiter, circuit breaker and backoff on a FakeClock (no sleeping)."""

from __future__ import annotations

import itertools
import random
import threading

import pytest

from recsync.clock import FakeClock, SystemClock
from recsync.resilience import CircuitBreaker, RateLimiter, backoff_cap, backoff_delay

# -- clock --------------------------------------------------------------------------------


def test_fake_clock_advances_both_readings_and_notifies() -> None:
    clock = FakeClock(monotonic=5.0, time=1000.0)
    calls: list[float] = []
    listener = lambda: calls.append(clock.monotonic())  # noqa: E731
    clock.add_listener(listener)
    clock.advance(2.5)
    assert (clock.monotonic(), clock.time()) == (7.5, 1002.5)
    assert calls == [7.5]
    clock.remove_listener(listener)
    clock.remove_listener(listener)  # unknown: no error
    clock.advance(1)
    assert calls == [7.5]
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_system_clock_reads_real_time() -> None:
    clock = SystemClock()
    first = clock.monotonic()
    assert clock.monotonic() >= first
    assert clock.time() > 1_600_000_000


# -- rate limiter -------------------------------------------------------------------------


def test_window_fills_then_slides() -> None:
    clock = FakeClock()
    limiter = RateLimiter(3, 10.0, clock)
    assert limiter.try_acquire() == 0.0  # t=0
    clock.advance(2)
    assert limiter.try_acquire() == 0.0  # t=2
    clock.advance(2)
    assert limiter.try_acquire() == 0.0  # t=4
    assert limiter.usage() == (3, 3)
    assert limiter.try_acquire() == pytest.approx(6.0)  # the t=0 request leaves at t=10
    assert limiter.usage() == (3, 3)  # a refused acquire records nothing
    clock.advance(5.5)
    assert limiter.try_acquire() == pytest.approx(0.5)
    clock.advance(0.5)  # t=10: the first request has left the window
    assert limiter.usage() == (2, 3)
    assert limiter.try_acquire() == 0.0
    assert limiter.try_acquire() == pytest.approx(2.0)  # next to leave: t=2 -> 12


def test_wait_for_several_requests_is_exact() -> None:
    clock = FakeClock()
    limiter = RateLimiter(4, 10.0, clock)
    for _ in range(4):
        assert limiter.try_acquire() == 0.0
        clock.advance(1)
    # t=4, requests at 0,1,2,3; three must leave for n=3: the one at t=2 leaves at 12.
    wait = limiter.try_acquire(3)
    assert wait == pytest.approx(8.0)
    clock.advance(wait)
    assert limiter.try_acquire(3) == 0.0
    assert limiter.usage() == (4, 4)


def test_waiting_exactly_the_returned_time_always_succeeds() -> None:
    clock = FakeClock(monotonic=0.1)
    limiter = RateLimiter(2, 0.3, clock)
    for _ in range(50):
        wait = limiter.try_acquire()
        if wait:
            clock.advance(wait)
            assert limiter.try_acquire() == 0.0
        clock.advance(0.07)


def test_batch_counts_n_requests_and_oversized_batch_is_refused() -> None:
    clock = FakeClock()
    limiter = RateLimiter(5, 1.0, clock)
    assert limiter.try_acquire(5) == 0.0
    assert limiter.usage() == (5, 5)
    assert limiter.try_acquire() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        limiter.try_acquire(6)
    with pytest.raises(ValueError):
        limiter.try_acquire(0)


def test_reconfigure_applies_live() -> None:
    clock = FakeClock()
    limiter = RateLimiter(2, 10.0, clock)
    assert limiter.try_acquire(2) == 0.0
    assert limiter.try_acquire() == pytest.approx(10.0)
    limiter.reconfigure(4, 10.0)
    assert limiter.usage() == (2, 4)
    assert limiter.try_acquire(2) == 0.0
    limiter.reconfigure(4, 2.0)  # shorter window: the old requests leave sooner
    assert limiter.try_acquire() == pytest.approx(2.0)
    clock.advance(2)
    assert limiter.usage() == (0, 4)
    limiter.reconfigure(1, 2.0)
    assert limiter.try_acquire() == 0.0
    assert limiter.try_acquire() == pytest.approx(2.0)
    with pytest.raises(ValueError):
        limiter.reconfigure(0, 1.0)
    with pytest.raises(ValueError):
        limiter.reconfigure(1, 0.0)


def test_block_until_holds_every_acquire() -> None:
    clock = FakeClock()
    limiter = RateLimiter(100, 60.0, clock)
    limiter.block_until(30)
    assert limiter.try_acquire() == pytest.approx(30.0)
    limiter.block_until(5)  # a shorter block never shortens the current one
    clock.advance(29)
    assert limiter.try_acquire() == pytest.approx(1.0)
    assert limiter.usage() == (0, 100)
    clock.advance(1)
    assert limiter.try_acquire() == 0.0


def test_block_and_full_window_wait_for_the_later_of_both() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1, 10.0, clock)
    assert limiter.try_acquire() == 0.0
    limiter.block_until(3)
    assert limiter.try_acquire() == pytest.approx(10.0)
    limiter.block_until(15)
    assert limiter.try_acquire() == pytest.approx(15.0)


def test_remote_budget_stops_at_reserve_until_reset() -> None:
    clock = FakeClock(monotonic=100.0, time=1_000.0)
    limiter = RateLimiter(100, 1.0, clock, reserve=2)
    limiter.set_remote_budget(remaining=4, reset_at=1_060.0)  # wall clock: 60 s from now
    assert limiter.try_acquire() == 0.0  # 4 -> 3
    assert limiter.try_acquire() == 0.0  # 3 -> 2
    assert limiter.try_acquire() == pytest.approx(60.0)  # would go below the reserve
    clock.advance(30)
    assert limiter.try_acquire() == pytest.approx(30.0)
    clock.advance(30)  # reset time reached: the figure is stale, the limit is lifted
    assert limiter.try_acquire() == 0.0


def test_remote_budget_at_or_below_reserve_blocks_immediately() -> None:
    clock = FakeClock(time=5_000.0)
    limiter = RateLimiter(100, 10.0, clock, reserve=5)
    limiter.set_remote_budget(remaining=5, reset_at=5_020.0)
    assert limiter.try_acquire() == pytest.approx(20.0)
    # a batch that would dig into the reserve waits too
    limiter.set_remote_budget(remaining=7, reset_at=5_020.0)
    assert limiter.try_acquire(3) == pytest.approx(20.0)
    assert limiter.try_acquire(2) == 0.0
    # a fresh report replaces the old one
    limiter.set_remote_budget(remaining=1_000, reset_at=5_020.0)
    assert limiter.try_acquire(10) == 0.0


def test_remote_budget_without_reset_waits_one_window() -> None:
    clock = FakeClock()
    limiter = RateLimiter(100, 10.0, clock, reserve=10)
    limiter.set_remote_budget(remaining=10, reset_at=None)  # e.g. api-usage=90/100
    assert limiter.try_acquire() == pytest.approx(10.0)
    clock.advance(10)
    assert limiter.try_acquire() == 0.0


def test_remote_reset_in_the_past_does_not_block() -> None:
    clock = FakeClock(time=5_000.0)
    limiter = RateLimiter(10, 1.0, clock, reserve=3)
    limiter.set_remote_budget(remaining=0, reset_at=4_990.0)
    assert limiter.try_acquire() == 0.0


def test_limiter_is_thread_safe() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1_000, 60.0, clock)
    granted: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        mine = sum(1 for _ in range(500) if limiter.try_acquire() == 0.0)
        with lock:
            granted.append(mine)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(granted) == 1_000
    assert limiter.usage() == (1_000, 1_000)


# -- circuit breaker ----------------------------------------------------------------------


def test_breaker_full_cycle() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(3, 30.0, clock)
    assert breaker.state == "closed"
    assert breaker.retry_at is None
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state == "closed"
    breaker.record_success()  # failures must be consecutive
    assert breaker.failures == 0
    for _ in range(3):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state == "open"
    assert breaker.retry_at == pytest.approx(30.0)
    assert not breaker.allow()
    clock.advance(29.9)
    assert not breaker.allow()
    assert breaker.state == "open"
    clock.advance(0.1)
    assert breaker.allow()  # the one probe
    assert breaker.state == "half_open"
    assert not breaker.allow()  # the probe is still out
    assert not breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed"
    assert breaker.failures == 0
    assert breaker.allow()


def test_failed_probe_reopens_with_fresh_timeout() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1, 10.0, clock)
    breaker.record_failure()
    assert breaker.state == "open"
    clock.advance(15)
    assert breaker.allow()
    assert breaker.state == "half_open"
    breaker.record_failure()
    assert breaker.state == "open"
    assert breaker.retry_at == pytest.approx(25.0)
    clock.advance(9)
    assert not breaker.allow()
    clock.advance(1)
    assert breaker.allow()
    assert not breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed"


def test_lost_probe_is_given_up_after_the_timeout() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1, 10.0, clock)
    breaker.record_failure()
    clock.advance(10)
    assert breaker.allow()
    clock.advance(9)
    assert not breaker.allow()
    clock.advance(1)
    assert breaker.allow()  # the first probe never reported back
    assert not breaker.allow()


def test_breaker_reconfigure() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(5, 60.0, clock)
    breaker.record_failure()
    breaker.reconfigure(2, 5.0)
    breaker.record_failure()
    assert breaker.state == "open"
    assert breaker.retry_at == pytest.approx(5.0)
    breaker.reconfigure(2, 1.0)  # a shorter timeout applies to the current opening
    clock.advance(1)
    assert breaker.allow()
    with pytest.raises(ValueError):
        breaker.reconfigure(0, 1.0)


def test_breaker_only_one_probe_across_threads() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1, 1.0, clock)
    breaker.record_failure()
    clock.advance(1)
    results: list[bool] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        allowed = breaker.allow()
        with lock:
            results.append(allowed)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 1


# -- backoff ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_backoff_stays_within_equal_jitter_bounds(seed: int) -> None:
    rng = random.Random(seed)
    for attempt in range(1, 40):
        cap = min(60.0, 0.5 * 2 ** (attempt - 1))
        for _ in range(200):
            delay = backoff_delay(attempt, 0.5, 60.0, rng)
            assert cap / 2 <= delay <= cap


def test_backoff_uses_the_whole_jitter_range() -> None:
    rng = random.Random(42)
    delays = [backoff_delay(4, 1.0, 100.0, rng) for _ in range(2_000)]  # cap 8
    assert min(delays) < 4.1
    assert max(delays) > 7.9


def test_backoff_is_reproducible_with_a_seeded_rng() -> None:
    first = [backoff_delay(a, 1.0, 30.0, random.Random(7)) for a in range(1, 10)]
    second = [backoff_delay(a, 1.0, 30.0, random.Random(7)) for a in range(1, 10)]
    assert first == second


def test_backoff_cap_is_monotone_and_capped() -> None:
    caps = [backoff_cap(attempt, 0.25, 300.0) for attempt in range(1, 5_000)]
    assert caps[:4] == [0.25, 0.5, 1.0, 2.0]
    assert all(a <= b for a, b in itertools.pairwise(caps))
    assert caps[-1] == 300.0
    assert backoff_delay(10_000, 1.0, 5.0) <= 5.0  # huge attempts do not overflow


def test_backoff_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        backoff_delay(0, 1.0, 10.0)
    with pytest.raises(ValueError):
        backoff_delay(1, -1.0, 10.0)


def test_wait_seconds_tells_the_wait_without_taking_requests() -> None:
    clock = FakeClock()
    limiter = RateLimiter(2, 10.0, clock)
    assert limiter.wait_seconds() == 0.0
    assert limiter.try_acquire() == 0.0
    clock.advance(4.0)
    assert limiter.try_acquire() == 0.0
    assert limiter.wait_seconds() == pytest.approx(6.0)  # the window is full
    assert limiter.usage() == (2, 2)  # asking took nothing
    clock.advance(6.0)
    assert limiter.wait_seconds() == 0.0
    limiter.block_until(30.0)  # a Retry-After
    assert limiter.wait_seconds() == pytest.approx(30.0)
    assert limiter.try_acquire() == pytest.approx(30.0)


def test_reads_leave_the_write_reserve_to_writes() -> None:
    clock = FakeClock()
    limiter = RateLimiter(4, 10.0, clock, write_reserve=1)
    for _ in range(3):
        assert limiter.try_acquire(read=True) == 0.0  # t=0
    clock.advance(1)
    # the fourth request of the window is a write's: a poll waits for the first to leave
    assert limiter.try_acquire(read=True) == pytest.approx(9.0)
    assert limiter.try_acquire() == 0.0
    assert limiter.usage() == (4, 4)
    assert limiter.try_acquire() == pytest.approx(9.0)
    clock.advance(9)  # t=10: the three reads leave
    assert limiter.try_acquire(read=True) == 0.0
    limiter.reconfigure(4, 10.0, write_reserve=0)
    assert limiter.try_acquire(read=True) == 0.0
    with pytest.raises(ValueError, match="write_reserve"):
        RateLimiter(4, 10.0, clock, write_reserve=4)
    with pytest.raises(ValueError, match="never fit"):
        RateLimiter(4, 10.0, clock, write_reserve=2).try_acquire(3, read=True)
