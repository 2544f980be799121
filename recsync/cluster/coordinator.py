"""A node's share of the pipelines: one thread that, every ttl/3, heartbeats, renews the
leases it holds, stops the pipelines whose lease it lost, and takes or gives leases to reach
its fair share, ceil(pipelines / live nodes).

- A pipeline runs here only while this node holds its lease; it is begun right after the
  lease is acquired (a new token) and stopped before the lease is released.
- Could not renew for ttl/2 (the database unreachable, the process frozen): every pipeline
  here stops (no more external writes); the leases expire at ttl and others take over.
- Over its share: the extra pipelines are paused, their in-flight batches drained, then
  stopped and released at once (no wait for the expiry).
- A pipeline with a local-file side (SQLite, CSV, JSON Lines) is only taken over from a node
  on the same host (``nodes.host``).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from recsync.cluster.confighash import cluster_hash, config_hash, mismatch_note
from recsync.cluster.leases import LeaseRow, Leases, NodeNameTaken, NodeRow
from recsync.cluster.relay import RemoteStates
from recsync.config import PipelineConfig

log = logging.getLogger(__name__)
LOCAL_CONNECTORS = frozenset({"sqlite", "file"})  # "file": CSV and JSON Lines files
DRAIN_TIMEOUT = 30.0


def has_local_side(cfg: PipelineConfig) -> bool:
    """A side is a file on this host (it cannot move to another host)."""
    return cfg.a.connector in LOCAL_CONNECTORS or cfg.b.connector in LOCAL_CONNECTORS


class Coordinator:
    """Keeps ``daemon``'s running pipelines equal to the leases ``leases`` holds."""

    def __init__(self, leases: Leases, daemon: Any,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.leases, self.daemon, self.monotonic = leases, daemon, monotonic
        self.ttl = leases.ttl
        self.renewed_at = monotonic()
        self.owners: dict[str, str] = {}  # pipeline -> owner node, as last read
        self.lease_rows: list[LeaseRow] = []
        self.read_at = monotonic()  # when lease_rows were read
        self.balanced_at = self.read_at  # when the last round began to take leases
        self.share = 0  # ceil(pipelines / live nodes), as last computed
        self.live = 1
        self.node_rows: list[NodeRow] = []  # as last read
        self.cluster_hash: str | None = None  # the cluster's config hash, as last computed
        self.mismatch: str | None = None  # why this node owns nothing (its config differs)
        # what the owners say of the pipelines not run here (fed by the event relay)
        self.remote = RemoteStates()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()

    @property
    def node(self) -> str:
        return self.leases.node

    def start(self) -> None:
        from recsync.budget import set_live_nodes_source

        set_live_nodes_source(lambda: self.live)
        self._thread = threading.Thread(target=self._loop, name="leases", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:  # the node never dies of a coordination hiccup
                log.exception("lease round failed")
            if self._stop.wait(self._next_round()):
                return

    def _next_round(self) -> float:
        """Seconds to the next round: ttl/3, or sooner when another node's lease expires
        before that (a dead node's pipelines move at its expiry; its death may also raise
        this node's share, so a node at its share wakes too). Live nodes renew every ttl/3,
        so their leases never expire this soon: no extra rounds while all is well."""
        wait = self.ttl / 3
        elapsed = self.monotonic() - self.read_at  # the expiries are as of the read
        tried = self.read_at - self.balanced_at  # how long ago this round tried to acquire
        for row in self.lease_rows:
            if row.node == self.node:
                continue
            if row.live:
                wait = min(wait, max(0.02, row.expires_in - elapsed + 0.02))
            elif -row.expires_in < tried:  # expired just after this round's try: again now
                wait = min(wait, 0.02)
        return wait

    def stop(self) -> None:
        """Stop coordinating (the daemon stops its pipelines, then calls ``leave``)."""
        from recsync.budget import set_live_nodes_source

        self._stop.set()
        set_live_nodes_source(None)  # the budget's split no longer asks a stopped node
        if self._thread is not None:
            self._thread.join(timeout=self.ttl)

    def leave(self) -> None:
        try:
            with self._mutex:
                self.leases.leave()
        except Exception as exc:
            log.warning("leases not released at stop (they expire)",
                        extra={"error": str(exc)})
        self.leases.close()

    # -- one round ---------------------------------------------------------------------------
    def tick(self) -> None:
        with self._mutex:
            if self._stop.is_set():
                return
            try:
                self._renew()
            except NodeNameTaken as exc:  # frozen past its heartbeat, and replaced meanwhile
                self._replaced(str(exc))
                return
            except Exception as exc:
                log.warning("leases not renewed", extra={"error": str(exc)})
                self._check_silence()
                return
            self._balance()
            self._read()

    def _renew(self) -> None:
        started = self.monotonic()
        if not self.leases.heartbeat():
            self.leases.register()
        for pid in sorted(self.leases.tokens):
            if not self.leases.renew(pid):
                self._stop_pipeline(pid, f"node {self.node} lost the lease of pipeline {pid} "
                                         "(it expired and another node may own it now)")
        self.renewed_at = started

    def _replaced(self, error: str) -> None:
        """Another recsyncd took this node's name while this one was silent (frozen, cut
        off) past its heartbeat: it can never renew again. Stop every pipeline here, stop
        coordinating, and have the daemon exit saying why."""
        note = (f"node {self.node} was replaced by another recsyncd while this one did not "
                f"heartbeat ({error}); this one stops")
        log.critical("node replaced: stopping", extra={"node": self.node, "error": note})
        for pid in sorted(self.leases.tokens):
            self._stop_pipeline(pid, note)
        self.leases.tokens.clear()
        self._stop.set()
        replaced = getattr(self.daemon, "replaced", None)
        if replaced is not None:
            replaced(note)

    def permit(self, pid: str) -> str | None:
        """Asked before each external write of ``pid`` (any thread): None when it may go
        out, else why not. Only while this node holds the lease and renewed it less than
        ttl/2 ago, by this process's clock: a node frozen, or cut off from the database
        (its renewal hanging), stops writing well before others may take over at ttl."""
        if pid not in self.leases.tokens:
            return (f"node {self.node} does not hold the lease of pipeline {pid} (another "
                    "node owns it, or it is being handed over)")
        silent = self.monotonic() - self.renewed_at
        if silent >= self.ttl / 2:
            return (f"node {self.node} could not renew its leases for {silent:.1f} s "
                    f"(lease_ttl/2 = {self.ttl / 2:g} s; state database unreachable, or the "
                    "process frozen?): its external writes stop until it renews")
        return None

    def _check_silence(self) -> None:
        """Not renewed for ttl/2: stop every pipeline here (no more external writes)."""
        if self.monotonic() - self.renewed_at < self.ttl / 2:
            return
        for pid in sorted(self.leases.tokens):
            self._stop_pipeline(pid, f"node {self.node} could not renew its leases for "
                                     f"{self.ttl / 2:g} s (state database unreachable?); "
                                     "pipeline stopped here, another node takes it over")
            self.leases.tokens.pop(pid, None)

    def config_loaded(self, config_dir: Any) -> None:
        """The daemon loaded (or reloaded) its config: register the files' hash."""
        with self._mutex:
            self.leases.advertise(config_hash=config_hash(config_dir))

    def notes(self) -> list[str]:
        """A sentence per live node whose config differs from the cluster's."""
        cluster = self.cluster_hash
        if cluster is None:
            return []
        return [mismatch_note(n.node, n.config_hash, cluster) for n in self.node_rows
                if n.live and n.config_hash and n.config_hash != cluster]

    def _check_config(self, nodes: list[NodeRow]) -> bool:
        """True: this node's config is the cluster's (else it gives up every pipeline)."""
        cluster = cluster_hash(nodes)
        self.cluster_hash = cluster
        mine = self.leases.config_hash
        if cluster is None or not mine or mine == cluster:
            if self.mismatch is not None:
                log.info("config matches the cluster's again: taking a share",
                         extra={"node": self.node, "config_hash": mine[:12]})
                self.daemon.publish("config_matches", {"node": self.node})
                self.mismatch = None
            return True
        note = mismatch_note(self.node, mine, cluster)
        if note != self.mismatch:
            log.error("config differs from the cluster's: owning no pipeline",
                      extra={"node": self.node, "error": note})
            self.daemon.publish("config_mismatch", {"node": self.node, "error": note})
            self.mismatch = note
        for pid in sorted(self.leases.tokens):
            self._hand_over(pid)
        return False

    def _balance(self) -> None:
        self.balanced_at = self.monotonic()
        pipelines = self.daemon.config.pipelines
        nodes = self.leases.nodes()
        self.node_rows = nodes
        if not self._check_config(nodes):
            self.share = 0
            return
        cluster = self.cluster_hash
        # nodes whose config differs own nothing: the share is among the others
        live = max(1, len([n for n in nodes if n.live and (
            not n.config_hash or cluster is None or n.config_hash == cluster)]))
        self.live = live  # what the shared API budget's fallback divides by
        share = math.ceil(len(pipelines) / live) if pipelines else 0
        self.share = share
        mine = [pid for pid in sorted(self.leases.tokens) if pid in pipelines]
        for pid in sorted(set(self.leases.tokens) - set(pipelines)):  # removed from config
            self._stop_pipeline(pid, None)
            self.leases.release(pid)
        if len(mine) > share:
            for pid in mine[share:]:
                self._hand_over(pid)
            return
        # start from a node-dependent place, so nodes joining together do not all contend
        order = sorted(pipelines)
        if order:
            at = sum(map(ord, self.node)) % len(order)
            order = order[at:] + order[:at]
        acquired: list[tuple[str, int]] = []
        for pid in order:
            if len(self.leases.tokens) >= share:
                break
            if pid in self.leases.tokens:
                continue
            token = self.leases.acquire(pid, same_host=has_local_side(pipelines[pid]))
            if token is not None:
                acquired.append((pid, token))
        # begun once all are acquired: starting one pipeline does not delay the next takeover
        for pid, token in acquired:
            log.info("lease acquired", extra={"pipeline": pid, "node": self.node,
                                              "token": token})
            self.daemon.publish("lease_acquired", {"pipeline": pid, "node": self.node,
                                                   "token": token})
            self._metrics("set_owner", pid, True)
            self._metrics("token_changed", pid)
            self.daemon.begin_owned(pipelines[pid])

    def _hand_over(self, pid: str) -> None:
        """Over the fair share: drain the pipeline's in-flight batches, stop, release."""
        log.info("over the fair share: handing the pipeline over",
                 extra={"pipeline": pid, "node": self.node})
        # not longer than ttl/3: the other leases are renewed after this round
        self.daemon.drain_pipeline(pid, min(DRAIN_TIMEOUT, self.ttl / 3))
        self._stop_pipeline(pid, None)
        self.leases.release(pid)
        self.daemon.publish("lease_released", {"pipeline": pid, "node": self.node})

    def _metrics(self, name: str, *args: Any) -> None:
        """Feed the lease metrics (recsync.daemon.metrics) when the daemon has them."""
        metrics = getattr(self.daemon, "leases", None)
        if metrics is not None:
            getattr(metrics, name)(*args)

    def _stop_pipeline(self, pid: str, reason: str | None) -> None:
        self._metrics("set_owner", pid, False)
        if reason is not None:
            log.error("pipeline stopped here", extra={"pipeline": pid, "error": reason})
            self.daemon.publish("lease_lost", {"pipeline": pid, "node": self.node,
                                               "error": reason})
        self.daemon.stop_owned(pid, reason)

    def _read(self) -> None:
        self.read_at = self.monotonic()
        rows = self.leases.leases()
        self.lease_rows = rows
        self.owners = {r.pipeline: r.node for r in rows if r.live}

    def owner(self, pid: str) -> str | None:
        if pid in self.leases.tokens:
            return self.node
        return self.owners.get(pid)
