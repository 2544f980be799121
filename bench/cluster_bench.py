"""`make bench`: several recsyncd nodes on one ``[cluster]`` (issue 15), on this machine.

1. Throughput: 8 SQLite -> SQLite pipelines, the state in PostgreSQL, run by one node,
   then by two (each owning 4 once the leases are shared out). The nodes start on empty
   sides; once the leases are settled, ``--rows`` rows are added to every side A, and the
   figure is all the rows over the time until every side B holds them. Target: two nodes
   at least 1.5x one node.
2. CPU split during each throughput run: CPU seconds of the recsyncd processes (and their
   control front) and of the PostgreSQL backends serving them (pids from
   pg_stat_activity), read from /proc/PID/stat, as cores over the run's wall time, and as
   microseconds per record; the whole machine's busy cores for context (the machine is
   shared: when it is busy, the ratio says as much about the scheduler as about us). From
   the cost per record, the ratio idle cores would allow: each node one core at most (one
   Python process), nodes and PostgreSQL within the machine's cores.
3. Failover: with two nodes syncing, kill -9 of the node, ``--kills`` times (a fresh node
   joins after each); the time from the kill to the last of its pipelines being taken
   over, by the database's clock (median, max). Target: lease_ttl + one poll interval.

The configuration is what a user gets: the [defaults] of the repository's
customer_settings.toml and the shipped lease_ttl (15 s). The nodes' state is in a database
of its own (the daemon's schema is always ``recsync``, and the machine's other users run
cluster tests on that schema of ``test``, whose live nodes would change each node's fair
share), dropped afterwards. Skipped, with a line, when PostgreSQL is unreachable.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import tomli_w

from bench.sync_bench import compile_bytecode
from recsync.cluster.leases import create_tables

ROOT = Path(__file__).resolve().parent.parent
DSN = os.environ.get("RECSYNC_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
PIPELINES = 8
TICK = os.sysconf("SC_CLK_TCK")
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


def wait(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(step)
    raise SystemExit(f"cluster_bench: timed out after {timeout:g} s waiting for {what}")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (None: it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def with_children(pids: set[int]) -> set[int]:
    """``pids`` and their children (recsyncd's control front is one)."""
    found = set(pids)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if int(text[text.rindex(")") + 2:].split()[1]) in pids:
            found.add(int(stat.parent.name))
    return found


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = parts[3] + parts[4]
    return (sum(parts) - idle) / TICK, sum(parts) / TICK


@dataclass
class Bench:
    folder: Path
    dsn: str
    customer: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    started: int = 0

    @property
    def pipelines(self) -> list[str]:
        return [f"{self.customer}/p{i}" for i in range(1, PIPELINES + 1)]

    def side(self, which: str, i: int) -> Path:
        return self.folder / f"{which}{i}.sqlite"

    def setup(self) -> None:
        shipped = tomllib.loads((ROOT / "customer_settings.toml").read_text())
        pipes = {}
        for i in range(1, PIPELINES + 1):
            for which in ("a", "b"):
                with sqlite3.connect(self.side(which, i)) as db:
                    db.execute("PRAGMA journal_mode = WAL")
                    db.execute(USERS)
                db.close()
            pipes[f"p{i}"] = {
                "rules": "contacts",
                "a": {"connector": "sqlite", "path": f"a{i}.sqlite", "table": "users",
                      "key": "record_id"},
                "b": {"connector": "sqlite", "path": f"b{i}.sqlite", "table": "users",
                      "key": "record_id"}}
        doc = {"defaults": shipped.get("defaults", {}), "cluster": {"state": self.dsn},
               "customers": {self.customer: {"pipelines": pipes}}}
        (self.folder / "customer_settings.toml").write_text(tomli_w.dumps(doc))
        (self.folder / "rules.toml").write_text(RULES)

    def start(self) -> str:
        """A new node (a new name each time: a killed node's name stays taken until its
        heartbeat is older than the lease ttl)."""
        self.started += 1
        name = f"{self.customer}-n{self.started}"
        run = self.folder / f"run-{name}"
        run.mkdir(mode=0o700)
        env = {**os.environ, "RUNTIME_DIRECTORY": str(run)}
        env.pop("NOTIFY_SOCKET", None)
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "recsync", "--config-dir", str(self.folder),
             "--state-dir", str(self.folder / f"state-{name}"), "--node", name,
             "--log-file", str(self.folder / f"{name}.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        return name

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def alive(self) -> dict[str, subprocess.Popen[bytes]]:
        for name, proc in self.procs.items():
            if proc.poll() is not None and proc.returncode not in (0, -signal.SIGKILL):
                err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
                raise SystemExit(f"cluster_bench: node {name} exited ({proc.returncode}):\n"
                                 f"{err}")
        return {n: p for n, p in self.procs.items() if p.poll() is None}

    def leases(self) -> dict[str, tuple[str, int, Any]]:
        """pipeline -> (owner, token, acquired_at), the live leases only."""
        with psycopg.connect(self.dsn) as conn:
            rows = conn.execute(
                "SELECT pipeline, node, token, acquired_at FROM recsync.leases "
                "WHERE pipeline = ANY(%s) AND expires_at > now()", (self.pipelines,)).fetchall()
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    def settled(self) -> bool:
        """Every pipeline leased, each live node owning its fair share."""
        live = self.alive()
        owners = [v[0] for v in self.leases().values()]
        share = -(-PIPELINES // len(live))
        return (len(owners) == PIPELINES and set(owners) <= set(live)
                and all(owners.count(n) <= share for n in live))

    def add_rows(self, first: int, count: int) -> None:
        now = time.time()
        rows = [(n, f"User Number {n}", f"user{n}@example.com", "active", now)
                for n in range(first, first + count)]
        for i in range(1, PIPELINES + 1):
            with sqlite3.connect(self.side("a", i)) as db:
                db.executemany("INSERT INTO users VALUES (?, ?, ?, ?, ?)", rows)
            db.close()

    def b_count(self) -> int:
        total = 0
        for i in range(1, PIPELINES + 1):
            try:
                with sqlite3.connect(self.side("b", i), timeout=5) as db:
                    row = db.execute("SELECT count(*) FROM users").fetchone()
                db.close()
            except sqlite3.Error:  # a killed writer's file being recovered: look again
                return -1
            total += int(row[0])
        return total

    def rows_written(self) -> dict[str, int]:
        """Rows inserted + updated + deleted so far, per table of the state (the
        statistics collector's figures, flushed by the backends every second or so)."""
        with psycopg.connect(self.dsn) as conn:
            rows = conn.execute("SELECT relname, n_tup_ins + n_tup_upd + n_tup_del FROM "
                                "pg_stat_user_tables WHERE schemaname = 'recsync'").fetchall()
        return {r[0]: int(r[1]) for r in rows}

    def backends(self) -> list[int]:
        with psycopg.connect(self.dsn) as conn:
            rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = "
                                "current_database() AND pid <> pg_backend_pid()").fetchall()
        return [int(r[0]) for r in rows]


@dataclass
class Run:
    nodes: int
    rows: int
    seconds: float
    recsyncd_cpu: float
    postgres_cpu: float
    machine_busy: float
    state_rows: dict[str, float]  # PostgreSQL rows inserted, updated or deleted per record

    @property
    def rate(self) -> float:
        return self.rows / self.seconds

    def cost(self) -> tuple[float, float]:
        """CPU microseconds per record: (recsyncd, PostgreSQL)."""
        return (self.recsyncd_cpu * self.seconds / self.rows * 1e6,
                self.postgres_cpu * self.seconds / self.rows * 1e6)

    def ceiling(self, cores: int) -> float:
        """Records/s this run's CPU cost per record allows on ``cores`` idle cores: each
        node at most one core (one Python process), everything within the cores."""
        ours, pg = self.cost()
        return min(self.nodes / ours, cores / (ours + pg)) * 1e6


def throughput(base: Path, dsn: str, nodes: int, rows: int) -> Run:
    b = Bench(base / f"nodes{nodes}", dsn, f"tp{nodes}x{uuid.uuid4().hex[:6]}")
    b.folder.mkdir()
    b.setup()
    try:
        for _ in range(nodes):
            b.start()
        wait(b.settled, 120, f"{nodes} node(s) sharing the {PIPELINES} pipelines out", 0.5)
        pids = with_children({p.pid for p in b.alive().values()})
        rows0 = b.rows_written()
        backends = set(b.backends())
        before = {pid: cpu_seconds(pid) or 0.0 for pid in pids | backends}
        busy0, total0 = machine_busy()
        start = time.perf_counter()
        b.add_rows(1, rows)
        wait(lambda: b.b_count() >= rows * PIPELINES, 1800, "the rows on every side B", 0.1)
        seconds = time.perf_counter() - start
        busy1, total1 = machine_busy()
        backends |= set(b.backends())
        written = {t: n - rows0.get(t, 0) for t, n in b.rows_written().items()}

        def used(group: set[int]) -> float:
            return sum((cpu_seconds(p) or before.get(p, 0.0)) - before.get(p, 0.0)
                       for p in group)

        got = b.b_count()
        if got != rows * PIPELINES:
            raise SystemExit(f"cluster_bench: {got} rows on the B sides, "
                             f"{rows * PIPELINES} expected")
        cores = os.cpu_count() or 1
        return Run(nodes, rows * PIPELINES, seconds, used(pids) / seconds,
                   used(backends) / seconds,
                   (busy1 - busy0) / (total1 - total0) * cores,
                   {t: n / (rows * PIPELINES) for t, n in written.items() if n})
    finally:
        b.stop()


def failover(base: Path, dsn: str, kills: int, rows: int) -> tuple[list[float], float]:
    """Takeover times after kill -9 (database clock), and the bound lease_ttl + poll."""
    b = Bench(base / "failover", dsn, f"fo{uuid.uuid4().hex[:6]}")
    b.folder.mkdir()
    b.setup()
    doc = tomllib.loads((b.folder / "customer_settings.toml").read_text())
    bound = float(doc["defaults"].get("poll_interval", 2.0)) + float(
        doc["cluster"].get("lease_ttl", 15.0))
    times: list[float] = []
    added = 0
    try:
        b.start()
        b.start()
        for _ in range(kills):
            wait(b.settled, 180, "two nodes sharing the pipelines out", 0.2)
            owners = b.leases()
            live = b.alive()
            victim = max(live, key=lambda n: [v[0] for v in owners.values()].count(n))
            moved = [p for p, v in owners.items() if v[0] == victim]
            before = added * PIPELINES
            wait(lambda n=before: b.b_count() == n, 60, "the B sides readable", 0.1)
            b.add_rows(added + 1, rows)  # killed in the middle of a sync
            added += rows
            target = added * PIPELINES
            wait(lambda n=before: b.b_count() > n, 120, "the sync of the new rows under way",
                 0.02)
            with psycopg.connect(dsn) as conn:
                os.kill(b.procs[victim].pid, signal.SIGKILL)
                row = conn.execute("SELECT now()").fetchone()
            assert row is not None
            killed_at = row[0]
            b.procs[victim].wait()

            def taken(m: list[str] = moved, v: str = victim) -> dict[str, Any] | None:
                now = b.leases()
                return now if all(p in now and now[p][0] != v for p in m) else None

            after = wait(taken, bound * 3, "the takeover of the killed node's pipelines", 0.1)
            times.append(max((after[p][2] - killed_at).total_seconds() for p in moved))
            wait(lambda t=target: b.b_count() >= t, 300, "the sync finishing", 0.2)
            b.start()  # a node joins in the victim's place
        got, want = b.b_count(), added * PIPELINES
        if got != want:
            raise SystemExit(f"cluster_bench: after the kills, {got} rows on the B sides, "
                             f"{want} expected")
    finally:
        b.stop()
    return times, bound


def with_database(dsn: str, dbname: str) -> str:
    """The URL ``dsn`` with another database."""
    return urlsplit(dsn)._replace(path=f"/{dbname}").geturl()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000,
                        help="rows added to each of the 8 sides A per throughput run")
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3,
                        help="throughput runs of 1 then 2 nodes, interleaved; median ratio")
    args = parser.parse_args()
    began = time.perf_counter()
    try:
        admin = psycopg.connect(DSN, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        print(f"cluster_bench skipped: PostgreSQL at {DSN} is unreachable "
              f"({str(exc).strip()})")
        return 0
    compile_bytecode()  # a user's recsyncd starts from bytecode
    dbname = f"recsync_cluster_bench_{uuid.uuid4().hex[:8]}"
    admin.execute(f"CREATE DATABASE {dbname}")
    dsn = with_database(DSN, dbname)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            create_tables(conn, "recsync")  # as the nodes do: read from the start
        with tempfile.TemporaryDirectory(prefix="recsync-clusterbench-") as tmp:
            base = Path(tmp)
            ratios: list[float] = []
            for r in range(args.rounds):
                runs = []
                for nodes in (1, 2):
                    (base / f"r{r}").mkdir(exist_ok=True)
                    run = throughput(base / f"r{r}", dsn, nodes, args.rows)
                    runs.append(run)
                    print(f"{nodes} node(s), {PIPELINES} pipelines SQLite -> SQLite, state in "
                          f"PostgreSQL: {run.rows} rows in {run.seconds:.1f} s, "
                          f"{run.rate:,.0f} records/s; CPU (cores): recsyncd "
                          f"{run.recsyncd_cpu:.2f}, PostgreSQL backends "
                          f"{run.postgres_cpu:.2f}, whole machine {run.machine_busy:.2f} "
                          f"of {os.cpu_count()}; PostgreSQL rows written per record: "
                          + ", ".join(f"{t} {n:.2f}" for t, n in sorted(run.state_rows.items())),
                          flush=True)
                ratios.append(runs[1].rate / runs[0].rate)
                cores = os.cpu_count() or 1
                costs = [f"{r.nodes} node(s) {r.cost()[0]:.0f} + {r.cost()[1]:.0f}" for r in runs]
                print(f"CPU per record, recsyncd + PostgreSQL (us): {'; '.join(costs)}; on "
                      f"{cores} idle cores these costs would allow 2 nodes / 1 node = "
                      f"{runs[1].ceiling(cores) / runs[0].ceiling(cores):.2f}x", flush=True)
            ratio = statistics.median(ratios)
            print(f"2 nodes / 1 node: {ratio:.2f}x "
                  f"({', '.join(f'{x:.2f}' for x in ratios)}) (target >= 1.5x: "
                  f"{'met' if ratio >= 1.5 else 'MISSED'})", flush=True)
            if args.kills <= 0:
                print("failover: not measured (--kills 0)")
            else:
                times, bound = failover(base, dsn, args.kills, 2000)
                print(f"failover after kill -9 ({len(times)} kills): median "
                      f"{statistics.median(times):.2f} s, max {max(times):.2f} s "
                      f"({', '.join(f'{t:.2f}' for t in times)}) (target <= lease_ttl + poll "
                      f"= {bound:g} s: {'met' if max(times) <= bound else 'MISSED'})")
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
        admin.close()
    print(f"cluster_bench took {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
