"""Bulk API 2.0 ingest jobs of the mock Salesforce (``/jobs/ingest``).

Jobs are processed synchronously when the client sets ``UploadComplete``; they are then
``JobComplete`` at once. In CSV data an empty value leaves a field unchanged and ``#N/A``
clears it, as in the real API.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import msgspec

from recsync.mock.sf_store import SfError, Store, now_text, sf_id

Response = tuple[int, dict[str, str], bytes]
_OPS = ("insert", "upsert", "update", "delete", "hardDelete")


def _json(status: int, obj: Any) -> Response:
    return status, {"Content-Type": "application/json;charset=UTF-8"}, msgspec.json.encode(obj)


def _csv(rows: list[list[str]]) -> Response:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return (
        200,
        {"Content-Type": "text/csv", "Sforce-NumberOfRecords": str(len(rows) - 1)},
        buf.getvalue().encode(),
    )


class BulkJobs:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.jobs: dict[str, dict[str, Any]] = {}
        self.data: dict[str, list[bytes]] = {}
        self.results: dict[str, tuple[list[list[str]], list[list[str]]]] = {}
        self.n = 0
        self.headers: dict[str, list[str]] = {}

    def route(
        self, method: str, rest: list[str], data: dict[str, Any] | None, body: bytes
    ) -> Response:
        if not rest:
            if method == "POST":
                return self._create(data or {})
            if method == "GET":
                return _json(200, {"done": True, "records": list(self.jobs.values())})
        job = self.jobs.get(rest[0]) if rest else None
        if job is None:
            raise SfError(404, "NOT_FOUND", "The requested resource does not exist")
        jid = job["id"]
        if len(rest) == 1:
            if method == "GET":
                return _json(200, job)
            if method == "DELETE":
                self.jobs.pop(jid, None)
                self.results.pop(jid, None)
                return 204, {}, b""
            if method == "PATCH":
                state = (data or {}).get("state")
                if state == "UploadComplete" and job["state"] == "Open":
                    job["state"] = "UploadComplete"
                    self._process(job)
                elif state == "Aborted" and job["state"] in ("Open", "UploadComplete"):
                    job["state"] = "Aborted"
                else:
                    raise SfError(400, "INVALIDJOBSTATE", f"Invalid job state change to {state}")
                return _json(200, job)
        if rest[1:] == ["batches"] and method == "PUT":
            if job["state"] != "Open":
                raise SfError(400, "INVALIDJOBSTATE", "Job is not open for uploads")
            self.data[jid].append(body)
            return 201, {}, b""
        if len(rest) == 2 and method == "GET":
            ok, failed = self.results.get(jid, ([], []))
            header = self.data_header(jid)
            if rest[1] == "successfulResults":
                return _csv([["sf__Id", "sf__Created", *header], *ok])
            if rest[1] == "failedResults":
                return _csv([["sf__Id", "sf__Error", *header], *failed])
            if rest[1] == "unprocessedrecords":
                return _csv([header])
        raise SfError(404, "NOT_FOUND", "The requested resource does not exist")

    def data_header(self, jid: str) -> list[str]:
        return list(self.headers.get(jid, []))

    def _create(self, spec: dict[str, Any]) -> Response:
        op = spec.get("operation")
        if op not in _OPS:
            raise SfError(400, "INVALIDJOB", f"Invalid operation: {op}")
        obj = self.store.object_name(str(spec.get("object", "")))
        ext = spec.get("externalIdFieldName")
        if op == "upsert" and not ext:
            raise SfError(400, "INVALIDJOB", "External ID field is required for upsert")
        self.n += 1
        jid = sf_id("750", self.n)
        ts = now_text(self.store.clock)
        job = {
            "id": jid,
            "operation": op,
            "object": obj,
            "createdById": "005000000000001AAA",
            "createdDate": ts,
            "systemModstamp": ts,
            "state": "Open",
            "externalIdFieldName": ext,
            "concurrencyMode": "Parallel",
            "contentType": "CSV",
            "apiVersion": 59.0,
            "jobType": "V2Ingest",
            "lineEnding": spec.get("lineEnding", "LF"),
            "columnDelimiter": spec.get("columnDelimiter", "COMMA"),
            "numberRecordsProcessed": 0,
            "numberRecordsFailed": 0,
            "retries": 0,
            "totalProcessingTime": 0,
        }
        self.jobs[jid] = job
        self.data[jid] = []
        return _json(200, job)

    def _process(self, job: dict[str, Any]) -> None:
        jid = job["id"]
        delim = {"COMMA": ",", "TAB": "\t", "PIPE": "|", "SEMICOLON": ";"}.get(
            job["columnDelimiter"], ","
        )
        rows: list[list[str]] = []
        header: list[str] = []
        for chunk in self.data.pop(jid, []):
            reader = csv.reader(io.StringIO(chunk.decode("utf-8-sig")), delimiter=delim)
            part = list(reader)
            if not part:
                continue
            if not header:
                header = part[0]
            rows.extend(r for r in part[1:] if r)
        self.headers[jid] = header
        op = {"insert": "create", "hardDelete": "delete"}.get(job["operation"], job["operation"])
        obj = job["object"]
        ext = job.get("externalIdFieldName")
        if ext:
            ext = self.store.lower[obj].get(str(ext).lower(), ext)
        seen: dict[str, int] = {}
        records: list[dict[str, Any]] = []
        for row in rows:
            rec: dict[str, Any] = {}
            for name, value in zip(header, row, strict=False):
                if value == "":
                    continue
                rec[name] = None if value == "#N/A" else value
            rec = self.store.canonical(obj, rec)
            records.append(rec)
            if op == "upsert" and ext and rec.get(ext) is not None:
                v = str(rec[ext]).lower()
                seen[v] = seen.get(v, 0) + 1
        ok: list[list[str]] = []
        failed: list[list[str]] = []
        for row, rec in zip(rows, records, strict=True):
            res = self.store._one(op, obj, ext, rec, seen)
            if res["success"]:
                ok.append(
                    [res["id"], "true" if res.get("created", op == "create") else "false", *row]
                )
            else:
                e = res["errors"][0]
                failed.append(["", f"{e['statusCode']}:{e['message']}", *row])
        self.results[jid] = (ok, failed)
        job.update(
            state="JobComplete",
            numberRecordsProcessed=len(rows),
            numberRecordsFailed=len(failed),
            systemModstamp=now_text(self.store.clock),
        )
