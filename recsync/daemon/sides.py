"""Per-side status of a pipeline (circuit, rate-limit wait, held deletes, last error),
from the supervisor's health figures the daemon caches every second."""

from __future__ import annotations

from typing import Any

from recsync.daemon.logs import redact_text
from recsync.daemon.protocol import SideStatus

__all__ = ["BAD_STATES", "side_statuses"]

# `recsync status` exits non-zero while a pipeline is in one of these (see the README)
BAD_STATES = ("error", "held", "fatal")


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
        )
    return out


def _future(ts: Any, now: float) -> float | None:
    return float(ts) if isinstance(ts, int | float) and ts > now else None
