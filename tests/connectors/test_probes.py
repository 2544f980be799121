"""The SQLite change probe must leave the daemon's own SQLite locks alone."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from recsync.connectors.probes import sqlite_probe

OTHER_APP = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
conn.execute("SELECT count(*) FROM t").fetchone()
conn.close()
"""


def count_elsewhere(path: Path) -> int:
    out = subprocess.run([sys.executable, "-c", "import sqlite3, sys; print(sqlite3.connect("
                          "sys.argv[1]).execute('SELECT count(*) FROM t').fetchone()[0])",
                          str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout)


def test_a_probe_does_not_let_another_process_delete_the_wal_under_us(tmp_path: Path) -> None:
    """Another application closing its connection to a side's database must not find
    itself the last connection (it would checkpoint and delete the WAL the daemon still
    writes to, and the daemon's next commits would be lost): the probe may not close a
    descriptor of the file, which drops this process's POSIX locks on it."""
    path = tmp_path / "side.sqlite"
    ours = sqlite3.connect(path, isolation_level=None)
    ours.execute("PRAGMA journal_mode = WAL")
    ours.execute("CREATE TABLE t (x INTEGER)")
    ours.execute("INSERT INTO t VALUES (1)")
    probe = sqlite_probe(path)
    first = probe()
    assert probe() == first  # nothing changed
    subprocess.run([sys.executable, "-c", OTHER_APP, str(path)], check=True)
    assert (tmp_path / "side.sqlite-wal").exists()
    ours.execute("INSERT INTO t VALUES (2)")
    assert count_elsewhere(path) == 2  # our commit after the other's close is there
    assert probe() != first  # and the probe saw it
    ours.close()
