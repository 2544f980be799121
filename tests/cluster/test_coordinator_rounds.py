"""When a node's coordinator looks again: a dead node's pipelines are taken over at the
expiry of its leases, and every lease is taken before any of its pipelines starts."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from recsync.cluster.coordinator import Coordinator
from recsync.cluster.leases import Leases
from recsync.config import AppConfig, load_config
from tests.pgfixture import PgSchema

TTL = 15.0
NOW = "(SELECT t FROM fake_clock)"  # the database's time, moved on by the test


class Node:
    """What the coordinator drives of a daemon: its configuration, and the pipelines it
    starts and stops (noted, with the leases held when each started)."""

    def __init__(self, config: AppConfig, leases: Leases) -> None:
        self.config, self.leases_of = config, leases
        self.running: list[str] = []
        self.held_at_start: list[int] = []

    def begin_owned(self, cfg: Any) -> None:
        self.running.append(cfg.id)
        self.held_at_start.append(len(self.leases_of.tokens))

    def stop_owned(self, pid: str, reason: str | None) -> None:
        self.running.remove(pid)

    def drain_pipeline(self, pid: str, timeout: float) -> None:
        pass

    def publish(self, kind: str, body: dict[str, Any]) -> None:
        pass


def config(folder: Path, count: int) -> AppConfig:
    pipes = "".join(textwrap.dedent(f"""
        [customers.c.pipelines.p{i}]
        rules = "r"
        a = {{ connector = "postgres", dsn = "postgresql://db/app", table = "a{i}", key = "id" }}
        b = {{ connector = "postgres", dsn = "postgresql://db/app", table = "b{i}", key = "id" }}
        """) for i in range(1, count + 1))
    (folder / "customer_settings.toml").write_text(pipes)
    (folder / "rules.toml").write_text('[r]\na_to_b = ["create"]\n[r.mappings]\nid = "id"\n')
    return load_config(folder)


def test_a_dead_nodes_pipelines_are_taken_at_its_leases_expiry(pg: PgSchema,
                                                               tmp_path: Path) -> None:
    pg.run("CREATE TABLE fake_clock (t TIMESTAMPTZ NOT NULL)")
    pg.run("INSERT INTO fake_clock VALUES ('2026-01-01T00:00:00Z')")
    cfg = config(tmp_path, 4)
    leases = {n: Leases(pg.dsn, n, TTL, schema=pg.schema, host="h", pid=1, boot=n,
                        now_sql=NOW) for n in ("n1", "n2")}
    try:
        nodes = {n: Node(cfg, lz) for n, lz in leases.items()}
        coord = {n: Coordinator(leases[n], nodes[n]) for n in leases}
        for lz in leases.values():
            lz.register()
        coord["n1"].tick()
        coord["n2"].tick()
        coord["n1"].tick()  # n1 over its share of 2 (it took all 4 alone): hands 2 over
        coord["n2"].tick()
        assert sorted(nodes["n1"].running + nodes["n2"].running) == sorted(cfg.pipelines)
        assert len(nodes["n2"].running) == 2
        # n1 dies right after a round; n2 has just renewed at the same moment
        pg.run("UPDATE fake_clock SET t = t + make_interval(secs => 1)")
        coord["n1"].tick()
        coord["n2"].tick()
        # 12 s on, n1's leases expire in 3 s: n2's next look is then, not ttl/3 = 5 s on
        pg.run("UPDATE fake_clock SET t = t + make_interval(secs => 12)")
        coord["n2"].tick()
        assert 2.9 < coord["n2"]._next_round() < 3.1
        pg.run("UPDATE fake_clock SET t = t + make_interval(secs => 3.05)")
        coord["n2"].tick()
        assert sorted(nodes["n2"].running) == sorted(cfg.pipelines)  # all four, n1 gone
        # the two taken over started once both leases were held
        assert nodes["n2"].held_at_start[-2:] == [4, 4]
    finally:
        for lz in leases.values():
            lz.close()
