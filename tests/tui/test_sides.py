"""The pipeline detail screen shows what holds up a side (here: the target's last error),
against a real recsyncd process."""

from __future__ import annotations

import pytest

from recsync.tui.app import make_app
from tests.e2e.helpers import sql, users
from tests.tui.conftest import Recsyncd, until

pytestmark = pytest.mark.asyncio


async def test_detail_screen_shows_the_last_error_of_a_side(recsyncd: Recsyncd) -> None:
    app = make_app(recsyncd.client)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: len(users(recsyncd.folder / "b.sqlite")) == 20,
                    what="the first sync")
        sql(recsyncd.folder / "b.sqlite", "INSERT INTO blocked VALUES (42)")
        sql(recsyncd.folder / "a.sqlite", "INSERT INTO users (record_id, full_name, "
            "email_address, status) VALUES (42, 'Blocked', 'b@x.org', 'active')")
        await until(pilot, lambda: "acme/people" in app.model.pipelines, what="the snapshot")
        await pilot.press("enter")
        await until(pilot, lambda: type(app.screen).__name__ == "DetailScreen")

        def info() -> str:
            return str(app.screen.query_one("#detail-info").render())

        await until(pilot, lambda: "Side b" in info(), what="the side's line")
        assert "last error" in info() and "record 42: SQLite refused record" in info()
        assert "blocked by the target" in info()
        assert "Side a" not in info()  # nothing holds up side a
