"""SqliteConnector.changed_since: which records another writer changed after a cursor, so
that a write checks only those against the target (or None: it cannot tell, check all)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from recsync.connectors.sqlite import SqliteConnector
from recsync.messages import WriteOp
from tests.connectors.test_sqlite import connector, listed, make_db, user_sql

KEYS = [str(i) for i in range(1, 11)]


@pytest.fixture
def side(tmp_path: Path) -> Iterator[tuple[SqliteConnector, Path, str]]:
    path = tmp_path / "db.sqlite"
    make_db(path, rows=[(i, f"u{i}@x.org", f"User {i}", i, None) for i in range(1, 11)])
    c = connector(tmp_path)
    c.open()
    cursor = listed(c)  # the first listing: {"seq": S}
    assert list(json.loads(cursor)) == ["seq"]
    yield c, path, cursor
    c.close()


def test_other_writers_changes_after_the_cursor_are_named_and_ours_are_not(
        side: tuple[SqliteConnector, Path, str]) -> None:
    c, path, cursor = side
    assert c.changed_since(cursor, KEYS) == set()
    c.write([WriteOp("2", "upsert", {"id": 2, "name": "ours"})])  # our write: an echo
    user_sql(path, "UPDATE contacts SET name = 'theirs' WHERE id = 3")
    user_sql(path, "DELETE FROM contacts WHERE id = 4")
    c.write([WriteOp("5", "upsert", {"id": 5, "name": "ours again"})])
    user_sql(path, "INSERT INTO contacts (id, name) VALUES (11, 'new')")
    assert c.changed_since(cursor, KEYS) == {"3", "4", "11"}
    # a cursor past some of them: only the later ones
    later = json.dumps({"seq": json.loads(cursor)["seq"] + 2})  # our write, their update
    assert c.changed_since(later, KEYS) == {"4", "11"}


def test_a_read_from_the_cursor_leaves_our_later_writes_known_as_ours(
        side: tuple[SqliteConnector, Path, str]) -> None:
    c, path, cursor = side
    c.write([WriteOp("2", "upsert", {"id": 2, "name": "ours"})])
    c.changed_since(cursor, KEYS)
    user_sql(path, "UPDATE contacts SET name = 'theirs' WHERE id = 3")
    page = c.read_changes(cursor, 1000)  # the reader moves on (skipping our row)
    assert [ch.key for ch in page.changes] == ["3"]
    assert c.changed_since(cursor, KEYS) == {"3"}


def test_it_cannot_tell_from_a_listing_or_a_log_it_doubts(
        tmp_path: Path, side: tuple[SqliteConnector, Path, str]) -> None:
    c, path, cursor = side
    seq = json.loads(cursor)["seq"]
    assert c.changed_since(json.dumps({"scan_after": 3, "seq": seq}), KEYS) is None
    assert c.changed_since("not json", KEYS) is None
    for i in range(4, 7):  # more rows than records asked about: fetching is as cheap
        user_sql(path, f"UPDATE contacts SET name = 'n{i}' WHERE id = {i}")
    assert c.changed_since(cursor, ["4", "5"]) is None
    assert c.changed_since(cursor, KEYS) == {"4", "5", "6"}
    # the schema changed since the last read: the read looks into it first
    user_sql(path, "CREATE TABLE other (x)")
    assert c.changed_since(cursor, KEYS) is None
    c.read_changes(cursor, 1000)
    assert c.changed_since(cursor, KEYS) == {"4", "5", "6"}


def test_once_the_table_is_listed_again_it_never_answers(
        side: tuple[SqliteConnector, Path, str]) -> None:
    # the triggers were dropped: changes went unlogged, and a cursor from before the
    # listing that follows reads like one from after it
    c, path, cursor = side
    user_sql(path, "DROP TRIGGER recsync_contacts_au")
    user_sql(path, "UPDATE contacts SET name = 'unlogged' WHERE id = 7")
    page = c.read_changes(cursor, 1000)  # puts the trigger back, lists again
    assert page.warning
    assert c.changed_since(cursor, KEYS) is None
    after = listed(c)
    assert c.changed_since(after, KEYS) is None


def test_a_gap_row_from_another_reader_means_it_cannot_tell(
        tmp_path: Path, side: tuple[SqliteConnector, Path, str]) -> None:
    c, path, cursor = side
    user_sql(path, "DROP TRIGGER recsync_contacts_ad")
    other = connector(tmp_path)
    other.open()  # another pipeline on the table: puts the trigger back, logs a gap
    other.close()
    c.read_changes(cursor, 1)  # (this reader's schema check is now up to date)
    assert c.changed_since(cursor, KEYS) is None


def test_column_tracking_cannot_tell(tmp_path: Path) -> None:
    make_db(tmp_path / "db.sqlite", rows=[(1, "a@x.org", "A", 1, "2026-01-01T00:00:00Z")])
    c = connector(tmp_path, tracking="column")
    c.open()
    try:
        cursor = listed(c)
        assert c.changed_since(cursor, ["1"]) is None
    finally:
        c.close()


def test_our_write_ranges_are_dropped_as_the_reader_passes_them(
        side: tuple[SqliteConnector, Path, str]) -> None:
    c, path, cursor = side
    user_sql(path, "DROP TRIGGER recsync_contacts_au")
    page = c.read_changes(cursor, 1000)  # lists again from a cursor: doubted for good
    while page.more or (page.listing and not page.listing_done):
        page = c.read_changes(page.cursor, 1000)
    cursor = page.cursor
    for i in range(300):  # the usual: write, read our echo back
        c.write([WriteOp("3", "upsert", {"id": 3, "name": f"n{i}"})])
        assert c.changed_since(cursor, KEYS) is None
        page = c.read_changes(cursor, 1000)
        assert page.changes == []
        cursor = page.cursor
    assert len(c._own_writes) <= 1
