"""RateLimiterActor: the pipeline's gate to the shared budgets of its two systems."""

from __future__ import annotations

from recsync.actors.base import FailureSink, PipelineActor
from recsync.messages import Side
from recsync.resilience import RateLimiter


class RateLimiterActor(PipelineActor):
    """Answers ``acquire(side)`` asks from the connectors with 0.0 or the seconds to wait.

    The RateLimiter objects are shared by every pipeline on the same external system, so
    all of them draw on one budget. A side without one (a local side with no limit of its
    own) is never throttled.
    """

    role = "rate_limiter"

    def __init__(
        self, pipeline: str, incarnation: int, report: FailureSink,
        limiters: dict[Side, RateLimiter | None],
    ) -> None:
        super().__init__(pipeline, incarnation, report)
        self.limiters = limiters

    def acquire(self, side: Side, n: int = 1, read: bool = False) -> float:
        """``read``: a poll or a fetch, which leaves the write reserve alone."""
        limiter = self.limiters[side]
        return 0.0 if limiter is None else limiter.try_acquire(n, read=read)

    def wait(self, side: Side) -> float:
        """Seconds until one request would fit, taking nothing (a connector that takes
        each of its requests itself asks this before starting a call)."""
        limiter = self.limiters[side]
        return 0.0 if limiter is None else limiter.wait_seconds(1)

    def block(self, side: Side, seconds: float) -> None:
        limiter = self.limiters[side]
        if limiter is not None:
            limiter.block_until(seconds)

    def remote_budget(self, side: Side, remaining: int, reset_at: float | None) -> None:
        limiter = self.limiters[side]
        if limiter is not None:
            limiter.set_remote_budget(remaining, reset_at)

    def usage(self) -> dict[str, tuple[int, int]]:
        """``(used, max)`` per throttled side; an unthrottled side is left out."""
        return {side: lim.usage() for side, lim in self.limiters.items() if lim is not None}
