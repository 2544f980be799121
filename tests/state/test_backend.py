"""What the control plane reads through a backend, and the fence seam of state writes."""

from __future__ import annotations

import pytest

from recsync.clock import FakeClock
from recsync.daemon.records import failed_records, pipeline_counts, pipeline_cursors
from recsync.errors import RecsyncError
from recsync.messages import ItemOutcome, Prepared
from recsync.rules import RuleSet, content_hash
from recsync.state.backend import StateBackend
from recsync.state.store import RetryPolicy, Store
from tests.state.conftest import OpenStore

RULES = RuleSet(name="t", a_to_b=["create", "update", "delete"], b_to_a=["create"],
                mappings={"id": "id", "name": "name"})


def change(key: str, name: str) -> Prepared:
    content = {"id": key, "name": name}
    return Prepared(key, "upsert", content, content_hash(content), True, 1.0)


def test_the_control_plane_reads_counts_cursors_and_failures(
    store: Store, clock: FakeClock, open_store: OpenStore
) -> None:
    reader = open_store.reader()
    assert pipeline_counts(reader)["queued"] == 0 and pipeline_cursors(reader) == {}
    store.enqueue("a", [change("1", "Ada"), change("2", "Bob"), change("3", "Cy")], "a7",
                  clock.time(), RULES)
    items = store.lease("a_to_b", 10, frozenset())
    outcomes = [ItemOutcome(i.key, i.gen, "synced", hash=i.hash, src_hash=i.src_hash)
                for i in items if i.key != "2"]
    outcomes.append(ItemOutcome("2", next(i.gen for i in items if i.key == "2"), "rejected",
                                "refused by b"))
    store.apply("a_to_b", outcomes, RetryPolicy(), clock.time())
    assert pipeline_counts(reader) == {"queued": 0, "failed": 1, "synced_a_to_b": 2,
                                       "synced_b_to_a": 0, "conflicts": 0}
    assert pipeline_cursors(reader) == {"a": "a7"}
    (bad,) = failed_records(reader, "cust/pipe", 10)
    assert (bad.key, bad.direction, bad.last_error) == ("2", "a_to_b", "refused by b")
    # the queue and history counts of the store itself agree
    assert store.counts()["total_synced_a_to_b"] == 2


class Fenced(RecsyncError):
    """What a lease check raises when this node no longer owns the pipeline."""


def test_a_fence_runs_in_every_state_transaction_and_refuses_it(
    store: Store, clock: FakeClock
) -> None:
    calls: list[StateBackend] = []
    owner = {"ok": True}

    def fence(db: StateBackend) -> None:
        calls.append(db)
        if not owner["ok"]:
            raise Fenced("pipeline cust/pipe is owned by another node")

    store.backend.fence = fence
    store.enqueue("a", [change("1", "Ada")], "a1", clock.time(), RULES)
    assert calls == [store.backend]
    owner["ok"] = False
    with pytest.raises(Fenced):
        store.enqueue("a", [change("2", "Bob")], "a2", clock.time(), RULES)
    with pytest.raises(Fenced):
        store.retry_failed()
    # nothing of the refused transactions was written
    assert store.cursor("a") == "a1" and store.pending() == 1
    owner["ok"] = True
    store.enqueue("a", [change("2", "Bob")], "a2", clock.time(), RULES)
    assert store.cursor("a") == "a2" and store.pending() == 2
