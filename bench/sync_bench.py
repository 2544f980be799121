"""`make bench`: end-to-end sync throughput and peak memory of recsyncd, as a user runs it.

Every case runs `recsyncd --once` (wall clock, process start-up included) with the
shipped defaults, the ``[defaults]`` table of the repository's customer_settings.toml,
unless the case says otherwise, on a pipeline with renamed fields (side B's columns are
named differently) and rules both ways (create, update, delete in each direction).

Each figure is a ratio to the raw copy of the same machine in the same run (read all rows
+ executemany into a fresh WAL database). These machines are shared and their speed
drifts, so each pipeline run is paired with raw copies made right before and right after
it, and its ratio is taken against the faster of the two (the stricter limit). The cases
run ``--rounds`` times, interleaved, and the median ratio is the figure.

Cases (N = --rows, 100,000; --quick: 20,000):
  init      initial load SQLite -> SQLite, N rows
  sweep     the same with page_size / batch_size across 100..5000: worst / best rate
  queued    N updates of linked records on side A arriving while a backlog is queued:
            the first N/5 were read and queued before (as after an outage of side B),
            the other 4/5 are read in the run, each page queued behind it
  updates   N updates of linked records on side A, nothing pending
  csv       initial load SQLite -> CSV file
  pgstate   init with ``[cluster] state`` in PostgreSQL, against init's rate
  rss       peak RSS of init at N and 10 N rows (one run each)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PG_STATE = "postgresql://postgres@127.0.0.1:5432/test"
USERS = """CREATE TABLE users (record_id INTEGER PRIMARY KEY, full_name TEXT NOT NULL,
    email_address TEXT, status TEXT NOT NULL, updated_at REAL NOT NULL DEFAULT 0)"""
CONTACTS = """CREATE TABLE contacts (id INTEGER PRIMARY KEY, name TEXT NOT NULL,
    email TEXT, state TEXT NOT NULL, updated_at REAL NOT NULL DEFAULT 0)"""
RULES = """
[contacts]
a_to_b = ["create", "update", "delete"]
b_to_a = ["create", "update", "delete"]
[contacts.mappings]
record_id = "id"
full_name = "name"
email_address = "email"
status = "state"
"""
SIDE_A = '{ connector = "sqlite", path = "a.sqlite", table = "users", key = "record_id" }'
SIDE_B = {
    "sqlite": '{ connector = "sqlite", path = "b.sqlite", table = "contacts", key = "id" }',
    "csv": '{ connector = "file", path = "b.csv", key = "id" }',
}
# (page_size, batch_size) of the sweep; the shipped pair is the init case itself
SWEEP = [(100, 100), (100, 5000), (5000, 100), (2000, 2000), (5000, 5000)]
TARGETS = {"init": 1 / 6, "sweep": 1 / 2, "queued": 1 / 10, "updates": 1 / 6, "csv": 1 / 6,
           "pgstate": 1 / 3}


def shipped_defaults() -> dict[str, Any]:
    with (ROOT / "customer_settings.toml").open("rb") as f:
        return dict(tomllib.load(f)["defaults"])


def toml_table(name: str, table: dict[str, Any]) -> str:
    lines, subs = [f"[{name}]"], []
    for key, value in table.items():
        if isinstance(value, dict):
            subs.append(toml_table(f"{name}.{key}", value))
        elif isinstance(value, str):
            lines.append(f'{key} = "{value}"')
        elif isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        else:
            lines.append(f"{key} = {value!r}")
    return "\n".join([*lines, *subs]) + "\n"


def compile_bytecode() -> None:
    """Compile recsync's modules, as installing the package does: a user's recsyncd starts
    from bytecode. Run from a source tree with PYTHONDONTWRITEBYTECODE set (as on the
    development machines), every `recsyncd --once` compiled every module again first:
    about 540M instructions, more than the rest of its start-up (callgrind)."""
    import compileall
    import importlib.util

    spec = importlib.util.find_spec("recsync")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        compileall.compile_dir(folder, quiet=1)


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
    for extra in ("-wal", "-shm"):
        Path(f"{target}{extra}").unlink(missing_ok=True)
    with sqlite3.connect(target) as out:
        out.execute("PRAGMA journal_mode = WAL")
        out.execute(CONTACTS)
    start = time.perf_counter()
    src = sqlite3.connect(source)
    out = sqlite3.connect(target)
    rows = src.execute("SELECT * FROM users").fetchall()
    out.executemany("INSERT INTO contacts VALUES (?, ?, ?, ?, ?)", rows)
    out.commit()
    elapsed = time.perf_counter() - start
    src.close()
    out.close()
    return len(rows) / elapsed


@dataclass
class Run:
    synced: int
    wall: float
    rss: float

    @property
    def rate(self) -> float:
        return self.synced / self.wall


def write_config(folder: Path, target: str, overrides: dict[str, Any], state: str) -> None:
    if target == "sqlite" and not (folder / "b.sqlite").exists():
        with sqlite3.connect(folder / "b.sqlite") as db:  # set up as the raw copy's target
            db.execute("PRAGMA journal_mode = WAL")
            db.execute(CONTACTS)
        db.close()
    (folder / "rules.toml").write_text(RULES)
    settings = {**shipped_defaults(), **overrides}
    cluster = f'[cluster]\nstate = "{state}"\n\n' if state else ""
    (folder / "customer_settings.toml").write_text(
        cluster + toml_table("defaults", settings)
        + '\n[customers.bench.pipelines.p]\nrules = "contacts"\n'
        + f"a = {SIDE_A}\nb = {SIDE_B[target]}\n")


def run_once(folder: Path, expect: int) -> Run:
    """`recsyncd --once` in ``folder``: records synced (both ways), wall clock, peak RSS."""
    cmd = [sys.executable, "-m", "recsync", "--config-dir", str(folder), "--state-dir",
           str(folder / "state"), "--once"]
    # The peak RSS of a child forked from this (big) process starts at this process's:
    # /usr/bin/time, a small process, forks it instead and reports its own figure.
    timer = shutil.which("time", path="/usr/bin:/bin")
    if timer:
        cmd = [timer, "-f", "%M", "-o", str(folder / "rss.txt"), *cmd]
    start = time.perf_counter()
    with (folder / "out.txt").open("w") as out_f, (folder / "err.txt").open("w") as err_f:
        proc = subprocess.Popen(cmd, stdout=out_f, stderr=err_f)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    out, err = (folder / "out.txt").read_text(), (folder / "err.txt").read_text()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"recsyncd failed in {folder}:\n{out}\n{err[-3000:]}")
    match = re.search(r"a->b (\d+) synced, b->a (\d+) synced, (\d+) failed", out)
    if not match:
        raise SystemExit(f"unexpected summary: {out}")
    synced = int(match.group(1)) + int(match.group(2))
    if synced != expect or int(match.group(3)):
        raise SystemExit(f"{folder.name}: expected {expect} synced: {out}")
    kib = int((folder / "rss.txt").read_text().split()[-1]) if timer else usage.ru_maxrss
    return Run(synced, wall, kib / 1024)


def clear_pg(state: str, pipeline: str) -> None:
    import psycopg

    with psycopg.connect(state, autocommit=True) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.columns WHERE table_schema = "
            "'recsync' AND column_name = 'pipeline'")]
        for table in tables:
            conn.execute(f"DELETE FROM recsync.{table} WHERE pipeline = %s", (pipeline,))


def pg_reachable(state: str) -> str:
    """'' when PostgreSQL at ``state`` answers, else why not."""
    try:
        import psycopg

        with psycopg.connect(state, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # any failure means: skip the case
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ""


@dataclass
class Bench:
    base: Path
    source: Path
    rows: int
    ratios: dict[str, list[float]] = field(default_factory=dict)
    rates: dict[str, list[float]] = field(default_factory=dict)
    rss: dict[int, float] = field(default_factory=dict)
    n: int = 0

    def folder(self, name: str, rows: int | None = None) -> Path:
        self.n += 1
        folder = self.base / f"{name.replace(' ', '-').replace('/', 'x')}{self.n}"
        folder.mkdir()
        if rows is None or rows == self.rows:
            os.link(self.source, folder / "a.sqlite")
        else:
            make_source(folder / "a.sqlite", rows)
        return folder

    def timed(self, case: str, folder: Path, expect: int, label: str = "") -> Run:
        before = raw_copy(self.source, self.base / "raw.sqlite")
        run = run_once(folder, expect)
        limit = max(before, raw_copy(self.source, self.base / "raw.sqlite"))
        self.ratios.setdefault(case, []).append(run.rate / limit)
        self.rates.setdefault(case, []).append(run.rate)
        print(f"  {case}{label}: {run.synced} records in {run.wall:.2f} s wall, "
              f"{run.rate:,.0f}/s = {run.rate / limit:.3f} of the raw copy "
              f"({limit:,.0f} rows/s), peak RSS {run.rss:.0f} MiB", flush=True)
        return run

    def init(self, target: str = "sqlite", overrides: dict[str, Any] | None = None,
             case: str = "init", state: str = "", label: str = "") -> Path:
        folder = self.folder(case)
        write_config(folder, target, overrides or {}, state)
        if state:  # a fresh state: not what a run stopped halfway (or by hand) left there
            clear_pg(state, "bench/p")
        try:
            run = self.timed(case, folder, self.rows, label)
        finally:
            if state:
                clear_pg(state, "bench/p")
        if case == "init":
            self.rss[self.rows] = max(run.rss, self.rss.get(self.rows, 0.0))
        return folder

    def updates(self, loaded: Path, backlog: int, case: str) -> None:
        """A copy of a loaded pipeline, then all N rows updated on side A: the last
        ``backlog`` of them first, read and queued as an earlier run would have left them
        when side B was out (``queue_backlog``); `recsyncd --once` syncs all N."""
        folder = self.base / f"{case}{self.n}"
        self.n += 1
        shutil.copytree(loaded, folder, ignore=shutil.ignore_patterns("a.sqlite*"))
        shutil.copy(loaded / "a.sqlite", folder / "a.sqlite")  # not the shared hard link
        now = time.time() + 1
        update = ("UPDATE users SET full_name = full_name || ' (updated)', updated_at = ? "
                  "WHERE record_id > ? AND record_id <= ?")
        if backlog:
            with sqlite3.connect(folder / "a.sqlite") as db:
                db.execute(update, (now, self.rows - backlog, self.rows))
            db.close()
            queued = queue_backlog(folder)
            if queued != backlog:
                raise SystemExit(f"{folder.name}: {queued} changes queued, not {backlog}")
        with sqlite3.connect(folder / "a.sqlite") as db:
            db.execute(update, (now, 0, self.rows - backlog))
        db.close()
        self.timed(case, folder, self.rows)


def queue_backlog(folder: Path) -> int:
    """Read side A (SQLite) of the one pipeline configured in ``folder`` past its cursor
    and queue the changes in its state (``folder``/state), as recsyncd does when a page
    cannot go to the writer at once (work of its direction is queued or in flight): with
    recsync's own connector, rules and store. Returns how many were queued. (Also the
    setup of tests/e2e/test_backlog.py.)"""
    from recsync.config import load_config
    from recsync.connectors.sqlite import SqliteConfig, SqliteConnector
    from recsync.rules import compile_rules
    from recsync.state.paths import state_file_name
    from recsync.state.store import Store

    config = load_config(folder)
    (pipeline,) = config.pipelines.values()
    ruleset = config.rules[pipeline.rules]
    options = pipeline.a.options
    assert isinstance(options, SqliteConfig)
    store = Store(folder / "state" / state_file_name(pipeline.id))
    side = SqliteConnector(options, folder)
    side.open()
    try:
        cursor, queued = store.cursor("a"), 0
        while True:
            page = side.read_changes(cursor, 1000)
            prepared = compile_rules(ruleset).prepare("a", page.changes)
            queued += store.enqueue("a", prepared, page.cursor, time.time(), ruleset).queued
            cursor = page.cursor
            if not page.more:
                return queued
    finally:
        side.close()
        store.close()


def median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="20,000 rows (10x for rss)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved runs per case; the median ratio is reported")
    parser.add_argument("--cases", default="init,sweep,queued,updates,csv,pgstate,rss",
                        help="comma-separated subset of the cases")
    parser.add_argument("--pg-state", default=PG_STATE, metavar="URL")
    args = parser.parse_args()
    rows = 20_000 if args.quick else args.rows
    cases = set(args.cases.split(","))
    pg_skip = pg_reachable(args.pg_state) if "pgstate" in cases else ""
    defaults = shipped_defaults()
    compile_bytecode()
    print(f"shipped defaults: batch_size {defaults['batch_size']}, page_size "
          f"{defaults['page_size']}, flush_interval {defaults['flush_interval']}; {rows} rows, "
          f"{args.rounds} rounds")
    with tempfile.TemporaryDirectory(prefix="recsync-bench-") as tmp:
        bench = Bench(Path(tmp), Path(tmp) / "source.sqlite", rows)
        make_source(bench.source, rows)
        for r in range(args.rounds):
            print(f"round {r + 1}", flush=True)
            loaded = bench.init()  # every round needs it (the updates start from it)
            if "queued" in cases:
                bench.updates(loaded, rows // 5, "queued")
            if "updates" in cases:
                bench.updates(loaded, 0, "updates")
            if "csv" in cases:
                bench.init("csv", case="csv")
            if "pgstate" in cases and not pg_skip:
                bench.init(case="pgstate", state=args.pg_state)
            if "sweep" in cases:
                for page, batch in SWEEP:
                    bench.init(overrides={"page_size": page, "batch_size": batch},
                               case=f"sweep {page}/{batch}", label="")
        if "rss" in cases:
            big = rows * 10
            print(f"rss: initial load of {big} rows", flush=True)
            folder = bench.folder("rss", big)
            write_config(folder, "sqlite", {}, "")
            bench.rss[big] = run_once(folder, big).rss
        report(bench, cases, pg_skip, defaults)
    return 0


def report(bench: Bench, cases: set[str], pg_skip: str, defaults: dict[str, Any]) -> None:
    print("\ncase                                          ratio   target  (all runs)")

    def line(name: str, value: float, target: float, runs: list[float]) -> None:
        ok = "met" if value >= target else "MISSED"
        print(f"{name:<44} {value:7.3f}  >= {target:.3f} {ok:<6} "
              f"({', '.join(f'{v:.3f}' for v in runs)})")

    init = median(bench.ratios["init"])
    line("init: initial load, shipped defaults", init, TARGETS["init"], bench.ratios["init"])
    for case, title in (("queued", "queued: updates while a backlog is queued"),
                        ("updates", "updates: linked records, nothing pending"),
                        ("csv", "csv: initial load SQLite -> CSV")):
        if case in cases:
            line(title, median(bench.ratios[case]), TARGETS[case], bench.ratios[case])
    if "pgstate" in cases:
        if pg_skip:
            print(f"pgstate: skipped, PostgreSQL unreachable ({pg_skip})")
        else:
            share = median(bench.rates["pgstate"]) / median(bench.rates["init"])
            line("pgstate: share of the SQLite state's rate", share, TARGETS["pgstate"],
                 [p / s for p, s in zip(bench.rates["pgstate"], bench.rates["init"],
                                        strict=True)])
    if "sweep" in cases:
        settings = {f"{defaults['page_size']}/{defaults['batch_size']}": init}
        for page, batch in SWEEP:
            settings[f"{page}/{batch}"] = median(bench.ratios[f"sweep {page}/{batch}"])
        print("sweep (page_size/batch_size: ratio): "
              + ", ".join(f"{k}: {v:.3f}" for k, v in settings.items()))
        worst, best = min(settings.values()), max(settings.values())
        line("sweep: worst / best setting", worst / best, TARGETS["sweep"],
             list(settings.values()))
    if "rss" in cases and len(bench.rss) == 2:
        (small, s_rss), (big, b_rss) = sorted(bench.rss.items())
        ok = "met" if max(s_rss, b_rss) < 200 and b_rss / s_rss < 1.5 else "MISSED"
        print(f"rss: peak {s_rss:.0f} MiB at {small} rows, {b_rss:.0f} MiB at {big} rows "
              f"(target < 200 MiB, flat: x{b_rss / s_rss:.2f}) {ok}")


if __name__ == "__main__":
    sys.exit(main())
