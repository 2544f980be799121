"""Start-up cost: `recsync` and `recsyncd --once` import only what the run needs.

Importing our own modules was most of the fixed cost of each `recsync` call and of each
`recsyncd --once` (issue 16). These tests hold the promise by listing the modules a fresh
interpreter has loaded (no timing)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

HEAVY = ("textual", "rich", "psycopg", "psycopg_pool", "redis", "simple_salesforce",
         "requests", "urllib3", "hypothesis")


def loaded_after(code: str, cwd: Path | None = None) -> set[str]:
    """The module names loaded once ``code`` ran in a new interpreter."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.splitlines()[-1]))


def under(modules: set[str], *roots: str) -> set[str]:
    return {m for m in modules if any(m == r or m.startswith(r + ".") for r in roots)}


def test_cli_does_not_import_the_daemon_or_heavy_libraries() -> None:
    loaded = loaded_after("import recsync.cli")
    assert not under(loaded, *HEAVY, "pykka", "recsync.daemon.app", "recsync.daemon.main",
                     "recsync.actors", "recsync.connectors", "recsync.state", "recsync.config",
                     "recsync.rules", "recsync.tui", "recsync.mock", "recsync.cluster",
                     "recsync.demo", "recsync.daemon.sides", "recsync.daemon.logs", "sqlite3",
                     "zmq", "recsync.client")


def test_daemon_package_still_exports_its_names() -> None:
    loaded = loaded_after(
        "from recsync.daemon import Daemon, PipelineReport, main\n"
        "import sys\n"
        "assert main is sys.modules['recsync.daemon.main'].main and Daemon.__name__ == 'Daemon'\n"
        "assert PipelineReport.__module__ == 'recsync.daemon.app'")
    assert "recsync.daemon.app" in loaded


def test_once_between_sqlite_files_loads_no_control_plane_nor_other_connectors(
        tmp_path: Path) -> None:
    side = '{{ connector = "sqlite", path = "{}", table = "t", key = "id" }}'
    for name in ("a", "b"):
        with sqlite3.connect(tmp_path / f"{name}.sqlite") as db:
            db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, updated_at REAL)")
        db.close()
    (tmp_path / "customer_settings.toml").write_text(
        "[customers.c.pipelines.p]\nrules = \"r\"\n"
        f"a = {side.format(tmp_path / 'a.sqlite')}\nb = {side.format(tmp_path / 'b.sqlite')}\n")
    (tmp_path / "rules.toml").write_text(
        '[r]\na_to_b = ["create", "update"]\n[r.mappings]\nid = "id"\nname = "name"\n')
    args = ["--config-dir", str(tmp_path), "--state-dir", str(tmp_path / "state"), "--once"]
    loaded = loaded_after(
        f"from recsync.daemon.main import main\nassert main({args!r}) == 0", cwd=tmp_path)
    assert "recsync.connectors.sqlite" in loaded  # it did run the pipeline
    assert not under(loaded, *HEAVY, "zmq", "recsync.daemon.front", "recsync.daemon.control",
                     "recsync.tui", "recsync.cluster", "recsync.connectors.postgres",
                     "recsync.connectors.salesforce", "recsync.connectors.outreach",
                     "recsync.mock.salesforce", "recsync.mock.outreach",
                     "recsync.mock.httpserver", "recsync.state.pgbackend")


def test_suite_bytecode_never_runs_an_edited_source_stale(tmp_path: Path) -> None:
    from tests.bytecode import compile_package

    module = tmp_path / "pkg" / "mod.py"
    module.parent.mkdir()
    module.write_text("VALUE = 1\n")
    compile_package(tmp_path / "pkg")
    stat = module.stat()
    module.write_text("VALUE = 2\n")  # same size, and the same mtime below
    os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    proc = subprocess.run([sys.executable, "-c", "import mod; print(mod.VALUE)"],
                          capture_output=True, text=True, cwd=module.parent, timeout=60)
    assert proc.stdout.strip() == "2", proc.stderr
    compile_package(tmp_path / "pkg")
    proc = subprocess.run([sys.executable, "-c", "import mod; print(mod.VALUE)"],
                          capture_output=True, text=True, cwd=module.parent, timeout=60)
    assert proc.stdout.strip() == "2", proc.stderr


def test_once_with_crm_sides_and_no_cluster_loads_no_postgres_nor_redis(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parent.parent / "packaging" / "etc" / "recsync"
    args = ["--config-dir", str(example), "--state-dir", str(tmp_path), "--once",
            "--timeout", "60"]
    loaded = loaded_after(
        f"from recsync.daemon.main import main\nassert main({args!r}) == 0", cwd=tmp_path)
    assert {"recsync.connectors.outreach", "recsync.connectors.salesforce"} <= loaded
    assert not under(loaded, "psycopg", "psycopg_pool", "redis", "zmq", "textual",
                     "hypothesis", "recsync.cluster", "recsync.state.pgbackend")
