"""The first full read of a large sObject through one Bulk API 2.0 query job.

What Salesforce users do for a backfill: REST queryAll pages of 2,000 records cost one API
request each (500 per million records) and are slow; one Bulk API 2.0 query job costs a
handful, however large the object. The Salesforce connector starts one when it reads from
the beginning (first sync, ``sync now --full``) and ``SELECT COUNT()`` says the sObject has
``bulk_read_threshold`` records or more.

The job's progress lives in the side's cursor, so a restart goes on where it was:
``{"bulk": {"job", "since", "locator", "total", "read", "polls"}}``. While Salesforce runs
the job, a read waits a little (0.05 s, doubling up to 5 s) and answers an empty page with
``more`` set, so the side's poller stays busy (``--once`` and ``sync now --full`` wait for
the read; the connector's writes wait at most one pause); once the job is complete each read
emits one CSV results page (``maxRecords`` = the
page size, ``Sforce-Locator`` to the next one). After the last page the job is deleted and
the cursor becomes the ordinary queryAll cursor at the job's ``createdDate``: every change
made while the job ran is read again the usual way (a record read twice is written once,
content hashes see to that). A job that fails, is aborted or has gone falls back to a
REST read from the beginning.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from simple_salesforce.util import call_salesforce

from recsync.errors import ConnectorError
from recsync.messages import Change, ChangePage

log = logging.getLogger(__name__)
REST_FROM_START = {"ts": "1970-01-01T00:00:00.000+0000", "seen": []}
_RUNNING = ("UploadComplete", "InProgress")
_MAX_PAUSE = 5.0


class _Host(Protocol):
    """What the bulk read needs of the Salesforce connector."""

    obj: str

    @property
    def system_id(self) -> str: ...

    def _call(self, fn: Callable[[Any], Any]) -> Any: ...


def _restful(path: str, method: str, body: Any, sf: Any) -> Any:
    return sf.restful(path, method=method, json=body)


def _typed(types: dict[str, str], row: dict[str, str]) -> dict[str, Any]:
    """A CSV row as the REST API would give the record: null, booleans, numbers, and
    datetimes in the REST form (``...000+0000``, where Bulk CSV writes ``...000Z``)."""
    out: dict[str, Any] = {}
    for name, text in row.items():
        kind = types.get(name, "string")
        value: Any = text
        if text == "":
            value = None
        elif kind == "boolean":
            value = text.lower() == "true"
        elif kind == "int":
            value = int(text)
        elif kind in ("double", "currency", "percent"):
            value = float(text)
        elif kind == "datetime" and text.endswith("Z"):
            value = text[:-1] + "+0000"
        out[name] = value
    return out


class BulkRead:
    """One connector's bulk reads; ``progress`` tells how the current one is going."""

    def __init__(self, host: _Host, sleep: Callable[[float], None] = time.sleep) -> None:
        self.host = host
        self.sleep = sleep  # the pause between two status reads of a running job
        self.progress: dict[str, Any] | None = None

    def start(self, fields: list[str], total: int) -> ChangePage:
        host = self.host
        body = {
            "operation": "query",
            "query": f"SELECT {', '.join(fields)} FROM {host.obj}",
            "contentType": "CSV",
            "columnDelimiter": "COMMA",
            "lineEnding": "LF",
        }
        job = host._call(lambda sf: _restful("jobs/query", "POST", body, sf))
        state = {"job": job["id"], "since": job["createdDate"], "locator": "",
                 "total": total, "read": 0}
        self._note(state, "started", job.get("state", "UploadComplete"))
        return ChangePage([], json.dumps({"bulk": state}, separators=(",", ":")), more=True)

    def step(
        self,
        cursor: str,
        state: dict[str, Any],
        limit: int,
        types: dict[str, str],
        emit: Callable[[list[dict[str, Any]]], list[Change]],
    ) -> ChangePage:
        """The next page of the bulk read whose cursor is ``cursor`` (``state`` parsed)."""
        host, job = self.host, str(state["job"])
        if not state.get("locator"):  # results not started: is the job done yet?
            try:
                info = host._call(lambda sf: _restful(f"jobs/query/{job}", "GET", None, sf))
            except ConnectorError as exc:
                if "NOT_FOUND" not in str(exc):
                    raise
                return self._fallback(state, "has gone")
            status = str(info.get("state"))
            if status in _RUNNING:
                # Ask again after a pause that grows (0.05 s doubling up to 5 s), with a new
                # cursor and more=True: the side's poller stays busy through the job, so
                # `--once` and a backfill's wait know the read is not over.
                polls = int(state.get("polls", 0))
                self._note(state, "running", status)
                self.sleep(min(_MAX_PAUSE, 0.05 * 2**polls))
                state = {**state, "polls": polls + 1}
                return ChangePage([], json.dumps({"bulk": state}, separators=(",", ":")),
                                  more=True)
            if status != "JobComplete":
                why = info.get("errorMessage")
                return self._fallback(state, f"ended {status}" + (f" ({why})" if why else ""))
        params = {"maxRecords": str(max(1, limit))}
        if state.get("locator"):
            params["locator"] = str(state["locator"])

        def results(sf: Any) -> Any:
            url = f"{sf.base_url}jobs/query/{job}/results"
            return call_salesforce(url, "GET", sf.session, dict(sf.headers), params=params)

        resp = host._call(results)
        rows = [_typed(types, r) for r in csv.DictReader(io.StringIO(resp.text))]
        changes = emit(rows)
        locator = resp.headers.get("Sforce-Locator") or "null"
        state = {**state, "read": int(state["read"]) + len(rows)}
        if locator != "null":
            state["locator"] = locator
            self._note(state, "reading", "JobComplete")
            cursor = json.dumps({"bulk": state}, separators=(",", ":"))
            return ChangePage(changes, cursor, more=True)
        try:
            host._call(lambda sf: _restful(f"jobs/query/{job}", "DELETE", None, sf))
        except ConnectorError as exc:  # it expires by itself after 7 days
            log.warning("Could not delete Bulk API 2.0 query job %s of %s: %s", job,
                        host.system_id, exc)
        self._note(state, "done", "JobComplete")  # stays until the next bulk read
        after = {"ts": state["since"], "seen": []}
        return ChangePage(changes, json.dumps(after, separators=(",", ":")), more=True)

    def _fallback(self, state: dict[str, Any], why: str) -> ChangePage:
        log.warning(
            "Bulk API 2.0 query job %s for the full read of %s on %s %s; reading it "
            "through the REST API from the beginning instead",
            state["job"], self.host.obj, self.host.system_id, why,
        )
        self.progress = None
        return ChangePage([], json.dumps(REST_FROM_START, separators=(",", ":")), more=True)

    def _note(self, state: dict[str, Any], phase: str, job_state: str) -> None:
        total, read = int(state["total"]), int(state["read"])
        self.progress = {"job": state["job"], "phase": phase, "job_state": job_state,
                         "read": read, "total": total}
        log.info(
            "Bulk read of %s on %s: job %s %s (%s), %d of about %d records read",
            self.host.obj, self.host.system_id, state["job"], phase, job_state, read, total,
            extra={"bulk_job": state["job"], "phase": phase, "read": read, "total": total},
        )
