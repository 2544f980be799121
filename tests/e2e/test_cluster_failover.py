"""Several recsyncd processes on one ``[cluster]``: the leases share the pipelines out;
kill -9 of a node moves its pipelines to the others within lease_ttl + one poll interval
with nothing lost or duplicated; a node frozen (SIGSTOP) past its lease writes nothing more
once resumed. Real processes, the state in the machine's PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from typing import Any

from tests.e2e.cluster import (
    STATE_ENV,
    Cluster,
    add_rows,
    assert_exact,
    b_rows,
    cluster,
    fair,
    setup,
    synced,
)
from tests.e2e.helpers import recsyncd_cmd, wait_for
from tests.pgfixture import PG_DSN, pg

_FIXTURES = (cluster, pg)  # used as fixtures by name


def test_kill_9_moves_a_nodes_pipelines_to_the_others(cluster: Cluster) -> None:
    c = cluster
    setup(c, 4, 300)
    for name in ("n1", "n2", "n3"):
        c.start(name)
    wait_for(lambda: fair(c, ["n1", "n2", "n3"]) and synced(c, 300), timeout=60,
             what="three nodes sharing four pipelines, all synced")
    # every node's share is ceil(4 / 3) = 2, and each runs only what it holds
    owners = c.owners()

    def shown() -> dict[str, str | None]:
        return {pid: p["node"] for pid, p in c.status("n1").items()}

    # any node's status names each pipeline's owner (its figures are a second old)
    wait_for(lambda: shown() == owners, timeout=60, what="status naming the owners")
    listing = c.cli("cluster", "--config-dir", str(c.folder), "--json")
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
    killed_at = c.db_now()
    c.procs[victim].wait()
    wait_for(lambda: all(c.owners().get(p) not in (None, c.node(victim))
                         for p in moved), timeout=60, what="the takeover")
    after = c.leases()
    takeovers = [(after[p][2] - killed_at).total_seconds() for p in moved]
    for p in moved:
        assert after[p][1] == before[p][1] + 1  # a takeover increments the token
    # the bound: lease_ttl + one poll interval (as the database's clock measures it)
    assert max(takeovers) <= c.ttl + c.poll, takeovers
    print(f"failover after kill -9: {sorted(round(t, 3) for t in takeovers)} s")
    wait_for(lambda: synced(c, 600), timeout=60, what="the others finishing the sync")
    assert_exact(c, 600)


def test_a_second_live_node_with_the_same_name_is_refused(cluster: Cluster) -> None:
    c = cluster
    setup(c, 1, 10)
    c.start("n1")
    wait_for(lambda: c.owners().get(c.pipelines[0]) == c.node("n1"), timeout=60,
             what="n1 running the pipeline")
    twin = subprocess.run(
        [*recsyncd_cmd(c.folder, c.folder / "state-twin"), "--node", c.node("n1"),
         "--endpoint", c.endpoint("twin")],
        capture_output=True, text=True, timeout=60, env={**os.environ, STATE_ENV: PG_DSN})
    assert twin.returncode == 2
    assert f"node name {c.node('n1')!r} is in use by a live recsyncd" in twin.stderr
    assert f"pid {c.procs['n1'].pid}" in twin.stderr


def test_a_node_frozen_past_its_lease_writes_nothing_more(cluster: Cluster) -> None:
    c = cluster
    setup(c, 2, 200)
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

    def refused() -> list[dict[str, Any]]:
        return [x for x in c.log_lines("n1") if x.get("pipeline") == frozen[0] and (
            "no longer holds its lease" in str(x.get("error"))
            or "lost the lease" in str(x.get("error")))]

    found = wait_for(refused, timeout=60, what="n1 saying its lease is lost")
    assert found

    wait_for(lambda: synced(c, 400), timeout=60, what="n2 syncing the new rows")
    # n1 holds nothing it had (n2 owns both; n1 may get one back under a new token)
    lease = c.leases()[frozen[0]]
    assert lease[1] > token
    assert_exact(c, 400)


def test_a_node_joining_gets_its_fair_share_handed_over(cluster: Cluster) -> None:
    c = cluster
    setup(c, 2, 200)
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
    # a takeover increments the token (on a loaded machine the lease may move once more)
    assert len(handed) == 1 and after[handed[0]][1] > before[handed[0]][1]
    listing = c.cli("cluster", "--config-dir", str(c.folder))
    assert listing.returncode == 0, listing.stderr
    assert f"{handed[0]}  {c.node('n2')}  {after[handed[0]][1]}  " in listing.stdout
    assert f"{c.node('n1')}  " in listing.stdout and "1: " + handed[0] in listing.stdout
    wait_for(lambda: synced(c, 400), timeout=60, what="both syncing the new rows")
    assert_exact(c, 400)


def test_a_frozen_node_whose_name_was_taken_stops_once_resumed(cluster: Cluster) -> None:
    """n1 is frozen past its heartbeat and a new recsyncd starts under its name: once
    resumed, the old process can never renew its leases again, so it stops its pipelines
    and exits (status 1) saying it was replaced, instead of running on, logging failed
    renewals, with a status of running pipelines; the new one keeps the name."""
    c = cluster
    setup(c, 1, 20)
    old = c.start("n1")
    wait_for(lambda: c.owned_by("n1") == c.pipelines and synced(c, 20), timeout=60,
             what="n1 owning the pipeline, synced")
    os.kill(old.pid, signal.SIGSTOP)

    def heartbeat_live() -> bool:
        rows = c.run("SELECT heartbeat_at > now() - make_interval(secs => %s) FROM nodes "
                     "WHERE node = %s", (c.ttl, c.node("n1")))
        return bool(rows and rows[0][0])

    wait_for(lambda: not heartbeat_live(), timeout=60, what="n1's heartbeat expiring")
    (c.folder / "run-new").mkdir(mode=0o700)
    new = subprocess.Popen(
        [*recsyncd_cmd(c.folder, c.folder / "state-new"), "--node", c.node("n1"),
         "--endpoint", f"ipc://{c.folder}/run-new/control.sock",
         "--log-file", str(c.folder / "new.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "RUNTIME_DIRECTORY": str(c.folder / "run-new"),
             STATE_ENV: PG_DSN, "PGAPPNAME": c.node("n1")})
    c.procs["new"] = new
    wait_for(lambda: c.run("SELECT pid FROM nodes WHERE node = %s", (c.node("n1"),))
             == [(new.pid,)] and c.owned_by("n1") == c.pipelines, timeout=60,
             what="the new process owning the pipeline under the name")
    os.kill(old.pid, signal.SIGCONT)
    assert old.wait(timeout=60) == 1
    assert old.stderr is not None
    err = old.stderr.read().decode()
    assert f"node {c.node('n1')} was replaced by another recsyncd" in err, err
    assert new.poll() is None
    assert c.run("SELECT pid FROM nodes WHERE node = %s", (c.node("n1"),)) == [(new.pid,)]
    add_rows(c, 21, 30)
    wait_for(lambda: synced(c, 30), timeout=60, what="the new process syncing")
    assert_exact(c, 30)
