"""The metrics server in-process: lease figures fed through LeaseMetrics, breaker states,
a shared limiter's counters; scraped over HTTP with requests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from recsync.clock import FakeClock
from recsync.daemon.metrics import LeaseMetrics, MetricsServer, NodeCollector
from recsync.resilience import CircuitBreaker, RateLimiter


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


@pytest.fixture
def setup() -> Iterator[tuple[MetricsServer, LeaseMetrics, RateLimiter, CircuitBreaker]]:
    clock = FakeClock()
    limiter = RateLimiter(2, 10.0, clock)
    breaker = CircuitBreaker(1, 30.0, clock)
    leases = LeaseMetrics()
    figures = {"acme/p": {"synced_a_to_b": 5, "synced_b_to_a": 2, "failed": 1,
                          "conflicts": 3, "queued": 4, "in_flight": 2}}
    collector = NodeCollector("n1", lambda: figures,
                              lambda: {"salesforce:x": (limiter, breaker)}, leases)
    server = MetricsServer(collector, "127.0.0.1", 0)
    server.start()
    yield server, leases, limiter, breaker
    server.stop()


def test_figures_leases_limits_and_breaker(
        setup: tuple[MetricsServer, LeaseMetrics, RateLimiter, CircuitBreaker]) -> None:
    server, leases, limiter, breaker = setup
    m = scrape(server.port)
    p = frozenset({("pipeline", "acme/p")})
    assert m[("recsync_records_synced_total", p | {("direction", "a_to_b")})] == 5
    assert m[("recsync_records_synced_total", p | {("direction", "b_to_a")})] == 2
    assert (m[("recsync_records_failed", p)], m[("recsync_conflicts_total", p)]) == (1, 3)
    assert (m[("recsync_queue_depth", p)], m[("recsync_in_flight", p)]) == (4, 2)
    assert m[("recsync_lease_owned", p | {("node", "n1")})] == 0
    assert m[("recsync_lease_token_changes_total", p)] == 0

    leases.set_owner("acme/p", True)
    leases.token_changed("acme/p")
    leases.token_changed("acme/p")
    assert [limiter.try_acquire() for _ in range(3)][2] > 0  # the third waits
    breaker.record_failure()
    m = scrape(server.port)
    s = frozenset({("system", "salesforce:x")})
    assert m[("recsync_lease_owned", p | {("node", "n1")})] == 1
    assert m[("recsync_lease_token_changes_total", p)] == 2
    assert m[("recsync_api_calls_total", s)] == 2
    assert m[("recsync_api_limit_hits_total", s)] == 1
    assert (m[("recsync_api_window_used", s)], m[("recsync_api_window_limit", s)]) == (2, 2)
    assert m[("recsync_breaker_state", s | {("state", "open")})] == 1
    assert m[("recsync_breaker_state", s | {("state", "closed")})] == 0
