"""QueueActor: owns the pipeline's store; queues work durably, leases batches, applies results."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import msgspec

from recsync.actors.base import EventSink, FailureSink, PipelineActor, no_events
from recsync.actors.protocol import (
    LISTING_UNIT,
    BatchDone,
    Committed,
    Enqueue,
    Flush,
    Poll,
    WriteBatch,
)
from recsync.clock import Clock
from recsync.config import Settings
from recsync.messages import (
    Direction,
    WorkItem,
    direction_from,
    opposite_of,
    source_of,
    target_of,
)
from recsync.rules import RuleSet
from recsync.state.access import StateAccess
from recsync.state.store import DirectPage, MassDeleteBlocked, RepairItem, RetryPolicy, Store

log = logging.getLogger(__name__)


def rules_fingerprint(ruleset: RuleSet) -> str:
    """What the content hashes depend on: the mappings and transforms of a rule set."""
    data = msgspec.msgpack.encode([sorted(ruleset.mappings.items()),
                                   sorted(ruleset.transforms.items())])
    return hashlib.blake2b(data, digest_size=8).hexdigest()
DIRECTIONS: tuple[Direction, Direction] = ("a_to_b", "b_to_a")
PRUNE_EVERY = 60.0  # seconds between prunes of the records' history
PARK_TICKS = 5  # flush ticks a page waits at most for the backlog of its direction


class QueueActor(PipelineActor):
    role = "queue"

    def __init__(
        self, pipeline: str, incarnation: int, report: FailureSink, *,
        state_path: Path, settings: Settings, ruleset: RuleSet, peers: Any, clock: Clock,
        safe_start: bool = False,
        on_event: EventSink | None = None,
        state: StateAccess | None = None,
        bulk_targets: frozenset[str] = frozenset(),
        figures: dict[str, Any] | None = None,
        unthrottled: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(pipeline, incarnation, report)
        self.figures = figures
        self.version = 0  # bumped when the figures change: the stats re-count only those
        self._published: tuple[Any, ...] | None = None
        self.state_path = state_path
        self.state = state  # None: the state file at state_path
        self.settings = settings
        self.ruleset = ruleset
        self.peers = peers
        self.clock = clock
        self.on_event = on_event or no_events
        self.store: Store | None = None
        # sides whose connector takes bulk writes (see _bulk_limit), and per direction when
        # its source last gave a page with more to come (None: its last read ended)
        self.bulk_targets = bulk_targets
        # sides that draw on no request budget (see _direct_size)
        self.unthrottled = unthrottled
        self.reading: dict[Direction, float | None] = dict.fromkeys(DIRECTIONS)
        self.in_flight: dict[Direction, frozenset[str] | None] = dict.fromkeys(DIRECTIONS)
        self.added: dict[Direction, int] = dict.fromkeys(DIRECTIONS, 0)
        self.last_activity = clock.monotonic()
        self.held: dict[str, str] = {}
        # per side, the cursor of its last page recorded in the store (WriteBatch.seen)
        self.seen: dict[str, str | None] = {"a": None, "b": None}
        # A page passed straight to the writer per direction (see Store.enqueue), and the
        # page of its side read meanwhile: it waits, as the cursor after it must not be
        # saved before the direct page's outcome is. Reading one page ahead lets the next
        # page's Python work run while the writer is in SQLite or on the network
        # (measured on 100k rows SQLite -> SQLite: 0.12 -> 0.17 of the raw copy).
        self.direct: dict[Direction, DirectPage | None] = dict.fromkeys(DIRECTIONS)
        self.waiting: list[Enqueue] = []
        # Per direction, a page that waits (unrecorded, its poller too) for the work of its
        # direction on the queue to be written: then it goes to the writer whole (see
        # _parks).
        self.parked: dict[Direction, Enqueue | None] = dict.fromkeys(DIRECTIONS)
        self.parked_ticks: dict[Direction, int] = dict.fromkeys(DIRECTIONS, 0)
        self.parked_gen: dict[Direction, int] = dict.fromkeys(DIRECTIONS, 0)
        # After a restart (an actor crashed, perhaps the writer on a page it was given
        # directly), pages are queued durably until a write succeeds again: a page lost
        # with a crashed writer would otherwise be pending nowhere but in the source, and
        # `recsync status` would show nothing queued for a pipeline that cannot write.
        self.direct_ok = not safe_start
        self.handles(Enqueue, self._enqueue)
        self.handles(Flush, self._tick)
        self.pruned_at: float | None = None
        self.handles(BatchDone, self._batch_done)

    def setup(self) -> None:
        self.store = (Store(self.state_path, self.clock) if self.state is None
                      else self.state.open_store(self.pipeline, self.clock))
        self.store.use_rules(rules_fingerprint(self.ruleset))
        self.seen = {side: self.store.cursor(side) for side in ("a", "b")}
        self.prune_history(every=PRUNE_EVERY)  # (a restart is no reason to prune again)
        if self.figures is not None:
            self.publish_figures()

    def _tick(self, _msg: Flush) -> None:
        self._flush_all()
        for direction in DIRECTIONS:
            # a page waits PARK_TICKS ticks at most, whatever keeps the backlog it waits for
            # from draining
            self.parked_ticks[direction] += 1
            if self.parked_ticks[direction] >= PARK_TICKS:
                self._let_go(direction)
            else:
                self._unpark(direction)
        if self.pruned_at is None or self.clock.monotonic() - self.pruned_at >= PRUNE_EVERY:
            self.prune_history()

    def prune_history(self, every: float = 0.0) -> int:
        """Apply the history retention (history_per_record, history_days) now (``every``:
        unless it was applied less than that many seconds ago)."""
        assert self.store is not None
        self.pruned_at = self.clock.monotonic()
        s = self.settings
        gone = self.store.prune_history(s.history_per_record, s.history_days, every=every)
        if gone:
            log.info("history pruned", extra={"pipeline": self.pipeline, "entries": gone})
        return gone

    def on_stop(self) -> None:
        if self.store is not None:
            self.store.close()

    @property
    def policy(self) -> RetryPolicy:
        s = self.settings
        return RetryPolicy(s.max_attempts, s.retry_base_delay, s.retry_max_delay)

    def _enqueue(self, msg: Enqueue, direct_only: bool = False, park: bool = True) -> bool:
        """Record a page (False: ``direct_only`` and it would not go direct; nothing done;
        ``park``: it may wait for the queue instead, see ``_parks``)."""
        assert self.store is not None
        direction = direction_from(msg.side)
        self._settle_parked(msg)
        if self.direct[direction] is not None:
            self.waiting.append(msg)
            return True
        if park and not direct_only and self._parks(msg, direction):
            self.parked[direction], self.parked_ticks[direction] = msg, 0
            self.parked_gen[direction] = self.store.last_gen  # the work it waits for
            self._flush(direction)
            if self.in_flight[direction] is not None:
                return True
            self.parked[direction] = None  # nothing could be leased now: no reason to wait
        poller = self.peers.ref(f"poller_{msg.side}")
        s = self.settings
        was_reading = self._backfilling(direction)
        if not msg.event:
            self.reading[direction] = self.clock.monotonic() if msg.more else None
        # A page goes direct only while nothing of its direction is queued or moving, and
        # no other work touches its records (the store checks both and otherwise takes the
        # safe path). A backfill for a side that takes bulk writes is gathered into bulk
        # jobs instead.
        direct_limit = (0 if msg.event or self.in_flight[direction] is not None
                        or not self.direct_ok or self._backfilling(direction)
                        else self._direct_size(direction))
        try:
            stats = self.store.enqueue(
                msg.side, msg.changes, msg.cursor, msg.observed, msg.ruleset,
                listing_start=msg.listing_start, listing_done=msg.listing_done,
                in_flight={d: v for d, v in self.in_flight.items() if v},
                mass_delete_share=s.mass_delete_threshold, mass_delete_min=s.mass_delete_min,
                save_cursor=not msg.event, direct_limit=direct_limit, direct_only=direct_only,
                unreadable=msg.unreadable, unreadable_all=msg.unreadable_all,
                more=msg.more and not msg.event, event=msg.event,
            )
        except MassDeleteBlocked as exc:
            text = (f"side {exc.side} would delete {exc.count} of {exc.total} linked records in "
                    f"one pass (over mass_delete_threshold {s.mass_delete_threshold:g}); "
                    f"polling of side {exc.side} is held until an operator confirms the deletes"
                    f": `recsync deletes confirm {self.pipeline.partition('/')[0]} --pipeline "
                    f"{self.pipeline.partition('/')[2]} --side {exc.side}`")
            self.held[exc.side] = text
            log.error("mass delete held", extra={"pipeline": self.pipeline, "error": text})
            if not msg.event:
                self.send(poller, Committed(None, False, text, hold=True))
            return True
        if stats.declined:
            return False
        for bad in stats.unreadable:
            log.error("record failed", extra={"pipeline": self.pipeline, "record": bad.where,
                                              "side": msg.side, "error": bad.reason})
        if stats.deletes_skipped:
            log.warning("listing met records it could not read: none taken as deleted",
                        extra={"pipeline": self.pipeline, "side": msg.side})
        if not msg.event:
            self.seen[msg.side] = msg.cursor
            self.send(poller, Committed(msg.cursor, msg.more))
        if stats.direct is not None:
            self.last_activity = self.clock.monotonic()
            page = DirectPage(msg.side, msg.cursor, msg.observed,
                              {i.key: i for i in stats.direct}, stats.on_target)
            self.direct[direction] = page
            self._send_batch(direction, stats.direct, frozenset(page.items))
        elif stats.queued:
            self.last_activity = self.clock.monotonic()
            self.added[direction] += stats.queued
            # A writer with nothing in flight takes the work now: waiting for the flush
            # tick only left it idle (a batch gathers while the one before it is written).
            if self.added[direction] >= s.batch_size or self.in_flight[direction] is None:
                self._flush(direction)
        if was_reading and not msg.more:  # the backfill's read ended: write what it gathered
            self._flush(direction)
        if stats.conflicts:
            log.info("conflicts resolved", extra={"pipeline": self.pipeline,
                                                   "count": stats.conflicts})
        return True

    def _parks(self, msg: Enqueue, direction: Direction) -> bool:
        """Whether page ``msg`` waits for the work of its direction on the queue, due now,
        to be written, instead of joining it: for a target with no request budget (a
        local side), a plain page of upserts that would go to the writer whole but for
        that work. Queued, each of its records would cost a queue row written, leased,
        decoded and deleted (100,000 updates SQLite -> SQLite, the first 20,000 queued
        before: 3.37 -> 2.10 s wall, 4 alternating pairs). The page
        is not recorded meanwhile (its cursor neither: a crash reads it again), and its
        poller waits for it; work that is not due now (a retry later) does not hold it."""
        assert self.store is not None
        if (not self._plain(msg, direction) or msg.unreadable or msg.unreadable_all
                or not self.direct_ok or target_of(direction) not in self.unthrottled
                or self.parked[direction] is not None or self._backfilling(direction)):
            return False
        return self.store.ready_count(direction, 1) > 0

    def _plain(self, page: Enqueue, direction: Direction) -> bool:
        """A page of upserts that may go to the writer whole: read by a poller (not an
        event), not a listing's start or end, no larger than ``_direct_size``."""
        return (not page.event and not page.listing_start and not page.listing_done
                and 0 < len(page.changes) <= self._direct_size(direction)
                and all(c.op == "upsert" for c in page.changes))

    def _unpark(self, direction: Direction, flush: bool = True) -> None:
        """The parked page of ``direction`` goes on once no work of its direction is in
        flight or due: direct, or, when work waits for a retry later, queued. ``flush``:
        the queue may be leased again now (not right after a deferred batch)."""
        assert self.store is not None
        page = self.parked[direction]
        if page is None or self.in_flight[direction] is not None:
            return
        # only the work due when it parked holds it, not what was queued since (events,
        # the other direction's outcomes)
        if flush and self.store.due_upto(direction, self.parked_gen[direction]):
            self._flush(direction)  # (still draining)
            if self.in_flight[direction] is not None:
                return
        self._let_go(direction)

    def _let_go(self, direction: Direction) -> None:
        page, self.parked[direction] = self.parked[direction], None
        if page is not None:
            self._enqueue(page, park=False)

    def _settle_parked(self, msg: Enqueue) -> None:
        """A parked page is recorded before a page that must not pass it: another of its
        side (an event: a later change of the same record must not be overwritten by it)
        or one of the other side touching its records (the conflict is decided on the
        queue, as it would have been had the parked page not waited)."""
        for direction, parked in self.parked.items():
            if parked is None or parked is msg:
                continue
            if parked.side == msg.side or not {c.key for c in parked.changes}.isdisjoint(
                    [c.key for c in msg.changes]):
                self._let_go(direction)

    def _direct_size(self, direction: Direction) -> int:
        """The largest page that may go to the writer directly. For a target with no
        request budget (a local side), a whole page, which the writer writes in batches of
        batch_size (see WriteBatch.chunk); a CRM's writes stay leased a batch at a time,
        each gated by its budget and with its own outcome. Queued instead, a
        page larger than batch_size cost a queue row per record and a lease, an outcome
        and their state transactions per batch (measured, 100k rows SQLite -> SQLite with
        page_size 5000 and batch_size 100: the queue actor's state work 6.6 -> 1.6 s of
        wall clock, py-spy)."""
        s = self.settings
        target = target_of(direction)
        if target not in self.unthrottled:
            return s.batch_size
        # (a local source's listing comes in units of at least LISTING_UNIT records: pages
        # of page_size joined while fewer, so up to LISTING_UNIT + page_size - 1)
        return max(s.batch_size, LISTING_UNIT + s.page_size - 1)

    def _flush_all(self) -> None:
        for direction in DIRECTIONS:
            self._flush(direction)

    def _flush(self, direction: Direction) -> None:
        assert self.store is not None
        if self.in_flight[direction] is not None:
            return
        opposite = self.in_flight[opposite_of(direction)]
        limit, bulk = self._bulk_limit(direction)
        if limit == 0:
            return  # a backfill being read: gathered into bulk jobs
        items = self.store.lease(direction, limit, opposite or frozenset())
        self.added[direction] = 0
        if items:
            self._send_batch(direction, items, bulk=bulk)

    def _backfilling(self, direction: Direction) -> bool:
        """The source of ``direction`` is reading a backlog (its last page said more) for a
        target that takes bulk writes. A read that stalls (no page for a while) is over."""
        since = self.reading[direction]
        if since is None or not self._bulk_on(direction):
            return False
        window = max(5.0, 2 * self.settings.poll_interval)
        return self.clock.monotonic() - since < window

    def _bulk_on(self, direction: Direction) -> bool:
        target = target_of(direction)
        return target in self.bulk_targets and self.settings.bulk_threshold > 0

    def _bulk_limit(self, direction: Direction) -> tuple[int, bool]:
        """How many items to lease and whether as a bulk batch: ``batch_size`` normally;
        ``bulk_batch_size`` when the backlog ready for a target that takes bulk writes
        exceeds ``bulk_threshold`` (one bulk job costs a handful of API requests,
        Collections one per 200 records); 0 while a backfill is being read and fewer than
        ``bulk_batch_size`` are gathered."""
        assert self.store is not None
        s = self.settings
        if not self._bulk_on(direction):
            return s.batch_size, False
        big = max(s.bulk_batch_size, s.batch_size)
        ready = self.store.ready_count(direction, big)
        if self._backfilling(direction) and ready < big:
            return 0, False
        if ready > s.bulk_threshold or self.store.bulk_jobs_pending(direction):
            return big, True  # (a job left in flight by a crash is finished by a bulk batch)
        return s.batch_size, False

    def _send_batch(self, direction: Direction, items: list[WorkItem],
                    keys: frozenset[str] | None = None, bulk: bool = False) -> None:
        self.in_flight[direction] = frozenset([i.key for i in items]) if keys is None else keys
        target = target_of(direction)
        seen = self.seen[target]
        check: frozenset[str] = frozenset()
        # (a direct page, ``keys`` given, has no queue rows on its records: Store.enqueue
        # sends none that has, so only leased items are looked up)
        if seen is not None and keys is None:
            assert self.store is not None
            check = frozenset(self.store.queued_keys(
                opposite_of(direction), [i.key for i in items if i.expected_hash is not None]))
        batch = WriteBatch(direction, items, self.ruleset, bulk, self.settings.batch_size,
                           seen, check)
        self.send(self.peers.ref(f"connector_{target}"), (batch, self.actor_ref))

    def _batch_done(self, msg: BatchDone) -> None:
        assert self.store is not None
        direct = self.direct[msg.direction]
        self.in_flight[msg.direction] = None
        self.direct[msg.direction] = None
        # The writer gets the next page before this one's outcome is saved, when nothing
        # links the two: saving it would only delay the writer (see _next_page_early).
        early = direct is not None and self._next_page_early(msg, direct)
        stats = self.store.apply(msg.direction, msg.outcomes, self.policy, msg.written_at,
                                 direct, msg.jobs, msg.note)
        self.direct_ok = self.direct_ok or stats.synced > 0
        self.last_activity = self.clock.monotonic()
        for key, error in stats.failed_keys:
            log.error("record failed", extra={"pipeline": self.pipeline, "record": key,
                                              "direction": msg.direction, "error": error})
            self._publish_failed(key, msg.direction, error)
        if direct is not None and not early:
            waiting, self.waiting = self.waiting, []
            for page in waiting:
                self._enqueue(page)
        if stats.deferred == 0:  # what was queued meanwhile goes out now (see _enqueue)
            self._flush(msg.direction)
        self._unpark(msg.direction, flush=stats.deferred == 0)

    def _next_page_early(self, msg: BatchDone, done: DirectPage) -> bool:
        """Send the page waiting behind direct page ``done`` to the writer now, before
        ``done``'s outcome is saved, when that cannot change how it is queued: every record
        of ``done`` synced plainly, the waiting page shares no record with it, and it goes
        direct too (nothing of it is saved before its own outcome, so the cursors are still
        saved in page order). A page that would touch the store at once (one with deletes,
        the start or end of a listing, one not going direct) waits for the outcome."""
        if len(self.waiting) != 1 or any(o.status != "synced" or o.winner is not None
                                         for o in msg.outcomes):
            return False
        page = self.waiting[0]
        side = source_of(msg.direction)
        if (page.side != side or not self._plain(page, msg.direction)
                or not done.items.keys().isdisjoint([c.key for c in page.changes])):
            return False
        self.waiting = []
        if self._enqueue(page, direct_only=True):
            return True
        self.waiting = [page]
        return False

    def _publish_failed(self, key: str, direction: Direction, error: str) -> None:
        """The ``record_failed`` event (a failed publish is logged, never raised)."""
        try:
            self.on_event("record_failed", {"pipeline": self.pipeline, "key": key,
                                            "direction": direction, "error": error})
        except Exception:
            log.exception("record_failed event not published",
                          extra={"pipeline": self.pipeline, "record": key})

    # asked from outside the pipeline -------------------------------------------------------
    def set_ruleset(self, ruleset: RuleSet) -> None:
        assert self.store is not None
        self.ruleset = ruleset
        self.store.use_rules(rules_fingerprint(ruleset))

    def set_settings(self, settings: Settings) -> None:
        self.settings = settings

    def progress(self, pending: bool | None = None) -> dict[str, Any]:
        """``pending``: whether the store has pending work, when already known."""
        assert self.store is not None
        if pending is None:
            pending = self.store.has_pending()
        return {
            "pending": int(pending or bool(self.waiting) or any(self.parked.values())),
            "in_flight": sum(len(v) for v in self.in_flight.values() if v),
            "last_activity": self.last_activity,
            "held": dict(self.held),
        }

    def publish_figures(self) -> None:
        if self.store is None:
            return
        assert self.figures is not None
        # rows the store changed, and what lives only in memory: nothing new, no queries
        key = (self.store.changes, tuple(map(_size, self.in_flight.values())),
               tuple(self.held.items()), len(self.waiting), self.last_activity,
               tuple(p is not None for p in self.parked.values()))
        if key == self._published:
            return
        self._published = key
        self.version += 1
        # one statement, not three: every statement lets go of the GIL, and on a busy
        # daemon getting it back can wait for another thread's switch interval
        pending, a, b = self.store.pending_and_cursors()
        self.figures[self.role] = {**self.progress(pending), "version": self.version,
                                   "cursors": {"a": a, "b": b}}

    def counts(self) -> dict[str, int]:
        assert self.store is not None
        return self.store.counts()

    def cursors(self) -> dict[str, str | None]:
        assert self.store is not None
        return {"a": self.store.cursor("a"), "b": self.store.cursor("b")}

    def retry_failed(self, keys: list[str] | None) -> int:
        assert self.store is not None
        dropped, relist = self.store.drop_unreadable(keys)
        for side in sorted(relist):  # a record still unreadable is met again
            self.send(self.peers.ref(f"poller_{side}"), Poll(full=True))
        n = self.store.retry_failed(keys) + dropped
        self.last_activity = self.clock.monotonic()
        self._flush_all()
        return n

    def allow_deletes(self, side: str) -> None:
        assert self.store is not None
        self.store.allow_mass_delete(side)  # type: ignore[arg-type]
        self.held.pop(side, None)

    def repair(self, items: list[RepairItem]) -> dict[str, Any]:
        """Queue the syncs `recsync verify --repair` found missing (see Store.repair).

        Records with work queued or in flight meanwhile are left to that work. A repair
        whose deletes trip the mass-delete guard queues nothing and holds the pipeline
        like a held pass: ``held`` says why, until `recsync deletes confirm`.
        """
        assert self.store is not None
        customer, _, name = self.pipeline.partition("/")
        if self.held:  # deletes wait for an operator: a repair now could undo them
            side, why = next(iter(self.held.items()))
            text = (f"nothing was queued: the pipeline is held by the mass-delete guard on "
                    f"side {side} ({why}); a repair now could bring back the records whose "
                    f"deletes wait for your decision: confirm them (`recsync deletes confirm "
                    f"{customer} --pipeline {name} --side {side}`) or restore the records, "
                    "then verify again")
            return {"queued": {"a_to_b": 0, "b_to_a": 0}, "skipped": len(items),
                    "held": text}
        busy = self.store.pending_keys()
        for keys in self.in_flight.values():
            busy.update(keys or ())
        todo = [i for i in items if i.key not in busy]
        s = self.settings
        try:
            queued = self.store.repair(todo, mass_delete_share=s.mass_delete_threshold,
                                       mass_delete_min=s.mass_delete_min)
        except MassDeleteBlocked as exc:
            target = "b" if exc.side == "a" else "a"
            text = (f"verify --repair would delete {exc.count} of {exc.total} linked records "
                    f"on side {target} (over mass_delete_threshold "
                    f"{s.mass_delete_threshold:g}); nothing was queued: to let them "
                    f"through, run `recsync deletes confirm {customer} --pipeline {name} "
                    f"--side {exc.side}`, then `recsync verify --repair` again")
            self.held[exc.side] = text
            log.error("mass delete held", extra={"pipeline": self.pipeline, "error": text})
            return {"queued": {"a_to_b": 0, "b_to_a": 0}, "skipped": len(items) - len(todo),
                    "held": text}
        if todo:
            self.last_activity = self.clock.monotonic()
            self._flush_all()
        return {"queued": queued, "skipped": len(items) - len(todo), "held": None}


def _size(keys: frozenset[str] | None) -> int:
    return 0 if keys is None else len(keys)
