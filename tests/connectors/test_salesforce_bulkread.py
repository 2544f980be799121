"""The Salesforce connector's first full read of a large sObject through a Bulk API 2.0
query job, against the mock on loopback (real HTTP, the real simple-salesforce session)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from recsync.connectors.salesforce import SalesforceConnector
from recsync.messages import Change
from recsync.mock.salesforce import SalesforceMock

KEY = "Record_Id__c"


@pytest.fixture
def mock() -> Iterator[SalesforceMock]:
    now = [1_700_000_000.0]  # the org's clock: the records are older than the read
    m = SalesforceMock(page_size=5, bulk_query_polls=2, clock=lambda: now[0])
    m.start()
    for i in range(23):
        m.push({KEY: str(i), "LastName": f"Bulk{i}", "Email": f"b{i}@example.com"})
    m.push({KEY: "gone", "LastName": "Deleted"})
    m.delete_record("gone")
    m.push({"LastName": "Hand Made"})  # no key yet: the read gives it sf-<Id>
    now[0] += 3600
    yield m
    m.stop()


def make(mock: SalesforceMock, tmp_path: Path, **cfg: Any) -> SalesforceConnector:
    conf = {"key": KEY, "mock": True, "instance_url": mock.url, "bulk_read_threshold": 10,
            **cfg}
    conn = SalesforceConnector(conf, tmp_path)
    conn.open()
    return conn


def poll(
    conn: SalesforceConnector, cursor: str | None, limit: int = 10, ticks: int = 20
) -> tuple[list[Change], str | None, list[str]]:
    """Read as the poller does: on at once while ``more``; an unchanged empty page ends a
    cycle, and the next cycle (a poll tick) asks again. Returns changes, cursor, phases."""
    out: list[Change] = []
    phases: list[str] = []
    for _ in range(ticks):
        while True:
            page = conn.read_changes(cursor, limit)
            assert len(page.changes) <= limit
            out.extend(page.changes)
            progress = conn.read_progress()
            phases.append(progress["phase"] if progress else "-")
            unchanged = page.cursor == cursor
            cursor = page.cursor
            if not page.more or unchanged:
                break
        state = json.loads(cursor or "{}")
        if "bulk" not in state and not page.more:
            return out, cursor, phases
    raise AssertionError("the bulk read did not end")


def test_first_full_read_goes_through_one_bulk_query_job(
    mock: SalesforceMock, tmp_path: Path
) -> None:
    conn = make(mock, tmp_path)
    try:
        before = mock.request_count
        changes, cursor, phases = poll(conn, None)
        requests_used = mock.request_count - before
        keys = sorted(c.key for c in changes)
        assert len(set(keys)) == 24 and "gone" not in keys
        # read twice: only the hand-made one, changed by the read itself (it got its key)
        twice = {k for k in keys if keys.count(k) > 1}
        assert len(twice) == 1 and next(iter(twice)).startswith("sf-")
        assert {c.op for c in changes} == {"upsert"}
        assert phases[:6] == ["started", "running", "running", "reading", "reading", "done"]
        assert conn.read_progress() == {"job": conn.read_progress()["job"], "phase": "done",
                                        "job_state": "JobComplete", "read": 24, "total": 24}
        assert mock.bulk_query.n == 1 and mock.bulk_query.jobs == {}  # deleted at the end
        # the same records, typed as the REST API gives them (content hashes agree)
        latest = {c.key: c.fields for c in changes}
        rest = conn.fetch(list(latest))
        assert latest == rest
        assert all(c.fields and c.fields["IsDeleted"] is False for c in changes)
        # COUNT, create, 3 status reads, 3 result pages, delete, the key update, the
        # queryAll after it: a REST read of 24 records in pages of 5 alone takes 5+
        assert requests_used <= 11
        state = json.loads(cursor or "{}")
        assert set(state) == {"ts", "seen"}
        again, _, _ = poll(conn, cursor)  # the ordinary incremental read from here
        assert {c.key for c in again} <= set(keys)
    finally:
        conn.close()


def test_changes_made_while_the_job_runs_are_read_after_it(
    mock: SalesforceMock, tmp_path: Path
) -> None:
    conn = make(mock, tmp_path)
    try:
        page = conn.read_changes(None, 10)  # the job starts: its snapshot is taken
        mock.push({KEY: "3", "LastName": "Changed Meanwhile"})
        mock.push({KEY: "new", "LastName": "Created Meanwhile"})
        changes, _, _ = poll(conn, page.cursor)
        last = {c.key: c.fields for c in changes}
        assert last["3"] and last["3"]["LastName"] == "Changed Meanwhile"
        assert last["new"] and last["new"]["LastName"] == "Created Meanwhile"
    finally:
        conn.close()


def test_the_bulk_read_goes_on_after_a_restart(mock: SalesforceMock, tmp_path: Path) -> None:
    conn = make(mock, tmp_path)
    cursor: str | None = None
    first: list[Change] = []
    while '"locator":"' not in (cursor or "") or '"locator":""' in (cursor or ""):
        page = conn.read_changes(cursor, 10)
        first.extend(page.changes)
        cursor = page.cursor
    conn.close()  # a restart mid-read: the cursor was saved with the page
    conn = make(mock, tmp_path)
    try:
        rest, _, _ = poll(conn, cursor)
        assert len(first) == 10
        keyed = [c.key for c in first + rest if not c.key.startswith("sf-")]
        assert sorted(keyed) == sorted(set(keyed))  # nothing read twice but the hand-made one
        assert len({c.key for c in first + rest}) == 24
        assert mock.bulk_query.n == 1  # the same job, not a second one
    finally:
        conn.close()


def test_aborted_job_falls_back_to_a_rest_read(mock: SalesforceMock, tmp_path: Path) -> None:
    conn = make(mock, tmp_path)
    try:
        page = conn.read_changes(None, 10)
        job = json.loads(page.cursor or "{}")["bulk"]["job"]
        aborted = requests.patch(
            f"{mock.url}/services/data/v59.0/jobs/query/{job}",
            json={"state": "Aborted"},
            headers={"Authorization": "Bearer " + mock.token},
            timeout=10,
        )
        assert aborted.status_code == 200
        changes, _, _ = poll(conn, page.cursor)
        # all of them, through queryAll (which also sees the deleted one)
        assert len({c.key for c in changes if c.op == "upsert"}) == 24
        assert [c.key for c in changes if c.op == "delete"] == ["gone"]
        assert mock.bulk_query.n == 1
    finally:
        conn.close()


def test_below_the_threshold_reads_through_rest(mock: SalesforceMock, tmp_path: Path) -> None:
    conn = make(mock, tmp_path, bulk_read_threshold=1000)
    try:
        changes, _, phases = poll(conn, None)
        assert len({c.key for c in changes if c.op == "upsert"}) == 24
        assert mock.bulk_query.n == 0 and set(phases) == {"-"}
    finally:
        conn.close()
    off = make(mock, tmp_path, bulk_read_threshold=0)
    try:
        poll(off, None)
        assert mock.bulk_query.n == 0
    finally:
        off.close()
