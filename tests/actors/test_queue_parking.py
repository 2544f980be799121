"""Pages parked behind work queued in their direction (QueueActor._parks): they wait a
bounded time, never pass a later change of their side, meet the other side's changes of
their records on the queue, and do not make a deferred queue be leased again at once."""

from __future__ import annotations

import queue
from pathlib import Path
from typing import Any

from recsync.actors.protocol import BatchDone, Enqueue, Flush, WriteBatch
from recsync.clock import FakeClock
from recsync.config import Settings
from recsync.messages import ItemOutcome, Prepared
from recsync.rules import content_hash
from tests.actors.test_queue import (
    RULES,
    committed,
    committed_soon,
    next_batch,
    page,
    queue_actor,
    retried,
    synced,
)


def event(keys: list[str], name: str) -> Enqueue:
    changes = [Prepared(k, "upsert", {"id": k, "name": f"{name}{k}"},
                        content_hash({"id": k, "name": f"{name}{k}"}), True, 2.0)
               for k in keys]
    return Enqueue("a", changes, None, 2000.0, RULES, False, False, False, event=True)


def deferred(batch: WriteBatch, at: float, retry_at: float) -> BatchDone:
    return BatchDone("a_to_b", [ItemOutcome(i.key, i.gen, "deferred", "breaker open",
                                            retry_at) for i in batch.items], at)


def barrier(ref: Any) -> None:
    ref.proxy().progress().get()


def backlog(ref: Any, writes: queue.Queue[Any], clock: FakeClock, keys: list[str]) -> None:
    """``keys`` queued a_to_b and due now."""
    ref.tell(page(keys, "c1"))
    ref.tell(retried(next_batch(writes), clock.time()))
    barrier(ref)
    clock.advance(3600)


def test_a_parked_page_does_not_wait_for_work_queued_after_it(tmp_path: Path) -> None:
    # Events (or requeues from the other direction) keep due work of the direction on the
    # queue: the parked page (and its poller) wait as long as they keep coming.
    clock = FakeClock(time=1000.0)
    polls: queue.Queue[Any] = queue.Queue()
    settings = Settings(batch_size=10, page_size=10)
    with queue_actor(tmp_path, settings, frozenset({"b"}), clock, polls) as (ref, writes, _s):
        backlog(ref, writes, clock, ["1", "2"])
        ref.tell(page(["3", "4"], "c2", "M"))  # parks; 1, 2 leased
        batch = next_batch(writes)
        for n in range(5):
            ref.tell(event([f"e{n}"], "E"))  # arrives while the batch is written
            ref.tell(Flush())
            ref.tell(synced(batch, clock.time()))
            batch = next_batch(writes)
            if {"3", "4"} <= {i.key for i in batch.items}:
                break
        assert committed_soon(polls, "c2"), "page parked behind work queued after it"


def test_a_parked_page_keeps_its_order_with_an_event_of_the_same_record(
        tmp_path: Path) -> None:
    # page M3 read, parked; then an event E3 of the same record: B must end with E3
    clock = FakeClock(time=1000.0)
    settings = Settings(batch_size=10, page_size=10)
    with queue_actor(tmp_path, settings, frozenset({"b"}), clock) as (ref, writes, _s):
        backlog(ref, writes, clock, ["1", "2"])
        ref.tell(page(["3"], "c2", "M"))  # parks
        first = next_batch(writes)
        ref.tell(event(["3"], "E"))  # queued (events are never parked)
        ref.tell(synced(first, clock.time()))
        last: dict[str, str] = {}
        while (batch := next_batch_or_none(writes)) is not None:
            for i in batch.items:
                last[i.key] = (i.content or {})["name"]
            ref.tell(synced(batch, clock.time()))
        assert last["3"] == "E3", f"B ends with {last['3']}, the older change"


def next_batch_or_none(inbox: queue.Queue[Any]) -> WriteBatch | None:
    try:
        while True:
            msg = inbox.get(timeout=0.5)
            if isinstance(msg, tuple) and isinstance(msg[0], WriteBatch):
                return msg[0]
    except queue.Empty:
        return None


def test_a_deferred_batch_lets_the_parked_page_go_and_the_queue_rest(
        tmp_path: Path) -> None:
    # a deferred batch (breaker open) leaves the queue for later: the parked page goes on
    # the queue, which is leased once more at most (as for a page arriving then), not
    # batch after batch
    clock = FakeClock(time=1000.0)
    settings = Settings(batch_size=10, page_size=10)
    with queue_actor(tmp_path, settings, frozenset({"b"}), clock) as (ref, writes, _s):
        backlog(ref, writes, clock, [str(k) for k in range(100, 125)])
        ref.tell(page(["3", "4"], "c2", "M"))  # parks; 10 of the 25 leased
        first = next_batch(writes)
        ref.tell(deferred(first, clock.time(), clock.time() + 60))
        assert ref.proxy().cursors().get()["a"] == "c2"  # the page is on the queue now
        second = next_batch_or_none(writes)
        if second is not None:
            ref.tell(deferred(second, clock.time(), clock.time() + 60))
            barrier(ref)
            assert next_batch_or_none(writes) is None, "leased batch after batch"


def test_a_parked_page_still_meets_the_other_sides_change_of_its_record(
        tmp_path: Path) -> None:
    # Record 3 is created on both sides. A's change (newer: last_writer_wins says A) is in
    # a parked page; B's page comes meanwhile. Queued, A's change made B's a conflict
    # decided by the policy; parked, B's change goes to A unchecked (no link: nothing to
    # compare) and A's page is then dropped as stale: A's newer content is lost.
    import contextlib

    from recsync.actors.pipeline import Peers
    from recsync.actors.queue import QueueActor
    from tests.actors.recorder import Recorder

    clock = FakeClock(time=1000.0)
    settings = Settings(batch_size=10, page_size=10)
    writes_b: queue.Queue[Any] = queue.Queue()
    writes_a: queue.Queue[Any] = queue.Queue()
    polls: queue.Queue[Any] = queue.Queue()
    peers = Peers()
    peers.refs["connector_b"] = Recorder.start(writes_b)
    peers.refs["connector_a"] = Recorder.start(writes_a)
    peers.refs["poller_a"] = Recorder.start(polls)
    peers.refs["poller_b"] = Recorder.start(polls)
    ref = QueueActor.start("c/p", 1, lambda _f: None, state_path=tmp_path / "s.sqlite",
                           settings=settings, ruleset=RULES, peers=peers, clock=clock,
                           unthrottled=frozenset({"a", "b"}))
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: [r.stop() for r in (ref, *peers.refs.values())])
        backlog(ref, writes_b, clock, ["1", "2"])
        ref.tell(Flush())
        first = next_batch(writes_b)  # 1, 2 being written
        mine = {"id": "3", "name": "A3"}
        ref.tell(Enqueue("a", [Prepared("3", "upsert", mine, content_hash(mine), True,
                                        clock.time())], "c2", clock.time(), RULES,
                         False, False, True))
        barrier(ref)  # the page with 3 is parked
        theirs = {"id": "3", "name": "B3"}
        ref.tell(Enqueue("b", [Prepared("3", "upsert", theirs, content_hash(theirs), True,
                                        clock.time() - 100)], "b1", clock.time(), RULES,
                         False, False, False))
        barrier(ref)
        to_a = next_batch_or_none(writes_a)
        if to_a is not None:
            ref.tell(BatchDone("b_to_a", [ItemOutcome(i.key, i.gen, "synced", hash=i.hash,
                                                      src_hash=i.src_hash)
                                         for i in to_a.items], clock.time()))
        ref.tell(synced(first, clock.time()))
        barrier(ref)
        assert to_a is None or all(i.key != "3" for i in to_a.items), \
            "B's older change of 3 written over A's newer one, no conflict decided"
        assert ref.proxy().counts().get().get("total_conflicts", 0) == 1


def test_a_parked_page_waits_park_ticks_at_most(tmp_path: Path) -> None:
    # a backlog that does not drain (its batch never comes back, say) holds the page and
    # its side PARK_TICKS flush ticks at most; then the page goes on the queue
    from recsync.actors.queue import PARK_TICKS

    clock = FakeClock(time=1000.0)
    polls: queue.Queue[Any] = queue.Queue()
    settings = Settings(batch_size=10, page_size=10)
    with queue_actor(tmp_path, settings, frozenset({"b"}), clock, polls) as (ref, writes, _s):
        backlog(ref, writes, clock, [str(k) for k in range(100, 125)])
        ref.tell(page(["3", "4"], "c2", "M"))  # parks; 10 of the 25 leased, never done
        next_batch(writes)
        for _ in range(PARK_TICKS - 1):
            ref.tell(Flush())
        barrier(ref)
        assert "c2" not in committed(polls)
        ref.tell(Flush())
        assert committed_soon(polls, "c2")
        assert ref.proxy().cursors().get()["a"] == "c2"
