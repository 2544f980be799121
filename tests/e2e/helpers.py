"""Helpers for end-to-end tests: write a config, run recsyncd in a subprocess, read sides."""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CONTACT_RULES = """
[contacts]
a_to_b = ["create", "update", "delete"]
b_to_a = ["create", "update"]
conflict = "{conflict}"
[contacts.mappings]
record_id = "record_id"
full_name = "name"
email_address = "email"
status = "status"
[contacts.filters]
status = {{ in = ["active", "pending"] }}
"""

# The contact rules between two tables of the USERS schema (same field names on both sides).
USERS_RULES = CONTACT_RULES.replace('"name"', '"full_name"').replace('"email"', '"email_address"')

USERS = """
CREATE TABLE users (
    record_id INTEGER PRIMARY KEY,
    full_name TEXT NOT NULL,
    email_address TEXT,
    status TEXT NOT NULL DEFAULT 'active',
    updated_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
)
"""


def write_config(
    folder: Path,
    a: str,
    b: str,
    *,
    rules: str | None = None,
    conflict: str = "last_writer_wins",
    settings: str = "",
) -> Path:
    """Write customer_settings.toml (one pipeline test/p) and rules.toml into ``folder``.

    ``settings`` are TOML lines of pipeline-level overrides.
    """
    folder.mkdir(parents=True, exist_ok=True)
    base = textwrap.dedent("""
        [defaults]
        batch_size = 500
        flush_interval = 0.05
        poll_interval = 0.1
        retry_base_delay = 0.05
        retry_max_delay = 0.2
        [defaults.rate_limit]
        max_requests = 100000
        window_seconds = 1
        [defaults.circuit_breaker]
        failure_threshold = 1000
        reset_timeout = 0.1
        """)
    (folder / "customer_settings.toml").write_text(
        base + textwrap.dedent(f"""
        [customers.test.pipelines.p]
        rules = "contacts"
        a = {a}
        b = {b}
        """) + textwrap.dedent(settings))
    (folder / "rules.toml").write_text(rules or CONTACT_RULES.format(conflict=conflict))
    return folder


def install_connector(folder: Path, name: str, source: str, class_name: str) -> Path:
    """A real plug-in connector: module ``<name>_connector`` (``source``) and its
    dist-info with a `recsync.connectors` entry point ``name``; the folder to put on
    PYTHONPATH."""
    plugin = folder / "plugin"
    info = plugin / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (plugin / f"{name}_connector.py").write_text(source)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[recsync.connectors]\n{name} = {name}_connector:{class_name}\n")
    return plugin


def recsyncd_cmd(config_dir: Path, state_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "recsync", "--config-dir", str(config_dir),
            "--state-dir", str(state_dir), *extra]


def run_once(config_dir: Path, state_dir: Path | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    state_dir = state_dir or config_dir / "state"
    return subprocess.run(
        recsyncd_cmd(config_dir, state_dir, "--once", "--timeout", str(timeout - 10)),
        capture_output=True, text=True, timeout=timeout, env=_env())


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    return env


def make_users(path: Path, rows: list[tuple[Any, ...]], schema: str = USERS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as conn:
        conn.execute(schema)
        conn.executemany(
            "INSERT INTO users (record_id, full_name, email_address, status) VALUES (?,?,?,?)",
            rows)
    conn.close()


def sql(path: Path, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute(statement, params).fetchall()
    conn.close()
    return rows


def users(path: Path) -> dict[str, tuple[Any, ...]]:
    rows = sql(path, "SELECT record_id, full_name, email_address, status FROM users")
    return {str(r[0]): tuple(str(v) for v in r[1:]) for r in rows}


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, rows: list[dict[str, Any]], fields: list[str]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)


def by_key(rows: list[dict[str, Any]], key: str = "record_id") -> dict[str, dict[str, Any]]:
    return {str(r[key]): r for r in rows}


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)  # polling interval of a deadline wait, not a wait for an actor
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def kill_when(proc: subprocess.Popen[bytes], progress: Callable[[], int], at: int,
               timeout: float = 120.0) -> bool:
    """SIGKILL ``proc`` as soon as ``progress()`` reaches ``at``; False if it exited first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if progress() >= at:
            proc.kill()
            proc.wait()
            return True
        try:
            proc.wait(timeout=0.002)  # the polling interval, and notice of an early exit
            return False
        except subprocess.TimeoutExpired:
            pass
    proc.kill()
    proc.wait()
    raise AssertionError(f"recsyncd made no progress in {timeout}s")
