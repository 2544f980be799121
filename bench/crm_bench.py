"""recsyncd end to end against the mock Salesforce (``python -m bench.crm_bench``).

In one run, against one SalesforceMock started in this process:
(a) a plain per-record simple-salesforce loop, what a user would write by hand
    (``sf.Contact.upsert(f"Record_Id__c/{i}", {...})``): records/s;
(b) ``recsyncd --once`` (a subprocess) syncing N SQLite users to the mock (side b =
    salesforce at the mock's instance_url, batch_size 2000, a high rate limit): records/s
    from the daemon's summary line ("in X s") and API requests per 1,000 records (the
    mock's request count over the run);
then the ratio (b)/(a) against the targets.

These machines are shared and their speed drifts from minute to minute, so (a) and (b)
are run ``--rounds`` times, interleaved, and the medians are compared (every run shown).
"""

from __future__ import annotations

import argparse
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from simple_salesforce.api import Salesforce

from recsync.mock.salesforce import SalesforceMock

TARGET_RATIO = 30.0
TARGET_REQUESTS = 6.0
RULES = """
[contacts]
a_to_b = ["create", "update", "delete"]
b_to_a = []
conflict = "last_writer_wins"
[contacts.mappings]
record_id = "Record_Id__c"
full_name = "LastName"
email_address = "Email"
status = "Status__c"
"""
USERS = """
CREATE TABLE users (
    record_id INTEGER PRIMARY KEY,
    full_name TEXT NOT NULL,
    email_address TEXT,
    status TEXT NOT NULL DEFAULT 'active',
    updated_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
)
"""


class _Plain(HTTPAdapter):
    """The mock speaks plain HTTP; simple-salesforce builds https:// URLs."""

    def send(self, request: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        request.url = request.url.replace("https://", "http://", 1)
        return super().send(request, **kwargs)


def loop(mock: SalesforceMock, n: int) -> float:
    """(a) records/s of a per-record upsert loop on simple-salesforce."""
    s = requests.Session()
    s.mount("https://", _Plain())
    tok = s.post(
        mock.url + "/services/oauth2/token",
        data={"grant_type": "client_credentials", "client_id": "b", "client_secret": "b"},
    ).json()
    sf: Any = Salesforce(
        instance_url=tok["instance_url"],
        session_id=tok["access_token"],
        session=s,
        version="59.0",
    )
    t0 = time.perf_counter()
    for i in range(n):
        sf.Contact.upsert(
            f"Record_Id__c/loop{i}",
            {"LastName": f"User {i}", "Email": f"u{i}@example.com", "Status__c": "active"},
        )
    elapsed = time.perf_counter() - t0
    s.close()
    return n / elapsed


def daemon(mock: SalesforceMock, n: int, folder: Path) -> tuple[float, int, str]:
    """(b) records/s from recsyncd's summary line, and the API requests it made."""
    with sqlite3.connect(folder / "a.sqlite") as db:
        db.execute(USERS)
        db.executemany(
            "INSERT INTO users (record_id, full_name, email_address, status) VALUES (?,?,?,?)",
            [(i, f"User {i}", f"u{i}@example.com", "active") for i in range(1, n + 1)],
        )
    db.close()
    (folder / "rules.toml").write_text(RULES)
    (folder / "customer_settings.toml").write_text(
        textwrap.dedent(f"""
        [defaults]
        batch_size = 2000
        page_size = 2000
        flush_interval = 0.05
        poll_interval = 2.0
        [defaults.rate_limit]
        max_requests = 1000000
        window_seconds = 1

        [customers.bench.pipelines.sf]
        rules = "contacts"
        a = {{ connector = "sqlite", path = "a.sqlite", table = "users", key = "record_id" }}
        b = {{ connector = "salesforce", mock = true, key = "Record_Id__c", \
instance_url = "{mock.url}" }}
        """)
    )
    env = dict(os.environ, STATE_DIRECTORY=str(folder / "state"))
    env.pop("NOTIFY_SOCKET", None)
    before = mock.request_count
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "recsync",
            "--config-dir",
            str(folder),
            "--state-dir",
            str(folder / "state"),
            "--once",
            "--timeout",
            "600",
        ],
        capture_output=True,
        text=True,
        timeout=660,
        env=env,
    )
    requests_made = mock.request_count - before
    line = result.stdout.strip()
    if result.returncode != 0:
        raise SystemExit(
            f"recsyncd --once failed ({result.returncode}): {line}\n{result.stderr[-2000:]}"
        )
    m = re.search(r"a->b (\d+) synced.* in ([\d.]+) s", line)
    if m is None or int(m.group(1)) != n:
        raise SystemExit(f"unexpected summary: {line!r}")
    return n / float(m.group(2)), requests_made, line


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--loop-records", type=int, default=1000)
    ap.add_argument("--records", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    loops: list[float] = []
    runs: list[float] = []
    worst_requests = 0
    for _ in range(args.rounds):
        # a fresh mock per round: every run starts from an empty org
        mock = SalesforceMock(daily_limit=10_000_000)
        mock.start()
        try:
            loops.append(loop(mock, args.loop_records))
            print(f"(a) per-record simple-salesforce loop: {loops[-1]:,.0f} records/s "
                  f"({args.loop_records} records)", flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                rate, reqs, line = daemon(mock, args.records, Path(tmp))
        finally:
            mock.stop()
        runs.append(rate)
        worst_requests = max(worst_requests, reqs)
        print(f"(b) recsyncd --once SQLite -> Salesforce: {rate:,.0f} records/s "
              f"({args.records} records; {reqs} API requests = "
              f"{reqs * 1000 / args.records:.1f} per 1,000 records)")
        print(f"    summary: {line}", flush=True)
    rate_loop, rate = statistics.median(loops), statistics.median(runs)
    per_k = worst_requests * 1000 / args.records
    print(f"medians of {args.rounds} rounds: (a) {rate_loop:,.0f} records/s, "
          f"(b) {rate:,.0f} records/s; most requests in a run: {per_k:.1f} per 1,000 records")
    ratio = rate / rate_loop
    print(f"ratio (b)/(a): {ratio:.1f}x")
    print(
        f"targets: ratio >= {TARGET_RATIO:.0f}x "
        f"({'met' if ratio >= TARGET_RATIO else 'NOT met'}), "
        f"<= {TARGET_REQUESTS:.0f} requests per 1,000 records "
        f"({'met' if per_k <= TARGET_REQUESTS else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
