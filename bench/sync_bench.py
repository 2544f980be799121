"""`make bench`: end-to-end sync throughput and peak memory of recsyncd.

Every figure is measured in this one run, next to the raw-copy limit of the same machine
(read all rows + executemany into another SQLite file). These machines are shared and
their speed drifts from minute to minute, so each pipeline run is paired with raw copies
made right before and right after it, and its ratio is taken against the faster of the
two (the stricter limit). Each target runs ``--rounds`` times, interleaved, and the
median ratio is the figure.
"""

from __future__ import annotations

import argparse
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
USERS = """CREATE TABLE users (record_id INTEGER PRIMARY KEY, full_name TEXT NOT NULL,
    email_address TEXT, status TEXT NOT NULL, updated_at REAL NOT NULL DEFAULT 0)"""
RULES = """
[contacts]
a_to_b = ["create", "update", "delete"]
b_to_a = ["create", "update", "delete"]
[contacts.mappings]
record_id = "record_id"
full_name = "full_name"
email_address = "email_address"
status = "status"
"""


def make_source(path: Path, rows: int) -> None:
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute(USERS)
        now = time.time()
        db.executemany(
            "INSERT INTO users VALUES (?, ?, ?, ?, ?)",
            ((i, f"User Number {i}", f"user{i}@example.com", "active", now)
             for i in range(1, rows + 1)))
    db.close()


def raw_copy(source: Path, target: Path) -> float:
    """Rows per second of the plainest possible copy between two SQLite files."""
    target.unlink(missing_ok=True)
    with sqlite3.connect(target) as out:
        out.execute("PRAGMA journal_mode = WAL")
        out.execute(USERS)
    start = time.perf_counter()
    src = sqlite3.connect(source)
    out = sqlite3.connect(target)
    rows = src.execute("SELECT * FROM users").fetchall()
    out.executemany("INSERT INTO users VALUES (?, ?, ?, ?, ?)", rows)
    out.commit()
    elapsed = time.perf_counter() - start
    src.close()
    out.close()
    return len(rows) / elapsed


def run_pipeline(folder: Path, target: str, rows: int, batch: int,
                 state: str = "") -> tuple[float, float, float]:
    """Sync ``rows`` through recsyncd --once; (records/s by the daemon's clock, records/s
    wall clock including process start, peak RSS in MiB). ``state``: a PostgreSQL URL
    for ``[cluster] state`` (the pipeline's state there instead of a SQLite file)."""
    sides = {
        "sqlite": '{ connector = "sqlite", path = "b.sqlite", table = "users", '
                  'key = "record_id" }',
        "csv": '{ connector = "file", path = "b.csv", key = "record_id" }',
    }
    if target == "sqlite":  # set up as the raw copy's target is
        with sqlite3.connect(folder / "b.sqlite") as db:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute(USERS)
        db.close()
    (folder / "rules.toml").write_text(RULES)
    cluster = f'[cluster]\nstate = "{state}"\n' if state else ""
    (folder / "customer_settings.toml").write_text(cluster + textwrap.dedent(f"""
        [defaults]
        batch_size = {batch}
        page_size = {batch}
        flush_interval = 0.05
        poll_interval = 0.2
        [defaults.rate_limit]
        max_requests = 1000000
        window_seconds = 1
        [customers.{folder.name}.pipelines.p]
        rules = "contacts"
        a = {{ connector = "sqlite", path = "a.sqlite", table = "users", key = "record_id" }}
        b = {sides[target]}
        """))
    cmd = [sys.executable, "-m", "recsync", "--config-dir", str(folder), "--state-dir",
           str(folder / "state"), "--once"]
    start = time.perf_counter()
    with (folder / "out.txt").open("w") as out_f, (folder / "err.txt").open("w") as err_f:
        proc = subprocess.Popen(cmd, stdout=out_f, stderr=err_f)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    out, err = (folder / "out.txt").read_text(), (folder / "err.txt").read_text()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"recsyncd failed:\n{out}\n{err[-3000:]}")
    match = re.search(r"a->b (\d+) synced.* in ([\d.]+) s", out)
    if not match or int(match.group(1)) != rows:
        raise SystemExit(f"unexpected summary: {out}")
    seconds = float(match.group(2))
    return rows / seconds, rows / wall, usage.ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=20_000,
                        help="a smaller table, to show memory does not grow with size")
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3,
                        help="pipeline runs per target; the median ratio is reported")
    parser.add_argument("--pg-state", default="", metavar="URL",
                        help="instead: the initial load sqlite -> sqlite with [cluster] state "
                             "= URL against the same with SQLite state files, interleaved")
    args = parser.parse_args()
    if args.pg_state:
        return pg_state(args)
    with tempfile.TemporaryDirectory(prefix="recsync-bench-") as tmp:
        base = Path(tmp)
        source = base / "source.sqlite"
        make_source(source, args.rows)
        raw = raw_copy(source, base / "raw.sqlite")
        print(f"raw copy (read + executemany), {args.rows} rows: {raw:,.0f} rows/s")
        rss: dict[tuple[str, int], float] = {}
        medians: list[float] = []
        runs = [("sqlite", args.rows), ("csv", args.rows)] * args.rounds  # interleaved
        ratios: dict[str, list[tuple[float, float, float]]] = {"sqlite": [], "csv": []}
        for i, (target, rows) in enumerate([*runs, ("sqlite", args.small)]):
            folder = base / f"{target}-{rows}-{i}"
            folder.mkdir()
            if rows == args.rows:
                os.link(source, folder / "a.sqlite")
            else:
                make_source(folder / "a.sqlite", rows)
            before = raw_copy(source, base / "raw.sqlite")
            rate, wall_rate, peak = run_pipeline(folder, target, rows, args.batch)
            limit = max(before, raw_copy(source, base / "raw.sqlite"))
            rss[(target, rows)] = max(peak, rss.get((target, rows), 0.0))
            if rows == args.rows:
                ratios[target].append((rate / limit, rate, limit))
            print(f"recsyncd sqlite -> {target}, {rows} rows: {rate:,.0f} records/s "
                  f"({rate / limit:.3f} of the raw copy around it, {limit:,.0f} rows/s; "
                  f"{wall_rate:,.0f}/s counting process start-up), peak RSS {peak:.0f} MiB")
        for target, got in ratios.items():
            got.sort()
            ratio, rate, limit = got[len(got) // 2]
            medians.append(ratio)
            print(f"median of {len(got)} runs, sqlite -> {target}: {ratio:.3f} of the raw copy "
                  f"({rate:,.0f} records/s against {limit:,.0f} rows/s; all: "
                  f"{', '.join(f'{r:.3f}' for r, _, _ in got)})")
        big = rss[("sqlite", args.rows)]
        small = rss[("sqlite", args.small)]
        print(f"peak RSS {args.small} rows -> {args.rows} rows: {small:.0f} -> {big:.0f} MiB "
              f"(x{big / small:.2f} for x{args.rows / args.small:.0f} rows)")
        worst = min(medians)
        print(f"targets: pipeline >= 1/6 of raw copy: {'met' if worst >= 1 / 6 else 'MISSED'} "
              f"(worst median {worst:.3f} at {args.rows} rows); peak RSS < 200 MiB: "
              f"{'met' if max(rss.values()) < 200 else 'MISSED'}")
    return 0


def pg_state(args: argparse.Namespace) -> int:
    """The initial load with the state in PostgreSQL, as a share of the SQLite state's."""
    import psycopg

    rates: dict[str, list[float]] = {"sqlite": [], "postgresql": []}
    with tempfile.TemporaryDirectory(prefix="recsync-bench-") as tmp:
        base = Path(tmp)
        source = base / "source.sqlite"
        make_source(source, args.rows)
        for i in range(args.rounds):
            for kind in rates:
                folder = base / f"r{i}{kind[:2]}{os.getpid()}"
                folder.mkdir()
                os.link(source, folder / "a.sqlite")
                state = args.pg_state if kind == "postgresql" else ""
                try:
                    rate, _wall, _rss = run_pipeline(folder, "sqlite", args.rows, args.batch,
                                                     state)
                finally:
                    if state:
                        with psycopg.connect(state, autocommit=True) as conn:
                            for table in ("meta", "cursors", "links", "queue", "history",
                                          "listing_seen", "rekeys"):
                                conn.execute(f"DELETE FROM recsync.{table} WHERE pipeline = "
                                             f"%s", (f"{folder.name}/p",))
                rates[kind].append(rate)
                print(f"recsyncd sqlite -> sqlite, {args.rows} rows, {kind} state: "
                      f"{rate:,.0f} records/s")
    lite = sorted(rates["sqlite"])[len(rates["sqlite"]) // 2]
    pg = sorted(rates["postgresql"])[len(rates["postgresql"]) // 2]
    print(f"median of {args.rounds}: PostgreSQL state {pg:,.0f} records/s, SQLite state "
          f"{lite:,.0f} records/s: {pg / lite:.2f} of the SQLite state's rate "
          f"(target >= 1/3: {'met' if pg / lite >= 1 / 3 else 'MISSED'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
