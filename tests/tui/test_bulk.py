"""The pipeline detail screen shows a side's Salesforce bulk job while it is under way,
against a real recsyncd process and the mock Salesforce."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsync.mock.salesforce import SalesforceMock
from recsync.tui.app import make_app
from tests.e2e.test_crm import Crm
from tests.e2e.test_sf_bulkwrite import setup_pipeline
from tests.tui.conftest import Recsyncd, until

pytestmark = pytest.mark.asyncio


async def test_detail_screen_shows_the_bulk_job_of_a_backfill(tmp_path: Path) -> None:
    folder = tmp_path
    mock = SalesforceMock(bulk_ingest_polls=10**9)  # the job stays InProgress until released
    mock.start()
    setup_pipeline(folder, Crm("salesforce", mock),
                   [(i, f"User {i}", f"u{i}@x.org", "active") for i in range(1, 2501)])
    daemon = Recsyncd(folder)
    daemon.start()
    try:
        daemon.wait_ready()
        app = make_app(daemon.client)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: "test/p" in app.model.pipelines, what="the snapshot")
            await pilot.press("enter")
            await until(pilot, lambda: type(app.screen).__name__ == "DetailScreen")

            def info() -> str:
                return str(app.screen.query_one("#detail-info").render())

            await until(pilot, lambda: "InProgress" in info(), what="the bulk job")
            assert "bulk upsert job 750" in info() and "of 2500 rows processed" in info()
            mock.bulk.polls = 0
            await until(pilot, lambda: "bulk upsert" not in info(), what="the job's end")
    finally:
        daemon.stop()
        if daemon.notify is not None:
            daemon.notify.close()
        mock.stop()
