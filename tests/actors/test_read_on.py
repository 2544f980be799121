"""ConnectorActor reading a real SQLite table: a listing read in pages smaller than a
writer's batch is joined into batch-sized pages (ReadPage.fill)."""

from __future__ import annotations

import queue
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from recsync.actors.connector import ConnectorActor
from recsync.actors.pipeline import Peers
from recsync.actors.protocol import PageRead, ReadPage
from recsync.actors.ratelimit import RateLimiterActor
from recsync.clock import FakeClock
from recsync.config import SideConfig
from recsync.connectors.sqlite import SqliteConfig
from recsync.resilience import CircuitBreaker, RateLimiter
from tests.actors.recorder import Recorder

ROWS = 25


@pytest.fixture
def reader(tmp_path: Path) -> Iterator[tuple[Any, Any, queue.Queue[Any], Path]]:
    db = tmp_path / "a.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT)")
        conn.executemany("INSERT INTO people VALUES (?, ?)",
                         [(i, f"P{i}") for i in range(1, ROWS + 1)])
    conn.close()
    clock = FakeClock(time=1000.0)
    peers = Peers()
    peers.refs["rate_limiter"] = RateLimiterActor.start(
        "c/p", 1, lambda _f: None, {"a": RateLimiter(1000, 1, clock)})
    side = SideConfig("sqlite", SqliteConfig(path="a.sqlite", table="people", key="id"))
    ref = ConnectorActor.start("c/p", 1, lambda _f: None, side="a", side_config=side,
                               base_dir=tmp_path, peers=peers,
                               breaker=CircuitBreaker(5, 30.0, clock), clock=clock)
    inbox: queue.Queue[Any] = queue.Queue()
    replies = Recorder.start(inbox)
    yield ref, replies, inbox, db
    for r in (ref, replies, *peers.refs.values()):
        r.stop()


def read(ref: Any, reply_to: Any, inbox: queue.Queue[Any], request: ReadPage) -> PageRead:
    ref.tell((request, reply_to))
    answer = inbox.get(timeout=10)
    assert isinstance(answer, PageRead) and answer.page is not None, answer
    return answer


def test_a_listing_in_small_pages_reaches_the_writer_in_batch_sized_pages(
    reader: tuple[Any, Any, queue.Queue[Any], Path],
) -> None:
    ref, reply_to, inbox, _db = reader
    pages = []
    cursor = None
    while True:
        page = read(ref, reply_to, inbox, ReadPage(cursor, 4, 1000.0, fill=10)).page
        assert page is not None
        pages.append(page)
        cursor = page.cursor
        if not page.more:
            break
    assert [len(p.changes) for p in pages] == [10, 10, 5]
    assert [(p.listing_start, p.listing_done) for p in pages] == [
        (True, False), (False, False), (False, True)]
    keys = [c.key for p in pages for c in p.changes]
    assert keys == [str(i) for i in range(1, ROWS + 1)]  # each once, in order


def test_without_fill_a_page_is_page_size_records(
    reader: tuple[Any, Any, queue.Queue[Any], Path],
) -> None:
    ref, reply_to, inbox, _db = reader
    page = read(ref, reply_to, inbox, ReadPage(None, 4, 1000.0)).page
    assert page is not None and len(page.changes) == 4 and page.more

