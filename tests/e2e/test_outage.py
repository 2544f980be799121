"""End to end: rows deleted while the CRM is down, before their creates ever got there.

A delete of a record the CRM never received cancels its queued create; it deletes nothing
there, so it must not count toward the mass-delete guard (which would hold the pipeline
for the whole outage while the CRM keeps deleted rows and stale names).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.helpers import make_users, sql, users, wait_for, write_config
from tests.e2e.test_crm import (  # noqa: F401  (fixtures)
    SQLITE_A,
    Crm,
    expected,
    ok,
    once,
    outreach,
    salesforce,
    start_once,
)

LINKED = [(i, f"User {i}", f"u{i}@example.com", "active") for i in range(1, 11)]
NEW = range(100, 120)  # rows created during the outage, then deleted before it ends
FAULT = {"error_rate": 1.0, "error_status": 503}


def queued(state: Path, keys: list[str], where: str) -> int:
    marks = ",".join("?" * len(keys))
    rows = sql(state, f"SELECT COUNT(*) FROM queue WHERE direction = 'a_to_b' AND key IN "
                      f"({marks}) AND {where}", tuple(keys))
    return int(rows[0][0])


@pytest.mark.parametrize("status", [503, 429])
@pytest.mark.parametrize("kind", ["salesforce", "outreach"])
def test_deletes_of_never_synced_rows_during_an_outage_do_not_hold_the_pipeline(
    tmp_path: Path, request: pytest.FixtureRequest, kind: str, status: int
) -> None:
    crm: Crm = request.getfixturevalue(kind)
    a = tmp_path / "a.sqlite"
    make_users(a, LINKED)
    write_config(tmp_path, SQLITE_A, crm.side_b, rules=crm.rules(),
                 settings="max_attempts = 1000\nbatch_size = 5\n")
    ok(once(tmp_path))
    assert set(crm.rows()) == {str(i) for i in range(1, 11)}

    if status == 429:
        crm.mock.set_faults(status_429_retry_after=0)
    else:
        crm.mock.set_faults(**FAULT)
    sql(a, "INSERT INTO users (record_id, full_name, email_address, status) VALUES "
           + ",".join(f"({i}, 'New {i}', 'n{i}@example.com', 'active')" for i in NEW))
    sql(a, "UPDATE users SET full_name = 'Renamed 2' WHERE record_id = 2")
    sql(a, "DELETE FROM users WHERE record_id = 3")
    new_keys = [str(i) for i in NEW]
    state = tmp_path / "state" / "test__p.sqlite"
    proc = start_once(tmp_path, timeout=60)
    try:
        # The creates were tried and refused: queued with attempts.
        wait_for(lambda: queued(state, new_keys, "last_error IS NOT NULL") == len(new_keys)
                 or proc.poll() is not None, what="creates refused by the CRM")
        sql(a, f"DELETE FROM users WHERE record_id >= {NEW[0]}")
        # The deletes are read while the CRM is still down: no create of them is left.
        wait_for(lambda: queued(state, new_keys, "op = 'upsert'") == 0
                 or proc.poll() is not None,
                 what="the deletes to cancel the queued creates")
        assert proc.poll() is None, proc.communicate()
        crm.mock.set_faults(status_429_retry_after=None, error_rate=0.0)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, out + err
    assert "held" not in out + err, out + err
    assert " 0 failed" in out, out
    survivors = users(a)
    assert set(survivors) == {str(i) for i in range(1, 11)} - {"3"}
    assert crm.rows() == expected(survivors, crm.kind)
    assert crm.rows()["2"][0] == "Renamed 2"
    assert not crm.duplicates()
    assert not sql(state, "SELECT key FROM queue")
