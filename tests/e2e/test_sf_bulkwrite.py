"""End to end: a real `recsyncd` backfills the mock Salesforce from SQLite through Bulk API
2.0 ingest jobs (the backlog over ``bulk_threshold``), with the same results as sObject
Collections, per-row failures, and a kill -9 while a job is in flight."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from recsync.mock.salesforce import SalesforceMock
from recsync.state.backend import SqliteBackend
from recsync.state.bulkjobs import BulkJournal
from tests.e2e.helpers import make_users, sql, wait_for, write_config
from tests.e2e.test_crm import (
    SQLITE_A,
    SUMMARY_ZERO,
    Crm,
    ok,
    once,
    seed_rows,
    start_once,
    state_rows,
)
from tests.e2e.test_status_truth import start as start_daemon

N = 10_000
# one way, as a backfill: Salesforce is not read (what it costs to read it back is the
# reading's, one request per 2,000 records)
ONE_WAY = """
[contacts]
a_to_b = ["create", "update", "delete"]
b_to_a = []
conflict = "last_writer_wins"
[contacts.mappings]
record_id = "Record_Id__c"
full_name = "LastName"
email_address = "Email"
status = "Status__c"
[contacts.filters]
status = { in = ["active", "pending"] }
"""


def setup_pipeline(folder: Path, crm: Crm, rows: list[tuple[object, ...]],
                   settings: str = "") -> None:
    make_users(folder / "a.sqlite", rows)
    write_config(folder, SQLITE_A, crm.side_b, rules=ONE_WAY, settings=settings)


def _run(tmp_path: Path, rows: list[tuple[object, ...]], settings: str = "",
         code: int = 0) -> tuple[SalesforceMock, Crm, str, int]:
    mock = SalesforceMock()
    mock.start()
    crm = Crm("salesforce", mock)
    setup_pipeline(tmp_path, crm, rows, settings=settings)
    before = mock.request_count
    out = ok(once(tmp_path, timeout=240), code)
    return mock, crm, out, mock.request_count - before


def _jobs(mock: SalesforceMock) -> list[dict[str, object]]:
    with mock.lock:
        return [dict(j) for j in mock.bulk.jobs.values()]


def test_backfill_goes_through_one_bulk_job_with_the_results_of_collections(
        tmp_path: Path) -> None:
    rows = seed_rows(N)
    bulk, crm, out, used = _run(tmp_path / "bulk", rows)
    try:
        synced = sum(1 for r in rows if r[3] != "inactive")
        assert f"a->b {synced} synced" in out, out
        assert used <= 10, f"{used} API requests for {N} records"
        assert [j["operation"] for j in _jobs(bulk)] == ["upsert"]
        assert not crm.duplicates()
        got = crm.rows()
        # the job id is in each record's history
        jid = str(_jobs(bulk)[0]["id"])
        hist = state_rows(tmp_path / "bulk", "SELECT detail FROM history WHERE key = '1'")
        assert (f"Bulk API 2.0 job {jid}",) in hist
    finally:
        bulk.stop()
    coll, crm2, out2, used2 = _run(tmp_path / "coll", rows, settings="bulk_threshold = 0")
    try:
        assert f"a->b {synced} synced" in out2, out2
        assert _jobs(coll) == [] and used2 > 40  # Collections of 200
        assert crm2.rows() == got
    finally:
        coll.stop()


def test_rows_salesforce_refuses_become_failed_records_with_its_error(tmp_path: Path) -> None:
    rows = [(i, f"User {i}", "not-an-email" if i % 1000 == 3 else f"u{i}@example.com",
             "active") for i in range(1, 2501)]
    mock, crm, out, _used = _run(tmp_path, rows, code=1)  # 1: records failed
    try:
        assert "a->b 2497 synced" in out and "3 failed" in out, out
        assert len(_jobs(mock)) == 1
        failed = state_rows(tmp_path, "SELECT key, last_error FROM queue WHERE state = 'failed'")
        assert sorted(k for k, _e in failed) == ["1003", "2003", "3"]
        for _k, err in failed:
            assert "INVALID_EMAIL_ADDRESS" in err and "Bulk API 2.0 job" in err, err
        assert len(crm.rows()) == 2497
    finally:
        mock.stop()


def test_after_a_bulk_backfill_a_trickle_goes_through_collections(tmp_path: Path) -> None:
    rows = [(i, f"User {i}", f"u{i}@example.com", "active") for i in range(1, 2501)]
    mock, crm, out, _used = _run(tmp_path, rows)
    try:
        assert "a->b 2500 synced" in out and len(_jobs(mock)) == 1, out
        sql(tmp_path / "a.sqlite", "UPDATE users SET full_name = 'Trickle' WHERE record_id < 4")
        before = mock.request_count
        out = ok(once(tmp_path))
        assert "a->b 3 synced" in out, out
        assert len(_jobs(mock)) == 1  # no new job: one Collections request
        # token, describe, the check of the target for changes, one collection
        assert mock.request_count - before <= 4
        assert [crm.rows()[k][0] for k in ("1", "2", "3", "4")] == ["Trickle"] * 3 + ["User 4"]
    finally:
        mock.stop()


@pytest.mark.parametrize("n", [3000, 1500])
def test_kill_while_a_job_is_in_progress_finds_it_again_by_id(tmp_path: Path, n: int) -> None:
    """1500: the backlog is under bulk_threshold after the restart (raised to 2,000 in the
    meantime), and the job in flight is finished all the same."""
    mock = SalesforceMock(bulk_ingest_polls=10**9)  # jobs stay InProgress until released
    mock.start()
    try:
        crm = Crm("salesforce", mock)
        rows = [(i, f"User {i}", f"u{i}@example.com", "active") for i in range(1, n + 1)]
        setup_pipeline(tmp_path, crm, rows, settings="bulk_threshold = 1000")
        proc = start_once(tmp_path, timeout=120)
        try:
            wait_for(lambda: any(j["state"] == "InProgress" for j in _jobs(mock)), 60)
            journal = state_rows(tmp_path, "SELECT job_id, operation, rows FROM bulk_jobs")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        (jid, op, keys), = journal
        assert op == "upsert" and len(json.loads(keys)) == n
        assert crm.rows() == {}  # nothing written yet
        write_config(tmp_path, SQLITE_A, crm.side_b, rules=ONE_WAY)  # bulk_threshold 2000
        mock.bulk.polls = 0  # Salesforce finishes the job
        out = ok(once(tmp_path, timeout=120))
        assert f"a->b {n} synced" in out, out
        assert [j["id"] for j in _jobs(mock)] == [jid]  # found again, none submitted twice
        assert len(crm.rows()) == n and not crm.duplicates()
        assert state_rows(tmp_path, "SELECT COUNT(*) FROM bulk_jobs") == [(0,)]
        assert sql(tmp_path / "a.sqlite", "SELECT COUNT(*) FROM users") == [(n,)]
    finally:
        mock.stop()


def test_echoes_of_a_bulk_backfill_are_not_written_back(tmp_path: Path) -> None:
    mock = SalesforceMock()
    mock.start()
    try:
        crm = Crm("salesforce", mock)
        rows = [(i, f"User {i}", f"u{i}@example.com", "active") for i in range(1, 2501)]
        make_users(tmp_path / "a.sqlite", rows)
        write_config(tmp_path, SQLITE_A, crm.side_b, rules=crm.rules())  # both ways
        assert "a->b 2500 synced, b->a 0 synced" in ok(once(tmp_path, timeout=120))
        assert len(_jobs(mock)) == 1
        assert SUMMARY_ZERO in ok(once(tmp_path, timeout=120))  # a second pass: nothing
        assert sql(tmp_path / "a.sqlite", "SELECT COUNT(*) FROM users") == [(2500,)]
    finally:
        mock.stop()


def test_a_job_left_open_by_a_kill_is_aborted_and_its_records_sent_once(
        tmp_path: Path) -> None:
    """Killed after Salesforce gave the job an id (journaled) and before UploadComplete:
    nothing of it ran, so it is aborted and its records go out in one new job."""
    mock = SalesforceMock()
    mock.start()
    try:
        crm = Crm("salesforce", mock)
        rows = [(i, f"User {i}", f"u{i}@example.com", "active") for i in range(1, 3001)]
        setup_pipeline(tmp_path, crm, rows)
        with mock.lock:
            _s, _h, body = mock.bulk.route("POST", [], {
                "object": "Contact", "operation": "upsert",
                "externalIdFieldName": "Record_Id__c"}, b"")
        left_open = json.loads(body)["id"]
        journal = BulkJournal(SqliteBackend(tmp_path / "state" / "test__p.sqlite"))
        journal.add(left_open, "a_to_b", "upsert", {str(i): "0" for i in range(1, 3001)})
        journal.close()
        out = ok(once(tmp_path, timeout=120))
        assert "a->b 3000 synced" in out, out
        states = {str(j["id"]): j["state"] for j in _jobs(mock)}
        assert states.pop(left_open) == "Aborted"
        assert list(states.values()) == ["JobComplete"]
        assert len(crm.rows()) == 3000 and not crm.duplicates()
        assert state_rows(tmp_path, "SELECT COUNT(*) FROM bulk_jobs") == [(0,)]
    finally:
        mock.stop()


def test_a_large_delete_goes_out_as_one_bulk_delete_job(tmp_path: Path) -> None:
    rows = [(i, f"User {i}", f"u{i}@example.com", "active") for i in range(1, 6001)]
    mock, crm, out, _used = _run(tmp_path, rows)
    try:
        assert "a->b 6000 synced" in out, out
        sql(tmp_path / "a.sqlite", "DELETE FROM users WHERE record_id <= 2500")
        before = mock.request_count
        out = ok(once(tmp_path, timeout=120))
        assert "a->b 2500 synced" in out, out
        assert [j["operation"] for j in _jobs(mock)] == ["upsert", "delete"]
        assert sorted(map(int, crm.rows())) == list(range(2501, 6001))
        assert mock.request_count - before <= 12  # Collections: 13 lookups + 13 deletes
    finally:
        mock.stop()


def test_status_shows_the_bulk_job_under_way(tmp_path: Path) -> None:
    mock = SalesforceMock(bulk_ingest_polls=10**9)  # the job stays InProgress until released
    mock.start()
    crm = Crm("salesforce", mock)
    rows = [(i, f"User {i}", f"u{i}@example.com", "active") for i in range(1, 3001)]
    setup_pipeline(tmp_path, crm, rows)
    daemon = start_daemon(tmp_path)
    try:
        def bulk() -> dict[str, object] | None:
            side = daemon.status()["test/p"]["sides"]["b"]
            job = side.get("bulk")
            return job if job and job["state"] == "InProgress" else None

        job = wait_for(bulk, 60, "the bulk job in status")
        assert job["operation"] == "upsert" and job["total"] == 3000
        assert job["job"] == _jobs(mock)[0]["id"]
        text = daemon.cli("status").stdout
        assert f"bulk upsert job {job['job']} InProgress: 0 of 3000 rows processed" in text
        mock.bulk.polls = 0
        wait_for(lambda: daemon.status()["test/p"]["synced_a_to_b"] == 3000, 60, "the sync")
        assert daemon.status()["test/p"]["sides"]["b"].get("bulk") is None
    finally:
        daemon.proc.terminate()
        daemon.proc.wait(30)
        mock.stop()
