"""The daemon's one timer thread: calls callbacks (that ``tell`` actors) at due times.

Time comes from an injectable :class:`~recsync.clock.Clock`. On a clock that announces its
moves (:class:`~recsync.clock.ObservableClock`, e.g. ``FakeClock``) the thread never waits
on real time: it sleeps until the clock is advanced or a timer is added, so tests drive the
scheduler by ``clock.advance(...)`` alone.

Callbacks run one at a time on the scheduler thread, outside its lock, and must be quick
(they only ``tell`` an actor). One that raises is logged; it never stops the thread, and a
repeating timer keeps repeating.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections.abc import Callable
from types import TracebackType

from recsync.clock import Clock, ObservableClock, SystemClock

__all__ = ["Scheduler", "TimerHandle"]

logger = logging.getLogger(__name__)

# A timer counts as due when the clock is within this of its due time (float slack).
_EPS = 1e-9


class TimerHandle:
    """A scheduled callback: cancel it, or change its interval / delay."""

    __slots__ = ("_callback", "_cancelled", "_due", "_interval", "_scheduler", "_seq")

    def __init__(
        self, scheduler: Scheduler, callback: Callable[[], None], interval: float | None
    ) -> None:
        self._scheduler = scheduler
        self._callback = callback
        self._interval = interval  # None: one-shot
        self._cancelled = False
        self._seq = -1  # sequence number of this timer's live heap entry (-1: none)
        self._due: float | None = None

    @property
    def repeating(self) -> bool:
        return self._interval is not None

    @property
    def interval(self) -> float | None:
        """Seconds between runs of a repeating timer; ``None`` for a one-shot timer."""
        return self._interval

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @property
    def due(self) -> float | None:
        """Monotonic time of the next run; ``None`` once cancelled or (one-shot) fired."""
        with self._scheduler._cond:
            return self._due

    def cancel(self) -> None:
        """Never run again. Idempotent; a run already under way is not interrupted."""
        self._scheduler._cancel(self)

    def reschedule(self, interval: float, *, first_delay: float | None = None) -> bool:
        """Re-arm the timer from now.

        Repeating timer: the interval becomes ``interval`` and the next run is
        ``first_delay`` (default: ``interval``) from now. One-shot timer: it runs once,
        ``interval`` seconds from now (``first_delay`` overrides), even if it already ran.
        Returns ``False`` (and does nothing) for a cancelled timer.
        """
        return self._scheduler._reschedule(self, interval, first_delay)

    def __repr__(self) -> str:
        kind = f"every {self._interval}s" if self._interval is not None else "once"
        state = "cancelled" if self._cancelled else f"due={self._due}"
        return f"<TimerHandle {kind} {state} {self._callback!r}>"


class Scheduler:
    """One thread that runs callbacks when they are due, on an injectable clock."""

    def __init__(self, clock: Clock | None = None, slack: float = 0.0) -> None:
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._observable = isinstance(self._clock, ObservableClock)
        # timers due within ``slack`` seconds run together, in one wake-up of the thread:
        # 1,000 pipelines' poll and flush timers are 2,000 a second, nearly each its own
        # wake-up otherwise. Not on a clock a test moves (timers run at their exact time)
        self._slack = 0.0 if self._observable else max(0.0, slack)
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._counter = itertools.count()
        self._thread: threading.Thread | None = None
        self._generation = 0  # bumped by stop(): a thread runs while its generation is current

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def start(self) -> None:
        """Start the thread (does nothing if it is running). Timers added before run now."""
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return
            if isinstance(self._clock, ObservableClock):
                self._clock.add_listener(self._wake)
            self._thread = threading.Thread(
                target=self._run, args=(self._generation,), name="recsync-scheduler", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread and join it. Idempotent. Pending timers stay (and run on start)."""
        with self._cond:
            thread, self._thread = self._thread, None
            self._generation += 1
            self._cond.notify_all()
        if isinstance(self._clock, ObservableClock):
            self._clock.remove_listener(self._wake)
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def __enter__(self) -> Scheduler:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback()`` once, ``delay`` seconds from now (<= 0: as soon as possible)."""
        timer = TimerHandle(self, callback, None)
        with self._cond:
            self._arm(timer, self._clock.monotonic() + max(0.0, delay))
        return timer

    def call_every(
        self,
        interval: float,
        callback: Callable[[], None],
        *,
        first_delay: float | None = None,
    ) -> TimerHandle:
        """Run ``callback()`` every ``interval`` seconds, first after ``first_delay``.

        ``first_delay`` defaults to ``interval``. Runs keep to the original grid; when the
        scheduler falls behind by a whole interval, missed runs are skipped (one run, then
        the next is an interval later), never run in a burst.
        """
        _check_interval(interval)
        timer = TimerHandle(self, callback, interval)
        delay = interval if first_delay is None else first_delay
        with self._cond:
            self._arm(timer, self._clock.monotonic() + max(0.0, delay))
        return timer

    def pending(self) -> int:
        """How many timers are armed (not cancelled, not yet fired if one-shot)."""
        with self._cond:
            return sum(1 for _, seq, timer in self._heap if seq == timer._seq)

    # -- internals (all `_arm`/`_cancel` state lives under self._cond) --

    def _arm(self, timer: TimerHandle, due: float) -> None:
        seq = next(self._counter)
        timer._seq = seq
        timer._due = due
        heapq.heappush(self._heap, (due, seq, timer))
        self._cond.notify_all()

    def _cancel(self, timer: TimerHandle) -> None:
        with self._cond:
            timer._cancelled = True
            timer._seq = -1
            timer._due = None
            self._cond.notify_all()

    def _reschedule(self, timer: TimerHandle, interval: float, first_delay: float | None) -> bool:
        if timer._interval is not None:
            _check_interval(interval)
        delay = interval if first_delay is None else first_delay
        with self._cond:
            if timer._cancelled:
                return False
            if timer._interval is not None:
                timer._interval = interval
            self._arm(timer, self._clock.monotonic() + max(0.0, delay))
            return True

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _next_due_timer(self, generation: int) -> TimerHandle | None:
        """Wait for the earliest timer to be due and pop it; ``None`` when stopped."""
        with self._cond:
            while self._generation == generation:
                heap = self._heap
                while heap and heap[0][1] != heap[0][2]._seq:
                    heapq.heappop(heap)  # cancelled or rescheduled: a stale entry
                if not heap:
                    self._cond.wait()
                    continue
                due = heap[0][0]
                now = self._clock.monotonic()
                if due <= now + _EPS + self._slack:
                    _, _, timer = heapq.heappop(heap)
                    if timer._interval is not None:
                        next_due = due + timer._interval
                        if next_due <= now:
                            next_due = now + timer._interval
                        self._arm(timer, next_due)
                    else:
                        timer._seq = -1
                        timer._due = None
                    return timer
                if self._observable:
                    self._cond.wait()  # woken by clock.advance() or a new timer
                else:
                    self._cond.wait(due - now)
            return None

    def _run(self, generation: int) -> None:
        while True:
            timer = self._next_due_timer(generation)
            if timer is None:
                return
            if timer._cancelled:
                continue
            try:
                timer._callback()
            except Exception:
                logger.exception("scheduled callback %r raised", timer._callback)


def _check_interval(interval: float) -> None:
    if not interval > 0:
        raise ValueError(f"a repeating timer needs a positive interval, not {interval}")
