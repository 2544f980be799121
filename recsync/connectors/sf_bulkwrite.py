"""A backlog written to Salesforce through Bulk API 2.0 ingest jobs.

sObject Collections cost one API request per 200 records (50 per 10,000); one Bulk API 2.0
ingest job costs a handful (create, upload the CSV, ``UploadComplete``, status reads, and
the failed or unprocessed results only when there are some), however many records it holds.
The queue hands a backlog over ``bulk_threshold`` records to ``write_bulk`` as one batch:
its upserts become one ``upsert`` job by the external id, its deletes one ``delete`` job
(the Ids looked up by external id first).

Crash safety: a job is noted in the pipeline's journal (``bulk_jobs``) as soon as Salesforce
has given it an id, before its data is uploaded, with each record's key and a checksum of
its CSV row; the queue deletes the note in the transaction that applies the job's
outcomes. A run killed in between finds the job again by its id at the next bulk write:
a job still ``Open`` (killed before ``UploadComplete``: nothing of it is processed) is
aborted and its records go into a new job; a job uploaded, running or complete is waited
for and its per-row results are taken for the records it holds unchanged, so they are
not submitted twice.

Per-row results: a row in ``failedResults`` becomes a failed record with Salesforce's
``sf__Error`` (``UNABLE_TO_LOCK_ROW`` and the like are retried); rows a job did not process
(it failed or was aborted: not in its ``successfulResults``) are retried; a deleted row
that was already gone counts as deleted. A job complete with every row processed and none
failed needs no results read at all.
"""

from __future__ import annotations

import csv
import io
import logging
import time
import zlib
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import quote_plus

from simple_salesforce.util import call_salesforce

from recsync.connectors.base import BulkWrite
from recsync.errors import ConnectorError
from recsync.messages import WriteOp, WriteResult, key_text
from recsync.state.bulkjobs import BulkJob, BulkJournal

log = logging.getLogger(__name__)
_DONE = ("JobComplete", "Failed", "Aborted")
# status reads of a running job: after 0.5 s, then doubling up to every 10 s (a job of a
# minute costs about 9 of them)
_FIRST_PAUSE = 0.5
_MAX_PAUSE = 10.0
_MAX_CSV = 100_000_000  # bytes of CSV per job (Salesforce takes 150 MB base64-encoded)
# URL-encoded bytes of the keys of one lookup query: a query goes in the URL, which
# Salesforce takes up to 16,384 bytes long
_MAX_SOQL = 12_000
_GONE = ("ENTITY_IS_DELETED", "INVALID_CROSS_REFERENCE_KEY", "NOT_FOUND")
_RETRYABLE = ("UNABLE_TO_LOCK_ROW", "SERVER_UNAVAILABLE", "REQUEST_RUNNING_TOO_LONG")


class _Host(Protocol):
    """What the bulk write needs of the Salesforce connector."""

    obj: str
    key: str

    @property
    def system_id(self) -> str: ...

    def _call(self, fn: Callable[[Any], Any]) -> Any: ...

    def _record(self, op: WriteOp) -> dict[str, Any]: ...

    def _lookup(self, keys: list[str], fields: list[str]) -> list[dict[str, Any]]: ...

    on_bulk_progress: Callable[[dict[str, Any]], None] | None

    def fetched_ids(self, keys: list[str]) -> dict[str, list[str]] | None: ...


def _cell(value: Any) -> str:
    """A field value as Bulk API 2.0 CSV takes it (``#N/A`` clears a field)."""
    if value is None:
        return "#N/A"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _mark(row: list[str]) -> str:
    return f"{zlib.crc32(chr(31).join(row).encode()):08x}"


def _csv(header: list[str], rows: list[list[str]]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode()


def _soql_str(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def key_chunks(keys: list[str]) -> list[list[str]]:
    """``keys`` in parts for SOQL ``IN`` lookups as long as a query URL takes
    (_MAX_SOQL characters of quoted keys): a lookup of 10,000 short keys is a handful
    of requests, not one per 200."""
    chunks: list[list[str]] = []
    chunk: list[str] = []
    size = 0
    for k in keys:
        n = len(quote_plus(_soql_str(k))) + 4  # and ", "
        if chunk and size + n > _MAX_SOQL:
            chunks.append(chunk)
            chunk, size = [], 0
        chunk.append(k)
        size += n
    if chunk:
        chunks.append(chunk)
    return chunks


class BulkWriter:
    """One connector's bulk writes; ``progress`` tells how the current job is going."""

    def __init__(self, host: _Host, sleep: Callable[[float], None] = time.sleep) -> None:
        self.host = host
        self.sleep = sleep  # the pause between two status reads of a running job
        self.progress: dict[str, Any] | None = None

    # ------------------------------------------------------------------ the batch

    def write(self, ops: list[WriteOp], journal: BulkJournal, scope: str) -> BulkWrite:
        host = self.host
        results: dict[int, WriteResult] = {}
        last: dict[str, int] = {}
        for i, op in enumerate(ops):
            if op.kind != "delete":
                last[op.key] = i
        upserts = [(i, op) for i, op in enumerate(ops) if op.kind != "delete"
                   and last[op.key] == i]
        deletes = [(i, op) for i, op in enumerate(ops) if op.kind == "delete"]
        records = {i: host._record(op) for i, op in upserts}
        header = [host.key]
        seen = {host.key}
        for rec in records.values():
            for name in rec:
                if name not in seen:
                    seen.add(name)
                    header.append(name)
        rows = {i: [_cell(records[i][h]) if h in records[i] else "" for h in header]
                for i, _op in upserts}
        marks = {op.key: _mark(rows[i]) for i, op in upserts}
        jobs: list[str] = []

        # 1. jobs of an earlier run still in the journal: finish them, take their results
        for job in journal.jobs(scope):
            outcome = self._finish(job, journal)
            if outcome is None:
                continue  # wrote nothing; its note is gone
            jobs.append(job.job_id)
            if job.operation == "upsert":
                for i, op in upserts:
                    if (i not in results and op.key in outcome
                            and job.rows.get(op.key) == marks[op.key]):
                        results[i] = outcome[op.key]
            else:
                for i, op in deletes:
                    if i not in results and op.key in outcome:
                        results[i] = outcome[op.key]

        # 2. the rest in new jobs
        todo = [(i, op) for i, op in upserts if i not in results]
        for part in self._parts(header, [(op.key, rows[i]) for i, op in todo]):
            jid, outcome = self._run("upsert", header, part, {k: marks[k] for k, _r in part},
                                     journal, scope)
            jobs.append(jid)
            for i, op in todo:
                if op.key in outcome:
                    results[i] = outcome[op.key]
        gone = [(i, op) for i, op in deletes if i not in results]
        if gone:
            ids = self._ids([op.key for _i, op in gone])
            for i, op in gone:
                if not ids.get(op.key):
                    results[i] = WriteResult(op.key)  # not there: already deleted
            rows_d = [(op.key, [rid]) for _i, op in gone for rid in ids.get(op.key, [])]
            marks_d = {k: " ".join(v) for k, v in ids.items()}
            for part in self._parts(["Id"], rows_d):
                keys = {k for k, _r in part}
                jid, outcome = self._run("delete", ["Id"], part,
                                         {k: marks_d[k] for k in keys}, journal, scope)
                jobs.append(jid)
                for i, op in gone:
                    if op.key in outcome and i not in results:
                        results[i] = outcome[op.key]
        out = []
        for i, op in enumerate(ops):
            r = results.get(i if op.kind == "delete" else last[op.key])
            out.append(WriteResult(op.key, r.error, r.retryable) if r is not None
                       else WriteResult(op.key, f"Salesforce gave no result for {host.obj} "
                                        f"{op.key!r} in its Bulk API 2.0 jobs.", True))
        note = f"Bulk API 2.0 job {', '.join(jobs)}" if jobs else None
        return BulkWrite(out, jobs, note)

    @staticmethod
    def _parts(header: list[str],
               rows: list[tuple[str, list[str]]]) -> list[list[tuple[str, list[str]]]]:
        """``rows`` in jobs of at most _MAX_CSV bytes of CSV (a record's rows together)."""
        parts: list[list[tuple[str, list[str]]]] = []
        size, cur = 0, list[tuple[str, list[str]]]()
        for key, row in rows:
            n = sum(len(c) + 3 for c in row) + 1
            if cur and size + n > _MAX_CSV and cur[-1][0] != key:
                parts.append(cur)
                size, cur = 0, []
            cur.append((key, row))
            size += n
        if cur:
            parts.append(cur)
        return parts

    def _ids(self, keys: list[str]) -> dict[str, list[str]]:
        """The Ids of the records held under ``keys`` (those the check of the target
        just read are known already)."""
        host = self.host
        known = host.fetched_ids(keys)
        if known is not None:
            return known
        out: dict[str, list[str]] = {}
        for part in key_chunks(keys):
            for rec in host._lookup(part, ["Id", host.key]):
                out.setdefault(key_text(rec[host.key]), []).append(str(rec["Id"]))
        return out

    # ------------------------------------------------------------------ one job

    def _run(self, operation: str, header: list[str], rows: list[tuple[str, list[str]]],
             marks: dict[str, str], journal: BulkJournal,
             scope: str) -> tuple[str, dict[str, WriteResult]]:
        """Create, note, upload and close one job, wait for it, map its results."""
        host = self.host
        spec: dict[str, Any] = {"object": host.obj, "operation": operation,
                                "contentType": "CSV", "lineEnding": "LF",
                                "columnDelimiter": "COMMA"}
        if operation == "upsert":
            spec["externalIdFieldName"] = host.key
        info = host._call(lambda sf: sf.restful("jobs/ingest", method="POST", json=spec))
        jid = str(info["id"])
        journal.add(jid, scope, operation, marks)
        job = BulkJob(jid, scope, operation, marks, 0.0)
        self._note(job, "Open", 0, 0)
        data = _csv(header, [r for _k, r in rows])

        def upload(sf: Any) -> Any:
            url = f"{sf.base_url}jobs/ingest/{jid}/batches"
            headers = {**dict(sf.headers), "Content-Type": "text/csv"}
            return call_salesforce(url, "PUT", sf.session, headers, data=data)

        host._call(upload)
        host._call(lambda sf: sf.restful(f"jobs/ingest/{jid}", method="PATCH",
                                         json={"state": "UploadComplete"}))
        outcome = self._finish(job, journal)
        if outcome is None:
            raise ConnectorError(
                f"Salesforce {host.system_id} lost Bulk API 2.0 job {jid} before it ran; "
                "its records are written again.")
        return jid, outcome

    def _finish(self, job: BulkJob, journal: BulkJournal) -> dict[str, WriteResult] | None:
        """Wait for ``job`` to end and map its rows to results by key; None when it wrote
        nothing (still Open: aborted; gone) and its note is dropped."""
        host, jid = self.host, job.job_id
        polls = 0
        while True:
            try:
                info = host._call(lambda sf: sf.restful(f"jobs/ingest/{jid}"))
            except ConnectorError as exc:
                if "NOT_FOUND" not in str(exc):
                    raise
                log.warning("Bulk API 2.0 job %s of %s has gone; its records are written "
                            "again", jid, host.system_id)
                journal.drop(jid)
                return None
            state = str(info.get("state"))
            processed = int(info.get("numberRecordsProcessed") or 0)
            failed = int(info.get("numberRecordsFailed") or 0)
            self._note(job, state, processed, failed)
            if state == "Open":  # its upload never completed: nothing of it ran
                try:
                    host._call(lambda sf: sf.restful(f"jobs/ingest/{jid}", method="PATCH",
                                                     json={"state": "Aborted"}))
                except ConnectorError as exc:
                    log.warning("Could not abort Bulk API 2.0 job %s of %s: %s", jid,
                                host.system_id, exc)
                journal.drop(jid)
                return None
            if state in _DONE:
                break
            self.sleep(min(_MAX_PAUSE, _FIRST_PAUSE * 2**polls))
            polls += 1
        by_id: dict[str, str] = {}
        if job.operation == "delete":
            by_id = {rid: k for k, ids in job.rows.items() for rid in ids.split()}
        n_rows = len(by_id) if job.operation == "delete" else len(job.rows)
        out: dict[str, WriteResult] = {}
        if failed:
            for row in self._results(jid, "failedResults"):
                key = self._key_of(job, row, by_id)
                if key is not None:
                    out[key] = self._refused(key, jid, row.get("sf__Error") or "",
                                             job.operation == "delete")
        if state == "JobComplete" and processed >= n_rows:
            done_ok: set[str] | None = None  # every row not failed succeeded
        else:
            done_ok = {k for row in self._results(jid, "successfulResults")
                       if (k := self._key_of(job, row, by_id)) is not None}
        why = str(info.get("errorMessage") or state)
        for key in job.rows:
            if key in out:
                continue
            if done_ok is None or key in done_ok:
                out[key] = WriteResult(key)
            else:
                out[key] = WriteResult(
                    key, f"Salesforce did not process {host.obj} {key!r} in Bulk API 2.0 "
                         f"job {jid} ({why}).", True)
        return out

    def _key_of(self, job: BulkJob, row: dict[str, str], by_id: dict[str, str]) -> str | None:
        if job.operation == "delete":
            return by_id.get(row.get("Id") or row.get("sf__Id") or "")
        return key_text(row.get(self.host.key, ""))

    def _refused(self, key: str, jid: str, error: str, delete: bool) -> WriteResult:
        code, _, text = error.partition(":")
        if delete and code in _GONE:
            return WriteResult(key)  # a delete of a record already gone
        return WriteResult(
            key, f"Salesforce refused {self.host.obj} {key!r}: {code}: {text.strip() or code} "
                 f"(Bulk API 2.0 job {jid}).", code in _RETRYABLE)

    def _results(self, jid: str, which: str) -> list[dict[str, str]]:
        def get(sf: Any) -> Any:
            url = f"{sf.base_url}jobs/ingest/{jid}/{which}"
            return call_salesforce(url, "GET", sf.session, dict(sf.headers))

        resp = self.host._call(get)
        return list(csv.DictReader(io.StringIO(resp.content.decode("utf-8-sig"))))

    def _note(self, job: BulkJob, state: str, processed: int, failed: int) -> None:
        total = (sum(len(v.split()) for v in job.rows.values()) if job.operation == "delete"
                 else len(job.rows))
        self.progress = {"job": job.job_id, "operation": job.operation, "state": state,
                         "processed": processed, "failed": failed, "total": total}
        report = self.host.on_bulk_progress
        if report is not None:
            report(self.progress)
        log.info(
            "Bulk write to %s on %s: job %s (%s) %s, %d of %d rows processed, %d failed",
            self.host.obj, self.host.system_id, job.job_id, job.operation, state, processed,
            total, failed,
            extra={"bulk_job": job.job_id, "state": state, "processed": processed,
                   "total": total},
        )
