"""Chaos on a cluster of real recsyncd processes, the state in PostgreSQL: kill -9 of random
nodes at random moments while rows change, nodes joining and leaving. Whatever happens, the
sides end exact (0 lost, 0 duplicated) and every takeover is within lease_ttl + one poll
interval, as the lease rows (the database's clock) tell.

The random choices come from one seed, printed (``RECSYNC_CHAOS_SEED=N`` replays it).
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import threading
from datetime import datetime

import pytest

from tests.e2e.cluster import (
    Cluster,
    a_rows,
    assert_exact,
    b_rows,
    cluster,
    fair,
    same,
    setup,
)
from tests.e2e.helpers import kill_when, wait_for
from tests.pgfixture import PG_DSN, pg
from tests.tcpproxy import TcpProxy, pg_proxy

_FIXTURES = (cluster, pg, pg_proxy)  # used as fixtures by name
NODES = ["n1", "n2", "n3"]


def chaos_seed() -> int:
    seed = int(os.environ.get("RECSYNC_CHAOS_SEED") or random.randrange(2**32))
    print(f"chaos seed: RECSYNC_CHAOS_SEED={seed}")
    return seed


class Changes:
    """A thread that keeps inserting and updating rows on the A sides until stopped."""

    def __init__(self, c: Cluster, seed: int, first: int) -> None:
        self.c, self.rng, self.next = c, random.Random(seed), first
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            version = 0
            while not self.done.wait(0.01):  # a pace, not a wait for anything
                version += 1
                pid = self.rng.choice(self.c.pipelines)
                fresh = range(self.next, self.next + self.rng.randint(1, 8))
                self.next = fresh.stop
                with sqlite3.connect(self.c.side(pid, "a"), timeout=30) as conn:
                    conn.executemany(
                        "INSERT INTO users (record_id, full_name, email_address, status) "
                        "VALUES (?, ?, ?, 'active')",
                        [(n, f"User {n}", f"u{n}@example.com") for n in fresh])
                    conn.executemany(
                        "UPDATE users SET full_name = ? WHERE record_id = ?",
                        [(f"User {n} v{version}", n)
                         for n in self.rng.sample(range(1, 101), 3)])
                conn.close()
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=60)
        assert self.error is None, f"the changes thread failed: {self.error!r}"


def b_count(c: Cluster, pipelines: list[str]) -> int:
    try:
        return sum(len(b_rows(c, p)) for p in pipelines)
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_random_kill_9s_mid_sync_lose_and_duplicate_nothing(cluster: Cluster) -> None:
    c = cluster
    seed = chaos_seed()
    rng = random.Random(seed)
    setup(c, 8, 100)
    for name in NODES:
        c.start(name)
    wait_for(lambda: fair(c, NODES) and same(c), timeout=60,
             what="three nodes sharing eight pipelines, all synced")
    changes = Changes(c, seed + 1, 101)
    takeovers: list[float] = []
    lags: list[float] = []  # from the lease's expiry to its takeover
    try:
        for kill in range(3):
            wait_for(lambda: fair(c, NODES), timeout=60, what="the three sharing again")
            victim = rng.choice(NODES)
            moved = c.owned_by(victim)
            before = c.leases()
            at = rng.randint(1, 60)  # B rows of its pipelines synced before the kill
            base = b_count(c, moved)
            print(f"kill {kill + 1}: {victim} (owns {moved}) after {at} more rows on B")
            assert kill_when(c.procs[victim], lambda m=moved, b=base: b_count(c, m) - b, at,
                             timeout=60)
            killed_at = c.db_now()
            final = c.leases()  # the victim's leases as it left them

            def moved_on(m: list[str] = moved, v: str = victim) -> bool:
                owners = c.owners()
                return all(owners.get(p) not in (None, c.node(v)) for p in m)

            wait_for(moved_on, timeout=c.ttl * 10, what=f"the takeover of {moved}")
            after = c.leases()
            for p in moved:
                assert after[p][1] > before[p][1], p  # a takeover increments the token
                takeovers.append(seconds(after[p][2], killed_at))
                lags.append(seconds(after[p][2], final[p][4]))
                print(f"  {p} -> {after[p][0]}: {takeovers[-1]:.3f} s after the kill, "
                      f"{lags[-1]:.3f} s after its expiry")
            c.start(victim)  # rejoins under its name, once its heartbeat is stale
    finally:
        changes.stop()
    print(f"takeovers after kill -9 (s): {sorted(round(t, 3) for t in takeovers)}")
    wait_for(lambda: same(c), timeout=60, what="both sides equal once the changes stop")
    assert_exact(c)
    assert sum(len(a_rows(c, p)) for p in c.pipelines) == 8 * 100 + changes.next - 101
    # the bound, as the database's clock measures it (the kill is a little earlier still)
    assert max(takeovers) <= c.ttl + c.poll, (seed, takeovers)
    assert max(lags) <= c.poll, (seed, lags)  # the others wake at the expiry


def seconds(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds()


def test_a_partition_from_postgresql_moves_the_pipelines_and_heals_exact(
        cluster: Cluster, pg_proxy: TcpProxy) -> None:
    c = cluster
    seed = chaos_seed()
    setup(c, 4, 100)
    c.audit_state()
    c.start("n1", state_dsn=pg_proxy.dsn(PG_DSN))  # n1 reaches PostgreSQL through the proxy
    c.start("n2")
    wait_for(lambda: fair(c, ["n1", "n2"]) and same(c), timeout=60,
             what="two nodes sharing four pipelines, all synced")
    cut_off = c.owned_by("n1")
    assert len(cut_off) == 2
    changes = Changes(c, seed, 101)
    try:
        wait_for(lambda: b_count(c, cut_off) > 2 * 100 + 20, timeout=30,
                 what="n1 syncing new rows")
        pg_proxy.pause()  # n1 hears nothing from PostgreSQL, and PostgreSQL nothing from n1
        wait_for(lambda: c.owned_by("n2") == sorted(c.pipelines), timeout=c.ttl * 10,
                 what="n2 taking the cut-off node's pipelines over")
        taken = {p: c.leases()[p][2] for p in cut_off}
        wait_for(lambda: c.state_writes("n2", cut_off[0], after=taken[cut_off[0]]) > 0,
                 timeout=30, what="n2 syncing the cut-off node's pipelines")
        healed_at = c.db_now()
        pg_proxy.resume()
        # n1 learns its leases are lost, says so, and rejoins for its share again (its
        # renewal timing out can come first, on a loaded machine even before the cut)
        wait_for(lambda: any(why in str(x.get("error")) for x in c.log_lines("n1")
                             for why in ("lost the lease", "no longer holds its lease",
                                         "could not renew")), timeout=30,
                 what="n1 saying it lost its leases")
        wait_for(lambda: fair(c, ["n1", "n2"]) and len(c.owned_by("n1")) == 2, timeout=60,
                 what="n1 getting its share back after the partition heals")
    finally:
        changes.stop()
    wait_for(lambda: same(c), timeout=60, what="both sides equal once the changes stop")
    assert_exact(c)
    # no state of its pipelines committed by n1 from their takeover until it owns them again
    final = c.leases()
    for p in cut_off:
        back = final[p][2] if final[p][0] == c.node("n1") else c.db_now()
        assert c.state_writes("n1", p, after=taken[p], before=back) == 0, p
    print(f"partition: n2 took over {seconds(healed_at, min(taken.values())):.3f} s "
          "before the heal")


def test_a_node_frozen_mid_sync_past_its_lease_writes_nothing_more(cluster: Cluster) -> None:
    c = cluster
    seed = chaos_seed()
    rng = random.Random(seed)
    setup(c, 2, 100)
    c.audit_state()
    c.start("n1")
    c.start("n2")
    wait_for(lambda: fair(c, ["n1", "n2"]) and same(c), timeout=60,
             what="two nodes sharing two pipelines, all synced")
    [frozen] = c.owned_by("n1")
    token = c.leases()[frozen][1]
    changes = Changes(c, seed, 101)
    try:
        # SIGSTOP at a random moment of n1's sync of the new rows
        at, base = rng.randint(1, 40), b_count(c, [frozen])
        # (B's rows are written before their links are committed: wait for both)
        wait_for(lambda: b_count(c, [frozen]) - base >= at and
                 c.state_writes("n1", frozen) > 0, timeout=30, what="n1 syncing new rows")
        os.kill(c.procs["n1"].pid, signal.SIGSTOP)
        wait_for(lambda: c.owned_by("n2") == sorted(c.pipelines), timeout=c.ttl * 10,
                 what="n2 taking the frozen node's pipeline over")
        lease = c.leases()[frozen]
        taken = lease[2]
        assert lease[1] == token + 1
        wait_for(lambda: c.state_writes("n2", frozen, after=taken) > 0, timeout=30,
                 what="n2 syncing the frozen node's pipeline")
        os.kill(c.procs["n1"].pid, signal.SIGCONT)

        def said_why() -> list[str]:
            return [str(x["error"]) for x in c.log_lines("n1")
                    if x.get("pipeline") == frozen and any(why in str(x.get("error")) for why in (
                        "lost the lease", "no longer holds its lease", "could not renew"))]

        # its state write refused by the token, or its lease round finding the lease
        # lost: either way it stops the pipeline and says why
        reasons = wait_for(said_why, timeout=30, what="n1 saying why it stopped")
        assert f"node {c.node('n1')}" in reasons[0]
    finally:
        changes.stop()
    wait_for(lambda: same(c), timeout=60, what="both sides equal once the changes stop")
    assert_exact(c)
    # n1 committed no state of the pipeline from the takeover until it owned it again
    final = c.leases()[frozen]
    back = final[2] if final[0] == c.node("n1") else c.db_now()
    assert c.state_writes("n1", frozen, after=taken, before=back) == 0
    assert c.state_writes("n1", frozen, before=taken) > 0  # the audit saw n1 before


def test_a_node_leaving_hands_its_pipelines_over_at_once(cluster: Cluster) -> None:
    c = cluster
    c.ttl = 9.0  # a takeover at the lease's expiry is seconds later than one at its release
    seed = chaos_seed()
    setup(c, 4, 100)
    c.start("n1")
    c.start("n2")
    wait_for(lambda: fair(c, ["n1", "n2"]) and same(c), timeout=60,
             what="two nodes sharing four pipelines, all synced")
    leaving = c.owned_by("n2")
    assert len(leaving) == 2
    changes = Changes(c, seed, 101)  # the leaving node has batches in flight
    try:
        wait_for(lambda: b_count(c, leaving) > 2 * 100 + 20, timeout=30,
                 what="n2 syncing new rows")
        expiry = {p: v[4] for p, v in c.leases().items()}  # it renews no more once stopping
        c.procs["n2"].terminate()  # SIGTERM: drain, stop, release, leave
        assert c.procs["n2"].wait(timeout=60) == 0
        wait_for(lambda: c.owned_by("n1") == sorted(c.pipelines), timeout=c.ttl * 3,
                 what="n1 taking the left node's pipelines over")
    finally:
        changes.stop()
    after = c.leases()
    for p in leaving:
        # taken over once released, before the lease would have expired
        assert after[p][2] < expiry[p], (p, after[p][2], expiry[p])
    assert c.run("SELECT count(*) FROM nodes WHERE node = %s", (c.node("n2"),)) == [(0,)]
    wait_for(lambda: same(c), timeout=60, what="both sides equal once the changes stop")
    assert_exact(c)
