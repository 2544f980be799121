"""Reads in progress that a backfill waits for before anything is queued.

A side whose connector reads the whole of a large source through a server-side job (the
Salesforce connector's Bulk API 2.0 query job) commits a cursor of the form
``{"bulk": {"read": N, "total": M, ...}}`` after each step, so ``status`` shows how far it
has come without any other channel.
"""

from __future__ import annotations

import json
from typing import Any


def bulk_reads(rows: list[dict[str, Any]]) -> tuple[int, int] | None:
    """(records read, records in all) over the sides of ``rows`` (status rows) whose
    committed cursor is a bulk read in progress; None when there is none."""
    read = total = 0
    found = False
    for row in rows:
        for cursor in (row.get("cursors") or {}).values():
            if not isinstance(cursor, str) or '"bulk"' not in cursor:
                continue
            try:
                state = json.loads(cursor).get("bulk")
            except (ValueError, AttributeError):
                continue
            if isinstance(state, dict):
                found = True
                read += int(state.get("read") or 0)
                total += int(state.get("total") or 0)
    return (read, max(total, read)) if found else None
