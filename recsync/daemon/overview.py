"""The pipeline overview rows the daemon keeps: each encoded once, when it changes.

The stats event (every second) and the status snapshot the control front serves (see
daemon/front.py) list every pipeline. Encoding a thousand rows again every second cost
about 9% of a core on a 2-core machine with 1,000 idle pipelines (msgspec.to_builtins of
the stats and status lists, then msgpack); here each row is kept as msgpack bytes and
spliced into the event and the snapshot as ``msgspec.Raw``, so an idle pipeline costs a
comparison per second.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

import msgspec

from recsync.daemon.protocol import encoder

__all__ = ["EncodedRows"]


class EncodedRows:
    """Per pipeline: its last row (a msgspec Struct) and the row's msgpack bytes."""

    def __init__(self) -> None:
        self.rows: dict[str, Any] = {}
        self._raw: dict[str, msgspec.Raw] = {}
        self.changed = False  # a row was put, changed or dropped since ``changed`` was reset

    def put(self, pid: str, row: Any) -> bool:
        """Keep ``row`` for ``pid``; encoded only when it differs from the last. Whether
        it did."""
        if self.rows.get(pid) == row:
            return False
        self.rows[pid] = row
        self._raw[pid] = msgspec.Raw(encoder.encode(row))
        self.changed = True
        return True

    def retain(self, pids: Collection[str]) -> None:
        """Drop the rows of pipelines not in ``pids`` (removed from the configuration)."""
        gone = [pid for pid in self.rows if pid not in pids]
        for pid in gone:
            del self.rows[pid], self._raw[pid]
        self.changed = self.changed or bool(gone)

    def encoded(self, order: Iterable[str]) -> list[msgspec.Raw]:
        """The encoded rows of the pipelines in ``order`` that have one."""
        raw = self._raw
        return [raw[pid] for pid in order if pid in raw]
