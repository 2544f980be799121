"""`make bench`: a PostgreSQL side, against raw PostgreSQL work measured in the same run.

1. SQLite -> PostgreSQL, ``--rows`` rows through ``recsyncd --once`` (wall clock, start-up
   included), against COPY into a temporary table + INSERT ... ON CONFLICT of the same rows.
2. PostgreSQL -> SQLite, the same rows, against SELECT * + executemany into a fresh WAL
   SQLite database.
3. NOTIFY latency: with ``poll_interval = 30``, a row inserted into PostgreSQL, until it is
   in SQLite (p95 over ``--changes`` changes).

The configuration is what a user gets: the [defaults] of the repository's
customer_settings.toml, renamed fields, rules both ways. Skipped, with a line, when
PostgreSQL is unreachable.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from pathlib import Path
from typing import Any

import psycopg
import tomli_w

ROOT = Path(__file__).resolve().parent.parent
DSN = os.environ.get("RECSYNC_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
SQLITE_USERS = """CREATE TABLE users (record_id INTEGER PRIMARY KEY, full_name TEXT NOT NULL,
    email_address TEXT, status TEXT NOT NULL, updated_at REAL NOT NULL DEFAULT 0)"""
PG_USERS = """CREATE TABLE {t} (id bigint PRIMARY KEY, name text NOT NULL, email text,
    status text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())"""
RULES = """
[contacts]
a_to_b = ["create", "update", "delete"]
b_to_a = ["create", "update", "delete"]
[contacts.mappings]
record_id = "id"
full_name = "name"
email_address = "email"
status = "status"
"""


def rows_of(n: int) -> list[tuple[Any, ...]]:
    now = time.time()
    return [(i, f"User Number {i}", f"user{i}@example.com", "active", now)
            for i in range(1, n + 1)]


def make_sqlite(path: Path, rows: list[tuple[Any, ...]]) -> None:
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute(SQLITE_USERS)
        db.executemany("INSERT INTO users VALUES (?, ?, ?, ?, ?)", rows)
    db.close()


def write_config(folder: Path, a: dict[str, Any], b: dict[str, Any],
                 **overrides: Any) -> None:
    shipped = tomllib.loads((ROOT / "customer_settings.toml").read_text())
    defaults = {**shipped.get("defaults", {}), **overrides}
    doc = {"defaults": defaults,
           "customers": {"bench": {"pipelines": {"p": {"rules": "contacts", "a": a, "b": b}}}}}
    (folder / "customer_settings.toml").write_text(tomli_w.dumps(doc))
    (folder / "rules.toml").write_text(RULES)


def run_once(folder: Path) -> float:
    cmd = [sys.executable, "-m", "recsync", "--config-dir", str(folder), "--state-dir",
           str(folder / "state"), "--once"]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"recsyncd failed:\n{done.stdout}\n{done.stderr[-3000:]}")
    return wall


def raw_upsert(conn: psycopg.Connection[Any], table: str, rows: list[tuple[Any, ...]]) -> float:
    conn.execute(f"TRUNCATE {table}")
    start = time.perf_counter()
    with conn.transaction():
        conn.execute(f"CREATE TEMP TABLE raw_stage ON COMMIT DROP AS SELECT * FROM {table} "
                     "WITH NO DATA")
        with conn.cursor() as cur, cur.copy(
                "COPY raw_stage (id, name, email, status) FROM STDIN") as copy:
            for r in rows:
                copy.write_row(r[:4])
        conn.execute(f"INSERT INTO {table} (id, name, email, status) SELECT id, name, email, "
                     "status FROM raw_stage ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, "
                     "email = EXCLUDED.email, status = EXCLUDED.status")
    return time.perf_counter() - start


def raw_read(conn: psycopg.Connection[Any], table: str, target: Path) -> float:
    target.unlink(missing_ok=True)
    make_sqlite(target, [])
    start = time.perf_counter()
    rows = conn.execute(f"SELECT id, name, email, status FROM {table}").fetchall()
    out = sqlite3.connect(target)
    out.executemany("INSERT INTO users (record_id, full_name, email_address, status) "
                    "VALUES (?, ?, ?, ?)", rows)
    out.commit()
    out.close()
    return time.perf_counter() - start


def latency(folder: Path, conn: psycopg.Connection[Any], table: str, changes: int,
            dsn: str) -> list[float]:
    make_sqlite(folder / "a.sqlite", [])
    conn.execute(f"TRUNCATE {table}")
    write_config(folder, {"connector": "sqlite", "path": "a.sqlite", "table": "users",
                          "key": "record_id"},
                 {"connector": "postgres", "dsn": dsn, "table": table, "key": "id"},
                 poll_interval=30.0)
    cmd = [sys.executable, "-m", "recsync", "--config-dir", str(folder), "--state-dir",
           str(folder / "state")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out: list[float] = []
    try:
        db = sqlite3.connect(folder / "a.sqlite")
        time.sleep(3.0)  # start-up and the first (empty) poll
        for i in range(1, changes + 1):
            conn.execute(f"INSERT INTO {table} (id, name, email, status) VALUES "
                         "(%s, %s, %s, 'active')", (i, f"L{i}", f"l{i}@x.org"))
            start = time.perf_counter()
            deadline = start + 40
            while time.perf_counter() < deadline:
                if db.execute("SELECT 1 FROM users WHERE record_id = ?", (i,)).fetchone():
                    break
                time.sleep(0.002)
            out.append(time.perf_counter() - start)
            time.sleep(0.2)
        db.close()
    finally:
        proc.terminate()
        proc.wait(60)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--changes", type=int, default=40)
    args = parser.parse_args()
    try:
        admin = psycopg.connect(DSN, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        print(f"pg_bench skipped: PostgreSQL at {DSN} is unreachable ({str(exc).strip()})")
        return 0
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin.execute(f"CREATE SCHEMA {schema}")
    table = f"{schema}.users"
    try:
        admin.execute(PG_USERS.format(t=table))
        rows = rows_of(args.rows)
        with tempfile.TemporaryDirectory(prefix="recsync-pgbench-") as tmp:
            base = Path(tmp)
            # 1. SQLite -> PostgreSQL
            a_to_pg = base / "to_pg"
            a_to_pg.mkdir()
            make_sqlite(a_to_pg / "a.sqlite", rows)
            raw1 = raw_upsert(admin, table, rows)
            admin.execute(f"TRUNCATE {table}")
            write_config(a_to_pg, {"connector": "sqlite", "path": "a.sqlite",
                                   "table": "users", "key": "record_id"},
                         {"connector": "postgres", "dsn": DSN, "table": table, "key": "id"})
            wall = run_once(a_to_pg)
            raw1 = min(raw1, raw_upsert(admin, table, rows))
            got = admin.execute(f"SELECT count(*) FROM {table}").fetchone()
            assert got is not None and got[0] == args.rows, got
            ratio1 = raw1 / wall
            print(f"sqlite -> postgres, {args.rows} rows: {args.rows / wall:,.0f} records/s "
                  f"wall clock; raw COPY + upsert {args.rows / raw1:,.0f} rows/s; "
                  f"ratio {ratio1:.3f} (target >= 0.167: {'met' if ratio1 >= 1 / 6 else 'MISSED'})")
            # 2. PostgreSQL -> SQLite (the table now holds the rows, with triggers installed)
            pg_to_a = base / "from_pg"
            pg_to_a.mkdir()
            make_sqlite(pg_to_a / "a.sqlite", [])
            raw2 = raw_read(admin, table, base / "raw.sqlite")
            write_config(pg_to_a, {"connector": "sqlite", "path": "a.sqlite",
                                   "table": "users", "key": "record_id"},
                         {"connector": "postgres", "dsn": DSN, "table": table, "key": "id"})
            wall2 = run_once(pg_to_a)
            raw2 = min(raw2, raw_read(admin, table, base / "raw.sqlite"))
            ratio2 = raw2 / wall2
            print(f"postgres -> sqlite, {args.rows} rows: {args.rows / wall2:,.0f} records/s "
                  f"wall clock; raw read + executemany {args.rows / raw2:,.0f} rows/s; "
                  f"ratio {ratio2:.3f} (target >= 0.167: {'met' if ratio2 >= 1 / 6 else 'MISSED'})")
            # 3. NOTIFY latency
            lat_dir = base / "latency"
            lat_dir.mkdir()
            times = sorted(latency(lat_dir, admin, table, args.changes, DSN))
            p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
            print(f"postgres change -> sqlite with poll_interval = 30: median "
                  f"{times[len(times) // 2] * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms "
                  f"(target < 300 ms: {'met' if p95 < 0.3 else 'MISSED'})")
    finally:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
