"""The writer's check of the target before an update, with WriteBatch.seen (only records
changed since the queue's cursor of the target are compared): a change of the target that
the queue holds as work, never resolved against the other side's work, is still checked."""

from __future__ import annotations

import queue
import sqlite3
from pathlib import Path
from typing import Any

from recsync.actors.pipeline import Peers
from recsync.actors.protocol import BatchDone, Enqueue, Flush, WriteBatch
from recsync.actors.queue import QueueActor
from recsync.clock import FakeClock
from recsync.config import Settings
from recsync.messages import ItemOutcome, Prepared
from recsync.rules import RuleSet, content_hash
from tests.actors.recorder import Recorder
from tests.actors.test_connector import start_people_writer
from tests.e2e.helpers import wait_for

RULES = RuleSet(name="t", a_to_b=["create", "update"], b_to_a=["create", "update"],
                mappings={"id": "id", "name": "name"})


def rec(name: str) -> dict[str, Any]:
    return {"id": "X", "name": name}


def change(name: str, modified: float) -> Prepared:
    return Prepared("X", "upsert", rec(name), content_hash(rec(name)), True, modified)


def batch_from(inbox: queue.Queue[Any]) -> WriteBatch:
    while True:
        msg = inbox.get(timeout=10)
        if isinstance(msg, tuple) and isinstance(msg[0], WriteBatch):
            return msg[0]


def test_a_target_change_queued_while_the_other_way_was_in_flight_is_still_checked(
        tmp_path: Path) -> None:
    clock = FakeClock(time=1000.0)
    peers = Peers()
    peers.refs["connector_b"], db = start_people_writer(tmp_path, peers, clock)
    to_a: queue.Queue[Any] = queue.Queue()
    polls: queue.Queue[Any] = queue.Queue()
    peers.refs["connector_a"] = Recorder.start(to_a)
    peers.refs["poller_a"] = Recorder.start(polls)
    peers.refs["poller_b"] = Recorder.start(polls)
    q = QueueActor.start("c/p", 1, lambda _f: None, state_path=tmp_path / "state.sqlite",
                         settings=Settings(batch_size=10, page_size=10), ruleset=RULES,
                         peers=peers, clock=clock)
    peers.refs["queue"] = q
    try:
        # X is created on b by the pipeline (a -> b) and linked
        q.tell(Enqueue("a", [change("N", 900.0)], "a1", 950.0, RULES, False, False, False))
        clock.advance(1.0)
        wait_for(lambda: q.proxy().counts().get().get("total_synced_a_to_b", 0) == 1,
                 timeout=10, what="X created on b")
        # someone edits X on b; the b poller reports it (cursor: the log's top)
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE people SET name = 'Theirs', updated_at = 5000 WHERE id = 'X'")
            (top,) = conn.execute("SELECT max(seq) FROM recsync_changelog_people").fetchone()
        conn.close()
        clock.advance(1000.0)  # t = 2001
        q.tell(Enqueue("b", [change("Theirs", 5000.0)], f'{{"seq": {top}}}', clock.time(),
                       RULES, False, False, False))
        back = batch_from(to_a)  # b -> a, in flight (a direct page)
        assert [i.key for i in back.items] == ["X"]
        # meanwhile X was edited on a too, earlier than on b; the a page is queued (X is
        # in flight the other way: no conflict resolved at enqueue)
        q.tell(Enqueue("a", [change("Mine", 1500.0)], "a2", clock.time(), RULES,
                       False, False, False))
        # the write to a fails for now (side a locked): b -> a X queued to retry
        q.tell(BatchDone("b_to_a", [ItemOutcome("X", i.gen, "retry", "a is locked")
                                    for i in back.items], clock.time()))
        clock.advance(0.01)  # (the write returns a moment after the b page was read)
        q.tell(Flush())  # a -> b X goes out, to the real writer of b
        wait_for(lambda: (q.proxy().counts().get().get("total_synced_a_to_b", 0) >= 2
                          or q.proxy().counts().get().get("total_conflicts", 0)),
                 timeout=10, what="the a -> b write of X")
        with sqlite3.connect(db) as conn:
            name = conn.execute("SELECT name FROM people WHERE id = 'X'").fetchone()[0]
        conn.close()
        counts = q.proxy().counts().get()
        # the writer fetched X, saw 'Theirs' (not what the queue expected) and resolved
        # the conflict: last writer wins, b's edit (later) stays
        assert name == "Theirs"
        assert counts.get("total_conflicts") == 1
    finally:
        for r in (q, *peers.refs.values()):
            r.stop()
