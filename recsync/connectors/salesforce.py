"""Salesforce connector: one sObject (Contact by default) through simple-salesforce.

Keys
----
The record key on the Salesforce side is an external id field (``key``, e.g.
``Record_Id__c``) holding the other system's key, so a retried create upserts instead of
duplicating. Records a CRM user created by hand have no value there: when polling finds
one, the connector gives it ``key = "sf-" + Id`` (one update per page of such records) and
emits it under that key.

Reading
-------
queryAll on ``SystemModstamp >= ts ORDER BY SystemModstamp, Id`` (deleted rows come back
with ``IsDeleted = true`` and become delete changes), following ``nextRecordsUrl``. SOQL
datetimes have whole seconds, so the boundary second is read again and the Ids already
emitted at it (with the same content) are skipped: the cursor is ``{"ts": T, "seen":
["<Id>:<crc of content>", ...]}``, so a second change within the same second is still
read. When more than ``_MAX_SEEN`` records share one second the cursor switches to keyset
form ``{"ts": T, "id": I}`` (``SystemModstamp > T OR (SystemModstamp = T AND Id > I)``); a record
with a lower Id changed later within that same second is then only seen at its next change.

The first full read (no cursor: a first sync or ``sync now --full``) of an sObject with
``bulk_read_threshold`` records or more (``SELECT COUNT()``) goes through one Bulk API 2.0
query job instead (see sf_bulkread.py); 0 turns that off.

Writing
-------
A backlog the queue leased as one bulk batch (over the pipeline's ``bulk_threshold``) goes
out as Bulk API 2.0 ingest jobs, found again by id after a crash (see sf_bulkwrite.py).
Otherwise: upserts by external id in sObject Collections of 200 (``PATCH
composite/sobjects/{Obj}/{key}``, allOrNone false; no read before writing), or one Bulk API
2.0 ingest job when a write call holds ``bulk_threshold`` upserts or more. Deletes look the
Ids up by external id (one SOQL ``IN`` query per 200) and then ``DELETE composite/sobjects``;
a record already gone counts as deleted. A write call sends up to ``parallel_requests``
collections at once (Salesforce allows 25 concurrent requests per org).

Credentials come from the config, from environment variables named by the ``*_env``
fields, or from ``$CREDENTIALS_DIRECTORY/<name>`` files (systemd credentials). They never
appear in repr, logs or error messages. ``mock = true`` talks to the embedded mock server
(or to the mock at ``instance_url`` when given, e.g. one started by ``recsync mock serve``);
a mock side with ``username`` and ``password`` logs in as a real one does (simple-salesforce's
SOAP login with the security token, or the OAuth password grant with client id and secret).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

import msgspec
import requests
from requests.adapters import HTTPAdapter
from simple_salesforce.api import Salesforce
from simple_salesforce.exceptions import (
    SalesforceError,
    SalesforceExpiredSession,
    SalesforceGeneralError,
    SalesforceOperationError,
    SalesforceRefusedRequest,
)

from recsync.connectors.base import BulkWrite, Connector, ConnectorConfig
from recsync.connectors.credentials import resolve_secret
from recsync.connectors.sf_bulkread import BulkRead
from recsync.connectors.sf_bulkwrite import BulkWriter, key_chunks
from recsync.errors import ConnectorConfigError, ConnectorError, RateLimited
from recsync.messages import Change, ChangePage, Record, WriteOp, WriteResult, key_text
from recsync.state.bulkjobs import BulkJournal

log = logging.getLogger(__name__)
T = TypeVar("T")
_CHUNK = 200
_MAX_SEEN = 500
_USAGE_FRESH = 60.0  # seconds the last Sforce-Limit-Info is trusted for daily_reserve
# The username names the org user (it shows in system ids, errors and logs): not a secret.
_SECRETS = ("password", "security_token", "client_id", "client_secret")
_GONE = ("ENTITY_IS_DELETED", "INVALID_CROSS_REFERENCE_KEY", "NOT_FOUND")
_RETRYABLE = ("UNABLE_TO_LOCK_ROW", "SERVER_UNAVAILABLE", "REQUEST_RUNNING_TOO_LONG")
_ALWAYS = ("Id", "IsDeleted", "SystemModstamp")
# a mock side with a username logs in through simple-salesforce's own login calls, sent
# to https://{_MOCK_DOMAIN}.salesforce.com, which the adapter sends to the mock instead
_MOCK_DOMAIN = "recsync-mock"
_MOCK_LOGIN = f"https://{_MOCK_DOMAIN}.salesforce.com"


class SalesforceConfig(ConnectorConfig, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One sObject of a Salesforce org; ``key`` is its external id field (``Record_Id__c``)."""

    sobject: str = "Contact"
    mock: bool = False
    instance_url: str = ""
    domain: str = "login"
    username: str = ""
    username_env: str = ""
    password: str = ""
    password_env: str = ""
    security_token: str = ""
    security_token_env: str = ""
    client_id: str = ""
    client_id_env: str = ""
    client_secret: str = ""
    client_secret_env: str = ""
    api_version: str = "59.0"
    page_size: int = 2000
    bulk_threshold: int = 10000
    bulk_read_threshold: int = 50000
    parallel_requests: int = 4
    timeout: float = 30.0
    daily_reserve: int = 1000
    fields: list[str] = msgspec.field(default_factory=list)

    def __repr__(self) -> str:
        shown = []
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if name in _SECRETS and value:
                value = "***"
            shown.append(f"{name}={value!r}")
        return f"SalesforceConfig({', '.join(shown)})"

    __str__ = __repr__

    def __rich_repr__(self) -> Any:
        for name in self.__struct_fields__:
            value = getattr(self, name)
            yield name, ("***" if name in _SECRETS and value else value)


class _Adapter(HTTPAdapter):
    """Default timeout; for a mock, ``https://host:port`` becomes ``http://host:port`` and
    simple-salesforce's login host (``https://{domain}.salesforce.com``) the mock's URL."""

    def __init__(
        self, timeout: float, plain_netloc: str | None, connections: int, login_to: str = "",
        spend: Callable[[bool], None] | None = None,
    ) -> None:
        super().__init__(pool_maxsize=max(4, connections))
        self.timeout = timeout
        self.prefix = f"https://{plain_netloc}" if plain_netloc else None
        self.login_to = login_to
        self.spend = spend  # every request (login, describe, query, write) from the budget

    def send(self, request: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if self.spend is not None:
            self.spend(request.method in ("GET", "HEAD"))
        if self.login_to and request.url and request.url.startswith(_MOCK_LOGIN):
            request.url = self.login_to + request.url[len(_MOCK_LOGIN) :]
        elif self.prefix and request.url and request.url.startswith(self.prefix):
            request.url = "http://" + request.url[len("https://") :]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        return super().send(request, **kwargs)


def _sf_epoch(text: Any) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    t = text.replace("Z", "+00:00")
    if re.search(r"[+-]\d{4}$", t):
        t = t[:-2] + ":" + t[-2:]
    try:
        return datetime.fromisoformat(t).timestamp()
    except ValueError:
        return None


def _mark(rec: dict[str, Any]) -> str:
    """Id plus a checksum of the content: a second change within the same second differs."""
    body = json.dumps(
        {k: v for k, v in rec.items() if k != "attributes"}, sort_keys=True, default=str
    )
    return f"{rec['Id']}:{zlib.crc32(body.encode()):08x}"


def _soql_str(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _soql_dt(ts: str) -> str:
    """SystemModstamp text as a SOQL datetime literal (whole seconds, UTC)."""
    return ts[:19] + "Z"


def _restful(path: str, method: str, body: Any, sf: Any) -> Any:
    return sf.restful(path, method=method, json=body)


def _failed_records(obj: str, job_id: str, sf: Any) -> str:
    return str(getattr(sf.bulk2, obj).get_failed_records(job_id))


class SalesforceConnector(Connector):
    """Reads and writes one sObject of a Salesforce org (or of the mock)."""

    name: ClassVar[str] = "salesforce"
    Config: ClassVar[type[ConnectorConfig]] = SalesforceConfig
    bulk_writes: ClassVar[bool] = True
    counts_requests: ClassVar[bool] = True

    def __init__(self, config: Any, base_dir: Path) -> None:
        super().__init__(config, base_dir)
        config = self.config
        self.cfg: SalesforceConfig = config
        self.obj = config.sobject
        self.key = config.key
        self._sf: Any = None
        self._session: requests.Session | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._mock_url = ""
        self._fields: list[str] = []
        self._types: dict[str, str] = {}
        self._bulk_read = BulkRead(self)
        self._bulk_write = BulkWriter(self)
        # the keys the last fetch asked for and the Ids it found under them
        self._fetched: tuple[set[str], dict[str, list[str]]] = (set(), {})
        self._writable: set[str] | None = None
        self._readonly: set[str] = set()
        self._usage: tuple[int, int] | None = None
        self._usage_at = 0.0
        # per thread: parallel collections each read their own response's Retry-After
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"SalesforceConnector({self.cfg!r})"

    @property
    def system_id(self) -> str:
        if self.cfg.mock:
            return "salesforce:" + (self._mock_url or self.cfg.instance_url or "mock")
        host = urlsplit(self.cfg.instance_url).netloc or f"{self.cfg.domain}.salesforce.com"
        return f"salesforce:{host}/{self._secret('username')}"

    # ------------------------------------------------------------------ credentials

    def _secret(self, name: str) -> str:
        env = str(getattr(self.cfg, name + "_env"))
        return resolve_secret(str(getattr(self.cfg, name)), env, env or name)

    # ------------------------------------------------------------------ open / close

    def unknown_fields(self, names: list[str], *, read: bool = True) -> list[str]:
        known = {n.lower() for n in self._types}  # field names are case-insensitive
        return [n for n in names if n.lower() not in known] if known else []

    def open(self) -> None:
        if self.cfg.mock:
            if self.cfg.instance_url:
                self._mock_url = self.cfg.instance_url.rstrip("/")
            else:
                from recsync.mock import embedded

                self._mock_url = embedded("salesforce").url
        self._connect()
        try:
            desc = self._call(lambda sf: sf.restful(f"sobjects/{self.obj}/describe"))
        except ConnectorError as exc:
            if "NOT_FOUND" in str(exc) or "INVALID_TYPE" in str(exc):
                raise ConnectorConfigError(
                    f"Salesforce has no sObject {self.obj!r}; check 'sobject' of the "
                    "salesforce connector."
                ) from exc
            raise
        fields = {f["name"]: f for f in desc["fields"]}
        spec = fields.get(self.key)
        if spec is None or not (spec.get("externalId") or spec.get("idLookup")):
            what = "no field" if spec is None else "no external id field"
            raise ConnectorConfigError(
                f"Salesforce sObject {self.obj} has {what} {self.key!r}; 'key' of the "
                "salesforce connector must name an external id field (e.g. Record_Id__c)."
            )
        self._writable = {
            n for n, f in fields.items() if f.get("createable") or f.get("updateable")
        }
        self._readonly = {n for n in fields if n not in self._writable}
        self._types = {n: str(f.get("type") or "string") for n, f in fields.items()}
        wanted = list(self.cfg.fields) or list(fields)
        for name in (*_ALWAYS, self.key):
            if name not in wanted:
                wanted.append(name)
        unknown = [f for f in wanted if f not in fields]
        if unknown:
            raise ConnectorConfigError(
                f"Salesforce sObject {self.obj} has no field(s) {', '.join(unknown)}; check "
                "'fields' of the salesforce connector."
            )
        self._fields = wanted

    def _connect(self) -> None:
        if self._session is None:
            s = requests.Session()
            netloc = urlsplit(self._mock_url).netloc if self._mock_url else None
            n = self.cfg.parallel_requests
            s.mount("https://", _Adapter(self.cfg.timeout, netloc, n, self._mock_url,
                                         self._spend))
            s.mount("http://", _Adapter(self.cfg.timeout, None, n, spend=self._spend))
            s.hooks["response"].append(self._on_response)
            self._session = s
        s = self._session
        user, pwd = self._secret("username"), self._secret("password")
        try:
            if self._mock_url and not (user and pwd):
                resp = s.post(
                    self._mock_url + "/services/oauth2/token",
                    data={
                        "grant_type": "client_credentials",
                        "client_id": "recsync",
                        "client_secret": "recsync-mock",
                    },
                )
                if resp.status_code != 200:
                    raise ConnectorConfigError(
                        f"The mock Salesforce at {self._mock_url} refused a token "
                        f"(HTTP {resp.status_code})."
                    )
                tok = resp.json()
                self._sf = Salesforce(
                    instance_url=tok["instance_url"],
                    session_id=tok["access_token"],
                    session=s,
                    version=self.cfg.api_version,
                    object_pairs_hook=None,  # plain dicts: json's fast path
                )
                return
            kwargs: dict[str, Any] = {
                "session": s,
                "object_pairs_hook": None,
                "version": self.cfg.api_version,
                "domain": _MOCK_DOMAIN if self._mock_url else self.cfg.domain,
            }
            cid, csec = self._secret("client_id"), self._secret("client_secret")
            if user and pwd:
                kwargs.update(username=user, password=pwd)
                tok = self._secret("security_token")
                if cid and csec:
                    kwargs.update(consumer_key=cid, consumer_secret=csec)
                elif tok or not cid:
                    kwargs.update(security_token=tok)
            elif cid and csec:
                kwargs.update(consumer_key=cid, consumer_secret=csec)
            else:
                raise ConnectorConfigError(
                    "The salesforce connector needs username and password (and "
                    "security_token), or client_id and client_secret; none are set."
                )
            if self.cfg.instance_url and not self._mock_url:
                kwargs["instance_url"] = self.cfg.instance_url
            self._sf = Salesforce(**kwargs)
        except SalesforceError as exc:
            raise ConnectorConfigError(
                f"Salesforce login to {self.system_id} failed ({type(exc).__name__}); check "
                "the credentials of the salesforce connector."
            ) from None
        except requests.RequestException as exc:
            raise ConnectorError(
                f"Cannot reach Salesforce for {self.system_id}: {type(exc).__name__}."
            ) from None

    def _spend(self, read: bool) -> None:
        if self.spend is not None:
            self.spend(read)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._session is not None:
            self._session.close()
            self._session = None
        self._sf = None

    def _on_response(self, resp: requests.Response, *args: Any, **kwargs: Any) -> None:
        info = resp.headers.get("Sforce-Limit-Info")
        if info:
            m = re.search(r"api-usage=(\d+)/(\d+)", info)
            if m:
                self._usage = (int(m.group(1)), int(m.group(2)))
                self._usage_at = time.monotonic()
        ra = resp.headers.get("Retry-After")
        try:
            self._local.retry_after = float(ra) if ra else None
        except ValueError:
            self._local.retry_after = None

    # ------------------------------------------------------------------ calls

    @property
    def sf(self) -> Any:
        if self._sf is None:
            raise ConnectorError(f"The connector for {self.system_id} is not open.")
        return self._sf

    def remote_budget(self) -> tuple[int, float | None] | None:
        if self._usage is None:
            return None
        used, total = self._usage
        return max(0, total - used), None

    def _call(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(sf)``, renewing an expired token once; errors mapped to ours."""
        for attempt in (0, 1):
            if self._usage is not None and time.monotonic() - self._usage_at < _USAGE_FRESH:
                used, total = self._usage
                if total - used <= self.cfg.daily_reserve:
                    raise RateLimited(
                        f"Salesforce {self.system_id}: only {total - used} of {total} daily "
                        f"API requests left (daily_reserve {self.cfg.daily_reserve}); "
                        "waiting for the rolling 24 h allocation to free up.",
                        _USAGE_FRESH,
                    )
            try:
                return fn(self.sf)
            except SalesforceExpiredSession:
                if attempt:
                    raise ConnectorError(
                        f"Salesforce {self.system_id} refused a fresh session token."
                    ) from None
                log.info("Salesforce session of %s expired; renewing it", self.system_id)
                self._connect()
            except SalesforceRefusedRequest as exc:
                if "REQUEST_LIMIT_EXCEEDED" in str(exc.content):
                    raise RateLimited(
                        f"Salesforce {self.system_id}: daily API request limit exceeded "
                        "(REQUEST_LIMIT_EXCEEDED).",
                        None,
                    ) from None
                raise ConnectorError(
                    f"Salesforce {self.system_id} refused the request: {self._content(exc)}."
                ) from None
            except SalesforceGeneralError as exc:
                if exc.status == 429:
                    last = getattr(self._local, "retry_after", None)
                    ra = last if last is not None else 1.0
                    raise RateLimited(
                        f"Salesforce {self.system_id} asked to slow down (HTTP 429).", ra
                    ) from None
                raise ConnectorError(
                    f"Salesforce {self.system_id} failed with HTTP {exc.status}: "
                    f"{self._content(exc)}."
                ) from None
            except SalesforceError as exc:
                raise ConnectorError(
                    f"Salesforce {self.system_id} error ({type(exc).__name__}): "
                    f"{self._content(exc)}."
                ) from None
            except SalesforceOperationError as exc:
                raise ConnectorError(
                    f"Salesforce {self.system_id} bulk job failed: {exc}."
                ) from None
            except requests.RequestException as exc:
                raise ConnectorError(
                    f"Cannot reach Salesforce {self.system_id}: {type(exc).__name__}: {exc}."
                ) from None
        raise AssertionError("unreachable")

    @staticmethod
    def _content(exc: Any) -> str:
        content = getattr(exc, "content", None)
        if isinstance(content, list) and content and isinstance(content[0], dict):
            text = "; ".join(f"{e.get('errorCode')}: {e.get('message')}" for e in content)
        else:
            text = str(content)[:300]
        return text.rstrip(".")  # the messages end in the sentence's own full stop

    # ------------------------------------------------------------------ reading

    def record_modified(self, record: Record) -> float | None:
        return _sf_epoch(record.get("SystemModstamp"))

    def _parse_cursor(self, cursor: str | None) -> dict[str, Any]:
        if not cursor:
            return {}
        try:
            state = json.loads(cursor)
        except ValueError:
            state = None
        if isinstance(state, dict) and isinstance(state.get("bulk"), dict):
            return state
        if not isinstance(state, dict) or not isinstance(state.get("ts"), str):
            log.warning(
                "Ignoring unusable cursor %r for %s; reading from the beginning",
                cursor,
                self.system_id,
            )
            return {}
        return state

    def read_progress(self) -> dict[str, Any] | None:
        """How the bulk full read in progress is going (job, phase, read, total), or None."""
        return self._bulk_read.progress

    def read_changes(self, cursor: str | None, limit: int) -> ChangePage:
        state = self._parse_cursor(cursor)
        limit = max(1, limit)
        if "bulk" in state and cursor is not None:
            return self._bulk_read.step(cursor, state["bulk"], limit, self._types,
                                        self._bulk_changes)
        if not state and self.cfg.bulk_read_threshold > 0:
            total = int(self._call(
                lambda sf: sf.query(f"SELECT COUNT() FROM {self.obj}")
            )["totalSize"])
            if total >= self.cfg.bulk_read_threshold:
                return self._bulk_read.start(self._fields, total)
        ts: str | None = state.get("ts")
        seen: set[str] = set(state.get("seen") or [])
        after_id: str | None = state.get("id")
        where = ""
        if ts is not None and after_id is not None:
            lit = _soql_dt(ts)
            where = (
                f" WHERE SystemModstamp > {lit} OR (SystemModstamp = {lit} AND Id > "
                f"{_soql_str(after_id)})"
            )
        elif ts is not None:
            where = f" WHERE SystemModstamp >= {_soql_dt(ts)}"
        soql = (
            f"SELECT {', '.join(self._fields)} FROM {self.obj}{where} "
            f"ORDER BY SystemModstamp, Id LIMIT {limit + len(seen) + 1}"
        )
        result = self._call(lambda sf: sf.query(soql, include_deleted=True))
        rows: list[dict[str, Any]] = []
        more = False
        while True:
            for rec in result["records"]:
                stamp = rec.get("SystemModstamp") or ""
                if ts is not None and stamp[:19] == ts[:19] and _mark(rec) in seen:
                    continue
                if len(rows) >= limit:
                    more = True
                    break
                rows.append(rec)
            if more or result.get("done", True):
                break
            url = result["nextRecordsUrl"]
            result = self._more(url)
        self._give_keys(rows)
        changes: list[Change] = []
        for rec in rows:
            rec.pop("attributes", None)
            stamp = rec.get("SystemModstamp") or ""
            if ts is not None and stamp[:19] == ts[:19]:
                seen.add(_mark(rec))
            else:
                ts, seen, after_id = stamp, {_mark(rec)}, None
            kval = rec.get(self.key)
            if kval is None:
                continue  # deleted before it ever got a key: nobody knows it
            when = _sf_epoch(stamp) or 0.0
            if rec.get("IsDeleted"):
                changes.append(Change(key_text(kval), "delete", None, when))
            else:
                changes.append(Change(key_text(kval), "upsert", rec, when))
        new_state: dict[str, Any] = {}
        if ts is not None:
            new_state["ts"] = ts
            if after_id is not None or len(seen) > _MAX_SEEN:
                new_state["id"] = rows[-1]["Id"] if rows else after_id
            else:
                new_state["seen"] = sorted(seen)
        return ChangePage(
            changes,
            json.dumps(new_state, separators=(",", ":")) if new_state else cursor,
            more=more,
        )

    def list_records(self, position: str | None, limit: int) -> tuple[list[Change], str | None]:
        """The sObject's live records by Id (keyset pages of ``query``, not queryAll).
        Records without a key yet are left out: the next poll gives them one."""
        limit = max(1, min(limit, 2000))
        where = f" WHERE Id > {_soql_str(position)}" if position else ""
        soql = (f"SELECT {', '.join(self._fields)} FROM {self.obj}{where} "
                f"ORDER BY Id LIMIT {limit}")
        result = self._call(lambda sf: sf.query(soql))
        rows = list(result["records"])
        while not result.get("done", True):
            result = self._more(result["nextRecordsUrl"])
            rows.extend(result["records"])
        changes: list[Change] = []
        for rec in rows:
            rec.pop("attributes", None)
            kval = rec.get(self.key)
            if kval is None or rec.get("IsDeleted"):
                continue
            when = _sf_epoch(rec.get("SystemModstamp")) or 0.0
            changes.append(Change(key_text(kval), "upsert", rec, when))
        return changes, (rows[-1]["Id"] if len(rows) >= limit else None)

    def _bulk_changes(self, rows: list[dict[str, Any]]) -> list[Change]:
        """A page of a bulk full read (records that exist) as upsert changes."""
        self._give_keys(rows)
        changes = []
        for rec in rows:
            kval = rec.get(self.key)
            if kval is not None and not rec.get("IsDeleted"):
                when = _sf_epoch(rec.get("SystemModstamp")) or 0.0
                changes.append(Change(key_text(kval), "upsert", rec, when))
        return changes

    def _give_keys(self, rows: list[dict[str, Any]]) -> None:
        """Records a user created by hand get ``key = "sf-" + Id`` (one update per 200)."""
        todo = [r for r in rows if r.get(self.key) is None and not r.get("IsDeleted")]
        for i in range(0, len(todo), _CHUNK):
            chunk = todo[i : i + _CHUNK]
            body = {
                "allOrNone": False,
                "records": [
                    {"attributes": {"type": self.obj}, "Id": r["Id"], self.key: "sf-" + r["Id"]}
                    for r in chunk
                ],
            }
            res = self._call(partial(_restful, "composite/sobjects", "PATCH", body))
            for rec, out in zip(chunk, res or [], strict=False):
                if out.get("success"):
                    rec[self.key] = "sf-" + rec["Id"]
                else:
                    log.warning(
                        "Could not give Salesforce %s %s a %s: %s",
                        self.obj,
                        rec["Id"],
                        self.key,
                        out.get("errors"),
                    )

    def fetch(self, keys: list[str]) -> dict[str, Record]:
        out: dict[str, Record] = {}
        wanted = {key_text(k) for k in keys}
        ids: dict[str, list[str]] = {}
        for chunk in key_chunks(sorted(wanted)):
            for rec in self._lookup(chunk, self._fields):
                rec.pop("attributes", None)
                k = key_text(rec.get(self.key))
                if k in wanted:
                    out[k] = rec
                    ids.setdefault(k, []).append(str(rec["Id"]))
        self._fetched = (wanted, ids)
        return out

    def fetched_ids(self, keys: list[str]) -> dict[str, list[str]] | None:
        """The Ids under ``keys`` when the last ``fetch`` asked for all of them (the
        check of the target before a write), else None."""
        wanted, ids = self._fetched
        if not wanted.issuperset(keys):
            return None
        return {k: ids[k] for k in keys if k in ids}

    def rekey(self, pairs: list[tuple[str, str]]) -> list[WriteResult]:
        """Write the key the other side made into the external id of the records held
        under a placeholder key (``sf-<Id>``): found by it, then updated by Id."""
        results = {new: WriteResult(new) for _old, new in pairs}
        found: dict[str, str] = {}
        for chunk in self._chunks([old for old, _new in pairs]):
            for rec in self._lookup(chunk, ["Id", self.key]):
                found[key_text(rec[self.key])] = rec["Id"]
        todo = [(new, found[old]) for old, new in pairs if old in found]
        for part in self._chunks(todo):
            body = {
                "allOrNone": False,
                "records": [{"attributes": {"type": self.obj}, "Id": rid, self.key: new}
                            for new, rid in part],
            }
            res = self._call(partial(_restful, "composite/sobjects", "PATCH", body))
            for (new, _rid), out in zip(part, res or [], strict=False):
                if not out.get("success"):
                    results[new] = self._rejected(new, out.get("errors") or [])
        return [results[new] for _old, new in pairs]

    def _lookup(self, keys: list[str], fields: list[str]) -> list[dict[str, Any]]:
        soql = (
            f"SELECT {', '.join(fields)} FROM {self.obj} WHERE {self.key} IN "
            f"({', '.join(_soql_str(k) for k in keys)})"
        )
        result = self._call(lambda sf: sf.query(soql))
        rows = list(result["records"])
        while not result.get("done", True):
            url = result["nextRecordsUrl"]
            result = self._more(url)
            rows.extend(result["records"])
        return rows

    def _more(self, url: str) -> Any:
        return self._call(lambda sf: sf.query_more(url, identifier_is_url=True))

    @staticmethod
    def _chunks(items: list[T], size: int = _CHUNK) -> list[list[T]]:
        return [items[i : i + size] for i in range(0, len(items), size)]

    # ------------------------------------------------------------------ writing

    def write(self, ops: list[WriteOp]) -> list[WriteResult]:
        self._fetched = (set(), {})
        results: dict[int, WriteResult] = {}
        last: dict[str, int] = {}  # key -> index of its last upsert (earlier ones share it)
        upserts: list[tuple[int, WriteOp]] = []
        deletes: list[tuple[int, WriteOp]] = []
        for i, op in enumerate(ops):
            (deletes if op.kind == "delete" else upserts).append((i, op))
        for i, op in upserts:
            last[op.key] = i
        unique = [(i, op) for i, op in upserts if last[op.key] == i]
        try:
            if len(unique) >= self.cfg.bulk_threshold:
                self._bulk_upsert(unique, results)
            else:
                self._each_chunk(self._upsert_chunk, self._chunks(unique), results)
            self._each_chunk(self._delete_chunk, self._chunks(deletes), results)
        except ConnectorError as exc:
            if not results:
                raise
            # Chunks already written must be reported as written, or their records come
            # back from the next poll looking like changes made in Salesforce. When
            # Salesforce asked to slow down, the others wait without spending an attempt.
            wait = (exc.retry_after or 1.0) if isinstance(exc, RateLimited) else None
            for i, op in [*unique, *deletes]:
                results.setdefault(i, WriteResult(op.key, str(exc), True, wait))
        out = []
        for i, op in enumerate(ops):
            r = results.get(i) if op.kind == "delete" else results.get(last[op.key])
            out.append(WriteResult(op.key, r.error, r.retryable, r.retry_after) if r
                       else WriteResult(op.key))
        return out

    def write_bulk(self, ops: list[WriteOp], journal: BulkJournal, scope: str) -> BulkWrite:
        """A backlog through Bulk API 2.0 ingest jobs (see sf_bulkwrite.py)."""
        try:
            return self._bulk_write.write(ops, journal, scope)
        finally:
            self._fetched = (set(), {})  # what a write may have changed

    def _each_chunk(
        self,
        send: Callable[[list[tuple[int, WriteOp]], dict[int, WriteResult]], None],
        chunks: list[list[tuple[int, WriteOp]]],
        results: dict[int, WriteResult],
    ) -> None:
        """``send`` every chunk, up to ``parallel_requests`` at once; the first error is
        raised once all have ended (the results of the others are kept)."""
        if len(chunks) <= 1 or self.cfg.parallel_requests <= 1:
            for chunk in chunks:
                send(chunk, results)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.cfg.parallel_requests,
                                            thread_name_prefix=f"salesforce-{self.obj}")
        futures = [self._pool.submit(send, chunk, results) for chunk in chunks]
        errors = [exc for f in futures if (exc := f.exception()) is not None]
        if errors:  # being asked to slow down matters most: the caller must wait
            raise min(errors, key=lambda e: not isinstance(e, RateLimited))

    def _record(self, op: WriteOp) -> dict[str, Any]:
        rec = {k: v for k, v in (op.fields or {}).items() if k not in self._readonly}
        rec[self.key] = op.key
        return rec

    def _rejected(self, key: str, errors: list[dict[str, Any]]) -> WriteResult:
        text = "; ".join(f"{e.get('statusCode')}: {e.get('message')}" for e in errors)
        retry = any(e.get("statusCode") in _RETRYABLE for e in errors)
        return WriteResult(key, f"Salesforce refused {self.obj} {key!r}: {text}.", retry)

    def _upsert_chunk(
        self, chunk: list[tuple[int, WriteOp]], results: dict[int, WriteResult]
    ) -> None:
        body = {
            "allOrNone": False,
            "records": [{"attributes": {"type": self.obj}, **self._record(op)} for _, op in chunk],
        }
        path = f"composite/sobjects/{self.obj}/{self.key}"
        data = msgspec.json.encode(body)  # several times faster than requests' json=
        res = self._call(lambda sf: sf.restful(path, method="PATCH", data=data)) or []
        for (i, op), out in zip(chunk, res, strict=False):
            results[i] = (
                WriteResult(op.key)
                if out.get("success")
                else self._rejected(op.key, out.get("errors") or [])
            )

    def _delete_chunk(
        self, chunk: list[tuple[int, WriteOp]], results: dict[int, WriteResult]
    ) -> None:
        found = self._lookup([op.key for _, op in chunk], ["Id", self.key])
        ids: dict[str, list[str]] = {}
        for rec in found:
            ids.setdefault(key_text(rec[self.key]), []).append(rec["Id"])
        all_ids = [rid for _, op in chunk for rid in ids.get(op.key, [])]
        if not all_ids:
            return
        res = (
            self._call(
                lambda sf: sf.restful(
                    "composite/sobjects",
                    method="DELETE",
                    params={"ids": ",".join(all_ids), "allOrNone": "false"},
                )
            )
            or []
        )
        failed = {out.get("id"): out for out in res if not out.get("success")}
        by_pos = dict(zip(all_ids, res, strict=False))
        for i, op in chunk:
            for rid in ids.get(op.key, []):
                out = by_pos.get(rid) or failed.get(rid)
                errs = (out or {}).get("errors") or []
                if (
                    out
                    and not out.get("success")
                    and not all(e.get("statusCode") in _GONE for e in errs)
                ):
                    results[i] = self._rejected(op.key, errs)

    def _bulk_upsert(
        self, items: list[tuple[int, WriteOp]], results: dict[int, WriteResult]
    ) -> None:
        records = []
        for _, op in items:
            rec = self._record(op)
            records.append(
                {
                    k: ("#N/A" if v is None else str(v).lower() if isinstance(v, bool) else v)
                    for k, v in rec.items()
                }
            )

        def run(sf: Any) -> list[dict[str, Any]]:
            h = getattr(sf.bulk2, self.obj)
            jobs: list[dict[str, Any]] = h.upsert(
                records=records, external_id_field=self.key, wait=0.05
            )
            return jobs

        jobs = self._call(run)
        failed: dict[str, str] = {}
        for job in jobs:
            if not int(job.get("numberRecordsFailed", 0)):
                continue
            text = self._call(partial(_failed_records, self.obj, job["job_id"]))
            for row in csv.DictReader(io.StringIO(text)):
                failed[key_text(row.get(self.key, ""))] = row.get("sf__Error", "")
        for i, op in items:
            err = failed.get(op.key)
            results[i] = (
                WriteResult(op.key)
                if err is None
                else WriteResult(op.key, f"Salesforce refused {self.obj} {op.key!r}: {err}.", False)
            )
