"""`make bench`: many pipelines on one node (`python -m bench.scale_bench`).

For each size (100, 300, 1,000 pipelines; each SQLite <-> CSV with a few rows, poll 2 s,
flush 1 s), one real recsyncd is started and measured:

- ready: start -> the control socket answers `status` (target < 2 s at any size);
- running: start -> every pipeline `running` (target < 60 s);
- idle CPU: over 10 s once all run (target < 15% of one core);
- threads and RSS once all run (targets < 2,500 and < 1 GB at 1,000);
- latency: 100 changes on random pipelines, row inserted -> line in the CSV, p95
  (target < poll + flush + 1 s = 4 s);
- reload: a pipeline added to customer_settings.toml -> running (target < 2 s), no other
  pipeline restarted;
- SIGTERM -> exit, all running (target < 15 s), and SIGTERM 1 s into a second start-up.

Then the dashboard (bench.tui_bench) with as many live pipelines: key press -> screen
p95 (target < 100 ms) and its CPU (target < 25% of a core). Takes about 10 minutes on
the 2-core machine (most of it the 1,000-pipeline run); `--sizes 1000 --no-tui` for one
size without the dashboard.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from recsync.client import ControlClient
from recsync.daemon import protocol as p
from recsync.errors import RecsyncError

RULES = """
[contacts]
a_to_b = ["create", "update", "delete"]
b_to_a = ["create", "update", "delete"]
[contacts.mappings]
record_id = "record_id"
full_name = "name"
email_address = "email"
status = "status"
"""
POLL, FLUSH = 2.0, 1.0


def pipeline_toml(i: int) -> str:
    return (f"[customers.c{i}.pipelines.p]\nrules = \"contacts\"\n"
            f"a = {{ connector = \"sqlite\", path = \"a{i}.sqlite\", table = \"users\", "
            "key = \"record_id\" }\n"
            f"b = {{ connector = \"file\", path = \"b{i}.csv\", key = \"record_id\" }}\n\n")


def make_folder(folder: Path, n: int) -> None:
    for i in range(n + 1):  # one more, for the reload
        with sqlite3.connect(folder / f"a{i}.sqlite") as db:
            db.execute("CREATE TABLE users (record_id INTEGER PRIMARY KEY, full_name TEXT, "
                       "email_address TEXT, status TEXT)")
            db.executemany("INSERT INTO users VALUES (?, ?, ?, ?)",
                           [(j, f"User {j}", f"u{j}@x.org", "active") for j in range(1, 4)])
        db.close()
    text = (f"[defaults]\npoll_interval = {POLL}\nflush_interval = {FLUSH}\n\n"
            + "".join(pipeline_toml(i) for i in range(n)))
    (folder / "customer_settings.toml").write_text(text)
    (folder / "rules.toml").write_text(RULES)


class Daemon:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        env = dict(os.environ, RUNTIME_DIRECTORY=str(folder / "run"))
        env.pop("NOTIFY_SOCKET", None)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "recsync", "--config-dir", str(folder), "--state-dir",
             str(folder / "state")], env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        self.endpoint = f"ipc://{folder}/run/control.sock"

    def status(self, timeout: float = 5.0) -> dict[str, Any] | None:
        try:
            with ControlClient(self.endpoint, None, timeout=timeout) as client:
                return client.request(p.StatusGet())  # type: ignore[no-any-return]
        except RecsyncError:
            return None

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def threads_rss(self) -> tuple[int, float]:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        values = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        return int(values["Threads"]), int(values["VmRSS"].split()[0]) / 1024

    def stop(self) -> float:
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return float("inf")
        return time.monotonic() - start


def states(status: dict[str, Any] | None) -> dict[str, str]:
    return {r["pipeline"]: r["state"] for r in (status or {}).get("pipelines", [])}


def wait_until(what: Any, timeout: float, every: float = 0.05) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if what():
            return time.monotonic() - start
        time.sleep(every)
    return None


def csv_has(path: Path, key: int) -> bool:
    try:
        return any(line.split(",", 1)[0] == str(key) for line in path.read_text().splitlines())
    except OSError:
        return False


def measure(n: int, base: Path, changes: int) -> dict[str, Any]:
    folder = base / f"n{n}"
    folder.mkdir()
    make_folder(folder, n)
    d = Daemon(folder)
    out: dict[str, Any] = {"pipelines": n}
    ready = wait_until(lambda: d.status(timeout=1.0) is not None, 60, every=0.02)
    out["ready"] = (time.monotonic() - d.started) if ready is not None else None
    all_ids = {f"c{i}/p" for i in range(n)}
    running = wait_until(lambda: all(s == "running" for s in states(d.status()).values())
                         and set(states(d.status())) >= all_ids, 300, every=0.5)
    out["running"] = (time.monotonic() - d.started) if running is not None else None
    # every first sync done: each CSV written
    wait_until(lambda: all((folder / f"b{i}.csv").exists() for i in range(n)), 120, every=0.5)
    time.sleep(2 * POLL)
    before, t0 = d.cpu(), time.monotonic()
    time.sleep(10)
    out["idle_cpu"] = (d.cpu() - before) / (time.monotonic() - t0)
    out["threads"], out["rss_mb"] = d.threads_rss()
    rng = random.Random(n)
    lat = []
    for k in range(changes):
        i, key = rng.randrange(n), 1000 + k
        with sqlite3.connect(folder / f"a{i}.sqlite") as db:
            db.execute("INSERT INTO users VALUES (?, ?, ?, 'active')",
                       (key, f"New {key}", f"n{key}@x.org"))
        db.close()
        took = wait_until(lambda i=i, key=key: csv_has(folder / f"b{i}.csv", key), 30,
                          every=0.01)
        lat.append(took if took is not None else float("inf"))
        time.sleep(rng.uniform(0.0, 0.2))
    lat.sort()
    out["latency_p95"] = lat[int(len(lat) * 0.95) - 1]
    restarts = {r["pipeline"]: r["restarts"] for r in (d.status() or {})["pipelines"]}
    settings = folder / "customer_settings.toml"
    settings.write_text(settings.read_text() + pipeline_toml(n))
    new = f"c{n}/p"
    took = wait_until(lambda: states(d.status()).get(new) == "running", 60, every=0.02)
    out["reload"] = took
    after = {r["pipeline"]: r["restarts"] for r in (d.status() or {})["pipelines"]}
    out["others_touched"] = sum(1 for pid, r in restarts.items() if after.get(pid) != r)
    out["sigterm"] = d.stop()
    # SIGTERM during start-up
    d2 = Daemon(folder)
    time.sleep(1.0)
    out["sigterm_startup"] = d2.stop()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100,300,1000")
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--no-tui", action="store_true")
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="recsync-scale-") as tmp:
        for n in sizes:
            rows.append(measure(n, Path(tmp), args.changes))
            print(json.dumps(rows[-1]), flush=True)
    top = rows[-1]
    print(f"\n{'pipelines':>9} {'ready s':>8} {'running s':>9} {'idle CPU':>8} {'threads':>7} "
          f"{'RSS MB':>7} {'p95 s':>6} {'reload s':>8} {'SIGTERM s':>9} {'at start-up':>11}")
    for r in rows:
        print(f"{r['pipelines']:>9} {r['ready'] or float('nan'):>8.2f} "
              f"{r['running'] or float('nan'):>9.1f} {r['idle_cpu']:>8.1%} {r['threads']:>7} "
              f"{r['rss_mb']:>7.0f} {r['latency_p95']:>6.2f} {r['reload'] or float('nan'):>8.2f} "
              f"{r['sigterm']:>9.2f} {r['sigterm_startup']:>11.2f}")
    a = rows[0]
    for b in rows[1:]:  # each size against the smallest
        grow = b["pipelines"] / a["pipelines"]
        print(f"growth x{grow:.2g} pipelines ({a['pipelines']} -> {b['pipelines']}): threads "
              f"x{b['threads'] / a['threads']:.2f}, RSS x{b['rss_mb'] / a['rss_mb']:.2f}, "
              f"idle CPU x{b['idle_cpu'] / max(a['idle_cpu'], 1e-9):.2f}, running "
              f"x{(b['running'] or 0) / max(a['running'] or 0, 1e-9):.2f}, SIGTERM "
              f"x{b['sigterm'] / max(a['sigterm'], 1e-9):.2f}")
    checks = [
        ("control socket within 2 s", all((r["ready"] or 99) < 2 for r in rows)),
        ("all running within 60 s", (top["running"] or 999) < 60),
        ("idle CPU < 15% of a core", top["idle_cpu"] < 0.15),
        ("threads < 2,500", top["threads"] < 2500),
        ("RSS < 1 GB", top["rss_mb"] < 1024),
        ("change p95 < poll + flush + 1 s", top["latency_p95"] < POLL + FLUSH + 1),
        ("reload adds one within 2 s, no other touched",
         (top["reload"] or 99) < 2 and top["others_touched"] == 0),
        ("SIGTERM -> exit < 15 s (running and at start-up)",
         top["sigterm"] < 15 and top["sigterm_startup"] < 15),
    ]
    for name, ok in checks:
        print(f"target {name}: {'met' if ok else 'MISSED'}")
    if not args.no_tui:
        subprocess.run([sys.executable, "-m", "bench.tui_bench", "--pipelines",
                        str(top["pipelines"])], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
