"""Change -> mock CRM latency of the demo as shipped (``python -m bench.demo_latency_bench``).

The repository's customer_settings.toml and rules.toml are copied into a fresh folder,
``recsync demo seed`` fills data/demo.sqlite, and ``recsyncd`` runs on them with its
embedded mock Salesforce and Outreach (``mock = true``), all four demo pipelines polling
data/demo.sqlite. Once the first sync is done, one change of the ``users`` table (a new
user, or a new name for one) is committed every ~0.5 s for ``--seconds`` (120); this
process watches both mock CRMs through the control socket (``mock.list``) and takes, per
change and CRM, the time from the commit to the moment the CRM holds the new content.
Prints the p50/p95/max per CRM, the p95 next to its target, and exits 1 when a change
never arrived.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from recsync.client import ControlClient
from recsync.daemon import protocol as p

REPO = Path(__file__).resolve().parent.parent
TARGET_P95 = 3.0
INTERVAL = 0.5
WATCH_EVERY = 0.05
FIRST_ID = 100_000


def _seed(folder: Path) -> None:
    subprocess.run([sys.executable, "-m", "recsync.cli", "demo", "seed"], cwd=folder,
                   check=True, capture_output=True, text=True)


def _start(folder: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, RUNTIME_DIRECTORY=str(folder / "run"))
    env.pop("NOTIFY_SOCKET", None)
    return subprocess.Popen(
        [sys.executable, "-m", "recsync", "--config-dir", str(folder), "--state-dir",
         str(folder / "state")], cwd=folder, env=env,
        stdout=subprocess.DEVNULL, stderr=(folder / "recsyncd.err").open("wb"))


def _crm_names(client: ControlClient) -> dict[str, dict[str, str]]:
    """record_id -> name, as each mock CRM holds it now."""
    sf = client.request(p.MockList("salesforce"))
    out = client.request(p.MockList("outreach"))
    return {
        "salesforce": {str(r.get("Record_Id__c")): str(r.get("LastName")) for r in sf},
        "outreach": {str(r.get("externalId")): str(r.get("lastName")) for r in out},
    }


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception:  # the daemon may still be starting
            value = None
        if value:
            return value
        time.sleep(0.2)  # a benchmark's polling pace
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def run(seconds: float) -> int:
    folder = Path(tempfile.mkdtemp(prefix="recsync-demo-latency-"))
    for name in ("customer_settings.toml", "rules.toml"):
        shutil.copy(REPO / name, folder / name)
    _seed(folder)
    db_path = folder / "data" / "demo.sqlite"
    proc = _start(folder)
    client = ControlClient(f"ipc://{folder}/run/control.sock", timeout=10.0)
    try:
        with sqlite3.connect(db_path) as db:
            active = {str(r[0]) for r in db.execute(
                "SELECT record_id FROM users WHERE status IN ('active', 'pending')")}
            every = {str(r[0]) for r in db.execute("SELECT record_id FROM users")}
        db.close()
        _wait(lambda: active <= set(_crm_names(client)["salesforce"])
              and every <= set(_crm_names(client)["outreach"]), 120, "the first sync")
        return _measure(folder, db_path, client, seconds)
    finally:
        client.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(folder, ignore_errors=True)


def _measure(folder: Path, db_path: Path, client: ControlClient, seconds: float) -> int:
    # per change: record_id, commit time, and the names that show it arrived (its own, or
    # that of a later change of the same record it was coalesced with)
    changes: list[tuple[str, float, set[str]]] = []
    arrived: dict[str, dict[int, float]] = {"salesforce": {}, "outreach": {}}
    lock = threading.Lock()
    done = threading.Event()

    def watch() -> None:
        with ControlClient(client.endpoint, timeout=10.0) as watcher:
            while not done.is_set():
                names = _crm_names(watcher)
                now = time.monotonic()
                with lock:
                    for crm, held in names.items():
                        got = arrived[crm]
                        for i, (rid, _at, accept) in enumerate(changes):
                            if i not in got and held.get(rid) in accept:
                                got[i] = now
                done.wait(WATCH_EVERY)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    db = sqlite3.connect(db_path, isolation_level=None)
    start = time.monotonic()
    n = 0
    try:
        while time.monotonic() - start < seconds:
            due = start + n * INTERVAL
            time.sleep(max(0.0, due - time.monotonic()))  # the pace of the changes
            if n % 2 == 0:  # a new user
                rid, name = FIRST_ID + n, f"New{n} User"
                db.execute("INSERT INTO users (record_id, full_name, email_address, status) "
                           "VALUES (?, ?, ?, 'active')", (rid, name, f"new{n}@example.com"))
            else:  # a new name for the user added just before
                rid, name = FIRST_ID + n - 1, f"Renamed{n} User"
                db.execute("UPDATE users SET full_name = ? WHERE record_id = ?", (name, rid))
            with lock:
                for other_rid, _at, accept in changes[-1:]:
                    if other_rid == str(rid):
                        accept.add(name)
                changes.append((str(rid), time.monotonic(), {name}))
            n += 1
        # every change gets up to 60 s to arrive
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with lock:
                if all(len(a) == len(changes) for a in arrived.values()):
                    break
            time.sleep(0.2)
    finally:
        done.set()
        watcher.join(timeout=15)
        db.close()
    with lock:
        return _report(changes, arrived, seconds)


def _report(changes: list[tuple[str, float, set[str]]], arrived: dict[str, dict[int, float]],
            seconds: float) -> int:
    print(f"demo as shipped: {len(changes)} changes of data/demo.sqlite in {seconds:.0f} s "
          f"(one every {INTERVAL} s), four pipelines polling it")
    worst = 0.0
    missing = 0
    for crm, times in arrived.items():
        lat = [times[i] - at for i, (_rid, at, _a) in enumerate(changes) if i in times]
        lost = len(changes) - len(lat)
        missing += lost
        if not lat:
            print(f"  {crm:<10}  no change arrived")
            continue
        p95 = _percentile(lat, 0.95)
        worst = max(worst, p95)
        print(f"  {crm:<10}  p50 {statistics.median(lat):5.2f} s   p95 {p95:5.2f} s   "
              f"max {max(lat):5.2f} s   over 3 s: {sum(x > TARGET_P95 for x in lat)}"
              f"{f'   never arrived: {lost}' if lost else ''}")
    verdict = "ok" if worst < TARGET_P95 and not missing else "MISSED"
    print(f"change -> mock CRM p95: {worst:.2f} s (target: under {TARGET_P95:.0f} s) {verdict}")
    return 0 if not missing else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="how long to change (120)")
    args = parser.parse_args()
    return run(args.seconds)


if __name__ == "__main__":
    sys.exit(main())
