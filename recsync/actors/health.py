"""SideHealth: the last error met on one side of a pipeline, for `recsync status`.

One per side, owned by the pipeline and handed to each incarnation's connector actor, so
an error stays visible after the actors that met it were restarted. Thread-safe: the
connector actor writes it, the supervisor reads it.
"""

from __future__ import annotations

import threading
from typing import Any

from recsync.clock import Clock

__all__ = ["SideHealth"]


class SideHealth:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._error: str | None = None
        self._at: float | None = None

    def error(self, text: str) -> None:
        """Remember ``text`` as the side's last error (wall time now)."""
        with self._lock:
            self._error, self._at = text, self.clock.time()

    def snapshot(self) -> dict[str, Any]:
        """``last_error`` and ``last_error_at`` (None, None: no error seen)."""
        with self._lock:
            return {"last_error": self._error, "last_error_at": self._at}
