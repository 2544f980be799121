"""PostgreSQL connector: one table of a PostgreSQL database, keyed by one unique column.

Change tracking (``tracking``)
------------------------------
``"log"`` (default): triggers fill a change-log table (see :mod:`recsync.connectors.pgsql`
for every object added). PostgreSQL has many concurrent writers, so a bare ``seq > cursor``
would lose changes: a transaction that took seq 1 can commit after seq 2 was read. Each
log row carries its transaction id instead, and a read takes only rows of transactions
below the current snapshot's ``xmin`` (every transaction below it has ended, so no row
below it can still appear), in (xid, seq) order after the cursor's (xid, seq). A long
open transaction delays the changes of later ones until it ends; it never loses any.
Sequence gaps (rolled-back inserts) mean nothing. Rows our own write transactions logged
(``SET LOCAL recsync.origin``) are skipped; content hashes stay the backstop.

Every read first checks that the triggers and the log are still there (one catalog
query). A table rebuilt under recsync, or a dropped log, is noticed: the objects are
installed again (``install = true``) and the whole table is listed against the links, so
changes made while capture was off are found. The same when capture went missing while
recsync was not running: a log cursor carries the oids of the log and triggers it was read
under (``"cap"``), and capture installed again since (at open, or by a DBA's ``crms
setup``), or a table re-created, has other ones: the first read lists the table.

A partitioned table is refused in this mode: triggers on it do not fire for a write made
straight into a partition, which would never be logged.

``"column"``: no objects are added; rows whose ``updated_column`` is greater than the
cursor are read, and the whole table is listed every ``relist_interval`` seconds to find
deletes (and rows a late-committing transaction stamped with an older time). The cursor
never moves past PostgreSQL's clock: a row stamped 'infinity' or in the future is read by
listings, and between them once its time has come (it would hide every later change).

Cursors are compact JSON: ``{"xid": X, "seq": S, "cap": C}`` (log mode), ``{"ts": T, "key": K,
"listed_at": L}`` (column mode), with ``"list_after": K`` while a listing is in progress.

Writes: one transaction per batch, sent as one query: ``INSERT ... ON CONFLICT (key) DO
UPDATE`` from the records as JSON (``json_populate_recordset``), and one ``DELETE ...
WHERE key = ANY(...)`` (:mod:`recsync.connectors.pgwrite`). If PostgreSQL
refuses the batch for one record's values (constraint, type), the batch runs again with a
savepoint per record, so that record fails alone with PostgreSQL's message.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import psycopg
from msgspec import Meta
from psycopg import errors as pgerr
from psycopg import sql

from recsync.connectors import pgtypes
from recsync.connectors.base import ConnectorConfig
from recsync.connectors.credentials import resolve_secret
from recsync.connectors.pglisten import Listener
from recsync.connectors.pgsql import (
    CHECK_SQL,
    TableNames,
    resolve_key,
    setup_sql,
    split_table,
)
from recsync.connectors.sqltable import SqlTableConnector, dump
from recsync.dsn import normalize_url, scrub, without_userinfo
from recsync.errors import ConnectorConfigError, ConnectorError
from recsync.messages import Change, ChangePage, Record, Unreadable, WriteOp, WriteResult, key_text

log = logging.getLogger(__name__)

_SECRETS = ("dsn",)
# one record's values were refused (a constraint, a value of the wrong type): the batch
# runs again a record at a time; any other error (connection lost, admin shutdown,
# serialization failure, deadlock, ...) fails the batch as retryable
_RECORD_ERRORS = (pgerr.IntegrityError, pgerr.DataError)
# what a read naming the columns as inspected meets once the table has changed shape
_SHAPE_CHANGED = (pgerr.UndefinedColumn, pgerr.UndefinedFunction, pgerr.DatatypeMismatch,
                  pgerr.CannotCoerce)
_T = TypeVar("_T")
# a listing reads this many pages a query and hands them out one at a time (rows read
# after the listing began, as a page read then; our own writes drop the rest)
_READ_AHEAD = 5
_HELD_FIRST, _HELD_MAX = 0.02, 1.0  # seconds: wake-ups while changes are held back


class PostgresConfig(ConnectorConfig, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One table of a PostgreSQL database (``table`` may be ``schema.table``)."""

    table: Annotated[str, Meta(description="the table: name or schema.name")]
    dsn: Annotated[str, Meta(description=(
        "connection URL (postgresql://user:password@host:5432/db) or key=value string; "
        "secret, never shown"))] = ""
    dsn_env: Annotated[str, Meta(description=(
        "else the environment variable holding it; else the file $CREDENTIALS_DIRECTORY/"
        "<dsn_env or 'dsn'>"))] = ""
    tracking: Annotated[Literal["log", "column"], Meta(description=(
        "log: triggers fill a change-log table (exact, sees deletes); column: rows whose "
        "updated_column grew, plus periodic listings for deletes"))] = "log"
    updated_column: Annotated[str, Meta(description=(
        "the last-modified column (column tracking; also used for last-writer-wins)"))] = (
        "updated_at")
    install: Annotated[bool, Meta(description=(
        "install the change-log table and triggers when missing; false: never touch the "
        "schema (run `recsync crms setup postgres --print-sql` as a DBA)"))] = True
    listen: Annotated[bool, Meta(description=(
        "LISTEN for the triggers' NOTIFY and read at once (polling stays the safety "
        "net)"))] = True
    changelog_retention: Annotated[float, Meta(ge=0, description=(
        "seconds change-log rows are kept after this pipeline read them"))] = 86400.0
    relist_interval: Annotated[float, Meta(ge=0, description=(
        "column tracking: list the whole table this often (seconds; 0 = never) to find "
        "deletes"))] = 3600.0
    connect_timeout: Annotated[float, Meta(gt=0, description="seconds")] = 10.0

    def __repr__(self) -> str:
        shown = [f"{n}={('***' if n in _SECRETS and getattr(self, n) else getattr(self, n))!r}"
                 for n in self.__struct_fields__]
        return f"PostgresConfig({', '.join(shown)})"

    __str__ = __repr__


class PostgresConnector(SqlTableConnector):
    """Reads and writes one table of a PostgreSQL database."""

    name: ClassVar[str] = "postgres"
    Config: ClassVar[type[ConnectorConfig]] = PostgresConfig
    local: ClassVar[bool] = True  # a database we own: no API budget
    LISTING: ClassVar[str] = "list_after"
    LOG_FIELD: ClassVar[str] = "xid"

    def __init__(self, config: Any, base_dir: Path) -> None:
        super().__init__(config, base_dir)
        self.cfg: PostgresConfig = self.config
        try:
            schema, table = split_table(self.cfg.table)
        except ValueError as exc:
            raise ConnectorConfigError(
                f"Invalid 'table' of the postgres connector: {exc}.") from exc
        self.names = TableNames(schema, table)
        self._conn: psycopg.Connection[Any] | None = None
        self._listener: Listener | None = None
        self._wake: Callable[[], None] | None = None
        # committed changes held back by the watermark: wake again after this long
        self._held_delay = _HELD_FIRST
        self._held_timer: threading.Timer | None = None
        self._columns: dict[str, str] = {}  # column -> type name
        # the listing's pages read ahead: (the paging value they follow, columns, rows,
        # whether they reach the end of the table)
        self._ahead: tuple[Any, list[str], Sequence[Sequence[Any]], bool] | None = None
        # what a read selects: the columns, formatted by PostgreSQL (pgtypes.select_expr)
        self._select_list: sql.Composable = sql.SQL("*")
        self._colmap: dict[str, str] = {}  # lower-case -> column
        self._key = self.cfg.key
        self._key_type = "text"
        self._updated: str | None = None
        self._writers: dict[str, Callable[[Any], Any]] = {}
        self._as_is: set[str] = set()  # columns pgtypes.as_is: most values skip the writer
        # a record's field names -> (those that are columns, their columns): pgwrite
        self._shapes: dict[tuple[str, ...], tuple[tuple[str, ...], tuple[str, ...]]] = {}
        # the key column has a default (a sequence, an identity): PostgreSQL makes keys
        self._makes_keys = False
        # how a row is named when its key is NULL: its primary key, else its ctid
        self._row_name: sql.Composable = sql.SQL("ctid::text")
        self.warning: str | None = None
        # the oids of the change log and triggers last seen (pgsql.CHECK_SQL); cursors
        # carry them as "cap"
        self._capture_id: str | None = None

    @property
    def log_tracking(self) -> bool:
        return self.cfg.tracking == "log"

    def unknown_fields(self, names: list[str], *, read: bool = True) -> list[str]:
        """Names that are not a column exactly: records carry the real column names (a
        read's ``"Name"`` is no mapped ``name``, which would sync as empty), so a name
        equal to a column only ignoring case is refused too, with the column named
        (``field_hint``); so is the configured key's spelling when it differs."""
        if not self._columns:  # not open yet: the columns are not known
            return []
        return [n for n in names if n not in self._columns]

    def field_hint(self, name: str) -> str:
        close = [c for c in self._columns if c.lower() == name.lower()]
        if not close:
            return ""
        return (f"did you mean {' or '.join(map(repr, close))}? PostgreSQL column names "
                "are case-sensitive and records carry them as they are")

    # ------------------------------------------------------------------ identity

    def _dsn(self) -> str:
        dsn = resolve_secret(self.cfg.dsn, self.cfg.dsn_env, self.cfg.dsn_env or "dsn")
        if not dsn:
            where = f"${self.cfg.dsn_env}" if self.cfg.dsn_env else "'dsn'"
            raise ConnectorConfigError(
                f"The postgres connector for {self.cfg.table!r} has no connection string: set "
                f"{where}, or put it in $CREDENTIALS_DIRECTORY/{self.cfg.dsn_env or 'dsn'}.")
        return dsn

    @property
    def system_id(self) -> str:
        try:
            # never the user and password: a URL's userinfo (up to its last '@', which
            # libpq misreads when the password has an unencoded '/', '@' or space) is cut
            info = psycopg.conninfo.conninfo_to_dict(without_userinfo(self._dsn()))
        except (psycopg.ProgrammingError, ConnectorConfigError):
            return f"postgres:{self.cfg.table}"
        host = info.get("host") or "localhost"
        return f"postgres:{host}:{info.get('port') or 5432}/{info.get('dbname') or ''}"

    def _scrub(self, text: str) -> str:
        """A driver's message on one line (libpq puts hints on further lines), masked and
        without the password (libpq quotes a misparsed DSN's pieces)."""
        try:
            dsn = self._dsn()
        except ConnectorConfigError:
            dsn = ""
        return " ".join(scrub(text, dsn).split())

    @property
    def where(self) -> str:
        return f"table {self.names.schema}.{self.names.table} ({self.system_id})"

    # ------------------------------------------------------------------ open / close

    def open(self) -> None:
        dsn = normalize_url(self._dsn())
        try:
            conn = psycopg.connect(dsn, autocommit=True,
                                   connect_timeout=max(1, int(self.cfg.connect_timeout)))
        except psycopg.Error as exc:
            raise ConnectorError(
                f"Cannot connect to PostgreSQL for {self.where}: "
                f"{self._scrub(str(exc))}") from exc
        self._conn = conn
        try:
            pgtypes.configure(conn)
            self._inspect(conn)
            if self.cfg.tracking == "log":
                self._ensure_capture(conn, at_open=True)
        except psycopg.Error as exc:
            self.close()
            raise self._error(exc, "opening the table") from exc
        except BaseException:
            self.close()
            raise
        if self.cfg.tracking == "log" and self.cfg.listen:
            self._listener = Listener(dsn, self.names.channel, self._notified,
                                      connect_timeout=self.cfg.connect_timeout,
                                      ignore=self._own_notify)
            self._listener.start()

    def watch(self, wake: Callable[[], None]) -> None:
        """Call ``wake()`` (from the listener's thread) when the table may have changed."""
        self._wake = wake

    def _own_notify(self, payload: str) -> bool:
        """A NOTIFY of our own write (its payload is the writer's origin): our reader
        would only skip the rows it logged, so it is no reason to read."""
        return bool(self.origin) and payload == self.origin

    def _notified(self) -> None:
        wake = self._wake
        if wake is not None:
            wake()

    def _inspect(self, conn: psycopg.Connection[Any]) -> None:
        table = self.names.qualified
        if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone() == (None,):
            raise ConnectorConfigError(
                f"Table {self.names.schema}.{self.names.table} does not exist in "
                f"{self.system_id}; check 'table' of the postgres connector.")
        if self.cfg.tracking == "log" and conn.execute(
                "SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass(%s)",
                (table,)).fetchone() == (True,):
            raise ConnectorConfigError(
                f"Table {self.names.schema}.{self.names.table} is partitioned: the change-log "
                "triggers would be on it alone, and a write made straight into a partition "
                "(INSERT INTO one of them) would never be logged. Use tracking = \"column\" "
                "(with 'updated_column') for it, or sync each partition as a table.")
        rows = conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod), attnotnull, "
            "atthasdef OR attidentity <> '' FROM pg_attribute "
            "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped "
            "ORDER BY attnum", (table,)).fetchall()
        self._columns = {name: typ for name, typ, _nn, _d in rows}
        not_null = {name for name, _typ, nn, _d in rows if nn}
        defaults = {name for name, _typ, _nn, d in rows if d}
        self._colmap = {c.lower(): c for c in self._columns}
        key = resolve_key(list(self._columns), self.cfg.key)  # as `crms setup` does
        if key is None:
            raise ConnectorConfigError(
                f"Table {self.names.schema}.{self.names.table} has no key column "
                f"{self.cfg.key!r} (columns: {', '.join(self._columns)}).")
        self._key, self._key_type = key, self._columns[key]
        self._makes_keys = key in defaults
        pk = [r[0] for r in conn.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = to_regclass(%s) "
            "AND i.indisprimary ORDER BY array_position(i.indkey::int2[], a.attnum)",
            (table,)).fetchall()]
        self._row_name = (
            sql.SQL("ctid::text") if not pk or pk == [key] else
            sql.SQL("{}::text").format(sql.Identifier(pk[0])) if len(pk) == 1 else
            sql.SQL("ROW({})::text").format(sql.SQL(", ").join(map(sql.Identifier, pk))))
        self._row_label = ("ctid" if not pk or pk == [key] else ", ".join(pk))
        unique = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a "
            "ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
            "WHERE i.indrelid = to_regclass(%s) AND i.indisunique AND i.indnkeyatts = 1 "
            "AND i.indpred IS NULL AND a.attname = %s)", (table, key)).fetchone()
        if not unique or not unique[0]:
            raise ConnectorConfigError(
                f"Key column {key!r} of {self.names.schema}.{self.names.table} is not unique; "
                "recsync upserts by key, so it needs a primary key or unique index on it.")
        self._updated = self._colmap.get(self.cfg.updated_column.lower())
        if self.cfg.tracking == "column" and self._updated is None:
            raise ConnectorConfigError(
                f"Table {self.names.schema}.{self.names.table} has no column "
                f"{self.cfg.updated_column!r}, which tracking = \"column\" needs "
                "(set 'updated_column').")
        # the key column as NOT NULL whatever it says: a key '' is that key, never NULL
        # (a row of its own the next pass would not find)
        self._writers = {c: pgtypes.writer_for(t, c in not_null or c == key)
                         for c, t in self._columns.items()}
        self._as_is = {c for c, t in self._columns.items() if pgtypes.as_is(t)}
        # a char(n) key as its text, padding gone: the form the log holds (key::text), so
        # a row fetched for a logged key is found under it, and listings agree
        self._select_list = sql.SQL(", ").join(
            sql.SQL("{c}::text AS {c}").format(c=sql.Identifier(c))
            if c == key and pgtypes.blank_padded(t) else pgtypes.select_expr(c, t)
            for c, t in self._columns.items())
        self._ahead = None
        self._shapes.clear()

    def _capture_missing(self, conn: psycopg.Connection[Any]) -> str | None:
        """What of the trigger tracking is missing, or None when all of it is there."""
        row = conn.execute(CHECK_SQL, {
            "log": self.names.log, "table": self.names.qualified,
            "triggers": list(self.names.trigger_names)}).fetchone()
        has_log, triggers = bool(row and row[0]), int(row[1]) if row else 0
        want = len(self.names.trigger_names)
        if has_log and triggers == want:
            self._capture_id = row[2] if row else None
            return None
        missing = [] if has_log else [f"the change-log table {self.names.log_name}"]
        if triggers < want:
            missing.append(f"{want - triggers} of its {want} triggers")
        return " and ".join(missing)

    def _ensure_capture(self, conn: psycopg.Connection[Any], at_open: bool) -> bool:
        """Install the triggers and log if missing; True when they were missing."""
        missing = self._capture_missing(conn)
        if missing is None:
            return False
        if not self.cfg.install:
            raise ConnectorConfigError(
                f"Change tracking on {self.where} is not set up ({missing} missing) and "
                "install = false; have a DBA run the SQL that `recsync crms setup postgres "
                f"--print-sql --table {shlex.quote(self.cfg.table)} --key "
                f"{shlex.quote(self._key)}` prints.")  # runs as printed in a POSIX shell
        conn.execute(setup_sql(self.names, self._key).encode())  # type: ignore[call-overload]
        self._capture_missing(conn)  # the new objects' ids
        if not at_open:
            self.warning = (f"change capture on {self.where} was gone ({missing}); "
                            "reinstalled it and listed the table again to catch up")
            log.warning("change capture was gone; reinstalled, listing the table",
                        extra={"table": self.cfg.table, "missing": missing})
        else:
            # a cursor read under the capture that went missing makes the first read list
            # the table again (_capture_replaced): the changes made meanwhile are there only
            log.info("Installed recsync change tracking on %s", self.cfg.table)
        return True

    def _capture_replaced(self, state: dict[str, Any]) -> bool:
        """The cursor was read under other capture objects than those there now: they
        went missing and were installed again (at our open, or by a DBA's `crms setup`),
        or the table was re-created; what changed meanwhile was never logged."""
        was = state.get("cap")
        if was is None or self._capture_id is None or was == self._capture_id:
            return False  # a cursor of an earlier version: nothing to compare
        self.warning = (f"change capture on {self.where} was replaced since the last read "
                        "(gone and installed again, or the table re-created); listed the "
                        "table again to catch up")
        log.warning("change capture was replaced since the last read; listing the table",
                    extra={"table": self.cfg.table})
        return True

    def _held_back(self) -> None:
        """Committed changes wait below the watermark for a transaction that began before
        them (on any table: the server's traffic) to end; that end sends no NOTIFY, so
        wake the reader again soon, less often the longer it lasts."""
        if self._wake is None or self._listener is None:
            return  # polling reads it
        if self._held_timer is not None and self._held_timer.is_alive():
            return
        timer = threading.Timer(self._held_delay, self._notified)
        timer.daemon = True
        timer.start()
        self._held_timer = timer
        self._held_delay = min(self._held_delay * 1.5, _HELD_MAX)

    def close(self) -> None:
        self._ahead = None
        if self._held_timer is not None:
            self._held_timer.cancel()
            self._held_timer = None
        if self._listener is not None:
            # not waiting for its thread: it sees the stop within its 0.5 s wait for
            # notifications and closes its connection itself (a --once run ended 0.5 s
            # later waiting here)
            self._listener.stop(timeout=0)
            self._listener = None
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

    @property
    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            raise ConnectorError(f"The postgres connector for {self.where} is not open.")
        return self._conn

    def _classify(self, exc: BaseException, doing: str) -> ConnectorError | None:
        if not isinstance(exc, psycopg.Error):
            return None
        with contextlib.suppress(psycopg.Error):
            if self._conn is not None and not self._conn.closed:
                self._conn.rollback()
        return self._error(exc, doing)

    def _error(self, exc: BaseException, doing: str) -> ConnectorError:
        msg = self._scrub(str(exc))
        if isinstance(exc, pgerr.UndefinedTable | pgerr.UndefinedColumn):
            return ConnectorError(
                f"{self.where} was dropped or altered ({msg}) while {doing}; restore it or "
                "fix the postgres connector config.")
        if isinstance(exc, pgerr.InsufficientPrivilege):
            return ConnectorConfigError(
                f"PostgreSQL refused {doing} on {self.where}: {msg}. Grant the role what the "
                "README's PostgreSQL section lists.")
        if self._conn is not None and self._conn.closed:
            self._conn = None  # reconnect on the next call
        return ConnectorError(f"PostgreSQL error on {self.where} while {doing}: {msg}")

    def _reconnect(self) -> None:
        if self._conn is None or self._conn.closed:
            self.close()
            self.open()

    # ------------------------------------------------------------------ reading

    def _reading(self, doing: str, read: Callable[[], _T]) -> _T:
        """``read()``, connected; reads name the columns seen at open, each by an expression
        for its type, so a column dropped or given another type since (no such column, no
        such function for the new type) makes the table be looked at again and ``read()``
        run once more."""
        with self._failing(doing):
            self._reconnect()
            try:
                return read()
            except _SHAPE_CHANGED:
                with contextlib.suppress(psycopg.Error):
                    self.conn.rollback()
                self._inspect(self.conn)
                return read()

    def read_changes(self, cursor: str | None, limit: int) -> ChangePage:
        return self._reading("reading changes", lambda: self._read_changes(cursor, limit))

    def _read_changes(self, cursor: str | None, limit: int) -> ChangePage:
        limit = max(1, limit)
        state = self._parse_cursor(cursor)
        if self.cfg.tracking == "log":
            # a listing's later pages skip the catalog check (one round trip of two
            # per page: 100 of them, 0.75 s of a 100,000-row listing on a loaded
            # machine): the log read after the listing checks, and capture lost
            # meanwhile makes it list again; so does a cursor read under capture that has
            # since been replaced (installed again at open, or by a DBA)
            if (state.get("list_after") is None and self._ensure_capture(
                    self.conn, at_open=False)) or self._capture_replaced(state):
                state = {}
            if "list_after" in state:
                return self._list_page(state, limit, start=False)
            if "xid" not in state or state.get("relist"):
                return self._start_listing(limit)
            self._prune(state)
            return self._log_page(state, limit)
        if "list_after" in state:
            return self._list_page(state, limit, start=False)
        if "ts" not in state or state.get("relist") or self._relist_due(state):
            return self._start_listing(limit)
        return self._column_page(state, limit)

    def _snapshot(self) -> None:
        self.conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def _end(self) -> None:
        self.conn.execute("COMMIT")

    def _log_position(self) -> dict[str, Any]:
        """The last log row that no running transaction can still precede."""
        row = self.conn.execute(
            f"SELECT xid::text::bigint, seq FROM {self.names.log} AS l "
            "WHERE xid < pg_snapshot_xmin(pg_current_snapshot()) "
            "ORDER BY l.xid DESC, l.seq DESC LIMIT 1").fetchone()  # l.: the index's order
        return {"xid": int(row[0]), "seq": int(row[1])} if row else {"xid": 0, "seq": 0}

    def _start_listing(self, limit: int) -> ChangePage:
        state: dict[str, Any]
        self._snapshot()
        try:
            if self.cfg.tracking == "log":
                state = self._log_position()
                if self._capture_id is not None:
                    state["cap"] = self._capture_id
            else:
                u, k = sql.Identifier(self._updated or ""), sql.Identifier(self._key)
                # r.{u}: a bare {u} in ORDER BY is the output column, the text
                row = self.conn.execute(sql.SQL(
                    "SELECT {u}::text, {k}::text FROM {t} AS r WHERE {u} IS NOT NULL "
                    "AND {k} IS NOT NULL{due} ORDER BY r.{u} DESC, r.{k} DESC LIMIT 1").format(
                        u=u, k=k, t=sql.SQL(self.names.qualified),
                        due=self._due_sql())).fetchone()
                state = {"ts": row[0] if row else None, "key": row[1] if row else None,
                         "listed_at": time.time()}
        finally:
            self._end()
        state["list_after"] = None
        return self._list_page(state, limit, start=True)

    def _select_rows(self, where: sql.Composable, order: sql.Composable,
                     params: dict[str, Any], extra: sql.Composable | None = None,
                     extras: int = 1) -> tuple[list[str], list[tuple[Any, ...]]]:
        """The table's columns (then ``extra``: ``extras`` values after them) as
        ``select_expr`` formats them; the table is ``r`` (``ORDER BY r.{column}``: a bare
        name there would be the formatted value, e.g. a numeric key's text)."""
        query = sql.SQL("SELECT {c}{x} FROM {t} AS r {w} {o}").format(
            c=self._select_list, x=extra or sql.SQL(""), t=sql.SQL(self.names.qualified),
            w=where, o=order)
        cur = self.conn.execute(query, params)
        cols = [d.name for d in cur.description or ()]
        if extra is not None:
            cols = cols[:-extras]
        return cols, cur.fetchall()

    def _epoch_sql(self) -> sql.Composable | None:
        """The updated column as epoch seconds, computed by PostgreSQL, when it is a
        date or timestamp (parsing its ISO text in Python took a third of a listing's
        time in the connector)."""
        if self._updated is None:
            return None
        kind = self._columns[self._updated]
        if not (kind == "date" or kind.startswith("timestamp")) or kind.endswith("]"):
            return None
        # date_part: a float8 at once (extract makes a numeric first: 42 ms of server time
        # for 100,000 values, date_part 17 ms; equal on 300,000 timestamps of 1700-2250)
        return sql.SQL("date_part('epoch', {u})").format(u=sql.Identifier(self._updated))

    def _page_epoch_at(self, cols: list[str]) -> int | None:
        return len(cols) if self._epoch_sql() is not None else None

    def _key_cast(self) -> sql.Composable:
        return sql.SQL(self._key_type)  # format_type() output: already a valid type name

    def _page_rows(self, after: Any, n: int) -> tuple[list[str], Sequence[Sequence[Any]]]:
        """Rows in key order (rows without a key: ``_null_keys_unpaged``), the key's text
        last. A query reads ``_READ_AHEAD`` pages: the next call, for the page after this
        one, takes its rows from them (measured: 100 queries of a 100,000-row listing
        took 0.75 s in recsyncd, mostly waiting for the connection and the GIL)."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and after is not None and ahead[0] == after and (
                len(ahead[2]) >= n or ahead[3]):
            cols, rows, complete = ahead[1], ahead[2], ahead[3]
        else:
            want = n * _READ_AHEAD
            cols, rows = self._query_page(after, want)
            complete = len(rows) < want
        if len(rows) > n:  # the caller goes on after its page's last row, row n - 1
            self._ahead = (rows[n - 2][-1], cols, rows[n - 1:], complete)
        return cols, rows[:n]

    def _query_page(self, after: Any, n: int) -> tuple[list[str], Sequence[Sequence[Any]]]:
        k = sql.Identifier(self._key)
        where = sql.SQL("WHERE {k} IS NOT NULL").format(k=k)
        if after is not None:
            where = sql.SQL("WHERE {k} > %(after)s::text::{kt}").format(
                k=k, kt=self._key_cast())
        epoch = self._epoch_sql()
        extra = sql.SQL(", {k}::text AS recsync_page").format(k=k)
        if epoch is not None:  # before the paging value, which stays last
            extra = sql.SQL(", {e} AS recsync_epoch").format(e=epoch) + extra
        return self._select_rows(
            where, sql.SQL("ORDER BY r.{k} LIMIT %(n)s").format(k=k),
            {"after": after, "n": n}, extra, 2 if epoch is not None else 1)

    def _list_page(self, state: dict[str, Any], limit: int, start: bool) -> ChangePage:
        # log mode: then read the log from the listing's start (changes made since)
        return self._listing_page(
            state, limit, start, (lambda _rest: True) if self.cfg.tracking == "log" else None)

    def _null_key(self, where: Any) -> Unreadable:
        t = f"{self.names.schema}.{self.names.table}"
        return Unreadable(
            f"{t} {self._row_label} {where}",
            f"Row {self._row_label} {where} of table {t} ({self.system_id}) has no value "
            f"(NULL) in key column {self._key!r}; give it one (it is not synced until then).",
            hides_key=False)

    def _null_keys(self) -> list[Unreadable]:
        rows = self.conn.execute(sql.SQL(
            "SELECT {n} FROM {t} WHERE {k} IS NULL ORDER BY 1 LIMIT 1000").format(
                n=self._row_name, t=sql.SQL(self.names.qualified),
                k=sql.Identifier(self._key))).fetchall()
        return [self._null_key(r[0]) for r in rows]

    def _null_keys_unpaged(self) -> list[Unreadable]:
        return self._null_keys()

    def _log_page(self, state: dict[str, Any], limit: int) -> ChangePage:
        """Other writers' log rows after the cursor, below the watermark. Our own rows are
        skipped by PostgreSQL, not sent here to be dropped: after a batch of writes the log
        holds mostly ours (a 100,000-row load read back as 100 pages of 1000 rows to skip
        took about as long as writing it)."""
        xid, seq = int(state["xid"]), int(state["seq"])
        self._snapshot()
        try:
            rows = self.conn.execute(
                f"SELECT xid::text::bigint, seq, key, "
                f"date_part('epoch', changed_at) FROM {self.names.log} AS l "
                "WHERE (xid, seq) > (%s::text::xid8, %s) "
                "AND xid < pg_snapshot_xmin(pg_current_snapshot()) "
                "AND origin IS DISTINCT FROM %s "
                # l.xid: a bare xid is the output column, the bigint, which no index
                # holds (that was a scan and sort of the whole log on every read)
                "ORDER BY l.xid, l.seq LIMIT %s", (str(xid), seq, self.origin, limit + 1)
            ).fetchall()
            more = len(rows) > limit
            rows = rows[:limit]
            last: dict[str, Any]
            if more:
                last = {"xid": int(rows[-1][0]), "seq": int(rows[-1][1])}
            else:
                # past our own rows too: the last row below the watermark (a log pruned or
                # recreated under us may end before the cursor: keep the cursor then)
                end = self._log_position()
                last = max(end, {"xid": xid, "seq": seq}, key=lambda p: (p["xid"], p["seq"]))
                self._check_held()
            if self._capture_id is not None:
                last["cap"] = self._capture_id
            if not rows:
                return ChangePage([], dump(last))
            entries = [(k, at) for _x, _s, k, at in rows if k is not None]
            # a row got, lost or changed without a key: every keyless row there is now
            extra: dict[str, Any] = (
                {"unreadable": self._null_keys(), "unreadable_all": True}
                if len(entries) < len(rows) else {})
            changes = self._latest_changes(entries)
        finally:
            self._end()
        return ChangePage(changes, dump(last), more=more, **extra)

    def _check_held(self) -> None:
        """In the read's snapshot: are other writers' committed log rows held back?"""
        if self._listener is None:
            return
        row = self.conn.execute(
            f"SELECT EXISTS (SELECT 1 FROM {self.names.log} "
            "WHERE xid >= pg_snapshot_xmin(pg_current_snapshot()) "
            "AND origin IS DISTINCT FROM %s)", (self.origin,)).fetchone()
        if row and row[0]:
            self._held_back()
        else:
            self._held_delay = _HELD_FIRST

    def _rows_by_keys(self, keys: list[Any]) -> dict[str, Record]:
        cols, rows = self._select_rows(
            sql.SQL("WHERE {k} = ANY(%(keys)s::text[]::{kt}[])").format(
                k=sql.Identifier(self._key), kt=self._key_cast()),
            sql.SQL(""), {"keys": keys})
        kidx = cols.index(self._key)
        return {key_text(r[kidx]): dict(zip(cols, r, strict=True)) for r in rows}

    def _prune(self, state: dict[str, Any]) -> None:
        """Drop log rows this pipeline has read once they are older than the retention."""
        if not self._prune_due():
            return
        self.conn.execute(
            f"DELETE FROM {self.names.log} WHERE (xid, seq) <= (%s::text::xid8, %s) "
            "AND changed_at < now() - make_interval(secs => %s) AND " + self._prunable(),
            (str(state["xid"]), int(state["seq"]), self.cfg.changelog_retention,
             self.cfg.changelog_retention))

    def _prunable(self) -> str:
        """A condition PostgreSQL tests once, before any scan: the log's first row (in
        (xid, seq) order, by the index) is older than the retention. Without it every
        prune scanned the whole log (all of the retention, every minute), 24 ms for
        100,000 rows with nothing to delete. Rows written late by an old transaction may
        hide older ones behind them for a while; they go once it is old too."""
        return (f"EXISTS (SELECT 1 FROM (SELECT changed_at FROM {self.names.log} AS f "
                "ORDER BY f.xid, f.seq LIMIT 1) AS f "
                "WHERE f.changed_at < now() - make_interval(secs => %s))")

    def housekeep(self) -> None:
        """Nobody reads this side: keep the log our writes fill to the retention window."""
        if self.cfg.tracking != "log":
            return
        with self._failing("pruning the change log"):
            self._reconnect()
            self.conn.execute(
                f"DELETE FROM {self.names.log} WHERE changed_at < now() - "
                "make_interval(secs => %s) AND " + self._prunable(),
                (self.cfg.changelog_retention, self.cfg.changelog_retention))

    def _due_sql(self) -> sql.Composable:
        """Column mode: `` AND`` the updated value is one the cursor may move to: not in
        the future of PostgreSQL's clock (dates and timestamps: 'infinity', a far-future
        or a skewed clock's stamp), not infinite (numbers). A cursor moved there would
        pass every later change until the next listing; such a row is read by listings,
        and by the column page once its time has come."""
        u = sql.Identifier(self._updated or "")
        kind = self._columns.get(self._updated or "", "")
        if kind.endswith("]"):
            return sql.SQL("")
        ut = sql.SQL(kind)
        if kind == "date" or kind.startswith("timestamp"):
            return sql.SQL(" AND {u} <= now()::{ut}").format(u=u, ut=ut)
        if kind in ("real", "double precision"):
            return sql.SQL(" AND {u} < 'Infinity'::float8").format(u=u)
        if kind == "numeric" and self.conn.info.server_version >= 140000:
            return sql.SQL(" AND {u} < 'Infinity'::numeric").format(u=u)  # 14 made it
        return sql.SQL("")

    def _column_page(self, state: dict[str, Any], limit: int) -> ChangePage:
        ts, key = state.get("ts"), state.get("key")
        u, k = sql.Identifier(self._updated or ""), sql.Identifier(self._key)
        if ts is None:
            where = sql.SQL("WHERE {u} IS NOT NULL AND {k} IS NOT NULL{due}").format(
                u=u, k=k, due=self._due_sql())
        else:
            where = sql.SQL(
                "WHERE {u} >= %(ts)s::text::{ut} AND ({u} > %(ts)s::text::{ut} "
                "OR {k} > %(key)s::{kt}) AND {k} IS NOT NULL{due}").format(
                    u=u, k=k, kt=self._key_cast(),
                    ut=sql.SQL(self._columns[self._updated or ""]), due=self._due_sql())
        cols, rows = self._select_rows(
            where, sql.SQL("ORDER BY r.{u}, r.{k} LIMIT %(n)s").format(u=u, k=k),
            {"ts": ts, "key": key, "n": limit + 1})
        more = len(rows) > limit
        rows = rows[:limit]
        if not rows:
            return ChangePage([], dump(state))
        changes = self._to_changes(rows, cols, time.time())
        last = rows[-1]
        ui = cols.index(self._updated or "")
        cursor = {"ts": str(last[ui]), "key": changes[-1].key,
                  "listed_at": state.get("listed_at")}
        return ChangePage(changes, dump(cursor), more=more)

    def fetch(self, keys: list[str]) -> dict[str, Record]:
        return self._reading("fetching records", lambda: self._rows_by_keys(list(set(keys))))

    def list_records(self, position: str | None, limit: int) -> tuple[list[Change], str | None]:
        return self._reading("listing the table",
                             lambda: super(PostgresConnector, self).list_records(position, limit))

    def count_records(self) -> int | None:
        try:
            self._reconnect()
            row = self.conn.execute(sql.SQL("SELECT count(*) FROM {t}").format(
                t=sql.SQL(self.names.qualified))).fetchone()
        except (psycopg.Error, ConnectorError):
            return None
        return int(row[0]) if row else None

    # ------------------------------------------------------------------ writing

    def write(self, ops: list[WriteOp]) -> list[WriteResult]:
        from recsync.connectors.pgwrite import write_batch
        self._ahead = None  # rows read before this write: not handed out after it
        with self._failing("writing records"):
            self._reconnect()
            return write_batch(self, ops)

    def _is_record_error(self, exc: BaseException) -> bool:
        return isinstance(exc, _RECORD_ERRORS) and not isinstance(exc, pgerr.TransactionRollback)

    @contextlib.contextmanager
    def _savepoint(self) -> Iterator[None]:
        with self.conn.transaction():
            yield
