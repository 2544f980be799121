"""RateLimiterActor: the pipeline's gate to the shared budgets of its two systems."""

from __future__ import annotations

from recsync.actors.base import FailureSink, PipelineActor
from recsync.messages import Side
from recsync.resilience import RateLimiter


class RateLimiterActor(PipelineActor):
    """Answers ``acquire(side)`` asks from the connectors with 0.0 or the seconds to wait.

    The RateLimiter objects are shared by every pipeline on the same external system, so
    all of them draw on one budget.
    """

    role = "rate_limiter"

    def __init__(
        self, pipeline: str, incarnation: int, report: FailureSink,
        limiters: dict[Side, RateLimiter],
    ) -> None:
        super().__init__(pipeline, incarnation, report)
        self.limiters = limiters

    def acquire(self, side: Side, n: int = 1) -> float:
        return self.limiters[side].try_acquire(n)

    def block(self, side: Side, seconds: float) -> None:
        self.limiters[side].block_until(seconds)

    def remote_budget(self, side: Side, remaining: int, reset_at: float | None) -> None:
        self.limiters[side].set_remote_budget(remaining, reset_at)

    def usage(self) -> dict[str, tuple[int, int]]:
        return {side: lim.usage() for side, lim in self.limiters.items()}
