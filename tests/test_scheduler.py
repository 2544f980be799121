"""The scheduler thread, driven by a FakeClock (events and barriers, never sleeps)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator

import pytest

from recsync.actors.scheduler import Scheduler
from recsync.clock import FakeClock, SystemClock

WAIT = 5.0  # deadline for things that must happen; never reached when all is well


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def scheduler(clock: FakeClock) -> Iterator[Scheduler]:
    sched = Scheduler(clock)
    sched.start()
    yield sched
    sched.stop()


class Counter:
    """A callback that counts its calls and lets a test wait for the n-th one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.count = 0

    def __call__(self) -> None:
        with self._cond:
            self.count += 1
            self._cond.notify_all()

    def wait_for(self, n: int, timeout: float = WAIT) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.count >= n, timeout)


def barrier(scheduler: Scheduler) -> None:
    """Wait until the scheduler has handled everything due up to now."""
    done = threading.Event()
    scheduler.call_later(0, done.set)
    assert done.wait(WAIT)


def test_call_later_fires_only_once_due(scheduler: Scheduler, clock: FakeClock) -> None:
    fired = threading.Event()
    scheduler.call_later(10, fired.set)
    clock.advance(9.99)
    barrier(scheduler)  # due earlier than the timer, so it ran first
    assert not fired.is_set()
    clock.advance(0.01)
    assert fired.wait(WAIT)
    assert scheduler.pending() == 0


def test_timers_fire_in_due_order(scheduler: Scheduler, clock: FakeClock) -> None:
    order: list[str] = []
    done = threading.Event()
    scheduler.call_later(3, lambda: order.append("c"))
    scheduler.call_later(1, lambda: order.append("a"))
    scheduler.call_later(2, lambda: order.append("b"))
    scheduler.call_later(4, done.set)
    clock.advance(5)
    assert done.wait(WAIT)
    assert order == ["a", "b", "c"]


def test_timer_added_before_start_runs_after_start(clock: FakeClock) -> None:
    sched = Scheduler(clock)
    fired = threading.Event()
    sched.call_later(1, fired.set)
    clock.advance(1)
    sched.start()
    try:
        assert fired.wait(WAIT)
    finally:
        sched.stop()


def test_call_every_repeats(scheduler: Scheduler, clock: FakeClock) -> None:
    ticks = Counter()
    scheduler.call_every(5, ticks)
    for n in range(1, 5):
        clock.advance(5)
        assert ticks.wait_for(n)
    barrier(scheduler)
    assert ticks.count == 4


def test_call_every_first_delay(scheduler: Scheduler, clock: FakeClock) -> None:
    ticks = Counter()
    handle = scheduler.call_every(10, ticks, first_delay=1)
    clock.advance(1)
    assert ticks.wait_for(1)
    assert handle.due == pytest.approx(11.0)
    clock.advance(9.5)
    barrier(scheduler)
    assert ticks.count == 1
    clock.advance(0.5)
    assert ticks.wait_for(2)


def test_call_every_skips_missed_runs_instead_of_bursting(
    scheduler: Scheduler, clock: FakeClock
) -> None:
    ticks = Counter()
    handle = scheduler.call_every(10, ticks)
    clock.advance(55)
    assert ticks.wait_for(1)
    barrier(scheduler)
    assert ticks.count == 1
    assert handle.due == pytest.approx(65.0)


def test_reschedule_changes_interval(scheduler: Scheduler, clock: FakeClock) -> None:
    ticks = Counter()
    handle = scheduler.call_every(60, ticks)
    clock.advance(30)
    assert handle.reschedule(5)  # next run 5 s from now, then every 5 s
    assert handle.interval == 5
    clock.advance(5)
    assert ticks.wait_for(1)
    clock.advance(5)
    assert ticks.wait_for(2)
    clock.advance(25)  # t=65: the old 60 s grid is gone, nothing fires on it twice
    assert ticks.wait_for(3)
    barrier(scheduler)
    assert ticks.count == 3


def test_reschedule_one_shot_moves_it(scheduler: Scheduler, clock: FakeClock) -> None:
    fired = Counter()
    handle = scheduler.call_later(10, fired)
    clock.advance(5)
    handle.reschedule(10)  # now due at 15
    clock.advance(9)
    barrier(scheduler)
    assert fired.count == 0
    clock.advance(1)
    assert fired.wait_for(1)
    handle.reschedule(1)  # re-arms a fired one-shot
    clock.advance(1)
    assert fired.wait_for(2)


def test_cancel(scheduler: Scheduler, clock: FakeClock) -> None:
    once = Counter()
    ticks = Counter()
    one_shot = scheduler.call_later(5, once)
    repeating = scheduler.call_every(2, ticks)
    clock.advance(2)
    assert ticks.wait_for(1)
    one_shot.cancel()
    repeating.cancel()
    repeating.cancel()  # idempotent
    assert one_shot.cancelled and repeating.cancelled
    assert not repeating.reschedule(1)
    assert scheduler.pending() == 0
    clock.advance(10)
    barrier(scheduler)
    assert once.count == 0
    assert ticks.count == 1


def test_callback_may_cancel_its_own_timer(scheduler: Scheduler, clock: FakeClock) -> None:
    ticks = Counter()
    box: list[Callable[[], None]] = []

    def tick() -> None:
        ticks()
        if ticks.count == 2:
            box[0]()

    handle = scheduler.call_every(1, tick)
    box.append(handle.cancel)
    for _ in range(4):
        clock.advance(1)
        barrier(scheduler)
    assert ticks.count == 2


def test_raising_callback_is_logged_and_does_not_stop_others(
    scheduler: Scheduler, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    def boom() -> None:
        raise RuntimeError("boom")

    bad_ticks = Counter()

    def bad_repeating() -> None:
        bad_ticks()
        raise RuntimeError("again")

    good = threading.Event()
    with caplog.at_level(logging.ERROR, logger="recsync.actors.scheduler"):
        scheduler.call_later(1, boom)
        scheduler.call_every(1, bad_repeating)
        scheduler.call_later(2, good.set)
        clock.advance(1)
        assert bad_ticks.wait_for(1)
        clock.advance(1)
        assert good.wait(WAIT)
        assert bad_ticks.wait_for(2)  # the repeating timer keeps running
        barrier(scheduler)
    assert scheduler.running
    messages = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(messages) >= 3
    assert all(r.exc_info is not None for r in messages)


def test_stop_joins_and_is_idempotent(clock: FakeClock) -> None:
    sched = Scheduler(clock)
    sched.start()
    thread = sched._thread
    assert thread is not None and thread.is_alive()
    sched.start()  # already running: no second thread
    assert sched._thread is thread
    fired = threading.Event()
    sched.call_later(1, fired.set)
    sched.stop()
    assert not thread.is_alive()  # joined
    assert not sched.running
    sched.stop()
    clock.advance(5)  # no thread, no listener: nothing fires
    assert not fired.is_set()
    sched.start()  # pending timers run after a restart
    try:
        assert fired.wait(WAIT)
    finally:
        sched.stop()


def test_stop_from_a_callback_does_not_deadlock(clock: FakeClock) -> None:
    sched = Scheduler(clock)
    sched.start()
    stopped = threading.Event()

    def stop_self() -> None:
        sched.stop()
        stopped.set()

    sched.call_later(1, stop_self)
    clock.advance(1)
    assert stopped.wait(WAIT)
    assert sched._thread is None
    sched.stop()


def test_system_clock_fires_after_a_tiny_delay() -> None:
    clock = SystemClock()
    with Scheduler(clock) as sched:
        fired = threading.Event()
        start = clock.monotonic()
        sched.call_later(0.01, fired.set)
        assert fired.wait(WAIT)
        assert clock.monotonic() - start >= 0.01 - 1e-3


def test_system_clock_repeating_and_stop() -> None:
    sched = Scheduler()
    sched.start()
    ticks = Counter()
    handle = sched.call_every(0.01, ticks)
    assert ticks.wait_for(3)
    handle.cancel()
    sched.stop()
    assert not sched.running


def test_repeating_interval_must_be_positive(scheduler: Scheduler) -> None:
    with pytest.raises(ValueError):
        scheduler.call_every(0, lambda: None)
    handle = scheduler.call_every(1, lambda: None)
    with pytest.raises(ValueError):
        handle.reschedule(-1)


class StillClock:
    """A clock that never moves and does not announce moves (as the system clock)."""

    def monotonic(self) -> float:
        return 100.0

    def time(self) -> float:
        return 1_700_000_000.0


def test_timers_due_within_the_slack_run_in_the_same_wake_up() -> None:
    # 1,000 pipelines' timers: run together, not each in a wake-up of its own
    with Scheduler(StillClock(), slack=0.01) as sched:
        counter = Counter()
        sched.call_later(0.004, counter)
        sched.call_every(0.5, counter, first_delay=0.009)
        assert counter.wait_for(2)  # the clock never reached either due time
        late = threading.Event()
        sched.call_later(0.05, late.set)
        barrier(sched)  # due now: it runs; the one beyond the slack waits for its time
        assert not late.is_set()
