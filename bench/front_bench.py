"""Descriptors of recsyncd and its control front over many one-shot clients.

recsyncd runs with RLIMIT_NOFILE 1024; each client is a new `recsync.client.ControlClient`
asking `failed` once (the request goes through the front to the daemon) and going away.
Prints the descriptor count (recsyncd + front, from /proc/PID/fd) before, the highest seen
while the clients come, and after; exits 1 if a client got no answer or the count grew.

    python -m bench.front_bench [--clients 10000]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil

from recsync.client import ControlClient
from recsync.daemon.protocol import FailedList
from recsync.errors import DaemonUnreachable

LIMIT = 1024


def _limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, min(hard, LIMIT)))


def _fds(pid: int) -> int:
    pids = [pid] + [c.pid for c in psutil.Process(pid).children()]
    return sum(len(os.listdir(f"/proc/{p}/fd")) for p in pids)


def _ask(endpoint: str) -> None:
    with ControlClient(endpoint, timeout=10) as client:
        client.request(FailedList())


def run(clients: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "rules.toml").write_text('[r]\na_to_b = ["create"]\nb_to_a = []\n'
                                           '[r.mappings]\nid = "id"\n')
        (folder / "customer_settings.toml").write_text(textwrap.dedent("""
            [customers.bench.pipelines.p]
            rules = "r"
            a = { connector = "file", path = "a.jsonl", key = "id" }
            b = { connector = "file", path = "b.jsonl", key = "id" }
            """))
        (folder / "a.jsonl").write_text('{"id": 1}\n')
        endpoint = f"ipc://{folder}/run/control.sock"
        env = dict(os.environ, RUNTIME_DIRECTORY=str(folder / "run"),
                   LOGS_DIRECTORY=str(folder / "logs"))
        env.pop("NOTIFY_SOCKET", None)
        proc = subprocess.Popen(
            [sys.executable, "-m", "recsync", "--config-dir", str(folder), "--state-dir",
             str(folder / "state"), "--log-level", "warning"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_limit)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    _ask(endpoint)
                    break
                except DaemonUnreachable:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)  # waiting for the daemon to start
            before = _fds(proc.pid)
            peak, t0 = before, time.monotonic()
            for i in range(clients):
                _ask(endpoint)
                if i % 100 == 99:
                    peak = max(peak, _fds(proc.pid))
            seconds = time.monotonic() - t0
            after = _fds(proc.pid)
            print(f"{clients} one-shot `failed` clients under RLIMIT_NOFILE {LIMIT}: all "
                  f"answered in {seconds:.1f} s; descriptors (recsyncd + front) before "
                  f"{before}, peak {peak}, after {after}")
            return 0 if proc.poll() is None and peak <= before + 32 else 1
        finally:
            proc.terminate()
            proc.wait(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10_000)
    return run(parser.parse_args().clients)


if __name__ == "__main__":
    sys.exit(main())
