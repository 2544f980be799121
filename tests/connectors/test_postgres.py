"""The postgres connector against the machine's PostgreSQL: capture, watermark, writes."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from recsync.connectors.postgres import PostgresConnector
from recsync.dsn import mask_dsn, scrub
from recsync.errors import ConnectorConfigError, ConnectorError
from recsync.messages import ChangePage, WriteOp
from tests.pgfixture import PgSchema, pg  # noqa: F401 - the fixture

USERS = """
CREATE TABLE {t} (
    record_id integer PRIMARY KEY,
    full_name text NOT NULL,
    status text DEFAULT 'active'
)
"""


def make(pg: PgSchema, **options: Any) -> PostgresConnector:  # noqa: F811
    conn = PostgresConnector({"dsn": pg.dsn, "table": pg.table(), "key": "record_id",
                              "listen": False, **options}, Path("."))
    conn.origin = "test/p"
    return conn


@pytest.fixture
def users(pg: PgSchema) -> Iterator[PostgresConnector]:  # noqa: F811
    pg.run(USERS.format(t=pg.table()))
    pg.run(f"INSERT INTO {pg.table()} VALUES (1, 'Ann', 'active'), (2, 'Bob', 'active')")
    conn = make(pg)
    conn.open()
    yield conn
    conn.close()


def settle(conn: PostgresConnector) -> None:
    """Wait until every transaction running now has ended (other sessions on the shared
    server too): a change committed before is then below the reader's watermark."""
    row = conn.conn.execute("SELECT pg_current_xact_id()::text").fetchone()
    assert row is not None
    deadline = time.monotonic() + 30
    while conn.conn.execute(
            "SELECT pg_snapshot_xmin(pg_current_snapshot()) > %s::text::xid8",
            (row[0],)).fetchone() != (True,):
        assert time.monotonic() < deadline, "a transaction on the server stays open"
        threading.Event().wait(0.005)  # polling a condition with a deadline


def drain(conn: PostgresConnector, cursor: str | None, wait: bool = True
          ) -> tuple[list[ChangePage], str | None]:
    """Read until the reader says there is no more; ``wait``: first let every running
    transaction end (``settle``)."""
    if wait:
        settle(conn)
    pages = []
    while True:
        page = conn.read_changes(cursor, 100)
        pages.append(page)
        cursor = page.cursor
        if not page.more:
            return pages, cursor


def seen(pages: list[ChangePage]) -> dict[str, str]:
    """key -> 'upsert:<name>' or 'delete' of the last change of each key."""
    out = {}
    for page in pages:
        for ch in page.changes:
            out[ch.key] = "delete" if ch.op == "delete" else f"upsert:{ch.fields['full_name']}"
    return out


def test_first_read_lists_the_table_then_the_log_has_every_kind_of_change(
        users: PostgresConnector, pg: PgSchema) -> None:  # noqa: F811
    pages, cursor = drain(users, None)
    assert pages[0].listing and pages[0].listing_start
    assert seen(pages) == {"1": "upsert:Ann", "2": "upsert:Bob"}
    pg.run(f"INSERT INTO {pg.table()} VALUES (3, 'Cy', 'active')")
    pg.run(f"UPDATE {pg.table()} SET full_name = 'Annie' WHERE record_id = 1")
    pg.run(f"DELETE FROM {pg.table()} WHERE record_id = 2")
    pg.run(f"UPDATE {pg.table()} SET record_id = 30 WHERE record_id = 3")
    pages, cursor = drain(users, cursor)
    assert not any(p.listing for p in pages)
    assert seen(pages) == {"1": "upsert:Annie", "2": "delete", "3": "delete",
                           "30": "upsert:Cy"}
    pages, _ = drain(users, cursor)
    assert seen(pages) == {}


def test_a_listed_row_changed_when_its_updated_column_says(pg: PgSchema) -> None:  # noqa: F811
    pg.run(f"CREATE TABLE {pg.table()} (record_id integer PRIMARY KEY, "
           "updated_at timestamp(3) with time zone)")
    pg.run(f"INSERT INTO {pg.table()} VALUES (1, '2024-01-02 10:00:00.25+00'), "
           "(2, 'infinity'), (3, NULL)")
    conn = make(pg)
    conn.open()
    try:
        before = time.time()
        changes = {c.key: c for p in drain(conn, None)[0] for c in p.changes}
        assert changes["1"].modified_at == 1704189600.25
        assert changes["1"].fields["updated_at"] == "2024-01-02T10:00:00.25+00:00"
        assert changes["2"].modified_at >= before and changes["3"].modified_at >= before
    finally:
        conn.close()


@pytest.mark.parametrize("column", ["timestamptz", "timestamp", "date", "float8"])
def test_a_row_stamped_infinity_does_not_pin_the_column_cursor(
        pg: PgSchema, column: str) -> None:  # noqa: F811
    """An 'infinity' (or far-future) updated value made the cursor {"ts": "infinity"}: every
    later change waited for the hourly listing. The cursor stays at PostgreSQL's clock."""
    then, now = {  # a moment ago, now (timestamp: UTC, as the connector's session)
        "timestamptz": ("now() - interval '10 s'", "now()"),
        "timestamp": ("timezone('UTC', now()) - interval '10 s'", "timezone('UTC', now())"),
        "date": ("current_date - 2", "current_date - 1"),
        "float8": ("extract(epoch from now()) - 10", "extract(epoch from now())")}[column]
    far = "'infinity'" if column != "float8" else "'Infinity'"
    pg.run(f"CREATE TABLE {pg.table()} (record_id integer PRIMARY KEY, full_name text, "
           f"updated_at {column})")
    pg.run(f"INSERT INTO {pg.table()} VALUES (1, 'Inf', {far}), (2, 'Bob', {then})")
    conn = make(pg, tracking="column")
    conn.open()
    try:
        pages, cursor = drain(conn, None, wait=False)
        assert seen(pages) == {"1": "upsert:Inf", "2": "upsert:Bob"}
        assert "nfinity" not in (cursor or ""), cursor
        pg.run(f"INSERT INTO {pg.table()} VALUES (3, 'Far', {far})")  # between listings
        pages, cursor = drain(conn, cursor, wait=False)
        assert "nfinity" not in (cursor or ""), cursor
        pg.run(f"UPDATE {pg.table()} SET full_name = 'Bobby', updated_at = {now} "
               "WHERE record_id = 2")
        pages, cursor = drain(conn, cursor, wait=False)
        assert seen(pages) == {"2": "upsert:Bobby"}
    finally:
        conn.close()


def test_a_transaction_that_commits_after_a_later_one_is_not_lost(
        users: PostgresConnector, pg: PgSchema) -> None:  # noqa: F811
    _, cursor = drain(users, None)
    t1, t2 = pg.connect(), pg.connect()
    try:
        t1.execute("BEGIN")
        t1.execute(f"INSERT INTO {pg.table()} VALUES (10, 'first seq', 'active')")  # seq 1
        t2.execute("BEGIN")
        t2.execute(f"INSERT INTO {pg.table()} VALUES (11, 'second seq', 'active')")  # seq 2
        t2.execute("COMMIT")
        log = f"{pg.schema}.recsync_changelog_users"
        seq1 = t1.execute(f"SELECT seq FROM {log} WHERE key = '10'").fetchone()
        seq2 = pg.run(f"SELECT seq FROM {log} WHERE key = '11'")
        assert seq1 is not None and seq1[0] < seq2[0][0]  # T1 took the lower sequence number
        pages, cursor = drain(users, cursor, wait=False)  # T1 still open: T2's change waits for it
        assert seen(pages) == {}
        t1.execute("COMMIT")
    finally:
        t1.close()
        t2.close()
    pages, cursor = drain(users, cursor)
    assert seen(pages) == {"10": "upsert:first seq", "11": "upsert:second seq"}


def test_a_long_open_transaction_delays_changes_without_losing_them(
        users: PostgresConnector, pg: PgSchema) -> None:  # noqa: F811
    _, cursor = drain(users, None)
    long = pg.connect()
    try:
        long.execute("BEGIN")
        long.execute(f"UPDATE {pg.table()} SET status = 'pending' WHERE record_id = 2")
        for i in range(20, 25):  # committed meanwhile, in their own transactions
            pg.run(f"INSERT INTO {pg.table()} VALUES ({i}, 'n{i}', 'active')")
        for _ in range(3):
            pages, cursor = drain(users, cursor, wait=False)
            assert seen(pages) == {}
        long.execute("COMMIT")
    finally:
        long.close()
    pages, _ = drain(users, cursor)
    assert set(seen(pages)) == {"2", "20", "21", "22", "23", "24"}


def test_a_rolled_back_insert_leaves_a_sequence_gap_that_is_not_a_reason_to_relist(
        users: PostgresConnector, pg: PgSchema) -> None:  # noqa: F811
    _, cursor = drain(users, None)
    with pg.connect() as conn:
        conn.execute("BEGIN")
        conn.execute(f"INSERT INTO {pg.table()} VALUES (40, 'gone', 'active')")
        conn.execute("ROLLBACK")
    pg.run(f"INSERT INTO {pg.table()} VALUES (41, 'kept', 'active')")
    pages, _ = drain(users, cursor)
    assert not any(p.listing for p in pages)
    assert seen(pages) == {"41": "upsert:kept"}


def test_our_own_writes_are_not_read_back_but_other_writes_in_between_are(
        users: PostgresConnector, pg: PgSchema) -> None:  # noqa: F811
    _, cursor = drain(users, None)
    results = users.write([
        WriteOp("5", "upsert", {"record_id": 5, "full_name": "Eve", "status": "active"}),
        WriteOp("1", "upsert", {"record_id": 1, "full_name": "Ann B", "status": "active"}),
        WriteOp("2", "delete", None),
    ])
    assert [r.error for r in results] == [None, None, None]
    pg.run(f"UPDATE {pg.table()} SET full_name = 'Ann C' WHERE record_id = 1")
    pages, _ = drain(users, cursor)
    assert seen(pages) == {"1": "upsert:Ann C"}
    assert pg.run(f"SELECT record_id, full_name FROM {pg.table()} ORDER BY 1") == [
        (1, "Ann C"), (5, "Eve")]


def test_a_large_write_of_our_own_is_skipped_in_one_read_not_paged_through(
        users: PostgresConnector, pg: PgSchema) -> None:  # noqa: F811
    _, cursor = drain(users, None)
    users.write([WriteOp(str(k), "upsert", {"record_id": k, "full_name": f"N{k}"})
                 for k in range(10, 260)])
    settle(users)
    page = users.read_changes(cursor, 100)  # 250 log rows of ours, pages of 100
    assert page.changes == [] and not page.more
    pg.run(f"UPDATE {pg.table()} SET full_name = 'theirs' WHERE record_id = 42")
    pages, _ = drain(users, page.cursor)
    assert seen(pages) == {"42": "upsert:theirs"}


def test_one_statement_moving_many_keys_is_read_as_deletes_and_upserts(
        users: PostgresConnector, pg: PgSchema) -> None:  # noqa: F811
    _, cursor = drain(users, None)
    pg.run(f"INSERT INTO {pg.table()} VALUES (3, 'Cy', 'active')")
    pg.run(f"UPDATE {pg.table()} SET record_id = record_id + 10 WHERE record_id > 1")
    pages, _ = drain(users, cursor)
    assert seen(pages) == {"2": "delete", "3": "delete", "12": "upsert:Bob", "13": "upsert:Cy"}


def test_truncate_is_read_as_a_delete_of_every_row(
        users: PostgresConnector, pg: PgSchema) -> None:  # noqa: F811
    _, cursor = drain(users, None)
    pg.run(f"TRUNCATE {pg.table()}")
    pages, _ = drain(users, cursor)
    assert seen(pages) == {"1": "delete", "2": "delete"}


def test_one_refused_record_fails_alone_with_postgresqls_message(
        users: PostgresConnector, pg: PgSchema) -> None:  # noqa: F811
    results = users.write([
        WriteOp("6", "upsert", {"record_id": 6, "full_name": "Fay"}),
        WriteOp("7", "upsert", {"record_id": 7, "full_name": None}),
        WriteOp("x", "upsert", {"record_id": "not a number", "full_name": "X"}),
        WriteOp("8", "upsert", {"record_id": 8, "full_name": "Gil"}),
    ])
    assert results[0].error is None and results[3].error is None
    assert results[1].error and "null value" in results[1].error and not results[1].retryable
    assert results[2].error and "integer" in results[2].error
    assert pg.run(f"SELECT record_id FROM {pg.table()} ORDER BY 1") == [(1,), (2,), (6,), (8,)]


def test_a_value_the_column_refuses_fails_that_record_alone(
        pg: PgSchema) -> None:  # noqa: F811
    pg.run(f"CREATE TABLE {pg.table()} (record_id integer PRIMARY KEY, age integer, "
           "full_name text)")
    conn = make(pg)
    conn.open()
    try:
        results = conn.write([
            WriteOp("1", "upsert", {"record_id": 1, "age": "41", "full_name": "Ann"}),
            WriteOp("2", "upsert", {"record_id": 2, "age": "forty", "full_name": "Bob"}),
            WriteOp("3", "upsert", {"record_id": 3, "full_name": "Cy"}),  # another shape
        ])
        assert results[0].error is None and results[2].error is None
        assert results[1].error and "integer" in results[1].error
        assert pg.run(f"SELECT record_id, age FROM {pg.table()} ORDER BY 1") == [
            (1, 41), (3, None)]
    finally:
        conn.close()


def test_a_refused_batch_leaves_nothing_behind_for_the_next_one(
        pg: PgSchema) -> None:  # noqa: F811
    pg.run(f"CREATE TABLE {pg.table()} (record_id integer PRIMARY KEY, email text UNIQUE)")
    pg.run(f"INSERT INTO {pg.table()} VALUES (1, 'a@x.org')")
    conn = make(pg)
    conn.open()
    try:
        results = conn.write([WriteOp("6", "upsert", {"record_id": 6, "email": "f@x.org"}),
                              WriteOp("7", "upsert", {"record_id": 7, "email": "a@x.org"})])
        assert results[0].error is None and results[1].error  # the email is taken
        pg.run(f"DELETE FROM {pg.table()} WHERE record_id IN (1, 6)")
        # record 7 would go through now: nothing of the refused batch may come back
        results = conn.write([WriteOp("9", "upsert", {"record_id": 9, "email": "i@x.org"})])
        assert [r.error for r in results] == [None]
        assert pg.run(f"SELECT record_id FROM {pg.table()} ORDER BY 1") == [(9,)]
    finally:
        conn.close()


def test_dropped_triggers_are_reinstalled_and_the_table_listed_again(
        users: PostgresConnector, pg: PgSchema) -> None:  # noqa: F811
    _, cursor = drain(users, None)
    # a schema change the usual way: build a new table, copy, drop, rename
    pg.run(f"CREATE TABLE {pg.table('users_new')} (record_id integer PRIMARY KEY, "
           "full_name text NOT NULL, status text, email text)")
    pg.run(f"INSERT INTO {pg.table('users_new')} SELECT record_id, full_name, status "
           f"FROM {pg.table()}")
    pg.run(f"DROP TABLE {pg.table()}")
    pg.run(f"ALTER TABLE {pg.table('users_new')} RENAME TO users")
    pg.run(f"UPDATE {pg.table()} SET full_name = 'changed unseen' WHERE record_id = 1")
    pages, cursor = drain(users, cursor)
    assert pages[0].listing and pages[0].listing_start
    assert seen(pages)["1"] == "upsert:changed unseen"
    assert users.warning and "reinstalled" in users.warning
    pg.run(f"INSERT INTO {pg.table()} VALUES (9, 'after', 'active', NULL)")
    pages, _ = drain(users, cursor)
    assert seen(pages) == {"9": "upsert:after"}


def test_capture_reinstalled_at_open_lists_the_table_and_a_plain_reopen_does_not(
        users: PostgresConnector, pg: PgSchema) -> None:  # noqa: F811
    _, cursor = drain(users, None)
    users.close()
    users.open()  # capture untouched: the log goes on where the cursor is
    pages, cursor = drain(users, cursor)
    assert not any(p.listing for p in pages) and users.warning is None
    users.close()
    pg.run(f"DROP TRIGGER recsync_users_capture_upd ON {pg.table()}")
    pg.run(f"UPDATE {pg.table()} SET full_name = 'while closed' WHERE record_id = 1")
    users.open()  # installs the trigger again
    pages, cursor = drain(users, cursor)
    assert pages[0].listing and pages[0].listing_start
    assert seen(pages)["1"] == "upsert:while closed"
    assert users.warning and "listed the table again" in users.warning
    pages, _ = drain(users, cursor)
    assert not any(p.listing for p in pages)


def test_capture_dropped_during_a_listing_is_noticed_when_the_listing_ends(
        users: PostgresConnector, pg: PgSchema) -> None:  # noqa: F811
    page = users.read_changes(None, 1)  # the listing's first page: row 1
    assert page.listing and page.more
    pg.run(f"DROP TRIGGER recsync_users_capture_upd ON {pg.table()}")
    pg.run(f"UPDATE {pg.table()} SET full_name = 'unseen' WHERE record_id = 1")
    pages, _ = drain(users, page.cursor)
    assert seen(pages)["1"] == "upsert:unseen"
    assert users.warning and "reinstalled" in users.warning


def test_a_dropped_change_log_is_recreated(users: PostgresConnector, pg: PgSchema) -> None:  # noqa: F811
    _, cursor = drain(users, None)
    pg.run(f"DROP TABLE {pg.schema}.recsync_changelog_users")
    pages, cursor = drain(users, cursor)
    assert pages[0].listing
    pg.run(f"DELETE FROM {pg.table()} WHERE record_id = 2")
    pages, _ = drain(users, cursor)
    assert seen(pages) == {"2": "delete"}


def test_install_false_never_touches_the_schema_and_names_the_setup_command(
        pg: PgSchema) -> None:  # noqa: F811
    pg.run(USERS.format(t=pg.table()))
    conn = make(pg, install=False)
    with pytest.raises(ConnectorConfigError, match="recsync crms setup postgres --print-sql"):
        conn.open()
    assert pg.run("SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                  "WHERE c.relnamespace = %s::regnamespace AND tgname LIKE 'recsync%%'",
                  (pg.schema,)) == [(0,)]
    assert pg.run(f"SELECT to_regclass('{pg.schema}.recsync_changelog_users')") == [(None,)]


def test_the_setup_command_named_for_install_false_runs_as_printed_in_a_shell(
        pg: PgSchema) -> None:  # noqa: F811
    import shlex

    from recsync.cli.parser import build_parser
    from recsync.connectors.pgsql import split_table

    schema = f"{pg.schema}_Odd Sch"
    pg.run(f'CREATE SCHEMA "{schema}"')
    try:
        pg.run(f'CREATE TABLE "{schema}"."Inst Tab" ("My Key" text PRIMARY KEY)')
        table = f'"{schema}"."Inst Tab"'
        conn = PostgresConnector({"dsn": pg.dsn, "table": table, "key": "My Key",
                                  "install": False, "listen": False}, Path("."))
        with pytest.raises(ConnectorConfigError) as err:
            conn.open()
        command = str(err.value).split("`")[1]
        argv = shlex.split(command)
        assert argv[:2] == ["recsync", "crms"]
        args = build_parser().parse_args(argv[1:])
        assert split_table(args.table) == (schema, "Inst Tab")
        assert args.key == "My Key" and args.print_sql
    finally:
        pg.run(f'DROP SCHEMA "{schema}" CASCADE')


def test_a_key_that_is_not_unique_is_refused_with_the_reason(pg: PgSchema) -> None:  # noqa: F811
    pg.run(f"CREATE TABLE {pg.table()} (record_id integer, full_name text)")
    with pytest.raises(ConnectorConfigError, match="not unique"):
        make(pg).open()


def test_the_password_of_the_dsn_is_never_in_an_error(pg: PgSchema) -> None:  # noqa: F811
    conn = PostgresConnector({"dsn": "postgresql://bob:hunter2secret@127.0.0.1:1/test",
                              "table": "users", "key": "id"}, Path("."))
    with pytest.raises(ConnectorError) as err:
        conn.open()
    assert "hunter2secret" not in str(err.value)
    assert "hunter2secret" not in repr(conn.config) and "hunter2secret" not in conn.system_id


@pytest.mark.parametrize("dsn, secret", [
    ("postgresql://postgres:Zq9/SECRETj@127.0.0.1/test", "SECRETj"),
    ("postgresql://postgres:Zq9@SECRETm@127.0.0.1:1/test", "SECRETm"),
    ("postgresql://postgres:Zq9 SECRETn@127.0.0.1:1/test", "SECRETn"),
    ("postgresql://postgres:Zq9%2FSECRETp@127.0.0.1:1/test", "SECRETp"),
])
def test_a_password_with_an_unencoded_slash_at_or_space_is_never_in_an_error(
        pg: PgSchema, dsn: str, secret: str) -> None:  # noqa: F811
    """The userinfo of a URL runs to its last '@': libpq misreads such a password as
    host, port or database and quotes it back; neither its message nor the connector's
    system id may show any of it."""
    conn = PostgresConnector({"dsn": dsn, "table": f"{pg.schema}.pw", "key": "id",
                              "listen": False}, Path("."))
    with pytest.raises(ConnectorError) as err:
        conn.open()
    conn.close()
    text = str(err.value)
    assert secret not in text and "Zq9" not in text, text
    assert secret not in conn.system_id and secret not in conn.where
    assert conn.system_id.startswith("postgres:127.0.0.1:")
    assert secret not in mask_dsn(dsn) and "Zq9" not in mask_dsn(dsn)
    assert mask_dsn(f"for {dsn} failed") == (
        f"for postgresql://postgres:***@{dsn.rpartition('@')[2]} failed")
    # libpq's own messages about the URL as it misread it
    for said in ("failed to resolve host '{s}@127.0.0.1'", 'unexpected spaces found in "Zq9 {s}"',
                 'database "{s}@127.0.0.1/test" does not exist'):
        assert secret not in scrub(said.format(s=secret), dsn)


def test_a_refused_connection_is_one_line_naming_host_and_port(pg: PgSchema) -> None:  # noqa: F811
    """libpq's message has a hint on a second, tab-indented line; status tables, the
    dashboard and `recsync failed` show the error on one line."""
    conn = PostgresConnector({"dsn": "postgresql://bob@127.0.0.1:1/test",
                              "table": "users", "key": "id"}, Path("."))
    with pytest.raises(ConnectorError) as err:
        conn.open()
    text = str(err.value)
    assert "\n" not in text and "\t" not in text, text
    assert "127.0.0.1" in text and "port 1" in text and "Is the server running" in text


def test_verify_can_list_the_table_in_pages_without_touching_the_cursor(
    users: PostgresConnector, pg: PgSchema  # noqa: F811
) -> None:
    """`recsync verify` lists a side through list_records: every row once, in key order,
    page after page; the change log and the cursor are not touched."""
    pg.run(f"INSERT INTO {pg.table()} SELECT i, 'U' || i FROM generate_series(3, 12) i")
    _pages, cursor = drain(users, None)
    assert users.count_records() == 12
    listed: list[str] = []
    position: str | None = None
    while True:
        changes, position = users.list_records(position, 5)
        assert len(changes) <= 5 and all(c.op == "upsert" for c in changes)
        listed += [c.key for c in changes]
        if position is None:
            break
    assert listed == [str(i) for i in range(1, 13)]
    assert {c.key: c.fields["full_name"] for c in users.list_records(None, 100)[0]}["2"] == "Bob"
    pg.run(f"UPDATE {pg.table()} SET full_name = 'Bobby' WHERE record_id = 2")
    assert seen(drain(users, cursor)[0]) == {"2": "upsert:Bobby"}  # the log is intact


def test_listen_wakes_the_reader_when_another_session_commits(pg: PgSchema) -> None:  # noqa: F811
    pg.run(USERS.format(t=pg.table()))
    conn = make(pg, listen=True)
    woken = threading.Event()
    conn.watch(woken.set)
    conn.open()
    try:
        assert conn._listener is not None and conn._listener.listening.wait(10)
        woken.clear()
        pg.run(f"INSERT INTO {pg.table()} VALUES (1, 'Ann', 'active')")
        assert woken.wait(10), "no wake-up after a committed insert"
    finally:
        conn.close()


def test_our_own_writes_do_not_wake_our_reader(pg: PgSchema) -> None:  # noqa: F811
    pg.run(USERS.format(t=pg.table()))
    conn = make(pg, listen=True)
    wakes: list[int] = []
    conn.watch(lambda: wakes.append(1))
    conn.open()

    def woken(n: int) -> None:
        deadline = time.monotonic() + 10
        while len(wakes) < n:
            assert time.monotonic() < deadline, f"{len(wakes)} wake-ups, expected {n}"
            threading.Event().wait(0.005)  # polling a condition with a deadline

    try:
        assert conn._listener is not None and conn._listener.listening.wait(10)
        woken(1)  # the listener wakes once when it starts listening
        conn.write([WriteOp("1", "upsert", {"record_id": 1, "full_name": "Ann"})])
        pg.run(f"INSERT INTO {pg.table()} VALUES (2, 'Bob', 'active')")
        woken(2)
        # notifications arrive in commit order: ours came first and woke nobody
        assert conn._listener.ignored == 1 and len(wakes) == 2
    finally:
        conn.close()


TYPED = """
CREATE TABLE {t} (
    id uuid PRIMARY KEY,
    small smallint, big bigint, amount numeric(12, 4), flag boolean,
    born date, seen_at timestamp, stamped timestamptz, tags text[], doc jsonb,
    label varchar(40)
)
"""


def test_values_of_every_common_type_round_trip_exactly(pg: PgSchema) -> None:  # noqa: F811
    pg.run(TYPED.format(t=pg.table()))
    conn = make(pg, key="id")
    conn.open()
    try:
        record = {
            "id": "5f0c6f3e-8d7b-4c1a-9a57-0e2b9d1c4a11", "small": 7, "big": 9007199254740993,
            "amount": "12345678.1230", "flag": True, "born": "1990-02-28",
            "seen_at": "2024-01-02T03:04:05.123456", "stamped": "2024-01-02T03:04:05+00:00",
            "tags": ["a", "b c"], "doc": {"n": 1, "list": [1, "x"], "deep": {"ok": True}},
            "label": "plain",
        }
        assert conn.write([WriteOp(record["id"], "upsert", record)])[0].error is None
        got = conn.fetch([record["id"]])[record["id"]]
        assert got == record
        # as a CSV would give them back: every value its text
        as_text = {k: (json.dumps(v) if isinstance(v, dict | list) else
                       "true" if v is True else str(v)) for k, v in record.items()}
        as_text["id"] = record["id"]
        assert conn.write([WriteOp(record["id"], "upsert", as_text)])[0].error is None
        assert conn.fetch([record["id"]])[record["id"]] == record
    finally:
        conn.close()


def test_text_columns_take_numbers_as_their_text_and_blank_as_null_where_they_can(
        users: PostgresConnector) -> None:
    ops = [WriteOp("7", "upsert", {"record_id": "7", "full_name": 42, "status": ""}),
           WriteOp("8", "upsert", {"record_id": 8, "full_name": "", "status": 2.5}),
           WriteOp("9", "upsert", {"record_id": 9, "full_name": True, "status": "x"})]
    assert [r.error for r in users.write(ops)] == [None, None, None]
    got = users.fetch(["7", "8", "9"])
    assert got["7"] == {"record_id": 7, "full_name": "42", "status": None}
    assert got["8"] == {"record_id": 8, "full_name": "", "status": "2.5"}
    assert got["9"] == {"record_id": 9, "full_name": "true", "status": "x"}


def test_an_empty_string_key_is_written_as_itself_never_as_null(pg: PgSchema) -> None:  # noqa: F811
    """A blank cell is NULL in a nullable text column, but never in the key column: a
    key '' written as NULL is a row the next pass cannot find (and the source's row
    then looks deleted)."""
    pg.run(f"CREATE TABLE {pg.table('src')} (k text PRIMARY KEY, name text)")
    pg.run(f"CREATE TABLE {pg.table('dst')} (k text UNIQUE, name text)")  # nullable
    pg.run(f"INSERT INTO {pg.table('src')} VALUES ('', 'empty'), ('x', 'ex')")
    src = PostgresConnector({"dsn": pg.dsn, "table": pg.table("src"), "key": "k",
                             "listen": False}, Path("."))
    dst = PostgresConnector({"dsn": pg.dsn, "table": pg.table("dst"), "key": "k",
                             "listen": False}, Path("."))
    src.open()
    dst.open()
    try:
        changes = [c for p in drain(src, None)[0] for c in p.changes]
        assert sorted(c.key for c in changes) == ["", "x"]
        ops = [WriteOp(c.key, "upsert", c.fields) for c in changes]
        assert [r.error for r in dst.write(ops)] == [None, None]
        assert sorted(pg.run(f"SELECT k, name FROM {pg.table('dst')}")) == [
            ("", "empty"), ("x", "ex")]
        assert dst.fetch([""]) == {"": {"k": "", "name": "empty"}}
        # written again (an update): the same row, not a second one
        assert [r.error for r in dst.write(
            [WriteOp("", "upsert", {"k": "", "name": "empty 2"})])] == [None]
        assert sorted(pg.run(f"SELECT k, name FROM {pg.table('dst')}")) == [
            ("", "empty 2"), ("x", "ex")]
        assert [r.error for r in dst.write([WriteOp("", "delete", None)])] == [None]
        assert pg.run(f"SELECT k FROM {pg.table('dst')}") == [("x",)]
    finally:
        src.close()
        dst.close()


def test_a_char_n_key_is_read_the_same_from_the_log_and_the_table(pg: PgSchema) -> None:  # noqa: F811
    """The log holds key::text (char(n) padding gone): the rows fetched for it must be
    found under that same text, or updates and inserts vanish."""
    pg.run(f"CREATE TABLE {pg.table()} (code char(5) PRIMARY KEY, full_name text)")
    pg.run(f"INSERT INTO {pg.table()} VALUES ('ab', 'Ann')")
    conn = PostgresConnector({"dsn": pg.dsn, "table": pg.table(), "key": "code",
                              "listen": False}, Path("."))
    conn.origin = "test/p"
    conn.open()
    try:
        pages, cursor = drain(conn, None)
        assert seen(pages) == {"ab": "upsert:Ann"}
        pg.run(f"UPDATE {pg.table()} SET full_name = 'Annie' WHERE code = 'ab'")
        pg.run(f"INSERT INTO {pg.table()} VALUES ('x', 'Ex')")
        pages, cursor = drain(conn, cursor)
        assert seen(pages) == {"ab": "upsert:Annie", "x": "upsert:Ex"}
        pg.run(f"UPDATE {pg.table()} SET code = 'cd' WHERE code = 'ab'")
        pages, cursor = drain(conn, cursor)
        assert seen(pages) == {"ab": "delete", "cd": "upsert:Annie"}
        assert [c.fields for p in pages for c in p.changes if c.key == "cd"] == [
            {"code": "cd", "full_name": "Annie"}]
        assert conn.fetch(["cd"]) == {"cd": {"code": "cd", "full_name": "Annie"}}
        assert [r.error for r in conn.write([WriteOp("cd", "upsert", {
            "code": "cd", "full_name": "Cid"}), WriteOp("x", "delete", None)])] == [None, None]
        assert pg.run(f"SELECT code, full_name FROM {pg.table()}") == [("cd   ", "Cid")]
    finally:
        conn.close()


def test_a_batch_larger_than_a_query_goes_in_several_in_one_transaction(
        users: PostgresConnector, pg: PgSchema, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    from recsync.connectors import pgwrite
    monkeypatch.setattr(pgwrite, "_QUERY_BYTES", 150)  # two or three records a query
    ops = [WriteOp(str(i), "upsert", {"record_id": i, "full_name": f"Name {i}"})
           for i in range(10, 19)]
    ops[4] = WriteOp("14", "upsert", {"record_id": 14, "full_name": None})  # NOT NULL
    results = users.write(ops)
    assert [r.key for r in results if r.error] == ["14"]
    assert "null value" in (results[4].error or "")
    rows = pg.run(f"SELECT record_id, full_name FROM {pg.table()} WHERE record_id >= 10 "
                  "ORDER BY 1")
    assert rows == [(i, f"Name {i}") for i in range(10, 19) if i != 14]
    # one transaction, tagged: our reader skips all of it
    origins = pg.run(f"SELECT DISTINCT origin FROM {pg.schema}.recsync_changelog_users "
                     "WHERE key::int >= 10")
    assert origins == [("test/p",)]


def test_values_json_has_no_form_for_are_written_exactly(pg: PgSchema) -> None:  # noqa: F811
    """Batches go as JSON: bytes, NaN and the infinities still reach their columns."""
    pg.run(f"CREATE TABLE {pg.table()} (id int PRIMARY KEY, blob bytea, x float8, "
           "y real, n numeric)")
    conn = make(pg, key="id")
    conn.open()
    try:
        records = [{"id": 1, "blob": b"\x00\xffok", "x": math.inf, "y": -math.inf,
                    "n": math.nan},
                   {"id": 2, "blob": None, "x": math.nan, "y": 1.5, "n": 2.25}]
        results = conn.write([WriteOp(str(r["id"]), "upsert", r) for r in records])
        assert [r.error for r in results] == [None, None]
        got = conn.fetch(["1", "2"])
        assert got["1"]["blob"] == "\\x00ff6f6b" and got["1"]["x"] == math.inf
        assert got["1"]["y"] == -math.inf and got["1"]["n"] == "NaN"
        assert got["2"]["blob"] is None and math.isnan(got["2"]["x"])
        assert got["2"]["y"] == 1.5 and got["2"]["n"] == "2.25"
    finally:
        conn.close()


def test_timestamps_at_the_ends_of_the_range_read_as_they_are_written(
        pg: PgSchema) -> None:  # noqa: F811
    """Reads format timestamps in PostgreSQL (to_json), arrays of them in Python: both
    give the same text, and it goes back into the column as the same value."""
    pg.run(f"CREATE TABLE {pg.table()} (id int PRIMARY KEY, at timestamptz, "
           "naive timestamp, ats timestamptz[])")
    conn = make(pg, key="id")
    conn.open()
    try:
        values = ["2024-01-02T03:04:05.5+00:00", "infinity", "-infinity",
                  "0044-03-15T12:00:00+00:00 BC", "12345-06-07T00:00:00+00:00"]
        for i, v in enumerate(values):
            naive = v.removesuffix("+00:00").replace("+00:00 BC", " BC")
            record = {"id": i, "at": v, "naive": naive, "ats": [v]}
            assert conn.write([WriteOp(str(i), "upsert", record)])[0].error is None
            assert conn.fetch([str(i)])[str(i)] == record
    finally:
        conn.close()


NUMERIC_KEYED = "CREATE TABLE {t} (id numeric PRIMARY KEY, name text, updated_at timestamptz)"


@pytest.mark.parametrize("tracking", ["log", "column"])
def test_a_listing_pages_a_numeric_key_in_number_order_not_text_order(
        pg: PgSchema, tracking: str) -> None:  # noqa: F811
    """Reads select a numeric key as its text: paging and ordering use the column."""
    pg.run(NUMERIC_KEYED.format(t=pg.table()))
    pg.run(f"INSERT INTO {pg.table()} SELECT i, 'N' || i, '2024-01-01' "
           "FROM generate_series(1, 25) i")
    conn = make(pg, key="id", tracking=tracking)
    conn.open()
    try:
        pages, cursor = drain(conn, None, wait=False)
        keys = [c.key for p in pages for c in p.changes]
        assert keys == [str(i) for i in range(1, 26)]
        # column mode: the next change is found after the cursor the listing left
        pg.run(f"UPDATE {pg.table()} SET name = 'x', updated_at = '2024-01-02' WHERE id = 9")
        pages, _ = drain(conn, cursor)
        assert [c.key for p in pages for c in p.changes] == ["9"]
    finally:
        conn.close()


def test_a_listing_read_ahead_is_dropped_by_a_write_and_misses_no_change(
        users: PostgresConnector, pg: PgSchema) -> None:  # noqa: F811
    """Pages are read five at a time: a row we write after that is listed as written, and
    another session's change to a row read ahead comes from the log after the listing."""
    pg.run(f"INSERT INTO {pg.table()} SELECT i, 'U' || i, 'active' FROM generate_series(3, 20) i")
    first = users.read_changes(None, 3)
    assert [c.key for c in first.changes] == ["1", "2", "3"] and first.more
    assert users.write([WriteOp("5", "upsert", {"record_id": 5, "full_name": "Ours"})]
                       )[0].error is None
    second = users.read_changes(first.cursor, 3)
    assert {c.key: c.fields["full_name"] for c in second.changes} == {
        "4": "U4", "5": "Ours", "6": "U6"}
    pg.run(f"UPDATE {pg.table()} SET full_name = 'Theirs' WHERE record_id = 8")
    pages, _ = drain(users, second.cursor)
    names: dict[str, str] = {}
    for page in pages:
        names.update({c.key: c.fields["full_name"] for c in page.changes})
    assert set(names) >= {str(i) for i in range(7, 21)} and names["8"] == "Theirs"


def test_a_column_dropped_while_open_is_left_out_of_reads(
        users: PostgresConnector, pg: PgSchema) -> None:  # noqa: F811
    _, cursor = drain(users, None)
    pg.run(f"ALTER TABLE {pg.table()} DROP COLUMN status")
    pg.run(f"UPDATE {pg.table()} SET full_name = 'Ada' WHERE record_id = 1")
    pages, _ = drain(users, cursor)
    assert [c.fields for p in pages for c in p.changes] == [
        {"record_id": 1, "full_name": "Ada"}]
    assert users.fetch(["2"]) == {"2": {"record_id": 2, "full_name": "Bob"}}



def test_a_column_given_another_type_while_open_is_read_as_its_new_type(
        pg: PgSchema) -> None:  # noqa: F811
    """Reads name each column by an expression for its type: after ALTER ... TYPE the old
    expression no longer applies (no isfinite(text)); the table is looked at again."""
    pg.run(f"CREATE TABLE {pg.table()} (record_id integer PRIMARY KEY, full_name text, "
           "seen timestamptz)")
    pg.run(f"INSERT INTO {pg.table()} VALUES (1, 'Ann', '2026-01-02 03:04:05+00')")
    conn = make(pg)
    conn.open()
    try:
        _, cursor = drain(conn, None)
        pg.run(f"ALTER TABLE {pg.table()} ALTER COLUMN seen TYPE text")
        pg.run(f"UPDATE {pg.table()} SET full_name = 'Ada' WHERE record_id = 1")
        pages, _ = drain(conn, cursor)
        assert [c.fields["full_name"] for p in pages for c in p.changes] == ["Ada"]
        seen = conn.fetch(["1"])["1"]["seen"]
        assert isinstance(seen, str) and seen.startswith("2026-01-02")
    finally:
        conn.close()

def test_log_rows_read_and_older_than_the_retention_are_pruned(pg: PgSchema) -> None:  # noqa: F811
    pg.run(USERS.format(t=pg.table()))
    conn = make(pg, changelog_retention=3600)
    conn.open()
    log = f"{pg.schema}.recsync_changelog_users"
    try:
        _, cursor = drain(conn, None)
        pg.run(f"INSERT INTO {pg.table()} VALUES (1, 'Ann', 'active'), (2, 'Bob', 'active')")
        pg.run(f"UPDATE {pg.table()} SET full_name = 'Cy' WHERE record_id = 2")
        _, cursor = drain(conn, cursor)
        assert pg.run(f"SELECT count(*) FROM {log}") == [(3,)]
        conn._pruned_at = -math.inf  # due again
        drain(conn, cursor)
        assert pg.run(f"SELECT count(*) FROM {log}") == [(3,)]  # all younger: kept
        # the first two rows age past the retention; the last one does not
        pg.run(f"UPDATE {log} SET changed_at = now() - interval '2 hours' WHERE seq IN "
               f"(SELECT seq FROM {log} ORDER BY xid, seq LIMIT 2)")
        conn._pruned_at = -math.inf
        drain(conn, cursor)
        assert pg.run(f"SELECT op, key FROM {log}") == [("upsert", "2")]
        # nobody reads: housekeeping keeps the retention all the same
        pg.run(f"UPDATE {log} SET changed_at = now() - interval '2 hours'")
        conn.housekeep()
        assert pg.run(f"SELECT count(*) FROM {log}") == [(0,)]
    finally:
        conn.close()


def test_the_printed_setup_sql_is_what_an_install_false_side_needs(pg: PgSchema) -> None:  # noqa: F811
    import subprocess
    import sys

    pg.run(USERS.format(t=pg.table()))
    printed = subprocess.run(
        [sys.executable, "-m", "recsync.cli", "crms", "setup", "postgres", "--print-sql",
         "--table", pg.table(), "--key", "record_id"],
        capture_output=True, text=True, check=True).stdout
    with pg.connect() as dba:  # the DBA runs it with their own client
        dba.execute(printed.encode())
    conn = make(pg, install=False)
    conn.open()
    try:
        _, cursor = drain(conn, None)
        pg.run(f"INSERT INTO {pg.table()} VALUES (1, 'Ann', 'active')")
        pages, _ = drain(conn, cursor)
        assert seen(pages) == {"1": "upsert:Ann"}
    finally:
        conn.close()
    removed = subprocess.run(
        [sys.executable, "-m", "recsync.cli", "crms", "setup", "postgres", "--dsn", pg.dsn,
         "--uninstall", "--table", pg.table(), "--key", "record_id"],
        capture_output=True, text=True)
    assert removed.returncode == 0, removed.stderr
    assert pg.run("SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                  "WHERE c.relnamespace = %s::regnamespace AND tgname LIKE 'recsync%%'",
                  (pg.schema,)) == [(0,)]


def _our_triggers(pg: PgSchema) -> int:  # noqa: F811
    return int(pg.run("SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                      "WHERE c.relnamespace = %s::regnamespace AND tgname LIKE 'recsync%%'",
                      (pg.schema,))[0][0])


def test_setup_resolves_the_key_column_and_installs_nothing_for_one_the_table_lacks(
        pg: PgSchema) -> None:  # noqa: F811
    import subprocess
    import sys

    pg.run(f"CREATE TABLE {pg.table('case_t')} (id integer PRIMARY KEY, name text)")

    def setup(*how: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "recsync.cli", "crms", "setup", "postgres", *how,
             "--table", pg.table("case_t")], capture_output=True, text=True)

    missing = setup("--dsn", pg.dsn, "--key", "nosuchcol")
    assert missing.returncode == 1, missing.stdout
    assert "has no key column 'nosuchcol'" in missing.stderr
    assert f"{pg.schema}.case_t" in missing.stderr and "columns: id, name" in missing.stderr
    assert _our_triggers(pg) == 0
    assert pg.run(f"SELECT to_regclass('{pg.schema}.recsync_changelog_case_t')") == [(None,)]
    # the printed script a DBA runs stops before installing anything too
    printed = setup("--print-sql", "--key", "nosuchcol").stdout
    with pg.connect() as dba, pytest.raises(Exception, match="has no column nosuchcol"):
        dba.execute(printed.encode())
    assert _our_triggers(pg) == 0
    # "ID" names the column id, as the connector's key = "ID" does: the application's
    # writes go on working and are logged
    upper = setup("--dsn", pg.dsn, "--key", "ID")
    assert upper.returncode == 0, upper.stderr
    assert _our_triggers(pg) == 5
    pg.run(f"INSERT INTO {pg.table('case_t')} VALUES (1, 'app')")
    pg.run(f"UPDATE {pg.table('case_t')} SET name = 'app2' WHERE id = 1")
    assert pg.run(f"SELECT op, key FROM {pg.schema}.recsync_changelog_case_t ORDER BY seq") == [
        ("upsert", "1"), ("upsert", "1")]
    pg.run(f"DROP TABLE {pg.table('case_t')}")
    gone = setup("--dsn", pg.dsn, "--key", "id")
    assert gone.returncode == 1 and "there is no table" in gone.stderr, gone.stderr


def test_a_partitioned_table_is_refused_for_log_tracking_and_read_by_column(
        pg: PgSchema) -> None:  # noqa: F811
    """Triggers on the parent miss a write made straight into a partition: log tracking
    refuses the table at open (nothing installed; the printed set-up stops too), column
    tracking reads every partition's rows."""
    pg.run(f"CREATE TABLE {pg.table()} (record_id integer PRIMARY KEY, full_name text, "
           "updated_at timestamptz) PARTITION BY RANGE (record_id)")
    pg.run(f"CREATE TABLE {pg.table('pt_1')} PARTITION OF {pg.table()} "
           "FOR VALUES FROM (0) TO (100)")
    pg.run(f"INSERT INTO {pg.table()} VALUES (1, 'Ann', now() - interval '1 min')")
    conn = make(pg)
    with pytest.raises(ConnectorConfigError, match="is partitioned") as err:
        conn.open()
    assert "straight into a partition" in str(err.value) and "column" in str(err.value)
    assert _our_triggers(pg) == 0
    assert pg.run(f"SELECT to_regclass('{pg.schema}.recsync_changelog_users')") == [(None,)]
    from recsync.connectors.pgsql import TableNames, setup_sql
    with pg.connect() as dba, pytest.raises(Exception, match="is partitioned"):
        dba.execute(setup_sql(TableNames(pg.schema, "users"), "record_id").encode())
    assert _our_triggers(pg) == 0

    conn = make(pg, tracking="column")
    conn.open()
    try:
        pages, cursor = drain(conn, None, wait=False)
        assert seen(pages) == {"1": "upsert:Ann"}
        pg.run(f"INSERT INTO {pg.table('pt_1')} VALUES (2, 'Bob', now())")  # the partition
        assert seen(drain(conn, cursor, wait=False)[0]) == {"2": "upsert:Bob"}
    finally:
        conn.close()


def _terminate(pg: PgSchema, pid: int) -> None:  # noqa: F811
    pg.run("SELECT pg_terminate_backend(%s)", (pid,))


def test_a_dropped_connection_is_a_retryable_error_then_reconnects(
        users: PostgresConnector, pg: PgSchema) -> None:  # noqa: F811
    _, cursor = drain(users, None)
    _terminate(pg, users.conn.info.backend_pid)  # what admin_shutdown / a restart does
    with pytest.raises(ConnectorError) as err:
        users.write([WriteOp("5", "upsert", {"record_id": 5, "full_name": "Eve"})])
    assert not isinstance(err.value, ConnectorConfigError)  # transient: the breaker counts it
    again = users.write([WriteOp("5", "upsert", {"record_id": 5, "full_name": "Eve"})])
    assert [r.error for r in again] == [None]
    pg.run(f"INSERT INTO {pg.table()} VALUES (6, 'Fay', 'active')")
    pages, _ = drain(users, cursor)
    assert seen(pages) == {"6": "upsert:Fay"}


def test_the_listener_reconnects_after_its_connection_is_killed(pg: PgSchema) -> None:  # noqa: F811
    pg.run(USERS.format(t=pg.table()))
    conn = make(pg, listen=True)
    woken = threading.Event()
    conn.watch(woken.set)
    conn.open()
    try:
        listener = conn._listener
        assert listener is not None and listener.listening.wait(10)
        pids = pg.run("SELECT pid FROM pg_stat_activity WHERE query LIKE %s",
                      (f'LISTEN "{conn.names.channel}"%',))
        assert pids
        for (pid,) in pids:
            _terminate(pg, pid)
        deadline = time.monotonic() + 20
        while listener.listening.is_set() and time.monotonic() < deadline:
            woken.wait(0.01)  # polling interval until it notices the loss
        assert listener.listening.wait(20), "the listener did not reconnect"
        woken.clear()
        pg.run(f"INSERT INTO {pg.table()} VALUES (1, 'Ann', 'active')")
        assert woken.wait(10)
    finally:
        conn.close()


# ---------------------------------------------------------------- listing for verify


def test_list_records_pages_the_table_and_changes_nothing(
        users: PostgresConnector, pg: PgSchema) -> None:  # noqa: F811
    pg.run(f"INSERT INTO {pg.table()} SELECT i, 'U' || i, 'active' FROM generate_series(3, 7) i")
    _, cursor = drain(users, None)
    found: dict[str, Any] = {}
    position: str | None = None
    pages = 0
    while True:
        changes, position = users.list_records(position, 3)
        pages += 1
        assert len(changes) <= 3
        found.update({c.key: c.fields for c in changes})
        if position is None:
            break
    assert pages == 3 and len(found) == 7
    assert found["7"] == {"record_id": 7, "full_name": "U7", "status": "active"}
    assert users.count_records() == 7
    # the pipeline's own reading goes on where it was: nothing was consumed or logged
    assert seen(drain(users, cursor)[0]) == {}
    pg.run(f"UPDATE {pg.table()} SET full_name = 'Cy' WHERE record_id = 3")
    assert seen(drain(users, cursor)[0]) == {"3": "upsert:Cy"}


# ---------------------------------------------------------------- rows without a key

KEYLESS = """
CREATE TABLE {t} (
    id serial PRIMARY KEY,
    code text UNIQUE,
    full_name text
)
"""


def test_rows_without_a_key_are_reported_unreadable_by_their_primary_key(
        pg: PgSchema) -> None:  # noqa: F811
    pg.run(KEYLESS.format(t=pg.table()))
    pg.run(f"INSERT INTO {pg.table()} (code, full_name) VALUES "
           "('a', 'Ann'), (NULL, 'No key'), ('c', 'Cid')")
    conn = make(pg, key="code")
    conn.open()
    try:
        pages, cursor = drain(conn, None)
        assert [ch.key for p in pages for ch in p.changes] == ["a", "c"]
        (bad,) = [u for p in pages for u in p.unreadable]
        assert bad.where == f"{pg.schema}.users id 2" and not bad.hides_key
        assert "NULL" in bad.reason and "'code'" in bad.reason
        # from the change log: the whole set of keyless rows, each time one changes
        pg.run(f"INSERT INTO {pg.table()} (code, full_name) VALUES (NULL, 'Another')")
        pages, cursor = drain(conn, cursor)
        assert pages[0].unreadable_all
        assert [u.where for u in pages[0].unreadable] == [
            f"{pg.schema}.users id 2", f"{pg.schema}.users id 4"]
        pg.run(f"UPDATE {pg.table()} SET code = 'b' WHERE id = 2")
        pages, cursor = drain(conn, cursor)
        assert [ch.key for ch in pages[0].changes] == ["b"]
        assert pages[0].unreadable_all
        assert [u.where for u in pages[0].unreadable] == [f"{pg.schema}.users id 4"]
    finally:
        conn.close()


def test_a_keyless_row_of_a_table_without_a_primary_key_is_named_by_its_ctid(
        pg: PgSchema) -> None:  # noqa: F811
    pg.run(f"CREATE TABLE {pg.table()} (code text UNIQUE, full_name text)")
    pg.run(f"INSERT INTO {pg.table()} VALUES ('a', 'Ann'), (NULL, 'No key')")
    conn = make(pg, key="code", tracking="column", updated_column="full_name")
    conn.open()
    try:
        page = conn.read_changes(None, 100)
        assert [ch.key for ch in page.changes] == ["a"] and page.listing_done
        assert [u.where for u in page.unreadable] == [f"{pg.schema}.users ctid (0,2)"]
    finally:
        conn.close()


# ---------------------------------------------------------------- keys made by the table

SERIAL = """
CREATE TABLE {t} (
    record_id {key} PRIMARY KEY,
    full_name text NOT NULL,
    email text UNIQUE
)
"""


@pytest.mark.parametrize("key", ["serial", "bigint GENERATED ALWAYS AS IDENTITY",
                                 "uuid DEFAULT gen_random_uuid()"])
def test_a_key_the_column_cannot_hold_is_made_by_its_default(
        pg: PgSchema, key: str) -> None:  # noqa: F811
    pg.run(SERIAL.format(t=pg.table(), key=key))
    conn = make(pg)
    conn.open()
    try:
        _, cursor = drain(conn, None)
        res = conn.write([
            WriteOp("sf-003A", "upsert", {"record_id": "sf-003A", "full_name": "From CRM",
                                          "email": "c@x.org"}),
            WriteOp("sf-003B", "upsert", {"record_id": "sf-003B", "full_name": "Dup",
                                          "email": "c@x.org"}),
        ])
        assert res[0].error is None and res[0].new_key
        made = res[0].new_key
        assert res[1].new_key is None and res[1].error and "email" in res[1].error
        assert not res[1].retryable
        assert conn.fetch([made])[made]["full_name"] == "From CRM"
        assert pg.run(f"SELECT record_id::text, full_name FROM {pg.table()}") == [
            (made, "From CRM")]
        # our own insert is no change to read back
        assert seen(drain(conn, cursor)[0]) == {}
    finally:
        conn.close()


def test_a_key_a_table_cannot_hold_nor_make_is_refused_saying_so(
        users: PostgresConnector, pg: PgSchema) -> None:  # noqa: F811
    res = users.write([
        WriteOp("sf-003A", "upsert", {"record_id": "sf-003A", "full_name": "x"}),
        WriteOp("5", "upsert", {"record_id": 5, "full_name": "Eve"}),
    ])
    assert res[0].error and res[0].new_key is None and not res[0].retryable
    assert "cannot make keys itself" in res[0].error and "'record_id'" in res[0].error
    assert "integer" in res[0].error
    assert res[1].error is None
    assert pg.run(f"SELECT record_id FROM {pg.table()} ORDER BY 1") == [(1,), (2,), (5,)]


U = "5f0c6f3e-8d7b-4c1a-9a57-0e2b9d1c4a11"


@pytest.mark.parametrize(("column", "keys", "stored", "good"), [
    ("integer", ["007", " 8", "+9"], ["7", "8", "9"], "10"),
    ("serial", ["007", "-0"], ["7", "0"], "10"),  # a default makes keys: not for these
    ("uuid", [U.upper(), U.replace("-", ""), "{" + U + "}"], [U] * 3,
     "0e9b1c2d-3f4a-4b5c-8d6e-7f8091a2b3c4"),
    ("char(5)", ["ab ", "cd  "], ["ab", "cd"], "ef"),  # char pads; its text does not
])
def test_a_key_the_column_would_store_in_another_form_fails_that_record_alone(
        pg: PgSchema, column: str, keys: list[str], stored: list[str], good: str  # noqa: F811
) -> None:
    """Written as 7 but linked as "007", the row came back as a new record "7" and the
    other side ended with both: such a record fails, naming the form, the rest goes in."""
    pg.run(f"CREATE TABLE {pg.table()} (record_id {column} PRIMARY KEY, full_name text)")
    conn = make(pg)
    conn.open()
    try:
        res = conn.write([WriteOp(k, "upsert", {"record_id": k, "full_name": "x"})
                          for k in [*keys, good]])
        for r, k, form in zip(res[:-1], keys, stored, strict=True):
            assert r.error and not r.retryable and r.new_key is None, r
            assert f"{k!r}" in r.error and f"as {form!r}" in r.error, r.error
            assert "'record_id'" in r.error and column.replace("serial", "integer").replace(
                "char(", "character(") in r.error
        assert res[-1].error is None
        assert pg.run(f"SELECT record_id::text FROM {pg.table()}") == [(good,)]
    finally:
        conn.close()


def test_a_delete_by_a_key_in_another_form_deletes_no_other_record(
        pg: PgSchema) -> None:  # noqa: F811
    """The delete of "007" (a record refused, never written) must not delete row 7, the
    record "7"; nor "ab " the record "ab" of a char(5) key."""
    for column, normal, other in (("integer", "7", "007"), ("char(5)", "ab", "ab ")):
        table = pg.table(f"d_{column[:4]}")
        pg.run(f"CREATE TABLE {table} (record_id {column} PRIMARY KEY, full_name text)")
        pg.run(f"INSERT INTO {table} VALUES ('{normal}', 'kept')")
        conn = make(pg, table=table)
        conn.open()
        try:
            (res,) = conn.write([WriteOp(other, "delete", None)])
            assert res.error is None
            assert pg.run(f"SELECT record_id::text, full_name FROM {table}") == [
                (normal, "kept")]
            (res,) = conn.write([WriteOp(normal, "delete", None)])  # its own key: deleted
            assert res.error is None and pg.run(f"SELECT 1 FROM {table}") == []
        finally:
            conn.close()


def test_a_change_held_back_by_another_transaction_is_read_when_it_ends_without_a_notify(
        pg: PgSchema) -> None:  # noqa: F811
    pg.run(USERS.format(t=pg.table()))
    pg.run(f"CREATE TABLE {pg.table('other')} (n integer)")
    conn = make(pg, listen=True)
    woken = threading.Event()
    conn.watch(woken.set)
    conn.open()
    blocker = pg.connect()
    try:
        assert conn._listener is not None and conn._listener.listening.wait(10)
        _, cursor = drain(conn, None)
        # another application's transaction, on another table, began before the change
        blocker.execute("BEGIN")
        blocker.execute(f"INSERT INTO {pg.table('other')} VALUES (1)")
        woken.clear()
        pg.run(f"INSERT INTO {pg.table()} VALUES (1, 'Ann', 'active')")
        assert woken.wait(10)  # the NOTIFY
        pages, cursor = drain(conn, cursor, wait=False)
        assert seen(pages) == {}  # held back below the watermark
        woken.clear()
        blocker.execute("COMMIT")  # no NOTIFY: it did not touch the synced table
        assert woken.wait(10), "the reader was not woken once the change could be read"
        pages, _ = drain(conn, cursor)
        assert seen(pages) == {"1": "upsert:Ann"}
    finally:
        blocker.close()
        conn.close()
