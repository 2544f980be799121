"""Several recsyncd processes on one ``[cluster]``: the leases share the pipelines out;
kill -9 of a node moves its pipelines to the others within lease_ttl + one poll interval
with nothing lost or duplicated; a node frozen (SIGSTOP) past its lease writes nothing more
once resumed. Real processes, the state in the machine's PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from recsync.cluster.leases import create_tables
from tests.e2e.helpers import make_users, recsyncd_cmd, sql, wait_for
from tests.pgfixture import PG_DSN, require_pg

# One xdist worker runs the tests whose nodes join the machine's shared cluster tables
# (recsync.nodes / recsync.leases): a live node of another test changes the node count
# that the fair share and the budget split divide by.
pytestmark = pytest.mark.xdist_group("cluster")

TTL = 2.0
POLL = 0.1
STATE_TABLES = ("meta", "cursors", "links", "queue", "history", "listing_seen", "rekeys",
                "bulk_jobs")
# no unique key on B: a record written twice shows up twice
LOOSE_USERS = """
CREATE TABLE users (record_id INTEGER, full_name TEXT, email_address TEXT, status TEXT,
                    updated_at REAL)
"""
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


@dataclass
class Cluster:
    folder: Path
    customer: str
    pipelines: list[str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def node(self, name: str) -> str:
        return f"{self.customer}-{name}"

    def start(self, name: str) -> subprocess.Popen[bytes]:
        node = self.node(name)
        (self.folder / f"run-{name}").mkdir(mode=0o700, exist_ok=True)
        proc = subprocess.Popen(
            [*recsyncd_cmd(self.folder, self.folder / f"state-{name}"), "--node", node,
             "--endpoint", self.endpoint(name),
             "--log-file", str(self.folder / f"{name}.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env={**os.environ, "RUNTIME_DIRECTORY": str(self.folder / f"run-{name}")})
        self.procs[name] = proc
        return proc

    def endpoint(self, name: str) -> str:
        return f"ipc://{self.folder}/run-{name}/control.sock"

    def leases(self) -> dict[str, tuple[str, int, datetime, bool]]:
        """pipeline -> (owner node, token, acquired_at, live)"""
        with psycopg.connect(PG_DSN) as conn:
            rows = conn.execute(
                "SELECT pipeline, node, token, acquired_at, expires_at > now() "
                "FROM recsync.leases WHERE pipeline = ANY(%s)", (self.pipelines,)).fetchall()
        return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}

    def owners(self) -> dict[str, str]:
        return {p: v[0] for p, v in self.leases().items() if v[3]}

    def side(self, pid: str, which: str) -> Path:
        return self.folder / f"{which}{pid.rsplit('/p', 1)[1]}.sqlite"


def db_now() -> datetime:
    with psycopg.connect(PG_DSN) as conn:
        row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    require_pg()
    customer = f"c{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        create_tables(conn, "recsync")  # as the nodes do: the test reads them from the start
    yield Cluster(tmp_path, customer, [])
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute("DELETE FROM recsync.leases WHERE pipeline LIKE %s", (customer + "/%",))
        conn.execute("DELETE FROM recsync.nodes WHERE node LIKE %s", (customer + "-%",))
        for table in STATE_TABLES:
            conn.execute(f"DELETE FROM recsync.{table} WHERE pipeline LIKE %s",
                         (customer + "/%",))


def setup(c: Cluster, count: int, rows: int) -> None:
    lines = []
    for i in range(1, count + 1):
        make_users(c.folder / f"a{i}.sqlite",
                   [(n, f"User {n}", f"u{n}@example.com", "active") for n in range(1, rows + 1)])
        make_users(c.folder / f"b{i}.sqlite", [], schema=LOOSE_USERS)
        lines.append(textwrap.dedent(f"""
            [customers.{c.customer}.pipelines.p{i}]
            rules = "contacts"
            a = {{ connector = "sqlite", path = "a{i}.sqlite", table = "users", key = "record_id" }}
            b = {{ connector = "sqlite", path = "b{i}.sqlite", table = "users", key = "record_id" }}
            """))
        c.pipelines.append(f"{c.customer}/p{i}")
    (c.folder / "customer_settings.toml").write_text(textwrap.dedent(f"""
        [defaults]
        batch_size = 200
        flush_interval = 0.05
        poll_interval = {POLL}
        retry_base_delay = 0.05
        retry_max_delay = 0.2
        [cluster]
        state = "{PG_DSN}"
        lease_ttl = {TTL}
        """) + "".join(lines))
    (c.folder / "rules.toml").write_text(RULES)


def add_rows(c: Cluster, first: int, last: int) -> None:
    for pid in c.pipelines:
        with sqlite3.connect(c.side(pid, "a")) as conn:
            conn.executemany(
                "INSERT INTO users (record_id, full_name, email_address, status) "
                "VALUES (?, ?, ?, ?)",
                [(n, f"User {n}", f"u{n}@example.com", "active")
                 for n in range(first, last + 1)])
        conn.close()


def b_rows(c: Cluster, pid: str) -> list[tuple[Any, ...]]:
    return sql(c.side(pid, "b"), "SELECT record_id, full_name, email_address, status "
               "FROM users")


def synced(c: Cluster, rows: int) -> bool:
    try:
        return all(len(b_rows(c, pid)) >= rows for pid in c.pipelines)
    except sqlite3.Error:  # a look while a killed writer's file is recovered: look again
        return False


def assert_exact(c: Cluster, rows: int) -> None:
    for pid in c.pipelines:
        a = sql(c.side(pid, "a"), "SELECT record_id, full_name, email_address, status "
                "FROM users")
        b = b_rows(c, pid)
        assert len(a) == rows, pid
        assert sorted(b) == sorted(a), f"{pid}: {len(b)} rows on B for {len(a)} on A"


def stop_all(c: Cluster) -> None:
    for proc in c.procs.values():
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
    for proc in c.procs.values():
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def fair(c: Cluster, nodes: list[str]) -> bool:
    owners = c.owners()
    share = -(-len(c.pipelines) // len(nodes))
    counts = [list(owners.values()).count(c.node(n)) for n in nodes]
    return len(owners) == len(c.pipelines) and max(counts) <= share


def test_kill_9_moves_a_nodes_pipelines_to_the_others(cluster: Cluster) -> None:
    c = cluster
    setup(c, 4, 300)
    try:
        for name in ("n1", "n2", "n3"):
            c.start(name)
        wait_for(lambda: fair(c, ["n1", "n2", "n3"]) and synced(c, 300), timeout=60,
                 what="three nodes sharing four pipelines, all synced")
        # every node's share is ceil(4 / 3) = 2, and each runs only what it holds
        owners = c.owners()

        def shown() -> dict[str, str | None]:
            status = subprocess.run(
                [sys.executable, "-m", "recsync.cli", "--endpoint", c.endpoint("n1"),
                 "status", "--json"], capture_output=True, text=True, timeout=60)
            assert status.returncode == 0, status.stderr
            return {p["pipeline"]: p["node"] for p in json.loads(status.stdout)["pipelines"]}

        # any node's status names each pipeline's owner (its figures are a second old)
        wait_for(lambda: shown() == owners, timeout=60, what="status naming the owners")
        listing = subprocess.run(
            [sys.executable, "-m", "recsync.cli", "cluster", "--config-dir", str(c.folder),
             "--json"], capture_output=True, text=True, timeout=60)
        assert listing.returncode == 0, listing.stderr
        mine = {n["node"]: n for n in json.loads(listing.stdout)["nodes"]
                if n["node"].startswith(c.customer)}
        assert sorted(mine) == [c.node("n1"), c.node("n2"), c.node("n3")]
        assert mine[c.node("n2")]["pid"] == c.procs["n2"].pid
        assert sorted(mine[c.node("n2")]["pipelines"]) == sorted(
            p for p, n in owners.items() if n == c.node("n2"))

        # kill -9 the node with the most pipelines, in the middle of new work
        victim = max(("n1", "n2", "n3"),
                     key=lambda n: list(owners.values()).count(c.node(n)))
        moved = [p for p, n in owners.items() if n == c.node(victim)]
        assert moved
        before = c.leases()
        add_rows(c, 301, 600)
        wait_for(lambda: any(len(b_rows(c, p)) > 300 for p in moved), timeout=30,
                 what="the victim syncing new rows")
        c.procs[victim].kill()
        killed_at = db_now()
        c.procs[victim].wait()
        wait_for(lambda: all(c.owners().get(p) not in (None, c.node(victim))
                             for p in moved), timeout=60, what="the takeover")
        after = c.leases()
        takeovers = [(after[p][2] - killed_at).total_seconds() for p in moved]
        for p in moved:
            assert after[p][1] == before[p][1] + 1  # a takeover increments the token
        # the bound: lease_ttl + one poll interval (as the database's clock measures it)
        assert max(takeovers) <= TTL + POLL, takeovers
        print(f"failover after kill -9: {sorted(round(t, 3) for t in takeovers)} s")
        wait_for(lambda: synced(c, 600), timeout=60, what="the others finishing the sync")
        assert_exact(c, 600)
    finally:
        stop_all(c)


def test_a_second_live_node_with_the_same_name_is_refused(cluster: Cluster) -> None:
    c = cluster
    setup(c, 1, 10)
    try:
        c.start("n1")
        wait_for(lambda: c.owners().get(c.pipelines[0]) == c.node("n1"), timeout=60,
                 what="n1 running the pipeline")
        twin = subprocess.run(
            [*recsyncd_cmd(c.folder, c.folder / "state-twin"), "--node", c.node("n1"),
             "--endpoint", c.endpoint("twin")],
            capture_output=True, text=True, timeout=60)
        assert twin.returncode == 2
        assert f"node name {c.node('n1')!r} is in use by a live recsyncd" in twin.stderr
        assert f"pid {c.procs['n1'].pid}" in twin.stderr
    finally:
        stop_all(c)


def test_a_node_frozen_past_its_lease_writes_nothing_more(cluster: Cluster) -> None:
    c = cluster
    setup(c, 2, 200)
    try:
        c.start("n1")
        c.start("n2")
        wait_for(lambda: fair(c, ["n1", "n2"]) and synced(c, 200), timeout=60,
                 what="two nodes sharing two pipelines, all synced")
        owners = c.owners()
        frozen = [p for p, n in owners.items() if n == c.node("n1")]
        assert len(frozen) == 1
        token = c.leases()[frozen[0]][1]
        os.kill(c.procs["n1"].pid, signal.SIGSTOP)
        wait_for(lambda: c.owners().get(frozen[0]) == c.node("n2"), timeout=60,
                 what="n2 taking the frozen node's pipeline over")
        assert c.leases()[frozen[0]][1] == token + 1
        add_rows(c, 201, 400)  # work for both n2 and, once resumed, the stale n1
        os.kill(c.procs["n1"].pid, signal.SIGCONT)
        log = c.folder / "n1.log"

        def refused() -> list[dict[str, Any]]:
            lines = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
            return [x for x in lines if x.get("pipeline") == frozen[0] and (
                "no longer holds its lease" in str(x.get("error"))
                or "lost the lease" in str(x.get("error")))]

        found = wait_for(refused, timeout=60, what="n1 saying its lease is lost")
        assert found

        wait_for(lambda: synced(c, 400), timeout=60, what="n2 syncing the new rows")
        # n1 holds nothing it had (n2 owns both; n1 may get one back under a new token)
        lease = c.leases()[frozen[0]]
        assert lease[1] > token
        assert_exact(c, 400)
    finally:
        stop_all(c)


def test_a_node_joining_gets_its_fair_share_handed_over(cluster: Cluster) -> None:
    c = cluster
    setup(c, 2, 200)
    try:
        c.start("n1")
        wait_for(lambda: len(c.owners()) == 2 and synced(c, 200), timeout=60,
                 what="n1 running both pipelines")
        assert set(c.owners().values()) == {c.node("n1")}
        before = c.leases()
        c.start("n2")
        add_rows(c, 201, 400)
        # ceil(2 / 2) = 1 each: n1 drains one pipeline and releases it, n2 takes it
        wait_for(lambda: fair(c, ["n1", "n2"]) and c.node("n2") in c.owners().values(),
                 timeout=30, what="n1 handing one pipeline over to n2")
        after = c.leases()
        handed = [p for p, v in after.items() if v[0] == c.node("n2")]
        assert len(handed) == 1 and after[handed[0]][1] == before[handed[0]][1] + 1
        listing = subprocess.run(
            [sys.executable, "-m", "recsync.cli", "cluster", "--config-dir", str(c.folder)],
            capture_output=True, text=True, timeout=60)
        assert listing.returncode == 0, listing.stderr
        assert f"{handed[0]}  {c.node('n2')}  {after[handed[0]][1]}  " in listing.stdout
        assert f"{c.node('n1')}  " in listing.stdout and "1: " + handed[0] in listing.stdout
        wait_for(lambda: synced(c, 400), timeout=60, what="both syncing the new rows")
        assert_exact(c, 400)
    finally:
        stop_all(c)
