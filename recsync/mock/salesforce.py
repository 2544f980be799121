"""Mock Salesforce: a faithful subset of the REST API over plain loopback HTTP.

See ../shared/reference/crm-apis.md. The real simple-salesforce client runs against it in
session mode (with an adapter that turns its ``https://`` URLs into ``http://``). Records
live in memory (and in ``data``, a JSON file rewritten atomically after every change, when
given). Deleted records stay with ``IsDeleted = true`` (the recycle bin), so queryAll sees
them. Faults (errors, 429, latency, dropped connections, the daily limit) are injectable at
run time with ``set_faults``.
"""

from __future__ import annotations

import collections
import json
import os
import random
import re
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import msgspec

from recsync.mock import sf_soap, soql
from recsync.mock.faults import check_fault
from recsync.mock.httpserver import HttpServer, Request
from recsync.mock.sf_bulk import BulkJobs
from recsync.mock.sf_bulk_query import BulkQueries
from recsync.mock.sf_store import SfError, Store

API_VERSIONS = ("v59.0", "v60.0", "v58.0", "v57.0", "v56.0", "v55.0", "v52.0")
Response = tuple[int, dict[str, str], bytes]
_FAULTS = (
    "error_rate",
    "latency",
    "status_429_retry_after",
    "limit_after",
    "drop_rate",
    "error_status",
)


def _err(status: int, code: str, message: str) -> Response:
    body = [{"message": message, "errorCode": code}]
    return status, {"Content-Type": "application/json;charset=UTF-8"}, msgspec.json.encode(body)


def _json(status: int, obj: Any) -> Response:
    return status, {"Content-Type": "application/json;charset=UTF-8"}, msgspec.json.encode(obj)


class SalesforceMock:
    """A mock Salesforce org on ``url`` (plain HTTP). Thread-safe."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        data: Path | str | None = None,
        *,
        page_size: int = 2000,
        daily_limit: int = 100000,
        sobjects: tuple[str, ...] | list[str] = ("Contact", "Account", "Lead"),
        clock: Callable[[], float] = time.time,
        users: dict[str, str] | None = None,
        bulk_query_polls: int = 1,
        bulk_ingest_polls: int = 0,
        **faults: Any,
    ) -> None:
        self.host, self.port = host, port
        self.data = Path(data) if data is not None else None
        self.page_size = page_size
        self.daily_limit = daily_limit
        # username -> password with the security token appended (what SOAP login and the
        # OAuth password grant send); None: any non-empty username and password log in
        self.users = dict(users) if users is not None else None
        self.lock = threading.RLock()
        self.store = Store(tuple(sobjects), clock)
        self.bulk = BulkJobs(self.store, polls=bulk_ingest_polls)
        self.bulk_query = BulkQueries(self.store, polls=bulk_query_polls)
        self.request_count = 0
        self.logins: list[tuple[str, str]] = []  # (how, username) of each user login
        self._usage: collections.deque[float] = collections.deque()
        self._cap: int | None = None
        self._tokens: set[str] = set()
        self._locators: dict[str, tuple[list[dict[str, Any]], int]] = {}
        self._faults: dict[str, Any] = {
            "error_rate": 0.0,
            "latency": 0.0,
            "status_429_retry_after": None,
            "limit_after": None,
            "drop_rate": 0.0,
            "error_status": 503,
        }
        self._rng = random.Random()
        self._server: HttpServer | None = None
        if faults:
            self.set_faults(**faults)

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        if self.data is not None and self.data.is_file():
            with self.lock:
                self.store.load(json.loads(self.data.read_text("utf-8")))
        server = HttpServer(
            self.host, self.port, self.serve, name="sf-mock", error_body=self._http_error
        )
        server.start()
        self.port = server.port
        self._server = server

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.stop()

    def _save(self) -> None:
        if self.data is None:
            return
        tmp = self.data.with_name(self.data.name + ".tmp")
        tmp.write_bytes(msgspec.json.encode(self.store.dump()))
        os.replace(tmp, self.data)

    # ------------------------------------------------------------------ user-side API

    @property
    def token(self) -> str:
        with self.lock:
            if not self._tokens:
                self._tokens.add(secrets.token_hex(24))
            return next(iter(self._tokens))

    def expire_tokens(self) -> None:
        with self.lock:
            self._tokens.clear()

    def push(self, record: dict[str, Any]) -> dict[str, Any]:
        """Insert or change a Contact as a CRM user would (raw fields or the demo shape)."""
        with self.lock:
            rec = self.store.push("Contact", record)
            self._save()
            return rec

    def delete_record(self, key: str) -> bool:
        """Delete a Contact by Id or Record_Id__c as a CRM user would."""
        with self.lock:
            done = self.store.user_delete("Contact", key)
            self._save()
            return done

    def list_records(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(r) for r in self.store.rows("Contact") if not r["IsDeleted"]]

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        with self.lock:
            for name, value in faults.items():
                if name not in _FAULTS:
                    raise TypeError(f"Unknown fault {name!r}; there are: {', '.join(_FAULTS)}.")
                check_fault(name, value)
            for name, value in faults.items():
                self._faults[name] = value
            if "limit_after" in faults:
                after = faults["limit_after"]
                self._cap = None if after is None else self._used() + int(after)
            return dict(self._faults)

    # ------------------------------------------------------------------ limits

    def _used(self) -> int:
        cutoff = time.time() - 86400
        while self._usage and self._usage[0] < cutoff:
            self._usage.popleft()
        return len(self._usage)

    def _max(self) -> int:
        return self.daily_limit if self._cap is None else min(self.daily_limit, self._cap)

    def limit_info(self) -> str:
        with self.lock:
            return f"api-usage={self._used()}/{self._max()}"

    # ------------------------------------------------------------------ HTTP

    def serve(self, req: Request) -> Response | None:
        """One framed HTTP request (see recsync.mock.httpserver); None drops the connection."""
        return self.handle(req.method, req.target, req.headers, req.body)

    @staticmethod
    def _http_error(status: int, message: str) -> Response:
        code = "REQUEST_TOO_LARGE" if status == 413 else "BAD_REQUEST"
        if status >= 500:
            code = "UNKNOWN_EXCEPTION"
        return _err(status, code, message)

    def handle(self, method: str, target: str, headers: Any, body: bytes) -> Response | None:
        with self.lock:
            self.request_count += 1
            faults = dict(self._faults)
        if faults["latency"]:
            time.sleep(float(faults["latency"]))
        if faults["drop_rate"] and self._rng.random() < float(faults["drop_rate"]):
            return None
        resp = self._handle(method, target, headers, body, faults)
        with self.lock:
            resp[1]["Sforce-Limit-Info"] = f"api-usage={self._used()}/{self._max()}"
            if self.store.dirty:
                self.store.dirty = False
                self._save()
        return resp

    def _handle(
        self, method: str, target: str, headers: Any, body: bytes, faults: dict[str, Any]
    ) -> Response:
        parts = urlsplit(target)
        path = parts.path.rstrip("/")
        params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        if path == "/services/oauth2/token" and method == "POST":
            return self._oauth(body)
        if path.startswith("/services/Soap/u/") and method == "POST":
            return self._soap_login(path.split("/")[4], body)
        segs = path.split("/")
        if len(segs) < 4 or segs[1:3] != ["services", "data"]:
            return _err(404, "NOT_FOUND", "The requested resource does not exist")
        if len(segs) == 3 or segs[3] == "":
            return _err(404, "NOT_FOUND", "The requested resource does not exist")
        auth = headers.get("Authorization") or ""
        with self.lock:
            if not auth.startswith("Bearer ") or auth[7:] not in self._tokens:
                return _err(401, "INVALID_SESSION_ID", "Session expired or invalid")
            if self._used() >= self._max():
                return _err(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
            self._usage.append(time.time())
        if faults["status_429_retry_after"] is not None:
            resp = _err(429, "REQUEST_LIMIT_EXCEEDED", "Too many requests; try again later.")
            resp[1]["Retry-After"] = str(faults["status_429_retry_after"])
            return resp
        if faults["error_rate"] and self._rng.random() < float(faults["error_rate"]):
            status = int(faults["error_status"])
            return _err(status, "SERVER_UNAVAILABLE", "Server temporarily unavailable.")
        version = segs[3]
        if segs[3] in ("", None) or not version.startswith("v"):
            return _err(404, "NOT_FOUND", "The requested resource does not exist")
        rest = [unquote(s) for s in segs[4:]]
        try:
            data: Any = None
            ctype = headers.get("Content-Type") or ""
            # every POST and PATCH body is JSON (the Bulk CSV upload is a PUT)
            is_json = ctype.startswith("application/json") or method in ("POST", "PATCH")
            if body and is_json:
                data = msgspec.json.decode(body)
            with self.lock:
                return self._route(method, version, rest, params, headers, data, body)
        except msgspec.DecodeError as exc:
            return _err(400, "JSON_PARSER_ERROR", f"Cannot parse the request body: {exc}")
        except SfError as exc:
            return _err(exc.status, exc.code, exc.message)
        except soql.SoqlError as exc:
            return _err(400, exc.code, exc.message)

    def _oauth(self, body: bytes) -> Response:
        form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        grant = form.get("grant_type", "")
        if grant == "password":
            ok = self.login_ok(form.get("username", ""), form.get("password", ""))
            if ok:
                with self.lock:
                    self.logins.append(("oauth-password", form["username"]))
        elif grant == "client_credentials":
            ok = bool(form.get("client_id")) and bool(form.get("client_secret"))
        else:
            return _json(
                400,
                {
                    "error": "unsupported_grant_type",
                    "error_description": "grant type not supported",
                },
            )
        if not ok:
            return _json(
                400, {"error": "invalid_grant", "error_description": "authentication failure"}
            )
        tok = secrets.token_hex(24)
        with self.lock:
            self._tokens.add(tok)
        return _json(
            200,
            {
                "access_token": tok,
                "instance_url": self.url,
                "token_type": "Bearer",
                "id": f"{self.url}/id/00D000000000001AAA/005000000000001AAA",
                "issued_at": str(int(time.time() * 1000)),
                "signature": secrets.token_hex(8),
            },
        )

    def login_ok(self, username: str, password: str) -> bool:
        """Whether ``password`` (security token appended) logs ``username`` in."""
        if not username or not password:
            return False
        if self.users is None:
            return True
        known = self.users.get(username)
        return known is not None and secrets.compare_digest(known.encode(), password.encode())

    def _soap_login(self, version: str, body: bytes) -> Response:
        """The partner SOAP ``login`` call (username + password + security token)."""
        if not re.fullmatch(r"\d+\.\d+", version):
            return sf_soap.fault("UNSUPPORTED_API_VERSION", f"Invalid Api version: {version}")
        try:
            username, password = sf_soap.parse_login(body)
        except ValueError as exc:
            return sf_soap.fault("INVALID_REQUEST", str(exc), client=True)
        if not self.login_ok(username, password):
            return sf_soap.invalid_login()
        tok = secrets.token_hex(24)
        with self.lock:
            self._tokens.add(tok)
            self.logins.append(("soap", username))
        return sf_soap.login_response(self.url, version, tok, username)

    def _route(
        self,
        method: str,
        version: str,
        rest: list[str],
        params: dict[str, str],
        headers: Any,
        data: Any,
        body: bytes,
    ) -> Response:
        head = rest[0] if rest else ""
        n = len(rest)
        st = self.store
        if head in ("query", "queryAll") and method == "GET":
            if n == 1:
                size = self.page_size
                opts = headers.get("Sforce-Query-Options") or ""
                if opts.startswith("batchSize="):
                    size = max(1, int(opts.split("=", 1)[1]))
                return self._query(version, params.get("q", ""), head == "queryAll", size)
            return self._query_more(version, rest[1])
        if head == "limits" and method == "GET":
            used, mx = self._used(), self._max()
            return _json(200, {"DailyApiRequests": {"Max": mx, "Remaining": mx - used}})
        if head == "sobjects":
            if n == 1 and method == "GET":
                return _json(200, st.list_sobjects(version))
            obj = st.object_name(rest[1])
            if n == 2:
                if method == "POST":
                    return _json(201, st.create(obj, data or {}))
                if method == "GET":
                    return _json(200, {"objectDescribe": st.describe(obj), "recentItems": []})
            elif n == 3 and method == "GET" and rest[2] in ("describe", "updated", "deleted"):
                if rest[2] == "describe":
                    return _json(200, st.describe(obj))
                return _json(
                    200, st.feed(obj, rest[2], params.get("start", ""), params.get("end", ""))
                )
            elif n == 3:
                if method == "GET":
                    return _json(200, st.get(obj, rest[2], version, params.get("fields")))
                if method == "PATCH":
                    st.update(obj, rest[2], data or {})
                    return 204, {}, b""
                if method == "DELETE":
                    st.delete(obj, rest[2])
                    return 204, {}, b""
            elif n == 4:
                if method == "GET":
                    return _json(200, st.get_by_ext(obj, rest[2], rest[3], version))
                if method == "PATCH":
                    res = st.upsert(obj, rest[2], rest[3], data or {})
                    if not res["success"]:
                        e = res["errors"][0]
                        raise SfError(400, e["statusCode"], e["message"])
                    return _json(201 if res["created"] else 200, res)
        if head == "composite" and n >= 2 and rest[1] == "sobjects":
            return self._collections(method, rest, params, data, version)
        if head == "jobs" and n >= 2 and rest[1] == "query":
            return self.bulk_query.route(method, rest[2:], data, params, version)
        if head == "jobs" and n >= 2 and rest[1] == "ingest":
            return self.bulk.route(method, rest[2:], data if isinstance(data, dict) else None, body)
        return _err(404, "NOT_FOUND", "The requested resource does not exist")

    # ------------------------------------------------------------------ query

    def _query(self, version: str, q: str, include_deleted: bool, size: int) -> Response:
        st = self.store
        query = soql.parse(q, st.soql_schema)
        rows = st.rows(query.obj)
        if not include_deleted:
            rows = [r for r in rows if not r["IsDeleted"]]
        found = soql.run(query, rows)
        if query.count_only:  # SELECT COUNT() FROM ...: the count is totalSize
            return _json(200, {"totalSize": len(found), "done": True, "records": []})
        if query.aggregates:
            return _json(
                200, {"totalSize": 1, "done": True, "records": [soql.aggregate(query, found)]}
            )
        out = [st.project(query.obj, r, query.fields, version) for r in found]
        return self._page(version, out, 0, size)

    def _page(self, version: str, out: list[dict[str, Any]], start: int, size: int) -> Response:
        page = out[start : start + size]
        result: dict[str, Any] = {"totalSize": len(out), "done": start + size >= len(out)}
        if not result["done"]:
            loc = "01g" + secrets.token_hex(6).upper()
            self._locators[loc] = (out, size)
            result["nextRecordsUrl"] = f"/services/data/{version}/query/{loc}-{start + size}"
        result["records"] = page
        return _json(200, result)

    def _query_more(self, version: str, locator: str) -> Response:
        loc, _, start = locator.rpartition("-")
        entry = self._locators.get(loc)
        if entry is None or not start.isdigit():
            raise SfError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        out, size = entry
        start_i = int(start)
        if start_i + size >= len(out):
            self._locators.pop(loc, None)
        return self._page(version, out, start_i, size)

    # ------------------------------------------------------------------ collections

    def _collections(
        self, method: str, rest: list[str], params: dict[str, str], data: Any, version: str
    ) -> Response:
        st = self.store
        if method == "DELETE":
            ids = [i for i in params.get("ids", "").split(",") if i]
            all_or_none = params.get("allOrNone", "false").lower() == "true"
            return _json(200, st.batch("delete", None, None, [{"Id": i} for i in ids], all_or_none))
        if method == "GET" and len(rest) == 3:
            obj = st.object_name(rest[2])
            ids = [i for i in params.get("ids", "").split(",") if i]
            fields = params.get("fields")
            return _json(200, [st.get_or_none(obj, i, version, fields) for i in ids])
        if method == "POST" and len(rest) == 3:  # retrieve with a request body
            return self._retrieve(st.object_name(rest[2]), data, version)
        if not isinstance(data, dict) or not isinstance(data.get("records"), list):
            raise SfError(400, "JSON_PARSER_ERROR", "Expected an object with 'records'.")
        records = data["records"]
        all_or_none = bool(data.get("allOrNone", False))
        if method == "POST" and len(rest) == 2:
            return _json(200, st.batch("create", None, None, records, all_or_none))
        if method == "PATCH" and len(rest) == 2:
            return _json(200, st.batch("update", None, None, records, all_or_none))
        if method == "PATCH" and len(rest) == 4:
            obj = st.object_name(rest[2])
            return _json(200, st.batch("upsert", obj, rest[3], records, all_or_none))
        return _err(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed.")


    def _retrieve(self, obj: str, data: Any, version: str) -> Response:
        """``POST composite/sobjects/{type}`` with ``{"ids": [...], "fields": [...]}``: the
        records in the order asked, null for an id that is unknown or deleted."""
        if not isinstance(data, dict):
            raise SfError(400, "JSON_PARSER_ERROR", "Expected an object with 'ids' and 'fields'.")
        ids, fields = data.get("ids"), data.get("fields")
        for name, value in (("ids", ids), ("fields", fields)):
            if not isinstance(value, list) or not value or not all(
                isinstance(v, str) for v in value
            ):
                raise SfError(
                    400, "INVALID_FIELD", f"'{name}' must be a non-empty list of strings."
                )
        assert isinstance(ids, list) and isinstance(fields, list)
        if len(ids) > 2000:
            raise SfError(400, "EXCEEDED_ID_LIMIT", "Cannot retrieve more than 2000 records.")
        st = self.store
        unknown = [f for f in fields if f.lower() not in st.lower[obj]]
        if unknown:
            raise SfError(
                400, "INVALID_FIELD", f"No such column '{unknown[0]}' on entity '{obj}'."
            )
        names = ",".join(fields)
        return _json(200, [st.get_or_none(obj, str(i), version, names) for i in ids])
