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
import statistics
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

from bench.sync_bench import compile_bytecode
from recsync.dsn import mask_dsn

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


def verdict(ratio: float) -> str:
    return f"ratio {ratio:.3f} (target >= 0.167: {'met' if ratio >= 1 / 6 else 'MISSED'})"


def one_round(admin: psycopg.Connection[Any], base: Path, rows: list[tuple[Any, ...]]
              ) -> tuple[float, float, float, float]:
    """One interleaved round in a fresh schema: (recsyncd wall, raw) for each direction."""
    n = len(rows)
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin.execute(f"CREATE SCHEMA {schema}")
    table = f"{schema}.users"
    try:
        admin.execute(PG_USERS.format(t=table))
        # 1. SQLite -> PostgreSQL (raw before and after, the better one counts)
        a_to_pg = base / f"{schema}_to_pg"
        a_to_pg.mkdir()
        make_sqlite(a_to_pg / "a.sqlite", rows)
        raw1 = raw_upsert(admin, table, rows)
        admin.execute(f"TRUNCATE {table}")
        write_config(a_to_pg, {"connector": "sqlite", "path": "a.sqlite",
                               "table": "users", "key": "record_id"},
                     {"connector": "postgres", "dsn": DSN, "table": table, "key": "id"})
        wall1 = run_once(a_to_pg)
        got = admin.execute(f"SELECT count(*) FROM {table}").fetchone()
        assert got is not None and got[0] == n, got
        raw1 = min(raw1, raw_upsert(admin, table, rows))
        # 2. PostgreSQL -> SQLite (the table holds the rows, with triggers installed)
        pg_to_a = base / f"{schema}_from_pg"
        pg_to_a.mkdir()
        make_sqlite(pg_to_a / "a.sqlite", [])
        raw2 = raw_read(admin, table, base / "raw.sqlite")
        write_config(pg_to_a, {"connector": "sqlite", "path": "a.sqlite",
                               "table": "users", "key": "record_id"},
                     {"connector": "postgres", "dsn": DSN, "table": table, "key": "id"})
        wall2 = run_once(pg_to_a)
        with sqlite3.connect(pg_to_a / "a.sqlite") as out:
            copied = out.execute("SELECT count(*) FROM users").fetchone()[0]
        out.close()
        assert copied == n, copied
        raw2 = min(raw2, raw_read(admin, table, base / "raw.sqlite"))
        return wall1, raw1, wall2, raw2
    finally:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds; each ratio is the median of the rounds")
    parser.add_argument("--changes", type=int, default=40,
                        help="NOTIFY latency samples (0: skip the latency part)")
    args = parser.parse_args()
    try:
        admin = psycopg.connect(DSN, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        reason = " ".join(mask_dsn(str(exc)).split())
        print(f"pg_bench skipped: PostgreSQL at {mask_dsn(DSN)} is unreachable ({reason})")
        return 0
    compile_bytecode()  # a user's recsyncd starts from bytecode
    began = time.perf_counter()
    n = args.rows
    try:
        rows = rows_of(n)
        with tempfile.TemporaryDirectory(prefix="recsync-pgbench-") as tmp:
            base = Path(tmp)
            rounds = [one_round(admin, base, rows) for _ in range(max(1, args.rounds))]
            for i, (w1, r1, w2, r2) in enumerate(rounds, 1):
                print(f"  round {i}: sqlite -> postgres {w1:.2f} s (raw {r1:.2f} s, "
                      f"ratio {r1 / w1:.3f}); postgres -> sqlite {w2:.2f} s "
                      f"(raw {r2:.2f} s, ratio {r2 / w2:.3f})")
            w1, r1, w2, r2 = (statistics.median(r[i] for r in rounds) for i in range(4))
            ratio1 = statistics.median(r[1] / r[0] for r in rounds)
            ratio2 = statistics.median(r[3] / r[2] for r in rounds)
            print(f"sqlite -> postgres, {n} rows, median of {len(rounds)}: "
                  f"{n / w1:,.0f} records/s wall clock; raw COPY + upsert {n / r1:,.0f} rows/s; "
                  f"{verdict(ratio1)}")
            print(f"postgres -> sqlite, {n} rows, median of {len(rounds)}: "
                  f"{n / w2:,.0f} records/s wall clock; raw read + executemany "
                  f"{n / r2:,.0f} rows/s; {verdict(ratio2)}")
            # 3. NOTIFY latency
            if args.changes > 0:
                schema = f"bench_{uuid.uuid4().hex[:8]}"
                admin.execute(f"CREATE SCHEMA {schema}")
                table = f"{schema}.users"
                try:
                    admin.execute(PG_USERS.format(t=table))
                    lat_dir = base / "latency"
                    lat_dir.mkdir()
                    times = sorted(latency(lat_dir, admin, table, args.changes, DSN))
                finally:
                    admin.execute(f"DROP SCHEMA {schema} CASCADE")
                p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
                print(f"postgres change -> sqlite with poll_interval = 30: median "
                      f"{times[len(times) // 2] * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms "
                      f"(target < 300 ms: {'met' if p95 < 0.3 else 'MISSED'})")
    finally:
        admin.close()
    print(f"pg_bench took {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
