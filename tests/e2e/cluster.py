"""Several real recsyncd processes on one ``[cluster]`` for the cluster end-to-end tests:
the config (SQLite A -> SQLite B pipelines, the state in a PostgreSQL schema of the test's
own), starting, reading the leases, the sides' contents, and an audit of who wrote what.

Each node reads the state's URL from ``$RECSYNC_TEST_STATE`` (``[cluster] state_env``), so
one node can reach PostgreSQL through a ``tests.tcpproxy.TcpProxy`` the test pauses while
the config files stay the same for all; ``$PGAPPNAME`` is the node's name, so the audit
triggers (``audit_state``) know which node committed a state write.
"""

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
from recsync.sqlident import quote_ident
from recsync.state.pgbackend import create_schema
from tests.e2e.helpers import make_users, recsyncd_cmd, sql
from tests.pgfixture import PG_DSN, PgSchema

STATE_ENV = "RECSYNC_TEST_STATE"
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
# every committed state write: which node (application_name), when (the database's clock)
AUDIT = """
CREATE TABLE {s}.audit (node TEXT NOT NULL, pipeline TEXT, tab TEXT NOT NULL,
                        at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION {s}.audit_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO {s}.audit (node, pipeline, tab) VALUES (
    current_setting('application_name'),
    CASE WHEN TG_OP = 'DELETE' THEN OLD.pipeline ELSE NEW.pipeline END, TG_TABLE_NAME);
  RETURN NULL;
END $$;
"""
AUDITED = ("cursors", "links", "queue", "history")


@dataclass
class Cluster:
    folder: Path
    pg: PgSchema
    ttl: float
    poll: float
    pipelines: list[str] = field(default_factory=list)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    customer: str = field(default_factory=lambda: f"c{uuid.uuid4().hex[:10]}")

    _conn: psycopg.Connection[Any] | None = field(default=None, repr=False)

    @property
    def schema(self) -> str:
        return self.pg.schema

    def run(self, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
        """A statement on the test's schema, through one connection of the test's own (a
        new one per look, while the nodes hold theirs, can meet max_connections)."""
        if self._conn is None or self._conn.closed:
            self._conn = self.pg.connect()
        cur = self._conn.execute(statement, params)
        return cur.fetchall() if cur.description else []

    def node(self, name: str) -> str:
        return f"{self.customer}-{name}"

    def start(self, name: str, state_dsn: str = PG_DSN) -> subprocess.Popen[bytes]:
        """Start node ``name``; its state connections go to ``state_dsn``."""
        node = self.node(name)
        (self.folder / f"run-{name}").mkdir(mode=0o700, exist_ok=True)
        proc = subprocess.Popen(
            [*recsyncd_cmd(self.folder, self.folder / f"state-{name}"), "--node", node,
             "--endpoint", self.endpoint(name),
             "--log-file", str(self.log(name))],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env={**os.environ, "RUNTIME_DIRECTORY": str(self.folder / f"run-{name}"),
                 STATE_ENV: state_dsn, "PGAPPNAME": node})
        self.procs[name] = proc
        return proc

    def endpoint(self, name: str) -> str:
        return f"ipc://{self.folder}/run-{name}/control.sock"

    def log(self, name: str) -> Path:
        return self.folder / f"{name}.log"

    def log_lines(self, name: str) -> list[dict[str, Any]]:
        path = self.log(name)
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:  # the line being written
                continue
        return out

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``recsync ARGS`` as a user of this cluster runs it."""
        return subprocess.run([sys.executable, "-m", "recsync.cli", *args],
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, STATE_ENV: PG_DSN})

    def status(self, name: str) -> dict[str, dict[str, Any]]:
        """``recsync status --json`` of node ``name``: pipeline -> its entry."""
        result = self.cli("--endpoint", self.endpoint(name), "status", "--json")
        assert result.returncode == 0, result.stderr
        return {p["pipeline"]: p for p in json.loads(result.stdout)["pipelines"]}

    def leases(self) -> dict[str, tuple[str, int, datetime, bool, datetime]]:
        """pipeline -> (owner node, token, acquired_at, live, expires_at)"""
        rows = self.run("SELECT pipeline, node, token, acquired_at, expires_at > now(), "
                           "expires_at FROM leases WHERE pipeline = ANY(%s)",
                           (self.pipelines,))
        return {r[0]: (r[1], r[2], r[3], r[4], r[5]) for r in rows}

    def owners(self) -> dict[str, str]:
        return {p: v[0] for p, v in self.leases().items() if v[3]}

    def owned_by(self, name: str) -> list[str]:
        return sorted(p for p, n in self.owners().items() if n == self.node(name))

    def side(self, pid: str, which: str) -> Path:
        return self.folder / f"{which}{pid.rsplit('/p', 1)[1]}.sqlite"

    def db_now(self) -> datetime:
        return self.run("SELECT now()")[0][0]  # type: ignore[no-any-return]

    def audit_state(self) -> None:
        """From now on, record every committed state write (node, pipeline, time)."""
        s = quote_ident(self.schema)
        with self.pg.connect() as conn:
            conn.execute(AUDIT.format(s=s))
            for table in AUDITED:
                conn.execute(f"CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON "
                             f"{s}.{table} FOR EACH ROW EXECUTE FUNCTION {s}.audit_write()")

    def state_writes(self, name: str, pipeline: str | None = None,
                     after: datetime | None = None, before: datetime | None = None) -> int:
        """Committed state writes of node ``name`` (of ``pipeline``, in after..before)."""
        rows = self.run(
            "SELECT count(*) FROM audit WHERE node = %s AND (%s::text IS NULL OR "
            "pipeline = %s) AND (%s::timestamptz IS NULL OR at > %s) AND "
            "(%s::timestamptz IS NULL OR at < %s)",
            (self.node(name), pipeline, pipeline, after, after, before, before))
        return int(rows[0][0])

    def stop_all(self) -> None:
        if self._conn is not None:
            self._conn.close()
        for proc in self.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def cluster(tmp_path: Path, pg: PgSchema) -> Iterator[Cluster]:
    """A cluster of this test's own (its PostgreSQL schema dropped after): lease_ttl 2 s;
    poll_interval 0.5 s, the margin of the takeover bound (lease_ttl + one poll interval)
    for a round's latency on a loaded machine."""
    with pg.connect() as conn:  # as the nodes do: the test reads them from the start
        create_tables(conn, pg.schema)
        create_schema(conn, pg.schema)
    c = Cluster(tmp_path, pg, ttl=2.0, poll=0.5)
    yield c
    c.stop_all()


def setup(c: Cluster, count: int, rows: int, *, settings: str = "") -> None:
    """``count`` SQLite -> SQLite pipelines with ``rows`` rows on each A (B: no unique key,
    so a record written twice shows up twice)."""
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
        poll_interval = {c.poll}
        retry_base_delay = 0.05
        retry_max_delay = 0.2
        [cluster]
        state_env = "{STATE_ENV}"
        schema = "{c.schema}"
        lease_ttl = {c.ttl}
        """) + textwrap.dedent(settings) + "".join(lines))
    (c.folder / "rules.toml").write_text(RULES)


def add_rows(c: Cluster, first: int, last: int, pipelines: list[str] | None = None) -> None:
    for pid in pipelines or c.pipelines:
        with sqlite3.connect(c.side(pid, "a"), timeout=30) as conn:
            conn.executemany(
                "INSERT INTO users (record_id, full_name, email_address, status) "
                "VALUES (?, ?, ?, ?)",
                [(n, f"User {n}", f"u{n}@example.com", "active")
                 for n in range(first, last + 1)])
        conn.close()


def b_rows(c: Cluster, pid: str) -> list[tuple[Any, ...]]:
    return sql(c.side(pid, "b"), "SELECT record_id, full_name, email_address, status "
               "FROM users")


def a_rows(c: Cluster, pid: str) -> list[tuple[Any, ...]]:
    return sql(c.side(pid, "a"), "SELECT record_id, full_name, email_address, status "
               "FROM users")


def synced(c: Cluster, rows: int) -> bool:
    try:
        return all(len(b_rows(c, pid)) >= rows for pid in c.pipelines)
    except sqlite3.Error:  # a look while a killed writer's file is recovered: look again
        return False


def same(c: Cluster) -> bool:
    """Both sides of every pipeline hold the same rows."""
    try:
        return all(sorted(b_rows(c, p)) == sorted(a_rows(c, p)) for p in c.pipelines)
    except sqlite3.Error:
        return False


def assert_exact(c: Cluster, rows: int | None = None) -> None:
    """Each B holds exactly A's rows: none lost, none twice."""
    for pid in c.pipelines:
        a, b = a_rows(c, pid), b_rows(c, pid)
        if rows is not None:
            assert len(a) == rows, pid
        keys = [r[0] for r in b]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        assert not twice, f"{pid}: records written twice on B: {twice[:20]}"
        lost = sorted({r[0] for r in a} - set(keys))
        assert not lost, f"{pid}: records missing on B: {lost[:20]}"
        assert sorted(b) == sorted(a), f"{pid}: {len(b)} rows on B for {len(a)} on A"


def fair(c: Cluster, nodes: list[str]) -> bool:
    """Every pipeline owned, no node over ceil(pipelines / nodes)."""
    owners = c.owners()
    share = -(-len(c.pipelines) // len(nodes))
    counts = [list(owners.values()).count(c.node(n)) for n in nodes]
    return len(owners) == len(c.pipelines) and max(counts) <= share
