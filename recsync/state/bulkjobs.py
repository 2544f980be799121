"""The journal of bulk write jobs in flight (the ``bulk_jobs`` table of a state file).

A connector that writes a backlog as bulk jobs (Salesforce Bulk API 2.0 ingest) notes each
job here once the target has given it an id and before its data is uploaded; the queue
deletes the row in the transaction that applies the job's outcomes. A run killed in
between finds the job again by its id on the next bulk write and takes its results
instead of submitting the same records again.
"""

from __future__ import annotations

import json

import msgspec

from recsync.clock import Clock, SystemClock
from recsync.state.backend import StateBackend


class BulkJob(msgspec.Struct, frozen=True):
    """One job of the journal: ``rows`` maps each record key to a mark of what was sent
    (a checksum of the CSV row for an upsert, the record's Ids for a delete)."""

    job_id: str
    scope: str
    operation: str
    rows: dict[str, str]
    created_at: float


class BulkJournal:
    """The journal over the connector's own backend connection to the pipeline's state
    (one thread): a state file, or the pipeline's rows in the cluster's PostgreSQL."""

    def __init__(self, backend: StateBackend, clock: Clock | None = None) -> None:
        self.backend = backend
        self.clock = clock or SystemClock()

    def close(self) -> None:
        self.backend.close()

    def jobs(self, scope: str) -> list[BulkJob]:
        """The jobs of ``scope`` (a direction) still in flight, oldest first."""
        return [BulkJob(job_id, sc, op, json.loads(rows), float(at))
                for job_id, sc, op, rows, at in self.backend.bulk_jobs(scope)]

    def add(self, job_id: str, scope: str, operation: str, rows: dict[str, str]) -> None:
        """Note a job durably (committed before this returns)."""
        with self.backend.transaction():
            self.backend.add_bulk_job(job_id, scope, operation,
                                      json.dumps(rows, separators=(",", ":")),
                                      self.clock.time())

    def drop(self, job_id: str) -> None:
        """Forget a job that wrote nothing (aborted, failed or gone at the target)."""
        with self.backend.transaction():
            self.backend.drop_bulk_jobs([job_id])
