"""With ``[cluster]``: a command for a pipeline, sent to any node, reaches the pipeline's
owner and answers as if it had been sent there.

The node that gets the command picks the pipelines it is about (as the command would on one
node), reads their owners from the leases, runs it itself for those it owns and forwards it
to each other owner over that node's control endpoint (registered in the ``nodes`` table:
its ipc:// socket on the same host, else its CURVE-secured tcp:// ``control_bind``), with a
``Route`` naming the forwarding node and the pipelines. The owner acts on exactly those
pipelines and forwards nothing further; if it no longer owns one (it moved meanwhile) it
answers NOT_OWNER, and the command is sent once more to the new owner. A pipeline no live
node owns answers NO_OWNER. The answers of several owners are merged (counts added,
pipelines and results listed together).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import psycopg

from recsync.cluster.leases import NodeRow
from recsync.daemon import protocol as p
from recsync.daemon.control import current_route
from recsync.errors import ControlError, DaemonUnreachable

log = logging.getLogger(__name__)

# commands that act on pipelines, run by each pipeline's owner
ROUTED: tuple[type[p.Command], ...] = (
    p.RetryRecord, p.RetryFailed, p.SyncEvent, p.SyncNow, p.ConfigOverride, p.Pause,
    p.Resume, p.ConfirmDeletes, p.VerifyRun, p.RulesTest)
FORWARD_TIMEOUT = 30.0  # seconds an owner has to answer a forwarded command
VERIFY_TIMEOUT = 3600.0  # a forwarded `verify` reads both sides of a pipeline
# a pipeline between two owners (released, not yet taken): how long (in lease ttls) to
# wait for its new owner before answering NO_OWNER; first look, then the retry
# (the retry waits for an owner other than the one that failed: a killed owner's lease
# expires at ttl, and another node takes it over within its next round)
FIRST_WAIT, RETRY_WAIT = 0.5, 2.0


Forwarder = Callable[[NodeRow, bytes, float], Any]


class Router:
    """Routes the commands of ``service`` (a ControlService of a node in a cluster)."""

    def __init__(self, service: Any, forward: Forwarder | None = None) -> None:
        self.service = service
        self.forward = forward or forward_request

    @property
    def coordinator(self) -> Any:
        return self.service.daemon.coordinator

    @property
    def node(self) -> str:
        return str(self.coordinator.node)

    def handle(self, cmd: p.Command) -> Any:
        route = current_route.get()
        if route is not None:  # forwarded here by another node: those pipelines only
            lost = [pid for pid in route.pipelines
                    if pid not in self.coordinator.leases.tokens]
            if lost:
                raise ControlError("NOT_OWNER", f"node {self.node} does not own pipeline "
                                                f"{lost[0]} (any more); it moved")
            return self.service.run_scoped(cmd, route.pipelines)
        pids = self.targets(cmd)
        if pids is None:
            return self.service.dispatch(cmd)
        try:
            return self._route(cmd, pids, again=True)
        except psycopg.Error as exc:  # the leases could not be read: say so, plainly
            raise ControlError("UNAVAILABLE", (
                "cannot read the cluster's leases to find the pipeline's owner "
                f"({type(exc).__name__}); is its PostgreSQL reachable? try again")) from exc

    # -- which pipelines a command is about ---------------------------------------------------
    def targets(self, cmd: p.Command) -> list[str] | None:
        """The pipelines ``cmd`` acts on (None: not a pipeline command, run here)."""
        svc, pipelines = self.service, self.service.config.pipelines
        if not isinstance(cmd, ROUTED):
            return None
        if isinstance(cmd, p.RulesTest):  # an owner of a pipeline with these rules answers
            using = sorted(pid for pid, cfg in pipelines.items() if cfg.rules == cmd.name)
            if not using or any(pid in self.coordinator.leases.tokens for pid in using):
                return None
            owners = self._owners()
            return [next((pid for pid in using if pid in owners), using[0])]
        if isinstance(cmd, p.RetryRecord):
            return sorted(pipelines)
        if isinstance(cmd, (p.RetryFailed, p.VerifyRun)):
            if cmd.customer is None:
                return sorted(pipelines)
            pipeline = cmd.pipeline if isinstance(cmd, p.VerifyRun) else None
            return sorted(c.id for c in svc._pipelines(cmd.customer, pipeline))
        assert isinstance(cmd, (p.SyncEvent, p.SyncNow, p.ConfigOverride, p.Pause, p.Resume,
                                p.ConfirmDeletes))
        one = isinstance(cmd, p.SyncEvent)
        return sorted(c.id for c in svc._pipelines(cmd.customer, cmd.pipeline, one=one))

    # -- owners --------------------------------------------------------------------------------
    def _owners(self) -> dict[str, str]:
        """pipeline -> owner node, read now from the leases (live ones only)."""
        return {r.pipeline: r.node for r in self.coordinator.leases.leases() if r.live}

    def _wait_owners(self, pids: Sequence[str], ttls: float,
                     avoid: str | None = None) -> dict[str, str]:
        """The owners of ``pids``, waiting up to ``ttls`` lease ttls for pipelines that
        are moving (released by one node, not yet taken by another; or still held by
        ``avoid``, the owner that just failed to answer)."""
        deadline = time.monotonic() + self.coordinator.ttl * ttls
        while True:
            owners = self._owners()
            settled = all(owners.get(pid) not in (None, avoid) for pid in pids)
            if settled or time.monotonic() >= deadline:
                return owners
            time.sleep(0.05)  # a lease between two nodes: poll the table, not a test wait

    def _route(self, cmd: p.Command, pids: list[str], again: bool,
               avoid: str | None = None) -> Any:
        owners = self._wait_owners(pids, FIRST_WAIT if again else RETRY_WAIT, avoid)
        orphans = [pid for pid in pids if pid not in owners]
        if orphans:
            raise ControlError("NO_OWNER", (
                f"pipeline {orphans[0]} has no owner now: no live node holds its lease "
                "(nodes starting, or each live node's config differs from the cluster's; "
                "see `recsync cluster`); try again shortly"))
        groups: dict[str, list[str]] = {}
        for pid in pids:
            groups.setdefault(owners[pid], []).append(pid)
        results: list[Any] = []
        errors: list[ControlError] = []
        nodes: dict[str, NodeRow] | None = None
        for node, group in sorted(groups.items(), key=lambda g: g[0] != self.node):
            try:
                if node == self.node:
                    results.append(self.service.run_scoped(cmd, group))
                    continue
                if nodes is None:
                    nodes = {n.node: n for n in self.coordinator.leases.nodes()}
                results.append(self._forward(nodes.get(node), node, cmd, group))
            except ControlError as exc:
                # the owner says it moved, or could not be reached (killed, frozen); an
                # answer of the owner (a stopped pipeline...) is its answer, as it is
                moved = exc.code == "NOT_OWNER" or (
                    isinstance(exc, DaemonUnreachable) and node != self.node)
                if again and moved:  # it moved meanwhile: once more, to the new owner
                    log.info("forwarded command retried", extra={
                        "cmd": type(cmd).__name__, "node": node, "error": str(exc)})
                    try:
                        results.append(self._route(cmd, group, again=False, avoid=node))
                    except ControlError as last:
                        errors.append(last)
                else:
                    errors.append(exc)
        return merge(cmd, results, errors)

    def _forward(self, row: NodeRow | None, node: str, cmd: p.Command,
                 group: list[str]) -> Any:
        if row is None or not row.live:
            raise DaemonUnreachable(f"pipeline {group[0]} is owned by node {node}, which "
                                    "does not answer its heartbeat")
        request = p.Request(p.API_VERSION, cmd, p.Route(self.node, group))  # type: ignore[arg-type]
        timeout = VERIFY_TIMEOUT if isinstance(cmd, p.VerifyRun) else FORWARD_TIMEOUT
        return self.forward(row, p.encoder.encode(request), timeout)


def pick_endpoint(row: NodeRow, host: str) -> str | None:
    """The endpoint to reach node ``row`` from ``host``: its ipc:// socket on the same
    host, else its tcp:// endpoint (None: it has none reachable from here)."""
    endpoints = row.endpoints.split()
    if row.host == host:
        for endpoint in endpoints:
            if endpoint.startswith("ipc://"):
                return endpoint
    return next((e for e in endpoints if e.startswith("tcp://")), None)


class Forward:
    """Sends forwarded requests from this node: ipc:// on one host, tcp:// with CURVE,
    where this node authenticates with its own server key pair (each node's public key
    goes in the others' ``authorized_clients``)."""

    def __init__(self, host: str, curve: tuple[bytes, bytes] | None = None) -> None:
        self.host = host
        self.curve = curve  # this node's (public, secret) CURVE keys, with control_bind

    def __call__(self, row: NodeRow, payload: bytes, timeout: float) -> Any:
        from recsync.client import ControlClient
        from recsync.daemon.runtime import CurveKeys

        endpoint = pick_endpoint(row, self.host)
        if endpoint is None:
            raise ControlError("UNAVAILABLE", (
                f"node {row.node} (host {row.host}) owns the pipeline but has no control "
                f"endpoint reachable from host {self.host}; give the nodes a [cluster] "
                "control_bind (tcp://, with --curve-dir)"))
        keys = None
        # a node with CURVE keys (--curve-dir) serves every control socket with CURVE
        if row.curve_public or endpoint.startswith("tcp://"):
            if self.curve is None or not row.curve_public:
                raise ControlError("UNAVAILABLE", (
                    f"node {row.node} is reachable only over {endpoint} with CURVE, and this "
                    "node has no CURVE keys to authenticate with (run every node with "
                    "--curve-dir, and each node's server.key in the others' "
                    "authorized_clients)"))
            keys = CurveKeys(self.curve[0], self.curve[1], row.curve_public.encode())
        with ControlClient(endpoint, endpoint, timeout=timeout, curve_keys=keys) as client:
            return client.request_raw(payload)


def forward_request(row: NodeRow, payload: bytes, timeout: float) -> Any:
    """Forward over ipc:// only (a node without CURVE keys)."""
    import socket

    return Forward(socket.gethostname())(row, payload, timeout)


def merge(cmd: p.Command, results: list[Any], errors: list[ControlError]) -> Any:
    """One answer from the answers of several owners (as one node would have given)."""
    if errors:
        # "nothing to do here" from some owners is no error when others did something
        real = [e for e in errors if e.code != "NOT_FOUND"]
        if real or not results:
            raise (real or errors)[0]
    if len(results) == 1:
        return results[0]
    plain = [msgspec.to_builtins(r) for r in results]
    if all(isinstance(r, dict) and set(r) == {"count", "pipelines"} for r in plain):
        return p.CountResult(sum(int(r["count"]) for r in plain),
                             sorted(pid for r in plain for pid in r["pipelines"]))
    if all(isinstance(r, list) for r in plain):
        merged = [item for r in plain for item in r]
        return sorted(merged, key=lambda x: str(x.get("pipeline", "")) if isinstance(
            x, dict) else "")
    return plain[0]
