"""The durable store of one pipeline: queue, links, cursors, history (see ``schema``).

Only the pipeline's queue actor writes it, from one thread. Every method that changes
state runs in one transaction, so ``kill -9`` at any point leaves a consistent file.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from recsync import rules as rules_mod
from recsync.clock import Clock, SystemClock
from recsync.messages import Direction, ItemOutcome, Prepared, Side, Unreadable, WorkItem
from recsync.resilience import backoff_delay
from recsync.rules import RuleSet
from recsync.sqlbulk import execute_rows, values_marks
from recsync.state import rekeys as rekeys_mod
from recsync.state import unreadable as unreadable_mod
from recsync.state.errors import rollback, state_error, translate
from recsync.state.schema import connect

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(dict[str, Any]).decode
CHUNK = 900  # keys per IN (...) query
_QUEUE_INSERT = (
    "INSERT INTO queue (direction, key, op, content, hash, src_hash, modified, observed, "
    "gen, state, attempts, next_at, enqueued_at, updated_at)"
)


def other(side: Side) -> Side:
    return "b" if side == "a" else "a"


def direction_from(side: Side) -> Direction:
    return "a_to_b" if side == "a" else "b_to_a"


def _chunks(seq: Sequence[str]) -> Iterator[Sequence[str]]:
    for i in range(0, len(seq), CHUNK):
        yield seq[i : i + CHUNK]


@dataclass
class EnqueueStats:
    queued: int = 0
    unchanged: int = 0
    filtered: int = 0
    stale: int = 0
    conflicts: int = 0
    deletes: int = 0
    # Deletes of records linked on the other side: what the mass-delete guard counts. A
    # delete of a record the other side never got deletes nothing there.
    linked_deletes: int = 0
    guarded: int = 0  # deletes held back by the mass-delete guard
    # Set when the page went to the write lane directly (see ``enqueue``): the items to
    # write now; nothing of them, nor the cursor, is on disk until ``apply`` gets them back.
    direct: list[WorkItem] | None = None
    # With ``direct_only``: the page would not have gone direct, and nothing was recorded.
    declined: bool = False
    # records of the page that cannot be read and were not recorded as failed before
    unreadable: list[Unreadable] = field(default_factory=list)
    # the listing that ended met an unreadable record that may be a linked one: the
    # records it did not list were not taken as deleted
    deletes_skipped: bool = False


@dataclass(frozen=True)
class DirectPage:
    """A page handed straight to the writer: what ``apply`` must make durable with it."""

    side: Side
    cursor: str | None
    observed: float
    items: dict[str, WorkItem]


@dataclass
class ApplyStats:
    synced: int = 0
    retried: int = 0
    failed: int = 0
    deferred: int = 0
    conflicts: int = 0
    failed_keys: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    base_delay: float = 1.0
    max_delay: float = 300.0


class MassDeleteBlocked(Exception):
    """Raised inside ``enqueue`` when a pass would delete too much; nothing is committed."""

    def __init__(self, side: Side, count: int, total: int) -> None:
        super().__init__(side, count, total)
        self.side, self.count, self.total = side, count, total


def _expected(link: tuple[Any, ...] | None, target_i: int) -> str | None:
    """The target's hash as last known, for the writer's conflict check (``lease``)."""
    return None if link is None or link[7] else link[target_i]


class Store:
    def __init__(self, path: Path, clock: Clock | None = None) -> None:
        self.path = path
        self.clock = clock or SystemClock()
        try:
            self.db = connect(path)
            row = self.db.execute("SELECT COALESCE(MAX(gen), 0) FROM queue").fetchone()
        except (sqlite3.Error, OSError) as exc:
            raise state_error(path, exc) from exc
        self._gen = int(row[0])
        self._sql_cache: dict[tuple[str, str, int], str] = {}
        self._rekeys = rekeys_mod.pending(self.db)  # see recsync.state.rekeys

    def close(self) -> None:
        self.db.close()

    # ---- small helpers -------------------------------------------------------------------
    def _rows(self, rows: Sequence[Sequence[Any]], head: str, tail: str = "") -> None:
        """``head VALUES (...), (...) tail`` over ``rows``, many rows per statement."""
        if not rows:
            return
        width = len(rows[0])

        def sql_for(n: int) -> str:
            sql = self._sql_cache.get((head, tail, n))
            if sql is None:
                sql = self._sql_cache[(head, tail, n)] = (
                    f"{head} VALUES {values_marks(width, n)} {tail}")
            return sql

        execute_rows(self.db, sql_for, rows)

    def _next_gen(self) -> int:
        self._gen += 1
        return self._gen

    @translate
    def meta(self, name: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return default if row is None else row[0]

    def _set_meta(self, name: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, value))

    def _bump(self, name: str, by: int) -> None:
        if by:
            self.db.execute(
                "INSERT INTO meta (name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                (name, by),
            )

    def _history(self, rows: Iterable[tuple[str, str, str | None]],
                 direction: str | None = None) -> None:
        now = self.clock.time()
        self._rows([(k, now, e, d, direction) for k, e, d in rows],
                   "INSERT INTO history (key, at, event, detail, direction)")

    @translate
    def cursor(self, side: Side) -> str | None:
        row = self.db.execute("SELECT cursor FROM cursors WHERE side = ?", (side,)).fetchone()
        return None if row is None else row[0]

    def _links(self, keys: Sequence[str]) -> dict[str, tuple[Any, ...]]:
        found: dict[str, tuple[Any, ...]] = {}
        for part in _chunks(keys):
            marks = ",".join("?" * len(part))
            for row in self.db.execute(
                "SELECT key, a_hash, b_hash, a_modified, b_modified, a_written, b_written, "
                f"stale FROM links WHERE key IN ({marks})",
                part,
            ):
                found[row[0]] = row
        return found

    def _pending(self, keys: Sequence[str]) -> dict[tuple[str, str], tuple[Any, ...]]:
        """Queued items of both directions for ``keys``, by (direction, key)."""
        found: dict[tuple[str, str], tuple[Any, ...]] = {}
        for part in _chunks(keys):
            marks = ",".join("?" * len(part))
            for row in self.db.execute(
                "SELECT key, op, content, hash, modified, state, src_hash, direction, "
                "attempts > 0 OR last_error IS NOT NULL FROM queue "
                f"WHERE direction IN ('a_to_b', 'b_to_a') AND key IN ({marks})",
                part,
            ):
                found[(row[7], row[0])] = row
        return found

    # ---- enqueue ------------------------------------------------------------------------
    @translate
    def enqueue(
        self,
        side: Side,
        changes: Sequence[Prepared],
        cursor: str | None,
        observed: float,
        ruleset: RuleSet,
        *,
        listing_start: bool = False,
        listing_done: bool = False,
        in_flight: dict[str, frozenset[str]] | None = None,
        mass_delete_share: float = 0.0,
        mass_delete_min: int = 10,
        save_cursor: bool = True,
        direct_limit: int = 0,
        direct_only: bool = False,
        unreadable: Sequence[Unreadable] = (),
        unreadable_all: bool = False,
    ) -> EnqueueStats:
        """Record a page of changes from ``side`` and the cursor after it, atomically.

        ``save_cursor`` is False for changes submitted from outside (``sync event``).

        With ``direct_limit`` > 0, a page whose work is plain (nothing queued anywhere, no
        conflict, no delete, at most ``direct_limit`` items) is
        not queued: its items come back in ``stats.direct`` to be written at once, and
        neither they nor the cursor are saved. The caller hands them to ``apply`` with a
        ``DirectPage``, which saves the outcome and the cursor in one transaction; after a
        crash in between, the page is read again from the previous cursor. This spares
        the initial load of a big table a queue row per record.

        With ``direct_only``, a page that would not go direct is not recorded at all
        (``stats.declined``): the caller enqueues it again later.

        ``unreadable`` records become failed records (see ``recsync.state.unreadable``).

        Raises:
            MassDeleteBlocked: the page (or the end of a listing) would delete more than
                ``mass_delete_share`` of the records linked on the other side. Only deletes
                of such records count: a delete of a record the other side never got
                cancels its queued create (deletes nothing there).
        """
        stats = EnqueueStats()
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            if listing_start:
                unreadable_mod.start_listing(db, side)
                db.execute("DELETE FROM listing_seen WHERE side = ?", (side,))
                # With nothing linked on this side yet, the listing cannot find deletes:
                # skip tracking its keys (the initial load of a big table).
                self._set_meta(f"listing_{side}", observed if self._linked_count(side) else 0)
            listing_since = float(self.meta(f"listing_{side}", 0) or 0)
            if listing_since:
                db.executemany("INSERT OR IGNORE INTO listing_seen VALUES (?, ?)",
                               [(side, c.key) for c in changes])
            if unreadable or unreadable_all:
                stats.unreadable = unreadable_mod.record(
                    db, side, direction_from(side), unreadable, unreadable_all, observed,
                    self.clock.time(), self._next_gen())
                self._history((u.where, "failed", u.reason) for u in stats.unreadable)
                self._bump(f"failed_{direction_from(side)}", len(stats.unreadable))
            # a record named twice in one page: its later change is what the side holds
            work = list({c.key: c for c in changes}.values())
            if listing_done:
                if listing_since and unreadable_mod.listing_hid_keys(db, side):
                    stats.deletes_skipped = True
                elif listing_since:
                    direct_limit = 0  # found deletes cannot be read again after a crash
                    work.extend(self._unlisted_deletes(side, observed, listing_since))
                unreadable_mod.end_listing(db, side, direction_from(side))
                db.execute("DELETE FROM listing_seen WHERE side = ?", (side,))
                self._set_meta(f"listing_{side}", 0)
            flying = in_flight or {}
            self._enqueue_changes(
                side, work, observed, ruleset, stats,
                flying.get(direction_from(side), frozenset()),
                flying.get(direction_from(other(side)), frozenset()), direct_limit)
            if direct_only and stats.direct is None:
                rollback(db)
                return EnqueueStats(declined=True)
            if mass_delete_share > 0 and stats.linked_deletes >= mass_delete_min:
                total = self._linked_count(other(side))
                allowed = int(self.meta(f"allow_deletes_{side}", 0) or 0)
                if stats.linked_deletes > mass_delete_share * total and not allowed:
                    raise MassDeleteBlocked(side, stats.linked_deletes, total)
                if allowed:
                    self._set_meta(f"allow_deletes_{side}", 0)
            if save_cursor and stats.direct is None:
                db.execute(
                    "INSERT OR REPLACE INTO cursors (side, cursor) VALUES (?, ?)", (side, cursor)
                )
            db.execute("COMMIT")
        except BaseException:
            rollback(db)
            raise
        return stats

    def _linked_count(self, side: Side) -> int:
        row = self.db.execute(f"SELECT COUNT(*) FROM links WHERE {side}_hash IS NOT NULL")
        return int(row.fetchone()[0])

    def _unlisted_deletes(self, side: Side, observed: float, since: float) -> list[Prepared]:
        """Linked records the listing did not see: deleted, unless we wrote them after
        the listing began (the listing may have passed their place before they existed)."""
        rows = self.db.execute(
            f"SELECT key FROM links WHERE {side}_hash IS NOT NULL "
            f"AND ({side}_written IS NULL OR {side}_written < ?) AND key NOT IN "
            "(SELECT key FROM listing_seen WHERE side = ?)",
            (since, side),
        )
        return [Prepared(r[0], "delete", None, None, True, observed) for r in rows]

    def _enqueue_changes(
        self,
        side: Side,
        changes: Sequence[Prepared],
        observed: float,
        ruleset: RuleSet,
        stats: EnqueueStats,
        in_flight_same: frozenset[str],
        in_flight_opposite: frozenset[str],
        direct_limit: int = 0,
    ) -> None:
        if self._rekeys:
            waiting = rekeys_mod.old_keys(self.db, [c.key for c in changes])
            if waiting:  # the write of the record's new key carries its content
                stats.stale += len(waiting)
                changes = [c for c in changes if c.key not in waiting]
        if not changes:
            return
        o = other(side)
        direction, back = direction_from(side), direction_from(o)
        keys = [c.key for c in changes]
        links = self._links(keys)
        queued = self._has_queued()
        if (not links and not queued and not in_flight_same and not in_flight_opposite
                and len(changes) <= direct_limit
                and self._all_new_direct(side, changes, ruleset, stats)):
            return
        pending = self._pending(keys) if queued else {}
        now = self.clock.time()
        si, oi = (1, 2) if side == "a" else (2, 1)  # hash columns in a links row
        written_i = 5 if side == "a" else 6
        link_rows: list[tuple[str, Side, str | None, float]] = []
        # (direction, key, content, hash, src_hash, modified, observed)
        queue_rows: list[tuple[Any, ...]] = []
        drop: list[tuple[str, str]] = []
        history: list[tuple[str, str, str | None]] = []
        allowed = rules_mod.compile_rules(ruleset).op_allowed
        for c in changes:
            link = links.get(c.key)
            own_hash = link[si] if link else None
            other_hash = link[oi] if link else None
            same = pending.get((direction, c.key))
            if link and link[written_i] is not None and observed < link[written_i]:
                stats.stale += 1  # seen before our last write to this side: superseded
                continue
            if c.op == "upsert":
                if (link and c.hash == own_hash) or (same and same[6] == c.hash):
                    stats.unchanged += 1  # already synced, or already queued
                    continue
                if not c.passes:
                    stats.filtered += 1
                    continue
                if link and c.hash == other_hash:
                    link_rows.append((c.key, side, c.hash, c.modified))
                    stats.unchanged += 1
                    continue
                op = "update" if other_hash is not None else "create"
            else:
                if link is not None and own_hash is not None:
                    link_rows.append((c.key, side, None, c.modified))
                if other_hash is None:  # the other side never got it
                    if same is not None and c.key not in in_flight_same:
                        stats.deletes += 1
                        if same[8] and same[1] == "upsert" and allowed(direction, "delete"):
                            # A write of it was tried and may have landed after all (a
                            # dropped answer): a delete instead, a no-op if it did not.
                            stats.queued += 1
                            queue_rows.append((direction, c.key, None, None, None,
                                               c.modified, observed))
                        else:
                            drop.append((direction, c.key))  # cancel the queued create
                    if same is None or c.key not in in_flight_same:
                        continue
                op = "delete"
            if not allowed(direction, op):  # type: ignore[arg-type]
                stats.filtered += 1
                continue
            content, chash, src_hash = c.content, c.hash, c.hash
            pend = pending.get((back, c.key))
            if pend is not None and pend[5] == "ready" and c.key not in in_flight_opposite:
                stats.conflicts += 1
                their = _decode(pend[2]) if pend[2] is not None else None
                mine = (side, content, c.modified), (o, their, pend[4])
                (_, a_rec, a_mod), (_, b_rec, b_mod) = sorted(mine, key=lambda t: t[0])
                winner, result = rules_mod.resolve_conflict(ruleset, a_rec, a_mod, b_rec, b_mod)
                history.append((c.key, "conflict", f"{side} and {o} both changed; {winner} wins"))
                # both sides' current contents are known now: the loser will be overwritten
                link_rows.append((c.key, side, c.hash, c.modified))
                if pend[6] is not None:
                    link_rows.append((c.key, o, pend[6], pend[4]))
                if winner == o:
                    continue  # their pending item will overwrite this side
                drop.append((back, c.key))
                if winner != side:  # merged: both sides get the merge
                    content = result
                    chash = rules_mod.content_hash(result) if result is not None else None
                    queue_rows.append((back, c.key, content, chash, None, now, now))
                    src_hash = None
            if c.op == "delete" or content is None:
                stats.deletes += 1
                if other_hash is not None:
                    stats.linked_deletes += 1
            stats.queued += 1
            queue_rows.append((direction, c.key, content, chash, src_hash, c.modified, observed))
        self._save_links(link_rows)
        # Deletes never go direct: their link change above is committed now, and a page
        # that came back as a listing after a crash could no longer find them.
        if (0 < len(queue_rows) <= direct_limit and not queued and not drop and not history
                and not stats.deletes and not in_flight_same and not in_flight_opposite):
            stats.direct = [
                WorkItem(key, "upsert", content, chash, mod, self._next_gen(), 0,
                         _expected(links.get(key), oi), src_hash)
                for _d, key, content, chash, src_hash, mod, _obs in queue_rows
            ]
            return
        self.db.executemany("DELETE FROM queue WHERE direction = ? AND key = ?", drop)
        self._put_queue([self._row(*r) for r in queue_rows], now)
        if history:
            self._history(history, direction)
        self._bump("conflicts", stats.conflicts)

    def _all_new_direct(
        self, side: Side, changes: Sequence[Prepared], ruleset: RuleSet, stats: EnqueueStats,
    ) -> bool:
        """The usual page of an initial load, the short way: records the pipeline has never
        linked, nothing queued or in flight, all upserts (``enqueue`` keeps one change per
        key). They go direct as creates (``stats.direct``), or are filtered out. False: take
        the general path."""
        if not rules_mod.compile_rules(ruleset).op_allowed(direction_from(side), "create"):
            return False
        gen = self._gen
        items = []
        filtered = 0
        for c in changes:
            if c.op != "upsert":
                return False
            if not c.passes:
                filtered += 1
                continue
            gen += 1
            items.append(WorkItem(c.key, "upsert", c.content, c.hash, c.modified, gen, 0,
                                  None, c.hash))
        self._gen = gen
        stats.filtered += filtered
        stats.queued = len(items)
        stats.direct = items or None
        return True

    def _has_queued(self) -> bool:
        return bool(self.db.execute("SELECT EXISTS (SELECT 1 FROM queue)").fetchone()[0])

    def _row(
        self, direction: str, key: str, content: Any, chash: str | None, src_hash: str | None,
        mod: float, obs: float,
    ) -> tuple[Any, ...]:
        op = "delete" if content is None else "upsert"
        blob = None if content is None else _encode(content)
        return (direction, key, op, blob, chash, src_hash, mod, obs, self._next_gen())

    def _put_queue(self, rows: list[tuple[Any, ...]], now: float) -> None:
        self._rows(
            [(*r, "ready", 0, now, now, now) for r in rows], _QUEUE_INSERT,
            "ON CONFLICT (direction, key) DO UPDATE SET op = excluded.op, "
            "content = excluded.content, hash = excluded.hash, src_hash = excluded.src_hash, "
            "modified = excluded.modified, "
            "observed = excluded.observed, gen = excluded.gen, state = 'ready', attempts = 0, "
            "next_at = excluded.next_at, last_error = NULL, updated_at = excluded.updated_at",
        )

    def _save_links(self, rows: list[tuple[str, Side, str | None, float]]) -> None:
        for side in ("a", "b"):
            part = [(k, h, m) for k, s, h, m in rows if s == side]
            self._rows(
                part, f"INSERT INTO links (key, {side}_hash, {side}_modified)",
                f"ON CONFLICT (key) DO UPDATE SET {side}_hash = excluded.{side}_hash, "
                f"{side}_modified = excluded.{side}_modified")

    # ---- lease and results --------------------------------------------------------------
    @translate
    def lease(self, direction: Direction, limit: int, exclude: frozenset[str]) -> list[WorkItem]:
        """Up to ``limit`` due items (oldest due first), skipping keys in ``exclude``.

        Nothing is written: which items are in flight is the caller's to remember (after a
        crash none is), so leasing costs one read.
        """
        now = self.clock.time()
        target = "b" if direction == "a_to_b" else "a"
        rekey = ("(SELECT r.old_key FROM rekeys r WHERE r.direction = q.direction "
                 "AND r.key = q.key)" if self._rekeys else "NULL")
        rows = self.db.execute(
            "SELECT q.key, q.op, q.content, q.hash, q.modified, q.gen, q.attempts, "
            f"CASE WHEN l.stale THEN NULL ELSE l.{target}_hash END, q.src_hash, {rekey} "
            "FROM queue q LEFT JOIN links l ON l.key = q.key "
            "WHERE q.direction = ? AND q.state = 'ready' AND q.next_at <= ? "
            "ORDER BY q.next_at LIMIT ?",
            (direction, now, limit + len(exclude)),
        ).fetchall()
        return [
            WorkItem(r[0], r[1], None if r[2] is None else _decode(r[2]), r[3], r[4], r[5], r[6],
                     r[7], r[8], r[9])
            for r in rows
            if r[0] not in exclude
        ][:limit]

    @translate
    def apply(
        self,
        direction: Direction,
        outcomes: Sequence[ItemOutcome],
        policy: RetryPolicy,
        written_at: float,
        direct: DirectPage | None = None,
    ) -> ApplyStats:
        """Record what became of a leased batch, atomically.

        ``written_at`` is when the write call returned: changes observed on the target
        before it may predate the write and lose to it (the writer checked for conflicts).
        For a page ``enqueue`` passed on directly, ``direct`` brings its items and cursor:
        the items that did not sync are queued (to retry, or failed) and the cursor saved.
        """
        stats = ApplyStats()
        now = self.clock.time()
        target: Side = "b" if direction == "a_to_b" else "a"
        back = direction_from(target)
        source = other(target)
        db = self.db
        failing = [o.key for o in outcomes if o.status in ("retry", "rejected")]
        attempts = {
            r[0]: r[1]
            for part in _chunks(failing)
            for r in db.execute(
                f"SELECT key, attempts FROM queue WHERE direction = ? AND key IN "
                f"({','.join('?' * len(part))})",
                (direction, *part),
            )
        }
        done: list[tuple[str, str, int]] = []
        written: list[tuple[str, str | None, float, float, str | None]] = []
        requeue: list[tuple[Any, ...]] = []
        history: list[tuple[str, str, str | None]] = []
        retry_rows: list[tuple[Any, ...]] = []
        made: list[ItemOutcome] = []  # created on the target under a key of its own
        db.execute("BEGIN IMMEDIATE")
        try:
            on_target = self._on_side(target, [o.key for o in outcomes if o.status == "synced"])
            if direct is not None:
                self._queue_unsynced(direction, outcomes, direct, now)
            for o in outcomes:
                if o.status == "synced" and o.new_key is not None:
                    stats.synced += 1
                    if direct is None:
                        done.append((direction, o.key, o.gen))
                    made.append(o)
                    requeue.append(self._row(back, o.new_key, o.content, o.hash, o.hash, now,
                                             now))
                elif o.status == "synced":
                    stats.synced += 1
                    if direct is None:
                        done.append((direction, o.key, o.gen))
                    written.append((o.key, o.hash, written_at, now, o.src_hash))
                    op = ("delete" if o.hash is None
                          else "update" if o.key in on_target else "create")
                    if o.winner is not None:
                        stats.conflicts += 1
                        history.append((o.key, "conflict", f"found at write; {o.winner} wins"))
                        history.append((o.key, op, f"after a conflict: {o.winner} wins"))
                        if o.winner == "merged":
                            requeue.append(
                                self._row(back, o.key, o.content, o.hash, o.hash, now, now))
                    else:
                        history.append((o.key, op, None))
                elif o.status == "superseded":
                    stats.conflicts += 1
                    if direct is None:
                        done.append((direction, o.key, o.gen))
                    history.append((o.key, "conflict", f"found at write; {o.winner} wins"))
                    # what each side holds now: the writer's pending copy goes back
                    db.execute(
                        f"UPDATE links SET {target}_hash = ?, "
                        f"{source}_hash = COALESCE(?, {source}_hash) WHERE key = ?",
                        (o.hash, o.src_hash, o.key),
                    )
                    requeue.append(self._row(back, o.key, o.content, o.hash, o.hash, now, now))
                elif o.status == "deferred":
                    stats.deferred += 1
                    retry_rows.append((0, o.retry_at or now, o.error, now, direction, o.key))
                else:
                    tries = attempts.get(o.key, 0) + 1
                    final = o.status == "rejected" or tries >= policy.max_attempts
                    if final:
                        stats.failed += 1
                        stats.failed_keys.append((o.key, o.error or "unknown error"))
                        history.append((o.key, "failed", o.error))
                        db.execute(
                            "UPDATE queue SET state = 'failed', attempts = ?, last_error = ?, "
                            "updated_at = ? WHERE direction = ? AND key = ? AND gen = ?",
                            (tries, o.error, now, direction, o.key, o.gen),
                        )
                    else:
                        stats.retried += 1
                        history.append((o.key, "retry", o.error))
                        delay = backoff_delay(tries, policy.base_delay, policy.max_delay)
                        retry_rows.append((1, now + delay, o.error, now, direction, o.key))
            db.executemany(
                "UPDATE queue SET state = 'ready', attempts = attempts + ?, next_at = ?, "
                "last_error = COALESCE(?, last_error), updated_at = ? "
                "WHERE direction = ? AND key = ?",
                retry_rows,
            )
            self._rows(
                written,
                f"INSERT INTO links (key, {target}_hash, {target}_written, synced_at, "
                f"{source}_hash)",
                f"ON CONFLICT (key) DO UPDATE SET {target}_hash = excluded.{target}_hash, "
                f"{target}_written = excluded.{target}_written, synced_at = excluded.synced_at, "
                "stale = 0, "
                f"{source}_hash = COALESCE(excluded.{source}_hash, {source}_hash)",
            )
            # A newer change that arrived while the item was in flight stays queued.
            self._rows(done, "DELETE FROM queue WHERE (direction, key, gen) IN (", ")")
            # Changes seen on the target before this write landed lost to it (the write
            # checked the target first), so they must not be written back.
            if self._has_ready(back):
                db.executemany(
                    "DELETE FROM queue WHERE direction = ? AND key = ? AND observed < ? "
                    "AND state = 'ready'",
                    [(back, w[0], written_at) for w in written],
                )
            gone = [w[0] for w in written if w[1] is None]
            if gone:
                db.execute(
                    "DELETE FROM links WHERE a_hash IS NULL AND b_hash IS NULL AND key IN "
                    "(SELECT value FROM json_each(?))",
                    (json.dumps(gone),),
                )
            if self._rekeys and written:
                rekeys_mod.written_back(db, direction, [w[0] for w in written])
            if made:
                history.extend(rekeys_mod.link_new_keys(db, made, target, back, written_at,
                                                        now))
                self._rekeys = True
            self._put_queue(requeue, now)
            self._history(history, direction)
            self._bump(f"synced_{direction}", stats.synced)
            self._bump(f"failed_{direction}", stats.failed)
            self._bump("conflicts", stats.conflicts)
            if direct is not None:
                db.execute("INSERT OR REPLACE INTO cursors (side, cursor) VALUES (?, ?)",
                           (direct.side, direct.cursor))
            db.execute("COMMIT")
        except BaseException:
            rollback(db)
            raise
        return stats

    def _queue_unsynced(
        self, direction: Direction, outcomes: Sequence[ItemOutcome], direct: DirectPage,
        now: float,
    ) -> None:
        """Give the items of a direct page that did not sync a queue row (attempts 0), so
        the rest of ``apply`` treats them as leased ones. A newer queued change of the same
        record, submitted meanwhile, is kept."""
        rows = []
        for o in outcomes:
            if o.status in ("retry", "rejected", "deferred"):
                i = direct.items[o.key]  # an upsert: pages with deletes are never direct
                rows.append((direction, i.key, i.op, _encode(i.content), i.hash, i.src_hash,
                             i.modified, direct.observed, o.gen, "ready", 0, now, now, now))
        self._rows(rows, _QUEUE_INSERT, "ON CONFLICT (direction, key) DO NOTHING")

    def _on_side(self, side: Side, keys: Sequence[str]) -> set[str]:
        """Which of ``keys`` the links know to be on ``side`` (before a write changes it)."""
        found: set[str] = set()
        if not keys or not self._any_link():
            return found
        for part in _chunks(keys):
            marks = ",".join("?" * len(part))
            found.update(r[0] for r in self.db.execute(
                f"SELECT key FROM links WHERE {side}_hash IS NOT NULL AND key IN ({marks})",
                part))
        return found

    def _any_link(self) -> bool:
        return bool(self.db.execute("SELECT EXISTS (SELECT 1 FROM links)").fetchone()[0])

    def _has_ready(self, direction: Direction) -> bool:
        row = self.db.execute(
            "SELECT EXISTS (SELECT 1 FROM queue WHERE direction = ? AND state = 'ready')",
            (direction,),
        )
        return bool(row.fetchone()[0])

    # ---- queries ------------------------------------------------------------------------
    @translate
    def counts(self) -> dict[str, int]:
        """Queue depth by state and direction, plus totals kept in meta."""
        out: dict[str, int] = {}
        for direction, state, n in self.db.execute(
            "SELECT direction, state, COUNT(*) FROM queue GROUP BY direction, state"
        ):
            out[f"{state}_{direction}"] = n
        for name, value in self.db.execute(
            "SELECT name, value FROM meta WHERE name LIKE 'synced_%' OR name LIKE 'failed_%' "
            "OR name = 'conflicts'"
        ):
            out[f"total_{name}"] = int(value)
        return out

    @translate
    def next_due(self) -> float | None:
        row = self.db.execute(
            "SELECT MIN(next_at) FROM queue WHERE state = 'ready'"
        ).fetchone()
        return None if row[0] is None else float(row[0])

    @translate
    def has_pending(self) -> bool:
        row = self.db.execute("SELECT EXISTS (SELECT 1 FROM queue WHERE state != 'failed')")
        return bool(row.fetchone()[0])

    @translate
    def pending(self) -> int:
        """Items not yet synced and not failed (ready, waiting for a retry, or in flight)."""
        row = self.db.execute("SELECT COUNT(*) FROM queue WHERE state != 'failed'").fetchone()
        return int(row[0])

    @translate
    def drop_unreadable(self, keys: Sequence[str] | None = None) -> tuple[int, set[Side]]:
        """Drop the failed unreadable records among ``keys`` (all when None): how many,
        and the sides they were on, which must be listed again (see
        ``recsync.state.unreadable``)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            dropped = unreadable_mod.drop(self.db, keys)
            self._history((k, "manual_retry", "listed again") for _d, k in dropped)
            self.db.execute("COMMIT")
        except BaseException:
            rollback(self.db)
            raise
        return len(dropped), {"a" if d == "a_to_b" else "b" for d, _k in dropped}

    @translate
    def retry_failed(self, keys: Sequence[str] | None = None) -> int:
        """Make failed items ready again with fresh attempts (all when ``keys`` is None)."""
        now = self.clock.time()
        self.db.execute("BEGIN IMMEDIATE")
        try:
            if keys is None:
                keys = [r[0] for r in
                        self.db.execute("SELECT key FROM queue WHERE state = 'failed' "
                                           "AND op != 'unreadable'")]
            n = 0
            for part in _chunks(list(keys)):
                marks = ",".join("?" * len(part))
                n += self.db.execute(
                    "UPDATE queue SET state = 'ready', attempts = 0, next_at = ?, "
                    f"updated_at = ? WHERE state = 'failed' AND op != 'unreadable' "
                    f"AND key IN ({marks})",
                    (now, now, *part),
                ).rowcount
            self._history((k, "manual_retry", None) for k in keys)
            self.db.execute("COMMIT")
        except BaseException:
            rollback(self.db)
            raise
        return n

    @translate
    def use_rules(self, fingerprint: str) -> bool:
        """Note the rules in force; when they changed, mark every link's hashes stale.

        Returns True when they changed.
        """
        if self.meta("rules_fingerprint") == fingerprint:
            return False
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("UPDATE links SET stale = 1 WHERE stale = 0")
            self._set_meta("rules_fingerprint", fingerprint)
            self.db.execute("COMMIT")
        except BaseException:
            rollback(self.db)
            raise
        return True

    @translate
    def allow_mass_delete(self, side: Side) -> None:
        self._set_meta(f"allow_deletes_{side}", 1)

    @translate
    def prune_history(self, per_record: int, days: float) -> int:
        """Drop history older than ``days`` and all but the newest ``per_record`` entries of
        each record; returns how many went. Records are looked at when they got entries
        since the last prune (all of them when ``per_record`` changed), so a prune costs
        in proportion to the recent activity, not to the size of the history."""
        db = self.db
        cutoff = self.clock.time() - days * 86400.0
        since = int(self.meta("history_pruned_id", 0) or 0)
        if self.meta("history_pruned_limit") != per_record:
            since = 0
        db.execute("BEGIN IMMEDIATE")
        try:
            top = int(db.execute("SELECT COALESCE(MAX(id), 0) FROM history").fetchone()[0])
            # ids grow with time: the old entries are the first ones
            row = db.execute("SELECT id FROM history WHERE at >= ? ORDER BY id LIMIT 1",
                             (cutoff,)).fetchone()
            gone = db.execute("DELETE FROM history WHERE id < ?",
                              (top + 1 if row is None else row[0],)).rowcount
            if top > since:
                gone += db.execute(
                    "DELETE FROM history WHERE id IN (SELECT id FROM ("
                    "SELECT id, ROW_NUMBER() OVER (PARTITION BY key ORDER BY id DESC) AS n "
                    "FROM history WHERE key IN (SELECT key FROM history WHERE id > ?)) "
                    "WHERE n > ?)", (since, per_record)).rowcount
            self._set_meta("history_pruned_id", top)
            self._set_meta("history_pruned_limit", per_record)
            db.execute("COMMIT")
        except BaseException:
            rollback(db)
            raise
        return gone

    # ---- repair (`recsync verify --repair`) -----------------------------------------------
    @translate
    def repair(
        self,
        items: Sequence[RepairItem],
        *,
        mass_delete_share: float = 0.0,
        mass_delete_min: int = 10,
    ) -> dict[str, int]:
        """Queue the syncs ``recsync verify`` found missing, atomically; returns how many
        were queued per direction.

        Each item's link is first set to what verify saw on each side (so the writer's
        conflict check compares the target with that, and echo suppression knows the
        source's content); then the item is queued as any change is, replacing queued or
        failed work of the same record and direction.

        Raises:
            MassDeleteBlocked: the deletes of one direction are more than
                ``mass_delete_share`` of the records linked on its target (nothing queued).
        """
        db = self.db
        now = self.clock.time()
        deletes: dict[Direction, int] = {"a_to_b": 0, "b_to_a": 0}
        for item in items:
            if item.content is None:
                deletes[item.direction] += 1
        db.execute("BEGIN IMMEDIATE")
        try:
            for direction, count in deletes.items():
                source: Side = "a" if direction == "a_to_b" else "b"
                if mass_delete_share <= 0 or count < mass_delete_min:
                    continue
                total = self._linked_count(other(source))
                allowed = int(self.meta(f"allow_deletes_{source}", 0) or 0)
                if count > mass_delete_share * total and not allowed:
                    raise MassDeleteBlocked(source, count, total)
                if allowed:
                    self._set_meta(f"allow_deletes_{source}", 0)
            for side in ("a", "b"):
                self._rows(
                    [(i.key, i.a_hash if side == "a" else i.b_hash) for i in items],
                    f"INSERT INTO links (key, {side}_hash)",
                    f"ON CONFLICT (key) DO UPDATE SET {side}_hash = excluded.{side}_hash, "
                    "stale = 0")
            self._put_queue(
                [self._row(i.direction, i.key, i.content, i.hash,
                           i.hash if i.content is not None else None, i.modified, now)
                 for i in items], now)
            self._history((i.key, "repair", i.detail) for i in items)
            db.execute("COMMIT")
        except BaseException:
            rollback(db)
            raise
        queued = {"a_to_b": 0, "b_to_a": 0}
        for item in items:
            queued[item.direction] += 1
        return queued

    def pending_keys(self) -> set[str]:
        """Keys with work queued and not failed (being synced)."""
        return {r[0] for r in self.db.execute("SELECT key FROM queue WHERE state != 'failed'")}


@dataclass(frozen=True)
class RepairItem:
    """One sync ``Store.repair`` queues: write ``content`` (A-space; None: delete) in
    ``direction``; ``a_hash``/``b_hash`` are what verify saw on each side (None: absent)."""

    direction: Direction
    key: str
    content: dict[str, Any] | None
    hash: str | None
    modified: float
    a_hash: str | None
    b_hash: str | None
    detail: str = ""
