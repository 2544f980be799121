"""The pipeline store: queueing rules, echo suppression, conflicts, results, deletes."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsync.clock import FakeClock
from recsync.errors import StateUnavailable
from recsync.messages import ItemOutcome, Prepared
from recsync.rules import RuleSet, content_hash
from recsync.state.backend import SqliteBackend
from recsync.state.store import MassDeleteBlocked, RetryPolicy, Store
from tests.diskfull import fill, small_disk
from tests.state.conftest import OpenStore

RULES = RuleSet(
    name="t",
    a_to_b=["create", "update", "delete"],
    b_to_a=["create", "update"],
    mappings={"id": "id", "name": "name"},
)


def change(key: str, name: str | None, modified: float = 1.0, passes: bool = True) -> Prepared:
    if name is None:
        return Prepared(key, "delete", None, None, True, modified)
    content = {"id": key, "name": name}
    return Prepared(key, "upsert", content, content_hash(content), passes, modified)


def sync_all(store: Store, direction: str, clock: FakeClock) -> list[str]:
    items = store.lease(direction, 100, frozenset())  # type: ignore[arg-type]
    outcomes = [ItemOutcome(i.key, i.gen, "synced", hash=i.hash, src_hash=i.src_hash)
                for i in items]
    clock.advance(0.01)
    store.apply(direction, outcomes, RetryPolicy(), clock.time())  # type: ignore[arg-type]
    return [i.key for i in items]


def test_new_records_are_queued_with_the_cursor_in_one_step(store: Store) -> None:
    stats = store.enqueue("a", [change("1", "Ada"), change("2", "Bob")], "c1", 999.0, RULES)
    assert stats.queued == 2
    assert store.cursor("a") == "c1"
    assert store.pending() == 2


def test_our_own_write_coming_back_is_dropped(store: Store, clock: FakeClock) -> None:
    store.enqueue("a", [change("1", "Ada")], "c1", clock.time(), RULES)
    assert sync_all(store, "a_to_b", clock) == ["1"]
    clock.advance(1)
    echo = store.enqueue("b", [change("1", "Ada")], "b1", clock.time(), RULES)
    assert echo.queued == 0 and echo.unchanged == 1
    again = store.enqueue("a", [change("1", "Ada")], "c2", clock.time(), RULES)
    assert again.queued == 0


def test_a_newer_change_replaces_a_pending_one(store: Store) -> None:
    store.enqueue("a", [change("1", "Ada")], "c1", 999.0, RULES)
    store.enqueue("a", [change("1", "Ada L")], "c2", 999.0, RULES)
    items = store.lease("a_to_b", 10, frozenset())
    assert [(i.key, i.content) for i in items] == [("1", {"id": "1", "name": "Ada L"})]


def test_change_arriving_while_in_flight_survives_the_old_result(
    store: Store, clock: FakeClock
) -> None:
    store.enqueue("a", [change("1", "Ada")], "c1", clock.time(), RULES)
    (item,) = store.lease("a_to_b", 10, frozenset())
    store.enqueue("a", [change("1", "Ada v2")], "c2", clock.time(), RULES)
    store.apply("a_to_b", [ItemOutcome("1", item.gen, "synced", hash=item.hash)], RetryPolicy(),
                clock.time())
    (newer,) = store.lease("a_to_b", 10, frozenset())
    assert newer.content == {"id": "1", "name": "Ada v2"}


def test_operations_not_in_the_rules_are_not_queued(store: Store, clock: FakeClock) -> None:
    store.enqueue("a", [change("1", "Ada")], "c1", clock.time(), RULES)
    sync_all(store, "a_to_b", clock)
    clock.advance(1)
    stats = store.enqueue("b", [change("1", None)], "b1", clock.time(), RULES)
    assert stats.queued == 0  # b_to_a has no "delete"
    assert store.pending() == 0


def test_filtered_records_are_not_queued(store: Store) -> None:
    stats = store.enqueue("a", [change("1", "Ada", passes=False)], "c1", 999.0, RULES)
    assert stats.filtered == 1 and store.pending() == 0


def test_conflict_with_pending_change_last_writer_wins(store: Store, clock: FakeClock) -> None:
    store.enqueue("a", [change("1", "Ada")], "c1", clock.time(), RULES)
    sync_all(store, "a_to_b", clock)
    clock.advance(1)
    store.enqueue("a", [change("1", "From A", modified=2000.0)], "c2", clock.time(), RULES)
    stats = store.enqueue("b", [change("1", "From B", modified=3000.0)], "b1", clock.time(),
                          RULES)
    assert stats.conflicts == 1
    assert store.lease("a_to_b", 10, frozenset()) == []
    (item,) = store.lease("b_to_a", 10, frozenset())
    assert item.content == {"id": "1", "name": "From B"}
    history = store.backend.query("SELECT event, detail FROM history WHERE key='1'")
    assert ("conflict", "b and a both changed; b wins") in history


def test_transient_failures_back_off_then_fail_after_max_attempts(
    store: Store, clock: FakeClock
) -> None:
    policy = RetryPolicy(max_attempts=3, base_delay=1.0, max_delay=10.0)
    store.enqueue("a", [change("1", "Ada")], "c1", clock.time(), RULES)
    for attempt in range(1, 4):
        (item,) = store.lease("a_to_b", 10, frozenset())
        out = ItemOutcome("1", item.gen, "retry", error="timeout")
        stats = store.apply("a_to_b", [out], policy, clock.time())
        if attempt < 3:
            assert stats.retried == 1
            assert store.lease("a_to_b", 10, frozenset()) == []  # backing off
            clock.advance(2 ** attempt)
    assert stats.failed == 1
    row = store.backend.query("SELECT state, attempts, last_error FROM queue")[0]
    assert row == ("failed", 3, "timeout")
    assert store.pending() == 0
    assert store.retry_failed(["1"]) == 1
    assert [i.key for i in store.lease("a_to_b", 10, frozenset())] == ["1"]


def test_a_retry_notes_history_only_for_the_records_it_retried(
    store: Store, clock: FakeClock
) -> None:
    """`recsync retry KEY` of a record that is not failed (queued, synced, unknown) does
    nothing to it and writes no manual_retry entry in its history; a failed one's is."""
    store.enqueue("a", [change("1", "Ada"), change("2", "Bob"), change("3", "Cy")], "c1",
                  clock.time(), RULES)
    items = store.lease("a_to_b", 10, frozenset())
    outcomes = [ItemOutcome(i.key, i.gen, "rejected", error="bad") if i.key == "1"
                else ItemOutcome(i.key, i.gen, "synced", hash=i.hash) for i in items
                if i.key != "2"]
    store.apply("a_to_b", outcomes, RetryPolicy(), clock.time())
    store.enqueue("a", [change("2", "Bob again")], "c2", clock.time(), RULES)  # queued
    assert store.retry_failed(["2", "3", "9"]) == 0
    assert store.retry_failed(["1", "2", "3", "9"]) == 1
    retried = store.backend.query("SELECT key FROM history WHERE event = 'manual_retry'")
    assert retried == [("1",)]
    assert store.retry_failed(None) == 0  # nothing failed any more: no entry
    assert store.backend.query(
        "SELECT count(*) FROM history WHERE event = 'manual_retry'") == [(1,)]


def test_a_rejected_record_fails_at_once_and_others_sync(store: Store, clock: FakeClock) -> None:
    store.enqueue("a", [change("1", "Ada"), change("2", "Bad")], "c1", clock.time(), RULES)
    items = store.lease("a_to_b", 10, frozenset())
    outcomes = [
        ItemOutcome(i.key, i.gen, "rejected", error="CHECK constraint failed")
        if i.key == "2" else ItemOutcome(i.key, i.gen, "synced", hash=i.hash)
        for i in items
    ]
    stats = store.apply("a_to_b", outcomes, RetryPolicy(), clock.time())
    assert (stats.synced, stats.failed) == (1, 1)
    assert store.counts()["failed_a_to_b"] == 1


def test_observation_older_than_our_write_is_stale(store: Store, clock: FakeClock) -> None:
    store.enqueue("a", [change("1", "Ada")], "c1", clock.time(), RULES)
    observed_before_write = clock.time()
    sync_all(store, "a_to_b", clock)
    stats = store.enqueue("b", [change("1", "old B content")], "b1", observed_before_write,
                          RULES)
    assert stats.stale == 1 and store.pending() == 0


def test_a_direct_page_of_linked_records_takes_the_same_decisions(
        store: Store, clock: FakeClock) -> None:
    """A page that goes to the writer directly (nothing pending) drops what the general
    path drops: changes seen before our write to that side, echoes of our own writes,
    content the other side already holds; an update carries the target's hash."""
    store.enqueue("a", [change(str(k), f"n{k}") for k in range(1, 6)], "c1", clock.time(),
                  RULES)
    observed_before_write = clock.time()
    sync_all(store, "a_to_b", clock)
    clock.advance(1)
    stale = store.enqueue("b", [change("1", "old B content")], "b1", observed_before_write,
                          RULES, direct_limit=100)
    assert stale.stale == 1 and stale.direct is None and store.pending() == 0
    page = [change("2", "n2"),  # our own write coming back
            change("3", "n3 changed on b"), change("4", "n4 changed on b")]
    stats = store.enqueue("b", page, "b2", clock.time(), RULES, direct_limit=100)
    assert (stats.unchanged, stats.stale, stats.queued) == (1, 0, 2)
    assert stats.direct is not None and [i.key for i in stats.direct] == ["3", "4"]
    assert stats.on_target == {"3", "4"}
    assert stats.direct[0].expected_hash == content_hash({"id": "3", "name": "n3"})
    assert store.cursor("b") == "b1"  # b2 is saved with the direct page's outcome
    same = store.enqueue("a", [change("5", "n5"), change("6", "new")], "c2", clock.time(),
                         RULES, direct_limit=100)
    assert same.unchanged == 1 and same.direct is not None
    assert [(i.key, i.expected_hash) for i in same.direct] == [("6", None)]
    assert same.on_target == frozenset()


def test_listing_finds_deletes_of_unlisted_records(store: Store, clock: FakeClock) -> None:
    store.enqueue("a", [change(str(k), f"n{k}") for k in range(1, 5)], "c1", clock.time(),
                  RULES)
    sync_all(store, "a_to_b", clock)
    clock.advance(1)
    store.enqueue("a", [change("1", "n1"), change("2", "n2")], "c2", clock.time(), RULES,
                  listing_start=True)
    stats = store.enqueue("a", [change("3", "n3")], "c3", clock.time(), RULES, listing_done=True)
    assert stats.deletes == 1
    (item,) = store.lease("a_to_b", 10, frozenset())
    assert (item.key, item.op) == ("4", "delete")


def test_mass_delete_guard_holds_back_the_pass(store: Store, clock: FakeClock) -> None:
    store.enqueue("a", [change(str(k), f"n{k}") for k in range(20)], "c1", clock.time(), RULES)
    sync_all(store, "a_to_b", clock)
    clock.advance(1)
    with pytest.raises(MassDeleteBlocked) as err:
        store.enqueue("a", [], "c2", clock.time(), RULES, listing_start=True, listing_done=True,
                      mass_delete_share=0.5, mass_delete_min=5)
    assert (err.value.count, err.value.total) == (20, 20)
    assert store.cursor("a") == "c1" and store.pending() == 0
    store.allow_mass_delete("a")
    stats = store.enqueue("a", [], "c2", clock.time(), RULES, listing_start=True,
                          listing_done=True, mass_delete_share=0.5, mass_delete_min=5)
    assert stats.deletes == 20


def test_mass_delete_guard_counts_the_whole_pass_across_pages(
    store: Store, clock: FakeClock
) -> None:
    """A TRUNCATE read as pages of 4 deletes (each 20% of the 20 linked records): the
    deletes of the first pages wait until the pass ends; the third page takes the pass
    over half, so nothing is deleted until an operator confirms."""
    store.enqueue("a", [change(str(k), f"n{k}") for k in range(20)], "c1", clock.time(), RULES)
    sync_all(store, "a_to_b", clock)
    clock.advance(1)
    guard = {"mass_delete_share": 0.5, "mass_delete_min": 5}
    for n, keys in enumerate([range(0, 6), range(6, 10)], start=2):
        stats = store.enqueue("a", [change(str(k), None) for k in keys], f"c{n}", clock.time(),
                              RULES, more=True, **guard)
        assert stats.linked_deletes == len(keys)
        assert store.lease("a_to_b", 100, frozenset()) == []  # held, not written
    assert store.pending() == 10  # held: pending work, not leased
    with pytest.raises(MassDeleteBlocked) as err:
        store.enqueue("a", [change(str(k), None) for k in range(10, 14)], "c4", clock.time(),
                      RULES, more=True, **guard)
    assert (err.value.count, err.value.total) == (14, 20)
    assert store.cursor("a") == "c3"
    assert store.lease("a_to_b", 100, frozenset()) == []
    # confirmed: the rest of the pass goes through, and at its end every delete is written
    store.allow_mass_delete("a")
    store.enqueue("a", [change(str(k), None) for k in range(10, 14)], "c4", clock.time(),
                  RULES, more=True, **guard)
    assert store.lease("a_to_b", 100, frozenset()) == []
    store.enqueue("a", [], "c5", clock.time(), RULES, **guard)
    assert sorted(sync_all(store, "a_to_b", clock), key=int) == [str(k) for k in range(14)]
    # the next pass is counted afresh, and the confirmation was for that pass only
    with pytest.raises(MassDeleteBlocked) as err:
        store.enqueue("a", [change(str(k), None) for k in range(14, 20)], "c6", clock.time(),
                      RULES, **guard)
    assert (err.value.count, err.value.total) == (6, 6)


def test_a_pass_within_the_threshold_releases_its_held_deletes_at_its_end(
    store: Store, clock: FakeClock
) -> None:
    store.enqueue("a", [change(str(k), f"n{k}") for k in range(20)], "c1", clock.time(), RULES)
    sync_all(store, "a_to_b", clock)
    clock.advance(1)
    guard = {"mass_delete_share": 0.5, "mass_delete_min": 5}
    store.enqueue("a", [change("0", None), change("1", None)], "c2", clock.time(), RULES,
                  more=True, **guard)
    # a newer change of a held record replaces its delete (the row is back)
    store.enqueue("a", [change("1", "back"), change("2", None)], "c3", clock.time(), RULES,
                  more=True, **guard)
    assert [(i.key, i.op) for i in store.lease("a_to_b", 100, frozenset())] == [("1", "upsert")]
    store.enqueue("a", [change("3", None)], "c4", clock.time(), RULES, **guard)
    items = {(i.key, i.op) for i in store.lease("a_to_b", 100, frozenset())}
    assert items == {("0", "delete"), ("1", "upsert"), ("2", "delete"), ("3", "delete")}


BOTH_WAYS = RuleSet(name="t", a_to_b=["create", "update", "delete"],
                    b_to_a=["create", "update", "delete"], mappings={"id": "id", "name": "name"})


def test_an_event_during_a_pass_neither_ends_it_nor_lets_its_deletes_out(
    store: Store, clock: FakeClock
) -> None:
    """A `sync event` while a pass is held back: the pass goes on counting (and blocks at
    14 of 20), its held deletes stay held."""
    store.enqueue("a", [change(str(k), f"n{k}") for k in range(20)], "c1", clock.time(), RULES)
    sync_all(store, "a_to_b", clock)
    clock.advance(1)
    guard = {"mass_delete_share": 0.5, "mass_delete_min": 5}
    store.enqueue("a", [change(str(k), None) for k in range(0, 6)], "c2", clock.time(),
                  RULES, more=True, **guard)
    store.enqueue("a", [change("19", "renamed")], "c2", clock.time(), RULES,
                  save_cursor=False, event=True, **guard)
    assert [(i.key, i.op) for i in store.lease("a_to_b", 100, frozenset())] == [
        ("19", "upsert")]
    store.enqueue("a", [change(str(k), None) for k in range(6, 10)], "c3", clock.time(),
                  RULES, more=True, **guard)
    with pytest.raises(MassDeleteBlocked) as err:
        store.enqueue("a", [change(str(k), None) for k in range(10, 14)], "c4", clock.time(),
                      RULES, more=True, **guard)
    assert err.value.count == 14
    assert {i.op for i in store.lease("a_to_b", 100, frozenset())} == {"upsert"}


def test_a_held_delete_meets_the_other_sides_newer_change_as_a_conflict(
    store: Store, clock: FakeClock
) -> None:
    store.enqueue("a", [change(str(k), f"n{k}") for k in range(20)], "c1", clock.time(),
                  BOTH_WAYS)
    sync_all(store, "a_to_b", clock)
    clock.advance(1)
    guard = {"mass_delete_share": 0.5, "mass_delete_min": 5}
    store.enqueue("a", [change("1", None, modified=2000.0)], "c2", clock.time(), BOTH_WAYS,
                  more=True, **guard)
    stats = store.enqueue("b", [change("1", "From B", modified=3000.0)], "b1", clock.time(),
                          BOTH_WAYS, **guard)
    store.enqueue("a", [], "c3", clock.time(), BOTH_WAYS, **guard)  # the pass ends
    assert stats.conflicts == 1  # B's change is newer: it wins, the delete goes
    assert store.lease("a_to_b", 100, frozenset()) == []
    assert [(i.key, i.op) for i in store.lease("b_to_a", 100, frozenset())] == [
        ("1", "upsert")]


@pytest.mark.parametrize("held", [True, False])
def test_a_row_deleted_then_back_as_it_was_is_not_deleted_on_the_other_side(
    store: Store, clock: FakeClock, held: bool
) -> None:
    """DELETE and re-INSERT of the same row (a reload, or rows restored while a pass is
    held) read in two pages: side B keeps the record."""
    store.enqueue("a", [change(str(k), f"n{k}") for k in range(20)], "c1", clock.time(), RULES)
    sync_all(store, "a_to_b", clock)
    clock.advance(1)
    guard = {"mass_delete_share": 0.5, "mass_delete_min": 5}
    store.enqueue("a", [change("1", None)], "c2", clock.time(), RULES, more=held, **guard)
    clock.advance(1)
    store.enqueue("a", [change("1", "n1")], "c3", clock.time(), RULES, **guard)
    assert store.lease("a_to_b", 100, frozenset()) == []


def test_conflict_found_at_write_time_sends_the_target_content_back(
    store: Store, clock: FakeClock
) -> None:
    store.enqueue("a", [change("1", "Ada")], "c1", clock.time(), RULES)
    sync_all(store, "a_to_b", clock)
    clock.advance(1)
    store.enqueue("a", [change("1", "A edit")], "c2", clock.time(), RULES)
    (item,) = store.lease("a_to_b", 10, frozenset())
    theirs = {"id": "1", "name": "B edit"}
    lost = ItemOutcome("1", item.gen, "superseded", content=theirs, hash=content_hash(theirs),
                       winner="b")
    stats = store.apply("a_to_b", [lost], RetryPolicy(), clock.time())
    assert stats.conflicts == 1 and stats.synced == 0
    (back,) = store.lease("b_to_a", 10, frozenset())
    assert back.content == theirs
    assert store.lease("a_to_b", 10, frozenset()) == []


def test_merged_write_queues_the_merge_for_the_source_too(
    store: Store, clock: FakeClock
) -> None:
    store.enqueue("a", [change("1", "Ada")], "c1", clock.time(), RULES)
    (item,) = store.lease("a_to_b", 10, frozenset())
    merged = {"id": "1", "name": "merged"}
    out = ItemOutcome("1", item.gen, "synced", hash=content_hash(merged), winner="merged",
                      content=merged)
    store.apply("a_to_b", [out], RetryPolicy(), clock.time() + 0.01)
    (back,) = store.lease("b_to_a", 10, frozenset())
    assert back.content == merged
    link = store.backend.query("SELECT b_hash FROM links WHERE key = '1'")[0]
    assert link == (content_hash(merged),)


def test_changed_rules_make_link_hashes_stale_until_the_next_write(
    store: Store, clock: FakeClock
) -> None:
    store.enqueue("a", [change("1", "Ada")], "c1", clock.time(), RULES)
    sync_all(store, "a_to_b", clock)
    assert store.use_rules("v1") is True and store.use_rules("v1") is False
    store.enqueue("a", [change("1", "Ada 2")], "c2", clock.time() + 1, RULES)
    (item,) = store.lease("a_to_b", 10, frozenset())
    assert item.expected_hash is None  # no conflict may be inferred from a stale hash
    sync_all_items = [ItemOutcome(item.key, item.gen, "synced", hash=item.hash,
                                  src_hash=item.src_hash)]
    store.apply("a_to_b", sync_all_items, RetryPolicy(), clock.time() + 2)
    store.enqueue("a", [change("1", "Ada 3")], "c3", clock.time() + 3, RULES)
    (fresh,) = store.lease("a_to_b", 10, frozenset())
    assert fresh.expected_hash == item.hash


# ---------------------------------------------------------------- pages written directly

def test_a_plain_page_goes_direct_and_is_saved_with_its_outcome(
    store: Store, clock: FakeClock
) -> None:
    from recsync.state.store import DirectPage

    stats = store.enqueue("a", [change("1", "Ada"), change("2", "Bob"), change("3", "Cy")],
                          "c1", clock.time(), RULES, direct_limit=10)
    assert stats.direct is not None and [i.key for i in stats.direct] == ["1", "2", "3"]
    # nothing is queued and the cursor is not saved until the outcome is
    assert store.pending() == 0 and store.cursor("a") is None
    one, two, three = stats.direct
    outcomes = [
        ItemOutcome(one.key, one.gen, "synced", hash=one.hash, src_hash=one.src_hash),
        ItemOutcome(two.key, two.gen, "retry", error="target busy"),
        ItemOutcome(three.key, three.gen, "rejected", error="bad email"),
    ]
    clock.advance(0.01)
    page = DirectPage("a", "c1", clock.time(), {i.key: i for i in stats.direct})
    result = store.apply("a_to_b", outcomes, RetryPolicy(), clock.time(), page)
    assert (result.synced, result.retried, result.failed) == (1, 1, 1)
    assert store.cursor("a") == "c1"
    counts = store.counts()
    assert counts["ready_a_to_b"] == 1 and counts["failed_a_to_b"] == 1
    # the retry comes back from the queue with its content, after its backoff
    clock.advance(3600)
    retry = store.lease("a_to_b", 10, frozenset())
    assert [(i.key, i.content, i.attempts) for i in retry] == [("2", {"id": "2", "name": "Bob"},
                                                               1)]
    # the synced record is linked: seeing it again on either side is no change
    assert store.enqueue("a", [change("1", "Ada")], "c2", clock.time(), RULES).queued == 0
    assert store.enqueue("b", [change("1", "Ada")], "b1", clock.time(), RULES).queued == 0


def test_a_page_with_queued_work_around_does_not_go_direct(store: Store, clock: FakeClock) -> None:
    store.enqueue("a", [change("1", "Ada")], "c1", clock.time(), RULES)  # queued
    stats = store.enqueue("a", [change("2", "Bob")], "c2", clock.time(), RULES, direct_limit=10)
    assert stats.direct is None and stats.queued == 1 and store.cursor("a") == "c2"
    # too big for one batch: queued too
    sync_all(store, "a_to_b", clock)
    big = [change(str(i), f"N{i}") for i in range(10, 30)]
    stats = store.enqueue("a", big, "c3", clock.time(), RULES, direct_limit=10)
    assert stats.direct is None and stats.queued == 20


def test_a_page_goes_direct_while_the_other_side_writes_other_records(
        store: Store, clock: FakeClock) -> None:
    """Updates of one side keep the short way while the other side's backlog, on other
    records, is queued and being written; a page touching a record of that backlog, or of
    its batch in flight, is queued (the conflict is settled there)."""
    store.enqueue("a", [change(str(i), "A") for i in range(1, 6)], "c1", clock.time(), RULES)
    sync_all(store, "a_to_b", clock)  # records 1..5 linked
    clock.advance(1)
    store.enqueue("b", [change("4", "B4"), change("5", "B5")], "d1", clock.time(), RULES)
    (flying,) = [i.key for i in store.lease("b_to_a", 1, frozenset())]
    in_flight = {"b_to_a": frozenset([flying])}
    stats = store.enqueue("a", [change("1", "A1"), change("2", "A2")], "c2", clock.time(),
                          RULES, in_flight=in_flight, direct_limit=10)
    assert stats.direct is not None and [i.key for i in stats.direct] == ["1", "2"]
    assert store.cursor("a") == "c1"  # saved with the direct page's outcome
    # a record the other side is writing right now (a page it was given directly, not
    # on the queue), or one queued the other way: the page is queued
    stats = store.enqueue("a", [change("3", "A3")], "c3", clock.time(), RULES,
                          in_flight={"b_to_a": frozenset(["3"])}, direct_limit=10)
    assert stats.direct is None and store.cursor("a") == "c3"
    sync_all(store, "a_to_b", clock)
    queued = "5" if flying == "4" else "4"
    stats = store.enqueue("a", [change(queued, "A")], "c4", clock.time(), RULES,
                          in_flight=in_flight, direct_limit=10)
    assert stats.direct is None and store.cursor("a") == "c4"


def test_a_page_with_a_delete_is_queued_not_sent_direct(store: Store, clock: FakeClock) -> None:
    store.enqueue("a", [change("1", "Ada")], "c1", clock.time(), RULES)
    sync_all(store, "a_to_b", clock)
    # the delete changes the link at once; only a queue row in the same transaction keeps
    # it from being lost if the page had to be listed again after a crash
    stats = store.enqueue("a", [change("1", None), change("2", "Bob")], "c2", clock.time(),
                          RULES, direct_limit=10)
    assert stats.direct is None and stats.queued == 2 and store.cursor("a") == "c2"


def test_a_page_naming_a_record_twice_writes_it_once_as_its_later_change(
    store: Store,
) -> None:
    stats = store.enqueue("a", [change("1", "Ada"), change("1", "Ada L.")], "c1", 999.0,
                          RULES, direct_limit=100)
    assert [(i.key, (i.content or {})["name"]) for i in stats.direct or []] == [("1", "Ada L.")]
    queued = store.enqueue("b", [change("2", "Bo"), change("2", "Bob")], "d1", 999.0, RULES)
    assert queued.queued == 1
    items = store.lease("b_to_a", 10, frozenset())
    assert [(i.key, (i.content or {})["name"]) for i in items] == [("2", "Bob")]


def test_direct_only_records_nothing_for_a_page_that_cannot_go_direct(
    store: Store, clock: FakeClock,
) -> None:
    store.enqueue("a", [change("1", "Ada")], "c1", clock.time(), RULES)  # queued work
    stats = store.enqueue("a", [change("2", "Bob")], "c2", clock.time(), RULES,
                          direct_limit=100, direct_only=True)
    assert stats.declined and stats.direct is None
    assert store.cursor("a") == "c1"
    assert [i.key for i in store.lease("a_to_b", 10, frozenset())] == ["1"]


def test_a_record_named_twice_in_a_page_ends_as_its_later_change(
    store: Store, clock: FakeClock,
) -> None:
    store.enqueue("a", [change("1", "Ada")], "c1", clock.time(), RULES)
    assert sync_all(store, "a_to_b", clock) == ["1"]
    clock.advance(1)
    # changed and changed back within one page: the target already holds the result
    stats = store.enqueue("a", [change("1", "Ada L."), change("1", "Ada")], "c2",
                          clock.time(), RULES, direct_limit=10)
    assert stats.direct is None and stats.unchanged == 1
    assert store.lease("a_to_b", 10, frozenset()) == []


def test_deleting_never_synced_records_cancels_their_creates_and_is_not_guarded(
    store: Store, clock: FakeClock
) -> None:
    store.enqueue("a", [change(str(k), f"n{k}") for k in range(10)], "c1", clock.time(), RULES)
    sync_all(store, "a_to_b", clock)  # 10 linked on b
    clock.advance(1)
    # 20 creates queued while b is down; the first 5 were tried and refused.
    store.enqueue("a", [change(str(k), f"n{k}") for k in range(100, 120)], "c2", clock.time(),
                  RULES)
    tried = store.lease("a_to_b", 5, frozenset())
    store.apply("a_to_b", [ItemOutcome(i.key, i.gen, "retry", error="HTTP 503") for i in tried],
                RetryPolicy(), clock.time())
    clock.advance(1)
    stats = store.enqueue("a", [change(str(k), None) for k in range(100, 120)], "c3",
                          clock.time(), RULES, mass_delete_share=0.5, mass_delete_min=5)
    assert (stats.deletes, stats.linked_deletes) == (20, 0)
    assert store.cursor("a") == "c3"
    # untried creates are cancelled; a tried one may have landed: a delete instead
    rows = store.backend.query("SELECT key, op FROM queue ORDER BY key")
    assert rows == sorted((i.key, "delete") for i in tried)
    # deletes of linked records still count
    with pytest.raises(MassDeleteBlocked) as err:
        store.enqueue("a", [change(str(k), None) for k in range(6)], "c4", clock.time(), RULES,
                      mass_delete_share=0.5, mass_delete_min=5)
    assert (err.value.count, err.value.total) == (6, 10)


def test_a_full_state_disk_is_reported_as_such_and_changes_nothing(
    tmp_path: Path, clock: FakeClock
) -> None:
    """SQLITE_FULL for real, through SQLite's page cap on the store's connection."""
    path = tmp_path / "state.sqlite"
    store = Store(path, clock)
    store.enqueue("a", [change("1", "Ada")], "c1", clock.time(), RULES)
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count = {pages}")
    big = [change(str(k), "x" * 500) for k in range(100, 300)]
    with pytest.raises(StateUnavailable, match="database or disk is full") as err:
        store.enqueue("a", big, "c2", clock.time(), RULES)
    assert str(path) in str(err.value)
    assert not store.db.in_transaction
    assert store.cursor("a") == "c1" and store.pending() == 1
    store.db.execute("PRAGMA max_page_count = 1073741823")  # space again
    store.enqueue("a", big, "c2", clock.time(), RULES)
    assert store.cursor("a") == "c2" and store.pending() == 201
    store.close()


def test_a_disk_full_at_commit_raises_the_real_error_not_the_rollback_one(
    tmp_path: Path, clock: FakeClock
) -> None:
    """The WAL cannot grow at COMMIT: SQLite rolls back by itself; its error must stay."""
    with small_disk(tmp_path / "disk") as disk:
        store = Store(disk / "state.sqlite", clock)
        store.enqueue("a", [change("1", "Ada")], "c1", clock.time(), RULES)
        filler = fill(disk)
        with pytest.raises(StateUnavailable, match="database or disk is full") as err:
            for n in range(2, 200):
                store.enqueue("a", [change(f"{n}-{k}", "x" * 500) for k in range(50)],
                              f"c{n}", clock.time(), RULES)
        assert "no transaction is active" not in str(err.value)
        assert str(disk / "state.sqlite") in str(err.value)
        cursor, pending = store.cursor("a"), store.pending()
        assert pending == 1 + 50 * (int(str(cursor)[1:]) - 1)  # the failed page left nothing
        filler.unlink()
        store.enqueue("a", [change("z", "Zed")], "cz", clock.time(), RULES)
        assert store.cursor("a") == "cz" and store.pending() == pending + 1
        store.close()


def test_applying_a_batch_costs_the_same_however_long_the_queue_is(
        store: Store, clock: FakeClock) -> None:
    """The work of applying one batch's outcomes (counted in SQLite VM steps, which do not
    depend on the machine's speed) must not grow with the queue behind it: a queue
    scanned per batch makes a large sync quadratic."""
    if not isinstance(store.backend, SqliteBackend):
        pytest.skip("counts SQLite's VM steps (PostgreSQL joins the batch by its key index)")

    def steps_to_apply(queued: int) -> int:
        store.enqueue("a", [change(f"{queued}-{i}", "N") for i in range(queued)], "c",
                      clock.time(), RULES)
        items = store.lease("a_to_b", 20, frozenset())
        outcomes = [ItemOutcome(i.key, i.gen, "synced", hash=i.hash, src_hash=i.src_hash)
                    for i in items]
        steps = [0]

        def count() -> int:
            steps[0] += 1
            return 0

        store.db.set_progress_handler(count, 100)
        try:
            store.apply("a_to_b", outcomes, RetryPolicy(), clock.time())
        finally:
            store.db.set_progress_handler(None, 0)
        store.db.execute("DELETE FROM queue")
        return steps[0]

    small, large = steps_to_apply(200), steps_to_apply(20_000)
    assert large < small * 2, (small, large)


def test_a_deferral_keeps_the_last_error_a_retry_met(
        store: Store, clock: FakeClock, open_store: OpenStore) -> None:
    """While the circuit is open, writes are deferred without an error of their own: the
    record still shows why it is waiting (`recsync status ID`: last error)."""
    from recsync.daemon.records import record_status

    policy = RetryPolicy(max_attempts=8, base_delay=1.0, max_delay=10.0)
    store.enqueue("a", [change("1", "Ada")], "c1", clock.time(), RULES)
    (item,) = store.lease("a_to_b", 10, frozenset())
    store.apply("a_to_b", [ItemOutcome("1", item.gen, "retry", error="HTTP 503")], policy,
                clock.time())
    clock.advance(5)
    (item,) = store.lease("a_to_b", 10, frozenset())
    store.apply("a_to_b", [ItemOutcome("1", item.gen, "deferred", retry_at=clock.time() + 30)],
                policy, clock.time())
    rec = record_status(open_store.reader(), "t/p", "1")
    assert rec is not None and rec.state == "queued" and rec.attempts == 1
    assert rec.last_error == "HTTP 503"
    clock.advance(31)  # a deferral that says why replaces it
    (item,) = store.lease("a_to_b", 10, frozenset())
    store.apply("a_to_b", [ItemOutcome("1", item.gen, "deferred", error="rate limited",
                                       retry_at=clock.time() + 1)], policy, clock.time())
    rec = record_status(open_store.reader(), "t/p", "1")
    assert rec is not None and rec.last_error == "rate limited"


def test_queued_keys_names_the_records_with_work_of_a_direction_in_any_state(
        store: Store, clock: FakeClock) -> None:
    # (the writer of the other direction compares these with the target: WriteBatch.check)
    assert store.queued_keys("a_to_b", ["1"]) == set()
    store.enqueue("a", [change("1", "Ada"), change("2", "Bob"), change("3", "Cy")], "c1",
                  clock.time(), RULES)
    items = store.lease("a_to_b", 10, frozenset())
    store.apply("a_to_b", [
        ItemOutcome("1", items[0].gen, "synced", hash=items[0].hash),
        ItemOutcome("2", items[1].gen, "rejected", error="CHECK constraint failed")],
        RetryPolicy(), clock.time())
    assert store.queued_keys("a_to_b", ["1", "2", "3", "4"]) == {"2", "3"}  # failed, ready
    assert store.queued_keys("b_to_a", ["1", "2", "3"]) == set()


def test_a_failed_record_does_not_keep_later_pages_off_the_short_way(
        store: Store, clock: FakeClock) -> None:
    # a dead letter is leased no more: pages of other records still go direct; a page with
    # a newer change of that record takes the queue (the change replaces the failed item)
    store.enqueue("a", [change("1", "Bad")], "c1", clock.time(), RULES)
    (item,) = store.lease("a_to_b", 10, frozenset())
    store.apply("a_to_b", [ItemOutcome("1", item.gen, "rejected", error="CHECK failed")],
                RetryPolicy(), clock.time())
    assert store.counts()["failed_a_to_b"] == 1
    stats = store.enqueue("a", [change("2", "Bob"), change("3", "Cy")], "c2", clock.time(),
                          RULES, direct_limit=10)
    assert stats.direct is not None and [i.key for i in stats.direct] == ["2", "3"]
    stats = store.enqueue("a", [change("1", "Good"), change("4", "Dee")], "c3", clock.time(),
                          RULES, direct_limit=10)
    assert stats.direct is None and stats.queued == 2
    assert {i.key: i.content for i in store.lease("a_to_b", 10, frozenset())} == {
        "1": {"id": "1", "name": "Good"}, "4": {"id": "4", "name": "Dee"}}
    # work of this direction to lease: the next page waits on the queue too
    stats = store.enqueue("a", [change("5", "Eve")], "c4", clock.time(), RULES,
                          direct_limit=10)
    assert stats.direct is None and stats.queued == 1
