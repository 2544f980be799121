"""The journal of bulk write jobs in flight (the ``bulk_jobs`` table of a state file).

A connector that writes a backlog as bulk jobs (Salesforce Bulk API 2.0 ingest) notes each
job here once the target has given it an id and before its data is uploaded; the queue
deletes the row in the transaction that applies the job's outcomes. A run killed in
between finds the job again by its id on the next bulk write and takes its results
instead of submitting the same records again.
"""

from __future__ import annotations

import json
from pathlib import Path

import msgspec

from recsync.clock import Clock, SystemClock
from recsync.state.schema import connect


class BulkJob(msgspec.Struct, frozen=True):
    """One job of the journal: ``rows`` maps each record key to a mark of what was sent
    (a checksum of the CSV row for an upsert, the record's Ids for a delete)."""

    job_id: str
    scope: str
    operation: str
    rows: dict[str, str]
    created_at: float


class BulkJournal:
    """The connector's own connection to the pipeline's state file (one thread)."""

    def __init__(self, path: Path, clock: Clock | None = None) -> None:
        self.path = path
        self.clock = clock or SystemClock()
        self._db = connect(path)

    def close(self) -> None:
        self._db.close()

    def jobs(self, scope: str) -> list[BulkJob]:
        """The jobs of ``scope`` (a direction) still in flight, oldest first."""
        return [
            BulkJob(r[0], r[1], r[2], json.loads(r[3]), float(r[4]))
            for r in self._db.execute(
                "SELECT job_id, scope, operation, rows, created_at FROM bulk_jobs "
                "WHERE scope = ? ORDER BY created_at, job_id", (scope,))
        ]

    def add(self, job_id: str, scope: str, operation: str, rows: dict[str, str]) -> None:
        """Note a job durably (committed before this returns)."""
        self._db.execute(
            "INSERT OR REPLACE INTO bulk_jobs (job_id, scope, operation, rows, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (job_id, scope, operation, json.dumps(rows, separators=(",", ":")),
             self.clock.time()))

    def drop(self, job_id: str) -> None:
        """Forget a job that wrote nothing (aborted, failed or gone at the target)."""
        self._db.execute("DELETE FROM bulk_jobs WHERE job_id = ?", (job_id,))
