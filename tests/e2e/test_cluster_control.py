"""Control across the nodes of a ``[cluster]``: a pipeline's command sent to any node
reaches its owner; a pipeline no node owns answers NO_OWNER; a command whose owner was
killed goes to the new owner; events carry their node; a node whose config differs owns
nothing until a reload makes it match. Real recsyncd processes, the state in PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from recsync.client import ControlClient
from recsync.daemon import protocol as p
from recsync.errors import ControlError
from recsync.sqlident import quote_ident
from tests.e2e.cluster import (
    STATE_ENV,
    Cluster,
    add_rows,
    b_rows,
    cluster,
    fair,
    setup,
    synced,
)
from tests.e2e.helpers import recsyncd_cmd, sql, wait_for
from tests.e2e.test_metrics import free_port, scrape
from tests.pgfixture import PG_DSN, pg

nodes = cluster  # the fixture: a customer and a PostgreSQL schema of its own, cleaned up
_FIXTURES = (pg,)  # used as a fixture by name


def start_in(c: Cluster, name: str, config_dir: Path, *extra: str) -> None:
    """Start node ``name`` of ``c`` on the config files of ``config_dir``."""
    (c.folder / f"run-{name}").mkdir(mode=0o700, exist_ok=True)
    c.procs[name] = subprocess.Popen(
        [*recsyncd_cmd(config_dir, c.folder / f"state-{name}"), "--node", c.node(name),
         "--endpoint", c.endpoint(name), "--log-file", str(c.folder / f"{name}.log"),
         *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "RUNTIME_DIRECTORY": str(c.folder / f"run-{name}"),
             STATE_ENV: PG_DSN, "PGAPPNAME": c.node(name)})


def client(c: Cluster, name: str) -> ControlClient:
    return ControlClient(c.endpoint(name), timeout=60)


def status(c: Cluster, name: str) -> dict[str, dict[str, Any]]:
    with client(c, name) as cli:
        result = cli.request(p.StatusGet())
    return {s["pipeline"]: s for s in result["pipelines"]}


def cli_run(c: Cluster, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "recsync.cli", "--endpoint",
                           c.endpoint(name), *args], capture_output=True, text=True,
                          timeout=120)


def two_nodes(c: Cluster) -> tuple[dict[str, str], str, str]:
    """n1 and n2 sharing p1 and p2, synced: (owners, a pipeline of n2, its name)."""
    setup(c, 2, 50)
    c.start("n1")
    c.start("n2")
    wait_for(lambda: fair(c, ["n1", "n2"]) and synced(c, 50), timeout=90,
             what="two nodes sharing two pipelines, all synced")
    owners = c.owners()
    theirs = next(pid for pid, n in owners.items() if n == c.node("n2"))
    return owners, theirs, theirs.rsplit("/", 1)[1]


def test_a_pipeline_command_sent_to_any_node_reaches_its_owner(nodes: Cluster) -> None:
    c = nodes
    try:
        owners, theirs, name = two_nodes(c)
        ours = next(pid for pid in owners if pid != theirs)
        # pause, sent to n1, acts on n2's pipeline, as if sent to n2
        paused = cli_run(c, "n1", "pause", c.customer, "--pipeline", name, "--json")
        assert paused.returncode == 0, paused.stderr
        assert json.loads(paused.stdout) == {"count": 1, "pipelines": [theirs]}
        wait_for(lambda: status(c, "n2")[theirs]["state"] == "paused", timeout=30,
                 what="n2's pipeline paused by a command sent to n1")
        assert status(c, "n1")[ours]["state"] == "running"  # n1's own one untouched
        # while paused, new rows stay on A; sync now (via n1) is answered by the owner
        with client(c, "n1") as cli:
            again = cli.request(p.Pause(c.customer, name))
            assert again == {"count": 0, "pipelines": []}  # already paused: as n2 says
            assert cli.request(p.SyncNow(c.customer, name)) == {
                "count": 1, "pipelines": [theirs]}
            # resume, for the whole customer (both owners), merges both answers
            both = cli.request(p.Resume(c.customer))
            assert both == {"count": 1, "pipelines": [theirs]}
        wait_for(lambda: status(c, "n2")[theirs]["state"] == "running", timeout=30,
                 what="n2's pipeline resumed by a command sent to n1")
        # rules test and retry answer the same from either node
        record = {"record_id": 7, "full_name": "Seven", "email_address": "s@x.org",
                  "status": "active"}
        with client(c, "n1") as one, client(c, "n2") as two:
            assert one.request(p.RulesTest("contacts", record)) == two.request(
                p.RulesTest("contacts", record))
            for cli in (one, two):
                with pytest.raises(ControlError) as err:
                    cli.request(p.RetryRecord("999"))
                assert err.value.code == "NOT_FOUND"
            # a real sync of n2's pipeline, sent through n1
            n = cli_run(c, "n1", "sync", "now", c.customer, "--pipeline", name)
            assert n.returncode == 0, n.stderr
        sql(c.side(theirs, "a"), "UPDATE users SET full_name = 'Via n1' WHERE record_id = 3")
        wait_for(lambda: ("Via n1",) in [(r[1],) for r in b_rows(c, theirs)], timeout=30,
                 what="n2 syncing its pipeline after the commands through n1")
    finally:
        c.stop_all()


def test_a_pipeline_no_node_owns_answers_no_owner(nodes: Cluster) -> None:
    c = nodes
    setup(c, 2, 10)
    orphan = c.pipelines[1]
    # its last owner was a node on another host, now gone: with a SQLite side, the
    # pipeline may not move to this host, and nobody owns it
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f"INSERT INTO {quote_ident(c.schema)}.nodes (node, host, pid, boot, "
                     "heartbeat_at) "
                     "VALUES (%s, 'elsewhere', 1, 'x', now() - interval '1 hour')",
                     (c.node("gone"),))
        conn.execute(f"INSERT INTO {quote_ident(c.schema)}.leases (pipeline, node, token, "
                     "expires_at, "
                     "acquired_at) VALUES (%s, %s, 4, now() - interval '1 hour', now())",
                     (orphan, c.node("gone")))
    try:
        c.start("n1")
        wait_for(lambda: c.owners().get(c.pipelines[0]) == c.node("n1"), timeout=60,
                 what="n1 owning the first pipeline")
        with client(c, "n1") as cli:
            with pytest.raises(ControlError) as err:
                cli.request(p.Pause(c.customer, orphan.rsplit("/", 1)[1]))
            assert err.value.code == "NO_OWNER"
            assert f"pipeline {orphan} has no owner now" in str(err.value)
            # a command for the customer's pipelines says the same: it cannot act on all
            with pytest.raises(ControlError) as err:
                cli.request(p.SyncNow(c.customer))
            assert err.value.code == "NO_OWNER"
            # the owned one still answers on its own
            assert cli.request(p.Pause(c.customer, "p1")) == {
                "count": 1, "pipelines": [c.pipelines[0]]}
        shown = cli_run(c, "n1", "pause", c.customer, "--pipeline", "p2")
        assert shown.returncode != 0
        assert "has no owner now" in shown.stderr
    finally:
        c.stop_all()


def test_a_command_whose_owner_was_killed_reaches_the_new_owner(nodes: Cluster) -> None:
    c = nodes
    try:
        _, theirs, name = two_nodes(c)
        c.procs["n2"].kill()
        c.procs["n2"].wait()
        # n1 still reads n2 as the owner (its lease lives on until the ttl): the command
        # fails to reach n2, and is sent once more, to the node that takes the lease over
        with client(c, "n1") as cli:
            answer = cli.request(p.Pause(c.customer, name))
        assert answer == {"count": 1, "pipelines": [theirs]}
        assert c.owners()[theirs] == c.node("n1")
        wait_for(lambda: status(c, "n1")[theirs]["state"] == "paused", timeout=30,
                 what="the pipeline paused on its new owner")
    finally:
        c.stop_all()


def test_every_nodes_events_reach_any_node_in_a_stable_order(nodes: Cluster) -> None:
    c = nodes
    try:
        two_nodes(c)
        seen: dict[str, p.Event] = {}
        with client(c, "n1") as cli, cli.subscribe(["pipeline_state"]) as sub:
            def both() -> bool:
                # a subscription joins a moment after it is made: pause (and resume) until
                # it has seen both pipelines paused
                cli.request(p.Pause(c.customer))
                while (event := sub.recv(0.5)) is not None:
                    if event.data.get("state") == "paused":
                        seen[event.data["pipeline"]] = event
                cli.request(p.Resume(c.customer))
                return len(seen) == 2
            wait_for(both, timeout=60, what="pause events of both pipelines on n1's stream")
        owners = c.owners()
        for pid, event in seen.items():
            assert event.node == owners[pid]  # each from the node that paused it
            assert event.boot
        # `recsync events` on n2 shows both nodes' events, merged in (ts, node, boot, seq)
        follow = subprocess.Popen(
            [sys.executable, "-m", "recsync.cli", "--endpoint", c.endpoint("n2"), "events",
             "--json", "--kind", "pipeline_state", "--count", "4"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            def subscribed() -> bool:  # resume both, again and again, until it has 4
                with client(c, "n1") as cli:
                    cli.request(p.Resume(c.customer))
                    cli.request(p.Pause(c.customer))
                return follow.poll() is not None
            wait_for(subscribed, timeout=60, what="recsync events printing 4 events")
        finally:
            if follow.poll() is None:
                follow.kill()
        out, err = follow.communicate()
        assert follow.returncode == 0, err
        lines = [json.loads(x) for x in out.splitlines()]
        assert {x["node"] for x in lines} == {c.node("n1"), c.node("n2")}
        order = [(x["ts"], x["node"], x["boot"], x["seq"]) for x in lines]
        assert order == sorted(order)
        # `recsync logs` merges the nodes' log files in time order, each line with its node
        merged = subprocess.run(
            [sys.executable, "-m", "recsync.cli", "logs", "--json", "--file",
             str(c.folder / "n1.log"), "--file", str(c.folder / "n2.log")],
            capture_output=True, text=True, timeout=60)
        assert merged.returncode == 0, merged.stderr
        entries = [json.loads(x) for x in merged.stdout.splitlines()]
        assert {e.get("node") for e in entries} == {c.node("n1"), c.node("n2")}
        stamps = [e["ts"] for e in entries]
        assert stamps == sorted(stamps)
    finally:
        c.stop_all()


def test_a_node_whose_config_differs_owns_nothing_until_it_matches(
        nodes: Cluster, tmp_path: Path) -> None:
    c = nodes
    setup(c, 2, 20)
    other = tmp_path / "other"
    other.mkdir()
    for name in ("customer_settings.toml", "rules.toml"):
        (other / name).write_text((c.folder / name).read_text())
    rules = other / "rules.toml"
    rules.write_text(rules.read_text() + '\n[spare]\na_to_b = ["create"]\n'
                     '[spare.mappings]\nrecord_id = "record_id"\n')
    try:
        c.start("n1")
        wait_for(lambda: len(c.owners()) == 2, timeout=60, what="n1 owning both")
        # n2 runs with another rules.toml (same pipelines, paths from the cluster folder)
        for i in (1, 2):
            for side in ("a", "b"):
                (other / f"{side}{i}.sqlite").symlink_to(c.folder / f"{side}{i}.sqlite")
        start_in(c, "n2", other)
        log = c.folder / "n2.log"

        def said() -> bool:
            return log.exists() and "owning no pipeline" in log.read_text()
        wait_for(said, timeout=60, what="n2 logging that its config differs")
        note = wait_for(lambda: status(c, "n1").get(c.pipelines[0]) and
                        cluster_notes(c, "n1"), timeout=30, what="status saying so")
        assert any(f"node {c.node('n2')}" in n and "owns no pipeline" in n for n in note)
        shown = cli_run(c, "n1", "status")
        assert shown.returncode == 0, shown.stderr
        assert f"config differs: node {c.node('n2')}: its customer_settings.toml" in \
            shown.stdout
        assert set(c.owners().values()) == {c.node("n1")}  # n2 took nothing
        listing = subprocess.run(
            [sys.executable, "-m", "recsync.cli", "cluster", "--config-dir", str(c.folder),
             "--json"], capture_output=True, text=True, timeout=60,
            env={**os.environ, STATE_ENV: PG_DSN})
        assert listing.returncode == 0, listing.stderr
        mine = {n["node"]: n for n in json.loads(listing.stdout)["nodes"]}
        assert mine[c.node("n2")]["config"] == "differs: owns nothing"
        assert mine[c.node("n1")]["config"] == "matches"
        # the same rules again, reloaded: n2 matches and takes its share
        rules.write_text((c.folder / "rules.toml").read_text())
        with client(c, "n2") as cli:
            cli.request(p.Reload())
        wait_for(lambda: fair(c, ["n1", "n2"]) and c.node("n2") in c.owners().values(),
                 timeout=60, what="n2 taking its share once its config matches")
        wait_for(lambda: not cluster_notes(c, "n1"), timeout=30,
                 what="status no longer naming n2 (read each lease round)")
    finally:
        c.stop_all()


def cluster_notes(c: Cluster, name: str) -> list[str]:
    with client(c, name) as cli:
        return list(cli.request(p.StatusGet())["config_mismatch"])


def curve_dirs(c: Cluster, names: list[str]) -> dict[str, tuple[bytes, bytes]]:
    """A CURVE folder per node (its server key pair; the other nodes' public keys and the
    test client's allowed); returns each node's (public, secret) keys, and the client's."""
    import zmq.auth

    made: dict[str, tuple[bytes, bytes]] = {}
    (c.folder / "keys").mkdir()
    for name in [*names, "client", "stranger"]:
        _, secret = zmq.auth.create_certificates(c.folder / "keys", name)
        made[name] = zmq.auth.load_certificate(secret)  # type: ignore[assignment]
    for name in names:
        folder = c.folder / f"curve-{name}"
        (folder / "authorized_clients").mkdir(parents=True)
        secret_file = c.folder / "keys" / f"{name}.key_secret"
        (folder / "server.key_secret").write_bytes(secret_file.read_bytes())
        for other in [*names, "client"]:
            if other != name:
                (folder / "authorized_clients" / f"{other}.key").write_bytes(
                    (c.folder / "keys" / f"{other}.key").read_bytes())
    return made


def test_nodes_with_curve_forward_over_ipc_and_their_tcp_control_bind(nodes: Cluster) -> None:
    import dataclasses
    import socket

    from recsync.cluster.leases import Leases
    from recsync.cluster.routing import Forward
    from recsync.daemon.runtime import CurveKeys

    c = nodes
    setup(c, 2, 10)
    settings = c.folder / "customer_settings.toml"
    settings.write_text(settings.read_text().replace(
        "lease_ttl =", 'control_bind = "tcp://127.0.0.1:*"\nlease_ttl ='))
    keys = curve_dirs(c, ["n1", "n2"])

    def as_client(name: str, who: str = "client", timeout: float = 60) -> ControlClient:
        public, secret = keys[who]
        return ControlClient(c.endpoint(name), timeout=timeout, curve_keys=CurveKeys(
            public, secret, keys[name][0]))

    try:
        for name in ("n1", "n2"):
            start_in(c, name, c.folder, "--curve-dir", str(c.folder / f"curve-{name}"))
        wait_for(lambda: fair(c, ["n1", "n2"]), timeout=90, what="two nodes, one each")
        theirs = next(pid for pid, n in c.owners().items() if n == c.node("n2"))
        name = theirs.rsplit("/", 1)[1]
        # n1 forwards to n2 over n2's ipc socket, authenticated by its own key pair
        with as_client("n1") as cli:
            assert cli.request(p.Pause(c.customer, name)) == {"count": 1,
                                                              "pipelines": [theirs]}
        # from another host, n2 is reached on its tcp:// control_bind (CURVE)
        probe = Leases(PG_DSN, "probe", 2.0, schema=c.schema)
        try:
            row = next(n for n in probe.nodes() if n.node == c.node("n2"))
        finally:
            probe.close()
        assert any(e.startswith("tcp://127.0.0.1:") for e in row.endpoints.split())
        elsewhere = dataclasses.replace(row, host=f"not-{socket.gethostname()}")
        request = p.encoder.encode(p.Request(p.API_VERSION, p.Resume(c.customer, name),
                                             p.Route(c.node("n1"), [theirs])))
        assert Forward(socket.gethostname(), keys["n1"])(elsewhere, request, 60) == {
            "count": 1, "pipelines": [theirs]}
        # a key the node does not know gets no answer
        with pytest.raises(ControlError) as err:
            Forward(socket.gethostname(), keys["stranger"])(elsewhere, request, 2)
        assert err.value.code == "UNAVAILABLE"
    finally:
        c.stop_all()


def test_control_bind_without_curve_keys_is_refused(nodes: Cluster) -> None:
    c = nodes
    setup(c, 1, 1)
    settings = c.folder / "customer_settings.toml"
    settings.write_text(settings.read_text().replace(
        "lease_ttl =", 'control_bind = "tcp://127.0.0.1:*"\nlease_ttl ='))
    start_in(c, "n1", c.folder)
    proc = c.procs["n1"]
    assert proc.wait(timeout=60) == 2
    assert proc.stderr is not None
    assert "control_bind = 'tcp://127.0.0.1:*' needs recsyncd --curve-dir" in \
        proc.stderr.read().decode()


def test_a_pause_stays_with_the_pipeline_when_it_moves_to_another_node(nodes: Cluster) -> None:
    """`recsync pause` is kept in the cluster's state, not only in the memory of the node
    that ran the pipeline: the node that takes the pipeline over (one joining, or a
    survivor after kill -9) starts it paused, and the rows added meanwhile stay on A
    until `recsync resume`."""
    c = nodes
    setup(c, 2, 20)
    c.start("n1")
    wait_for(lambda: len(c.owned_by("n1")) == 2 and synced(c, 20), timeout=90,
             what="n1 alone owning both pipelines, synced")
    paused = cli_run(c, "n1", "pause", c.customer)
    assert paused.returncode == 0, paused.stderr
    assert "paused" in paused.stdout
    add_rows(c, 21, 30)  # stays on A while paused, wherever the pipelines run

    def states(name: str) -> dict[str, str]:
        return {pid: s["state"] for pid, s in status(c, name).items()
                if s.get("node") == c.node(name)}

    c.start("n2")  # joins: takes its share, one pipeline, from n1
    wait_for(lambda: len(c.owned_by("n2")) == 1 and states("n2").get(c.owned_by("n2")[0])
             in ("running", "paused"), timeout=90, what="n2 running the pipeline it took")
    moved = c.owned_by("n2")[0]
    assert states("n2")[moved] == "paused"
    # n1 is killed: n2 takes its other pipeline over, paused as well
    c.procs["n1"].kill()
    c.procs["n1"].wait()
    wait_for(lambda: len(c.owned_by("n2")) == 2 and all(
        s in ("running", "paused") for s in states("n2").values())
        and len(states("n2")) == 2, timeout=90, what="n2 running both pipelines")
    assert states("n2") == dict.fromkeys(c.pipelines, "paused")
    assert all(len(b_rows(c, pid)) == 20 for pid in c.pipelines)  # nothing synced
    resumed = cli_run(c, "n2", "resume", c.customer, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout) == {"count": 2, "pipelines": sorted(c.pipelines)}
    wait_for(lambda: synced(c, 30), timeout=60, what="the rows synced after the resume")
    assert c.run("SELECT count(*) FROM paused")[0][0] == 0  # the resume cleared it


def test_the_metrics_of_a_node_are_labelled_with_its_node_name(nodes: Cluster) -> None:
    """The ``node`` label of a node's metrics is its --node name (as in its leases), not
    the host's name, which every node on one host shares."""
    c = nodes
    setup(c, 2, 5)
    ports = {name: free_port() for name in ("n1", "n2")}
    for name, port in ports.items():
        start_in(c, name, c.folder, "--metrics-port", f"127.0.0.1:{port}")
    wait_for(lambda: fair(c, ["n1", "n2"]) and synced(c, 5), timeout=90,
             what="two nodes sharing two pipelines, synced")
    for name, port in ports.items():
        owned = wait_for(lambda port=port: {
            dict(labels)["pipeline"]: dict(labels)["node"]
            for (metric, labels), v in scrape(port).items()
            if metric == "recsync_lease_owned" and v == 1}, timeout=30,
            what=f"the lease metrics of {name}")
        assert owned == dict.fromkeys(c.owned_by(name), c.node(name))
        # the pipeline figures (cluster-wide totals) come from the owner only: summed over
        # the nodes, each pipeline counts once
        exported = {dict(labels)["pipeline"] for (metric, labels), _v in scrape(port).items()
                    if metric == "recsync_records_synced_total"}
        assert exported == set(c.owned_by(name))
