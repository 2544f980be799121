"""A node frozen while it holds the lock under which the PostgreSQL state's tables are
created must not keep every other node from starting pipelines."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import psycopg

from recsync.state.pgbackend import _LOCK_ID, connect
from tests.pgfixture import PG_DSN, PgSchema, pg  # noqa: F401 - the fixture

_CONNECT = """
import sys
from recsync.state.pgbackend import connect
print("connecting", flush=True)
connect(sys.argv[1], sys.argv[2])
print("connected", flush=True)
"""


def _waiting_for_the_lock(admin: psycopg.Connection[object]) -> bool:
    row = admin.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
        "AND objid = %s", (_LOCK_ID,)).fetchone()
    return bool(row and row[0])


def test_a_node_frozen_holding_the_schema_lock_is_cut_off(pg: PgSchema) -> None:  # noqa: F811
    schema = pg.schema
    with psycopg.connect(PG_DSN, autocommit=True) as holder, \
            psycopg.connect(PG_DSN, autocommit=True) as admin:
        holder.execute("BEGIN")
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
        node = subprocess.Popen([sys.executable, "-c", _CONNECT, PG_DSN, schema],
                                stdout=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            while not _waiting_for_the_lock(admin):  # the node waits in create_schema
                assert node.poll() is None and time.monotonic() < deadline
            os.kill(node.pid, signal.SIGSTOP)  # frozen: it gets the lock, never goes on
            holder.execute("COMMIT")
            done = threading.Event()

            def start_another() -> None:
                connect(PG_DSN, schema).close()
                done.set()

            threading.Thread(target=start_another, daemon=True).start()
            # the server ends the frozen node's session after 5 s idle in its transaction
            assert done.wait(60), "another node stayed blocked behind the frozen one"
        finally:
            node.kill()
            node.wait()
