"""ConnectorActor: does one side's I/O, behind its rate limiter and circuit breaker."""

from __future__ import annotations

import contextlib
import logging
import time
from operator import attrgetter
from pathlib import Path
from typing import Any

import msgspec
import pykka

from recsync import rules as rules_mod
from recsync.actors.base import FailureSink, PipelineActor
from recsync.actors.dispatch import IO
from recsync.actors.health import SideHealth
from recsync.actors.protocol import (
    LISTING_UNIT,
    BatchDone,
    Call,
    Housekeep,
    PageRead,
    Poll,
    ReadPage,
    WriteBatch,
)
from recsync.clock import Clock
from recsync.config import SideConfig
from recsync.connectors import Connector, get_connector_class
from recsync.errors import ConnectorConfigError, ConnectorError, RateLimited
from recsync.messages import (
    ChangePage,
    Direction,
    ItemOutcome,
    Record,
    Side,
    WorkItem,
    WriteOp,
    WriteResult,
)
from recsync.resilience import CircuitBreaker
from recsync.state.access import StateAccess
from recsync.state.bulkjobs import BulkJournal

log = logging.getLogger(__name__)
# longest a request waits inside a call for room in its system's budget (a write's next
# chunk, a lookup); longer waits defer the whole call, so a stop is never held up by it
SPEND_WAIT = 5.0
_error = attrgetter("error")
_new_key = attrgetter("new_key")


class ConnectorActor(PipelineActor):
    dispatcher = IO  # it waits on databases, files and HTTP: never on the compute pool
    def __init__(
        self,
        pipeline: str,
        incarnation: int,
        report: FailureSink,
        *,
        side: Side,
        side_config: SideConfig,
        base_dir: Path,
        peers: Any,
        breaker: CircuitBreaker,
        clock: Clock,
        health: SideHealth | None = None,
        state_path: Path | None = None,
        state: StateAccess | None = None,
        throttled: bool = True,
    ) -> None:
        super().__init__(pipeline, incarnation, report)
        self.role = f"connector_{side}"
        self.health = health or SideHealth(clock)
        self.side = side
        self.side_config = side_config
        self.base_dir = base_dir
        self.peers = peers
        self.breaker = breaker
        self.clock = clock
        self.connector: Connector | None = None
        self.opened = False
        self.requests = 0
        # False: the side draws on no request budget (a local side without a rate_limit of
        # its own; the rate limiter actor's sides are fixed for its life), so a call need
        # not ask the rate limiter actor: an ask per page read and per batch written, each
        # a round trip between two threads (100k rows SQLite -> SQLite with page_size =
        # batch_size = 100: 2,000 asks).
        self.throttled = throttled
        # a page read on but not joined (see _read_on): the cursor it was read from, when
        # (just before) it was read, the page
        self._kept: tuple[str | None, float, ChangePage] | None = None
        self.state_path = state_path
        self.state_access = state
        self.journal: BulkJournal | None = None  # opened by the first bulk batch
        self._bulk_done: tuple[list[str], str | None] = ([], None)
        self.handles(tuple, self._dispatch)

    def setup(self) -> None:
        cls = get_connector_class(self.side_config.connector)
        self.connector = cls(self.side_config.options, self.base_dir)
        self.connector.origin = self.pipeline
        self.connector.on_bulk_progress = self.health.bulk
        if self.connector.counts_requests:
            self.connector.spend = self._spend
        self.connector.watch(self._wake_poller)
        self.opened = False
        try:
            self._ensure_open()
        except ConnectorConfigError:
            raise
        except ConnectorError as exc:
            # The system is down right now: start anyway and open on the next call, so an
            # outage at start-up is retried like any other instead of failing the pipeline.
            self.health.error(str(exc))
            log.warning("connector not reachable yet", extra={
                "pipeline": self.pipeline, "side": self.side, "error": str(exc)})

    def change_probe(self) -> Any:
        """The connector's change probe (asked once by the pipeline for its poll timer)."""
        assert self.connector is not None
        return self.connector.change_probe()

    def _wake_poller(self) -> None:
        """The system said this side changed: the poller reads it now (any thread)."""
        ref = self.peers.refs.get(f"poller_{self.side}")
        if ref is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(Poll(wake=True))

    def _ensure_open(self) -> None:
        assert self.connector is not None
        if not self.opened:
            self.connector.open()
            self.opened = True

    def on_stop(self) -> None:
        if self.journal is not None:
            self.journal.close()
        if self.connector is not None and self.opened:
            self.connector.close()

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        request, reply_to = message
        if isinstance(request, ReadPage):
            self.send(reply_to, self._read(request))
        elif isinstance(request, WriteBatch):
            self.send(reply_to, self._write(request))
        elif isinstance(request, Housekeep):
            self._housekeep()

    def _housekeep(self) -> None:
        assert self.connector is not None
        try:
            self._ensure_open()
            self.connector.housekeep()
        except ConnectorError as exc:
            self.health.error(str(exc))
            log.warning("housekeeping failed", extra={"pipeline": self.pipeline,
                                                      "side": self.side, "error": str(exc)})

    def unknown_fields(self, names: list[str], read: bool = True) -> list[str]:
        """Mapped field names this side has no column for (asked at pipeline start)."""
        assert self.connector is not None
        return self.connector.unknown_fields(names, read=read) if self.opened else []

    def field_hints(self, names: list[str]) -> dict[str, str]:
        """For unknown mapped names: what the side has close to each (asked with them)."""
        assert self.connector is not None
        return {n: self.connector.field_hint(n) for n in names} if self.opened else {}

    def fetch_records(self, keys: list[str]) -> dict[str, Any]:
        """Current records for ``keys`` (asked by `sync event --op read`)."""
        assert self.connector is not None
        retry_at = self._gate(read=True)
        if retry_at is not None:
            raise ConnectorError(f"side {self.side} is rate limited or its circuit is open; "
                                 "try again shortly")
        self._ensure_open()
        return self.connector.fetch(keys)

    def list_page(self, position: str | None, limit: int) -> tuple[Any, str | None, float | None]:
        """A page of the side's full listing (asked by `recsync verify`): (changes, next
        position, None), or (None, position, wall time to try again) while the rate limit
        or the circuit breaker holds calls back."""
        assert self.connector is not None
        retry_at = self._gate(read=True)
        if retry_at is not None:
            return None, position, retry_at
        try:
            self._ensure_open()
            changes, after = self.connector.list_records(position, limit)
        except RateLimited as exc:
            self._limited(exc)
            return None, position, self.clock.time() + (exc.retry_after or 1.0)
        except ConnectorConfigError:
            raise
        except ConnectorError:
            self.breaker.record_failure()
            raise
        self.breaker.record_success()
        self._report_budget()
        return changes, after, None

    def fetch_page(self, keys: list[str]) -> tuple[dict[str, Any] | None, float | None]:
        """Current records for ``keys`` (asked by `recsync verify --repair`): (records,
        None), or (None, wall time to try again) while calls are held back."""
        assert self.connector is not None
        retry_at = self._gate(read=True)
        if retry_at is not None:
            return None, retry_at
        try:
            self._ensure_open()
            found = self.connector.fetch(keys)
        except RateLimited as exc:
            self._limited(exc)
            return None, self.clock.time() + (exc.retry_after or 1.0)
        except ConnectorConfigError:
            raise
        except ConnectorError:
            self.breaker.record_failure()
            raise
        self.breaker.record_success()
        return found, None

    def count_records(self) -> int | None:
        """The side's record count when the system says so cheaply (verify's progress)."""
        assert self.connector is not None
        try:
            self._ensure_open()
            return self.connector.count_records()
        except ConnectorError:
            return None

    def _gate(self, read: bool = False) -> float | None:
        """None when a call may go out now, else the wall time to try again. A ``read``
        (poll, fetch) leaves the budget's write reserve to the writes."""
        if not self.breaker.allow():
            reopen = self.breaker.retry_at or self.clock.monotonic()
            return self.clock.time() + max(0.0, reopen - self.clock.monotonic())
        # A half-open probe refused here is given up by the breaker after its timeout.
        if not self.throttled:  # a local side without a budget (a CRM side always has one)
            self.requests += 1
            return None
        assert self.connector is not None
        if self.connector.counts_requests:  # each request is taken by _spend as it goes
            wait = float(self.peers.ref("rate_limiter").ask(Call("wait", (self.side,))))
            return self.clock.time() + wait if wait > 0 else None
        wait = float(self.peers.ref("rate_limiter").ask(Call("acquire", (self.side, 1, read))))
        if wait > 0:
            return self.clock.time() + wait
        self.requests += 1
        return None

    def _spend(self, read: bool) -> None:
        """One API request the connector is about to send, taken from its system's budget
        (any thread: a write sends its chunks in parallel). While the budget is spent it
        waits for room, up to SPEND_WAIT seconds; longer, the call gives up (RateLimited:
        its batch is deferred, its page read again later)."""
        waited = 0.0
        while True:
            wait = float(self.peers.ref("rate_limiter").ask(
                Call("acquire", (self.side, 1, read))))
            if wait <= 0:
                self.requests += 1
                return
            if waited + wait > SPEND_WAIT:
                raise RateLimited(f"side {self.side}: the API budget of "
                                  f"{self.connector.system_id if self.connector else '?'} is "
                                  f"spent for {wait:.1f} s more; the call is deferred")
            time.sleep(wait)
            waited += wait

    def _read(self, request: ReadPage) -> PageRead:
        assert self.connector is not None
        retry_at = self._gate(read=True)
        if retry_at is not None:
            return PageRead(None, request.observed, "waiting for rate limit or circuit",
                            retry_at)
        try:
            self._ensure_open()
            observed = request.observed
            kept, self._kept = self._kept, None
            if kept is not None and kept[0] == request.cursor:
                # alone, and observed when it was read: a write of ours since then is newer
                _cursor, observed, page = kept
            else:
                page = self.connector.read_changes(request.cursor, request.limit)
                if not self.throttled and page.listing:
                    page = self._read_on(page, request.limit)
        except RateLimited as exc:
            self._limited(exc)
            return PageRead(None, request.observed, str(exc), self.clock.time() + 1.0)
        except ConnectorError as exc:
            self.breaker.record_failure()
            self.health.error(str(exc))
            return PageRead(None, request.observed, str(exc))
        self.breaker.record_success()
        self._report_budget()
        return PageRead(page, observed)

    def _read_on(self, page: ChangePage, limit: int) -> ChangePage:
        """``page`` of a listing, with the listing's next pages read on and joined to it
        up to LISTING_UNIT records. Only plain pages join: the listing goes on, nothing
        unreadable, no warning but the first page's. Reading on is as reading later: the
        cursors of a listing keep the change-log position where it began, so none lets
        the connector prune anything more, and no write of ours to this side can come in
        between (this actor makes them, one message at a time). A page that cannot join
        is kept for the read that asks from where it began (a file cannot be read from an
        earlier cursor again), stamped with when it was read."""
        pages = [page]
        count = len(page.changes)
        while (count < LISTING_UNIT and page.more and not page.listing_done
               and not page.unreadable and not page.unreadable_all):
            assert self.connector is not None
            read_at = self.clock.time()
            try:
                page = self.connector.read_changes(page.cursor, limit)
            except ConnectorError:
                break  # the pages read stand; the next read meets the error again
            self.requests += 1
            if (not page.listing or page.listing_start or page.unreadable
                    or page.unreadable_all or page.warning is not None):
                self._kept = (pages[-1].cursor, read_at, page)
                break
            pages.append(page)
            count += len(page.changes)
        if len(pages) == 1:
            return pages[0]
        first, last = pages[0], pages[-1]
        return msgspec.structs.replace(
            last, changes=[c for p in pages for c in p.changes],
            listing_start=first.listing_start, warning=first.warning)

    def _report_budget(self) -> None:
        """Pass on what the remote API said is left of its allocation."""
        assert self.connector is not None
        budget = self.connector.remote_budget()
        if budget is not None:
            self.peers.ref("rate_limiter").tell(Call("remote_budget", (self.side, *budget)))

    def _limited(self, exc: RateLimited) -> None:
        if exc.retry_after is not None:
            self.peers.ref("rate_limiter").tell(Call("block", (self.side, exc.retry_after)))

    def _write(self, batch: WriteBatch) -> BatchDone:
        assert self.connector is not None
        permit = self.state_access.permit if self.state_access is not None else None
        refused = permit(self.pipeline) if permit is not None else None
        if refused is not None:  # a node without a fresh lease writes nothing outside
            log.warning("write held back", extra={"pipeline": self.pipeline,
                                                  "side": self.side, "error": refused})
            self.health.error(refused)
            return self._all(batch, "deferred", refused, self.clock.time() + 1.0)
        retry_at = self._gate()
        if retry_at is not None:
            return self._all(batch, "deferred", None, retry_at)
        self._bulk_done = ([], None)
        try:
            self._ensure_open()
            outcomes = self._write_checked(batch)
        except RateLimited as exc:
            self._limited(exc)
            return self._all(batch, "deferred", str(exc), self.clock.time() + (exc.retry_after
                                                                            or 1.0))
        except ConnectorError as exc:
            self.breaker.record_failure()
            self.health.error(str(exc))
            log.warning("write failed", extra={"pipeline": self.pipeline, "side": self.side,
                                               "error": str(exc), "records": len(batch.items)})
            return self._all(batch, "retry", str(exc), None)
        self.breaker.record_success()
        self._report_budget()
        jobs, note = self._bulk_done
        return BatchDone(batch.direction, outcomes, self.clock.time(), jobs, note)

    def _all(self, batch: WriteBatch, status: Any, error: str | None,
             retry_at: float | None) -> BatchDone:
        outcomes = [ItemOutcome(i.key, i.gen, status, error, retry_at) for i in batch.items]
        return BatchDone(batch.direction, outcomes, self.clock.time())

    def _write_checked(self, batch: WriteBatch) -> list[ItemOutcome]:
        """Check the target for changes no poll has reported yet, then write."""
        assert self.connector is not None
        side, key_field = self.side, self.side_config.options.key
        superseded, to_write, plain = self._check_target(batch)
        ops = []
        to_side = rules_mod.compile_rules(batch.ruleset).renamer(side)
        refused = self._rekey([t[0] for t in to_write])
        for item, content, _h, _w in to_write:
            if item.key in refused:
                continue
            if content is None:
                ops.append(WriteOp(item.key, "delete", None))
            else:
                fields = to_side(content)  # may be content itself: not changed here
                if fields.get(key_field) is None:
                    fields = {**fields, key_field: item.key}
                ops.append(WriteOp(item.key, "upsert", fields))
        if batch.bulk and ops and self.connector.bulk_writes and self.state_path is not None:
            if self.journal is None:
                access = self.state_access or StateAccess(self.state_path.parent)
                self.journal = BulkJournal(access.open_backend(self.pipeline), self.clock)
            try:
                done = self.connector.write_bulk(ops, self.journal, batch.direction)
            finally:
                self.health.bulk(None)  # status shows a bulk job while it is under way
            results, self._bulk_done = done.results, (list(done.jobs), done.note)
        elif batch.chunk and len(ops) > batch.chunk:
            write, n = self.connector.write, batch.chunk
            results = [r for i in range(0, len(ops), n) for r in write(ops[i : i + n])]
        else:
            results = self.connector.write(ops) if ops else []
        if refused:
            written = iter(results)
            results = [refused.get(t[0].key) or next(written) for t in to_write]
        if (plain and set(map(_error, results)) <= {None}
                and not any(map(_new_key, results))):  # the usual batch, in one pass
            return [ItemOutcome(i.key, i.gen, "synced", None, None, None, chash, None, i.src_hash)
                    for i, _c, chash, _w in to_write]
        now, wait = self.clock.time(), 0.0
        outcomes: list[ItemOutcome] = []
        add = outcomes.append
        for (item, content, chash, winner), res in zip(to_write, results, strict=True):
            if res.error is None and res.new_key is not None and content is not None:
                add(self._made_key(item, content, res.new_key, batch))
            elif res.error is None:
                if winner is None:  # the usual case; positional, as it is the fastest
                    add(ItemOutcome(item.key, item.gen, "synced", None, None, None, chash, None,
                                    item.src_hash))
                    continue
                merged = winner == "merged"
                add(ItemOutcome(item.key, item.gen, "synced", hash=chash, winner=winner,
                                content=content if merged else None,
                                src_hash=None if merged else item.src_hash))
            elif res.retry_after is not None:
                wait = max(wait, res.retry_after)
                add(ItemOutcome(item.key, item.gen, "deferred", res.error,
                                now + res.retry_after))
            else:
                add(ItemOutcome(item.key, item.gen, "retry" if res.retryable else "rejected",
                                res.error))
                self.health.error(f"record {item.key}: {res.error}")
        if wait:
            self.peers.ref("rate_limiter").tell(Call("block", (self.side, wait)))
        if not superseded:
            return outcomes  # in batch order
        by_key = {t[0].key: o for t, o in zip(to_write, outcomes, strict=True)}
        by_key.update(superseded)
        return [by_key[i.key] for i in batch.items]

    def _rekey(self, items: list[WorkItem]) -> dict[str, WriteResult]:
        """Give the records the other side made a key for that key here first (see
        ``WorkItem.rekey_from``); the results of those that could not be, by key."""
        assert self.connector is not None
        todo = [(i.rekey_from, i.key) for i in items if i.rekey_from is not None]
        if not todo:
            return {}
        return {r.key: r for r in self.connector.rekey(todo) if r.error is not None}

    def _made_key(self, item: WorkItem, content: Record, new_key: str,
                  batch: WriteBatch) -> ItemOutcome:
        """The target created the record under a key of its own: its content now holds
        that key (the store links it under the new key and writes the key back)."""
        key_field = self.side_config.options.key
        if self.side == "b":  # the A-space field that maps to the target's key field
            key_field = next((a for a, b in batch.ruleset.mappings.items() if b == key_field),
                             key_field)
        made = {**content, key_field: new_key} if key_field in content else content
        log.info("record created under a new key", extra={
            "pipeline": self.pipeline, "side": self.side, "record": item.key,
            "new_key": new_key})
        return ItemOutcome(item.key, item.gen, "synced", hash=rules_mod.content_hash(made),
                           content=made, src_hash=item.src_hash, new_key=new_key)

    def _check_target(self, batch: WriteBatch) -> tuple[
            dict[str, ItemOutcome], list[tuple[WorkItem, Record | None, str | None, str | None]],
            bool]:
        """Compare the target with what the queue last knew of it (``expected_hash``):
        the outcomes of items whose target change wins the conflict, (item, content to
        write, its hash, conflict winner or None) for the rest, in batch order, and whether
        no conflict was found."""
        assert self.connector is not None
        rs, side = batch.ruleset, self.side
        source: Side = "a" if side == "b" else "b"
        back: Direction = "b_to_a" if side == "b" else "a_to_b"  # from here to the source
        known = [i.key for i in batch.items if i.expected_hash is not None]
        if not known:  # all new to the target as far as we know: nothing to compare
            return {}, [(i, i.content, i.hash, None) for i in batch.items], True
        superseded: dict[str, ItemOutcome] = {}
        to_write: list[tuple[WorkItem, Record | None, str | None, str | None]] = []
        # only what changed since the queue last heard from the target, when it can tell
        changed = (None if batch.seen is None
                   else self.connector.changed_since(batch.seen, known))
        if changed is not None:
            changed |= batch.check
            known = [k for k in known if k in changed]
        current = self.connector.fetch(known) if known else {}
        # the compiled rules once per batch, not looked up per record
        compiled = rules_mod.compile_rules(rs)
        to_a, matches = compiled.to_a_space, compiled.matches
        hash_theirs = compiled.side_hasher(side)  # = hash of to_a(side, rec), no dict made
        back_update = compiled.op_allowed(back, "update")
        back_delete = compiled.op_allowed(back, "delete")
        plain = True  # no conflict so far
        for item in batch.items:
            content, chash = item.content, item.hash
            winner: str | None = None
            if item.expected_hash is not None:
                if changed is not None and item.key not in changed:
                    to_write.append((item, content, chash, None))  # as the queue knew it
                    continue
                rec = current.get(item.key)
                their_hash = hash_theirs(rec) if rec is not None else None
                if their_hash == item.expected_hash or their_hash == item.hash:  # the usual
                    to_write.append((item, content, chash, None))
                    continue
                theirs = to_a(side, rec) if rec is not None else None
                # A change here that the rules never carry back (an operation they do not
                # sync that way, or content their filters leave out) is no conflict: this
                # write wins (a one-way sync keeps the target equal to the source).
                carried = back_delete if theirs is None else (back_update and matches(theirs))
                if carried:
                    mine = (source, content, item.modified)
                    their_mod = (self.connector.record_modified(rec) if rec is not None
                                 else None) or self.clock.time()
                    (_, a_rec, a_mod), (_, b_rec, b_mod) = sorted(
                        [mine, (side, theirs, their_mod)], key=lambda t: t[0])
                    winner, result = rules_mod.resolve_conflict(rs, a_rec, a_mod, b_rec, b_mod)
                    if winner == side:
                        superseded[item.key] = ItemOutcome(
                            item.key, item.gen, "superseded", content=theirs, hash=their_hash,
                            winner=winner, src_hash=item.src_hash)
                        continue
                    if winner != source:  # merged
                        content = result
                        chash = rules_mod.content_hash(result) if result is not None else None
            to_write.append((item, content, chash, winner))
            plain = plain and winner is None
        return superseded, to_write, plain and not superseded
