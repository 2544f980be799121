"""Records a side holds that cannot be read: failed records in the store."""

from __future__ import annotations

from recsync.clock import FakeClock
from recsync.messages import Unreadable
from recsync.rules import RuleSet
from recsync.state.store import Store
from tests.state.test_store import change, sync_all

RULES = RuleSet(
    name="t",
    a_to_b=["create", "update", "delete"],
    b_to_a=["create", "update", "delete"],
    mappings={"id": "id", "name": "name"},
)


def failed(store: Store) -> list[tuple[str, str, str]]:
    return store.backend.query(
        "SELECT direction, key, last_error FROM queue WHERE state = 'failed' ORDER BY key"
    )


def listing(store: Store, clock: FakeClock, keys: list[str], bad: list[Unreadable]) -> int:
    """One listing of side b in one page: how many deletes it queued."""
    clock.advance(1)
    stats = store.enqueue("b", [change(k, f"n{k}") for k in keys], "c", clock.time(), RULES,
                          listing_start=True, listing_done=True, unreadable=bad)
    return stats.deletes


def test_a_listing_that_met_a_line_hiding_a_key_deletes_nothing(
    store: Store, clock: FakeClock
) -> None:
    store.enqueue("a", [change(k, f"n{k}") for k in "123"], "c", clock.time(), RULES)
    sync_all(store, "a_to_b", clock)
    line = Unreadable("f.csv:3", "Line 3 of f.csv cannot be read: bad bytes")
    assert listing(store, clock, ["1", "3"], [line]) == 0  # "2" may be that line
    assert failed(store) == [("b_to_a", "f.csv:3", line.reason)]
    assert store.counts()["failed_b_to_a"] == 1
    # fixed: the next listing drops the failed record (and finds deletes again)
    assert listing(store, clock, ["1", "3"], []) == 1
    assert failed(store) == []


def test_a_line_without_a_key_does_not_stop_deletes(store: Store, clock: FakeClock) -> None:
    store.enqueue("a", [change(k, f"n{k}") for k in "12"], "c", clock.time(), RULES)
    sync_all(store, "a_to_b", clock)
    keyless = Unreadable("f.csv:9", "no key", hides_key=False)
    assert listing(store, clock, ["1"], [keyless]) == 1
    assert [k for _d, k, _e in failed(store)] == ["f.csv:9"]


def test_a_complete_set_replaces_the_recorded_one_and_a_retry_drops_them(
    store: Store, clock: FakeClock
) -> None:
    rows = [Unreadable(f"t rowid {i}", "NULL key", hides_key=False) for i in (1, 2)]
    store.enqueue("a", [], "c1", clock.time(), RULES, unreadable=rows, unreadable_all=True)
    store.enqueue("a", [], "c2", clock.time(), RULES, unreadable=rows[1:], unreadable_all=True)
    assert [k for _d, k, _e in failed(store)] == ["t rowid 2"]
    history = store.backend.query("SELECT key, event FROM history ORDER BY id")
    assert history == [("t rowid 1", "failed"), ("t rowid 2", "failed")]  # once each
    assert store.retry_failed(None) == 0  # nothing to write again: they are no work
    assert store.drop_unreadable(None) == (1, {"a"})
    assert failed(store) == []
