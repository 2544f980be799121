"""Outreach connector: prospects of the Outreach API v2 (JSON:API) through ``requests``.

Records. A prospect is exposed flat: ``{"id", "externalId", "firstName", "lastName",
"email" (first of emails, or None), "title", "tags"?, "createdAt", "updatedAt"}``; writes
take the same names (``email`` becomes ``emails: [email]``; other names pass through as
attributes). The record key is the ``externalId`` attribute, which holds the other
system's key. Outreach has no upsert, so the connector keeps a map externalId -> prospect
id learned from reads and writes, and looks a key up (``filter[externalId]``) before
creating it, so a retried create cannot make a duplicate. A prospect made by hand with no
externalId is given ``"or-<id>"`` (a PATCH) when first read and reported under that key.

Reading. The cursor is JSON ``{"ts": updatedAt, "seen": [ids at ts], "last_reconcile":
epoch, "next"?: url, "listing"?: true}``. Polls ask for ``filter[updatedAt]=<ts>..inf&
sort=updatedAt`` and follow ``links.next`` verbatim (kept in the cursor between pages);
ids in ``seen`` were reported at ``ts`` already and are skipped. Outreach has no delete
feed: when there is no cursor, ``reconcile_interval`` seconds have passed since the last
listing, or the cursor says ``"relist"``, the same query runs from ``neginf`` as a full
listing (``listing`` pages) and the engine takes linked records it does not list as
deleted. A prospect updated twice within one timestamp after we read it is caught by the
next listing at the latest.

Credentials. ``client_id``, ``client_secret`` and ``refresh_token`` come from the config
value, else the environment variable named by ``<field>_env`` (default
``OUTREACH_<FIELD>``), else the file of that name in ``$CREDENTIALS_DIRECTORY`` (systemd
credentials). Outreach rotates the refresh token on every grant, and the engine has no
place to keep it yet, so the connector keeps ``{"refresh_token", "access_token",
"expires_at"}`` in ``$STATE_DIRECTORY`` (first entry; else ``./state``) as
``outreach-<sha256(base_url + client_id)[:16]>.json`` (mode 0600, replaced atomically,
guarded by a lock file so connectors sharing the account take turns to refresh). It is read
at ``open()`` and wins over the configured token (which is tried when the stored one is
refused). With ``[cluster]`` the same object is kept in the cluster's PostgreSQL
instead (``recsync.connectors.sharedstate``, under a lock the nodes share), so a pipeline
that moves to another node keeps the rotated token; a file left from a single node is
taken over once. With ``mock = true`` the embedded mock's URL and credentials are used and the
state is kept in memory. Secrets never appear in reprs, logs or error messages.
"""

from __future__ import annotations

import contextlib
import email.utils
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

import requests

from recsync.connectors import sharedstate
from recsync.connectors.base import Connector, ConnectorConfig
from recsync.connectors.credentials import resolve_secret
from recsync.errors import ConnectorConfigError, ConnectorError, RateLimited
from recsync.messages import Change, ChangePage, Record, WriteOp, WriteResult

log = logging.getLogger(__name__)

JSONAPI = "application/vnd.api+json"
_SECRETS = ("client_id", "client_secret", "refresh_token")
_FLAT_ONLY = ("id", "email", "createdAt", "updatedAt")
_ID_CHUNK = 100
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()
_memory_state: dict[str, dict[str, Any]] = {}


class OutreachConfig(ConnectorConfig, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Prospects of one Outreach account (see the module docstring for credentials)."""

    key: str = "externalId"
    mock: bool = False
    base_url: str = "https://api.outreach.io"
    client_id: str = ""
    client_secret: str = ""
    refresh_token: str = ""
    client_id_env: str = ""
    client_secret_env: str = ""
    refresh_token_env: str = ""
    redirect_uri: str = ""
    page_size: int = 100
    reconcile_interval: float = 300.0
    timeout: float = 30.0
    throttle_below: int = 50

    def __repr__(self) -> str:
        return (
            f"OutreachConfig(base_url={self.base_url!r}, mock={self.mock}, "
            f"page_size={self.page_size}, reconcile_interval={self.reconcile_interval})"
        )


def parse_time(text: Any) -> float | None:
    """An Outreach timestamp (``2024-01-15T12:34:56.000Z``) as epoch seconds."""
    if not isinstance(text, str):
        return None
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def flatten(res: dict[str, Any]) -> Record:
    """A JSON:API prospect resource as a flat record."""
    attrs = dict(res.get("attributes") or {})
    emails = attrs.pop("emails", None) or []
    rec: Record = {
        "id": int(res["id"]),
        "externalId": attrs.pop("externalId", None),
        "firstName": attrs.pop("firstName", None),
        "lastName": attrs.pop("lastName", None),
        "email": emails[0] if emails else None,
        "title": attrs.pop("title", None),
    }
    rec.update(attrs)
    return rec


def attributes(fields: Record, key: str) -> dict[str, Any]:
    """Flat record fields as prospect attributes for a PATCH/POST body."""
    attrs = {k: v for k, v in fields.items() if k not in _FLAT_ONLY}
    if "email" in fields:
        attrs["emails"] = [fields["email"]] if fields["email"] else []
    attrs["externalId"] = key
    return attrs


class OutreachConnector(Connector):
    """Reads and writes Outreach prospects."""

    name: ClassVar[str] = "outreach"
    Config: ClassVar[type[ConnectorConfig]] = OutreachConfig
    counts_requests: ClassVar[bool] = True

    def __init__(self, config: Any, base_dir: Path) -> None:
        super().__init__(config, base_dir)
        config = self.config
        if config.key != "externalId":
            raise ConnectorConfigError(
                f"The outreach connector keys prospects by 'externalId', not {config.key!r}; "
                "remove 'key' or set it to \"externalId\"."
            )
        self.cfg: OutreachConfig = config
        self.base_url = config.base_url.rstrip("/")
        self._creds: dict[str, str] = {}
        self._initial_refresh: Callable[[], str] = lambda: self._creds.get("refresh_token", "")
        self._access = ""
        self._refresh = ""
        self._session: requests.Session | None = None
        self._ids: dict[str, int] = {}
        self._budget: tuple[int, float | None] | None = None
        self._state_key = ""
        self._state_path: Path | None = None
        self._shared: sharedstate.SharedConnectorState | None = None  # [cluster]: in PostgreSQL
        ident = "mock" if config.mock else self.base_url + self._secret("client_id")
        self._system_id = "outreach:" + ident

    def __repr__(self) -> str:
        return f"OutreachConnector({self.base_url!r})"

    @property
    def system_id(self) -> str:
        return self._system_id

    # ------------------------------------------------------------------ open / close

    def _secret(self, field: str) -> str:
        name = getattr(self.cfg, field + "_env") or f"OUTREACH_{field.upper()}"
        return resolve_secret(getattr(self.cfg, field), name, name)

    def open(self) -> None:
        if self.cfg.mock:
            from recsync import mock

            server: Any = mock.embedded("outreach")
            self.base_url = server.url
            self._creds = {"client_id": server.client_id, "client_secret": server.client_secret}
            self._initial_refresh = lambda: str(server.refresh_token)
        else:
            self._creds = {f: self._secret(f) for f in _SECRETS}
            missing = [f for f in _SECRETS if not self._creds[f]]
            if missing:
                raise ConnectorConfigError(
                    f"Outreach credentials missing for {self.base_url}: {', '.join(missing)}; "
                    "set them in the config, the environment (OUTREACH_<NAME> or <name>_env) "
                    "or $CREDENTIALS_DIRECTORY."
                )
        digest = hashlib.sha256((self.base_url + self._creds["client_id"]).encode()).hexdigest()
        self._state_key = f"outreach-{digest[:16]}"
        if not self.cfg.mock:
            folder = (os.environ.get("STATE_DIRECTORY") or "state").split(":")[0]
            self._state_path = Path(folder).absolute() / f"{self._state_key}.json"
            self._shared = sharedstate.current()
            if self._shared is not None:
                self._adopt_file()
        self._session = requests.Session()
        self._session.headers["Accept"] = JSONAPI
        stored = self._load_state()
        self._refresh = stored.get("refresh_token") or self._initial_refresh()
        if stored.get("access_token") and float(stored.get("expires_at", 0)) > time.time() + 60:
            self._access = stored["access_token"]
        self._request("GET", "/api/v2/prospects", params={"page[size]": 1})

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    # ------------------------------------------------------------------ token state

    def _lock(self) -> threading.Lock:
        with _locks_guard:
            return _locks.setdefault(self._state_key, threading.Lock())

    def _adopt_file(self) -> None:
        """[cluster]: the token file a single node kept, moved into the shared state once
        (when the shared state has none yet)."""
        assert self._shared is not None
        with self._shared.locked(self._state_key):
            if self._shared.load(self._state_key) is not None:
                return
            stored = self._load_file()
            if stored:
                self._shared.save(self._state_key, stored)
                log.info("Outreach token state moved from %s to the cluster's state",
                         self._state_path)

    def _load_state(self) -> dict[str, Any]:
        if self._shared is not None:
            return self._shared.load(self._state_key) or {}
        return self._load_file()

    def _load_file(self) -> dict[str, Any]:
        if self._state_path is None:
            return dict(_memory_state.get(self._state_key, {}))
        try:
            state = json.loads(self._state_path.read_text("utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning(
                "Ignoring unreadable Outreach token state %s: %s",
                self._state_path,
                type(exc).__name__,
            )
            return {}
        return state if isinstance(state, dict) else {}

    def _save_state(self, state: dict[str, Any]) -> None:
        if self._shared is not None:
            self._shared.save(self._state_key, state)
            return
        if self._state_path is None:
            _memory_state[self._state_key] = dict(state)
            return
        folder = self._state_path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self._state_path.name}.", dir=folder)
            try:
                os.fchmod(fd, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    json.dump(state, fh)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self._state_path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            raise ConnectorError(
                f"Cannot save the rotated Outreach refresh token to {self._state_path}: "
                f"{exc.strerror}; fix the folder's permissions or set STATE_DIRECTORY."
            ) from exc

    @contextlib.contextmanager
    def _file_lock(self) -> Any:
        if self._shared is not None:  # the nodes take turns
            with self._shared.locked(self._state_key):
                yield
            return
        if self._state_path is None:
            yield
            return
        self._state_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._state_path.with_suffix(".lock"), "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _renew(self, failed: str) -> None:
        """Get a new access token (``failed`` is the one just refused, "" if none)."""
        with self._lock(), self._file_lock():
            stored = self._load_state()
            token = stored.get("access_token")
            if token and token != failed and float(stored.get("expires_at", 0)) > time.time():
                self._access, self._refresh = token, stored.get("refresh_token", self._refresh)
                return  # another connector on this account renewed it already
            candidates: list[str] = []
            for tok in (stored.get("refresh_token"), self._refresh, self._initial_refresh()):
                if tok and tok not in candidates:
                    candidates.append(tok)
            for tok in candidates:
                form = {
                    "grant_type": "refresh_token",
                    "refresh_token": tok,
                    "client_id": self._creds["client_id"],
                    "client_secret": self._creds["client_secret"],
                }
                if self.cfg.redirect_uri:
                    form["redirect_uri"] = self.cfg.redirect_uri
                resp = self._send("POST", self.base_url + "/oauth/token", data=form)
                if resp.status_code in (400, 401):
                    continue
                self._raise_transient(resp, "renewing the access token")
                try:
                    body = resp.json()
                    self._access = str(body["access_token"])
                    self._refresh = str(body.get("refresh_token") or tok)
                    expires = time.time() + float(body.get("expires_in", 7200))
                except (ValueError, KeyError, TypeError) as exc:
                    raise ConnectorError(
                        f"Outreach at {self.base_url} answered the token request with an "
                        "unexpected body; will retry."
                    ) from exc
                self._save_state(
                    {
                        "refresh_token": self._refresh,
                        "access_token": self._access,
                        "expires_at": expires,
                    }
                )
                log.info("Renewed the Outreach access token for %s", self.base_url)
                return
            raise ConnectorConfigError(
                f"Outreach at {self.base_url} refused the client credentials or refresh token; "
                "authorize recsync again and set a new refresh_token."
            )

    # ------------------------------------------------------------------ HTTP

    def _send(self, method: str, url: str, **kw: Any) -> requests.Response:
        if self._session is None:
            raise ConnectorError(f"The outreach connector for {self.base_url} is not open.")
        if self.spend is not None:  # every request (token, reads, writes) from the budget
            self.spend(method == "GET")
        try:
            resp = self._session.request(method, url, timeout=self.cfg.timeout, **kw)
        except requests.RequestException as exc:
            raise ConnectorError(
                f"Cannot reach Outreach at {self.base_url} ({type(exc).__name__}); will retry."
            ) from exc
        self._note_budget(resp)
        return resp

    def _note_budget(self, resp: requests.Response) -> None:
        remaining = resp.headers.get("X-RateLimit-Remaining")
        if remaining is None:
            return
        reset = resp.headers.get("X-RateLimit-Reset")
        with contextlib.suppress(ValueError):
            self._budget = (int(remaining), float(reset) if reset else None)

    def _retry_after(self, resp: requests.Response) -> float | None:
        value = resp.headers.get("Retry-After")
        if value:
            try:
                return max(0.0, float(value))
            except ValueError:
                with contextlib.suppress(TypeError, ValueError):
                    return max(
                        0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time()
                    )
        reset = resp.headers.get("X-RateLimit-Reset")
        with contextlib.suppress(TypeError, ValueError):
            return max(0.0, float(reset or "") - time.time())
        return None

    def _raise_transient(self, resp: requests.Response, doing: str) -> None:
        if resp.status_code == 429:
            wait = self._retry_after(resp)
            raise RateLimited(
                f"Outreach at {self.base_url} is rate limiting us while {doing}"
                + (f"; retry in {wait:.0f}s." if wait is not None else "."),
                wait,
            )
        if resp.status_code >= 500 or resp.status_code == 408:
            raise ConnectorError(
                f"Outreach at {self.base_url} failed with HTTP {resp.status_code} while "
                f"{doing}; will retry."
            )

    def _request(self, method: str, path: str, **kw: Any) -> requests.Response:
        """An API call with the access token (renewed once on 401); 429 and 5xx raise."""
        url = path if path.startswith("http") else self.base_url + path
        if "json" in kw:
            kw["data"] = json.dumps(kw.pop("json"))
            kw["headers"] = {"Content-Type": JSONAPI}
        if not self._access:
            self._renew("")
        for attempt in range(2):
            token = self._access
            resp = self._send(
                method,
                url,
                headers={**kw.get("headers", {}), "Authorization": f"Bearer {token}"},
                **{k: v for k, v in kw.items() if k != "headers"},
            )
            if resp.status_code == 401 and attempt == 0:
                self._renew(token)
                continue
            break
        if resp.status_code == 401:
            raise ConnectorConfigError(
                f"Outreach at {self.base_url} refuses our freshly renewed access token; check "
                "the OAuth app's scopes."
            )
        self._raise_transient(resp, f"calling {method} {path.split('?')[0]}")
        return resp

    def _json(self, resp: requests.Response, doing: str) -> Any:
        if resp.status_code >= 400:
            raise ConnectorError(
                f"Outreach at {self.base_url} answered HTTP {resp.status_code} while {doing}: "
                f"{_error_detail(resp)}."
            )
        try:
            return resp.json()
        except ValueError as exc:
            raise ConnectorError(
                f"Outreach at {self.base_url} sent a body that is not JSON while {doing}."
            ) from exc

    # ------------------------------------------------------------------ reading

    @staticmethod
    def relist_cursor(cursor: str | None) -> str:
        """A cursor that makes the next ``read_changes`` start a full listing."""
        state: dict[str, Any] = {}
        with contextlib.suppress(ValueError, TypeError):
            loaded = json.loads(cursor or "")
            if isinstance(loaded, dict):
                state = {k: v for k, v in loaded.items() if k not in ("next", "listing")}
        state["relist"] = True
        return json.dumps(state)

    def read_changes(self, cursor: str | None, limit: int) -> ChangePage:
        state: dict[str, Any] = {}
        if cursor:
            with contextlib.suppress(ValueError):
                loaded = json.loads(cursor)
                state = loaded if isinstance(loaded, dict) else {}
        size = max(1, min(limit, self.cfg.page_size, 1000))
        now = time.time()
        listing = bool(state.get("listing"))
        start = False
        url = state.get("next")
        if url and not str(url).startswith(self.base_url + "/"):
            return self._rescan(state, limit)  # e.g. the embedded mock moved to a new port
        if not url:
            due = now - float(state.get("last_reconcile") or 0) >= self.cfg.reconcile_interval
            if not state or state.get("relist") or due:
                listing = start = True
                state = {
                    "ts": None,
                    "seen": [],
                    "last_reconcile": state.get("last_reconcile"),
                    "started": now,
                }
            since = quote(str(state.get("ts") or "neginf"), safe="")
            url = (
                f"{self.base_url}/api/v2/prospects?sort=updatedAt&page%5Bsize%5D={size}"
                f"&filter%5BupdatedAt%5D={since}..inf"
            )
        changes: list[Change] = []
        while True:
            resp = self._request("GET", url)
            if resp.status_code in (400, 404, 410) and url == state.get("next"):
                return self._rescan(state, limit)  # the page cursor expired
            body = self._json(resp, "reading prospects")
            nxt = (body.get("links") or {}).get("next")
            data = body.get("data") or []
            self._page(data, state, changes)
            if changes or not nxt:
                break
            url = nxt  # a page of records we reported already: go on
        out = {k: v for k, v in state.items() if k != "relist"}
        out["next"] = nxt
        out["listing"] = listing and bool(nxt)
        if listing and not nxt:
            out["last_reconcile"] = out.pop("started", now)
        return ChangePage(
            changes,
            json.dumps(out),
            more=bool(nxt),
            listing=listing,
            listing_start=start,
            listing_done=listing and not nxt,
        )

    def list_records(self, position: str | None, limit: int) -> tuple[list[Change], str | None]:
        """Every prospect by id, following ``links.next`` (the position is that link).
        Prospects without an externalId are left out: the next poll gives them one."""
        size = max(1, min(limit, self.cfg.page_size, 1000))
        url = position or f"{self.base_url}/api/v2/prospects?sort=id&page%5Bsize%5D={size}"
        if not url.startswith(self.base_url + "/"):
            raise ConnectorError(f"The listing of Outreach at {self.base_url} for verify was "
                                 "interrupted; run verify again.")
        body = self._json(self._request("GET", url), "listing prospects")
        changes: list[Change] = []
        for res in body.get("data") or []:
            rec = flatten(res)
            if rec["externalId"]:
                changes.append(Change(str(rec["externalId"]), "upsert", rec,
                                      parse_time(rec.get("updatedAt")) or time.time()))
        nxt = (body.get("links") or {}).get("next")
        return changes, str(nxt) if nxt else None

    def _rescan(self, state: dict[str, Any], limit: int) -> ChangePage:
        """Start the interrupted scan again (a listing from the start, a poll from ts)."""
        log.info("Outreach page cursor for %s is no longer usable; scanning again", self.base_url)
        state = {k: v for k, v in state.items() if k not in ("next", "listing")}
        if state.pop("started", None) is not None:
            state["relist"] = True
        return self.read_changes(json.dumps(state), limit)

    def _page(
        self, data: list[dict[str, Any]], state: dict[str, Any], changes: list[Change]
    ) -> None:
        """Add the page's unseen prospects to ``changes``; move ``state`` past them."""
        for res in data:
            attrs = res.get("attributes") or {}
            pid, ts = int(res["id"]), attrs.get("updatedAt")
            if ts == state.get("ts") and pid in state.setdefault("seen", []):
                continue
            if ts != state.get("ts"):
                state["ts"], state["seen"] = ts, []
            state["seen"].append(pid)
            rec: Record | None = flatten(res)
            if rec is not None and not rec["externalId"]:
                rec = self._assign_key(pid)
            if rec is None:
                continue
            key = str(rec["externalId"])
            self._ids.setdefault(key, pid)
            changes.append(Change(key, "upsert", rec, parse_time(rec["updatedAt"]) or time.time()))

    def _assign_key(self, pid: int) -> Record | None:
        body = {"data": {"type": "prospect", "id": pid, "attributes": {"externalId": f"or-{pid}"}}}
        resp = self._request("PATCH", f"/api/v2/prospects/{pid}", json=body)
        if resp.status_code in (404, 422):
            log.warning(
                "Could not give Outreach prospect %s an externalId: %s", pid, _error_detail(resp)
            )
            return None
        rec = flatten(self._json(resp, "assigning an externalId")["data"])
        log.info("Gave Outreach prospect %s the externalId %s", pid, rec["externalId"])
        return rec

    def fetch(self, keys: list[str]) -> dict[str, Record]:
        out: dict[str, Record] = {}
        known = [k for k in keys if k in self._ids]
        for i in range(0, len(known), _ID_CHUNK):
            ids = ",".join(str(self._ids[k]) for k in known[i : i + _ID_CHUNK])
            for rec in self._query({"filter[id]": ids, "page[size]": _ID_CHUNK}):
                if rec["externalId"] in keys:
                    out[str(rec["externalId"])] = rec
        for key in keys:
            if key not in out:
                found = self._lookup(key)
                if found is not None:
                    out[key] = found
        return out

    def _query(self, params: dict[str, Any]) -> list[Record]:
        body = self._json(
            self._request("GET", "/api/v2/prospects", params=params), "looking up prospects"
        )
        return [flatten(res) for res in body.get("data") or []]

    def _lookup(self, key: str) -> Record | None:
        """The prospect whose externalId is ``key`` (the oldest, if several), or None."""
        found = self._query({"filter[externalId]": key, "sort": "id", "page[size]": 2})
        if len(found) > 1:
            log.warning(
                "Several Outreach prospects have externalId %r; using %s", key, found[0]["id"]
            )
        if not found:
            self._ids.pop(key, None)
            return None
        self._ids[key] = int(found[0]["id"])
        return found[0]

    def remote_budget(self) -> tuple[int, float | None] | None:
        if self._budget is None or self._budget[0] >= self.cfg.throttle_below:
            return None
        return self._budget

    def record_modified(self, record: Record) -> float | None:
        return parse_time(record.get("updatedAt"))

    # ------------------------------------------------------------------ writing

    def write(self, ops: list[WriteOp]) -> list[WriteResult]:
        results: list[WriteResult] = []
        for op in ops:
            try:
                results.append(self._write_one(op))
            except ConnectorError as exc:
                if not results:
                    raise  # nothing written yet: the whole batch is retried (or deferred)
                # The prospects written before the error are done: report them as such, or
                # their writes are not recorded and come back from the next poll as changes
                # made on Outreach (a false conflict). The rest is retried.
                results.extend(
                    WriteResult(o.key, str(exc), retryable=True) for o in ops[len(results) :]
                )
                break
        return results

    def _write_one(self, op: WriteOp) -> WriteResult:
        pid = self._ids.get(op.key)
        if pid is None:
            rec = self._lookup(op.key)
            pid = None if rec is None else int(rec["id"])
        if op.kind == "delete":
            if pid is not None:
                resp = self._request("DELETE", f"/api/v2/prospects/{pid}")
                if resp.status_code not in (200, 204, 404):
                    return self._rejected(op, resp)
            self._ids.pop(op.key, None)
            return WriteResult(op.key)
        attrs = attributes(op.fields or {}, op.key)
        if pid is not None:
            body = {"data": {"type": "prospect", "id": pid, "attributes": attrs}}
            resp = self._request("PATCH", f"/api/v2/prospects/{pid}", json=body)
            if resp.status_code != 404:
                return WriteResult(op.key) if resp.ok else self._rejected(op, resp)
            self._ids.pop(op.key, None)  # deleted on Outreach meanwhile: create it again
        body = {"data": {"type": "prospect", "attributes": attrs}}
        resp = self._request("POST", "/api/v2/prospects", json=body)
        if not resp.ok:
            return self._rejected(op, resp)
        with contextlib.suppress(ValueError, KeyError, TypeError):
            self._ids[op.key] = int(resp.json()["data"]["id"])
        return WriteResult(op.key)

    def rekey(self, pairs: list[tuple[str, str]]) -> list[WriteResult]:
        """Write the key the other side made into the externalId of the prospects held
        under a placeholder (``or-<id>``)."""
        out: list[WriteResult] = []
        for old, new in pairs:
            pid = self._ids.get(old)
            if pid is None:
                rec = self._lookup(old)
                pid = None if rec is None else int(rec["id"])
            if pid is not None:
                body = {"data": {"type": "prospect", "id": pid,
                                 "attributes": {"externalId": new}}}
                resp = self._request("PATCH", f"/api/v2/prospects/{pid}", json=body)
                if not resp.ok and resp.status_code != 404:
                    out.append(self._rejected(WriteOp(new, "upsert", None), resp))
                    continue
                self._ids.pop(old, None)
                if resp.ok:
                    self._ids[new] = pid
            out.append(WriteResult(new))
        return out

    def _rejected(self, op: WriteOp, resp: requests.Response) -> WriteResult:
        return WriteResult(
            op.key,
            f"Outreach rejected prospect {op.key!r} (HTTP "
            f"{resp.status_code}): {_error_detail(resp)}.",
            retryable=False,
        )


def _error_detail(resp: requests.Response) -> str:
    """The JSON:API error's detail and pointer (never the request, never credentials)."""
    try:
        err = resp.json()["errors"][0]
        detail = str(err.get("detail") or err.get("title") or err.get("id"))
        pointer = (err.get("source") or {}).get("pointer")
        return detail.rstrip(".") + (f" (at {pointer})" if pointer else "")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return resp.reason or f"HTTP {resp.status_code}"
