"""A recsyncd joining its ``[cluster]`` as a named node (``recsyncd --node NAME``)."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

from recsync.cluster.confighash import config_hash
from recsync.cluster.coordinator import Coordinator
from recsync.cluster.leases import Leases
from recsync.config import ClusterConfig
from recsync.state.errors import backend_error
from recsync.state.pgbackend import SCHEMA


def node_name(given: str | None) -> str:
    """``--node``, else ``$RECSYNC_NODE``, else the host name."""
    return given or os.environ.get("RECSYNC_NODE") or socket.gethostname()


def open_leases(cluster: ClusterConfig, node: str, schema: str = SCHEMA) -> Leases:
    """This node's leases (a connection of their own), not yet registered.

    Raises:
        StateError: the cluster's PostgreSQL cannot be reached.
    """
    try:
        return Leases(cluster.state_url(), node, cluster.lease_ttl, schema=schema,
                      host=socket.gethostname(), pid=os.getpid(), boot=uuid.uuid4().hex)
    except Exception as exc:
        error = backend_error(f"PostgreSQL state {cluster.shown()}", exc)
        if error is None:
            raise
        raise error from exc


class NodeStamp(logging.Filter):
    """Adds ``node`` to each log entry (logs of several nodes merge: `recsync logs`)."""

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "node"):
            record.node = self.node
        return True


def stamp_logs(node: str) -> None:
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, NodeStamp) for f in handler.filters):
            handler.addFilter(NodeStamp(node))


def join(daemon: Any, node: str,
         monotonic: Callable[[], float] = time.monotonic) -> Coordinator:
    """Register ``node`` (refused when a live node has the name) and make the daemon run
    only the pipelines whose lease it holds, every state write fenced by its token and
    every external write allowed by ``Coordinator.permit`` (``monotonic``: its clock).

    Raises:
        NodeNameTaken: a live node already has the name.
        StateError: the cluster's PostgreSQL cannot be reached.
    """
    assert daemon.config.cluster is not None
    leases = open_leases(daemon.config.cluster, node, daemon.state.schema or SCHEMA)
    leases.config_hash = config_hash(daemon.config_dir)
    try:
        leases.register()
    except BaseException:
        leases.close()
        raise
    daemon.state.fence = leases.fence
    stamp_logs(node)
    coordinator = Coordinator(leases, daemon, monotonic)
    daemon.state.permit = coordinator.permit
    daemon.coordinator = coordinator
    return coordinator
