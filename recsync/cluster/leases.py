"""Nodes and leases in the cluster's PostgreSQL schema, timed by the database's clock.

``nodes(node, host, pid, boot, heartbeat_at)``: one row per recsyncd (``--node``); a node
is live while its heartbeat is younger than the lease ttl. ``leases(pipeline, node, token,
expires_at)``: who may write a pipeline's state. Acquiring or taking over a lease (one that
is free or expired) increments its token; renewing keeps it. ``paused(pipeline, node,
paused_at)``: the pipelines an operator paused (``recsync pause``), whichever node runs them:
a node that takes one over starts it paused. ``fence`` runs first in every
state write transaction and refuses it unless this node still holds the pipeline's lease,
unexpired, with the token it acquired (``FOR SHARE``: a takeover waits for the
transaction to end), so a node that lost its lease (frozen, cut off) writes nothing more.

Every time is the database's ``clock_timestamp()``, not ``now()``: a statement that waited
for a row lock must not date a lease from before its wait (``now_sql``: tests give an
expression of their own to move time on), never a node's clock.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from recsync.errors import RecsyncError, StateError
from recsync.sqlident import quote_ident as _ident

TABLES = """
CREATE TABLE IF NOT EXISTS {s}.nodes (
    node TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, boot TEXT NOT NULL,
    heartbeat_at TIMESTAMPTZ NOT NULL);
CREATE TABLE IF NOT EXISTS {s}.leases (
    pipeline TEXT PRIMARY KEY, node TEXT NOT NULL, token BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL, acquired_at TIMESTAMPTZ NOT NULL);
CREATE TABLE IF NOT EXISTS {s}.paused (
    pipeline TEXT PRIMARY KEY, node TEXT NOT NULL, paused_at TIMESTAMPTZ NOT NULL);
"""
# columns added to ``nodes`` since (control across the nodes); added when missing only: an
# ALTER TABLE locks the table out for every node, even when it changes nothing
NODE_COLUMNS = {
    "endpoints": "TEXT NOT NULL DEFAULT ''", "curve_public": "TEXT NOT NULL DEFAULT ''",
    "config_hash": "TEXT NOT NULL DEFAULT ''", "started_at": "TIMESTAMPTZ",
    "event_endpoints": "TEXT NOT NULL DEFAULT ''",
}
_LOCK_ID = 0x72656374  # pg_advisory_xact_lock while the tables are created


class LeaseLost(StateError):
    """A state write of a pipeline whose lease this node no longer holds (refused)."""


class NodeNameTaken(RecsyncError):
    """Another live recsyncd already runs under this node name."""


@dataclass(frozen=True)
class NodeRow:
    node: str
    host: str
    pid: int
    boot: str
    heartbeat_at: datetime
    live: bool
    # where its control socket listens (space-separated: ipc://... on its host, tcp://...)
    endpoints: str = ""
    curve_public: str = ""  # z85 public key of its tcp:// endpoint (CURVE), if any
    config_hash: str = ""  # of its customer_settings.toml + rules.toml (see confighash)
    started_at: datetime | None = None
    event_endpoints: str = ""  # where its events are published (as ``endpoints``)


@dataclass(frozen=True)
class LeaseRow:
    pipeline: str
    node: str
    token: int
    expires_at: datetime
    live: bool  # not expired
    acquired_at: datetime
    expires_in: float  # seconds from the database's now


def create_tables(conn: psycopg.Connection[Any], schema: str) -> None:
    """The nodes and leases tables (idempotent, safe to race)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_ident(schema)}")
        for statement in TABLES.format(s=_ident(schema)).split(";"):
            if statement.strip():
                conn.execute(statement)
        have = {r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s "
            "AND table_name = 'nodes'", (schema,)).fetchall()}
        for name, kind in NODE_COLUMNS.items():
            if name not in have:
                conn.execute(f"ALTER TABLE {_ident(schema)}.nodes ADD COLUMN IF NOT EXISTS "
                             f"{name} {kind}")


class Leases:
    """One node's view of the nodes and leases (its own connection, thread-safe)."""

    def __init__(self, dsn: str, node: str, ttl: float, *, schema: str = "recsync",
                 host: str = "", pid: int = 0, boot: str = "",
                 now_sql: str = "clock_timestamp()") -> None:
        self.node, self.ttl, self.host, self.pid, self.boot = node, ttl, host, pid, boot
        self.schema = schema
        self.now = now_sql
        self._lock = threading.Lock()
        self._dsn = dsn
        # A statement still unanswered after ttl/2 has its connection cut (_watch): by then
        # this node writes nothing more anyway (Coordinator.permit), and a silent network
        # (packets dropped, not refused) would otherwise hold the leases thread, and a stop
        # waiting for it, for as long as TCP keeps a dead connection (hours).
        self.deadline = max(0.5, ttl / 2)
        self._busy_since: float | None = None
        self._cut = False  # the watchdog shut the connection down: the next call reconnects
        self._watch_lock = threading.Lock()  # a cut and the end of a statement, one at a time
        self._closing = threading.Event()
        self.conn = self._connect()
        try:
            create_tables(self.conn, schema)
            self._setup(self.conn)
        except BaseException:
            self.conn.close()
            raise
        threading.Thread(target=self._watch, name="leases-watchdog", daemon=True).start()
        self.tokens: dict[str, int] = {}  # the leases this node holds: pipeline -> token
        self.endpoints = ""  # advertised to the other nodes (advertise)
        self.event_endpoints = ""
        self.curve_public = ""
        self.config_hash = ""

    def _connect(self) -> psycopg.Connection[Any]:
        # (libpq waits at least 2 s whatever it is given)
        return psycopg.connect(self._dsn, autocommit=True,
                               connect_timeout=max(2, min(10, int(self.deadline))))

    def _setup(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(f"SET search_path = {_ident(self.schema)}")
        # a lease row held by a stalled writer (FOR SHARE) fails this node's statement
        # after ttl/3 instead of stalling its rounds (and so its own renewals)
        conn.execute(f"SET lock_timeout = {max(1, int(self.ttl * 1000 / 3))}")

    def _x(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            if self._closing.is_set():  # the node left: no connection nothing would close
                raise StateError("the cluster's leases of this node are closed (it left)")
            fresh = self._cut or self.conn.closed or self.conn.broken  # cut, or lost
            if fresh:
                self.conn.close()
                self.conn = self._connect()  # bounded by its connect_timeout
                self._cut = False
            self._busy_since = time.monotonic()
            try:
                if fresh:  # watched like the statement: the network may fall silent now
                    try:
                        self._setup(self.conn)
                    except BaseException:
                        self.conn.close()  # never used without its search_path
                        raise
                cur = self.conn.execute(sql.replace("{now}", self.now), params)
                return cur.fetchall() if cur.description else []
            except psycopg.OperationalError as exc:
                if time.monotonic() - self._busy_since >= self.deadline:
                    raise StateError(
                        f"the cluster's state database did not answer the leases within "
                        f"{self.deadline:g} s (lease_ttl/2); the connection was closed and "
                        "the next round connects again") from exc
                raise
            finally:
                with self._watch_lock:  # after this, no cut can reach this statement
                    self._busy_since = None

    def _watch(self) -> None:
        """Cut the connection of a statement unanswered for ``deadline``: the blocked call
        then fails at once (shutdown wakes its wait on the socket). Under ``_watch_lock``,
        so a statement answered meanwhile is never cut, nor the next one's connection."""
        while not self._closing.wait(self.deadline / 4):
            with self._watch_lock:
                since = self._busy_since
                if since is None or time.monotonic() - since < self.deadline:
                    continue
                self._cut = True
                with contextlib.suppress(OSError, psycopg.Error):
                    fd = os.dup(self.conn.fileno())
                    with socket.socket(fileno=fd) as sock:
                        sock.shutdown(socket.SHUT_RDWR)

    # -- nodes -------------------------------------------------------------------------------
    def register(self) -> None:
        """Join as ``node``, unless a live node (another boot) has the name.

        Raises:
            NodeNameTaken: a live node with this name exists.
        """
        rows = self._x(
            "INSERT INTO nodes AS n (node, host, pid, boot, heartbeat_at, endpoints, "
            "curve_public, config_hash, started_at, event_endpoints) "
            "VALUES (%s, %s, %s, %s, {now}, %s, %s, %s, {now}, %s) ON CONFLICT (node) DO UPDATE "
            "SET host = excluded.host, pid = excluded.pid, boot = excluded.boot, "
            "heartbeat_at = excluded.heartbeat_at, endpoints = excluded.endpoints, "
            "curve_public = excluded.curve_public, config_hash = excluded.config_hash, "
            "event_endpoints = excluded.event_endpoints, "
            "started_at = CASE WHEN n.boot = excluded.boot THEN n.started_at "
            "ELSE excluded.started_at END "
            "WHERE n.boot = excluded.boot OR n.heartbeat_at < {now} - make_interval(secs => %s) "
            "RETURNING node", (self.node, self.host, self.pid, self.boot, self.endpoints,
                               self.curve_public, self.config_hash, self.event_endpoints,
                               self.ttl))
        if not rows:
            other = self._x("SELECT host, pid FROM nodes WHERE node = %s", (self.node,))
            where = f" (host {other[0][0]}, pid {other[0][1]})" if other else ""
            raise NodeNameTaken(
                f"node name {self.node!r} is in use by a live recsyncd{where}; give this one "
                "another name (--node NAME or $RECSYNC_NODE), or stop the other first")

    def heartbeat(self) -> bool:
        """Refresh this node's heartbeat; False: another boot took the name."""
        return bool(self._x("UPDATE nodes SET heartbeat_at = {now} WHERE node = %s AND "
                            "boot = %s RETURNING node", (self.node, self.boot)))

    def advertise(self, *, endpoints: str | None = None, curve_public: str | None = None,
                  config_hash: str | None = None, event_endpoints: str | None = None) -> None:
        """Tell the other nodes where this node's control socket is, and its config hash."""
        if endpoints is not None:
            self.endpoints = endpoints
        if event_endpoints is not None:
            self.event_endpoints = event_endpoints
        if curve_public is not None:
            self.curve_public = curve_public
        if config_hash is not None:
            self.config_hash = config_hash
        self._x("UPDATE nodes SET endpoints = %s, curve_public = %s, config_hash = %s, "
                "event_endpoints = %s WHERE node = %s AND boot = %s",
                (self.endpoints, self.curve_public, self.config_hash, self.event_endpoints,
                 self.node, self.boot))

    def leave(self) -> None:
        """Release every lease and drop this node's row (a clean stop)."""
        for pipeline in list(self.tokens):
            self.release(pipeline)
        self._x("DELETE FROM nodes WHERE node = %s AND boot = %s", (self.node, self.boot))

    def nodes(self) -> list[NodeRow]:
        rows = self._x("SELECT node, host, pid, boot, heartbeat_at, heartbeat_at >= {now} - "
                       "make_interval(secs => %s), endpoints, curve_public, config_hash, "
                       "started_at, event_endpoints FROM nodes ORDER BY node", (self.ttl,))
        return [NodeRow(*r) for r in rows]

    def live_nodes(self) -> list[NodeRow]:
        return [n for n in self.nodes() if n.live]

    # -- leases ------------------------------------------------------------------------------
    def acquire(self, pipeline: str, same_host: bool = False) -> int | None:
        """Take the pipeline's lease if it is free or expired: its new token, or None.
        ``same_host``: only from a node on this host (a pipeline with a local file)."""
        # a lease whose node row is gone may be taken over from any host
        host_ok = (" AND coalesce((SELECT host FROM nodes WHERE nodes.node = l.node), "
                   "%(host)s) = %(host)s") if same_host else ""
        rows = self._x(
            "INSERT INTO leases AS l (pipeline, node, token, expires_at, acquired_at) VALUES "
            "(%(p)s, %(n)s, 1, {now} + make_interval(secs => %(ttl)s), {now}) "
            "ON CONFLICT (pipeline) DO UPDATE SET node = excluded.node, token = l.token + 1, "
            "expires_at = excluded.expires_at, acquired_at = excluded.acquired_at "
            "WHERE l.expires_at <= {now}" + host_ok +
            " RETURNING token", {"p": pipeline, "n": self.node, "ttl": self.ttl,
                                 "host": self.host})
        if not rows:
            return None
        token = int(rows[0][0])
        self.tokens[pipeline] = token
        return token

    def renew(self, pipeline: str) -> bool:
        """Extend the lease this node holds; False (and forgotten): it was lost."""
        token = self.tokens.get(pipeline)
        if token is None:
            return False
        rows = self._x("UPDATE leases SET expires_at = {now} + make_interval(secs => %s) "
                       "WHERE pipeline = %s AND node = %s AND token = %s AND expires_at > {now} "
                       "RETURNING token", (self.ttl, pipeline, self.node, token))
        if not rows:
            self.tokens.pop(pipeline, None)
            return False
        return True

    def release(self, pipeline: str) -> None:
        """Give the lease up (after the pipeline stopped): free for the others at once."""
        token = self.tokens.pop(pipeline, None)
        if token is not None:
            self._x("UPDATE leases SET expires_at = {now} WHERE pipeline = %s AND "
                    "node = %s AND token = %s", (pipeline, self.node, token))

    def leases(self) -> list[LeaseRow]:
        rows = self._x("SELECT pipeline, node, token, expires_at, expires_at > {now}, "
                       "acquired_at, extract(epoch FROM expires_at - {now})::float8 "
                       "FROM leases ORDER BY pipeline")
        return [LeaseRow(*r) for r in rows]

    # -- pauses (recsync pause / resume), kept for whichever node runs the pipeline --------
    def set_paused(self, pipeline: str, paused: bool) -> None:
        """Note (or clear) an operator's pause of ``pipeline`` for the whole cluster."""
        if paused:
            self._x("INSERT INTO paused (pipeline, node, paused_at) VALUES (%s, %s, {now}) "
                    "ON CONFLICT (pipeline) DO NOTHING", (pipeline, self.node))
        else:
            self._x("DELETE FROM paused WHERE pipeline = %s", (pipeline,))

    def is_paused(self, pipeline: str) -> bool:
        """Whether an operator paused ``pipeline`` (and no one resumed it since)."""
        return bool(self._x("SELECT 1 FROM paused WHERE pipeline = %s", (pipeline,)))

    # -- the fence of state writes -----------------------------------------------------------
    def fence(self, backend: Any) -> None:
        """First in a state write transaction on ``backend.conn`` (same schema): refuse it
        unless this node holds ``backend.pipeline``'s lease with its token, unexpired.

        Raises:
            LeaseLost: the write is refused.
        """
        pipeline = backend.pipeline
        token = self.tokens.get(pipeline)
        if token is not None:
            row = backend.conn.execute(
                ("SELECT 1 FROM leases WHERE pipeline = %s AND node = %s AND token = %s "
                 "AND expires_at > {now} FOR SHARE").replace("{now}", self.now),
                (pipeline, self.node, token)).fetchone()
            if row is not None:
                return
        held = f"token {token}" if token is not None else "no lease"
        raise LeaseLost(f"pipeline {pipeline}: node {self.node} ({held}) no longer holds its "
                        "lease; the state write is refused (another node owns the pipeline "
                        "now)")

    def close(self) -> None:
        self._closing.set()
        self.conn.close()
