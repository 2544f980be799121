"""EventMerge: several nodes' events in (ts, node, boot, seq) order, exactly, whatever the
delay of a relay; with the times of arrival given, as a client's monotonic clock."""

from __future__ import annotations

from typing import Any

from recsync.daemon import protocol as p
from recsync.eventmerge import EventMerge

BOOT = {"n1": "b1", "n2": "b2", "n3": "b3"}


def ev(node: str | None, seq: int, ts: float, kind: str = "pipeline_state",
       **data: Any) -> p.Event:
    return p.Event(seq, ts, kind, data, node, BOOT.get(node or ""))


def tick(node: str, seq: int, ts: float, *peers: str) -> p.Event:
    return ev(node, seq, ts, p.TICK_KIND, peers=list(peers))


def keys(events: list[p.Event]) -> list[tuple[str | None, int]]:
    return [(e.node, e.seq) for e in events]


def test_an_event_relayed_late_still_goes_out_in_its_place() -> None:
    # the CI failure: n2's own event reached the client before n1's slightly older one,
    # which n2 relayed more than a second later
    m = EventMerge()
    m.add(tick("n1", 28, 9.9), 0.0)
    m.add(tick("n2", 28, 9.95, "n1"), 0.0)
    m.add(ev("n2", 29, 10.004), 0.1)
    assert m.due(0.1) == []
    assert m.due(1.5) == []  # n1 said nothing newer than 10.004 yet: it may still come
    m.add(ev("n1", 29, 10.000), 1.6)
    assert keys(m.due(1.6)) == [("n1", 29)]  # n2 is past 10.000 already
    m.add(tick("n1", 29, 10.2), 1.8)
    assert keys(m.due(1.8)) == [("n2", 29)]


def test_a_peer_named_by_a_tick_is_waited_for_before_its_first_word() -> None:
    m = EventMerge()
    m.add(tick("n2", 5, 10.0, "n1"), 0.0)
    m.add(ev("n2", 6, 10.1), 0.0)
    assert m.due(0.5) == []
    m.add(ev("n1", 3, 10.05), 0.6)
    m.add(tick("n1", 3, 10.2), 0.6)
    assert keys(m.due(0.6)) == [("n1", 3), ("n2", 6)]


def test_equal_times_break_ties_by_node_name() -> None:
    m = EventMerge()
    m.add(tick("n1", 1, 10.0), 0.0)
    m.add(ev("n2", 2, 10.0), 0.0)
    assert m.due(0.0) == []  # n1 may still publish at 10.0, and n1 < n2
    m.add(ev("n1", 2, 10.0), 0.1)
    m.add(tick("n2", 2, 10.0), 0.1)
    assert keys(m.due(0.1)) == [("n1", 2)]  # n2 is at 10.0: nothing of its can sort first
    m.add(tick("n1", 2, 10.0), 0.2)  # n1 at 10.0 again: (10.0, n1) < (10.0, n2)
    assert m.due(0.2) == []
    m.add(tick("n1", 2, 10.01), 0.3)
    assert keys(m.due(0.3)) == [("n2", 2)]


def test_a_silent_node_delays_events_at_most_max_hold() -> None:
    m = EventMerge(max_hold=5.0, silent=30.0)
    m.add(tick("n1", 1, 10.0), 0.0)  # then n1 says nothing more, but is not yet silent
    m.add(ev("n2", 1, 11.0), 1.0)
    m.add(ev("n2", 2, 12.0), 4.0)
    assert m.due(5.9) == []
    assert keys(m.due(6.0)) == [("n2", 1)]  # held 5 s
    assert keys(m.due(9.0)) == [("n2", 2)]


def test_an_overdue_event_takes_the_ones_sorted_before_it_along() -> None:
    m = EventMerge(max_hold=5.0, silent=30.0)
    m.add(tick("n3", 1, 5.0), 0.0)
    m.add(ev("n1", 1, 11.0), 0.0)  # its own node: n2 and n3 are behind
    m.add(tick("n2", 1, 10.5), 0.0)
    m.add(ev("n2", 2, 10.8), 2.0)  # sorts first, arrived later
    assert keys(m.due(5.0)) == [("n2", 2), ("n1", 1)]  # n1's event is overdue: in order


def test_a_node_not_heard_from_for_silent_seconds_is_no_longer_waited_for() -> None:
    m = EventMerge(max_hold=60.0, silent=5.0)
    m.add(tick("n1", 1, 10.0), 0.0)  # n1 dies here
    m.add(ev("n2", 1, 11.0), 1.0)
    assert m.due(4.9) == []
    assert keys(m.due(5.0)) == [("n2", 1)]
    m.add(ev("n2", 2, 12.0), 6.0)
    assert keys(m.due(6.0)) == [("n2", 2)]  # at once: only n2 is left


def test_a_single_daemons_events_go_out_at_once_and_ticks_never() -> None:
    m = EventMerge()
    m.add(ev(None, 1, 10.0), 0.0)
    m.add(ev(None, 1, 10.1, p.TICK_KIND), 0.0)
    m.add(ev(None, 2, 10.2), 0.0)
    assert keys(m.due(0.0)) == [(None, 1), (None, 2)]
    m.add(tick("n1", 1, 10.0), 0.0)
    assert m.due(0.0) == [] and m.held == 0


def test_many_nodes_interleaved_in_any_arrival_order_come_out_sorted() -> None:
    import random

    rnd = random.Random(7)
    streams = {n: [] for n in ("n1", "n2", "n3")}  # type: dict[str, list[p.Event]]
    for n, stream in streams.items():
        ts = 100.0
        for seq in range(1, 60):
            ts += rnd.choice((0.0, 0.001, 0.05, 0.3))
            kind = p.TICK_KIND if seq % 4 == 0 else "stats"
            stream.append(ev(n, seq, ts, kind, peers=[m for m in streams if m != n]))
    m = EventMerge(max_hold=1e9, silent=1e9)
    out: list[p.Event] = []
    now = 0.0
    while any(streams.values()):  # each node's stream in its order, the nodes interleaved
        n = rnd.choice([n for n, s in streams.items() if s])
        now += rnd.random()
        m.add(streams[n].pop(0), now)
        out += m.due(now)
    for n in ("n1", "n2", "n3"):  # each ends with a tick past all others
        m.add(tick(n, 99, 1000.0), now)
    out += m.due(now)
    assert len(out) == 3 * 59 - 3 * 14
    assert out == sorted(out, key=p.events_order)


def test_before_the_first_tick_every_nodes_events_are_held() -> None:
    m = EventMerge()
    m.add(ev("n2", 1, 10.1), 0.0)  # who else is there? not known yet
    assert m.due(1.0) == []
    m.add(ev("n1", 1, 10.0), 1.0)
    m.add(tick("n2", 1, 10.2, "n1"), 1.1)
    assert keys(m.due(1.1)) == [("n1", 1)]
    m.add(tick("n1", 1, 10.3, "n2"), 1.2)
    assert keys(m.due(1.2)) == [("n2", 1)]


def test_a_peer_that_only_another_node_relays_is_waited_for_only_a_moment() -> None:
    # the client follows n2, which cannot reach n3 (n3 serves ipc only, on n1's host; or
    # CURVE that n2 lacks): n1's ticks, relayed by n2, name n3 for ever. Events wait for
    # n3 only NAMED seconds after it is first named, not MAX_HOLD each
    m = EventMerge(max_hold=5.0, named=1.0)
    now = 0.0
    out: list[p.Event] = []
    for i in range(40):  # 10 s of ticks, both nodes live
        ts = 10.0 + now
        m.add(tick("n2", 1, ts, "n1"), now)
        m.add(tick("n1", 1, ts, "n2", "n3"), now)
        if i == 20:
            m.add(ev("n2", 2, ts + 0.01), now)
        out += m.due(now)
        if i == 21:  # n1 and n2 are both past it
            assert keys(out) == [("n2", 2)]
        now += 0.25


def test_overdue_events_go_out_in_order_and_only_once() -> None:
    m = EventMerge(max_hold=5.0, silent=60.0)
    m.add(tick("n3", 1, 5.0), 0.0)  # n3 stays behind: only max_hold lets events out
    m.add(ev("n1", 1, 12.0), 0.0)
    m.add(ev("n2", 1, 11.0), 1.0)
    m.add(ev("n1", 2, 13.0), 2.0)
    assert keys(m.due(4.9)) == []
    assert keys(m.due(5.0)) == [("n2", 1), ("n1", 1)]  # n1#1 overdue; n2#1 sorts first
    assert keys(m.due(6.5)) == []
    assert keys(m.due(7.0)) == [("n1", 2)]
    assert m.due(60.0) == [] and m.held == 0
