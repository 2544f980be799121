"""Every node's event stream carries the events of the whole cluster.

Each event is stamped (node, boot, seq) by the node that published it. A node subscribes
to the event sockets the other live nodes registered (ipc:// on the same host, else their
tcp:// one with CURVE) and publishes, as they are, the events each of them published
itself (``event.node`` is that peer): events another node relayed are not relayed again,
so nothing loops. A client (``recsync events``, the dashboard) then sees every node's
events on the one socket it follows, and orders them by ``protocol.events_order``: each
node's ticks (every ``TICK`` seconds, naming the peers relayed) tell it when nothing older
can come (``recsync.eventmerge``).

A node's own ``stats`` events name only the pipelines it owns (``Daemon.refresh_stats``):
the figures of a pipeline come from its owner.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import msgspec
import zmq

from recsync.cluster.leases import NodeRow
from recsync.daemon import protocol as p

log = logging.getLogger(__name__)
REFRESH = 1.0  # seconds between looks at the nodes table's peers
TICK = 0.25  # seconds between this node's ticks (recsync.eventmerge)


def pick_events(row: NodeRow, host: str) -> str | None:
    """The event endpoint to follow node ``row`` from ``host`` (None: none reachable)."""
    endpoints = row.event_endpoints.split()
    if row.host == host:
        for endpoint in endpoints:
            if endpoint.startswith("ipc://"):
                return endpoint
    return next((e for e in endpoints if e.startswith("tcp://") and row.curve_public), None)


class RemoteStates:
    """What the owners of the pipelines this node does not run last said about them (their
    relayed ``stats`` and ``pipeline_state`` events): ``status`` on any node shows each
    pipeline's state as its owner sees it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[str, dict[str, Any]] = {}

    def update(self, event: p.Event) -> None:
        if event.kind == "stats":
            rows = [r for r in event.data.get("pipelines") or [] if isinstance(r, dict)]
        elif event.kind == "pipeline_state" and isinstance(event.data.get("pipeline"), str):
            rows = [event.data]
        else:
            return
        with self._lock:
            for row in rows:
                pid = row.get("pipeline")
                if not isinstance(pid, str):
                    continue
                old = self._rows.get(pid) or {}
                if old.get("node") != event.node:
                    old = {}
                new = {**old, "node": event.node,
                       **{k: row[k] for k in ("state", "in_flight", "restarts", "error",
                                              "sides") if k in row}}
                if event.kind == "stats" and row.get("state") != old.get("state"):
                    new.pop("error", None)  # the error went with the state it was about
                self._rows[pid] = new

    def get(self, pid: str, owner: str | None) -> dict[str, Any] | None:
        """The owner's last word on ``pid`` (None: nothing from ``owner`` yet)."""
        with self._lock:
            row = self._rows.get(pid)
            return dict(row) if row is not None and row.get("node") == owner else None


class EventRelay:
    """Follows the other nodes' event sockets and republishes their own events on
    ``server`` (a ControlServer), from a thread of its own; ``remote`` keeps what they
    say about their pipelines."""

    def __init__(self, coordinator: Any, server: Any, host: str,
                 curve: tuple[bytes, bytes] | None = None,
                 remote: RemoteStates | None = None) -> None:
        self.coordinator, self.server, self.host, self.curve = coordinator, server, host, curve
        self.remote = remote if remote is not None else RemoteStates()
        self.relayed = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="event-relay", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        subs: dict[str, tuple[str, zmq.Socket[bytes]]] = {}  # peer -> (endpoint, socket)
        poller = zmq.Poller()
        looked = ticked = 0.0
        try:
            while not self._stop.is_set():
                if time.monotonic() - looked >= REFRESH:
                    looked = time.monotonic()
                    try:
                        self._refresh(ctx, subs, poller)
                    except Exception:  # never let the relay die of one odd row
                        log.exception("event relay: peers not refreshed")
                if time.monotonic() - ticked >= TICK:  # naming the peers it follows
                    ticked = time.monotonic()
                    self.server.tick({"peers": sorted(subs)})
                if not subs:
                    self._stop.wait(TICK)
                    continue
                ready = dict(poller.poll(int(TICK * 1000)))
                for peer, (_, sock) in list(subs.items()):
                    if sock in ready:
                        self._drain(peer, sock)
        finally:
            for _, sock in subs.values():
                sock.close(linger=0)
            ctx.destroy(linger=0)

    def _refresh(self, ctx: zmq.Context[zmq.Socket[bytes]],
                 subs: dict[str, tuple[str, zmq.Socket[bytes]]], poller: zmq.Poller) -> None:
        wanted: dict[str, str] = {}
        for row in self.coordinator.node_rows:
            if row.live and row.node != self.coordinator.node:
                endpoint = pick_events(row, self.host)
                if endpoint is not None:
                    wanted[row.node] = endpoint
        for peer in list(subs):
            if wanted.get(peer) != subs[peer][0]:
                _, sock = subs.pop(peer)
                poller.unregister(sock)
                sock.close(linger=0)
        for peer, endpoint in wanted.items():
            if peer in subs:
                continue
            sock = ctx.socket(zmq.SUB)
            sock.linger = 0
            row = next(r for r in self.coordinator.node_rows if r.node == peer)
            if row.curve_public:  # its sockets are CURVE ones (tcp and ipc alike)
                if self.curve is None:
                    sock.close()
                    continue
                sock.curve_publickey, sock.curve_secretkey = self.curve
                sock.curve_serverkey = row.curve_public.encode()
            sock.setsockopt(zmq.SUBSCRIBE, b"")
            sock.connect(endpoint)
            poller.register(sock, zmq.POLLIN)
            subs[peer] = (endpoint, sock)

    def _drain(self, peer: str, sock: zmq.Socket[bytes]) -> None:
        for _ in range(256):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                event = p.event_decoder.decode(frames[-1])
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            if event.node != peer:  # relayed by the peer, or not stamped: not again
                continue
            self.server.relay(frames[0], frames[-1])
            self.relayed += 1
            self.remote.update(event)
