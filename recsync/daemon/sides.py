"""Per-side status of a pipeline (circuit, rate-limit wait, held deletes, last error),
from the supervisor's health figures the daemon caches every second."""

from __future__ import annotations

from typing import Any

import msgspec

from recsync.daemon.logs import redact_text
from recsync.daemon.protocol import BAD_STATES, BulkJobStatus, SideStatus

__all__ = ["BAD_STATES", "bulk_text", "side_statuses"]


def side_statuses(health: dict[str, Any], now: float) -> dict[str, SideStatus]:
    """``health`` is one pipeline's entry of ``Daemon.health()``; times past ``now`` stay,
    earlier ones (a wait that is over since the figures were taken) are left out."""
    sides: dict[str, Any] = health.get("sides") or {}
    held: dict[str, str] = health.get("held") or {}
    out = {}
    for side in ("a", "b"):
        h = sides.get(side) or {}
        error = h.get("last_error")
        out[side] = SideStatus(
            circuit=str(h.get("circuit") or "closed"),
            circuit_retry_at=_future(h.get("circuit_retry_at"), now),
            rate_limited_until=_future(h.get("rate_limited_until"), now),
            held_delete=held.get(side),
            last_error=redact_text(error) if error else None,
            last_error_at=h.get("last_error_at") if error else None,
            bulk=msgspec.convert(h["bulk"], BulkJobStatus) if h.get("bulk") else None,
            budget=h.get("budget"),
        )
    return out


def _future(ts: Any, now: float) -> float | None:
    return float(ts) if isinstance(ts, int | float) and ts > now else None


def bulk_text(job: dict[str, Any]) -> str:
    """``bulk upsert job 750... InProgress: 4000 of 10000 rows processed, 3 failed``."""
    return (f"bulk {job.get('operation')} job {job.get('job')} {job.get('state')}: "
            f"{job.get('processed')} of {job.get('total')} rows processed, "
            f"{job.get('failed')} failed")
