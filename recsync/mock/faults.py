"""Checks on the faults a mock takes (`recsync mock faults`, ``set_faults``).

A value out of range would otherwise break every request later (a negative or huge
latency makes the mock's sleep raise), so it is refused when set, naming the fault.
"""

from __future__ import annotations

import math
from typing import Any

MAX_SECONDS = 3600.0  # latency and Retry-After: an hour is plenty for a test


def check_fault(name: str, value: Any) -> None:
    """Raise ValueError naming ``name`` when ``value`` is not a valid setting for it."""
    if value is None and name in ("status_429_retry_after", "limit_after"):
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"fault {name} must be a number, not {value!r}.")
    if not math.isfinite(value):
        raise ValueError(f"fault {name} must be a finite number, not {value!r}.")
    if name in ("error_rate", "drop_rate") and not 0.0 <= value <= 1.0:
        raise ValueError(f"fault {name} is a share of requests: between 0 and 1, not {value!r}.")
    if name in ("latency", "status_429_retry_after") and not 0.0 <= value <= MAX_SECONDS:
        raise ValueError(f"fault {name} is in seconds: between 0 and {MAX_SECONDS:g}, "
                         f"not {value!r}.")
    if name == "limit_after" and (value < 0 or value != int(value)):
        raise ValueError(f"fault {name} is a number of requests: 0 or more, not {value!r}.")
    if name == "error_status" and (value != int(value) or not 400 <= value <= 599):
        raise ValueError(f"fault {name} is an HTTP error status (400-599), not {value!r}.")
