"""End to end: a real `recsyncd --once` backfills SQLite from a large Salesforce sObject
through one Bulk API 2.0 query job of the mock, and waits for it to finish."""

from __future__ import annotations

from pathlib import Path

from recsync.mock.salesforce import SalesforceMock
from tests.e2e.helpers import users
from tests.e2e.test_crm import Crm, ok, once, setup_pipeline


def test_once_backfills_through_a_bulk_query_job(tmp_path: Path) -> None:
    now = [1_700_000_000.0]  # the records are an hour older than the read
    mock = SalesforceMock(bulk_query_polls=4, clock=lambda: now[0])
    mock.start()
    try:
        for i in range(1, 61):
            mock.push({"record_id": str(i), "full_name": f"Bulk {i}",
                       "email_address": f"b{i}@example.com", "status": "active"})
        now[0] += 3600
        crm = Crm("salesforce", mock)
        side_b = crm.side_b.replace("daily_reserve = 0", "daily_reserve = 0, "
                                    "bulk_read_threshold = 50")
        db = setup_pipeline(tmp_path, crm, [], side_b=side_b)
        out = ok(once(tmp_path))
        assert "b->a 60 synced" in out, out
        rows = users(db)
        assert len(rows) == 60 and rows["7"][0] == "Bulk 7"
        assert mock.bulk_query.n == 1 and mock.bulk_query.jobs == {}
        assert ok(once(tmp_path)).count("0 synced") == 2  # nothing read twice is written
    finally:
        mock.stop()
