"""The ttl/2 rule: a node that could not renew its leases for lease_ttl/2 (by its own,
injectable clock) writes nothing more to the sides, well before another node may take the
pipeline over at ttl; what it held back goes out once it renews. A real daemon in this
process, its leases' connection to PostgreSQL through a TCP forwarder the test pauses."""

from __future__ import annotations

import logging
import sqlite3
import textwrap
import threading
from pathlib import Path

import psycopg
import pytest

from recsync.clock import FakeClock
from recsync.cluster.leases import Leases
from recsync.cluster.node import join
from recsync.config import load_config
from recsync.daemon.app import Daemon
from recsync.errors import StateError
from tests.e2e.cluster import LOOSE_USERS, RULES, STATE_ENV
from tests.e2e.helpers import make_users, sql, wait_for
from tests.pgfixture import PG_DSN, PgSchema, pg
from tests.tcpproxy import TcpProxy, pg_proxy

_FIXTURES = (pg, pg_proxy)  # used as fixtures by name
TTL = 30.0  # the node's own rounds (every ttl/3) stay out of the way: the test renews


def rows(path: Path) -> list[tuple[object, ...]]:
    return sorted(sql(path, "SELECT record_id, full_name, email_address, status FROM users"))


def add(path: Path, first: int, last: int) -> None:
    with sqlite3.connect(path, timeout=30) as conn:
        conn.executemany("INSERT INTO users (record_id, full_name, email_address, status) "
                         "VALUES (?, ?, ?, 'active')",
                         [(n, f"User {n}", f"u{n}@example.com") for n in range(first, last + 1)])
    conn.close()


def test_a_node_silent_for_half_the_ttl_writes_nothing_to_the_sides(
        tmp_path: Path, pg: PgSchema, pg_proxy: TcpProxy, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    a, b = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    make_users(a, [(n, f"User {n}", f"u{n}@example.com", "active") for n in range(1, 21)])
    make_users(b, [], schema=LOOSE_USERS)
    (tmp_path / "rules.toml").write_text(RULES)
    (tmp_path / "customer_settings.toml").write_text(textwrap.dedent(f"""
        [defaults]
        flush_interval = 0.05
        poll_interval = 0.1
        [cluster]
        state_env = "{STATE_ENV}"
        schema = "{pg.schema}"
        lease_ttl = {TTL}
        [customers.c.pipelines.p]
        rules = "contacts"
        a = {{ connector = "sqlite", path = "a.sqlite", table = "users", key = "record_id" }}
        b = {{ connector = "sqlite", path = "b.sqlite", table = "users", key = "record_id" }}
        """))
    caplog.set_level(logging.WARNING, logger="recsync.actors.connector")
    clock = FakeClock()
    daemon = Daemon(load_config(tmp_path), tmp_path / "state", config_dir=tmp_path)
    monkeypatch.setenv(STATE_ENV, pg_proxy.dsn(PG_DSN))  # the leases: through the forwarder
    coordinator = join(daemon, "n1", monotonic=clock.monotonic)
    monkeypatch.setenv(STATE_ENV, PG_DSN)  # the pipeline's state: direct
    daemon.start()
    try:
        wait_for(lambda: rows(b) == rows(a), timeout=60, what="the first sync")

        def held_back() -> bool:
            return any(r.getMessage() == "write held back" for r in caplog.records)

        pg_proxy.pause()  # from now on no renewal gets through
        clock.advance(TTL / 2 - 0.5)  # silent for just under ttl/2: still writing
        add(a, 21, 30)
        wait_for(lambda: len(rows(b)) == 30, timeout=30, what="a write before ttl/2")
        assert not held_back()
        clock.advance(0.5)  # ttl/2 without a renewal
        add(a, 31, 40)
        wait_for(held_back, timeout=30, what="the node holding its writes back")
        record = next(r for r in caplog.records if r.getMessage() == "write held back")
        assert "could not renew its leases for 15.0 s" in str(record.__dict__.get("error"))
        assert len(rows(b)) == 30  # nothing written after ttl/2 of silence

        pg_proxy.resume()
        coordinator.tick()  # its next round: the lease (30 s by the database) is renewed
        wait_for(lambda: rows(b) == rows(a), timeout=60, what="the held-back rows going out")
        assert len(rows(b)) == 40  # once each
    finally:
        pg_proxy.resume()
        daemon.stop()


def test_a_leases_statement_the_network_never_answers_is_cut_and_the_next_one_reconnects(
        pg: PgSchema, pg_proxy: TcpProxy) -> None:
    """A silent network (packets dropped, not refused) during a renewal: the statement is
    given up after lease_ttl/2 with an error that says so, instead of holding the leases
    thread (and a stop waiting for it) for as long as TCP keeps a dead connection; once
    the network is back, the next statement gets through on a new connection."""
    leases = Leases(pg_proxy.dsn(PG_DSN), "n1", 2.0, schema=pg.schema, host="h", boot="b")
    outcome: dict[str, object] = {}

    def heartbeat() -> None:
        try:
            outcome["beat"] = leases.heartbeat()
        except StateError as exc:
            outcome["error"] = exc

    try:
        leases.register()
        pg_proxy.pause()
        stuck = threading.Thread(target=heartbeat)
        stuck.start()
        stuck.join(timeout=30)
        assert not stuck.is_alive(), "the heartbeat is still waiting for the network"
        assert "did not answer the leases within 1 s" in str(outcome.get("error")), outcome
        pg_proxy.resume()
        assert leases.heartbeat()  # through a new connection
    finally:
        pg_proxy.resume()
        leases.close()


def test_the_setup_of_a_new_leases_connection_is_cut_too_when_the_network_falls_silent(
        pg: PgSchema, pg_proxy: TcpProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    """The network falls silent right after a reconnect's handshake, before its SET
    statements (search_path, lock_timeout) are answered: those are cut after lease_ttl/2
    like any other statement, instead of holding the leases thread (and a stop) for as
    long as TCP keeps a dead connection."""
    leases = Leases(pg_proxy.dsn(PG_DSN), "n1", 2.0, schema=pg.schema, host="h", boot="b")
    connect = psycopg.connect

    def connect_then_silence(*args: object, **kwargs: object) -> object:
        conn = connect(*args, **kwargs)
        pg_proxy.pause()
        return conn

    outcome: dict[str, object] = {}

    def heartbeat() -> None:
        try:
            outcome["beat"] = leases.heartbeat()
        except Exception as exc:  # what the round gets
            outcome["error"] = exc

    try:
        leases.register()
        leases.conn.close()  # the next statement connects again
        monkeypatch.setattr(psycopg, "connect", connect_then_silence)
        stuck = threading.Thread(target=heartbeat)
        stuck.start()
        stuck.join(timeout=15)
        assert not stuck.is_alive(), "the new connection's setup is still waiting"
        assert isinstance(outcome.get("error"), StateError), outcome
        monkeypatch.setattr(psycopg, "connect", connect)
        pg_proxy.resume()
        assert leases.heartbeat()  # through a new connection
    finally:
        pg_proxy.resume()
        leases.close()


def test_closed_leases_open_no_connection_again(pg: PgSchema) -> None:
    """After close() (the node left), a late call (a control request routed while the
    daemon stops) fails instead of opening a connection nothing closes (and no watchdog
    guards: it ended with close)."""
    leases = Leases(PG_DSN, "n1", 2.0, schema=pg.schema, host="h", boot="b")
    leases.register()
    leases.close()
    with pytest.raises(StateError):
        leases.nodes()
    assert leases.conn.closed
