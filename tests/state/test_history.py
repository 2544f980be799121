"""Every sync of a record goes into its history (operation, direction, time, conflict
winner), kept within history_per_record and history_days."""

from __future__ import annotations

from pathlib import Path

from recsync.clock import FakeClock
from recsync.daemon.records import record_status
from recsync.messages import ItemOutcome
from recsync.rules import RuleSet
from recsync.state.store import DirectPage, RetryPolicy, Store
from tests.state.conftest import OpenStore
from tests.state.test_store import change, sync_all

RULES = RuleSet(
    name="t",
    a_to_b=["create", "update", "delete"],
    b_to_a=["create", "update", "delete"],
    mappings={"id": "id", "name": "name"},
)


def history(store: Store, key: str) -> list[tuple[str, str | None, str | None]]:
    return store.backend.query("SELECT event, direction, detail FROM history WHERE key = ? "
                            "ORDER BY id", (key,))


def test_creates_updates_and_deletes_both_ways_are_recorded(
    store: Store, clock: FakeClock
) -> None:
    store.enqueue("a", [change("1", "Ada")], "a1", clock.time(), RULES)
    sync_all(store, "a_to_b", clock)
    clock.advance(1)
    store.enqueue("a", [change("1", "Ada L.")], "a2", clock.time(), RULES)
    sync_all(store, "a_to_b", clock)
    clock.advance(1)
    store.enqueue("b", [change("1", "Ada Lovelace")], "b1", clock.time(), RULES)
    sync_all(store, "b_to_a", clock)
    store.enqueue("b", [change("2", "Bob")], "b2", clock.time(), RULES)
    sync_all(store, "b_to_a", clock)
    clock.advance(1)
    store.enqueue("a", [change("1", None)], "a3", clock.time(), RULES)
    sync_all(store, "a_to_b", clock)
    assert history(store, "1") == [
        ("create", "a_to_b", None), ("update", "a_to_b", None), ("update", "b_to_a", None),
        ("delete", "a_to_b", None)]
    assert history(store, "2") == [("create", "b_to_a", None)]
    times = [r[0] for r in store.backend.query("SELECT at FROM history WHERE key = '1'")]
    assert times == sorted(times) and times[0] < times[-1]


def test_a_plain_page_sent_direct_is_recorded_too(store: Store, clock: FakeClock) -> None:
    stats = store.enqueue("a", [change("1", "Ada"), change("2", "Bob")], "a1", clock.time(),
                          RULES, direct_limit=100)
    assert stats.direct is not None
    page = DirectPage("a", "a1", clock.time(), {i.key: i for i in stats.direct})
    outcomes = [ItemOutcome(i.key, i.gen, "synced", hash=i.hash, src_hash=i.src_hash)
                for i in stats.direct]
    store.apply("a_to_b", outcomes, RetryPolicy(), clock.time(), page)
    assert history(store, "1") == [("create", "a_to_b", None)]
    assert history(store, "2") == [("create", "a_to_b", None)]


def test_history_rows_of_a_batch_are_kept_whole_and_in_order(store: Store) -> None:
    """Long runs of one event (a page of creates) and short ones (a conflict, then the
    update it decided) interleaved: every row lands, in the order given, odd keys too."""
    rows: list[tuple[str, str, str | None]] = [
        (str(k), "create", "note") for k in range(40)]
    rows += [('O"Brien \\ ü', "conflict", "found at write; a wins"),
             ('O"Brien \\ ü', "update", "after a conflict: a wins")]
    rows += [(str(k), "update", None) for k in range(40, 60)] + [("y", "retry", "boom")]
    store.backend.add_history(iter(rows), 5.0, "a_to_b")
    got = store.backend.query(
        "SELECT key, event, detail, at, direction FROM history ORDER BY id")
    assert got == [(k, e, d, 5.0, "a_to_b") for k, e, d in rows]


def test_the_conflict_winner_is_recorded_with_the_sync(store: Store, clock: FakeClock) -> None:
    store.enqueue("a", [change("1", "Ada")], "a1", clock.time(), RULES)
    sync_all(store, "a_to_b", clock)
    clock.advance(1)
    store.enqueue("a", [change("1", "From A", modified=2000.0)], "a2", clock.time(), RULES)
    store.enqueue("b", [change("1", "From B", modified=3000.0)], "b1", clock.time(), RULES)
    sync_all(store, "b_to_a", clock)
    assert history(store, "1")[1:] == [
        ("conflict", "b_to_a", "b and a both changed; b wins"), ("update", "b_to_a", None)]
    # found by the writer: the sync entry says who won
    clock.advance(1)
    store.enqueue("a", [change("1", "Again")], "a3", clock.time(), RULES)
    (item,) = store.lease("a_to_b", 10, frozenset())
    won = ItemOutcome("1", item.gen, "synced", hash=item.hash, winner="a")
    store.apply("a_to_b", [won], RetryPolicy(), clock.time())
    assert history(store, "1")[-2:] == [
        ("conflict", "a_to_b", "found at write; a wins"),
        ("update", "a_to_b", "after a conflict: a wins")]


def test_history_is_kept_per_record_and_by_age(store: Store, clock: FakeClock) -> None:
    for n in range(8):
        store.enqueue("a", [change("1", f"v{n}"), change("2", f"w{n}")], f"a{n}",
                      clock.time(), RULES)
        sync_all(store, "a_to_b", clock)
        clock.advance(1)
    assert len(history(store, "1")) == 8
    assert store.prune_history(per_record=3, days=30) == 10
    assert [d for _e, d, _x in history(store, "1")] == ["a_to_b"] * 3
    events = store.backend.query("SELECT event FROM history WHERE key = '1' ORDER BY id")
    assert [e for (e,) in events] == ["update"] * 3  # the newest three
    assert store.prune_history(per_record=3, days=30) == 0  # nothing new: nothing to do
    clock.advance(2 * 86400)
    store.enqueue("a", [change("3", "new")], "a9", clock.time(), RULES)
    sync_all(store, "a_to_b", clock)
    assert store.prune_history(per_record=3, days=1) == 6  # older than a day
    assert store.backend.query("SELECT key FROM history") == [("3",)]
    # a smaller limit applies to every record, not only to those with news
    for n in range(3):
        store.enqueue("a", [change("3", f"x{n}")], f"b{n}", clock.time(), RULES)
        sync_all(store, "a_to_b", clock)
    store.prune_history(per_record=3, days=1)
    assert store.prune_history(per_record=1, days=1) == 2
    assert len(history(store, "3")) == 1


def test_status_of_a_failed_create_says_it_is_on_its_source_side(
    store: Store, clock: FakeClock, open_store: OpenStore
) -> None:
    state = open_store.reader()
    store.enqueue("a", [change("1", "Ada")], "a1", clock.time(), RULES)
    (item,) = store.lease("a_to_b", 10, frozenset())
    store.apply("a_to_b", [ItemOutcome("1", item.gen, "rejected", "refused by b")],
                RetryPolicy(), clock.time())
    store.enqueue("b", [change("2", "Bob")], "b1", clock.time(), RULES)
    rec = record_status(state, "t/p", "1")
    assert rec is not None and rec.state == "failed"
    assert (rec.on_a, rec.on_b) == (True, False)
    assert [(h.event, h.direction) for h in rec.history] == [("failed", "a_to_b")]
    queued = record_status(state, "t/p", "2")
    assert queued is not None and (queued.on_a, queued.on_b) == (False, True)
    # a pending delete from a: gone from a, still on b
    sync_all(store, "b_to_a", clock)
    clock.advance(1)
    store.enqueue("a", [change("2", None)], "a2", clock.time(), RULES)
    gone = record_status(state, "t/p", "2")
    assert gone is not None and (gone.on_a, gone.on_b) == (False, True)


def test_status_of_a_record_deleted_on_both_sides_says_deleted(
    store: Store, clock: FakeClock, open_store: OpenStore
) -> None:
    store.enqueue("a", [change("1", "Ada")], "a1", clock.time(), RULES)
    sync_all(store, "a_to_b", clock)
    clock.advance(1)
    store.enqueue("a", [change("1", None)], "a2", clock.time(), RULES)
    sync_all(store, "a_to_b", clock)
    rec = record_status(open_store.reader(), "t/p", "1")
    assert rec is not None and (rec.on_a, rec.on_b) == (False, False)
    assert rec.state == "deleted"  # not "unknown": its history says what became of it
    assert rec.history[-1].event == "delete"


def test_a_state_file_of_an_earlier_recsync_keeps_its_history(
    tmp_path: Path, clock: FakeClock
) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite"
    from recsync.state.schema import SCHEMA

    assert ",\n    direction TEXT\n" in SCHEMA
    with sqlite3.connect(path) as db:  # the tables as recsync created them before
        db.executescript(SCHEMA.replace(",\n    direction TEXT\n", "\n"))
        db.execute("INSERT INTO history (key, at, event, detail) "
                   "VALUES ('1', 900, 'failed', 'boom')")
    db.close()
    old = record_status(path, "t/p", "1")  # read before recsync opened it to write
    assert old is not None and [(h.event, h.direction) for h in old.history] == [
        ("failed", None)]
    store = Store(path, clock)
    try:
        store.enqueue("a", [change("1", "Ada")], "a1", clock.time(), RULES)
        sync_all(store, "a_to_b", clock)
        assert history(store, "1") == [("failed", None, "boom"), ("create", "a_to_b", None)]
    finally:
        store.close()


def test_a_leased_batch_of_creates_and_updates_is_labelled_each_right(
    store: Store, clock: FakeClock
) -> None:
    # the labels come from what the lease read of each link (no query at apply); outcomes
    # of records another lease brought are looked up
    store.enqueue("a", [change("1", "Ada")], "a1", clock.time(), RULES)
    sync_all(store, "a_to_b", clock)
    clock.advance(1)
    store.enqueue("a", [change("1", "Ada L."), change("2", "Bob")], "a2", clock.time(), RULES)
    sync_all(store, "a_to_b", clock)
    assert [h[0] for h in history(store, "1")] == ["create", "update"]
    assert [h[0] for h in history(store, "2")] == ["create"]
    clock.advance(1)
    store.enqueue("a", [change("1", "Ada 3"), change("3", "Cy")], "a3", clock.time(), RULES)
    first = store.lease("a_to_b", 1, frozenset())
    rest = store.lease("a_to_b", 10, frozenset(i.key for i in first))
    outcomes = [ItemOutcome(i.key, i.gen, "synced", hash=i.hash, src_hash=i.src_hash)
                for i in (*first, *rest)]
    store.apply("a_to_b", outcomes, RetryPolicy(), clock.time())
    assert [h[0] for h in history(store, "1")] == ["create", "update", "update"]
    assert [h[0] for h in history(store, "3")] == ["create"]


def test_a_prune_is_not_repeated_within_every_seconds_unless_the_limit_changed(
    store: Store, clock: FakeClock
) -> None:
    # a daemon started right after another run (`recsyncd --once` from cron) does not
    # prune what that run pruned a moment ago
    for n in range(5):
        store.enqueue("a", [change("1", f"v{n}")], f"a{n}", clock.time(), RULES)
        sync_all(store, "a_to_b", clock)
    assert store.prune_history(per_record=3, days=30) == 2
    for n in range(5, 8):
        store.enqueue("a", [change("1", f"v{n}")], f"a{n}", clock.time(), RULES)
        sync_all(store, "a_to_b", clock)
    clock.advance(30)
    assert store.prune_history(per_record=3, days=30, every=60) == 0  # 30 s ago: not yet
    assert len(history(store, "1")) == 6
    assert store.prune_history(per_record=2, days=30, every=60) == 4  # a new limit: now
    store.enqueue("a", [change("1", "v9")], "a9", clock.time(), RULES)
    sync_all(store, "a_to_b", clock)
    clock.advance(61)
    assert store.prune_history(per_record=2, days=30, every=60) == 1
    assert len(history(store, "1")) == 2
