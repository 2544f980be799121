"""`recsyncd --metrics-port`: Prometheus metrics scraped over HTTP from a real recsyncd."""

from __future__ import annotations

import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from recsync.daemon.metrics import parse_metrics_address
from recsync.errors import RecsyncError
from recsync.mock.salesforce import SalesforceMock
from tests.e2e.helpers import _env, make_users, recsyncd_cmd, wait_for, write_config
from tests.e2e.test_crm import SF_RULES, SQLITE_A, seed_rows

USERS = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    resp.raise_for_status()
    out = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float | None:
    return metrics.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def sf(tmp_path: Path) -> Iterator[SalesforceMock]:
    mock = SalesforceMock(data=tmp_path / "salesforce.json")
    mock.start()
    yield mock
    mock.stop()


def start(tmp_path: Path, *extra: str) -> subprocess.Popen[str]:
    env = dict(_env(), RUNTIME_DIRECTORY=str(tmp_path / "run"),
               LOGS_DIRECTORY=str(tmp_path / "logs"))
    return subprocess.Popen(recsyncd_cmd(tmp_path, tmp_path / "state", *extra), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_metrics_after_a_sync(tmp_path: Path, sf: SalesforceMock) -> None:
    make_users(tmp_path / "a.sqlite", seed_rows(USERS))
    side_b = ('{ connector = "salesforce", mock = true, key = "Record_Id__c", '
              f'instance_url = "{sf.url}", daily_reserve = 0 }}')
    write_config(tmp_path, SQLITE_A, side_b, rules=SF_RULES.format(conflict="last_writer_wins"))
    settings = tmp_path / "customer_settings.toml"
    # a small budget: the polls every 0.1 s run into it
    settings.write_text(settings.read_text().replace(
        "max_requests = 100000\nwindow_seconds = 1", "max_requests = 8\nwindow_seconds = 1"))
    port = free_port()
    proc = start(tmp_path, "--metrics-port", f"127.0.0.1:{port}")
    system = f"salesforce:{sf.url}"
    want = sum(1 for r in seed_rows(USERS) if r[3] != "inactive")
    try:
        def synced() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                m = scrape(port)
            except requests.ConnectionError:
                return None
            done = value(m, "recsync_records_synced_total", pipeline="test/p",
                         direction="a_to_b") == want
            hit = (value(m, "recsync_api_limit_hits_total", system=system) or 0) > 0
            return m if done and hit else None

        m = wait_for(synced, timeout=60, what="the sync in the metrics")
        assert value(m, "recsync_records_synced_total", pipeline="test/p",
                     direction="b_to_a") == 0
        assert value(m, "recsync_records_failed", pipeline="test/p") == 0
        assert value(m, "recsync_conflicts_total", pipeline="test/p") == 0
        assert value(m, "recsync_queue_depth", pipeline="test/p") == 0
        assert value(m, "recsync_in_flight", pipeline="test/p") == 0
        calls = value(m, "recsync_api_calls_total", system=system)
        assert calls is not None and calls >= 3  # a poll and the writes of 24 records
        assert value(m, "recsync_api_window_limit", system=system) == 8
        assert value(m, "recsync_breaker_state", system=system, state="closed") == 1
        assert value(m, "recsync_breaker_state", system=system, state="open") == 0
        # no leases on a single node: the lease figures are there, at 0
        node = [labels for (name, labels) in m if name == "recsync_lease_owned"]
        assert len(node) == 1 and value(m, "recsync_lease_owned", **dict(node[0])) == 0
        assert value(m, "recsync_lease_token_changes_total", pipeline="test/p") == 0
        # every name is recsync_'s (besides the scrape's own)
        assert all(name.startswith("recsync_") for name, _ in m)
    finally:
        stop(proc)


def test_metrics_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    make_users(tmp_path / "a.sqlite", seed_rows(3))
    make_users(tmp_path / "b.sqlite", [])
    write_config(tmp_path, SQLITE_A, SQLITE_A.replace("a.sqlite", "b.sqlite"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = start(tmp_path, "--metrics-port", str(port))
        try:
            _out, err = proc.communicate(timeout=60)
        finally:
            stop(proc)
    assert proc.returncode == 2
    assert f"metrics: cannot listen on 127.0.0.1:{port}" in err


def test_parse_metrics_address() -> None:
    assert parse_metrics_address("9464") == ("127.0.0.1", 9464)
    assert parse_metrics_address("0.0.0.0:9464") == ("0.0.0.0", 9464)
    for bad in ("", "x", "70000", "host:"):
        with pytest.raises(RecsyncError, match="--metrics-port"):
            parse_metrics_address(bad)
