"""A node's control plane in its ``[cluster]``: events stamped with (node, boot), the
node's control endpoints registered for the others, commands routed to their owners, and
the optional tcp:// ``control_bind`` (CURVE, as every tcp:// control socket)."""

from __future__ import annotations

import socket
from typing import Any

from recsync.cluster.relay import EventRelay
from recsync.cluster.routing import Forward, Router
from recsync.daemon.runtime import CurveConfig, derive_event_endpoint
from recsync.errors import RecsyncError


def advertised(bound: str, host: str) -> str:
    """A bound tcp:// endpoint as the other hosts reach it (a wildcard becomes ``host``)."""
    address, _, port = bound.removeprefix("tcp://").rpartition(":")
    if address in ("0.0.0.0", "*", "", "[::]", "::"):
        address = host
    return f"tcp://{address}:{port}"


def serve_cluster_control(daemon: Any, service: Any, server: Any, endpoint: str,
                          curve: CurveConfig | None) -> Any:
    """Wire the control plane of a node (``daemon.coordinator`` set); returns what to
    stop with the node's control server (``ClusterControl``).

    Raises:
        RecsyncError: ``control_bind`` without CURVE keys, or it cannot listen.
    """
    from recsync.daemon.control import ControlServer

    coordinator = daemon.coordinator
    leases = coordinator.leases
    server.origin = (coordinator.node, leases.boot)
    host = socket.gethostname()
    # ipc: the daemon's own (internal) socket, not the front's: a killed node's socket
    # then has no listener at once, and a forwarded command is retried without a wait
    endpoints = [advertised(server.bound[0], host) if endpoint.startswith("tcp://")
                 else server.command_endpoint]
    events = [advertised(server.bound[1], host) if server.bound[1].startswith("tcp://")
              else server.bound[1]]
    extra = None
    bind = daemon.config.cluster.control_bind
    if bind:
        if curve is None:
            raise RecsyncError(
                f"[cluster] control_bind = {bind!r} needs recsyncd --curve-dir: a tcp:// "
                "control socket is served only with CURVE authentication")
        # a port of the system's choosing (tcp://HOST:*) has events on another such port
        events_bind = (bind if bind.rpartition(":")[2] in ("*", "0")
                       else derive_event_endpoint(bind))
        extra = ControlServer(service.handle, inline=service.inline, command_endpoint=bind,
                              event_endpoint=events_bind, curve=curve)
        extra.origin = server.origin
        extra.start()
        server.mirrors.append(extra)  # the same events on both
        endpoints.append(advertised(extra.bound[0], host))
        events.append(advertised(extra.bound[1], host))
    keys = curve.keys() if curve is not None else None
    leases.advertise(endpoints=" ".join(endpoints), event_endpoints=" ".join(events),
                     curve_public=keys[0].decode() if keys is not None else "")
    service.router = Router(service, Forward(host, keys))
    relay = EventRelay(coordinator, server, host, keys, coordinator.remote)
    relay.start()
    return ClusterControl(extra, relay)


class ClusterControl:
    """What a node's cluster control plane runs beside its control server."""

    def __init__(self, extra: Any, relay: EventRelay) -> None:
        self.extra, self.relay = extra, relay

    def stop(self) -> None:
        self.relay.stop()
        if self.extra is not None:
            self.extra.stop()
