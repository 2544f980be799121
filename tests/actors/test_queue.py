"""QueueActor with real actors around it: how pages read ahead reach the writer."""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from recsync.actors.pipeline import Peers
from recsync.actors.protocol import LISTING_UNIT, BatchDone, Committed, Enqueue, WriteBatch
from recsync.actors.queue import QueueActor
from recsync.clock import FakeClock
from recsync.config import Settings
from recsync.messages import ItemOutcome, Prepared
from recsync.rules import RuleSet, content_hash
from recsync.state.store import Store
from tests.actors.recorder import Recorder

RULES = RuleSet(name="t", a_to_b=["create", "update", "delete"], b_to_a=["create", "update"],
                mappings={"id": "id", "name": "name"})


def page(keys: list[str], cursor: str, name: str = "N") -> Enqueue:
    changes = [Prepared(k, "upsert", {"id": k, "name": f"{name}{k}"},
                        content_hash({"id": k, "name": f"{name}{k}"}), True, 1.0)
               for k in keys]
    return Enqueue("a", changes, cursor, 1000.0, RULES, False, False, True)


def next_batch(inbox: queue.Queue[Any]) -> WriteBatch:
    while True:
        msg = inbox.get(timeout=10)
        if isinstance(msg, tuple) and isinstance(msg[0], WriteBatch):
            return msg[0]


def synced(batch: WriteBatch, at: float) -> BatchDone:
    return BatchDone("a_to_b", [ItemOutcome(i.key, i.gen, "synced", hash=i.hash,
                                            src_hash=i.src_hash) for i in batch.items], at)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Any, queue.Queue[Any], Path]]:
    with queue_actor(tmp_path, Settings(batch_size=10, page_size=10)) as started:
        yield started


@contextlib.contextmanager
def queue_actor(tmp_path: Path, settings: Settings, unthrottled: frozenset[str] = frozenset(),
                clock: FakeClock | None = None, polls: queue.Queue[Any] | None = None,
                ) -> Iterator[tuple[Any, queue.Queue[Any], Path]]:
    writes: queue.Queue[Any] = queue.Queue()
    polls = queue.Queue() if polls is None else polls
    peers = Peers()
    peers.refs["connector_b"] = Recorder.start(writes)
    peers.refs["poller_a"] = Recorder.start(polls)
    peers.refs["poller_b"] = Recorder.start(polls)
    state = tmp_path / "state.sqlite"
    ref = QueueActor.start("c/p", 1, lambda _f: None, state_path=state,
                           settings=settings, ruleset=RULES, peers=peers,
                           clock=clock or FakeClock(time=1000.0), unthrottled=unthrottled)
    try:
        yield ref, writes, state
    finally:
        ref.stop()
        for r in peers.refs.values():
            r.stop()


def test_a_page_sharing_a_record_with_the_one_in_flight_waits_for_its_outcome(
    setup: tuple[Any, queue.Queue[Any], Path],
) -> None:
    ref, writes, _state = setup
    ref.tell(page(["1", "2"], "c1"))
    first = next_batch(writes)
    assert [i.expected_hash for i in first.items] == [None, None]
    ref.tell(page(["2", "3"], "c2", "M"))  # read ahead while the first is written
    ref.tell(synced(first, 1001.0))
    second = next_batch(writes)
    # record 2 was just written: the writer must know what the target holds now
    by_key = {i.key: i for i in second.items}
    assert by_key["2"].expected_hash == content_hash({"id": "2", "name": "N2"})
    assert by_key["3"].expected_hash is None


def test_pages_read_ahead_are_saved_in_order_each_with_its_cursor(
    setup: tuple[Any, queue.Queue[Any], Path],
) -> None:
    ref, writes, state = setup
    ref.tell(page(["1", "2"], "c1"))
    first = next_batch(writes)
    ref.tell(page(["3", "4"], "c2"))
    ref.tell(synced(first, 1001.0))
    second = next_batch(writes)
    assert [i.key for i in second.items] == ["3", "4"]
    assert ref.proxy().cursors().get() == {"a": "c1", "b": None}  # first's, saved
    ref.tell(synced(second, 1002.0))
    assert ref.proxy().cursors().get() == {"a": "c2", "b": None}
    store = Store(state)
    try:
        assert store.counts()["total_synced_a_to_b"] == 4
    finally:
        store.close()


def test_a_page_read_ahead_that_must_be_queued_waits_for_the_outcome_before_it(
    setup: tuple[Any, queue.Queue[Any], Path],
) -> None:
    ref, writes, _state = setup
    ref.tell(page(["1", "2"], "c1"))
    first = next_batch(writes)
    big = [str(k) for k in range(10, 25)]  # more than batch_size: queued, not direct
    ref.tell(page(big, "c2"))
    ref.tell(synced(first, 1001.0))
    second = next_batch(writes)  # leased from the queue, after the first was saved
    assert {i.key for i in second.items} <= set(big) and len(second.items) == 10
    assert ref.proxy().counts().get()["total_synced_a_to_b"] == 2
    assert ref.proxy().cursors().get()["a"] == "c2"


def test_work_queued_while_the_writer_is_idle_goes_out_without_a_flush_tick(
    setup: tuple[Any, queue.Queue[Any], Path],
) -> None:
    """A change pushed by an event (always queued, never direct) and fewer than
    batch_size: the writer has nothing in flight, so it gets it at once; no Flush tick is
    ever sent here (the flush interval would otherwise leave the writer idle)."""
    ref, writes, _state = setup
    event = page(["1", "2", "3"], "e1")
    ref.tell(Enqueue(event.side, event.changes, None, 1000.0, RULES, False, False, False,
                     event=True))
    batch = next_batch(writes)
    assert [i.key for i in batch.items] == ["1", "2", "3"]


def test_work_queued_behind_a_small_batch_goes_out_when_it_is_done(
    setup: tuple[Any, queue.Queue[Any], Path],
) -> None:
    """An event's changes queued while a batch smaller than batch_size is in flight are
    leased when its outcome comes back, not at the next flush tick (none is sent here)."""
    ref, writes, _state = setup
    for keys in (["1", "2"], ["7", "8"]):  # events: queued, never direct
        event = page(keys, "e")
        ref.tell(Enqueue(event.side, event.changes, None, 1000.0, RULES, False, False,
                         False, event=True))
    first = next_batch(writes)
    assert [i.key for i in first.items] == ["1", "2"]  # leased at once: the writer was idle
    ref.tell(synced(first, 1001.0))
    second = next_batch(writes)
    assert [i.key for i in second.items] == ["7", "8"]


def test_a_page_larger_than_batch_size_goes_to_the_writer_whole_in_batch_sized_chunks(
    tmp_path: Path,
) -> None:
    """page_size 50, batch_size 10, a target with no request budget (a local side): a
    plain page of 30 is not queued record by record and leased 10 at a time; the writer
    gets it whole and writes it 10 at a time."""
    with queue_actor(tmp_path, Settings(batch_size=10, page_size=50),
                     unthrottled=frozenset("b")) as started:
        ref, writes, _state = started
        keys = [str(k) for k in range(100, 130)]
        ref.tell(page(keys, "c1"))
        batch = next_batch(writes)
        assert [i.key for i in batch.items] == keys and batch.chunk == 10
        counts = ref.proxy().counts().get()
        assert counts.get("ready_a_to_b", 0) == 0  # nothing queued
        ref.tell(synced(batch, 1001.0))
        assert ref.proxy().cursors().get()["a"] == "c1"
        assert ref.proxy().counts().get()["total_synced_a_to_b"] == 30


def test_a_page_larger_than_batch_size_for_a_crm_is_leased_a_batch_at_a_time(
    tmp_path: Path,
) -> None:
    """A target with a request budget (a CRM): each batch_size write is gated by the
    budget and has its own outcome, so a page larger than batch_size is queued."""
    with queue_actor(tmp_path, Settings(batch_size=10, page_size=50)) as started:
        ref, writes, _state = started
        ref.tell(page([str(k) for k in range(100, 130)], "c1"))
        batch = next_batch(writes)
        assert len(batch.items) == 10
        assert ref.proxy().counts().get()["ready_a_to_b"] == 30  # all queued (none leased
        # is marked: which items are in flight only the queue actor knows)


def test_a_listing_unit_of_pages_that_do_not_divide_the_unit_goes_to_the_writer_whole(
    tmp_path: Path,
) -> None:
    """page_size = batch_size = 300, a local source and target: the connector joins pages
    until LISTING_UNIT records, so a unit holds the first multiple of 300 from there (up to
    LISTING_UNIT + page_size - 1). It must still go to the writer whole, not be queued
    record by record (which the units were made to spare)."""
    unit = -(-LISTING_UNIT // 300) * 300
    assert unit > LISTING_UNIT  # pages that do not divide the unit
    with queue_actor(tmp_path, Settings(batch_size=300, page_size=300),
                     unthrottled=frozenset("b")) as started:
        ref, writes, _state = started
        keys = [str(k) for k in range(10_000, 10_000 + unit)]
        ref.tell(page(keys, "c1"))
        batch = next_batch(writes)
        assert [i.key for i in batch.items] == keys and batch.chunk == 300
        assert ref.proxy().counts().get().get("ready_a_to_b", 0) == 0  # nothing queued


def test_a_batch_carries_the_targets_cursor_as_last_recorded(tmp_path: Path) -> None:
    # WriteBatch.seen: the writer checks only what changed on the target after it
    settings = Settings(batch_size=10, page_size=10)
    with queue_actor(tmp_path, settings) as (ref, writes, _state):
        ref.tell(page(["1"], "a1"))
        first = next_batch(writes)
        assert first.seen is None  # nothing heard from side b yet
        ref.tell(synced(first, 1001.0))
        ref.tell(Enqueue("b", [], '{"seq": 7}', 1001.0, RULES, False, False, False))
        ref.tell(page(["2"], "a2"))
        assert next_batch(writes).seen == '{"seq": 7}'
    with queue_actor(tmp_path, settings) as (ref, writes, _s):  # restarted: from the store
        ref.tell(page(["3"], "a3"))
        assert next_batch(writes).seen == '{"seq": 7}'


def retried(batch: WriteBatch, at: float) -> BatchDone:
    return BatchDone("a_to_b", [ItemOutcome(i.key, i.gen, "retry", "b is locked")
                                for i in batch.items], at)


def committed(polls: queue.Queue[Any]) -> list[str | None]:
    """The cursors committed so far, as the poller's recorder has them now."""
    out = []
    while not polls.empty():
        msg = polls.get_nowait()
        if isinstance(msg, Committed):
            out.append(msg.cursor)
    return out


def committed_soon(polls: queue.Queue[Any], cursor: str, timeout: float = 10.0) -> bool:
    """Whether ``cursor`` is committed to the poller within ``timeout`` seconds (the
    poller's recorder is an actor of its own: it gets the message a moment later)."""
    try:
        while True:
            msg = polls.get(timeout=timeout)
            if isinstance(msg, Committed) and msg.cursor == cursor:
                return True
    except queue.Empty:
        return False


def test_a_page_waits_for_the_due_backlog_then_goes_to_the_writer_whole(
        tmp_path: Path) -> None:
    # a local target (no request budget): a page behind work queued in its direction
    # waits, unrecorded, for that work to be written, then goes direct, not on the queue
    clock = FakeClock(time=1000.0)
    polls: queue.Queue[Any] = queue.Queue()
    settings = Settings(batch_size=10, page_size=10)
    with queue_actor(tmp_path, settings, frozenset({"b"}), clock, polls) as (ref, writes, _s):
        ref.tell(page(["1", "2"], "c1"))
        ref.tell(retried(next_batch(writes), 1001.0))  # queued again, for a retry later
        assert ref.proxy().counts().get()["ready_a_to_b"] == 2  # (the outcome is saved)
        clock.advance(3600)  # due now
        ref.tell(page(["3", "4"], "c2", "M"))
        backlog = next_batch(writes)
        assert sorted(i.key for i in backlog.items) == ["1", "2"]
        assert "c2" not in committed(polls)  # the page waits, unrecorded
        assert ref.proxy().progress().get()["pending"] == 1
        ref.tell(synced(backlog, clock.time()))
        whole = next_batch(writes)
        assert sorted(i.key for i in whole.items) == ["3", "4"]
        assert ref.proxy().counts().get().get("ready_a_to_b", 0) == 0  # never queued
        ref.tell(synced(whole, clock.time()))
        assert ref.proxy().cursors().get()["a"] == "c2"
        assert committed_soon(polls, "c2")


def test_a_page_does_not_wait_for_work_due_later(tmp_path: Path) -> None:
    clock = FakeClock(time=1000.0)
    polls: queue.Queue[Any] = queue.Queue()
    settings = Settings(batch_size=10, page_size=10)
    with queue_actor(tmp_path, settings, frozenset({"b"}), clock, polls) as (ref, writes, _s):
        ref.tell(page(["1", "2"], "c1"))
        ref.tell(retried(next_batch(writes), 1001.0))  # a retry later: not due
        ref.tell(page(["3", "4"], "c2", "M"))
        assert ref.proxy().cursors().get()["a"] == "c2"  # recorded at once: on the queue
        assert sorted(i.key for i in next_batch(writes).items) == ["3", "4"]  # due, leased
