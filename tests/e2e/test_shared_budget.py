"""Three recsyncd processes sync to one mock Salesforce with ``[cluster] redis``: together
they never exceed the budget in any window (counted at the mock, by arrival time).

Every request counts: the token and the describe call when a side opens, the polls
(``queryAll``), the key lookups (``query``) and the writes (``composite``)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from recsync.budget import redis_client
from recsync.mock.salesforce import SalesforceMock
from tests.e2e.helpers import _env, make_users, recsyncd_cmd, wait_for, write_config
from tests.e2e.test_crm import SF_RULES, SQLITE_A, seed_rows
from tests.pgfixture import PG_DSN, require_pg
from tests.test_budget import REDIS_URL, require_redis

# One xdist worker runs the tests whose nodes join the machine's shared cluster tables
# (recsync.nodes / recsync.leases): a live node of another test changes the node count
# that the fair share and the budget split divide by.
pytestmark = pytest.mark.xdist_group("cluster")

TABLES = ("meta", "cursors", "links", "queue", "history", "listing_seen", "rekeys")
MAX, WINDOW = 10, 2.0
NODES, USERS = 3, 80


class CountingSalesforce(SalesforceMock):
    """The mock Salesforce, noting the arrival time and path of every request."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.arrivals: list[tuple[float, str]] = []
        self._arrivals_lock = threading.Lock()

    def handle(self, method: str, target: str, headers: Any, body: bytes) -> Any:
        with self._arrivals_lock:
            self.arrivals.append((time.time(), target.split("?")[0]))
        return super().handle(method, target, headers, body)

    def calls(self, part: str = "") -> list[float]:
        """Arrival times of the requests whose path has ``part`` (all of them: "")."""
        with self._arrivals_lock:
            return [t for t, path in self.arrivals if part in path]


@pytest.fixture
def mock(tmp_path: Path) -> Iterator[CountingSalesforce]:
    require_pg()
    require_redis()
    sf = CountingSalesforce(data=tmp_path / "salesforce.json")
    sf.start()
    yield sf
    sf.stop()
    client = redis_client(REDIS_URL)
    keys = list(client.scan_iter(match=f"recsync:budget:salesforce:{sf.url}*"))
    if keys:
        client.delete(*keys)


def most_in_any_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def node_config(folder: Path, customer: str, sf: SalesforceMock, redis: bool) -> None:
    side_b = ('{ connector = "salesforce", mock = true, key = "Record_Id__c", '
              f'instance_url = "{sf.url}", daily_reserve = 0 }}')
    cluster = f'[cluster]\nstate = "{PG_DSN}"\nnodes_hint = {NODES}\n'
    if redis:
        cluster += f'redis = "{REDIS_URL}"\n'
    write_config(folder, SQLITE_A, side_b, rules=SF_RULES.format(conflict="last_writer_wins"),
                 settings=cluster)
    settings = folder / "customer_settings.toml"
    text = settings.read_text().replace("customers.test.", f"customers.{customer}.")
    text = text.replace("batch_size = 500", "batch_size = 10")
    text = text.replace("max_requests = 100000\nwindow_seconds = 1",
                        f"max_requests = {MAX}\nwindow_seconds = {WINDOW}")
    settings.write_text(text)


def run_nodes(tmp_path: Path, sf: SalesforceMock, redis: bool) -> list[str]:
    customers = [f"c{uuid.uuid4().hex[:10]}" for _ in range(NODES)]
    procs = []
    try:
        for i, customer in enumerate(customers):
            folder = tmp_path / f"node{i}"
            folder.mkdir()
            rows = [(k + 1000 * i, *rest) for k, *rest in seed_rows(USERS)]
            make_users(folder / "a.sqlite", rows)
            node_config(folder, customer, sf, redis)
            procs.append(subprocess.Popen(
                recsyncd_cmd(folder, folder / "state", "--once", "--timeout", "200"),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()))
        for p in procs:
            out, err = p.communicate(timeout=240)
            assert p.returncode == 0, out + err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            for customer in customers:
                for table in TABLES:
                    conn.execute(f"DELETE FROM recsync.{table} WHERE pipeline = %s",
                                 (f"{customer}/p",))
    return customers


@pytest.mark.slow
def test_three_nodes_share_one_salesforce_budget(tmp_path: Path,
                                                mock: CountingSalesforce) -> None:
    run_nodes(tmp_path, mock, redis=True)
    # every node's records arrived (every 5th user is filtered out)
    want = NODES * sum(1 for r in seed_rows(USERS) if r[3] != "inactive")
    assert len(mock.list_records()) == want
    calls = mock.calls()
    assert len(calls) > 3 * MAX  # enough calls to have needed the shared budget
    # the calls a read or write makes besides its main one were made, and counted
    assert len(mock.calls("/describe")) >= NODES and mock.calls("/query/")
    assert most_in_any_window(calls, WINDOW) <= MAX


def test_most_in_any_window() -> None:
    assert most_in_any_window([0.0, 0.5, 1.0, 1.9, 2.0, 3.95], 2.0) == 4
    assert most_in_any_window([], 2.0) == 0


def test_status_shows_the_fallback_while_redis_is_unreachable(
        tmp_path: Path, mock: CountingSalesforce) -> None:
    """[cluster] redis unreachable: the node keeps budget / live nodes and status says so."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    customer = f"c{uuid.uuid4().hex[:10]}"
    make_users(tmp_path / "a.sqlite", seed_rows(5))
    node_config(tmp_path, customer, mock, redis=True)
    settings = tmp_path / "customer_settings.toml"
    settings.write_text(settings.read_text().replace(
        f'redis = "{REDIS_URL}"', f'redis = "redis://:hunter2@127.0.0.1:{closed}/0"'))
    env = dict(_env(), RUNTIME_DIRECTORY=str(tmp_path / "run"),
               LOGS_DIRECTORY=str(tmp_path / "logs"))
    proc = subprocess.Popen(recsyncd_cmd(tmp_path, tmp_path / "state"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    endpoint = f"ipc://{tmp_path}/run/control.sock"

    def cli(*args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "recsync.cli", "--endpoint", endpoint,
                                 *args], capture_output=True, text=True, timeout=60)
        return result.stdout if result.returncode in (0, 1) else ""

    def fallback_shown() -> str | None:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        out = cli("--json", "status")
        if not out:
            return None
        pipes = json.loads(out)["pipelines"]
        note = (pipes[0].get("sides", {}).get("b") or {}).get("budget") if pipes else None
        return note if note and note.startswith("Redis unreachable") else None

    try:
        note = wait_for(fallback_shown, timeout=60, what="the budget fallback in status")
        # the budget divided by the live nodes the cluster counts: this one alone
        # (nodes_hint is only for a node that cannot count them)
        assert f"{MAX} of {MAX} per {WINDOW:g}s" in note
        text = cli("status")
        assert "budget: Redis unreachable" in text and "hunter2" not in text
        wait_for(lambda: len(mock.list_records()) == 4, timeout=60,
                 what="the records synced on the fallback share")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            for table in TABLES:
                conn.execute(f"DELETE FROM recsync.{table} WHERE pipeline = %s",
                             (f"{customer}/p",))
