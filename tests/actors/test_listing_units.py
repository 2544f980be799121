"""A local side's listing is answered in units of LISTING_UNIT records, whatever its
page_size: a real ConnectorActor reading a real SQLite table, page after page."""

from __future__ import annotations

import queue
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from recsync.actors.connector import ConnectorActor
from recsync.actors.pipeline import Peers
from recsync.actors.protocol import LISTING_UNIT, BatchDone, PageRead, ReadPage, WriteBatch
from recsync.actors.ratelimit import RateLimiterActor
from recsync.clock import FakeClock
from recsync.config import SideConfig
from recsync.connectors.sqlite import SqliteConfig
from recsync.messages import ChangePage, WorkItem
from recsync.resilience import CircuitBreaker, RateLimiter
from recsync.rules import RuleSet, content_hash
from tests.actors.recorder import Recorder

ROWS = 2 * LISTING_UNIT + 350
PAGE = 100
SAME_NAMES = RuleSet(name="t", a_to_b=["create", "update"], b_to_a=[],
                     mappings={"id": "id", "name": "name"})

Reader = Callable[[str | None], ChangePage]


def make_table(path: Path, keyless: int | None = None) -> None:
    """``ROWS`` people, ids 1..ROWS in rowid order; row ``keyless`` without an id."""
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE people (id TEXT UNIQUE, name TEXT, updated_at REAL)")
        conn.executemany("INSERT INTO people (rowid, id, name) VALUES (?, ?, ?)",
                         [(n, None if n == keyless else str(n), f"P{n}")
                          for n in range(1, ROWS + 1)])
    conn.close()


Side = Callable[..., tuple[Any, Reader, FakeClock]]


@pytest.fixture
def open_side(tmp_path: Path) -> Iterator[Side]:
    """``open_side(keyless=None, throttled=False)``: people.sqlite made (``make_table``),
    a connector actor on it, a function that reads one answer from a cursor, the clock."""
    refs: list[Any] = []

    def start(keyless: int | None = None, throttled: bool = False,
              ) -> tuple[Any, Reader, FakeClock]:
        make_table(tmp_path / "people.sqlite", keyless)
        clock = FakeClock(time=1000.0)
        peers = Peers()
        peers.refs["rate_limiter"] = RateLimiterActor.start(
            "c/p", 1, lambda _f: None, {"b": RateLimiter(100_000, 1, clock)})
        config = SideConfig("sqlite", SqliteConfig(path="people.sqlite", table="people",
                                                   key="id"))
        ref = ConnectorActor.start("c/p", 1, lambda _f: None, side="b", side_config=config,
                                   base_dir=tmp_path, peers=peers, throttled=throttled,
                                   breaker=CircuitBreaker(5, 30.0, clock), clock=clock)
        inbox: queue.Queue[Any] = queue.Queue()
        replies = Recorder.start(inbox)
        refs.extend([ref, replies, *peers.refs.values()])

        def read(cursor: str | None) -> ChangePage:
            ref.tell((ReadPage(cursor, PAGE, clock.time()), replies))
            answer = inbox.get(timeout=10)
            assert isinstance(answer, PageRead) and answer.page is not None, answer
            return answer.page

        return ref, read, clock

    yield start
    for r in refs:
        r.stop()


def write_a_record(ref: Any) -> None:
    """One of our writes to the side (a new record), answered."""
    inbox: queue.Queue[Any] = queue.Queue()
    replies = Recorder.start(inbox)
    content = {"id": "new", "name": "Written"}
    item = WorkItem("new", "upsert", content, content_hash(content), 1.0, 1, 0, None,
                    content_hash(content))
    ref.tell((WriteBatch("a_to_b", [item], SAME_NAMES), replies))
    try:
        assert isinstance(inbox.get(timeout=10), BatchDone)
    finally:
        replies.stop()


def read_listing(read: Reader) -> list[ChangePage]:
    pages = [read(None)]
    while pages[-1].more:
        pages.append(read(pages[-1].cursor))
    return pages


def test_a_local_listing_comes_in_units_whatever_the_page_size(open_side: Side) -> None:
    _ref, read, _clock = open_side()
    units = read_listing(read)
    assert [len(u.changes) for u in units] == [LISTING_UNIT, LISTING_UNIT, 350]
    assert [(u.listing, u.listing_start, u.listing_done) for u in units] == [
        (True, True, False), (True, False, False), (True, False, True)]
    keys = [c.key for u in units for c in u.changes]
    assert keys == [str(n) for n in range(1, ROWS + 1)]  # each once, in order


def test_a_throttled_side_is_read_a_page_per_request(open_side: Side) -> None:
    """A side with a request budget: each page is one request, handed on alone."""
    _ref, read, _clock = open_side(throttled=True)
    units = read_listing(read)
    assert len(units) == ROWS // PAGE + 1
    assert {len(u.changes) for u in units[:-1]} == {PAGE}


def test_a_page_with_an_unreadable_row_is_handed_on_alone_and_in_order(
    open_side: Side,
) -> None:
    """The page that meets a row without a key ends the unit before it (it is kept, not
    read twice) and goes on alone with its unreadable row; the listing then goes on."""
    _ref, read, _clock = open_side(keyless=250)
    units = read_listing(read)
    assert [len(u.changes) for u in units[:3]] == [200, 99, LISTING_UNIT]
    assert [u.where for u in units[1].unreadable] == ["people rowid 250"]
    assert not units[0].unreadable and not units[2].unreadable
    keys = [c.key for u in units for c in u.changes]
    assert keys == [str(n) for n in range(1, ROWS + 1) if n != 250]
    assert units[-1].listing_done


def test_a_page_kept_over_a_write_to_the_side_is_observed_when_it_was_read(
    open_side: Side,
) -> None:
    """A page read on before one of our writes to the side is answered after the write
    alone and with the time it was read: the write is newer than what the page saw (the
    store then takes the page's view of a record we wrote as older than our write)."""
    ref, read, clock = open_side(keyless=250)
    first = read(None)
    assert len(first.changes) == 200  # the page of rowid 250 was read on and kept
    read_at = clock.time()
    clock.advance(60.0)
    write_a_record(ref)
    inbox: queue.Queue[Any] = queue.Queue()
    replies = Recorder.start(inbox)
    ref.tell((ReadPage(first.cursor, PAGE, clock.time()), replies))
    answer = inbox.get(timeout=10)
    replies.stop()
    assert isinstance(answer, PageRead) and answer.page is not None
    assert answer.observed == read_at < clock.time()
    assert [u.where for u in answer.page.unreadable] == ["people rowid 250"]
    assert len(answer.page.changes) == 99  # alone: not joined to pages read after it


def test_a_write_to_a_csv_side_does_not_restart_its_listing(tmp_path: Path) -> None:
    """A CSV side with a kept page (a line without a key) and a write: the file connector
    has read past the kept page (its listing follows the last cursor it gave), so the
    read from where the kept page began must go on with the listing, not list the file
    from its first line again (a write landing there each time would keep the listing
    from ever ending)."""
    from recsync.connectors.files import FileConfig

    lines = ["id,name"] + [f"{'' if n == 250 else n},P{n}" for n in range(1, ROWS + 1)]
    (tmp_path / "people.csv").write_text("\n".join(lines) + "\n")
    clock = FakeClock(time=1000.0)
    peers = Peers()
    peers.refs["rate_limiter"] = RateLimiterActor.start(
        "c/p", 1, lambda _f: None, {"b": RateLimiter(100_000, 1, clock)})
    ref = ConnectorActor.start(
        "c/p", 1, lambda _f: None, side="b",
        side_config=SideConfig("file", FileConfig(path="people.csv", key="id")),
        base_dir=tmp_path, peers=peers, throttled=False,
        breaker=CircuitBreaker(5, 30.0, clock), clock=clock)
    inbox: queue.Queue[Any] = queue.Queue()
    replies = Recorder.start(inbox)
    try:
        ref.tell((ReadPage(None, PAGE, clock.time()), replies))
        first = inbox.get(timeout=10).page
        assert len(first.changes) == 200 and first.listing_start  # the next page is kept
        write_a_record(ref)
        ref.tell((ReadPage(first.cursor, PAGE, clock.time()), replies))
        again = inbox.get(timeout=10).page
        assert not again.listing_start, "the listing started over from the first line"
        assert again.changes[0].key == "201"
    finally:
        started: list[Any] = [ref, replies, *peers.refs.values()]
        for r in started:
            r.stop()
