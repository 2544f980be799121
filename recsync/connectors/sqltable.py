"""What the SQL-table connectors (sqlite, postgres) share; each supplies its dialect.

The shared part: cursors (compact JSON, parsing, ``relist_cursor``), listing pages and
their ``ChangePage`` flags, column-mode paging (``relist_due``), the change-log step
"latest change per key, then the current rows of those keys", rows into ``Change``s
(rows without a key kept aside as unreadable), pruning's pace, the batch-then-per-row
write fallback, and database errors turned into ``ConnectorError`` /
``ConnectorConfigError``.

A dialect (the subclass) says how to talk to its database: ``_classify`` (an exception
of its driver -> our error, or None when it is not one), ``_is_record_error``,
``_savepoint``/``_undo_batch`` (per-row fallback), ``_rows_by_keys`` (current rows of
log keys), ``_page_rows`` (a page of the table with the paging value last) and
``_null_keys`` / ``_null_key`` (rows without a key, as ``Unreadable``).
"""

from __future__ import annotations

import abc
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

from recsync.connectors.base import Connector
from recsync.errors import ConnectorError
from recsync.messages import Change, ChangePage, Record, Unreadable, WriteResult, key_text

log = logging.getLogger(__name__)


def dump(state: dict[str, Any]) -> str:
    """A cursor's state as compact JSON text."""
    return json.dumps(state, separators=(",", ":"))


def epoch(value: Any) -> float | None:
    """A last-modified value as epoch seconds (epoch seconds, epoch milliseconds or
    ISO-8601 text, naive = UTC), or None when it is not a usable timestamp."""
    if value is None or isinstance(value, bool | bytes):
        return None
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.strip())
        except ValueError:
            try:
                value = float(value)
            except ValueError:
                return None
        else:
            return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()
    if not isinstance(value, int | float):
        return None
    f = float(value)
    if not math.isfinite(f):
        return None
    return f / 1000.0 if abs(f) > 1e11 else f


def int_text(key: str) -> bool:
    """True when ``key`` is the text of an integer (a key an integer column can hold)."""
    try:
        int(key)
    except ValueError:
        return False
    return True


def first_line(exc: BaseException) -> str:
    """The first line of an error message, without its final full stop."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")


class SqlTableConnector(Connector):
    """One table of a SQL database, keyed by one column (see the module docstring)."""

    # cursor field of a listing in progress (the paging value after which it goes on)
    LISTING: ClassVar[str]
    # cursor field that a cursor of the log (``"seq"``/``"xid"``) or column mode holds
    LOG_FIELD: ClassVar[str]

    _key: str
    _updated: str | None
    _colmap: dict[str, str]  # lower-case name -> column, once open (empty before)
    _pruned_at: float = -math.inf

    def unknown_fields(self, names: list[str], *, read: bool = True) -> list[str]:
        if not self._colmap:  # not open yet: the columns are not known
            return []
        return [n for n in names if n.lower() not in self._colmap]

    # ------------------------------------------------------------------ dialect

    @property
    @abc.abstractmethod
    def log_tracking(self) -> bool:
        """True when changes come from a change log (triggers), False: a column."""

    @property
    @abc.abstractmethod
    def where(self) -> str:
        """The table and database, for messages."""

    @abc.abstractmethod
    def _classify(self, exc: BaseException, doing: str) -> ConnectorError | None:
        """The error to raise for a database error met while ``doing``; None: ``exc`` is
        not a database error (it goes up as it is)."""

    @abc.abstractmethod
    def _rows_by_keys(self, keys: list[Any]) -> dict[str, Record]:
        """Current rows of ``keys`` (as the change log holds them), by key text."""

    @abc.abstractmethod
    def _page_rows(self, after: Any, n: int) -> tuple[list[str], Sequence[Sequence[Any]]]:
        """Up to ``n`` rows of the table in paging order after ``after`` (None: from the
        start): the column names and rows whose last value (not a column) is the row's
        paging value."""

    def _is_record_error(self, exc: BaseException) -> bool:
        """True when ``exc`` is about one record's values, not about the database."""
        return False

    @contextlib.contextmanager
    def _savepoint(self) -> Iterator[None]:
        """A savepoint around one record's write (rolled back if the body raises)."""
        yield

    def _undo_batch(self) -> None:
        """Roll back what a refused batch did, so it can run again a record at a time."""

    def _null_key(self, where: Any) -> Unreadable:
        """A row without a key, named by ``where`` (its paging value or row id)."""
        return Unreadable(
            f"{self._table_label} row {where}",
            f"Row {where} of {self.where} has no value (NULL) in key column {self._key!r}; "
            "give it one (it is not synced until then).", hides_key=False)

    def _null_keys(self) -> list[Unreadable]:
        """Every row of the table without a key (at most 1000)."""
        return []

    @property
    def _table_label(self) -> str:
        return self.where

    # ------------------------------------------------------------------ errors

    @contextlib.contextmanager
    def _failing(self, doing: str) -> Iterator[None]:
        """Database errors in the body become the dialect's ConnectorError."""
        try:
            yield
        except ConnectorError:
            raise
        except Exception as exc:
            err = self._classify(exc, doing)
            if err is None:
                raise
            raise err from exc

    # ------------------------------------------------------------------ cursors

    @classmethod
    def relist_cursor(cls, cursor: str | None) -> str:
        """A cursor that makes the next ``read_changes`` start a full listing.

        In column mode this is how deletes are found; the old cursor's log position is
        kept so the change log can still be pruned.
        """
        state: dict[str, Any] = {}
        if cursor:
            with contextlib.suppress(ValueError):
                loaded = json.loads(cursor)
                if isinstance(loaded, dict):
                    state = {k: v for k, v in loaded.items() if k != cls.LISTING}
        state["relist"] = True
        return dump(state)

    def _parse_cursor(self, cursor: str | None) -> dict[str, Any]:
        """The cursor's state; {} (start a listing) when there is none or it is unusable."""
        if cursor is None:
            return {}
        try:
            state = json.loads(cursor)
        except ValueError:
            state = None
        need = self.LOG_FIELD if self.log_tracking else "ts"
        if not isinstance(state, dict) or (need not in state and self.LISTING not in state
                                           and not state.get("relist")):
            log.warning("Ignoring unusable cursor %r for %s; starting a full listing",
                        cursor, self.system_id)
            return {}
        return state

    def _relist_due(self, state: dict[str, Any]) -> bool:
        """Column mode: time for the listing that finds deleted rows."""
        every: float = self.config.relist_interval
        listed = state.get("listed_at")
        since = listed if isinstance(listed, int | float) else 0.0
        return every > 0 and time.time() - since >= every

    def _prune_due(self) -> bool:
        """Pruning scans the log up to the cursor: a tenth of the retention is soon
        enough, and at least once a minute."""
        now = time.monotonic()
        if now - self._pruned_at < min(60.0, self.config.changelog_retention / 10):
            return False
        self._pruned_at = now
        return True

    # ------------------------------------------------------------------ rows -> changes

    def _page_epoch_at(self, cols: list[str]) -> int | None:
        """Where rows of ``_page_rows`` carry the updated column as epoch seconds (the
        database computed it), or None: it is parsed from the column's value."""
        return None

    def _to_changes(
        self, rows: Sequence[Sequence[Any]], cols: list[str], default_ts: float,
        nulls: list[Any] | None = None, epoch_at: int | None = None,
    ) -> list[Change]:
        """Changes from table rows whose first ``len(cols)`` values are the columns ``cols``
        (any values after them are not part of the record); ``nulls`` gets the last value
        (the paging value) of each row without a key; ``epoch_at``: the index of the
        updated column's epoch seconds (or None) in each row."""
        kidx = cols.index(self._key)
        uidx = cols.index(self._updated) if self._updated in cols else None
        out: list[Change] = []
        append = out.append
        isfinite = math.isfinite
        for r in rows:
            k = r[kidx]
            if k is None:
                if nulls is not None:
                    nulls.append(r[-1])
                continue
            ts = None
            if epoch_at is not None:
                ts = r[epoch_at]
                if ts is not None and not isfinite(ts):
                    ts = None
            elif uidx is not None:
                ts = r[uidx]
                # plain epoch seconds are the common case: skip the parsing
                if ts.__class__ is not float or not 0 < ts < 1e11:
                    ts = epoch(ts)
            kc = k.__class__
            append(Change(
                k if kc is str else str(k) if kc is int else key_text(k),
                "upsert", dict(zip(cols, r)), default_ts if ts is None else ts))  # noqa: B905
        return out

    def _latest_changes(self, entries: Iterable[tuple[Any, float]]) -> list[Change]:
        """Log entries (key, change time), oldest first -> one change per key: its current
        row (an upsert) or, when the row is gone, a delete. The change time is the later
        of the log's and the row's updated column (an application that forgot to bump it
        must not make the change look old)."""
        latest: dict[Any, float] = {}
        for k, at in entries:
            latest.pop(k, None)
            latest[k] = at
        current = self._rows_by_keys(list(latest)) if latest else {}
        changes: list[Change] = []
        upd = self._updated
        for k, at in latest.items():
            kt = key_text(k)
            row = current.get(kt)
            if row is None:
                changes.append(Change(kt, "delete", None, at))
            else:
                ts = epoch(row.get(upd)) if upd is not None else None
                changes.append(Change(kt, "upsert", row, max(at, ts or 0.0)))
        return changes

    def record_modified(self, record: Record) -> float | None:
        """The record's updated column, when the table has one."""
        return epoch(record.get(self._updated)) if self._updated else None

    # ------------------------------------------------------------------ listing

    def _listing_page(self, state: dict[str, Any], limit: int, start: bool,
                      more_after: Callable[[dict[str, Any]], bool] | None = None
                      ) -> ChangePage:
        """One page of a full listing after ``state[LISTING]``. The page that ends it
        says whether more is to read (``more_after(rest)``, e.g. the log written
        meanwhile); rows without a key are reported unreadable."""
        cols, rows = self._page_rows(state.get(self.LISTING), limit + 1)
        done = len(rows) <= limit
        rows = rows[:limit]
        nulls: list[Any] = []
        changes = self._to_changes(rows, cols, time.time(), nulls, self._page_epoch_at(cols))
        unreadable = [self._null_key(r) for r in nulls]
        rest = {k: v for k, v in state.items() if k not in (self.LISTING, "relist")}
        more = not done
        if done:
            if more_after is not None:
                more = more_after(rest)
            unreadable += self._null_keys_unpaged()
        else:
            rest[self.LISTING] = rows[-1][-1]
        return ChangePage(changes, dump(rest), more=more, listing=True, listing_start=start,
                          listing_done=done, unreadable=unreadable)

    def _null_keys_unpaged(self) -> list[Unreadable]:
        """Rows without a key that paging does not meet (paged by the key itself)."""
        return []

    def list_records(self, position: str | None, limit: int) -> tuple[list[Change], str | None]:
        """The table in pages, like a listing, without touching the log or the cursor."""
        after = json.loads(position) if position else None
        limit = max(1, limit)
        with self._failing("listing the table"):
            cols, rows = self._page_rows(after, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        changes = self._to_changes(rows, cols, time.time(), epoch_at=self._page_epoch_at(cols))
        return changes, json.dumps(rows[-1][-1]) if more else None

    # ------------------------------------------------------------------ writing

    def _batch_or_rows(self, batch: Callable[[], None], rows: Callable[[], None]) -> None:
        """Run ``batch``; when the database refused it for one record's values, undo it
        and run ``rows`` (a savepoint per record, see ``_each_row``) instead."""
        try:
            batch()
        except Exception as exc:
            if not self._is_record_error(exc):
                raise
            self._undo_batch()
            rows()

    def _each_row(self, items: Iterable[tuple[int, str, Callable[[], None]]],
                  results: list[WriteResult | None],
                  refusal: Callable[[str, BaseException], str]) -> None:
        """Apply each (index, key, apply) in a savepoint of its own; a record the database
        refuses gets a failed result saying why (``refusal``), the others go on."""
        for i, key, apply in items:
            try:
                with self._savepoint():
                    apply()
            except Exception as exc:
                if not self._is_record_error(exc):
                    raise
                results[i] = WriteResult(key, refusal(key, exc), retryable=False)
