"""packaging/recsyncd@.service, the template unit of N nodes on one host: systemd accepts
it, recsyncd accepts its command line, and two instances run side by side, each with its
own runtime directory (control socket), state directory and log, on one configuration."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path

import psycopg
import pytest

from recsync.cluster.leases import create_tables
from recsync.daemon.main import parse_args
from tests.e2e.helpers import make_users, wait_for
from tests.pgfixture import PG_DSN, require_pg

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "packaging" / "recsyncd@.service"
SINGLE = ROOT / "packaging" / "recsyncd.service"


def settings(path: Path) -> dict[str, list[str]]:
    """Each ``Key=`` of a unit file, every value it is given, in order."""
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z]+)=(.*)$", line)
        if m:
            found.setdefault(m.group(1), []).append(m.group(2))
    return found


def instance(value: str, name: str) -> str:
    return value.replace("%i", name)


def test_the_template_keeps_the_single_units_settings_but_its_directories() -> None:
    single, template = settings(SINGLE), settings(TEMPLATE)
    per_node = {"Description", "ExecStart", "StateDirectory", "RuntimeDirectory",
                "LogsDirectory"}
    for key in set(single) | set(template):
        if key not in per_node:
            assert template.get(key) == single.get(key), key  # hardening, watchdog...
    assert template["ConfigurationDirectory"] == ["recsync"]  # one config for all nodes
    for key in ("StateDirectory", "RuntimeDirectory", "LogsDirectory"):
        assert template[key] == ["recsync/%i"], key


def test_systemd_accepts_an_instance_of_the_template(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    recsyncd = Path(sys.executable).parent / "recsyncd"
    assert recsyncd.exists()
    # verify checks that ExecStart's program exists: this venv's, in place of /usr/local
    (tmp_path / "recsyncd@.service").write_text(
        TEMPLATE.read_text().replace("/usr/local/bin/recsyncd", str(recsyncd)))
    done = subprocess.run([analyze, "verify", str(tmp_path / "recsyncd@7.service")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr


def test_recsyncd_takes_the_instance_as_its_node_name() -> None:
    (exec_start,) = settings(TEMPLATE)["ExecStart"]
    argv = shlex.split(instance(exec_start, "3"))
    assert argv[0] == "/usr/local/bin/recsyncd"
    assert parse_args(argv[1:]).node == "3"


def test_two_instances_run_side_by_side_each_in_its_own_directories(tmp_path: Path) -> None:
    require_pg()
    customer = f"c{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        create_tables(conn, "recsync")
    units = settings(TEMPLATE)
    (exec_start,) = units["ExecStart"]
    # what systemd makes under /etc, /var/lib, /run, /var/log (a short path: a socket's
    # path holds at most 107 bytes)
    root = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))
    etc = root / "etc" / units["ConfigurationDirectory"][0]
    etc.mkdir(parents=True)
    make_users(tmp_path / "a.sqlite", [(1, "Ada", "ada@example.com", "active")])
    a_side = tmp_path / "a.sqlite"
    (etc / "customer_settings.toml").write_text(textwrap.dedent(f"""
        [cluster]
        state = "{PG_DSN}"
        lease_ttl = 5.0
        [customers.{customer}.pipelines.p]
        rules = "contacts"
        a = {{ connector = "sqlite", path = "{a_side}", table = "users", key = "record_id" }}
        b = {{ connector = "file", path = "{tmp_path / 'b.jsonl'}", key = "record_id" }}
        """))
    (etc / "rules.toml").write_text(textwrap.dedent("""
        [contacts]
        a_to_b = ["create", "update", "delete"]
        b_to_a = ["create", "update", "delete"]
        [contacts.mappings]
        record_id = "record_id"
        full_name = "full_name"
        """))
    procs: dict[str, subprocess.Popen[str]] = {}
    names = [f"{customer}-1", f"{customer}-2"]
    dirs = {}
    try:
        for name in names:
            # the environment systemd gives an instance: its *Directory= under our root
            env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
            for key, var, top in (("StateDirectory", "STATE_DIRECTORY", "var/lib"),
                                  ("RuntimeDirectory", "RUNTIME_DIRECTORY", "run"),
                                  ("LogsDirectory", "LOGS_DIRECTORY", "var/log"),
                                  ("ConfigurationDirectory", "CONFIGURATION_DIRECTORY",
                                   "etc")):
                folder = root / top / instance(units[key][0], name)
                folder.mkdir(parents=True, exist_ok=True, mode=0o700)
                env[var] = str(folder)
            dirs[name] = env
            argv = shlex.split(instance(exec_start, name))
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "recsync", *argv[1:]], env=env, cwd=tmp_path,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for name in names:
            run = Path(dirs[name]["RUNTIME_DIRECTORY"])
            wait_for(lambda r=run, n=name: (r / "control.sock").exists()
                     or procs[n].poll() is not None, timeout=60,
                     what=f"{name}'s control socket")
            assert procs[name].poll() is None, procs[name].communicate()[1]
            log = Path(dirs[name]["LOGS_DIRECTORY"]) / "record_sync.log"
            wait_for(lambda lg=log, n=name: n in lg.read_text() if lg.exists() else False,
                     timeout=60, what=f"{name}'s own log")
        runs = {Path(dirs[n]["RUNTIME_DIRECTORY"]) for n in names}
        assert len(runs) == 2 and all(r.parent == root / "run" / "recsync" for r in runs)
        wait_for(lambda: (tmp_path / "b.jsonl").exists()
                 and "Ada" in (tmp_path / "b.jsonl").read_text(), timeout=60,
                 what="the pipeline synced by one of the two")
        with psycopg.connect(PG_DSN) as conn:
            rows = conn.execute("SELECT node FROM recsync.nodes WHERE node = ANY(%s)",
                                (names,)).fetchall()
        assert sorted(r[0] for r in rows) == names  # both joined, under their instance names
    finally:
        shutil.rmtree(root, ignore_errors=True)
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute("DELETE FROM recsync.leases WHERE pipeline LIKE %s", (customer + "/%",))
            conn.execute("DELETE FROM recsync.nodes WHERE node LIKE %s", (customer + "-%",))
            for table in ("meta", "cursors", "links", "queue", "history", "listing_seen",
                          "rekeys", "bulk_jobs"):
                conn.execute(f"DELETE FROM recsync.{table} WHERE pipeline LIKE %s",
                             (customer + "/%",))
