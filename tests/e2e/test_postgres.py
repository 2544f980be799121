"""End to end with a PostgreSQL side, through `recsyncd --once` and the running daemon."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.helpers import (
    kill_when,
    make_users,
    recsyncd_cmd,
    run_once,
    sql,
    users,
    wait_for,
    write_config,
)
from tests.pgfixture import PgSchema, pg  # noqa: F401 - the fixture

SQLITE_A = '{ connector = "sqlite", path = "a.sqlite", table = "users", key = "record_id" }'
PG_TABLE = """
CREATE TABLE {t} (
    id integer PRIMARY KEY,
    name text NOT NULL,
    email text,
    status text NOT NULL DEFAULT 'active',
    updated_at timestamptz NOT NULL DEFAULT now()
)
"""
RENAMED = """
[contacts]
a_to_b = ["create", "update", "delete"]
b_to_a = ["create", "update", "delete"]
conflict = "last_writer_wins"
[contacts.mappings]
record_id = "id"
full_name = "name"
email_address = "email"
status = "status"
[contacts.filters]
status = { in = ["active", "pending"] }
"""


def pg_side(pg: PgSchema, name: str = "users", key: str = "id",  # noqa: F811
            install: str = "true") -> str:
    return (f'{{ connector = "postgres", dsn = "{pg.dsn}", table = "{pg.table(name)}", '
            f'key = "{key}", install = {install} }}')


def pg_rows(pg: PgSchema) -> dict[str, tuple[str, str, str]]:  # noqa: F811
    return {str(r[0]): (r[1], r[2], r[3]) for r in pg.run(
        f"SELECT id, name, email, status FROM {pg.table()}")}


def ok(result: subprocess.CompletedProcess[str], code: int = 0) -> str:
    assert result.returncode == code, result.stdout + result.stderr
    return result.stdout


def test_sqlite_and_postgres_both_ways_with_renames_filters_and_deletes(
        tmp_path: Path, pg: PgSchema) -> None:  # noqa: F811
    rows = [(i, f"User {i}", f"u{i}@example.com", "active" if i % 5 else "inactive")
            for i in range(1, 21)]
    make_users(tmp_path / "a.sqlite", rows)
    pg.run(PG_TABLE.format(t=pg.table()))
    write_config(tmp_path, SQLITE_A, pg_side(pg), rules=RENAMED)
    out = ok(run_once(tmp_path))
    assert "a->b 16 synced" in out
    assert set(pg_rows(pg)) == {str(i) for i in range(1, 21) if i % 5}
    assert pg_rows(pg)["3"] == ("User 3", "u3@example.com", "active")

    a = tmp_path / "a.sqlite"
    sql(a, "UPDATE users SET full_name = 'Renamed' WHERE record_id = 3")
    sql(a, "DELETE FROM users WHERE record_id = 4")
    pg.run(f"UPDATE {pg.table()} SET email = 'seven@pg.org', updated_at = now() WHERE id = 7")
    pg.run(f"INSERT INTO {pg.table()} (id, name, email, status) "
           "VALUES (200, 'From PG', 'p@x.org', 'pending')")
    pg.run(f"DELETE FROM {pg.table()} WHERE id = 8")
    out = ok(run_once(tmp_path))
    assert "a->b 2 synced" in out and "b->a 3 synced" in out, out

    on_pg, on_a = pg_rows(pg), users(a)
    assert on_pg["3"][0] == "Renamed" and "4" not in on_pg and "8" not in on_pg
    assert on_a["7"][1] == "seven@pg.org" and on_a["200"] == ("From PG", "p@x.org", "pending")
    assert "8" not in on_a
    out = ok(run_once(tmp_path))  # a third pass: nothing to write either way
    assert "a->b 0 synced" in out and "b->a 0 synced" in out, out


def test_kill_9_during_a_sync_into_postgres_loses_and_duplicates_nothing(
        tmp_path: Path, pg: PgSchema) -> None:  # noqa: F811
    total = 6000
    make_users(tmp_path / "a.sqlite",
               [(i, f"User {i}", f"u{i}@x.org", "active") for i in range(1, total + 1)])
    pg.run(PG_TABLE.format(t=pg.table()))
    write_config(tmp_path, SQLITE_A, pg_side(pg), rules=RENAMED,
                 settings="batch_size = 200\npage_size = 400\n")
    rng = random.Random(13)
    kills = 0

    def written() -> int:
        return int(pg.run(f"SELECT count(*) FROM {pg.table()}")[0][0])

    for remaining in range(4, 0, -1):
        done = written()
        kill_at = done + rng.randint(1, max(1, (total - done) // (remaining + 1)))
        proc = subprocess.Popen(recsyncd_cmd(tmp_path, tmp_path / "state", "--once"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kills += kill_when(proc, written, kill_at)
    assert kills, "recsyncd finished before the first kill point"
    ok(run_once(tmp_path))
    on_pg = pg_rows(pg)
    assert len(on_pg) == total
    assert on_pg == {str(i): (f"User {i}", f"u{i}@x.org", "active") for i in range(1, total + 1)}
    assert len(users(tmp_path / "a.sqlite")) == total  # nothing came back as a new row


def test_a_change_in_postgres_reaches_the_other_side_at_once_with_a_long_poll(
        tmp_path: Path, pg: PgSchema) -> None:  # noqa: F811
    make_users(tmp_path / "a.sqlite", [(1, "User 1", "u1@x.org", "active")])
    pg.run(PG_TABLE.format(t=pg.table()))
    write_config(tmp_path, SQLITE_A, pg_side(pg), rules=RENAMED,
                 settings="poll_interval = 30\nflush_interval = 0.05\n")
    proc = subprocess.Popen(recsyncd_cmd(tmp_path, tmp_path / "state"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: "1" in pg_rows(pg), timeout=60, what="the first sync")
        # the poll interval is 30 s: only the NOTIFY can bring these within the wait
        for i in range(2, 6):
            pg.run(f"INSERT INTO {pg.table()} (id, name, email, status) "
                   f"VALUES ({i}, 'PG {i}', 'p{i}@x.org', 'active')")
            wait_for(lambda i=i: str(i) in users(tmp_path / "a.sqlite"), timeout=10,
                     what=f"row {i} in SQLite well before the next poll")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err


PG_SF_RULES = """
[contacts]
a_to_b = ["create", "update", "delete"]
b_to_a = ["create", "update", "delete"]
[contacts.mappings]
id = "Record_Id__c"
name = "LastName"
email = "Email"
status = "Status__c"
"""


def test_postgres_and_mock_salesforce_both_ways(tmp_path: Path, pg: PgSchema) -> None:  # noqa: F811
    from recsync.mock.salesforce import SalesforceMock

    mock = SalesforceMock()
    mock.start()
    try:
        pg.run(PG_TABLE.format(t=pg.table()))
        pg.run(f"INSERT INTO {pg.table()} (id, name, email, status) SELECT i, 'User ' || i, "
               "'u' || i || '@x.org', 'active' FROM generate_series(1, 5) i")
        side_b = ('{ connector = "salesforce", mock = true, key = "Record_Id__c", '
                  f'instance_url = "{mock.url}", daily_reserve = 0 }}')
        write_config(tmp_path, pg_side(pg), side_b, rules=PG_SF_RULES)
        ok(run_once(tmp_path))

        def contacts() -> dict[str, tuple[str, str, str]]:
            return {str(r["Record_Id__c"]): (r["LastName"], r["Email"], r["Status__c"])
                    for r in mock.list_records()}

        assert contacts() == {str(i): (f"User {i}", f"u{i}@x.org", "active")
                              for i in range(1, 6)}
        pg.run(f"UPDATE {pg.table()} SET name = 'Renamed', updated_at = now() WHERE id = 2")
        pg.run(f"DELETE FROM {pg.table()} WHERE id = 3")
        mock.push({"record_id": "77", "full_name": "From SF", "email_address": "sf@x.org",
                   "status": "pending"})
        out = ok(run_once(tmp_path))
        assert "a->b 2 synced" in out and "b->a 1 synced" in out, out
        assert contacts()["2"][0] == "Renamed" and "3" not in contacts()
        assert pg_rows(pg)["77"] == ("From SF", "sf@x.org", "pending")
        out = ok(run_once(tmp_path))
        assert "a->b 0 synced, b->a 0 synced" in out, out
    finally:
        mock.stop()


def test_a_contact_without_the_key_gets_one_from_the_postgres_sequence(
        tmp_path: Path, pg: PgSchema) -> None:  # noqa: F811
    from recsync.mock.salesforce import SalesforceMock

    mock = SalesforceMock()
    mock.start()
    try:
        pg.run(PG_TABLE.replace("id integer PRIMARY KEY", "id serial PRIMARY KEY")
               .format(t=pg.table()))
        pg.run(f"INSERT INTO {pg.table()} (name, email, status) SELECT 'User ' || i, "
               "'u' || i || '@x.org', 'active' FROM generate_series(1, 3) i")
        side_b = ('{ connector = "salesforce", mock = true, key = "Record_Id__c", '
                  f'instance_url = "{mock.url}", daily_reserve = 0 }}')
        write_config(tmp_path, pg_side(pg), side_b, rules=PG_SF_RULES)
        ok(run_once(tmp_path))
        # created by hand in the CRM: no Record_Id__c
        mock.push({"LastName": "No Key", "Email": "nokey@crm.org", "Status__c": "active"})
        out = ok(run_once(tmp_path))
        assert "b->a 1 synced" in out and "0 failed" in out, out
        assert pg_rows(pg)["4"] == ("No Key", "nokey@crm.org", "active")  # from the serial
        (contact,) = [r for r in mock.list_records() if r["Email"] == "nokey@crm.org"]
        assert contact["Record_Id__c"] == "4"
        assert len(mock.list_records()) == 4 and len(pg_rows(pg)) == 4
        out = ok(run_once(tmp_path))
        assert "a->b 0 synced, b->a 0 synced" in out, out
    finally:
        mock.stop()


TYPED = """
CREATE TABLE {t} (
    id uuid PRIMARY KEY, small smallint, big bigint, amount numeric(14, 4), flag boolean,
    born date, seen_at timestamp, stamped timestamptz, tags text[], doc jsonb, label varchar(40)
)
"""
TYPED_ROWS = """
INSERT INTO {t} VALUES
 ('5f0c6f3e-8d7b-4c1a-9a57-0e2b9d1c4a11', 7, 9007199254740993, 12345678.1230, true,
  '1990-02-28', '2024-01-02 03:04:05.123456', '2024-01-02 03:04:05+02', '{{a,"b c"}}',
  '{{"n": 1, "deep": {{"ok": true}}, "list": [1, "x"]}}', 'plain'),
 ('0e9b1c2d-3f4a-4b5c-8d6e-7f8091a2b3c4', -3, -1, 0.0001, false, '2000-01-01',
  '1999-12-31 23:59:59', '2030-06-30 12:00:00-07', '{{}}', '[1, 2]', 'quote " and , comma'),
 ('a1b2c3d4-0000-4000-8000-000000000001', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL)
"""
ROUND_TRIP = """
[copy]
a_to_b = ["create", "update", "delete"]
b_to_a = []
[copy.mappings]
id = "id"
small = "small"
big = "big"
amount = "amount"
flag = "flag"
born = "born"
seen_at = "seen_at"
stamped = "stamped"
tags = "tags"
doc = "doc"
label = "label"
"""


def write_round_trip(folder: Path, pg: PgSchema) -> None:  # noqa: F811
    """Two pipelines, rule set "copy": table src -> middle.csv, then middle.csv -> dst."""
    csv_side = '{ connector = "file", path = "middle.csv", key = "id" }'
    (folder / "customer_settings.toml").write_text(f"""
[defaults]
flush_interval = 0.05
poll_interval = 0.1
[customers.t.pipelines.out]
rules = "copy"
a = {pg_side(pg, "src")}
b = {csv_side}
[customers.t.pipelines.back]
rules = "copy"
a = {csv_side}
b = {pg_side(pg, "dst")}
""")


def test_postgres_to_csv_to_postgres_changes_no_value(tmp_path: Path, pg: PgSchema) -> None:  # noqa: F811
    for name in ("src", "dst"):
        pg.run(TYPED.format(t=pg.table(name)))
    pg.run(TYPED_ROWS.format(t=pg.table("src")))

    write_round_trip(tmp_path, pg)
    (tmp_path / "rules.toml").write_text(ROUND_TRIP)
    ok(run_once(tmp_path))
    ok(run_once(tmp_path))  # the CSV written by the first pipeline is read by the second
    src = pg.run(f"SELECT * FROM {pg.table('src')} ORDER BY id")
    dst = pg.run(f"SELECT * FROM {pg.table('dst')} ORDER BY id")
    assert len(src) == 3 and dst == src
    out = ok(run_once(tmp_path))  # nothing written again: no value drifted on the way
    assert out.count("a->b 0 synced") == 2, out


PG_PG = """
[copy]
a_to_b = ["create", "update", "delete"]
b_to_a = []
[copy.mappings]
id = "id"
name = "name"
"""


def _setup_cli(pg: PgSchema, *how: str) -> None:  # noqa: F811
    subprocess.run([sys.executable, "-m", "recsync.cli", "crms", "setup", "postgres", "--dsn",
                    pg.dsn, "--table", pg.table("t"), "--key", "id", *how],
                   check=True, capture_output=True)


@pytest.mark.parametrize("lost", ["trigger dropped", "table re-created", "dba reinstalled"])
def test_capture_lost_while_recsyncd_was_not_running_lists_the_table_again(
        tmp_path: Path, pg: PgSchema, lost: str) -> None:  # noqa: F811
    """Capture gone while no daemon ran, then installed again (by recsyncd at open, or
    by a DBA for install = false): the next run lists the table against the links and
    finds the changes made meanwhile."""
    pg.run(f"CREATE TABLE {pg.table('t')} (id integer PRIMARY KEY, name text)")
    pg.run(f"CREATE TABLE {pg.table('u')} (id integer PRIMARY KEY, name text)")
    pg.run(f"INSERT INTO {pg.table('t')} VALUES (1, 'one'), (2, 'two')")
    install = "false" if lost == "dba reinstalled" else "true"
    if lost == "dba reinstalled":
        _setup_cli(pg)

    write_config(tmp_path, pg_side(pg, "t", install=install), pg_side(pg, "u"),
                 rules=PG_PG.replace("copy", "contacts"))
    assert "a->b 2 synced" in ok(run_once(tmp_path))
    if lost == "trigger dropped":
        pg.run(f"DROP TRIGGER recsync_t_capture_upd ON {pg.table('t')}")
        pg.run(f"UPDATE {pg.table('t')} SET name = 'changed while capture off' WHERE id = 1")
    elif lost == "table re-created":
        pg.run(f"CREATE TABLE {pg.table('t2')} (id integer PRIMARY KEY, name text)")
        pg.run(f"INSERT INTO {pg.table('t2')} SELECT * FROM {pg.table('t')}")
        pg.run(f"DROP TABLE {pg.table('t')}")
        pg.run(f"ALTER TABLE {pg.table('t2')} RENAME TO t")
        pg.run(f"UPDATE {pg.table('t')} SET name = 'changed while capture off' WHERE id = 1")
    else:
        _setup_cli(pg, "--uninstall")
        pg.run(f"UPDATE {pg.table('t')} SET name = 'changed while capture off' WHERE id = 1")
        _setup_cli(pg)
    out = ok(run_once(tmp_path))
    assert "a->b 1 synced" in out, out
    assert pg.run(f"SELECT id, name FROM {pg.table('u')} ORDER BY id") == [
        (1, "changed while capture off"), (2, "two")]
    pg.run(f"UPDATE {pg.table('t')} SET name = 'logged again' WHERE id = 2")
    out = ok(run_once(tmp_path))  # capture works again: the log, no listing needed
    assert "a->b 1 synced" in out, out
    assert pg.run(f"SELECT name FROM {pg.table('u')} WHERE id = 2") == [("logged again",)]


def _pg_pair(pg: PgSchema, a: str, b: str, key: str = "id") -> tuple[str, str]:  # noqa: F811
    return pg_side(pg, a, key), pg_side(pg, b, key)


def test_a_mapped_name_equal_to_a_column_only_ignoring_case_is_refused_naming_it(
        tmp_path: Path, pg: PgSchema) -> None:  # noqa: F811
    """Records carry the real column names: a key "id" on a column "Id" synced once, then
    read the key field as missing (an edit came back undone as a conflict); a mapping
    "name" on a column "Name" synced NULL names forever. Both are refused at start, the
    real column named; a column with the exact names syncs both ways."""
    pg.run(f'CREATE TABLE {pg.table("ck")} ("Id" int PRIMARY KEY, name text)')
    pg.run(f"CREATE TABLE {pg.table('cn')} (id int PRIMARY KEY, \"Name\" text)")
    pg.run(f"CREATE TABLE {pg.table('ckb')} (id int PRIMARY KEY, name text)")
    pg.run(f"INSERT INTO {pg.table('ck')} VALUES (1, 'a'), (2, 'b')")
    pg.run(f"INSERT INTO {pg.table('cn')} VALUES (1, 'a'), (2, 'b')")
    rules = PG_PG.replace("copy", "contacts").replace("b_to_a = []", 'b_to_a = ["update"]')
    write_config(tmp_path, *_pg_pair(pg, "ck", "ckb"), rules=rules)
    out = run_once(tmp_path).stdout
    assert "side a (postgres) has no field 'id' (did you mean 'Id'?" in out, out
    write_config(tmp_path, *_pg_pair(pg, "cn", "ckb"), rules=rules)
    out = run_once(tmp_path).stdout
    assert "side a (postgres) has no field 'name' (did you mean 'Name'?" in out, out
    assert pg.run(f"SELECT * FROM {pg.table('ckb')}") == []  # nothing synced as NULL

    write_config(tmp_path, *_pg_pair(pg, "ck", "ckb"),
                 rules=rules.replace('id = "id"', 'Id = "id"'))
    out = ok(run_once(tmp_path))
    assert "a->b 2 synced" in out, out
    pg.run(f"UPDATE {pg.table('ck')} SET name = 'a2' WHERE \"Id\" = 1")
    out = ok(run_once(tmp_path))
    assert "a->b 1 synced" in out and "0 conflicts" in out, out
    assert pg.run(f"SELECT * FROM {pg.table('ck')} ORDER BY 1") == [(1, "a2"), (2, "b")]
    assert pg.run(f"SELECT * FROM {pg.table('ckb')} ORDER BY 1") == [(1, "a2"), (2, "b")]


def test_bytea_goes_to_a_csv_as_hex_text_and_back_unchanged(
        tmp_path: Path, pg: PgSchema) -> None:  # noqa: F811
    """bytea was read as bytes: the CSV got their raw text (CSV -> PostgreSQL then failed,
    `unsupported Unicode escape sequence`) and an empty value became NULL."""
    for name in ("src", "dst"):
        pg.run(f"CREATE TABLE {pg.table(name)} (id int PRIMARY KEY, blob bytea)")
    pg.run(f"INSERT INTO {pg.table('src')} VALUES (1, '\\x00ff41'), (2, ''), (3, NULL), "
           "(4, 'plain text')")

    write_round_trip(tmp_path, pg)
    (tmp_path / "rules.toml").write_text(PG_PG.replace('name = "name"', 'blob = "blob"'))
    ok(run_once(tmp_path))
    out = ok(run_once(tmp_path))  # the CSV written by the first pipeline is read by the second
    assert "0 failed" in out and "1 failed" not in out, out
    assert "\\x00ff41" in (tmp_path / "middle.csv").read_text()
    src = pg.run(f"SELECT id, blob FROM {pg.table('src')} ORDER BY id")
    assert pg.run(f"SELECT id, blob FROM {pg.table('dst')} ORDER BY id") == src
    assert src[1] == (2, b"") and src[2] == (3, None)
    out = ok(run_once(tmp_path))  # nothing written again: no value drifted on the way
    assert out.count("a->b 0 synced") == 2, out


def test_the_delete_of_a_record_refused_for_its_key_form_deletes_no_other_record(
        tmp_path: Path, pg: PgSchema) -> None:  # noqa: F811
    """Text keys '7' and '007' on side A, an integer key on side B: '007' is refused (it
    would be stored as 7), and its delete later must leave B's row 7, record '7', alone."""
    pg.run(f"CREATE TABLE {pg.table('t')} (id text PRIMARY KEY, name text)")
    pg.run(f"CREATE TABLE {pg.table('u')} (id integer PRIMARY KEY, name text)")
    pg.run(f"INSERT INTO {pg.table('t')} VALUES ('7', 'seven'), ('8', 'eight'), "
           "('007', 'zero-zero-seven')")
    write_config(tmp_path, pg_side(pg, "t"), pg_side(pg, "u"),
                 rules=PG_PG.replace("copy", "contacts"))
    first = run_once(tmp_path)
    assert "2 synced" in first.stdout and "1 failed" in first.stdout, first.stdout
    pg.run(f"DELETE FROM {pg.table('t')} WHERE id = '007'")
    run_once(tmp_path)
    assert pg.run(f"SELECT id, name FROM {pg.table('u')} ORDER BY id") == [
        (7, "seven"), (8, "eight")]
