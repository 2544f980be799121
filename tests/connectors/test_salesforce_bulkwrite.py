"""SalesforceConnector.write_bulk against a SalesforceMock on loopback: Bulk API 2.0 ingest
jobs, their per-row results, and the journal of jobs in flight (real simple-salesforce,
a real state file)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from recsync.connectors.salesforce import SalesforceConnector
from recsync.messages import WriteOp
from recsync.mock.salesforce import SalesforceMock
from recsync.state.backend import SqliteBackend
from recsync.state.bulkjobs import BulkJournal

KEY = "Record_Id__c"


@pytest.fixture
def mock() -> Iterator[SalesforceMock]:
    m = SalesforceMock()
    m.start()
    yield m
    m.stop()


@pytest.fixture
def conn(mock: SalesforceMock, tmp_path: Path) -> Iterator[SalesforceConnector]:
    c = SalesforceConnector({"key": KEY, "mock": True, "instance_url": mock.url}, tmp_path)
    c._bulk_write.sleep = lambda _s: None  # status reads of a running job without pauses
    c.open()
    yield c
    c.close()


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[BulkJournal]:
    j = BulkJournal(SqliteBackend(tmp_path / "state.sqlite"))
    yield j
    j.close()


def up(key: str, **fields: object) -> WriteOp:
    return WriteOp(key, "upsert", {"LastName": f"Name{key}", **fields})


def test_upserts_deletes_and_refused_rows(conn: SalesforceConnector, journal: BulkJournal,
                                          mock: SalesforceMock) -> None:
    done = conn.write_bulk([up(str(i)) for i in range(1, 6)], journal, "a_to_b")
    assert [r.error for r in done.results] == [None] * 5 and len(done.jobs) == 1
    assert done.note == f"Bulk API 2.0 job {done.jobs[0]}"
    ops = [up("6", Email="bad address"), up("7", LastName=None), up("8"),
           WriteOp("1", "delete", None), WriteOp("404", "delete", None)]
    done = conn.write_bulk(ops, journal, "a_to_b")
    errors = [r.error for r in done.results]
    assert errors[0] is not None and "INVALID_EMAIL_ADDRESS" in errors[0]
    assert errors[1] is not None and "REQUIRED_FIELD_MISSING" in errors[1]
    assert errors[2:] == [None, None, None]  # a record not there counts as deleted
    assert not any(r.retryable for r in done.results)
    assert sorted(r["Record_Id__c"] for r in mock.list_records()) == ["2", "3", "4", "5", "8"]
    assert journal.jobs("a_to_b")  # removed by the queue with the outcomes, not here


def test_a_journaled_job_that_has_gone_is_dropped_and_its_records_sent(
        conn: SalesforceConnector, journal: BulkJournal, mock: SalesforceMock) -> None:
    journal.add("750000000000099AAA", "a_to_b", "upsert", {"1": "0"})
    done = conn.write_bulk([up("1")], journal, "a_to_b")
    assert done.results[0].error is None
    assert "750000000000099AAA" not in done.jobs
    assert [j.job_id for j in journal.jobs("a_to_b")] == done.jobs
    assert [r["Record_Id__c"] for r in mock.list_records()] == ["1"]


def test_a_finished_job_found_again_gives_its_results_for_unchanged_records_only(
        conn: SalesforceConnector, journal: BulkJournal, mock: SalesforceMock) -> None:
    first = conn.write_bulk([up("1"), up("2")], journal, "a_to_b")
    # the outcomes were never applied (a crash): "2" changed meanwhile, "1" did not
    again = conn.write_bulk([up("1"), up("2", LastName="Changed")], journal, "a_to_b")
    assert [r.error for r in again.results] == [None, None]
    assert again.jobs[0] == first.jobs[0] and len(again.jobs) == 2
    with mock.lock:
        second = mock.bulk.jobs[again.jobs[1]]
    assert second["numberRecordsProcessed"] == 1  # only the changed record went again
    names = {r["Record_Id__c"]: r["LastName"] for r in mock.list_records()}
    assert names == {"1": "Name1", "2": "Changed"}
