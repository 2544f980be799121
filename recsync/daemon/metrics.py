"""Prometheus metrics of one recsyncd node (``--metrics-port`` / ``[cluster] metrics_port``).

Served by prometheus_client's HTTP server from a thread of its own, off a registry of this
node's (not the process-wide default). A scrape reads the figures the daemon's stats thread
last took (per pipeline) and the counters of the shared limiters and breakers (per external
system): no actor is asked, so a scrape never waits on a busy pipeline.

Every name starts with ``recsync_``. The lease figures stay at 0 until the node holds
leases: the lease code reports through :class:`LeaseMetrics` (``Daemon.leases``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from recsync.errors import RecsyncError

# prometheus_client (with http.server, urllib and email) is imported when metrics are
# served or scraped, not by every daemon that has a LeaseMetrics: `recsyncd --once`
# starts about 40 ms sooner (CPU, measured on this machine).

__all__ = ["BREAKER_STATES", "LeaseMetrics", "MetricsServer", "NodeCollector",
           "parse_metrics_address"]

log = logging.getLogger(__name__)

BREAKER_STATES = ("closed", "open", "half_open")


def parse_metrics_address(text: str) -> tuple[str, int]:
    """``PORT`` (on 127.0.0.1) or ``HOST:PORT``; a clear error otherwise."""
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 < number < 65536:
        raise RecsyncError(f"--metrics-port {text!r}: give a port (1-65535) or HOST:PORT, "
                           "e.g. 9464 or 0.0.0.0:9464")
    return host.strip("[]") or "127.0.0.1", number


class LeaseMetrics:
    """What the lease code tells the metrics: the pipelines this node owns, and each
    change of a pipeline's fencing token seen by this node. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owned: dict[str, int] = {}  # pipeline -> 1 owned here, 0 not
        self._token_changes: dict[str, int] = {}

    def set_owner(self, pipeline: str, owned: bool) -> None:
        with self._lock:
            self._owned[pipeline] = int(owned)

    def token_changed(self, pipeline: str) -> None:
        with self._lock:
            self._token_changes[pipeline] = self._token_changes.get(pipeline, 0) + 1

    def owned(self, pipeline: str) -> int:
        with self._lock:
            return self._owned.get(pipeline, 0)

    def token_changes(self, pipeline: str) -> int:
        with self._lock:
            return self._token_changes.get(pipeline, 0)


class NodeCollector:
    """Builds the metrics at each scrape from the daemon's last figures (a
    prometheus_client ``Collector``).

    ``pipelines``: pipeline -> its figures (``synced_a_to_b``, ``synced_b_to_a``, ``failed``,
    ``conflicts``, ``queued``, ``in_flight``; ``here`` 0: another node exports them);
    ``systems``: system id -> (limiter or None,
    breaker); ``leases``: the lease figures.
    """

    def __init__(self, node: str, pipelines: Callable[[], dict[str, dict[str, int]]],
                 systems: Callable[[], dict[str, tuple[Any, Any]]],
                 leases: LeaseMetrics) -> None:
        self.node = node
        self._pipelines = pipelines
        self._systems = systems
        self.leases = leases

    def collect(self) -> Iterator[Any]:
        try:
            figures = self._pipelines()
        except Exception:  # a scrape never fails because a figure could not be read
            log.exception("pipeline figures not read for the metrics")
            figures = {}
        yield from self._pipeline_metrics(figures)
        try:
            systems = self._systems()
        except Exception:
            log.exception("system figures not read for the metrics")
            systems = {}
        yield from self._system_metrics(systems)

    def _pipeline_metrics(self, figures: dict[str, dict[str, int]]) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        synced = CounterMetricFamily("recsync_records_synced", "Records synced, per direction",
                                     labels=["pipeline", "direction"])
        failed = GaugeMetricFamily("recsync_records_failed",
                                   "Records failed (waiting for a retry)", labels=["pipeline"])
        conflicts = CounterMetricFamily("recsync_conflicts", "Conflicts resolved",
                                        labels=["pipeline"])
        queued = GaugeMetricFamily("recsync_queue_depth", "Changes queued, not yet written",
                                   labels=["pipeline"])
        in_flight = GaugeMetricFamily("recsync_in_flight", "Changes being written now",
                                      labels=["pipeline"])
        owner = GaugeMetricFamily("recsync_lease_owned",
                                  "1 while this node holds the pipeline's lease",
                                  labels=["pipeline", "node"])
        tokens = CounterMetricFamily("recsync_lease_token_changes",
                                     "Changes of the pipeline's fencing token seen here",
                                     labels=["pipeline"])
        for pid, f in sorted(figures.items()):
            if f.get("here", 1):  # (another node of the cluster runs it: its figures)
                synced.add_metric([pid, "a_to_b"], f.get("synced_a_to_b", 0))
                synced.add_metric([pid, "b_to_a"], f.get("synced_b_to_a", 0))
                failed.add_metric([pid], f.get("failed", 0))
                conflicts.add_metric([pid], f.get("conflicts", 0))
                queued.add_metric([pid], f.get("queued", 0))
                in_flight.add_metric([pid], f.get("in_flight", 0))
            owner.add_metric([pid, self.node], self.leases.owned(pid))
            tokens.add_metric([pid], self.leases.token_changes(pid))
        return [synced, failed, conflicts, queued, in_flight, owner, tokens]

    def _system_metrics(self, systems: dict[str, tuple[Any, Any]]) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        calls = CounterMetricFamily("recsync_api_calls",
                                    "API calls this node made, per external system",
                                    labels=["system"])
        limited = CounterMetricFamily("recsync_api_limit_hits",
                                      "Calls held back by the rate limit (window, "
                                      "Retry-After, reported allocation)", labels=["system"])
        used = GaugeMetricFamily("recsync_api_window_used",
                                 "Calls in the current window (all nodes when shared)",
                                 labels=["system"])
        limit = GaugeMetricFamily("recsync_api_window_limit", "Calls allowed per window",
                                  labels=["system"])
        shared = GaugeMetricFamily("recsync_api_budget_shared",
                                   "1 while the budget is kept in Redis, 0 on this node's "
                                   "fallback share", labels=["system"])
        breaker = GaugeMetricFamily("recsync_breaker_state",
                                    "1 for the circuit breaker's current state",
                                    labels=["system", "state"])
        for sid, (limiter, brk) in sorted(systems.items()):
            if limiter is not None:
                calls.add_metric([sid], getattr(limiter, "acquired", 0))
                limited.add_metric([sid], getattr(limiter, "limit_hits", 0))
                try:
                    n, cap = limiter.usage()
                except Exception:
                    n, cap = 0, 0
                used.add_metric([sid], n)
                limit.add_metric([sid], cap)
                if hasattr(limiter, "shared"):
                    shared.add_metric([sid], int(bool(limiter.shared)))
            if brk is not None:
                state = brk.state
                for s in BREAKER_STATES:
                    breaker.add_metric([sid, s], int(s == state))
        return [calls, limited, used, limit, shared, breaker]


class MetricsServer:
    """prometheus_client's HTTP server for ``collector``, on ``host:port``, in a thread."""

    def __init__(self, collector: NodeCollector, host: str, port: int) -> None:
        from prometheus_client import CollectorRegistry

        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self.host, self.port = host, port
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Listen now; a port in use is a clear error."""
        from prometheus_client import start_http_server

        try:
            self._server, self._thread = start_http_server(self.port, addr=self.host,
                                                           registry=self.registry)
        except OSError as exc:
            raise RecsyncError(f"metrics: cannot listen on {self.host}:{self.port} "
                               f"({exc.strerror or exc}); pick another --metrics-port") from exc
        self.port = int(self._server.server_address[1])
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
