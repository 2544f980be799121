"""SQLite connector: one table of a user's SQLite database, keyed by one column.

Change tracking (``tracking``)
------------------------------
``"triggers"`` (default): exact inserts, updates and deletes from a change log. The only
objects recsync ever adds to a user database are, for a synced table ``<t>``:

* the table ``recsync_changelog_<t>`` (seq INTEGER PRIMARY KEY AUTOINCREMENT, op TEXT,
  key, changed_at REAL) -- because of AUTOINCREMENT, SQLite itself also creates its
  internal ``sqlite_sequence`` table if the database has none yet;
* the triggers ``recsync_<t>_ai``, ``recsync_<t>_au`` and ``recsync_<t>_ad`` (AFTER INSERT,
  UPDATE, DELETE), which append (op, key, time) to that log. An update that changes the
  key logs a delete of the old key and an upsert of the new one.

They are created once with IF NOT EXISTS. recsync never creates or alters user tables
and never changes the journal mode (it only sets busy_timeout on its own connection).
Uninstall: ``DROP TRIGGER recsync_<t>_ai`` (and _au, _ad), ``DROP TABLE
recsync_changelog_<t>``. Log rows are pruned at the start of each ``read_changes`` once
they are behind the committed cursor AND older than ``changelog_retention`` (a day by
default), so several pipelines can read one table: each has a day to catch up, and one
that was away longer finds the gap and re-lists the table.

Every read first compares ``PRAGMA schema_version`` with the last one seen; after a schema
change the table is inspected again and missing triggers are put back. When the table,
its log or a trigger was replaced or dropped (SQLite's documented way to rebuild a table
drops its triggers), the changes made meanwhile were not logged: the table is listed again
(the engine compares the listing with its links) and the page carries a ``warning``. A
reader that puts triggers back next to an existing log also logs a ``gap`` row, so every
other reader of the table, now or after a restart, lists it again too; a log whose
sequence restarted below a reader's position (dropped and created again) does the same.

Limits of triggers: rows removed by ``INSERT OR REPLACE`` conflicts on a *different*
unique column are not logged (SQLite fires no delete trigger for them unless
``recursive_triggers`` is on).

Log rows that our own write transactions produced are remembered (by sequence range) and
skipped when the log is read back: they are echoes, which the engine would drop anyway.

``"column"``: no objects are added; rows whose ``updated_at`` column is greater than the
cursor are read in (updated_at, key) order. Deletes cannot be seen this way, and rows
with a NULL updated_at only appear in listings, so the whole table is listed again every
``relist_interval`` seconds (an hour by default; 0 = never) and the engine takes the rows
a listing no longer holds as deleted. ``relist_cursor(cursor)`` asks for a listing now.

Cursors are compact JSON text:

* ``{"scan_after": <rowid>, "seq": S}`` / ``{"scan_after": <rowid>, "ts": T, "key": K}``:
  a listing (full scan by rowid, or by key for WITHOUT ROWID tables) is in progress;
* ``{"seq": S}``: trigger mode, log rows after S are next;
* ``{"ts": T, "key": K, "listed_at": L}``: column mode, rows after (T, K) are next; the
  last listing began at L (epoch seconds);
* ``{"relist": true, ...}``: start a new full listing (``relist_cursor``).

No cursor (or one that cannot be used) starts a listing. ``modified_at`` is the
``updated_at`` column when the table has it (epoch seconds, epoch milliseconds, or
ISO-8601 text, naive = UTC), else the log time (trigger mode) or the time read (listings).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from itertools import repeat
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any, ClassVar, Literal

import msgspec

from recsync.connectors.base import ConnectorConfig
from recsync.connectors.probes import sqlite_probe
from recsync.connectors.sqltable import SqlTableConnector, dump, epoch, int_text
from recsync.errors import ConnectorConfigError, ConnectorError
from recsync.messages import (
    Change,
    ChangePage,
    Record,
    Unreadable,
    WriteOp,
    WriteResult,
    key_text,
)
from recsync.sqlbulk import execute_rows, values_marks
from recsync.sqlident import quote_ident as _q

log = logging.getLogger(__name__)

# an op to write: its index in the batch, the op, the columns to write, and the
# updated_at value to add as the last column (None: the record has its own)
_Todo = tuple[int, WriteOp, tuple[str, ...], Any]

_NOW = "(julianday('now') - 2440587.5) * 86400.0"
_OWN_RANGES_KEPT = 10_000  # our write transactions remembered as log ranges
_ROWID_ALIASES = ("rowid", "_rowid_", "oid")
_GAP = "gap"  # change-log op: changes before it may not have been logged


class SqliteConfig(ConnectorConfig, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One table of a SQLite database file (``path`` is relative to the config folder)."""

    path: str
    table: str
    tracking: Literal["triggers", "column"] = "triggers"
    updated_at: str = "updated_at"
    busy_timeout: float = 5.0
    changelog_retention: float = 86400.0
    relist_interval: float = 3600.0  # column mode: list the table this often, for deletes


_KIND = attrgetter("kind")
_OP = itemgetter(-1)  # of a change-log row
_KEY = attrgetter("key")
_FIELDS = attrgetter("fields")


def _all_int_text(keys: list[str]) -> bool:
    """``int_text`` of every key; plain digits (the usual keys) without a call each."""
    if all(map(str.isdecimal, keys)) and max(map(len, keys), default=0) < 19:
        return True
    return all(map(int_text, keys))


def _without_ranges(rows: list[Any], ranges: list[tuple[int, int]]) -> list[Any]:
    """``rows`` (sorted by seq, the 4th column from the end) minus those inside any
    (lo, hi] of ``ranges`` (sorted, disjoint): one pass over both."""
    out, i, n = [], 0, len(ranges)
    for row in rows:
        seq = row[-4]
        while i < n and ranges[i][1] < seq:
            i += 1
        if i < n and ranges[i][0] < seq <= ranges[i][1]:
            continue
        out.append(row)
    return out


def _affinity(decl: str) -> str:
    d = decl.upper()
    if "INT" in d:
        return "INTEGER"
    if "CHAR" in d or "CLOB" in d or "TEXT" in d:
        return "TEXT"
    if not d or "BLOB" in d:
        return "BLOB"
    return "REAL" if ("REAL" in d or "FLOA" in d or "DOUB" in d) else "NUMERIC"


def _is_record_error(exc: BaseException) -> bool:
    """True when ``exc`` is about one record's values, not about the database."""
    if isinstance(exc, sqlite3.IntegrityError | sqlite3.DataError | OverflowError):
        return True
    if isinstance(exc, sqlite3.InterfaceError | sqlite3.ProgrammingError):
        return "binding parameter" in str(exc)
    return False


class SqliteConnector(SqlTableConnector):
    """Reads and writes one table of a SQLite database file."""

    name: ClassVar[str] = "sqlite"
    Config: ClassVar[type[ConnectorConfig]] = SqliteConfig
    local: ClassVar[bool] = True
    LISTING: ClassVar[str] = "scan_after"
    LOG_FIELD: ClassVar[str] = "seq"

    def __init__(self, config: Any, base_dir: Path) -> None:
        super().__init__(config, base_dir)
        config = self.config
        self.cfg: SqliteConfig = config
        self.path = (Path(base_dir) / config.path).resolve()
        self.table = config.table
        self.log_table = f"recsync_changelog_{config.table}"
        self._db: sqlite3.Connection | None = None
        self._columns: list[str] = []
        self._colmap: dict[str, str] = {}
        self._key = config.key
        self._key_affinity = "NUMERIC"
        self._makes_keys = False  # the key column is an INTEGER PRIMARY KEY (the rowid)
        self._unique = False
        self._order = "rowid"
        self._updated: str | None = None
        self._updated_text = False
        self._chunk = 999
        self._sql_cache: dict[tuple[Any, ...], str] = {}
        # (after, upto] ranges of change-log seqs written by our own transactions
        self._own_writes: list[tuple[int, int]] = []
        self._shapes: dict[tuple[str, ...], tuple[tuple[str, ...], bool, bool]] = {}
        # the schema as last checked (see _check_schema): PRAGMA schema_version, and the
        # table, change log and triggers as they were then
        self._schema_version: int | None = None
        self._objects_seen: dict[str, Any] | None = None
        # why the next read must list the table again (capture was off), if it must
        self._relist_why: str | None = None
        # the log stopped being a full account of the changes (a listing started again
        # from a cursor): changed_since answers None from then on (see there)
        self._log_doubted = False
        self._read_from_cursor = False

    @property
    def system_id(self) -> str:
        return f"sqlite:{self.path}"

    def change_probe(self) -> Callable[[], object] | None:
        return sqlite_probe(self.path)

    @property
    def where(self) -> str:
        return f"table {self.table!r} in SQLite database {self.path}"

    @property
    def log_tracking(self) -> bool:
        return self.cfg.tracking == "triggers"

    # ------------------------------------------------------------------ open / close

    def open(self) -> None:
        if not self.path.is_file():
            raise ConnectorConfigError(
                f"SQLite database {self.path} does not exist; check 'path' of the sqlite "
                "connector (recsync does not create databases)."
            )
        try:
            db = sqlite3.connect(
                self.path.as_uri() + "?mode=rw",
                uri=True,
                timeout=self.cfg.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise ConnectorConfigError(f"Cannot open SQLite database {self.path}: {exc}.") from exc
        self._db = db
        try:
            self._inspect(db)
            if self.cfg.tracking == "triggers":
                self._install_triggers(db)
            self._remember_schema(db)
        except sqlite3.OperationalError as exc:
            self.close()
            raise self._op_error(exc, "opening the table") from exc
        except sqlite3.DatabaseError as exc:
            self.close()
            raise ConnectorConfigError(f"Cannot use SQLite database {self.path}: {exc}.") from exc
        except BaseException:
            self.close()
            raise

    def _inspect(self, db: sqlite3.Connection) -> None:
        db.execute(f"PRAGMA busy_timeout = {int(self.cfg.busy_timeout * 1000)}")
        kinds = db.execute(
            "SELECT type FROM sqlite_master WHERE lower(name) = lower(?)", (self.table,)
        ).fetchall()
        if ("table",) not in kinds:
            what = "is a view, not a table" if ("view",) in kinds else "does not exist"
            raise ConnectorConfigError(
                f"Table {self.table!r} {what} in SQLite database {self.path}; "
                "check 'table' of the sqlite connector."
            )
        info = db.execute(f"PRAGMA table_info({_q(self.table)})").fetchall()
        self._columns = [row[1] for row in info]
        self._colmap = {c.lower(): c for c in self._columns}
        key = self._colmap.get(self.cfg.key.lower())
        if key is None:
            raise ConnectorConfigError(
                f"Table {self.table!r} in SQLite database {self.path} has no key column "
                f"{self.cfg.key!r} (columns: {', '.join(self._columns)})."
            )
        self._key = key
        self._key_affinity = _affinity(next(r[2] for r in info if r[1] == key) or "")
        self._updated = self._colmap.get(self.cfg.updated_at.lower())
        self._updated_text = (
            self._updated is not None
            and _affinity(next(r[2] for r in info if r[1] == self._updated) or "") == "TEXT"
        )
        if self.cfg.tracking == "column" and self._updated is None:
            raise ConnectorConfigError(
                f"Table {self.table!r} in SQLite database {self.path} has no column "
                f"{self.cfg.updated_at!r}, which tracking = \"column\" needs (set 'updated_at')."
            )
        pks = [r[1] for r in info if r[5]]
        self._unique = pks == [key] or self._has_unique_index(db, key)
        if self._unique:  # e.g. a unique index with another collation: no ON CONFLICT(key)
            try:
                db.execute("EXPLAIN " + self._sql("upsert", (key,)), (None,))
            except sqlite3.OperationalError:
                self._unique = False
        self._order = self._pick_order(db)
        decl = (next(r[2] for r in info if r[1] == key) or "").strip().upper()
        self._makes_keys = pks == [key] and decl == "INTEGER" and self._order != _q(key)
        self._chunk = max(1, min(db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) - 2, 10000))

    def _has_unique_index(self, db: sqlite3.Connection, key: str) -> bool:
        for _seq, name, unique, _origin, part in db.execute(
            f"PRAGMA index_list({_q(self.table)})"
        ).fetchall():
            if unique and not part:
                cols = [r[2] for r in db.execute(f"PRAGMA index_info({_q(name)})").fetchall()]
                if cols == [key]:
                    return True
        return False

    def _pick_order(self, db: sqlite3.Connection) -> str:
        lowered = {c.lower() for c in self._columns}
        for alias in _ROWID_ALIASES:
            if alias not in lowered:
                try:
                    db.execute(f"SELECT {alias} FROM {_q(self.table)} LIMIT 0")
                except sqlite3.OperationalError:
                    break  # WITHOUT ROWID table
                return alias
        if not self._unique:
            raise ConnectorConfigError(
                f"Table {self.table!r} in SQLite database {self.path} has no rowid and its key "
                f"column {self._key!r} is not unique, so it cannot be listed in pages."
            )
        return _q(self._key)

    def _install_triggers(self, db: sqlite3.Connection) -> None:
        t = self.table
        names = {self.log_table, f"recsync_{t}_ai", f"recsync_{t}_au", f"recsync_{t}_ad"}
        present = {r[0] for r in db.execute("SELECT name FROM sqlite_master").fetchall()}
        if names <= present:
            return
        gap = self.log_table in present
        if gap:
            # the log is there but a trigger is not (a table rebuilt the documented way
            # drops its triggers): changes made since were never logged
            self._relist_why = (
                f"the change-log triggers on table {t!r} in {self.path} were missing "
                "(dropped with the table when it was rebuilt?); they were put back, and the "
                "table is listed again to sync the changes made while they were missing"
            )
        lt, k, qt = _q(self.log_table), _q(self._key), _q(t)
        ins = f'INSERT INTO {lt} (op, "key", changed_at)'
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                f"CREATE TABLE IF NOT EXISTS {lt} (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                'op TEXT NOT NULL, "key", changed_at REAL NOT NULL)'
            )
            db.execute(
                f"CREATE TRIGGER IF NOT EXISTS {_q(f'recsync_{t}_ai')} AFTER INSERT ON {qt} "
                f"BEGIN {ins} VALUES ('upsert', NEW.{k}, {_NOW}); END"
            )
            db.execute(
                f"CREATE TRIGGER IF NOT EXISTS {_q(f'recsync_{t}_au')} AFTER UPDATE ON {qt} "
                f"BEGIN {ins} SELECT 'delete', OLD.{k}, {_NOW} WHERE OLD.{k} IS NOT NEW.{k}; "
                f"{ins} VALUES ('upsert', NEW.{k}, {_NOW}); END"
            )
            db.execute(
                f"CREATE TRIGGER IF NOT EXISTS {_q(f'recsync_{t}_ad')} AFTER DELETE ON {qt} "
                f"BEGIN {ins} VALUES ('delete', OLD.{k}, {_NOW}); END"
            )
            if gap:  # tells every reader of the log, now or after a restart, to list again
                db.execute(f"{ins} VALUES ('{_GAP}', NULL, {_NOW})")
            db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        log.info("Installed recsync change-log triggers on %s in %s", t, self.path)

    def _objects(self, db: sqlite3.Connection) -> dict[str, Any]:
        """The table and change log (by root page: a rebuilt table has a new one) and the
        triggers (by SQL) that change capture depends on."""
        t = self.table
        names = [t.lower(), self.log_table.lower(),
                 *(f"recsync_{t}_{s}".lower() for s in ("ai", "au", "ad"))]
        rows = db.execute(
            "SELECT lower(name), type, rootpage, sql FROM sqlite_master WHERE lower(name) IN "
            f"({','.join('?' * len(names))})", names).fetchall()
        return {name: rootpage if kind == "table" else sql for name, kind, rootpage, sql in rows}

    def _remember_schema(self, db: sqlite3.Connection) -> None:
        self._schema_version = int(db.execute("PRAGMA schema_version").fetchone()[0])
        self._objects_seen = self._objects(db)

    def _check_schema(self) -> None:
        """Every read, cheaply (``PRAGMA schema_version``): after a schema change, inspect
        the table again and, in trigger mode, put back triggers that went missing; when
        the table, its change log or a trigger was replaced or dropped, changes may have
        gone unlogged, so the next read lists the table again (``_relist_why``)."""
        db = self.db
        if int(db.execute("PRAGMA schema_version").fetchone()[0]) == self._schema_version:
            return
        before = self._objects_seen
        self._inspect(db)
        self._sql_cache.clear()
        self._shapes.clear()
        if self.cfg.tracking == "triggers":
            now = self._objects(db)
            self._install_triggers(db)
            if before is not None and now != before and self._relist_why is None:
                self._relist_why = (
                    f"table {self.table!r} or its change log in {self.path} was rebuilt or "
                    "replaced; change capture was checked and the table is listed again to "
                    "sync the changes made meanwhile"
                )
        self._remember_schema(db)

    def close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise ConnectorError(f"The sqlite connector for {self.path} is not open.")
        return self._db

    def _rollback(self) -> None:
        if self._db is not None and self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    def _op_error(self, exc: sqlite3.Error, doing: str) -> ConnectorError:
        msg = str(exc)
        if "locked" in msg or "busy" in msg:
            return ConnectorError(
                f"SQLite database {self.path} is locked by another connection "
                f"(waited {self.cfg.busy_timeout}s) while {doing}; will retry."
            )
        if "no such table" in msg or "no such column" in msg:
            return ConnectorError(
                f"Table {self.table!r} in SQLite database {self.path} was dropped or altered "
                f"({msg}) while {doing}; restore it or fix the sqlite connector config."
            )
        return ConnectorError(f"SQLite error on {self.path} while {doing}: {msg}.")

    def _classify(self, exc: BaseException, doing: str) -> ConnectorError | None:
        if isinstance(exc, sqlite3.OperationalError):
            return self._op_error(exc, doing)
        if isinstance(exc, sqlite3.Error):
            return ConnectorError(f"SQLite error on {self.path} while {doing}: {exc}.")
        return None

    def _is_record_error(self, exc: BaseException) -> bool:
        return _is_record_error(exc)

    @contextlib.contextmanager
    def _savepoint(self) -> Iterator[None]:
        db = self.db
        db.execute("SAVEPOINT recsync_row")
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK TO recsync_row")
                db.execute("RELEASE recsync_row")
            raise
        db.execute("RELEASE recsync_row")

    def _undo_batch(self) -> None:
        self._rollback()
        self.db.execute("BEGIN IMMEDIATE")

    # ------------------------------------------------------------------ reading

    def housekeep(self) -> None:
        """Nobody reads this side, but the triggers log our writes: keep the log to the
        retention window (rows older than it), as other readers' pruning would."""
        if self.cfg.tracking != "triggers":
            return
        try:
            top = self.db.execute(f"SELECT max(seq) FROM {_q(self.log_table)}").fetchone()[0]
            if top is not None:
                self._prune(int(top))
        except sqlite3.Error as exc:
            raise self._op_error(exc, "pruning the change log") from exc

    def read_changes(self, cursor: str | None, limit: int) -> ChangePage:
        state = self._parse_cursor(cursor)
        limit = max(1, limit)
        self._read_from_cursor = bool(state)
        with self._failing("reading changes"):
            self._check_schema()
            if self.cfg.tracking == "triggers":
                why, self._relist_why = self._relist_why, None
                if why is None and isinstance(state.get("seq"), int):
                    why = self._log_reset(state["seq"])
                if why is not None and state:
                    log.warning("Listing %s again: %s", self.system_id, why)
                    self._own_writes = []  # their log positions mean nothing now
                    page = self._start_listing(limit)
                    return msgspec.structs.replace(page, warning=why)
                if isinstance(state.get("seq"), int):
                    self._prune(state["seq"])
                if "scan_after" in state:
                    return self._scan_page(state, limit, start=False)
                if "seq" not in state or state.get("relist"):
                    return self._start_listing(limit)
                return self._log_page(state["seq"], limit)
            if "scan_after" in state:
                return self._scan_page(state, limit, start=False)
            if "ts" not in state or state.get("relist") or self._relist_due(state):
                return self._start_listing(limit)
            return self._column_page(state["ts"], state.get("key"), limit,
                                     state.get("listed_at"))

    def _prune(self, seq: int) -> None:
        if not self._prune_due():
            return
        lt = _q(self.log_table)
        try:
            low = self.db.execute(f"SELECT min(seq) FROM {lt}").fetchone()[0]
            cutoff = time.time() - self.cfg.changelog_retention
            if low is not None and low <= seq:
                self.db.execute(
                    f"DELETE FROM {lt} WHERE seq <= ? AND changed_at < ?", (seq, cutoff)
                )
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            log.debug("Change log of %s not pruned this time: %s", self.table, exc)

    def _start_listing(self, limit: int) -> ChangePage:
        state: dict[str, Any]
        if self._read_from_cursor:  # listed again: the log missed changes, or may have
            self._log_doubted = True
        if self.cfg.tracking == "triggers":
            top = self.db.execute(f"SELECT max(seq) FROM {_q(self.log_table)}").fetchone()[0]
            state = {"seq": top or 0}
        else:
            u, k = _q(self._updated or ""), _q(self._key)
            row = self.db.execute(
                f"SELECT {u}, {k} FROM {_q(self.table)} WHERE {u} IS NOT NULL AND {k} IS NOT "
                f"NULL ORDER BY {u} DESC, {k} DESC LIMIT 1"
            ).fetchone()
            state = {"ts": row[0] if row else None, "key": row[1] if row else None,
                     "listed_at": time.time()}
        return self._scan_page(state, limit, start=True)

    def _select(self, where: str, order: str, extra: str = "") -> str:
        """``SELECT *`` (then ``extra``, a column list, after the table's columns)."""
        key = ("select", where, order, extra)
        sql = self._sql_cache.get(key)
        if sql is None:
            sql = f"SELECT *{extra} FROM {_q(self.table)} {where} {order}".strip()
            self._sql_cache[key] = sql
        return sql

    def _scan_page(self, state: dict[str, Any], limit: int, start: bool) -> ChangePage:
        return self._listing_page(
            state, limit, start, self._log_moved if self.cfg.tracking == "triggers" else None)

    def _log_moved(self, rest: dict[str, Any]) -> bool:
        """The change log grew past the listing's start: read it next."""
        top = self.db.execute(f"SELECT max(seq) FROM {_q(self.log_table)}").fetchone()[0]
        return top is not None and bool(top > rest.get("seq", 0))

    def _page_rows(self, after: Any, n: int) -> tuple[list[str], Sequence[Sequence[Any]]]:
        o = self._order
        where = f"WHERE {o} > ?" if after is not None else ""
        params: tuple[Any, ...] = (after, n) if after is not None else (n,)
        # the paging column last: the record is the row without it, with no copy made
        cur = self.db.execute(self._select(where, f"ORDER BY {o} LIMIT ?", f", {o}"), params)
        rows = cur.fetchall()
        return [d[0] for d in cur.description][:-1], rows

    def _null_key(self, rowid: Any) -> Unreadable:
        return Unreadable(
            f"{self.table} rowid {rowid}",
            f"Row {rowid} of table {self.table!r} in {self.path} has no value (NULL) in key "
            f"column {self._key!r}; give it one (it is not synced until then).",
            hides_key=False)

    def _null_keys(self) -> list[Unreadable]:
        """Every row of the table without a key (at most 1000)."""
        rows = self.db.execute(
            f"SELECT {self._order} FROM {_q(self.table)} WHERE {_q(self._key)} IS NULL "
            f"ORDER BY {self._order} LIMIT 1000").fetchall()
        return [self._null_key(r[0]) for r in rows]

    def _log_reset(self, seq: int) -> str | None:
        """Why the change log cannot be read from ``seq``: it was dropped and created again
        (its sequence restarted below the cursor), or None."""
        row = self.db.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = ?", (self.log_table,)
        ).fetchone()
        if (int(row[0]) if row else 0) >= seq:
            return None
        return (
            f"the change log {self.log_table!r} in {self.path} was dropped or emptied and "
            "created again (its sequence is behind this pipeline's position); the table is "
            "listed again to sync the changes it lost"
        )

    def _log_gap(self, seq: int) -> bool:
        """True when log rows after ``seq`` were pruned before we read them."""
        lt = _q(self.log_table)
        low = self.db.execute(f"SELECT min(seq) FROM {lt}").fetchone()[0]
        if low is None:
            row = self.db.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = ?", (self.log_table,)
            ).fetchone()
            return row is not None and row[0] > seq
        return bool(low > seq + 1)

    def _log_page(self, seq: int, limit: int) -> ChangePage:
        if self._log_gap(seq):
            log.warning(
                "Change log of %s was pruned past this pipeline's position; "
                "listing the whole table again",
                self.system_id,
            )
            return self._start_listing(limit)
        # (changed_since is asked from cursors the queue recorded, never behind a read's:
        # the poller reads from those, after the batches made before them were sent)
        own = self._own_writes = [r for r in self._own_writes if r[1] > seq]
        for lo, hi in own:  # skip whole runs of our own rows without reading them
            if lo <= seq < hi:
                seq = hi
        # with a unique key, each log row joined with its table row (or none): one query
        # instead of the log page and then the rows by key (about 1/3 fewer instructions
        # for the read, callgrind); else the rows are looked up by key afterwards
        joined = self._unique
        cur = self.db.execute(self._log_sql(joined), (seq, limit + 1))
        rows = cur.fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        if not rows:
            return ChangePage([], dump({"seq": seq}))
        if _GAP in map(_OP, rows):  # no generator step a row
            why = (f"the change-log triggers on table {self.table!r} in {self.path} were "
                   "missing for a while (put back by another reader of the table); the table "
                   "is listed again to sync the changes made meanwhile")
            log.warning("Listing %s again: %s", self.system_id, why)
            return msgspec.structs.replace(self._start_listing(limit), warning=why)
        last = rows[-1][-4]
        if own:
            rows = _without_ranges(rows, own)
            if not rows:
                return ChangePage([], dump({"seq": last}), more=more)
        if joined:
            changes, keyless = self._joined_changes(rows, [d[0] for d in cur.description[:-4]])
        else:
            entries = [(r[-3], r[-2]) for r in rows if r[-3] is not None]
            changes, keyless = self._latest_changes(entries), len(entries) < len(rows)
        # a row got, lost or changed without a key: report every keyless row there is now
        extra: dict[str, Any] = (
            {"unreadable": self._null_keys(), "unreadable_all": True} if keyless else {})
        return ChangePage(changes, dump({"seq": last}), more=more, **extra)

    def _log_sql(self, joined: bool) -> str:
        """Log rows after a seq, each ending in seq, key, changed_at, op (``joined``: after
        the table's columns of the row with that key, all NULL when there is none)."""
        key = ("log", joined)
        sql = self._sql_cache.get(key)
        if sql is None:
            lt, t = _q(self.log_table), _q(self.table)
            sql = (f'SELECT t.*, l.seq, l."key", l.changed_at, l.op FROM {lt} AS l '
                   f'LEFT JOIN {t} AS t ON t.{_q(self._key)} = l."key" '
                   if joined else f'SELECT seq, "key", changed_at, op FROM {lt} AS l ')
            sql += "WHERE l.seq > ? ORDER BY l.seq LIMIT ?"
            self._sql_cache[key] = sql
        return sql

    def _joined_changes(self, rows: list[Any], cols: list[str]) -> tuple[list[Change], bool]:
        """``_latest_changes`` of log rows joined with their table rows (the table's
        columns ``cols`` first; the record is the row without the log's columns, with no
        copy made): one change per key, in the order of its last log row, with that row's
        time; and whether a log row had no key."""
        latest = {r[-3]: r for r in rows}  # each key's last row
        keyless = None in latest
        if keyless or len(latest) < len(rows):  # a key more than once: by its last row
            latest = {}
            for r in rows:
                if r[-3] is not None:
                    latest.pop(r[-3], None)
                    latest[r[-3]] = r
        kidx = cols.index(self._key)
        upd = self._updated
        uidx = cols.index(upd) if upd is not None and upd in cols else None
        changes: list[Change] = []
        append = changes.append
        for r in latest.values():
            k, at = r[-3], r[-2]
            kc = k.__class__
            kt = k if kc is str else str(k) if kc is int else key_text(k)
            if r[kidx] is None:  # no row with that key now
                append(Change(kt, "delete", None, at))
                continue
            ts = r[uidx] if uidx is not None else None
            if ts is not None and (ts.__class__ is not float or not 0 < ts < 1e11):
                ts = epoch(ts)  # plain epoch seconds are the common case: no parsing
            append(Change(kt, "upsert", dict(zip(cols, r)),  # noqa: B905
                          ts if ts is not None and ts > at else at))
        return changes, keyless

    def _column_page(self, ts: Any, key: Any, limit: int, listed_at: Any) -> ChangePage:
        u, k = _q(self._updated or ""), _q(self._key)
        params: tuple[Any, ...]
        if ts is None:
            where, params = f"WHERE {u} IS NOT NULL AND {k} IS NOT NULL", ()
        else:
            where = f"WHERE {u} >= ? AND ({u} > ? OR {k} > ?) AND {k} IS NOT NULL"
            params = (ts, ts, key)
        cur = self.db.execute(
            self._select(where, f"ORDER BY {u}, {k} LIMIT ?"), (*params, limit + 1)
        )
        rows = cur.fetchall()
        cols = [d[0] for d in cur.description]
        more = len(rows) > limit
        rows = rows[:limit]
        if not rows:
            return ChangePage([], dump({"ts": ts, "key": key, "listed_at": listed_at}))
        last = rows[-1]
        ui, ki = cols.index(self._updated or ""), cols.index(self._key)
        changes = self._to_changes(rows, cols, time.time())
        cursor = {"ts": last[ui], "key": last[ki], "listed_at": listed_at}
        return ChangePage(changes, dump(cursor), more=more)

    def _key_params(self, key: str) -> list[Any]:
        """Values to look ``key`` up by (a typeless column compares 303 and "303" unequal)."""
        if self._key_affinity != "BLOB":
            return [key]
        out: list[Any] = [key]
        for conv in (int, float):
            try:
                v = conv(key)
            except ValueError:
                continue
            if key_text(v) == key:
                out.append(v)
                break
        return out

    def _rows_by_keys(self, keys: list[Any]) -> dict[str, Record]:
        return self._rows_by_values(keys)

    def _rows_by_values(self, values: list[Any]) -> dict[str, Record]:
        out: dict[str, Record] = {}
        for i in range(0, len(values), self._chunk):
            chunk = values[i : i + self._chunk]
            where = f"WHERE {_q(self._key)} IN ({','.join('?' * len(chunk))})"
            cur = self.db.execute(self._select(where, ""), chunk)
            cols = [d[0] for d in cur.description]
            kidx = cols.index(self._key)
            for r in cur.fetchall():
                k = r[kidx]
                kc = k.__class__  # str and int keys (the usual) need no key_text call
                out[k if kc is str else str(k) if kc is int else key_text(k)] = dict(
                    zip(cols, r))  # noqa: B905 - each row holds every column
        return out

    def record_modified(self, record: Record) -> float | None:
        """The later of the updated_at column and the record's last change-log entry."""
        stamp = super().record_modified(record)
        if self.cfg.tracking == "triggers" and record.get(self._key) is not None:
            try:
                row = self.db.execute(
                    f'SELECT max(changed_at) FROM {_q(self.log_table)} WHERE "key" = ?',
                    (record[self._key],),
                ).fetchone()
            except sqlite3.Error:
                row = None
            if row and row[0] is not None:
                stamp = max(stamp or 0.0, float(row[0]))
        return stamp

    def changed_since(self, cursor: str, keys: list[str]) -> set[str] | None:
        """In trigger mode, from a plain log cursor ``{"seq": S}``: the keys of the log
        rows after S that our own write transactions did not make (``_own_writes``); None
        when the log cannot tell: column mode, a listing's cursor, the schema changed since
        the last read, the log was pruned past S or started again, a row without a key
        (a gap), more rows than ``keys`` (fetching is as cheap then), and for good once a
        listing started again from a cursor (changes may have gone unlogged before it,
        and a cursor from before it may look like one from after).

        Measured on 100,000 updates SQLite -> SQLite (py-spy --gil, shipped defaults):
        fetching and comparing every record took 18% of the daemon's CPU."""
        if self.cfg.tracking != "triggers" or self._log_doubted or self._relist_why:
            return None
        try:
            state = json.loads(cursor)
        except ValueError:
            return None
        if not isinstance(state, dict) or list(state) != ["seq"]:
            return None
        seq = state["seq"]
        if seq.__class__ is not int:
            return None
        limit = len(keys) + 1
        lt = _q(self.log_table)
        with self._failing("checking the change log"):
            db = self.db
            if int(db.execute("PRAGMA schema_version").fetchone()[0]) != self._schema_version:
                return None  # the next read looks into it
            if self._log_reset(seq) is not None or self._log_gap(seq):
                return None
            spans: list[tuple[int, int | None]] = []  # (after, upto]: not ours
            low = seq
            for lo, hi in self._own_writes:
                if hi > low:
                    if lo > low:
                        spans.append((low, lo))
                    low = hi
            spans.append((low, None))
            if len(spans) > 64:
                return None
            found: list[Any] = []
            for after, upto in spans:
                if upto is None:
                    rows = db.execute(f'SELECT "key" FROM {lt} WHERE seq > ? LIMIT ?',
                                      (after, limit - len(found))).fetchall()
                else:
                    rows = db.execute(
                        f'SELECT "key" FROM {lt} WHERE seq > ? AND seq <= ? LIMIT ?',
                        (after, upto, limit - len(found))).fetchall()
                found += rows
                if len(found) >= limit:
                    return None
        if any(k is None for (k,) in found):
            return None
        return {key_text(k) for (k,) in found}

    def fetch(self, keys: list[str]) -> dict[str, Record]:
        wanted = set(keys)
        values = (list(wanted) if self._key_affinity != "BLOB"  # looked up as they are
                  else [v for k in wanted for v in self._key_params(k)])
        with self._failing("fetching records"):
            found = self._rows_by_values(values)
        return {k: v for k, v in found.items() if k in wanted}

    def count_records(self) -> int | None:
        try:
            return int(self.db.execute(f"SELECT COUNT(*) FROM {_q(self.table)}").fetchone()[0])
        except sqlite3.Error:
            return None

    # ------------------------------------------------------------------ writing

    def write(self, ops: list[WriteOp]) -> list[WriteResult]:
        now = time.time()
        stamp: Any = (
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
            if self._updated_text
            else now
        )
        uniform = self._uniform(ops)
        if uniform is not None:  # the usual batch: no per-op work in Python
            names, stamped = uniform
            run_stamp = stamp if stamped else None
            results: list[WriteResult | None] = [None] * len(ops)
            self._write_todo(
                partial(self._upsert_rows, names, list(map(_FIELDS, ops)), run_stamp),
                lambda: [(i, op, names, run_stamp) for i, op in enumerate(ops)], [], results)
            if results.count(None) == len(results):  # none refused
                return list(map(WriteResult, map(_KEY, ops)))
        else:
            results, todo, made = self._plan(ops, stamp)
            self._write_todo(partial(self._apply_batch, todo), lambda: todo, made, results)
        return [
            r if r is not None else WriteResult(op.key) for r, op in zip(results, ops, strict=True)
        ]

    def _uniform(self, ops: list[WriteOp]) -> tuple[tuple[str, ...], bool] | None:
        """(columns, add updated_at) when every op is an upsert of the same fields, the
        key among them, and the table holds each key as it is (no key to make): the batch
        goes to the database without a look at each op. Else None."""
        if not ops or not self._unique or set(map(_KIND, ops)) != {"upsert"}:
            return None
        records = list(map(_FIELDS, ops))
        if None in records:
            return None
        shapes = set(map(tuple, records))
        if len(shapes) != 1:
            return None
        (fields,) = shapes
        names, stamped, keyed = self._shapes.get(fields) or self._shape(fields)
        if not keyed or (self._makes_keys and not _all_int_text(list(map(_KEY, ops)))):
            return None
        return names, stamped

    def _plan(self, ops: list[WriteOp], stamp: Any) -> tuple[
            list[WriteResult | None], list[_Todo], list[_Todo]]:
        """Each op's write: (results so far: the refused ones, the ops to write, the ops
        whose key the table makes)."""
        results: list[WriteResult | None] = [None] * len(ops)
        todo: list[_Todo] = []
        made: list[_Todo] = []
        for i, op in enumerate(ops):
            if op.kind == "delete":
                todo.append((i, op, (), None))
                continue
            fields = op.fields or {}
            shape = self._shapes.get(tuple(fields))
            if shape is None:
                shape = self._shape(tuple(fields))
            names, stamped, keyed = shape
            if not keyed:
                results[i] = WriteResult(
                    op.key,
                    f"Record {op.key!r} has no value for key column {self._key!r} "
                    f"of table {self.table!r}.",
                    retryable=False,
                )
                continue
            if self._makes_keys and not int_text(op.key):
                # a key this table cannot hold (a CRM's placeholder): a new row, new key
                made.append((i, op, names, stamp if stamped else None))
                continue
            # the row changes now: updated_at says so (added to the values, not to fields)
            todo.append((i, op, names, stamp if stamped else None))
        return results, todo, made

    def _write_todo(self, batch: Callable[[], None], todo: Callable[[], list[_Todo]],
                    made: list[_Todo], results: list[WriteResult | None]) -> None:
        """One transaction: ``batch`` (or, when it refuses a record, the ops of ``todo()``
        one by one), then ``made``; our own change-log rows are remembered as echoes."""
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            before = self._log_top()

            def one_by_one() -> None:
                nonlocal before
                before = self._log_top()
                self._apply_rows(todo(), results)

            self._batch_or_rows(batch, one_by_one)
            if made:
                self._insert_new_keys(made, results)
            after = self._log_top()
            db.execute("COMMIT")
            if before is not None and after is not None and after > before:
                self._own_writes.append((before, after))
                del self._own_writes[:-_OWN_RANGES_KEPT]  # older echoes: dropped by hash
        except BaseException as exc:
            self._rollback()
            err = self._classify(exc, "writing records")
            if err is None:
                raise
            raise err from exc

    def _shape(self, fields: tuple[str, ...]) -> tuple[tuple[str, ...], bool, bool]:
        """For records with these field names: the columns to write, whether to add the
        updated_at column (then it is the last of them), whether the key column is among
        them."""
        stamped = self._updated is not None and not any(
            f.lower() == self._updated.lower() for f in fields)
        names = tuple(f for f in fields if f.lower() in self._colmap)
        if stamped:
            names = (*names, self._updated or "")
        keyed = any(self._colmap[f.lower()] == self._key for f in names)
        if len(self._shapes) > 64:
            self._shapes.clear()
        self._shapes[fields] = (names, stamped, keyed)
        return names, stamped, keyed

    def _log_top(self) -> int | None:
        """Highest change-log seq (inside our write transaction: nobody else can add)."""
        if self.cfg.tracking != "triggers":
            return None
        row = self.db.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = ?", (self.log_table,)
        ).fetchone()
        return int(row[0]) if row else 0

    def _sql(self, kind: str, names: tuple[str, ...], rows: int = 1) -> str:
        cache_key = (kind, rows, *names)
        sql = self._sql_cache.get(cache_key)
        if sql is not None:
            return sql
        t, k = _q(self.table), _q(self._key)
        where = f"{k} IN (?, ?)" if self._key_affinity == "BLOB" else f"{k} = ?"
        cols = [self._colmap[n.lower()] for n in names]
        collist, marks = ", ".join(map(_q, cols)), ", ".join("?" * len(cols))
        others = [c for c in cols if c != self._key]
        if kind == "delete":
            sql = f"DELETE FROM {t} WHERE {where}"
        elif kind == "upsert":
            action = (
                "UPDATE SET " + ", ".join(f"{_q(c)} = excluded.{_q(c)}" for c in others)
                if others
                else "NOTHING"
            )
            values = values_marks(len(cols), rows)
            sql = f"INSERT INTO {t} ({collist}) VALUES {values} ON CONFLICT ({k}) DO {action}"
        elif kind == "update":
            sql = f"UPDATE {t} SET {', '.join(f'{_q(c)} = ?' for c in cols)} WHERE {where}"
        else:
            sql = f"INSERT INTO {t} ({collist}) VALUES ({marks})"
        self._sql_cache[cache_key] = sql
        return sql

    def _where_params(self, key: str) -> tuple[Any, ...]:
        if self._key_affinity != "BLOB":
            return (key,)
        p = self._key_params(key)
        return (p[0], p[-1])

    def _apply_batch(self, todo: list[_Todo]) -> None:
        """Apply runs of same-shaped ops with executemany (fast path)."""
        db = self.db
        i = 0
        while i < len(todo):
            _, op, names, stamp = todo[i]
            j = i + 1
            while (j < len(todo) and todo[j][1].kind == op.kind and todo[j][2] == names
                   and todo[j][3] is stamp):
                j += 1
            run = todo[i:j]
            ops = [o for _i, o, _names, _stamp in run]
            if op.kind == "delete":
                db.executemany(self._sql("delete", ()), [self._where_params(o.key) for o in ops])
            elif self._unique:
                self._upsert_rows(names, [o.fields for o in ops if o.fields], stamp)
            else:
                for o in ops:
                    self._apply_one(o, names, stamp)
            i = j

    def _upsert_rows(self, names: tuple[str, ...], records: list[Record], stamp: Any) -> None:
        """Upsert many rows with multi-row statements (see ``recsync.sqlbulk``); ``stamp``
        (unless None) is the value of the last column, updated_at."""
        fields = names if stamp is None else names[:-1]
        rows: list[tuple[Any, ...]]
        if stamp is not None:  # each row made once, by zip, with the stamp last (no loop)
            rows = list(zip(*[map(itemgetter(f), records) for f in fields], repeat(stamp)))
        elif len(fields) == 1:
            (only,) = fields
            rows = [(r[only],) for r in records]
        else:
            rows = list(map(itemgetter(*fields), records))
        execute_rows(self.db, lambda n: self._sql("upsert", names, n), rows, self._chunk)

    def _apply_one(self, op: WriteOp, names: tuple[str, ...], stamp: Any) -> None:
        db = self.db
        if op.kind == "delete":
            db.execute(self._sql("delete", ()), self._where_params(op.key))
            return
        assert op.fields is not None
        fields = names if stamp is None else names[:-1]
        values = tuple(op.fields[n] for n in fields) + (() if stamp is None else (stamp,))
        if self._unique:
            db.execute(self._sql("upsert", names), values)
            return
        key_value = next(op.fields[n] for n in fields if self._colmap[n.lower()] == self._key)
        where = self._where_params(key_text(key_value))
        if db.execute(self._sql("update", names), values + where).rowcount == 0:
            db.execute(self._sql("insert", names), values)

    def _insert_new_keys(self, made: list[_Todo], results: list[WriteResult | None]) -> None:
        """Insert records whose key the table cannot hold without it: SQLite gives each a
        new rowid, which becomes its key (``WriteResult.new_key``)."""
        db = self.db
        for i, op, names, stamp in made:
            assert op.fields is not None
            fields = names if stamp is None else names[:-1]
            cols = tuple(n for n in fields if self._colmap[n.lower()] != self._key)
            values = tuple(op.fields[n] for n in cols) + (() if stamp is None else (stamp,))
            if stamp is not None:
                cols = (*cols, names[-1])
            try:
                with self._savepoint():
                    rowid = db.execute(self._sql("insert", cols), values).lastrowid
            except Exception as exc:
                if not _is_record_error(exc):
                    raise
                results[i] = WriteResult(
                    op.key, f"SQLite refused record {op.key!r} for table {self.table!r}: {exc}.",
                    retryable=False)
            else:
                results[i] = WriteResult(op.key, new_key=str(rowid))

    def _refusal(self, key: str, exc: BaseException) -> str:
        if self._key_affinity == "INTEGER" and not int_text(key):
            return (
                f"Record {key!r} cannot be written to table {self.table!r}: its key column "
                f"{self._key!r} holds integers, {key!r} is not one, and the table cannot make "
                "keys itself (the column is not an INTEGER PRIMARY KEY); give the record a "
                f"{self._key!r} value on the other side ({exc})."
            )
        return f"SQLite refused record {key!r} for table {self.table!r}: {exc}."

    def _apply_rows(self, todo: list[_Todo], results: list[WriteResult | None]) -> None:
        """Slow path after a refused record: one SAVEPOINT per op, refusals reported."""
        self._each_row(((i, op.key, partial(self._apply_one, op, names, stamp))
                        for i, op, names, stamp in todo), results, self._refusal)
