"""Bulk API 2.0 query jobs of the mock Salesforce (``/jobs/query``).

A job runs its SOQL when created (the result is a snapshot of that moment) and reports
``UploadComplete``, then ``InProgress`` for its first ``polls`` status reads, then
``JobComplete``, so a client's polling loop is exercised without waiting on a clock.
Results are CSV pages: ``?maxRecords=N&locator=L``, answered with ``Sforce-Locator`` (the
next page's locator, or ``null`` on the last) and ``Sforce-NumberOfRecords``. Jobs can be
aborted (``PATCH {"state": "Aborted"}``) and deleted once they are no longer running.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import msgspec

from recsync.mock import soql
from recsync.mock.sf_store import SfError, Store, now_text, sf_id

Response = tuple[int, dict[str, str], bytes]
_DELIMS = {"COMMA": ",", "TAB": "\t", "PIPE": "|", "SEMICOLON": ";", "CARET": "^",
           "BACKQUOTE": "`"}
_ENDINGS = {"LF": "\n", "CRLF": "\r\n"}
_FINAL = ("JobComplete", "Aborted", "Failed")


def _json(status: int, obj: Any) -> Response:
    return status, {"Content-Type": "application/json;charset=UTF-8"}, msgspec.json.encode(obj)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class QueryJob:
    def __init__(self, info: dict[str, Any], header: list[str], rows: list[list[str]],
                 polls: int) -> None:
        self.info, self.header, self.rows, self.polls_left = info, header, rows, polls


class BulkQueries:
    def __init__(self, store: Store, polls: int = 1, page_size: int = 50000) -> None:
        self.store = store
        self.polls = polls  # status reads that answer InProgress before JobComplete
        self.page_size = page_size  # rows per results page when maxRecords is not given
        self.jobs: dict[str, QueryJob] = {}
        self.n = 0

    def route(
        self, method: str, rest: list[str], data: Any, params: dict[str, str], version: str
    ) -> Response:
        if not rest:
            if method == "POST":
                return self._create(data if isinstance(data, dict) else {}, version)
            if method == "GET":
                infos = [j.info for j in self.jobs.values()]
                return _json(200, {"done": True, "records": infos, "nextRecordsUrl": None})
            raise SfError(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed.")
        job = self.jobs.get(rest[0])
        if job is None:
            raise SfError(404, "NOT_FOUND", "The requested resource does not exist")
        if len(rest) == 1:
            if method == "GET":
                return _json(200, self._status(job))
            if method == "PATCH":
                return self._abort(job, data)
            if method == "DELETE":
                if job.info["state"] not in _FINAL:
                    raise SfError(
                        400, "API_ERROR", "A job can only be deleted once it is complete, "
                        "aborted or failed."
                    )
                del self.jobs[job.info["id"]]
                return 204, {}, b""
        if rest[1:] == ["results"] and method == "GET":
            return self._results(job, params)
        raise SfError(404, "NOT_FOUND", "The requested resource does not exist")

    def _create(self, spec: dict[str, Any], version: str) -> Response:
        op = spec.get("operation")
        if op not in ("query", "queryAll"):
            raise SfError(400, "INVALIDJOB", f"Invalid operation for a query job: {op}")
        text = spec.get("query")
        if not isinstance(text, str) or not text.strip():
            raise SfError(400, "INVALIDJOB", "The query job needs a 'query'.")
        delim = spec.get("columnDelimiter", "COMMA")
        ending = spec.get("lineEnding", "LF")
        if delim not in _DELIMS or ending not in _ENDINGS:
            raise SfError(400, "INVALIDJOB", "Invalid columnDelimiter or lineEnding.")
        st = self.store
        query = soql.parse(text, st.soql_schema)  # SoqlError: 400 with its code
        if query.count_only or query.aggregates:
            raise SfError(
                400, "INVALIDJOB", "Aggregate queries are not supported by Bulk API 2.0 query."
            )
        rows = st.rows(query.obj)
        if op == "query":
            rows = [r for r in rows if not r["IsDeleted"]]
        found = soql.run(query, rows)
        table = [[_cell(r.get(f)) for f in query.fields] for r in found]
        self.n += 1
        ts = now_text(st.clock)
        info = {
            "id": sf_id("750", 500000 + self.n),
            "operation": op,
            "object": query.obj,
            "createdById": "005000000000001AAA",
            "createdDate": ts,
            "systemModstamp": ts,
            "state": "UploadComplete",
            "concurrencyMode": "Parallel",
            "contentType": "CSV",
            "apiVersion": float(version.lstrip("v")),
            "jobType": "V2Query",
            "lineEnding": ending,
            "columnDelimiter": delim,
        }
        self.jobs[info["id"]] = QueryJob(info, list(query.fields), table, self.polls)
        return _json(200, info)

    def _status(self, job: QueryJob) -> dict[str, Any]:
        info = job.info
        if info["state"] in ("UploadComplete", "InProgress"):
            if job.polls_left > 0:
                job.polls_left -= 1
                info["state"] = "InProgress"
            else:
                info["state"] = "JobComplete"
                info["systemModstamp"] = now_text(self.store.clock)
        out = dict(info)
        if info["state"] in ("InProgress", "JobComplete"):
            out.update(
                numberRecordsProcessed=len(job.rows) if info["state"] == "JobComplete" else 0,
                retries=0,
                totalProcessingTime=0,
            )
        return out

    def _abort(self, job: QueryJob, data: Any) -> Response:
        state = data.get("state") if isinstance(data, dict) else None
        if state != "Aborted":
            raise SfError(400, "INVALIDJOBSTATE", f"Invalid job state change to {state}")
        if job.info["state"] in _FINAL:
            raise SfError(
                400, "INVALIDJOBSTATE", f"The job is already {job.info['state']}."
            )
        job.info["state"] = "Aborted"
        job.info["systemModstamp"] = now_text(self.store.clock)
        return _json(200, dict(job.info))

    def _results(self, job: QueryJob, params: dict[str, str]) -> Response:
        if job.info["state"] != "JobComplete":
            raise SfError(
                400, "INVALIDJOBSTATE", f"The job is {job.info['state']}, not JobComplete."
            )
        try:
            size = int(params.get("maxRecords") or self.page_size)
            start = int(params.get("locator") or "0", 36)
        except ValueError as exc:
            raise SfError(400, "INVALID_LOCATOR", "Invalid locator or maxRecords.") from exc
        if size < 1 or start < 0 or start > len(job.rows):
            raise SfError(400, "INVALID_LOCATOR", "Invalid locator or maxRecords.")
        page = job.rows[start : start + size]
        end = start + len(page)
        buf = io.StringIO()
        csv.writer(
            buf,
            delimiter=_DELIMS[job.info["columnDelimiter"]],
            lineterminator=_ENDINGS[job.info["lineEnding"]],
            quoting=csv.QUOTE_ALL,
        ).writerows([job.header, *page])
        locator = _base36(end) if end < len(job.rows) else "null"
        headers = {
            "Content-Type": "text/csv",
            "Sforce-Locator": locator,
            "Sforce-NumberOfRecords": str(len(page)),
        }
        return 200, headers, buf.getvalue().encode("utf-8")


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if not n:
            return out
