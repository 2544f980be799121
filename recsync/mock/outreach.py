"""Mock Outreach API v2 server: prospects over JSON:API, OAuth refresh-token rotation,
hourly rate limit headers, and injectable faults (see shared/reference/crm-apis.md).

Served by recsync.mock.httpserver (the same HTTP/1.1 framing as the Salesforce mock:
chunked and Content-Length bodies, ``Expect: 100-continue``, keep-alive, 400 and a closed
connection for a malformed request), TCP_NODELAY and one send per response.

Credentials: ``client_id``/``client_secret`` are fixed per mock; ``refresh_token`` is the
one currently valid (each grant rotates it and the old one stops working). With ``data``
the prospects and the current refresh token are loaded at ``start()`` and saved
atomically after every change.
"""

from __future__ import annotations

import base64
import contextlib
import heapq
import json
import os
import random
import secrets
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from recsync.mock.faults import check_fault
from recsync.mock.httpserver import HttpServer, Request, Response

JSONAPI = "application/vnd.api+json"
_STR_ATTRS = ("firstName", "lastName", "title", "externalId")
_WRITABLE = {*_STR_ATTRS, "emails", "tags"}
_READONLY = {"createdAt", "updatedAt"}
_MAX_LEN = 255
_MAX_PAGE = 1000


def iso(ms: int) -> str:
    """Epoch milliseconds as Outreach writes timestamps: ``2024-01-15T12:34:56.789Z``."""
    dt = datetime.fromtimestamp(ms / 1000, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def parse_ms(text: str) -> int:
    """An ISO-8601 timestamp (naive = UTC) as epoch milliseconds; ValueError if invalid."""
    dt = datetime.fromisoformat(text.strip())
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return round(dt.timestamp() * 1000)


def flatten(pid: int, attrs: dict[str, Any]) -> dict[str, Any]:
    """A prospect as the flat record the connector exposes."""
    emails = attrs.get("emails") or []
    out = {
        "id": pid,
        "externalId": attrs.get("externalId"),
        "firstName": attrs.get("firstName"),
        "lastName": attrs.get("lastName"),
        "email": emails[0] if emails else None,
        "title": attrs.get("title"),
        "createdAt": attrs.get("createdAt"),
        "updatedAt": attrs.get("updatedAt"),
    }
    if attrs.get("tags") is not None:
        out["tags"] = attrs["tags"]
    return out


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        detail: str,
        pointer: str | None = None,
        headers: dict[str, str] | None = None,
        header: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.title, self.detail = status, code, title, detail
        self.pointer = pointer
        self.header = header  # the request header at fault (JSON:API source.header)
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {
            "id": self.code,
            "status": str(self.status),
            "title": self.title,
            "detail": self.detail,
        }
        if self.pointer:
            err["source"] = {"pointer": self.pointer}
        elif self.header:
            err["source"] = {"header": self.header}
        return {"errors": [err]}


def _not_found(pid: Any) -> ApiError:
    return ApiError(
        404, "resourceNotFound", "Resource Not Found", f"Could not find 'prospect' with ID '{pid}'."
    )


def _invalid(pointer: str, detail: str) -> ApiError:
    return ApiError(422, "validationError", "Validation Error", detail, pointer)


def _decode_cursor(text: str) -> tuple[Any, ...]:
    try:
        pos = json.loads(base64.urlsafe_b64decode(text.encode() + b"=="))
        if isinstance(pos, list) and len(pos) == 2 and all(isinstance(v, int) for v in pos):
            return tuple(pos)
    except ValueError:
        pass
    raise ApiError(400, "badRequest", "Bad Request", "page[after] is not a valid cursor.")


class OutreachMock:
    """A mock Outreach API v2 server (prospects only)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        data: Path | None = None,
        *,
        page_size: int = 100,
        rate_limit: int = 10000,
        token_ttl: float = 7200,
    ) -> None:
        self.host, self.port = host, port
        self.data = Path(data) if data is not None else None
        self.page_size = page_size
        self.rate_limit = rate_limit
        self.token_ttl = token_ttl
        self.client_id = "mock-outreach-client"
        self.client_secret = "mock-outreach-secret-" + secrets.token_hex(8)
        self._refresh = "mock-refresh-" + secrets.token_hex(12)
        self._tokens: dict[str, float] = {}
        self._prospects: dict[int, dict[str, Any]] = {}
        self._ms: dict[int, int] = {}  # updatedAt of each prospect, epoch ms
        self._next_id = 1
        self._last_ms = 0
        self._lock = threading.RLock()
        self._window_start = 0.0
        self._window_used = 0
        self.request_count = 0
        self._faults: dict[str, Any] = {
            "error_rate": 0.0,
            "latency": 0.0,
            "status_429_retry_after": None,
            "drop_rate": 0.0,
            "error_status": 503,
        }
        self._server: HttpServer | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def refresh_token(self) -> str:
        """The refresh token currently valid (it rotates on every grant)."""
        with self._lock:
            return self._refresh

    def start(self) -> None:
        if self._server is not None:
            return
        self._load()
        server = HttpServer(
            self.host,
            self.port,
            lambda req: _serve(self, req),
            name="outreach-mock",
            error_body=_http_error,
        )
        server.start()
        self.port = server.port
        self._server = server

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    def _load(self) -> None:
        if self.data is None or not self.data.exists():
            return
        state = json.loads(self.data.read_text("utf-8"))
        with self._lock:
            self._prospects = {int(k): v for k, v in state.get("prospects", {}).items()}
            self._next_id = int(state.get("next_id", max(self._prospects, default=0) + 1))
            self._refresh = state.get("refresh_token") or self._refresh
            self.client_secret = state.get("client_secret") or self.client_secret
            self._ms = {pid: parse_ms(p["updatedAt"]) for pid, p in self._prospects.items()}
            self._last_ms = max(self._ms.values(), default=0)

    def _save(self) -> None:
        """Write the data file atomically (caller holds the lock)."""
        if self.data is None:
            return
        state = {
            "next_id": self._next_id,
            "refresh_token": self._refresh,
            "client_secret": self.client_secret,
            "prospects": {str(k): v for k, v in self._prospects.items()},
        }
        self.data.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.data.name}.", dir=self.data.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(state, fh)
            os.replace(tmp, self.data)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    # ------------------------------------------------------------------ control

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        """Set any of error_rate, latency, status_429_retry_after, drop_rate, error_status
        (unnamed ones keep their value); returns the faults now in force."""
        with self._lock:
            for name, value in faults.items():
                if name not in self._faults:
                    raise ValueError(f"Unknown fault {name!r}; known: {', '.join(self._faults)}.")
                check_fault(name, value)
            for name, value in faults.items():
                self._faults[name] = value
            return dict(self._faults)

    def expire_tokens(self) -> None:
        """Make every access token issued so far invalid (as if they had expired)."""
        with self._lock:
            self._tokens.clear()

    def list_records(self) -> list[dict[str, Any]]:
        with self._lock:
            return [flatten(pid, dict(a)) for pid, a in sorted(self._prospects.items())]

    def push(self, record: dict[str, Any]) -> dict[str, Any]:
        """Create or update a prospect as a CRM user would; returns it flattened.

        Accepts prospect attributes (``id`` updates that prospect) or the demo shape
        ``{"record_id", "full_name", "email_address"}``; a flat ``email`` becomes
        ``emails``. A record whose externalId matches an existing prospect updates it.
        """
        rec = dict(record)
        attrs: dict[str, Any] = {}
        if "record_id" in rec:
            attrs["externalId"] = str(rec.pop("record_id"))
        if "full_name" in rec:
            first, _, last = str(rec.pop("full_name") or "").partition(" ")
            attrs["firstName"], attrs["lastName"] = first, last
        if "email_address" in rec:
            rec["email"] = rec.pop("email_address")
        if "email" in rec:
            email = rec.pop("email")
            attrs["emails"] = [email] if email else []
        pid = rec.pop("id", None)
        for k in ("createdAt", "updatedAt"):
            rec.pop(k, None)
        attrs.update(rec)
        if attrs.get("externalId") is not None:
            attrs["externalId"] = str(attrs["externalId"])
        with self._lock:
            if pid is None and attrs.get("externalId") is not None:
                pid = next(
                    (
                        i
                        for i, p in self._prospects.items()
                        if p.get("externalId") == attrs["externalId"]
                    ),
                    None,
                )
            pid = self.create(attrs) if pid is None else self.update(int(pid), attrs)
            return flatten(pid, self._prospects[pid])

    # ------------------------------------------------------------------ store

    def _now_ms(self) -> int:
        self._last_ms = max(self._last_ms, int(time.time() * 1000))
        return self._last_ms

    def create(self, attrs: dict[str, Any]) -> int:
        with self._lock:
            pid, self._next_id = self._next_id, self._next_id + 1
            ms = self._ms[pid] = self._now_ms()
            now = iso(ms)
            base: dict[str, Any] = {
                "firstName": None,
                "lastName": None,
                "emails": [],
                "title": None,
                "externalId": None,
            }
            self._prospects[pid] = {**base, **attrs, "createdAt": now, "updatedAt": now}
            self._save()
            return pid

    def update(self, pid: int, attrs: dict[str, Any]) -> int:
        with self._lock:
            if pid not in self._prospects:
                raise _not_found(pid)
            self._prospects[pid].update(attrs)
            ms = self._ms[pid] = self._now_ms()
            self._prospects[pid]["updatedAt"] = iso(ms)
            self._save()
            return pid

    def delete(self, pid: int) -> None:
        with self._lock:
            if self._prospects.pop(pid, None) is None:
                raise _not_found(pid)
            del self._ms[pid]
            self._save()

    def resource(self, pid: int, fields: list[str] | None = None) -> dict[str, Any]:
        attrs = self._prospects[pid]
        if fields is not None:
            attrs = {k: v for k, v in attrs.items() if k in fields}
        return {
            "type": "prospect",
            "id": pid,
            "attributes": dict(attrs),
            "links": {"self": f"{self.url}/api/v2/prospects/{pid}"},
        }

    # ------------------------------------------------------------------ auth / limits

    def grant(self, form: dict[str, str]) -> dict[str, Any]:
        with self._lock:
            if form.get("grant_type") != "refresh_token":
                raise ApiError(
                    400,
                    "unsupported_grant_type",
                    "Bad Request",
                    "Only the refresh_token grant is supported.",
                )
            if (
                form.get("client_id") != self.client_id
                or not secrets.compare_digest(form.get("client_secret", ""), self.client_secret)
                or not secrets.compare_digest(form.get("refresh_token", ""), self._refresh)
            ):
                raise ApiError(
                    401,
                    "invalid_grant",
                    "Unauthorized",
                    "The client credentials or refresh token are invalid.",
                )
            token = "mock-access-" + secrets.token_hex(16)
            self._tokens[token] = time.time() + self.token_ttl
            self._refresh = "mock-refresh-" + secrets.token_hex(12)
            self._save()
            return {
                "access_token": token,
                "token_type": "bearer",
                "expires_in": int(self.token_ttl),
                "refresh_token": self._refresh,
                "scope": "prospects.all",
                "created_at": int(time.time()),
            }

    def check_token(self, header: str | None) -> None:
        token = header[7:].strip() if header and header[:7].lower() == "bearer " else None
        with self._lock:
            expiry = self._tokens.get(token) if token else None
            if expiry is None or expiry < time.time():
                raise ApiError(
                    401,
                    "unauthorized",
                    "Unauthorized",
                    "The access token is missing, invalid or expired.",
                )

    def count_request(self, count: bool = True) -> tuple[dict[str, str], bool]:
        """Count one API request (token grants are not counted); the rate limit headers
        and whether it is over the limit."""
        with self._lock:
            now = time.time()
            if now >= self._window_start + 3600:
                self._window_start, self._window_used = now, 0
            self._window_used += count
            over = self._window_used > self.rate_limit
            reset = int(self._window_start + 3600) + 1
            headers = {
                "X-RateLimit-Limit": str(self.rate_limit),
                "X-RateLimit-Remaining": str(max(0, self.rate_limit - self._window_used)),
                "X-RateLimit-Reset": str(reset),
            }
            if over:
                headers["Retry-After"] = str(max(1, int(reset - now)))
            return headers, over

    # ------------------------------------------------------------------ listing

    def query(self, params: dict[str, str]) -> tuple[list[dict[str, Any]], str | None]:
        """One page of prospects for query ``params``: resources and the next cursor."""
        sort = params.get("sort", "id")
        desc = sort.startswith("-")
        field = sort.lstrip("-")
        if field not in ("id", "updatedAt", "createdAt"):
            raise ApiError(400, "badRequest", "Bad Request", f"Cannot sort by {field!r}.", None)
        try:
            size = int(params.get("page[size]", self.page_size))
        except ValueError:
            size = 0
        if not 1 <= size <= _MAX_PAGE:
            raise ApiError(
                400, "badRequest", "Bad Request", f"page[size] must be between 1 and {_MAX_PAGE}."
            )
        fields = params.get("fields[prospect]")
        wanted = fields.split(",") if fields else None
        ids = lo = hi = None
        if "filter[id]" in params:
            try:
                ids = {int(x) for x in params["filter[id]"].split(",") if x}
            except ValueError as exc:
                raise ApiError(400, "badRequest", "Bad Request", "Invalid filter[id].") from exc
        ext = params.get("filter[externalId]")
        if "filter[updatedAt]" in params:
            a, sep, b = params["filter[updatedAt]"].partition("..")
            try:
                if not sep:
                    raise ValueError(a)
                lo = None if a in ("", "neginf") else parse_ms(a)
                hi = None if b in ("", "inf") else parse_ms(b)
            except ValueError as exc:
                raise ApiError(
                    400,
                    "badRequest",
                    "Bad Request",
                    "filter[updatedAt] must be a range A..B (neginf, inf allowed).",
                ) from exc
        after = params.get("page[after]")

        pos = _decode_cursor(after) if after is not None else None
        with self._lock:
            ms_of = self._ms
            rows = []
            for pid, p in self._prospects.items():
                if ids is not None and pid not in ids:
                    continue
                if ext is not None and p.get("externalId") != ext:
                    continue
                ms = ms_of[pid]
                if (lo is not None and ms < lo) or (hi is not None and ms > hi):
                    continue
                if field == "id":
                    k = (pid, pid)
                else:
                    k = (ms if field == "updatedAt" else parse_ms(p[field]), pid)
                if pos is None or (k < pos if desc else k > pos):
                    rows.append((k, pid))
            pick = heapq.nlargest if desc else heapq.nsmallest
            page = pick(size + 1, rows)
            more = len(page) > size
            page = page[:size]
            out = [self.resource(pid, wanted) for _, pid in page]
            nxt = None
            if more:
                nxt = base64.urlsafe_b64encode(json.dumps(list(page[-1][0])).encode()).decode()
            return out, nxt

    def validate(self, body: Any, *, create: bool, pid: int | None = None) -> dict[str, Any]:
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            raise _invalid("/data", "The request body must have a 'data' object.")
        if data.get("type") != "prospect":
            raise ApiError(
                409, "typeMismatch", "Conflict", "data.type must be 'prospect'.", "/data/type"
            )
        if not create and "id" in data and str(data["id"]) != str(pid):
            raise ApiError(
                409, "idMismatch", "Conflict", "data.id does not match the URL.", "/data/id"
            )
        attrs = data.get("attributes", {})
        if not isinstance(attrs, dict):
            raise _invalid("/data/attributes", "attributes must be an object.")
        out: dict[str, Any] = {}
        for name, value in attrs.items():
            ptr = f"/data/attributes/{name}"
            if name in _READONLY:
                continue
            if name not in _WRITABLE:
                raise _invalid(ptr, f"Unknown attribute '{name}' for prospect.")
            if name in ("emails", "tags"):
                if value is None:
                    value = []
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise _invalid(ptr, f"{name} must be a list of strings.")
            elif value is not None and not isinstance(value, str):
                raise _invalid(ptr, f"{name} must be a string.")
            elif isinstance(value, str) and len(value) > _MAX_LEN:
                raise _invalid(ptr, f"{name} is too long (maximum is {_MAX_LEN} characters).")
            out[name] = value
        return out


def _response(status: int, body: Any, headers: dict[str, str], ctype: str = JSONAPI) -> Response:
    out = dict(headers)
    if body is not None:
        out["Content-Type"] = ctype
    return status, out, b"" if body is None else json.dumps(body).encode()


def _http_error(status: int, message: str) -> Response:
    """A request the HTTP layer refused (malformed, too large) as a JSON:API error."""
    code = {413: "requestTooLarge", 431: "requestTooLarge"}.get(status, "badRequest")
    title = "Internal Server Error" if status >= 500 else "Bad Request"
    if status >= 500:
        code = "serverError"
    return _response(status, ApiError(status, code, title, message).body(), {})


def _serve(m: OutreachMock, req: Request) -> Response | None:
    """One framed HTTP request (see recsync.mock.httpserver); None drops the connection."""
    raw = req.body
    with m._lock:
        m.request_count += 1
        faults = dict(m._faults)
    if faults["latency"]:
        time.sleep(float(faults["latency"]))
    if faults["drop_rate"] and random.random() < faults["drop_rate"]:
        return None
    parts = urlsplit(req.target)
    path = parts.path.rstrip("/")
    params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    headers: dict[str, str] = {}
    try:
        if path == "/oauth/token" and req.method == "POST":
            ctype = (req.headers.get("Content-Type") or "").split(";")[0].strip()
            try:
                if ctype == "application/json":
                    form = json.loads(raw or b"{}")
                else:
                    form = {k: v[-1] for k, v in parse_qs(raw.decode()).items()}
            except ValueError as exc:
                raise ApiError(
                    400, "invalid_request", "Bad Request", "The request body cannot be parsed."
                ) from exc
            headers = m.count_request(count=False)[0]
            return _response(200, m.grant(form), headers, "application/json")
        headers, over = m.count_request()
        retry = faults["status_429_retry_after"]
        if retry is not None:
            headers["Retry-After"] = str(retry)
            over = True
        if over:
            raise ApiError(
                429,
                "rateLimitExceeded",
                "Rate Limit Exceeded",
                "You have exceeded your permitted rate limit; retry later.",
            )
        if faults["error_rate"] and random.random() < faults["error_rate"]:
            status = int(faults["error_status"])
            raise ApiError(
                status, "serverError", "Service Unavailable", f"Injected fault (HTTP {status})."
            )
        m.check_token(req.headers.get("Authorization"))
        status, body = _route(m, req, path, params)
        return _response(status, body, headers)
    except ApiError as err:
        if err.status in (400, 401) and path == "/oauth/token":
            body = {"error": err.code, "error_description": err.detail}
            return _response(err.status, body, headers, "application/json")
        return _response(err.status, err.body(), {**headers, **err.headers})
    except Exception as exc:  # a bug in the mock: answer 500 rather than hang
        return _response(
            500, ApiError(500, "serverError", "Internal Server Error", str(exc)).body(), headers
        )


def _body(req: Request) -> Any:
    ctype = (req.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if ctype != JSONAPI:
        raise ApiError(
            415,
            "unsupportedMediaType",
            "Unsupported Media Type",
            f"Content-Type must be {JSONAPI}, not {ctype or 'missing'}.",
            header="Content-Type",
        )
    try:
        return json.loads(req.body)
    except ValueError as exc:
        raise ApiError(400, "badRequest", "Bad Request", "Body is not valid JSON.") from exc


def _route(
    m: OutreachMock, req: Request, path: str, params: dict[str, str]
) -> tuple[int, Any]:
    cmd = req.method
    if path == "/api/v2/prospects":
        if cmd == "GET":
            data, nxt = m.query(params)
            links: dict[str, str] = {}
            if nxt is not None:
                keep = {k: v for k, v in params.items() if k != "page[after]"}
                keep["page[after]"] = nxt
                links["next"] = f"{m.url}/api/v2/prospects?{urlencode(keep)}"
            return 200, {"data": data, "links": links, "meta": {"count": len(data)}}
        if cmd == "POST":
            attrs = m.validate(_body(req), create=True)
            with m._lock:
                pid = m.create(attrs)
                return 201, {"data": m.resource(pid)}
    elif path.startswith("/api/v2/prospects/"):
        ident = path.rsplit("/", 1)[1]
        if not ident.isdigit():
            raise _not_found(ident)
        pid = int(ident)
        with m._lock:
            if cmd == "GET":
                if pid not in m._prospects:
                    raise _not_found(pid)
                return 200, {"data": m.resource(pid)}
            if cmd == "PATCH":
                if pid not in m._prospects:
                    raise _not_found(pid)
                m.update(pid, m.validate(_body(req), create=False, pid=pid))
                return 200, {"data": m.resource(pid)}
            if cmd == "DELETE":
                m.delete(pid)
                return 204, None
    raise ApiError(404, "resourceNotFound", "Resource Not Found", f"No route for {cmd} {path}.")
