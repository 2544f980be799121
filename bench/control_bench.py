"""Status queries per second over one client connection while a pipeline syncs at full
speed, and the sync rate with and without that query load (one run, same machine)."""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

from bench.sync_bench import RULES, USERS, make_source
from recsync.client import ControlClient
from recsync.daemon.protocol import StatusGet


def _count(path: Path) -> int:
    with sqlite3.connect(path) as db:
        n = int(db.execute("SELECT COUNT(*) FROM users").fetchone()[0])
    db.close()
    return n


def sync_once(base: Path, rows: int, source: Path, load: bool) -> tuple[float, float]:
    """Records/s of a full sync through a serving recsyncd, and status queries/s."""
    folder = base / ("load" if load else "quiet")
    folder.mkdir()
    os.link(source, folder / "a.sqlite")
    with sqlite3.connect(folder / "b.sqlite") as db:
        db.execute(USERS)
    db.close()
    (folder / "rules.toml").write_text(RULES)
    (folder / "customer_settings.toml").write_text(textwrap.dedent("""
        [defaults]
        batch_size = 2000
        page_size = 2000
        flush_interval = 0.05
        poll_interval = 0.2
        [defaults.rate_limit]
        max_requests = 1000000
        window_seconds = 1
        [customers.bench.pipelines.p]
        rules = "contacts"
        a = { connector = "sqlite", path = "a.sqlite", table = "users", key = "record_id" }
        b = { connector = "sqlite", path = "b.sqlite", table = "users", key = "record_id" }
        """))
    endpoint = f"ipc://{folder}/run/control.sock"
    env = dict(os.environ, RUNTIME_DIRECTORY=str(folder / "run"),
               LOGS_DIRECTORY=str(folder / "logs"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "recsync", "--config-dir", str(folder), "--state-dir",
         str(folder / "state"), "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = ControlClient(endpoint, timeout=30)
    queries, stop = [0], threading.Event()
    try:
        deadline = time.monotonic() + 30
        while True:  # wait for the control socket (the sync has begun by then)
            try:
                client.request(StatusGet())
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        start = time.perf_counter()

        def hammer() -> None:
            while not stop.is_set():
                client.request(StatusGet())
                queries[0] += 1

        worker = threading.Thread(target=hammer, daemon=True) if load else None
        if worker:
            worker.start()
        while _count(folder / "b.sqlite") < rows:
            time.sleep(0.05)
        elapsed = time.perf_counter() - start
        stop.set()
        if worker:
            worker.join()
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=60)
    return rows / elapsed, queries[0] / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="recsync-ctl-bench-") as tmp:
        base = Path(tmp)
        make_source(base / "source.sqlite", args.rows)
        quiet, _ = sync_once(base, args.rows, base / "source.sqlite", load=False)
        busy, qps = sync_once(base, args.rows, base / "source.sqlite", load=True)
    print(f"sync without queries: {quiet:,.0f} records/s")
    print(f"sync with status queries: {busy:,.0f} records/s "
          f"({(1 - busy / quiet) * 100:+.0f}% slower)")
    print(f"status queries over one connection during the sync: {qps:,.0f}/s")
    print(f"targets: >= 3,000 queries/s: {'met' if qps >= 3000 else 'MISSED'}; "
          f"sync slowdown < 20%: {'met' if busy > 0.8 * quiet else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
