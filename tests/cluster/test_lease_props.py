"""Leases and fencing tokens against the real PostgreSQL: any interleaving of acquire,
renew, release, the database's time moving on (a node frozen, its lease expiring) and
state writes never lets two nodes commit state for one pipeline under one token, and a
write commits exactly when its node holds the lease (unexpired, with its token)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from recsync.cluster.leases import LeaseLost, Leases
from tests.pgfixture import PgSchema

NODES = ("n1", "n2", "n3")
PIPELINES = ("c/p1", "c/p2")
TTL = 10.0
NOW = "(SELECT t FROM fake_clock)"  # the database's time, moved on by the test


@dataclass
class Held:
    node: str
    token: int
    expires: float


class Writer:
    """What the fence sees of a pipeline's state backend: its pipeline and connection."""

    def __init__(self, conn: psycopg.Connection[Any], pipeline: str) -> None:
        self.conn, self.pipeline = conn, pipeline


def machine(pg: PgSchema, leases: dict[str, Leases],
            writers: dict[str, psycopg.Connection[Any]]) -> type[RuleBasedStateMachine]:
    class LeaseMachine(RuleBasedStateMachine):
        @initialize()
        def fresh(self) -> None:
            pg.run("TRUNCATE leases, nodes, writes")
            pg.run("UPDATE fake_clock SET t = '2026-01-01T00:00:00Z'")
            for node in leases.values():
                node.tokens.clear()
            self.t = 0.0
            self.model: dict[str, Held] = {}

        @rule(node=st.sampled_from(NODES), pipeline=st.sampled_from(PIPELINES))
        def acquire(self, node: str, pipeline: str) -> None:
            held = self.model.get(pipeline)
            free = held is None or held.expires <= self.t
            token = leases[node].acquire(pipeline)
            assert (token is not None) == free
            if token is not None:
                assert held is None or token == held.token + 1
                self.model[pipeline] = Held(node, token, self.t + TTL)

        @rule(node=st.sampled_from(NODES), pipeline=st.sampled_from(PIPELINES))
        def renew(self, node: str, pipeline: str) -> None:
            held, mine = self.model.get(pipeline), leases[node].tokens.get(pipeline)
            ok = (held is not None and held.node == node and held.token == mine
                  and held.expires > self.t)
            assert leases[node].renew(pipeline) == ok
            if ok:
                assert held is not None
                held.expires = self.t + TTL

        @rule(node=st.sampled_from(NODES), pipeline=st.sampled_from(PIPELINES))
        def release(self, node: str, pipeline: str) -> None:
            held, mine = self.model.get(pipeline), leases[node].tokens.get(pipeline)
            leases[node].release(pipeline)
            if held is not None and held.node == node and held.token == mine:
                held.expires = self.t

        @rule(seconds=st.floats(min_value=0.5, max_value=1.5 * TTL))
        def time_passes(self, seconds: float) -> None:  # every node frozen meanwhile
            self.t += seconds
            pg.run("UPDATE fake_clock SET t = t + make_interval(secs => %s)", (seconds,))

        @rule(node=st.sampled_from(NODES), pipeline=st.sampled_from(PIPELINES))
        def write(self, node: str, pipeline: str) -> None:
            held, mine = self.model.get(pipeline), leases[node].tokens.get(pipeline)
            ok = (held is not None and held.node == node and held.token == mine
                  and held.expires > self.t)
            conn = writers[node]
            try:
                with conn.transaction():
                    leases[node].fence(Writer(conn, pipeline))
                    conn.execute("INSERT INTO writes (pipeline, node, token) VALUES "
                                 "(%s, %s, %s)", (pipeline, node, mine))
            except LeaseLost:
                assert not ok, f"{node} holds {pipeline} (token {mine}) yet was refused"
                return
            assert ok, f"{node} wrote {pipeline} under token {mine} without its lease"

        @invariant()
        def one_node_per_token(self) -> None:
            shared = pg.run("SELECT pipeline, token FROM writes GROUP BY pipeline, token "
                            "HAVING count(DISTINCT node) > 1")
            assert not shared
            backwards = pg.run(
                "SELECT 1 FROM (SELECT token, lag(token) OVER (PARTITION BY pipeline "
                "ORDER BY seq) AS before FROM writes) w WHERE token < before")
            assert not backwards  # tokens only grow, in commit order

    return LeaseMachine


def test_no_two_nodes_write_a_pipeline_under_one_token(pg: PgSchema) -> None:
    pg.run("CREATE TABLE fake_clock (t TIMESTAMPTZ NOT NULL)")
    pg.run("INSERT INTO fake_clock VALUES ('2026-01-01T00:00:00Z')")
    leases = {n: Leases(pg.dsn, n, TTL, schema=pg.schema, host="h", pid=1, boot=n,
                        now_sql=NOW) for n in NODES}
    pg.run("CREATE TABLE writes (seq BIGINT GENERATED ALWAYS AS IDENTITY, pipeline TEXT, "
           "node TEXT, token BIGINT)")
    writers = {n: pg.connect() for n in NODES}
    try:
        run_state_machine_as_test(
            machine(pg, leases, writers),
            settings=settings(max_examples=25, stateful_step_count=30, deadline=None,
                              suppress_health_check=list(HealthCheck)))
    finally:
        for node in leases.values():
            node.close()
        for conn in writers.values():
            conn.close()


def test_a_takeover_waits_for_a_write_under_way(pg: PgSchema) -> None:
    """The fence holds the lease row (FOR SHARE) until its transaction ends: a takeover
    of an expired lease cannot slip in between the check and the commit."""
    pg.run("CREATE TABLE fake_clock (t TIMESTAMPTZ NOT NULL)")
    pg.run("INSERT INTO fake_clock VALUES ('2026-01-01T00:00:00Z')")
    a = Leases(pg.dsn, "a", TTL, schema=pg.schema, host="h", boot="a", now_sql=NOW)
    b = Leases(pg.dsn, "b", TTL, schema=pg.schema, host="h", boot="b", now_sql=NOW)
    writer = pg.connect()
    try:
        assert a.acquire("c/p") == 1
        with writer.transaction():
            a.fence(Writer(writer, "c/p"))
            pg.run("UPDATE fake_clock SET t = t + make_interval(secs => %s)", (TTL * 2,))
            b.conn.execute("SET lock_timeout = '200ms'")
            with pytest.raises(psycopg.errors.LockNotAvailable):
                b.acquire("c/p")
        assert b.acquire("c/p") == 2  # after the write committed
        with pytest.raises(LeaseLost, match=r"node a \(token 1\) no longer holds"), \
                writer.transaction():
            a.fence(Writer(writer, "c/p"))
    finally:
        a.close()
        b.close()
        writer.close()
