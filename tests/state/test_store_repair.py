"""Store.repair: the syncs `recsync verify --repair` queues, and the mass-delete guard."""

from __future__ import annotations

import pytest

from recsync.clock import FakeClock
from recsync.messages import ItemOutcome, Prepared
from recsync.rules import RuleSet, content_hash
from recsync.state.store import MassDeleteBlocked, RepairItem, RetryPolicy, Store

RULES = RuleSet(name="t", a_to_b=["create", "update", "delete"], b_to_a=["create", "update"],
                mappings={"id": "id", "name": "name"})


def content(key: str, name: str) -> dict[str, str]:
    return {"id": key, "name": name}


def synced(store: Store, clock: FakeClock, n: int) -> str:
    """``n`` records queued from A and written to B; returns record 1's hash."""
    changes = [Prepared(str(i), "upsert", content(str(i), f"N{i}"),
                        content_hash(content(str(i), f"N{i}")), True, 1.0)
               for i in range(1, n + 1)]
    store.enqueue("a", changes, "c1", clock.time(), RULES)
    items = store.lease("a_to_b", 100, frozenset())
    clock.advance(0.01)
    store.apply("a_to_b", [ItemOutcome(i.key, i.gen, "synced", hash=i.hash, src_hash=i.src_hash)
                           for i in items], RetryPolicy(), clock.time())
    return changes[0].hash or ""


def test_a_record_the_target_lost_is_queued_again_as_new_to_it(
        store: Store, clock: FakeClock) -> None:
    h = synced(store, clock, 1)
    queued = store.repair([RepairItem("a_to_b", "1", content("1", "N1"), h, 1.0, h, None,
                                      "verify: missing_b")])
    assert queued == {"a_to_b": 1, "b_to_a": 0}
    (item,) = store.lease("a_to_b", 10, frozenset())
    # the writer is told the target holds nothing: no conflict with the lost record
    assert (item.key, item.op, item.content, item.expected_hash) == (
        "1", "upsert", content("1", "N1"), None)
    assert store.pending_keys() == {"1"}
    history = store.backend.query("SELECT event, detail FROM history WHERE key = '1'")
    assert ("repair", "verify: missing_b") in history


def test_a_changed_target_is_expected_as_verify_saw_it(store: Store, clock: FakeClock) -> None:
    h = synced(store, clock, 1)
    theirs = content_hash(content("1", "edited on b"))
    store.repair([RepairItem("a_to_b", "1", content("1", "N1"), h, 1.0, h, theirs)])
    (item,) = store.lease("a_to_b", 10, frozenset())
    assert item.expected_hash == theirs


def test_too_many_deletes_are_held_until_allowed_once(store: Store, clock: FakeClock) -> None:
    synced(store, clock, 20)
    deletes = [RepairItem("a_to_b", str(i), None, None, 1.0, None, "h") for i in range(1, 16)]
    with pytest.raises(MassDeleteBlocked) as err:
        store.repair(deletes, mass_delete_share=0.5, mass_delete_min=10)
    assert (err.value.side, err.value.count, err.value.total) == ("a", 15, 20)
    assert store.pending_keys() == set()  # nothing queued
    store.allow_mass_delete("a")
    assert store.repair(deletes, mass_delete_share=0.5, mass_delete_min=10) == {
        "a_to_b": 15, "b_to_a": 0}
    assert len(store.lease("a_to_b", 100, frozenset())) == 15
    assert store.meta("allow_deletes_a") == 0  # used up
    few = deletes[:9]  # under mass_delete_min: never held
    store.repair(few, mass_delete_share=0.5, mass_delete_min=10)
