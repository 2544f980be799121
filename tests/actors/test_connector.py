"""ConnectorActor writing a batch to a real SQLite table, with a real rate-limiter actor."""

from __future__ import annotations

import queue
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from recsync.actors.connector import ConnectorActor
from recsync.actors.pipeline import Peers
from recsync.actors.protocol import BatchDone, WriteBatch
from recsync.actors.ratelimit import RateLimiterActor
from recsync.clock import FakeClock
from recsync.config import SideConfig
from recsync.connectors.sqlite import SqliteConfig
from recsync.messages import WorkItem
from recsync.resilience import CircuitBreaker, RateLimiter
from recsync.rules import RuleSet, content_hash
from tests.actors.recorder import Recorder

SAME_NAMES = RuleSet(name="t", a_to_b=["create", "update"], b_to_a=[],
                     mappings={"id": "id", "name": "name"})


def start_people_writer(tmp_path: Path, peers: Peers, clock: FakeClock) -> tuple[Any, Path]:
    """Side b's ConnectorActor on a real SQLite table ``people`` (id, name, updated_at)
    in ``tmp_path``, with a rate limiter in ``peers``: (its ref, the database file)."""
    db = tmp_path / "b.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE people (id TEXT PRIMARY KEY, name TEXT, updated_at REAL)")
    conn.close()
    peers.refs["rate_limiter"] = RateLimiterActor.start(
        "c/p", 1, lambda _f: None, {"b": RateLimiter(1000, 1, clock)})
    side = SideConfig("sqlite", SqliteConfig(path="b.sqlite", table="people", key="id"))
    ref = ConnectorActor.start("c/p", 1, lambda _f: None, side="b", side_config=side,
                               base_dir=tmp_path, peers=peers,
                               breaker=CircuitBreaker(5, 30.0, clock), clock=clock)
    return ref, db


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[tuple[Any, Any, queue.Queue[Any], Path]]:
    peers = Peers()
    ref, db = start_people_writer(tmp_path, peers, FakeClock(time=1000.0))
    inbox: queue.Queue[Any] = queue.Queue()
    replies = Recorder.start(inbox)
    yield ref, replies, inbox, db
    for r in (ref, replies, *peers.refs.values()):
        r.stop()


def item(key: str, content: dict[str, Any], gen: int) -> WorkItem:
    return WorkItem(key, "upsert", content, content_hash(content), 1.0, gen, 0, None,
                    content_hash(content))


def test_a_write_leaves_the_queued_content_as_it_was(
    writer: tuple[Any, Any, queue.Queue[Any], Path],
) -> None:
    ref, reply_to, inbox, db = writer
    # same field names on both sides: the content goes out as it is, and the target
    # stamps updated_at and fills a missing key on its own copy
    full = {"id": "1", "name": "Ada"}
    keyless = {"id": None, "name": "Bob"}
    ref.tell((WriteBatch("a_to_b", [item("1", full, 1), item("2", keyless, 2)], SAME_NAMES),
              reply_to))
    done = inbox.get(timeout=10)
    assert isinstance(done, BatchDone)
    assert [(o.key, o.status) for o in done.outcomes] == [("1", "synced"), ("2", "synced")]
    assert full == {"id": "1", "name": "Ada"}
    assert keyless == {"id": None, "name": "Bob"}
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT id, name, updated_at IS NOT NULL FROM people ORDER BY id")
        assert rows.fetchall() == [("1", "Ada", 1), ("2", "Bob", 1)]
    conn.close()


def test_a_batch_written_in_chunks_keeps_each_outcome_with_its_record(
    writer: tuple[Any, Any, queue.Queue[Any], Path],
) -> None:
    """WriteBatch.chunk (a page given to the writer whole, written batch_size at a time):
    a record the target refuses in one chunk fails alone, the others sync."""
    ref, reply_to, inbox, db = writer
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TRIGGER no_bad BEFORE INSERT ON people WHEN NEW.name = 'Bad' "
                     "BEGIN SELECT RAISE(ABORT, 'bad name'); END")
    conn.close()
    names = ["A", "B", "C", "Bad", "E"]
    items = [item(str(k), {"id": str(k), "name": n}, k) for k, n in enumerate(names, 1)]
    ref.tell((WriteBatch("a_to_b", items, SAME_NAMES, chunk=2), reply_to))
    done = inbox.get(timeout=10)
    assert isinstance(done, BatchDone)
    assert [(o.key, o.status) for o in done.outcomes] == [
        ("1", "synced"), ("2", "synced"), ("3", "synced"), ("4", "rejected"), ("5", "synced")]
    with sqlite3.connect(db) as conn:
        assert [r[0] for r in conn.execute("SELECT id FROM people ORDER BY id")] == [
            "1", "2", "3", "5"]
    conn.close()


BOTH_WAYS = RuleSet(name="t", a_to_b=["create", "update"], b_to_a=["create", "update"],
                    mappings={"id": "id", "name": "name"})


def log_top(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        (top,) = conn.execute("SELECT max(seq) FROM recsync_changelog_people").fetchone()
    conn.close()
    return f'{{"seq": {top}}}'


@pytest.mark.parametrize("seen", [False, True])
def test_a_change_on_the_target_since_the_queue_last_heard_is_a_conflict(
    writer: tuple[Any, Any, queue.Queue[Any], Path], seen: bool,
) -> None:
    # WriteBatch.seen (the target's cursor the queue committed last): the writer compares
    # only the records the change log says another writer changed since; the outcome is
    # the one of comparing every record
    ref, reply_to, inbox, db = writer
    first = [{"id": "1", "name": "Ada"}, {"id": "2", "name": "Bob"}]
    ref.tell((WriteBatch("a_to_b", [
        WorkItem(r["id"], "upsert", r, content_hash(r), 1.0, 1, 0, None) for r in first],
        BOTH_WAYS), reply_to))
    assert [o.status for o in inbox.get(timeout=10).outcomes] == ["synced", "synced"]
    cursor = log_top(db) if seen else None
    with sqlite3.connect(db) as conn:  # someone edits record 1 on the target, later
        conn.execute("UPDATE people SET name = 'Theirs', updated_at = 5000 WHERE id = '1'")
    conn.close()
    second = [{"id": "1", "name": "Ada 2"}, {"id": "2", "name": "Bob 2"}]
    ref.tell((WriteBatch("a_to_b", [
        WorkItem(r["id"], "upsert", r, content_hash(r), 2.0, 2, 0, content_hash(old))
        for r, old in zip(second, first, strict=True)], BOTH_WAYS, seen=cursor), reply_to))
    done = inbox.get(timeout=10)
    assert [(o.key, o.status, o.winner) for o in done.outcomes] == [
        ("1", "superseded", "b"), ("2", "synced", None)]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT id, name FROM people ORDER BY id").fetchall() == [
            ("1", "Theirs"), ("2", "Bob 2")]
    conn.close()
