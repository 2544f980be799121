"""SqliteConnector against real SQLite files."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from recsync.connectors.registry import get_connector_class
from recsync.connectors.sqlite import SqliteConfig, SqliteConnector
from recsync.errors import ConnectorConfigError, ConnectorError
from recsync.messages import ChangePage, WriteOp

DDL = (
    "CREATE TABLE contacts (id INTEGER PRIMARY KEY, email TEXT, name TEXT, "
    "score INTEGER CHECK (score >= 0), updated_at TEXT)"
)


def make_db(path: Path, ddl: str = DDL, rows: list[tuple[Any, ...]] | None = None) -> None:
    db = sqlite3.connect(path)
    db.execute(ddl)
    if rows:
        marks = ",".join("?" * len(rows[0]))
        db.executemany(f"INSERT INTO contacts VALUES ({marks})", rows)
    db.commit()
    db.close()


def user_sql(path: Path, sql: str, params: tuple[Any, ...] = ()) -> None:
    db = sqlite3.connect(path)
    db.execute(sql, params)
    db.commit()
    db.close()


def connector(tmp_path: Path, **kw: Any) -> SqliteConnector:
    cfg = SqliteConfig(path="db.sqlite", table="contacts", key="id", **kw)
    return SqliteConnector(cfg, tmp_path)


def opened(tmp_path: Path, **kw: Any) -> SqliteConnector:
    c = connector(tmp_path, **kw)
    c.open()
    return c


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "db.sqlite"
    make_db(path, rows=[(i, f"u{i}@x.org", f"User {i}", i, None) for i in range(1, 11)])
    return path


@pytest.fixture
def conn(tmp_path: Path, db_path: Path) -> Iterator[SqliteConnector]:
    c = connector(tmp_path)
    c.open()
    yield c
    c.close()


def drain(c: SqliteConnector, cursor: str | None, limit: int) -> tuple[list[ChangePage], str]:
    pages = []
    while True:
        page = c.read_changes(cursor, limit)
        pages.append(page)
        assert page.cursor is not None
        cursor = page.cursor
        if not page.more:
            return pages, cursor


def listed(c: SqliteConnector, limit: int = 1000) -> str:
    _, cursor = drain(c, None, limit)
    return cursor


def schema(path: Path) -> set[tuple[str, str]]:
    db = sqlite3.connect(path)
    rows = db.execute("SELECT type, name FROM sqlite_master").fetchall()
    db.close()
    return set(rows)


# ---------------------------------------------------------------- open


def test_registered_under_entry_point() -> None:
    assert get_connector_class("sqlite") is SqliteConnector


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConnectorConfigError, match=r"db\.sqlite does not exist"):
        connector(tmp_path).open()
    assert not (tmp_path / "db.sqlite").exists()


def test_missing_table(tmp_path: Path, db_path: Path) -> None:
    c = SqliteConnector(SqliteConfig(path="db.sqlite", table="people", key="id"), tmp_path)
    with pytest.raises(ConnectorConfigError, match=r"Table 'people' does not exist in SQLite"):
        c.open()


def test_missing_key_column(tmp_path: Path, db_path: Path) -> None:
    c = SqliteConnector(SqliteConfig(path="db.sqlite", table="contacts", key="uid"), tmp_path)
    with pytest.raises(ConnectorConfigError, match=r"has no key column 'uid' \(columns: id, "):
        c.open()


def test_column_mode_needs_updated_at(tmp_path: Path, db_path: Path) -> None:
    c = connector(tmp_path, tracking="column", updated_at="modified")
    with pytest.raises(ConnectorConfigError, match="no column 'modified'"):
        c.open()


def test_system_id(tmp_path: Path) -> None:
    assert connector(tmp_path).system_id == f"sqlite:{(tmp_path / 'db.sqlite').resolve()}"


def test_trigger_install_is_idempotent_and_only_adds_recsync_objects(
    tmp_path: Path, db_path: Path
) -> None:
    before = schema(db_path)
    for _ in range(2):
        c = connector(tmp_path)
        c.open()
        c.close()
    added = schema(db_path) - before
    assert added - {("table", "sqlite_sequence")} == {
        ("table", "recsync_changelog_contacts"),
        ("trigger", "recsync_contacts_ai"),
        ("trigger", "recsync_contacts_au"),
        ("trigger", "recsync_contacts_ad"),
    }
    assert before <= schema(db_path)
    db = sqlite3.connect(db_path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    db.close()


def test_column_mode_adds_nothing(tmp_path: Path, db_path: Path) -> None:
    before = schema(db_path)
    c = connector(tmp_path, tracking="column")
    c.open()
    listed(c)
    c.close()
    assert schema(db_path) == before


# ---------------------------------------------------------------- trigger mode reads


def test_initial_scan_is_a_listing_in_pages(conn: SqliteConnector) -> None:
    pages, cursor = drain(conn, None, 4)
    assert [len(p.changes) for p in pages] == [4, 4, 2]
    assert all(p.listing for p in pages)
    assert [p.listing_start for p in pages] == [True, False, False]
    assert [p.listing_done for p in pages] == [False, False, True]
    assert json.loads(pages[0].cursor or "") == {"scan_after": 4, "seq": 0}
    assert json.loads(cursor) == {"seq": 0}
    keys = [ch.key for p in pages for ch in p.changes]
    assert keys == [str(i) for i in range(1, 11)]
    first = pages[0].changes[0]
    assert first.op == "upsert"
    assert first.fields == {
        "id": 1,
        "email": "u1@x.org",
        "name": "User 1",
        "score": 1,
        "updated_at": None,
    }
    assert first.modified_at > 1.6e9


def test_empty_table_listing(tmp_path: Path) -> None:
    make_db(tmp_path / "db.sqlite")
    c = connector(tmp_path)
    c.open()
    page = c.read_changes(None, 10)
    assert page.changes == []
    assert page.listing and page.listing_start and page.listing_done
    assert not page.more
    assert json.loads(page.cursor or "") == {"seq": 0}


def test_log_mode_sees_insert_update_delete(conn: SqliteConnector, db_path: Path) -> None:
    cursor = listed(conn)
    user_sql(db_path, "INSERT INTO contacts (id, email) VALUES (11, 'new@x.org')")
    user_sql(db_path, "UPDATE contacts SET name = 'Renamed' WHERE id = 2")
    user_sql(db_path, "DELETE FROM contacts WHERE id = 3")
    page = conn.read_changes(cursor, 100)
    assert not page.listing
    assert not page.more
    got = {ch.key: (ch.op, ch.fields) for ch in page.changes}
    assert set(got) == {"11", "2", "3"}
    assert got["11"][0] == "upsert" and got["11"][1]["email"] == "new@x.org"  # type: ignore[index]
    assert got["2"][0] == "upsert" and got["2"][1]["name"] == "Renamed"  # type: ignore[index]
    assert got["3"] == ("delete", None)
    assert json.loads(page.cursor or "")["seq"] == 3
    # nothing new: no changes, same cursor
    again = conn.read_changes(page.cursor, 100)
    assert again.changes == [] and again.cursor == page.cursor


def test_log_coalesces_by_key_last_state_wins(conn: SqliteConnector, db_path: Path) -> None:
    cursor = listed(conn)
    user_sql(db_path, "UPDATE contacts SET name = 'a' WHERE id = 5")
    user_sql(db_path, "UPDATE contacts SET name = 'b' WHERE id = 5")
    user_sql(db_path, "INSERT INTO contacts (id) VALUES (42)")
    user_sql(db_path, "DELETE FROM contacts WHERE id = 42")
    page = conn.read_changes(cursor, 100)
    assert [(c.key, c.op) for c in page.changes] == [("5", "upsert"), ("42", "delete")]
    assert page.changes[0].fields["name"] == "b"  # type: ignore[index]


def test_log_pages_and_more_flag(conn: SqliteConnector, db_path: Path) -> None:
    cursor = listed(conn)
    for i in range(100, 107):
        user_sql(db_path, "INSERT INTO contacts (id) VALUES (?)", (i,))
    pages, _ = drain(conn, cursor, 3)
    assert [len(p.changes) for p in pages] == [3, 3, 1]
    assert [p.more for p in pages] == [True, True, False]
    assert [c.key for p in pages for c in p.changes] == [str(i) for i in range(100, 107)]


def test_key_change_is_delete_plus_insert(conn: SqliteConnector, db_path: Path) -> None:
    cursor = listed(conn)
    user_sql(db_path, "UPDATE contacts SET id = 99 WHERE id = 7")
    page = conn.read_changes(cursor, 100)
    assert [(c.key, c.op) for c in page.changes] == [("7", "delete"), ("99", "upsert")]
    db = sqlite3.connect(db_path)
    ops = db.execute("SELECT op, key FROM recsync_changelog_contacts ORDER BY seq").fetchall()
    db.close()
    assert ops == [("delete", 7), ("upsert", 99)]


def test_change_log_is_pruned_up_to_committed_cursor(tmp_path: Path, db_path: Path) -> None:
    conn = opened(tmp_path, changelog_retention=0.0)
    cursor = listed(conn)
    for i in range(3):
        user_sql(db_path, "UPDATE contacts SET name = ? WHERE id = 1", (str(i),))
    page = conn.read_changes(cursor, 2)
    assert page.more

    def log_seqs() -> list[int]:
        db = sqlite3.connect(db_path)
        seqs = [r[0] for r in db.execute("SELECT seq FROM recsync_changelog_contacts")]
        db.close()
        return seqs

    assert log_seqs() == [1, 2, 3]
    page2 = conn.read_changes(page.cursor, 2)  # page's cursor is now committed
    assert log_seqs() == [3]
    conn.read_changes(page2.cursor, 2)
    assert log_seqs() == []
    # AUTOINCREMENT: new entries continue after the pruned ones, none is missed
    user_sql(db_path, "DELETE FROM contacts WHERE id = 10")
    page3 = conn.read_changes(page2.cursor, 2)
    assert [(c.key, c.op) for c in page3.changes] == [("10", "delete")]
    assert json.loads(page3.cursor or "") == {"seq": 4}


def test_resume_after_crash_mid_scan(tmp_path: Path, db_path: Path) -> None:
    c = connector(tmp_path)
    c.open()
    first = c.read_changes(None, 4)
    second = c.read_changes(first.cursor, 4)
    c.close()  # crash: second page's cursor never committed
    user_sql(db_path, "UPDATE contacts SET name = 'mid' WHERE id = 2")
    user_sql(db_path, "DELETE FROM contacts WHERE id = 9")
    c2 = connector(tmp_path)
    c2.open()
    pages, _ = drain(c2, first.cursor, 4)
    assert not pages[0].listing_start
    assert [p.listing_done for p in pages] == [False, True, False]  # then log mode
    listed_keys = [ch.key for p in pages for ch in p.changes if p.listing]
    assert listed_keys == ["5", "6", "7", "8", "10"]
    assert [ch.key for ch in second.changes] == ["5", "6", "7", "8"]
    # the changes made during the scan come from the log afterwards
    log_changes = [(ch.key, ch.op) for p in pages if not p.listing for ch in p.changes]
    assert log_changes == [("2", "upsert"), ("9", "delete")]


def test_scan_then_more_when_log_grew_during_scan(conn: SqliteConnector, db_path: Path) -> None:
    page = conn.read_changes(None, 6)
    user_sql(db_path, "UPDATE contacts SET name = 'x' WHERE id = 1")
    last = conn.read_changes(page.cursor, 6)
    assert last.listing_done and last.more
    log_page = conn.read_changes(last.cursor, 6)
    assert [(c.key, c.op) for c in log_page.changes] == [("1", "upsert")]


def test_modified_at_from_updated_at_column(tmp_path: Path) -> None:
    make_db(
        tmp_path / "db.sqlite",
        rows=[
            (1, "a", "a", 1, "2024-01-02T03:04:05Z"),
            (2, "b", "b", 1, "2024-01-02 03:04:05"),
            (3, "c", "c", 1, 1700000000),
            (4, "d", "d", 1, 1700000000123),
            (5, "e", "e", 1, "garbage"),
        ],
    )
    c = connector(tmp_path)
    c.open()
    changes = c.read_changes(None, 10).changes
    ts = [ch.modified_at for ch in changes]
    assert ts[0] == ts[1] == 1704164645.0
    assert ts[2] == 1700000000.0
    assert ts[3] == pytest.approx(1700000000.123)
    assert ts[4] > 1.7e9  # fallback: time read


def test_relist_cursor_in_trigger_mode(conn: SqliteConnector) -> None:
    cursor = listed(conn)
    relist = SqliteConnector.relist_cursor(cursor)
    pages, after = drain(conn, relist, 100)
    assert pages[0].listing_start and pages[-1].listing_done
    assert len(pages[0].changes) == 10
    assert json.loads(after) == {"seq": 0}


def test_unusable_cursor_starts_listing(conn: SqliteConnector) -> None:
    page = conn.read_changes("not json", 100)
    assert page.listing_start and page.listing_done and len(page.changes) == 10


# ---------------------------------------------------------------- column mode


def test_column_mode(tmp_path: Path) -> None:
    make_db(
        tmp_path / "db.sqlite",
        rows=[(i, f"{i}@x", "n", 0, f"2024-01-01T00:00:0{i % 3}") for i in range(1, 7)],
    )
    c = connector(tmp_path, tracking="column")
    c.open()
    pages, cursor = drain(c, None, 4)
    assert [len(p.changes) for p in pages] == [4, 2]
    assert pages[0].listing_start and pages[-1].listing_done
    assert json.loads(cursor) == {"ts": "2024-01-01T00:00:02", "key": 5,
                                  "listed_at": pytest.approx(time.time(), abs=60)}
    assert c.read_changes(cursor, 10).changes == []
    user_sql(
        tmp_path / "db.sqlite",
        "UPDATE contacts SET name='z', updated_at='2024-01-01T00:00:05' WHERE id = 1",
    )
    user_sql(
        tmp_path / "db.sqlite",
        "INSERT INTO contacts VALUES (7, 'x', 'y', 0, '2024-01-01T00:00:02')",
    )  # same ts as cursor, key after it
    user_sql(
        tmp_path / "db.sqlite",
        "INSERT INTO contacts VALUES (0, 'x', 'y', 0, '2024-01-01T00:00:02')",
    )  # same ts, key before: not seen (documented)
    pages, cursor2 = drain(c, cursor, 1)
    assert [ch.key for p in pages for ch in p.changes] == ["7", "1"]
    assert json.loads(cursor2) == {"ts": "2024-01-01T00:00:05", "key": 1,
                                   "listed_at": json.loads(cursor)["listed_at"]}
    assert pages[-1].changes[0].modified_at == 1704067205.0
    # deletes are found by a listing requested with relist_cursor
    user_sql(tmp_path / "db.sqlite", "DELETE FROM contacts WHERE id = 2")
    relist = SqliteConnector.relist_cursor(cursor2)
    assert json.loads(relist)["relist"] is True
    pages, cursor3 = drain(c, relist, 100)
    assert pages[0].listing_start and pages[-1].listing_done
    assert sorted(int(ch.key) for p in pages for ch in p.changes) == [0, 1, 3, 4, 5, 6, 7]
    assert json.loads(cursor3)["ts"] == "2024-01-01T00:00:05"
    assert json.loads(cursor3)["key"] == 1


def test_column_mode_lists_the_table_again_every_relist_interval(tmp_path: Path) -> None:
    make_db(tmp_path / "db.sqlite",
            rows=[(i, f"{i}@x", "n", 0, "2024-01-01T00:00:00") for i in range(1, 4)])
    hourly = connector(tmp_path, tracking="column")
    hourly.open()
    _pages, cursor = drain(hourly, None, 10)
    user_sql(tmp_path / "db.sqlite", "DELETE FROM contacts WHERE id = 2")
    page = hourly.read_changes(cursor, 10)
    assert not page.listing and page.changes == []  # not due: nothing to see
    # an old cursor (no listing time) or an elapsed interval means a listing now
    due = connector(tmp_path, tracking="column", relist_interval=1e-9)
    due.open()
    for start in (json.dumps({"ts": "2024-01-01T00:00:00", "key": 3}), cursor):
        pages, _after = drain(due, start, 10)
        assert pages[0].listing_start and pages[-1].listing_done
        assert sorted(ch.key for p in pages for ch in p.changes) == ["1", "3"]
    never = connector(tmp_path, tracking="column", relist_interval=0)
    never.open()
    assert not never.read_changes(json.dumps({"ts": "2024-01-01T00:00:00", "key": 3}),
                                  10).listing


# ---------------------------------------------------------------- fetch and write


def test_fetch_by_text_keys(conn: SqliteConnector) -> None:
    got = conn.fetch(["3", "5", "404"])
    assert set(got) == {"3", "5"}
    assert got["3"]["email"] == "u3@x.org"


def test_fetch_typeless_key_column(tmp_path: Path) -> None:
    make_db(tmp_path / "db.sqlite", "CREATE TABLE contacts (id, name)", [(303, "a"), ("x", "b")])
    c = connector(tmp_path)
    c.open()
    assert c.fetch(["303", "x"]) == {"303": {"id": 303, "name": "a"}, "x": {"id": "x", "name": "b"}}
    assert c.write([WriteOp("303", "delete", None)])[0].error is None
    assert c.fetch(["303"]) == {}


def test_upsert_with_unique_key_and_text_keys(conn: SqliteConnector, db_path: Path) -> None:
    two = {"id": 2, "name": "Two"}
    results = conn.write(
        [
            WriteOp("303", "upsert", {"id": "303", "email": "n@x.org", "extra": 1}),
            WriteOp("2", "upsert", two),
            WriteOp("3", "delete", None),
            WriteOp("404", "delete", None),
        ]
    )
    assert [r.error for r in results] == [None] * 4
    assert two == {"id": 2, "name": "Two"}  # updated_at is stamped on the row, not on it
    assert [r.key for r in results] == ["303", "2", "3", "404"]
    got = conn.fetch(["303", "2", "3"])
    assert got["303"]["id"] == 303 and got["303"]["email"] == "n@x.org"
    assert got["2"]["name"] == "Two" and got["2"]["email"] == "u2@x.org"  # untouched column
    assert "3" not in got
    # upsert again with text key "303": updated in place, not duplicated
    conn.write([WriteOp("303", "upsert", {"id": "303", "name": "again"})])
    db = sqlite3.connect(db_path)
    assert db.execute("SELECT count(*), max(name) FROM contacts WHERE id = 303").fetchone() == (
        1,
        "again",
    )
    db.close()


def test_upsert_without_unique_key(tmp_path: Path) -> None:
    make_db(tmp_path / "db.sqlite", "CREATE TABLE contacts (code TEXT, name TEXT)", [("a", "A")])
    c = SqliteConnector(SqliteConfig(path="db.sqlite", table="contacts", key="code"), tmp_path)
    c.open()
    res = c.write(
        [
            WriteOp("a", "upsert", {"code": "a", "name": "A2"}),
            WriteOp("b", "upsert", {"code": "b", "name": "B"}),
            WriteOp("b", "upsert", {"code": "b", "name": "B2"}),
        ]
    )
    assert all(r.error is None for r in res)
    db = sqlite3.connect(tmp_path / "db.sqlite")
    assert db.execute("SELECT code, name FROM contacts ORDER BY code").fetchall() == [
        ("a", "A2"),
        ("b", "B2"),
    ]
    db.close()


def test_poison_row_rejected_rest_commits(conn: SqliteConnector) -> None:
    ops = [
        WriteOp("20", "upsert", {"id": 20, "score": 1}),
        WriteOp("21", "upsert", {"id": 21, "score": -5}),  # CHECK (score >= 0)
        WriteOp("22", "upsert", {"id": 22, "score": 3}),
        WriteOp("23", "upsert", {"id": 23, "score": {"not": "storable"}}),
        WriteOp("24", "upsert", {"name": "no key"}),
        WriteOp("1", "delete", None),
    ]
    res = conn.write(ops)
    assert [r.key for r in res] == ["20", "21", "22", "23", "24", "1"]
    assert [r.error is None for r in res] == [True, False, True, False, False, True]
    assert "'21'" in (res[1].error or "") and "CHECK constraint failed" in (res[1].error or "")
    assert not res[1].retryable and not res[3].retryable and not res[4].retryable
    assert "no value for key column 'id'" in (res[4].error or "")
    got = conn.fetch(["20", "21", "22", "1"])
    assert set(got) == {"20", "22"}


def test_strict_table_datatype_mismatch(tmp_path: Path) -> None:
    make_db(
        tmp_path / "db.sqlite", "CREATE TABLE contacts (id INTEGER PRIMARY KEY, n INTEGER) STRICT"
    )
    c = connector(tmp_path)
    c.open()
    res = c.write(
        [WriteOp("1", "upsert", {"id": 1, "n": "abc"}), WriteOp("2", "upsert", {"id": 2, "n": 2})]
    )
    assert res[0].error and "cannot store TEXT value" in res[0].error
    assert res[1].error is None
    assert set(c.fetch(["1", "2"])) == {"2"}


def test_own_writes_come_back_through_the_log_after_a_restart(
    tmp_path: Path, conn: SqliteConnector
) -> None:
    cursor = listed(conn)
    conn.write([WriteOp("50", "upsert", {"id": 50, "name": "mine"})])
    conn.close()  # crash before the engine recorded the write: the log still has it
    restarted = opened(tmp_path)
    page = restarted.read_changes(cursor, 100)
    assert [(c.key, c.op) for c in page.changes] == [("50", "upsert")]


def test_database_locked_is_transient(tmp_path: Path, db_path: Path) -> None:
    c = connector(tmp_path, busy_timeout=0.05)
    c.open()
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(ConnectorError, match="is locked by another connection") as info:
            c.write([WriteOp("1", "upsert", {"id": 1, "name": "x"})])
        assert not isinstance(info.value, ConnectorConfigError)
        with pytest.raises(ConnectorError, match="locked"):
            c.read_changes(None, 10)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert c.write([WriteOp("1", "upsert", {"id": 1, "name": "x"})])[0].error is None
    c.close()


def test_dropped_table_is_a_clear_error(conn: SqliteConnector, db_path: Path) -> None:
    user_sql(db_path, "DROP TABLE contacts")
    with pytest.raises(ConnectorError, match="was dropped or altered"):
        conn.write([WriteOp("1", "delete", None)])
    with pytest.raises(ConnectorError, match="was dropped or altered"):
        conn.fetch(["1"])


def test_large_batch_round_trip(tmp_path: Path) -> None:
    make_db(tmp_path / "db.sqlite")
    c = connector(tmp_path)
    c.open()
    n = 5000
    ops = [WriteOp(str(i), "upsert", {"id": i, "email": f"{i}@x", "score": i}) for i in range(n)]
    assert all(r.error is None for r in c.write(ops))
    pages, cursor = drain(c, None, 1000)
    assert sum(len(p.changes) for p in pages) == n
    assert len(c.fetch([str(i) for i in range(n)])) == n
    # the log holds our own writes, which the connector knows and skips
    pages, _ = drain(c, cursor, 1000)
    assert sum(len(p.changes) for p in pages) == 0


def test_without_rowid_table_is_listed_by_key(tmp_path: Path) -> None:
    make_db(
        tmp_path / "db.sqlite",
        "CREATE TABLE contacts (id TEXT PRIMARY KEY, name TEXT) WITHOUT ROWID",
        [("b", "B"), ("a", "A"), ("c", "C")],
    )
    c = connector(tmp_path)
    c.open()
    pages, cursor = drain(c, None, 2)
    assert [[ch.key for ch in p.changes] for p in pages] == [["a", "b"], ["c"]]
    assert json.loads(pages[0].cursor or "") == {"scan_after": "b", "seq": 0}
    user_sql(tmp_path / "db.sqlite", "INSERT INTO contacts VALUES ('d', 'D')")
    assert [ch.key for ch in c.read_changes(cursor, 10).changes] == ["d"]


def test_config_from_plain_dict_and_unknown_field(tmp_path: Path) -> None:
    cfg = {"path": "db.sqlite", "table": "contacts", "key": "id"}
    assert SqliteConnector(cfg, tmp_path).cfg == SqliteConfig(**cfg)
    with pytest.raises(ConnectorConfigError, match="Invalid sqlite connector config"):
        SqliteConnector({**cfg, "tabel": "x"}, tmp_path)


def test_not_a_database(tmp_path: Path) -> None:
    (tmp_path / "db.sqlite").write_text("hello, I am a text file, not a database\n" * 50)
    with pytest.raises(ConnectorConfigError, match=r"Cannot use SQLite database .*db\.sqlite"):
        connector(tmp_path).open()


def test_young_log_rows_are_kept_for_other_readers_of_the_table(
    tmp_path: Path, db_path: Path
) -> None:
    first, second = opened(tmp_path), opened(tmp_path)  # two pipelines, one table
    c1, c2 = listed(first), listed(second)
    user_sql(db_path, "UPDATE contacts SET name = 'x' WHERE id = 1")
    p1 = first.read_changes(c1, 10)
    first.read_changes(p1.cursor, 10)  # first has committed past the change
    p2 = second.read_changes(c2, 10)
    assert [(c.key, c.op) for c in p2.changes] == [("1", "upsert")]


def test_housekeeping_keeps_an_unread_log_to_the_retention_window(
    tmp_path: Path, db_path: Path
) -> None:
    def log_rows() -> int:
        db = sqlite3.connect(db_path)
        n = db.execute("SELECT count(*) FROM recsync_changelog_contacts").fetchone()[0]
        db.close()
        return int(n)

    day = opened(tmp_path)  # a day of retention: our writes stay logged for other readers
    day.write([WriteOp("100", "upsert", {"id": 100, "email": "a@x", "name": "A"})])
    day.housekeep()
    assert log_rows() == 1
    unread = opened(tmp_path, changelog_retention=0.0)
    for i in range(3):
        unread.write([WriteOp(str(200 + i), "upsert", {"id": 200 + i, "email": "b@x"})])
    assert log_rows() == 4  # writing alone never prunes: a reader's cursor decides
    unread.housekeep()
    assert log_rows() == 0


def test_a_reader_whose_rows_were_pruned_lists_the_table_again(
    tmp_path: Path, db_path: Path
) -> None:
    eager, late = opened(tmp_path, changelog_retention=0.0), opened(tmp_path)
    c_eager, c_late = listed(eager), listed(late)
    user_sql(db_path, "DELETE FROM contacts WHERE id = 2")
    page = eager.read_changes(c_eager, 10)
    eager.read_changes(page.cursor, 10)  # prunes the delete: it is old enough for eager
    relisted = late.read_changes(c_late, 1000)
    assert relisted.listing and relisted.listing_start
    assert "2" not in {c.key for c in relisted.changes}


def test_own_writes_are_not_read_back_from_the_log(conn: SqliteConnector, db_path: Path) -> None:
    cursor = listed(conn)
    conn.write([WriteOp("500", "upsert", {"id": 500, "name": "ours"})])
    user_sql(db_path, "UPDATE contacts SET name = 'theirs' WHERE id = 1")
    page = conn.read_changes(cursor, 100)
    assert [(c.key, c.fields and c.fields["name"]) for c in page.changes] == [("1", "theirs")]


# ---------------------------------------------------------------- schema changes


def rebuild_contacts(path: Path, extra: str = "") -> None:
    """SQLite's documented way to change a table's schema: new table, copy, drop, rename
    (which drops the table's triggers with it); then ``extra`` statements."""
    db = sqlite3.connect(path)
    db.executescript(
        "BEGIN;"
        "CREATE TABLE new_contacts (id INTEGER PRIMARY KEY, email TEXT, name TEXT, "
        "score INTEGER, updated_at TEXT, phone TEXT);"
        "INSERT INTO new_contacts (id, email, name, score, updated_at) "
        "SELECT id, email, name, score, updated_at FROM contacts;"
        "DROP TABLE contacts;"
        "ALTER TABLE new_contacts RENAME TO contacts;"
        "COMMIT;" + extra
    )
    db.close()


CHANGES_WITHOUT_CAPTURE = (
    "INSERT INTO contacts (id, email) VALUES (11, 'new@x.org');"
    "UPDATE contacts SET name = 'Renamed' WHERE id = 2;"
    "DELETE FROM contacts WHERE id = 3;"
)


def test_rebuilt_table_gets_its_triggers_back_and_is_listed_again(
    conn: SqliteConnector, db_path: Path
) -> None:
    cursor = listed(conn)
    # a schema change that keeps the table and its triggers: read from the log as usual
    user_sql(db_path, "CREATE INDEX contacts_email ON contacts (email)")
    user_sql(db_path, "UPDATE contacts SET name = 'indexed' WHERE id = 5")
    page = conn.read_changes(cursor, 100)
    assert not page.listing and page.warning is None
    assert [c.key for c in page.changes] == ["5"]
    cursor = page.cursor
    rebuild_contacts(db_path, CHANGES_WITHOUT_CAPTURE)
    assert not {n for _t, n in schema(db_path) if n.startswith("recsync_contacts_")}
    pages, cursor = drain(conn, cursor, 100)
    first = pages[0]
    assert first.listing and first.listing_start and first.warning
    assert "rebuilt" in first.warning
    listed_rows = {c.key: c.fields for p in pages if p.listing for c in p.changes}
    assert "3" not in listed_rows and listed_rows["11"]["email"] == "new@x.org"  # type: ignore[index]
    assert listed_rows["2"]["name"] == "Renamed"  # type: ignore[index]
    assert {("trigger", f"recsync_contacts_{s}") for s in ("ai", "au", "ad")} <= schema(db_path)
    # capture is on again: the next change comes from the log, with the new column
    user_sql(db_path, "UPDATE contacts SET phone = '555' WHERE id = 4")
    page = conn.read_changes(cursor, 100)
    assert not page.listing and page.warning is None
    assert [(c.key, c.fields["phone"]) for c in page.changes] == [("4", "555")]  # type: ignore[index]


def test_table_rebuilt_while_recsync_was_stopped_is_listed_again_by_every_reader(
    tmp_path: Path, db_path: Path
) -> None:
    # two pipelines read the table; the first to start puts the triggers back
    first, second = opened(tmp_path), opened(tmp_path)
    cursors = [listed(first), listed(second)]
    first.close()
    second.close()
    rebuild_contacts(db_path, CHANGES_WITHOUT_CAPTURE)
    first, second = opened(tmp_path), opened(tmp_path)
    for c, cursor in zip((first, second), cursors, strict=True):
        pages, after = drain(c, cursor, 100)
        assert pages[0].listing_start and pages[0].warning
        assert "missing" in pages[0].warning
        assert "11" in {ch.key for p in pages for ch in p.changes}
        # once listed, the log is read as usual
        assert c.read_changes(after, 100).warning is None
        c.close()


@pytest.mark.parametrize("running", [True, False])
def test_change_log_dropped_and_created_again_is_noticed(
    tmp_path: Path, db_path: Path, running: bool
) -> None:
    c = opened(tmp_path)
    cursor = listed(c)
    for i in range(3):  # the log moves on: the cursor is at seq 3
        user_sql(db_path, "UPDATE contacts SET name = ? WHERE id = 1", (str(i),))
    cursor = c.read_changes(cursor, 100).cursor
    assert json.loads(cursor or "")["seq"] == 3
    if not running:
        c.close()
    db = sqlite3.connect(db_path)
    db.executescript(
        "DROP TABLE recsync_changelog_contacts;"
        "CREATE TABLE recsync_changelog_contacts (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
        'op TEXT NOT NULL, "key", changed_at REAL NOT NULL);'
        "UPDATE contacts SET name = 'lost?' WHERE id = 6;"
    )
    db.close()
    if not running:
        c = opened(tmp_path)
    pages, _ = drain(c, cursor, 100)
    assert pages[0].listing_start and pages[0].warning
    assert "change log" in pages[0].warning
    got = {ch.key: ch.fields for p in pages for ch in p.changes}
    assert got["6"]["name"] == "lost?"  # type: ignore[index]
    c.close()


# ---------------------------------------------------------------- rows without a key


@pytest.mark.parametrize("code", ["code TEXT", "code TEXT UNIQUE"])  # log read joined or not
def test_rows_without_a_key_are_reported_unreadable_with_their_rowid(
    tmp_path: Path, code: str
) -> None:
    path = tmp_path / "db.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        f"CREATE TABLE contacts ({code}, name TEXT);"
        "INSERT INTO contacts VALUES ('a', 'Ann'), (NULL, 'No key'), ('c', 'Cid');")
    db.close()
    c = SqliteConnector(SqliteConfig(path="db.sqlite", table="contacts", key="code"), tmp_path)
    c.open()
    assert c._unique == ("UNIQUE" in code)
    page = c.read_changes(None, 100)
    assert [ch.key for ch in page.changes] == ["a", "c"]
    (bad,) = page.unreadable
    assert bad.where == "contacts rowid 2" and not bad.hides_key
    assert "NULL" in bad.reason and "'code'" in bad.reason
    # from the change log: the whole set of keyless rows, each time one changes
    user_sql(path, "INSERT INTO contacts VALUES (NULL, 'Another')")
    page = c.read_changes(page.cursor, 100)
    assert page.unreadable_all
    assert [u.where for u in page.unreadable] == ["contacts rowid 2", "contacts rowid 4"]
    user_sql(path, "UPDATE contacts SET code = 'b' WHERE rowid = 2")
    page = c.read_changes(page.cursor, 100)
    assert [ch.key for ch in page.changes] == ["b"]
    assert page.unreadable_all and [u.where for u in page.unreadable] == ["contacts rowid 4"]
    c.close()


# ---------------------------------------------------------------- keys made by the table


def test_a_key_an_integer_primary_key_cannot_hold_gets_a_new_rowid(
    conn: SqliteConnector, db_path: Path
) -> None:
    cursor = listed(conn)
    res = conn.write([
        WriteOp("sf-003A", "upsert", {"id": "sf-003A", "name": "From CRM", "email": "c@x.org"}),
        WriteOp("4", "upsert", {"id": 4, "name": "Four"}),
    ])
    assert [(r.error, r.new_key) for r in res] == [(None, "11"), (None, None)]
    assert conn.fetch(["11"])["11"]["name"] == "From CRM"
    db = sqlite3.connect(db_path)
    assert db.execute("SELECT count(*) FROM contacts WHERE id = 'sf-003A'").fetchone() == (0,)
    db.close()
    # our own insert is no change to read back
    assert conn.read_changes(cursor, 100).changes == []


def test_a_key_a_table_cannot_hold_nor_make_is_refused_saying_so(tmp_path: Path) -> None:
    make_db(tmp_path / "db.sqlite",
            "CREATE TABLE contacts (id INTEGER NOT NULL UNIQUE, name TEXT) STRICT")
    c = connector(tmp_path)
    c.open()
    (res,) = c.write([WriteOp("sf-003A", "upsert", {"id": "sf-003A", "name": "x"})])
    assert res.error and res.new_key is None and not res.retryable
    assert "cannot make keys itself" in res.error and "not an INTEGER PRIMARY KEY" in res.error
    c.close()


def test_a_batch_of_like_records_with_one_refused_writes_the_others(
    tmp_path: Path, db_path: Path,
) -> None:
    c = opened(tmp_path)
    ops = [WriteOp(str(i), "upsert", {"id": i, "name": f"N{i}", "score": -1 if i == 13 else i})
           for i in range(11, 16)]
    results = c.write(ops)  # one shape for all: the batch goes whole, then one by one
    assert [r.key for r in results] == [str(i) for i in range(11, 16)]
    assert [r.error is None for r in results] == [True, True, False, True, True]
    assert "CHECK constraint" in (results[2].error or "") and not results[2].retryable
    db = sqlite3.connect(db_path)
    assert [r[0] for r in db.execute("SELECT id FROM contacts WHERE id > 10")] == [11, 12, 14, 15]
    db.close()
    # a key the table cannot hold makes a new row, whatever the others are
    made = c.write([WriteOp("16", "upsert", {"id": 16, "name": "A"}),
                    WriteOp("sf-1", "upsert", {"id": "sf-1", "name": "B"})])
    assert made[0].new_key is None and made[1].new_key not in (None, "sf-1")
    c.close()


def test_log_read_is_the_same_with_and_without_a_unique_key(tmp_path: Path) -> None:
    """A unique key reads the log joined with the table in one query; without one, the
    rows are looked up by key afterwards: the same changes, in the same order."""
    got = []
    for name, ddl in (("unique", DDL), ("plain", DDL.replace("INTEGER PRIMARY KEY", "INTEGER"))):
        folder = tmp_path / name
        folder.mkdir()
        path = folder / "db.sqlite"
        make_db(path, ddl, rows=[(i, f"u{i}@x.org", f"User {i}", i, None) for i in range(1, 6)])
        c = opened(folder)
        assert c._unique == (name == "unique")
        cursor = listed(c)
        user_sql(path, "UPDATE contacts SET name = 'a' WHERE id = 5")
        user_sql(path, "INSERT INTO contacts (id, updated_at) VALUES (42, '2030-01-02T03:04:05Z')")
        user_sql(path, "UPDATE contacts SET name = 'b' WHERE id = 5")
        user_sql(path, "DELETE FROM contacts WHERE id = 2")
        page = c.read_changes(cursor, 100)
        c.close()
        got.append([(ch.key, ch.op, ch.fields) for ch in page.changes])
        assert page.changes[0].modified_at == 1893553445.0  # the row's later updated_at
    assert got[0] == got[1]
    assert [(k, op) for k, op, _ in got[0]] == [("42", "upsert"), ("5", "upsert"),
                                                ("2", "delete")]
