"""Where a pipeline's state lives: the ``StateBackend`` protocol and its SQL.

``Store`` (``recsync.state.store``) makes the sync decisions (echo, stale, conflicts,
direct pages, listing deletes, mass-delete guard) once; a backend only reads and writes
rows. ``SqlBackend`` writes every statement once, in the SQL that SQLite and PostgreSQL
share, with three markers a dialect fills in:

- ``{W}``: the pipeline's scope in a WHERE clause (``pipeline = '<id>' AND `` in
  PostgreSQL, where one schema holds every pipeline's rows; nothing in a SQLite file,
  which holds one pipeline);
- ``{WH}``: the same as a whole WHERE clause, for a statement with no other condition;
- ``{K}``: the pipeline's column in a conflict target (``pipeline, ``).

Inserts never name the pipeline: in PostgreSQL the column defaults to the session's
``recsync.pipeline`` setting. ``SqliteBackend`` is a state file (``recsync.state.schema``),
``PostgresBackend`` (``recsync.state.pgbackend``) the schema ``recsync`` of a server.

The ``fence`` hook runs first in every write transaction (``transaction``); the leases of
several nodes (a pipeline's token checked inside the transaction that writes its state)
go there. Raising from it rolls the transaction back.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from itertools import chain, groupby
from operator import itemgetter
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

import msgspec

from recsync.messages import Direction, Side, target_of
from recsync.sqlbulk import row_chunks
from recsync.state.errors import rollback
from recsync.state.schema import connect

CHUNK = 900  # keys per IN (...) query


_T = TypeVar("_T")


def chunks(seq: Sequence[_T]) -> Iterator[Sequence[_T]]:
    for i in range(0, len(seq), CHUNK):
        yield seq[i : i + CHUNK]


# ---- the rows a store and its backend exchange ----------------------------------------------
class LinkRow(NamedTuple):
    """What the enqueue decisions read of a record's link (``links``): its hash on each
    side, and whether this pipeline wrote each side after the page being enqueued was
    observed (then what the page saw there predates our write)."""

    key: str
    a_hash: str | None
    b_hash: str | None
    a_written_after: int | None  # nonzero: written on a after the page was observed
    b_written_after: int | None
    stale: int  # nonzero: hashes of rules that have changed since

    def hash_on(self, side: Side) -> str | None:
        return self.a_hash if side == "a" else self.b_hash

    def written_after(self, side: Side) -> bool:
        return bool(self.a_written_after if side == "a" else self.b_written_after)


class QueuedRow(NamedTuple):
    """A queued item as the enqueue decisions need it."""

    key: str
    op: str
    content: bytes | None
    hash: str | None
    modified: float
    state: str
    src_hash: str | None
    direction: str
    tried: int  # nonzero: a write of it was attempted (attempts or an error)


class NewItem(NamedTuple):
    """A queue row to write (``ready``, attempts 0); ``content`` is msgpack or None."""

    direction: str
    key: str
    op: str
    content: bytes | None
    hash: str | None
    src_hash: str | None
    modified: float | None
    observed: float | None
    gen: int


class LeasedRow(NamedTuple):
    """A due queue row with the target's hash (None when stale), a rekey's old key, and
    whether the target holds the record as far as its link says (stale or not)."""

    key: str
    op: str
    content: bytes | None
    hash: str | None
    modified: float
    gen: int
    attempts: int
    expected: str | None
    src_hash: str | None
    old_key: str | None
    on_target: bool


class HistoryRow(NamedTuple):
    key: str
    event: str
    detail: str | None


class LinkSeen(NamedTuple):
    """A side's hash (None: absent) and modified time, as seen there."""

    key: str
    hash: str | None
    modified: float | None


class Written(NamedTuple):
    """A record written to the target: its hash there, and the source's if known."""

    key: str
    hash: str | None
    written_at: float
    synced_at: float
    src_hash: str | None


class Retry(NamedTuple):
    """A queue row made ready again: ``tried`` adds to attempts (0 for a deferral)."""

    tried: int
    next_at: float
    error: str | None
    updated_at: float
    direction: str
    key: str


class Done(NamedTuple):
    direction: str
    key: str
    gen: int


class FailedRow(NamedTuple):
    key: str
    direction: str
    attempts: int
    last_error: str | None
    updated_at: float


class ItemRow(NamedTuple):
    direction: str
    state: str
    attempts: int
    last_error: str | None
    op: str


class RecordRows(NamedTuple):
    """A record's link (hash on a, on b, synced at), queue items (failed first), history
    (newest first: at, event, detail, direction)."""

    link: tuple[str | None, str | None, float | None] | None
    items: list[ItemRow]
    history: list[tuple[float, str, str | None, str | None]]


Fence = Callable[["StateBackend"], None]


class StateBackend(Protocol):
    """The narrow protocol a ``Store`` runs on: rows in, rows out, no decisions.

    ``SqlBackend`` implements it for SQLite and PostgreSQL. ``x``/``xm`` run a statement
    of the dialect (markers as in the module doc) for the helpers that keep their SQL
    next to their rules (``recsync.state.unreadable``, ``recsync.state.rekeys``)."""

    where: str  # the file, or the server and pipeline, for messages
    fence: Fence | None  # run first in every write transaction

    # transactions and statements
    def transaction(self) -> AbstractContextManager[None]: ...
    def close(self) -> None: ...
    def changes(self) -> int: ...
    def x(self, sql: str, params: Sequence[Any] = ()) -> Any: ...
    def xm(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...
    # meta, cursors, history
    def max_gen(self) -> int: ...
    def meta(self, name: str, default: Any = None) -> Any: ...
    def set_meta(self, name: str, value: Any) -> None: ...
    def bump(self, name: str, by: int) -> None: ...
    def delete_meta(self, name: str) -> None: ...
    def totals(self) -> dict[str, int]: ...
    def add_history(self, rows: Iterable[tuple[str, str, str | None]], at: float,
                    direction: str | None) -> None: ...
    def cursor(self, side: Side) -> str | None: ...
    def cursors(self) -> dict[str, str | None]: ...
    def set_cursor(self, side: Side, cursor: str | None) -> None: ...
    # links
    def links(self, keys: Sequence[str], observed: float) -> dict[str, LinkRow]: ...
    def link_hashes(self, keys: Sequence[str]) -> dict[str, tuple[str | None, str | None]]: ...
    def linked_count(self, side: Side) -> int: ...
    def any_link(self) -> bool: ...
    def on_side(self, side: Side, keys: Sequence[str]) -> set[str]: ...
    def save_links(self, side: Side,
                   rows: Sequence[tuple[str, str | None, float | None]]) -> None: ...
    def set_hashes(self, side: Side, rows: Sequence[tuple[str, str | None]]) -> None: ...
    def write_links(self, target: Side, rows: Sequence[Written]) -> None: ...
    def superseded(self, target: Side, key: str, hash: str | None,
                   src_hash: str | None) -> None: ...
    def drop_empty_links(self, keys: Sequence[str]) -> None: ...
    def mark_stale(self) -> None: ...
    # listings
    def clear_listing(self, side: str) -> None: ...
    def add_listing_seen(self, side: str, keys: Iterable[str]) -> None: ...
    def unlisted(self, side: Side, since: float) -> list[str]: ...
    # queue
    def has_queued(self, direction: str | None = None) -> bool: ...
    def has_ready(self, direction: str) -> bool: ...
    def queued(self, keys: Sequence[str]) -> dict[tuple[str, str], QueuedRow]: ...
    def queued_keys(self, direction: str, keys: Sequence[str]) -> set[str]: ...
    def put_queue(self, rows: Sequence[NewItem], now: float) -> None: ...
    def hold_deletes(self, direction: str, keys: Sequence[str]) -> None: ...
    def release_deletes(self, direction: str, now: float) -> None: ...
    def add_queue(self, rows: Sequence[NewItem], now: float) -> None: ...
    def unqueue(self, pairs: Sequence[tuple[str, str]]) -> None: ...
    def unqueue_done(self, rows: Sequence[Done]) -> None: ...
    def unqueue_older(self, direction: str, keys: Sequence[str], before: float) -> None: ...
    def unqueue_rekeys(self, direction: str, keys: Sequence[str]) -> None: ...
    def attempts(self, direction: str, keys: Sequence[str]) -> dict[str, int]: ...
    def fail(self, direction: str, key: str, gen: int, attempts: int, error: str | None,
             now: float) -> None: ...
    def retry(self, rows: Sequence[Retry]) -> None: ...
    def lease(self, direction: Direction, now: float, limit: int,
              rekeys: bool) -> list[LeasedRow]: ...
    def failed_keys(self) -> list[str]: ...
    def retry_keys(self, keys: Sequence[str], now: float) -> tuple[int, list[str]]: ...
    # reads (the store's and the control plane's)
    def queue_counts(self) -> list[tuple[str, str, int]]: ...
    def ready_count(self, direction: str, now: float, limit: int) -> int: ...
    def due_upto(self, direction: str, now: float, gen: int) -> bool: ...
    def bulk_pending(self, scope: str) -> bool: ...
    def bulk_jobs(self, scope: str) -> list[tuple[str, str, str, str, float]]: ...
    def add_bulk_job(self, job_id: str, scope: str, operation: str, rows: str,
                     at: float) -> None: ...
    def drop_bulk_jobs(self, job_ids: Sequence[str]) -> None: ...
    def next_due(self) -> float | None: ...
    def has_pending(self) -> bool: ...
    def pending_and_cursors(self) -> tuple[bool, str | None, str | None]: ...
    def pending_count(self) -> int: ...
    def pending_keys(self) -> set[str]: ...
    def failed(self, limit: int) -> list[FailedRow]: ...
    def record(self, key: str, history_limit: int) -> RecordRows: ...
    def prune_history(self, cutoff: float, since: int, per_record: int) -> tuple[int, int]: ...


# ---- the shared SQL -----------------------------------------------------------------------
class SqlBackend:
    """Every statement of the state, written once (see the module); a dialect subclass
    gives the connection, the transaction and the markers."""

    where = ""
    fence: Fence | None = None
    _scope = ""  # "pipeline = '<id>'" in a shared schema
    _max_params = 9000
    _readonly = False

    def __init__(self) -> None:
        self._sql: dict[str, str] = {}
        self._rows_sql: dict[tuple[str, str, int], str] = {}
        self._in_sql: dict[tuple[str, int], str] = {}
        w = f"{self._scope} AND " if self._scope else ""
        self._marks = {"{W}": w, "{WH}": f" WHERE {self._scope}" if self._scope else "",
                       "{K}": "pipeline, " if self._scope else ""}

    # dialect ---------------------------------------------------------------------------------
    def _text(self, sql: str) -> str:
        """The statement in this dialect (markers filled in; cached)."""
        out = self._sql.get(sql)
        if out is None:
            out = sql
            for mark, value in self._marks.items():
                out = out.replace(mark, value)
            out = self._sql[sql] = self._placeholders(out)
        return out

    def _placeholders(self, sql: str) -> str:
        return sql

    def x(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement; its cursor."""
        return self._run(self._text(sql), params)

    def _run(self, sql: str, params: Sequence[Any]) -> Any:
        """Run a statement already in this dialect."""
        raise NotImplementedError

    def xm(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement once per row of ``rows``."""
        raise NotImplementedError

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of a read (tests and tools; ``?`` placeholders, markers allowed)."""
        return [tuple(r) for r in self.x(sql, params).fetchall()]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        raise NotImplementedError
        yield

    def close(self) -> None:
        raise NotImplementedError

    def changes(self) -> int:
        """A number that grows whenever this connection changed the state (what the
        queue's published figures key on)."""
        raise NotImplementedError

    def rows(self, head: str, rows: Sequence[Sequence[Any]], tail: str = "") -> None:
        """``head VALUES (...), (...) tail`` over ``rows``, many rows per statement."""
        if not rows:
            return
        width = len(rows[0])
        per = max(1, self._max_params // max(1, width))
        for start, size in row_chunks(len(rows), per):
            sql = self._rows_sql.get((head, tail, size))
            if sql is None:
                one = "(" + ", ".join("?" * width) + ")"
                sql = self._rows_sql[(head, tail, size)] = self._text(
                    f"{head} VALUES {', '.join([one] * size)} {tail}")
            self._run(sql, list(chain.from_iterable(rows[start : start + size])))

    def _in(self, sql: str, keys: Sequence[str], before: Sequence[Any] = (),
            after: Sequence[Any] = ()) -> Iterator[Any]:
        """``sql`` with ``{IN}`` as ``(?, ...)`` over ``keys`` in chunks; each cursor."""
        for part in chunks(keys):
            text = self._in_sql.get((sql, len(part)))
            if text is None:
                text = self._in_sql[(sql, len(part))] = self._text(
                    sql.replace("{IN}", "(" + ",".join("?" * len(part)) + ")"))
            yield self._run(text, (*before, *part, *after))

    # meta, cursors, history ------------------------------------------------------------------
    def max_gen(self) -> int:
        return int(self.x("SELECT COALESCE(MAX(gen), 0) FROM queue{WH}").fetchone()[0])

    def meta(self, name: str, default: Any = None) -> Any:
        row = self.x("SELECT value FROM meta WHERE {W}name = ?", (name,)).fetchone()
        return default if row is None else row[0]

    def set_meta(self, name: str, value: Any) -> None:
        self.x("INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT ({K}name) "
               "DO UPDATE SET value = excluded.value", (name, value))

    def bump(self, name: str, by: int) -> None:
        if by:
            self.x("INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT ({K}name) "
                   "DO UPDATE SET value = meta.value + excluded.value", (name, by))

    def delete_meta(self, name: str) -> None:
        self.x("DELETE FROM meta WHERE {W}name = ?", (name,))

    def totals(self) -> dict[str, int]:
        """The synced, failed and conflict totals kept in meta."""
        return {name: int(value) for name, value in self.x(
            "SELECT name, value FROM meta WHERE {W}(name LIKE 'synced_%' OR "
            "name LIKE 'failed_%' OR name = 'conflicts')")}

    def add_history(self, rows: Iterable[tuple[str, str, str | None]], at: float,
                    direction: str | None) -> None:
        """History rows (key, event, detail: ``HistoryRow`` or a plain tuple)."""
        self.rows("INSERT INTO history (key, at, event, detail, direction)",
                  [(k, at, e, d, direction) for k, e, d in rows])

    def cursor(self, side: Side) -> str | None:
        row = self.x("SELECT cursor FROM cursors WHERE {W}side = ?", (side,)).fetchone()
        return None if row is None else row[0]  # type: ignore[no-any-return]

    def cursors(self) -> dict[str, str | None]:
        return {side: cursor for side, cursor in self.x(
            "SELECT side, cursor FROM cursors{WH} ORDER BY side")}

    def set_cursor(self, side: Side, cursor: str | None) -> None:
        self.x("INSERT INTO cursors (side, cursor) VALUES (?, ?) ON CONFLICT ({K}side) "
               "DO UPDATE SET cursor = excluded.cursor", (side, cursor))

    # links --------------------------------------------------------------------------------------
    def links(self, keys: Sequence[str], observed: float) -> dict[str, LinkRow]:
        """The links of ``keys``; ``observed``: when the changes asked about were seen."""
        found: dict[str, LinkRow] = {}
        for cur in self._in(
                "SELECT key, a_hash, b_hash, a_written > ?, b_written > ?, stale FROM links "
                "WHERE {W}key IN {IN}", keys, (observed, observed)):
            for link in map(LinkRow._make, cur):
                found[link.key] = link
        return found

    def link_hashes(self, keys: Sequence[str]) -> dict[str, tuple[str | None, str | None]]:
        return {k: (r.a_hash, r.b_hash) for k, r in self.links(keys, 0.0).items()}

    def linked_count(self, side: Side) -> int:
        return int(self.x(f"SELECT COUNT(*) FROM links WHERE {{W}}{side}_hash IS NOT NULL")
                   .fetchone()[0])

    def any_link(self) -> bool:
        return bool(self.x("SELECT EXISTS (SELECT 1 FROM links{WH})").fetchone()[0])

    def on_side(self, side: Side, keys: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for cur in self._in(
                f"SELECT key FROM links WHERE {{W}}{side}_hash IS NOT NULL AND key IN {{IN}}",
                keys):
            found.update(r[0] for r in cur)
        return found

    def save_links(self, side: Side,
                   rows: Sequence[tuple[str, str | None, float | None]]) -> None:
        """A side's hash and modified time as seen there (``LinkSeen`` rows)."""
        self.rows(f"INSERT INTO links (key, {side}_hash, {side}_modified)", rows,
                  f"ON CONFLICT ({{K}}key) DO UPDATE SET {side}_hash = excluded.{side}_hash, "
                  f"{side}_modified = excluded.{side}_modified")

    def set_hashes(self, side: Side, rows: Sequence[tuple[str, str | None]]) -> None:
        """A side's hash as verify saw it (the link no longer stale)."""
        self.rows(f"INSERT INTO links (key, {side}_hash)", rows,
                  f"ON CONFLICT ({{K}}key) DO UPDATE SET {side}_hash = excluded.{side}_hash, "
                  "stale = 0")

    def write_links(self, target: Side, rows: Sequence[Written]) -> None:
        """What the target holds after a write (and the source, when known)."""
        source = "a" if target == "b" else "b"
        self.rows(
            f"INSERT INTO links (key, {target}_hash, {target}_written, synced_at, "
            f"{source}_hash)", rows,
            f"ON CONFLICT ({{K}}key) DO UPDATE SET {target}_hash = excluded.{target}_hash, "
            f"{target}_written = excluded.{target}_written, synced_at = excluded.synced_at, "
            "stale = 0, "
            f"{source}_hash = COALESCE(excluded.{source}_hash, links.{source}_hash)")

    def superseded(self, target: Side, key: str, hash: str | None,
                   src_hash: str | None) -> None:
        """A write lost to a change found on the target: what each side holds now."""
        source = "a" if target == "b" else "b"
        self.x(f"UPDATE links SET {target}_hash = ?, "
               f"{source}_hash = COALESCE(?, {source}_hash) WHERE {{W}}key = ?",
               (hash, src_hash, key))

    def drop_empty_links(self, keys: Sequence[str]) -> None:
        for _ in self._in("DELETE FROM links WHERE {W}a_hash IS NULL AND b_hash IS NULL "
                          "AND key IN {IN}", keys):
            pass

    def mark_stale(self) -> None:
        self.x("UPDATE links SET stale = 1 WHERE {W}stale = 0")

    # listings -----------------------------------------------------------------------------------
    def clear_listing(self, side: str) -> None:
        self.x("DELETE FROM listing_seen WHERE {W}side = ?", (side,))

    def add_listing_seen(self, side: str, keys: Iterable[str]) -> None:
        self.xm("INSERT INTO listing_seen (side, key) VALUES (?, ?) ON CONFLICT DO NOTHING",
                [(side, k) for k in keys])

    def unlisted(self, side: Side, since: float) -> list[str]:
        """Linked records of ``side`` the listing did not see, not written since it began."""
        return [r[0] for r in self.x(
            f"SELECT key FROM links WHERE {{W}}{side}_hash IS NOT NULL "
            f"AND ({side}_written IS NULL OR {side}_written < ?) AND key NOT IN "
            "(SELECT key FROM listing_seen WHERE {W}side = ?)", (since, side))]

    # queue --------------------------------------------------------------------------------------
    def has_queued(self, direction: str | None = None) -> bool:
        """Whether any item is queued (of ``direction``, when given)."""
        if direction is None:
            return bool(self.x("SELECT EXISTS (SELECT 1 FROM queue{WH})").fetchone()[0])
        return bool(self.x("SELECT EXISTS (SELECT 1 FROM queue WHERE {W}direction = ?)",
                           (direction,)).fetchone()[0])

    def has_ready(self, direction: str) -> bool:
        return bool(self.x("SELECT EXISTS (SELECT 1 FROM queue WHERE {W}direction = ? "
                           "AND state = 'ready')", (direction,)).fetchone()[0])

    def ready_count(self, direction: str, now: float, limit: int) -> int:
        """How many items of ``direction`` are due at ``now``, counted up to ``limit``."""
        return int(self.x(
            "SELECT COUNT(*) FROM (SELECT 1 FROM queue WHERE {W}direction = ? AND "
            "state = 'ready' AND next_at <= ? LIMIT ?) due", (direction, now, limit),
        ).fetchone()[0])

    def due_upto(self, direction: str, now: float, gen: int) -> bool:
        """Whether an item of ``direction`` queued as ``gen`` or before is due at ``now``."""
        return bool(self.x(
            "SELECT EXISTS (SELECT 1 FROM queue WHERE {W}direction = ? AND state = 'ready' "
            "AND next_at <= ? AND gen <= ?)", (direction, now, gen)).fetchone()[0])

    # the journal of bulk jobs in flight (``recsync.state.bulkjobs``) -------------------------
    def bulk_pending(self, scope: str) -> bool:
        return bool(self.x("SELECT EXISTS (SELECT 1 FROM bulk_jobs WHERE {W}scope = ?)",
                           (scope,)).fetchone()[0])

    def bulk_jobs(self, scope: str) -> list[tuple[str, str, str, str, float]]:
        return [tuple(r) for r in self.x(  # type: ignore[misc]
            "SELECT job_id, scope, operation, rows, created_at FROM bulk_jobs "
            "WHERE {W}scope = ? ORDER BY created_at, job_id", (scope,)).fetchall()]

    def add_bulk_job(self, job_id: str, scope: str, operation: str, rows: str,
                     at: float) -> None:
        self.x("DELETE FROM bulk_jobs WHERE {W}job_id = ?", (job_id,))
        self.x("INSERT INTO bulk_jobs (job_id, scope, operation, rows, created_at) "
               "VALUES (?, ?, ?, ?, ?)", (job_id, scope, operation, rows, at))

    def drop_bulk_jobs(self, job_ids: Sequence[str]) -> None:
        for _ in self._in("DELETE FROM bulk_jobs WHERE {W}job_id IN {IN}", list(job_ids)):
            pass

    def queued(self, keys: Sequence[str]) -> dict[tuple[str, str], QueuedRow]:
        found: dict[tuple[str, str], QueuedRow] = {}
        for cur in self._in(
                "SELECT key, op, content, hash, modified, state, src_hash, direction, "
                "attempts > 0 OR last_error IS NOT NULL FROM queue "
                "WHERE {W}direction IN ('a_to_b', 'b_to_a') AND key IN {IN}", keys):
            for row in map(QueuedRow._make, cur):
                found[(row.direction, row.key)] = row
        return found

    def queued_keys(self, direction: str, keys: Sequence[str]) -> set[str]:
        """Of ``keys``, those with an item of ``direction`` queued (in any state)."""
        if not self.has_queued(direction):
            return set()
        return {r[0] for cur in self._in(
            "SELECT key FROM queue WHERE {W}direction = ? AND key IN {IN}", keys,
            (direction,)) for r in cur}

    _QUEUE_INSERT = ("INSERT INTO queue (direction, key, op, content, hash, src_hash, "
                     "modified, observed, gen, state, attempts, next_at, enqueued_at, "
                     "updated_at)")

    def put_queue(self, rows: Sequence[NewItem], now: float) -> None:
        """Queue ``rows`` ready now, replacing queued or failed work of the same record."""
        self.rows(
            self._QUEUE_INSERT, [(*r, "ready", 0, now, now, now) for r in rows],
            "ON CONFLICT ({K}direction, key) DO UPDATE SET op = excluded.op, "
            "content = excluded.content, hash = excluded.hash, src_hash = excluded.src_hash, "
            "modified = excluded.modified, "
            "observed = excluded.observed, gen = excluded.gen, state = 'ready', attempts = 0, "
            "next_at = excluded.next_at, last_error = NULL, updated_at = excluded.updated_at")

    def hold_deletes(self, direction: str, keys: Sequence[str]) -> None:
        """The queued deletes of ``keys`` wait (state ``held``: not leased, not pending)
        until ``release_deletes``; a newer change of the record replaces one."""
        for _ in self._in("UPDATE queue SET state = 'held' WHERE {W}direction = ? "
                          "AND op = 'delete' AND state = 'ready' AND key IN {IN}",
                          keys, (direction,)):
            pass

    def release_deletes(self, direction: str, now: float) -> None:
        self.x("UPDATE queue SET state = 'ready', next_at = ?, updated_at = ? "
               "WHERE {W}direction = ? AND state = 'held'", (now, now, direction))

    def add_queue(self, rows: Sequence[NewItem], now: float) -> None:
        """Queue ``rows`` where the record has no queued item of that direction yet."""
        self.rows(self._QUEUE_INSERT, [(*r, "ready", 0, now, now, now) for r in rows],
                  "ON CONFLICT ({K}direction, key) DO NOTHING")

    def unqueue(self, pairs: Sequence[tuple[str, str]]) -> None:
        """Drop the queued items (direction, key)."""
        self.xm("DELETE FROM queue WHERE {W}direction = ? AND key = ?", pairs)

    def unqueue_done(self, rows: Sequence[Done]) -> None:
        """Drop the items written (a newer change of the record, another gen, stays).

        One DELETE per direction and chunk of keys, found by the key index (``key IN``;
        alone, ``(direction, key, gen) IN (VALUES ...)`` is planned by SQLite as a scan of
        the whole queue, O(queue) per batch). Not one DELETE per item: each statement or
        step lets go of the GIL, and the queue actor, on the path of every record, then
        waits for a busy connector thread to hand it back."""
        for direction in {r.direction for r in rows}:
            done = [(r.key, r.gen) for r in rows if r.direction == direction]
            for part in chunks(done):
                sql = self._in_sql.get(("unqueue_done", len(part)))
                if sql is None:
                    sql = self._in_sql[("unqueue_done", len(part))] = self._text(
                        "DELETE FROM queue WHERE {W}direction = ? AND key IN ("
                        + ",".join("?" * len(part)) + ") AND (key, gen) IN (VALUES "
                        + ", ".join(["(?, ?)"] * len(part)) + ")")
                self._run(sql, [direction, *(k for k, _g in part), *chain.from_iterable(part)])

    def unqueue_older(self, direction: str, keys: Sequence[str], before: float) -> None:
        """Drop the ready (or held) items of ``keys`` observed before ``before``."""
        for _ in self._in("DELETE FROM queue WHERE {W}direction = ? AND key IN {IN} "
                          "AND observed < ? AND state IN ('ready', 'held')", keys, (direction,),
                          (before,)):
            pass  # one statement per chunk (see unqueue_done)

    def unqueue_rekeys(self, direction: str, keys: Sequence[str]) -> None:
        """The rekeys of ``keys`` are done (their new keys reached the source)."""
        self.xm("DELETE FROM rekeys WHERE {W}direction = ? AND key = ?",
                [(direction, k) for k in keys])

    def attempts(self, direction: str, keys: Sequence[str]) -> dict[str, int]:
        return {r[0]: r[1] for cur in self._in(
            "SELECT key, attempts FROM queue WHERE {W}direction = ? AND key IN {IN}", keys,
            (direction,)) for r in cur}

    def fail(self, direction: str, key: str, gen: int, attempts: int, error: str | None,
             now: float) -> None:
        self.x("UPDATE queue SET state = 'failed', attempts = ?, last_error = ?, "
               "updated_at = ? WHERE {W}direction = ? AND key = ? AND gen = ?",
               (attempts, error, now, direction, key, gen))

    def retry(self, rows: Sequence[Retry]) -> None:
        # a deferral (no error of its own) keeps the error the record last met
        self.xm("UPDATE queue SET state = 'ready', attempts = attempts + ?, next_at = ?, "
                "last_error = COALESCE(?, last_error), updated_at = ? "
                "WHERE {W}direction = ? AND key = ?", rows)

    def lease(self, direction: Direction, now: float, limit: int,
              rekeys: bool) -> list[LeasedRow]:
        target = target_of(direction)
        join = " AND l.pipeline = q.pipeline" if self._scope else ""
        scope = "q." + self._scope + " AND " if self._scope else ""
        rekey = ("(SELECT r.old_key FROM rekeys r WHERE r.direction = q.direction "
                 f"AND r.key = q.key{join.replace('l.', 'r.')})" if rekeys else "NULL")
        rows = self.x(
            "SELECT q.key, q.op, q.content, q.hash, q.modified, q.gen, q.attempts, "
            f"CASE WHEN l.stale = 1 THEN NULL ELSE l.{target}_hash END, q.src_hash, {rekey}, "
            f"l.{target}_hash IS NOT NULL "
            f"FROM queue q LEFT JOIN links l ON l.key = q.key{join} "
            f"WHERE {scope}q.direction = ? AND q.state = 'ready' AND q.next_at <= ? "
            "ORDER BY q.next_at LIMIT ?", (direction, now, limit)).fetchall()
        return list(map(LeasedRow._make, rows))

    def failed_keys(self) -> list[str]:
        """The failed items' keys (not the unreadable records')."""
        return [r[0] for r in self.x("SELECT key FROM queue WHERE {W}state = 'failed' "
                                     "AND op != 'unreadable'")]

    def retry_keys(self, keys: Sequence[str], now: float) -> tuple[int, list[str]]:
        """Make the failed items of ``keys`` ready again: how many, and their keys (the
        other keys were not failed: nothing done for them)."""
        failed = [r[0] for cur in self._in(
            "SELECT DISTINCT key FROM queue WHERE {W}state = 'failed' AND op != 'unreadable' "
            "AND key IN {IN}", keys) for r in cur.fetchall()]
        n = 0
        for cur in self._in(
                "UPDATE queue SET state = 'ready', attempts = 0, next_at = ?, updated_at = ? "
                "WHERE {W}state = 'failed' AND op != 'unreadable' AND key IN {IN}",
                failed, (now, now)):
            n += cur.rowcount
        return n, failed

    # reads of the store and of the control plane -------------------------------------------------
    def queue_counts(self) -> list[tuple[str, str, int]]:
        """(direction, state, items) of the queue."""
        return [(d, s, int(n)) for d, s, n in self.x(
            "SELECT direction, state, COUNT(*) FROM queue{WH} GROUP BY direction, state")]

    def next_due(self) -> float | None:
        row = self.x("SELECT MIN(next_at) FROM queue WHERE {W}state = 'ready'").fetchone()
        return None if row[0] is None else float(row[0])

    def has_pending(self) -> bool:
        return bool(self.x("SELECT EXISTS (SELECT 1 FROM queue WHERE {W}state = 'ready')")
                    .fetchone()[0])

    def pending_and_cursors(self) -> tuple[bool, str | None, str | None]:
        """``has_pending`` and both sides' cursors, in one statement."""
        pending, a, b = self.x(
            "SELECT EXISTS (SELECT 1 FROM queue WHERE {W}state = 'ready'), "
            "(SELECT cursor FROM cursors WHERE {W}side = 'a'), "
            "(SELECT cursor FROM cursors WHERE {W}side = 'b')").fetchone()
        return bool(pending), a, b

    def pending_count(self) -> int:
        """Work queued, held deletes included (what status shows as pending)."""
        return int(self.x("SELECT COUNT(*) FROM queue WHERE {W}state != 'failed'")
                   .fetchone()[0])

    def pending_keys(self) -> set[str]:
        """Keys with work queued, held deletes included (verify leaves them alone)."""
        return {r[0] for r in self.x("SELECT key FROM queue WHERE {W}state != 'failed'")}

    def failed(self, limit: int) -> list[FailedRow]:
        return [FailedRow(*r) for r in self.x(
            "SELECT key, direction, attempts, last_error, updated_at FROM queue "
            "WHERE {W}state = 'failed' ORDER BY updated_at DESC LIMIT ?", (limit,))]

    def record(self, key: str, history_limit: int) -> RecordRows:
        link = self.x("SELECT a_hash, b_hash, synced_at FROM links WHERE {W}key = ?",
                      (key,)).fetchone()
        items = [ItemRow(*r) for r in self.x(
            "SELECT direction, state, attempts, last_error, op FROM queue WHERE {W}key = ? "
            "ORDER BY state = 'failed' DESC", (key,))]
        return RecordRows(None if link is None else tuple(link), items,  # type: ignore[arg-type]
                          self.history_of(key, history_limit))

    def history_of(self, key: str, limit: int) -> list[tuple[float, str, str | None,
                                                             str | None]]:
        """A record's newest ``limit`` history entries, newest first."""
        return [tuple(r) for r in self.x(  # type: ignore[misc]
            "SELECT at, event, detail, direction FROM history WHERE {W}key = ? "
            "ORDER BY id DESC LIMIT ?", (key, limit))]

    # history retention --------------------------------------------------------------------------
    def prune_history(self, cutoff: float, since: int, per_record: int) -> tuple[int, int]:
        """Drop entries older than ``cutoff`` and all but the newest ``per_record`` of each
        record with entries after id ``since``: (entries dropped, the newest id)."""
        top = int(self.x("SELECT COALESCE(MAX(id), 0) FROM history{WH}").fetchone()[0])
        # ids grow with time: the old entries are the first ones
        row = self.x("SELECT id FROM history WHERE {W}at >= ? ORDER BY id LIMIT 1",
                     (cutoff,)).fetchone()
        gone = int(self.x("DELETE FROM history WHERE {W}id < ?",
                          (top + 1 if row is None else row[0],)).rowcount)
        if top > since:
            # Per record with entries after ``since``: its (per_record + 1)-th newest id
            # (``cut``), found on the index (key, id), and the entries up to it go. The
            # recent keys are read by id (``key || ''``: else SQLite walks the whole index
            # for the DISTINCT). ``cut`` is looked up once per record, not once per entry
            # of it: 100k records with two entries each, 0.22 -> 0.13 s (with one each,
            # 1.43G -> 1.24G instructions); ranking every entry with ROW_NUMBER(): 0.31 s.
            gone += int(self.x(
                "DELETE FROM history WHERE {W}id IN (SELECT h.id FROM "
                "(SELECT d.key, (SELECT x.id FROM history x WHERE {W}x.key = d.key "
                "ORDER BY x.id DESC LIMIT 1 OFFSET ?) AS cut FROM "
                "(SELECT DISTINCT key || '' AS key FROM history WHERE {W}id > ?) AS d) AS k "
                "JOIN history h ON h.key = k.key AND h.id <= k.cut "
                "WHERE {W}k.cut IS NOT NULL)", (per_record, since)).rowcount)
        return gone, top


_json_encode = msgspec.json.Encoder().encode
_event_detail = itemgetter(1, 2)
_JSON_RUN = 16  # shorter runs of history rows are bound as values, with their neighbours
_links_decode = msgspec.json.Decoder(list[LinkRow]).decode


class SqliteBackend(SqlBackend):
    """A pipeline's own state file (WAL; see ``recsync.state.schema``)."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        super().__init__()
        self.path = path
        self.where = f"state file {path}"
        self._readonly = readonly
        self.db: sqlite3.Connection = connect(path, readonly=readonly)

    def _run(self, sql: str, params: Sequence[Any]) -> Any:
        return self.db.execute(sql, params)

    def xm(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self.db.executemany(self._text(sql), rows)

    def links(self, keys: Sequence[str], observed: float) -> dict[str, LinkRow]:
        """As ``SqlBackend.links``, fetched as one JSON value. Python's sqlite3 lets go of
        the GIL for every row it steps to and every column it reads (7 times per link):
        on a busy daemon, each time the queue actor, on the path of every record, may
        wait for another thread to hand it back. One value: 2 such waits per page of
        1,000 instead of 7,000, and 15k -> 10k instructions per key (callgrind). The
        values are text and integers, exact in JSON (the times are compared in SQL)."""
        if not keys:
            return {}
        doc = self.db.execute(
            "SELECT json_group_array(json_array(l.key, l.a_hash, l.b_hash, "
            "l.a_written > ?, l.b_written > ?, l.stale)) "
            "FROM json_each(?) AS j JOIN links AS l ON l.key = j.value",
            (observed, observed, _json_encode(list(keys)))).fetchone()[0]
        return {link.key: link for link in _links_decode(doc)}

    def add_history(self, rows: Iterable[tuple[str, str, str | None]], at: float,
                    direction: str | None) -> None:
        """As ``SqlBackend.add_history``; a run of rows with one event and detail (a page of
        creates) goes as one JSON list of keys that SQLite makes the rows of, in order,
        instead of five values bound per row while holding the GIL (100,000 rows in pages
        of 1,000: 0.13 s of CPU instead of 0.24 s)."""
        few: list[tuple[str, str, str | None]] = []
        for (event, detail), run in groupby(rows, key=_event_detail):
            keys = [r[0] for r in run]
            if len(keys) < _JSON_RUN:
                few.extend((k, event, detail) for k in keys)
                continue
            super().add_history(few, at, direction)
            few = []
            self.db.execute(
                "INSERT INTO history (key, at, event, detail, direction) "
                "SELECT value, ?, ?, ?, ? FROM json_each(?)",
                (at, event, detail, direction, _json_encode(keys)))
        super().add_history(few, at, direction)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            if self.fence is not None:
                self.fence(self)
            yield
            self.db.execute("COMMIT")
        except BaseException:
            rollback(self.db)
            raise

    def close(self) -> None:
        self.db.close()

    def changes(self) -> int:
        return self.db.total_changes  # autocommitted writes count too

    def history_of(self, key: str, limit: int) -> list[tuple[float, str, str | None,
                                                             str | None]]:
        try:
            return super().history_of(key, limit)
        except sqlite3.OperationalError:  # a state file of an earlier recsync, not opened yet
            return [(*r, None) for r in self.db.execute(
                "SELECT at, event, detail FROM history WHERE key = ? ORDER BY id DESC "
                "LIMIT ?", (key, limit))]
