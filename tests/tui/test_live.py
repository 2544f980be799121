"""The dashboard against a real recsyncd process with a real sqlite pipeline."""

from __future__ import annotations

import pytest
from textual.widgets import Checkbox, Input  # noqa: TID251 (the dashboard tests drive textual)

from recsync.daemon import protocol as p
from recsync.tui.app import make_app
from recsync.tui.screens.detail import DetailScreen
from recsync.tui.screens.failed import FailedScreen, RecordScreen
from recsync.tui.screens.overview import OverviewScreen
from recsync.tui.screens.settings import SettingsScreen
from recsync.tui.widgets.header import ConnectionHeader
from recsync.tui.widgets.table import LiveTable
from tests.e2e.helpers import sql, users
from tests.tui.conftest import Recsyncd, until

PID = "acme/people"
pytestmark = pytest.mark.asyncio


def cell(app: object, column: str) -> str:
    from textual.app import App  # noqa: TID251

    assert isinstance(app, App)
    table = app.screen.query_one("#pipelines", LiveTable)
    return table.get_cell(PID, column)


async def test_overview_counts_move_as_records_sync(recsyncd: Recsyncd) -> None:
    app = make_app(recsyncd.client)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(
            pilot,
            lambda: cell(app, "synced") == "20" if PID in app.model.pipelines else False,
            what="the first sync on screen",
        )
        assert isinstance(app.screen, OverviewScreen)
        assert cell(app, "state") == "running"
        assert cell(app, "systems") == "sqlite↔sqlite"
        header = str(app.screen.query_one(ConnectionHeader).render())
        assert recsyncd.endpoint in header and "connected" in header
        rows = ", ".join(f"({i}, 'New {i}', 'n{i}@x.org', 'active')" for i in range(100, 130))
        sql(
            recsyncd.folder / "a.sqlite",
            f"INSERT INTO users (record_id, full_name, email_address, status) VALUES {rows}",
        )
        await until(pilot, lambda: cell(app, "synced") == "50", what="the new rows counted")
        assert app.events_applied > 0  # live over the event stream
        assert app.model.pipelines[PID].rates  # a sparkline history
        await pilot.press("enter")
        await until(pilot, lambda: type(app.screen).__name__ == "DetailScreen")
        assert "acme/people" in str(app.screen.query_one("#detail-info").render())


async def test_retry_from_the_failed_screen_makes_the_record_sync(recsyncd: Recsyncd) -> None:
    app = make_app(recsyncd.client)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(
            pilot, lambda: len(users(recsyncd.folder / "b.sqlite")) == 20, what="the first sync"
        )
        sql(recsyncd.folder / "b.sqlite", "INSERT INTO blocked VALUES (42)")
        sql(
            recsyncd.folder / "a.sqlite",
            "INSERT INTO users (record_id, full_name, "
            "email_address, status) VALUES (42, 'Blocked', 'b@x.org', 'active')",
        )
        await pilot.press("f")
        screen = app.screen
        assert isinstance(screen, FailedScreen)
        await until(
            pilot,
            lambda: any(r["key"] == "42" for r in screen.records),
            what="record 42 in the failed list",
        )
        assert "blocked by the target" in screen.records[0]["last_error"]
        await pilot.press("enter")  # open it: error and history
        record = app.screen
        assert isinstance(record, RecordScreen)
        await until(pilot, lambda: record.loaded, what="the record's status")
        assert "blocked by the target" in str(record.query_one("#record-info").render())
        await pilot.press("escape")
        sql(recsyncd.folder / "b.sqlite", "DELETE FROM blocked")
        await pilot.press("t")
        await until(pilot, lambda: type(app.screen).__name__ == "ConfirmScreen")
        await pilot.click("#yes")
        await until(
            pilot,
            lambda: "42" in users(recsyncd.folder / "b.sqlite"),
            what="the retried record to sync",
        )
        with recsyncd.client() as client:
            status = client.request(p.StatusGet("42"))
        assert status["records"][0]["state"] == "synced"
        await until(pilot, lambda: not screen.records, what="the failed list to empty")


async def test_settings_change_reaches_the_daemon(recsyncd: Recsyncd) -> None:
    app = make_app(recsyncd.client)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.model.connected and app.model.pipelines)
        await pilot.press("s")
        screen = app.screen
        assert isinstance(screen, SettingsScreen)
        await until(pilot, lambda: screen.query_one("#settings-pipeline").value == PID)
        await pilot.click("#settings-batch_size")
        await pilot.press("7")
        screen.query_one("#settings-rate_limit_max", Input).value = "50"
        screen.query_one("#settings-persist", Checkbox).value = True
        await pilot.click("#settings-apply")
        await until(pilot, lambda: screen.applied, what="the override's answer")
        assert screen.applied[0]["result"]["count"] == 1
        text = (recsyncd.folder / "customer_settings.toml").read_text()
        assert "batch_size = 7" in text and "max_requests = 50" in text

        # the budget is the CRMs': both sides here are SQLite files, which it never throttles
        await until(pilot, lambda: app.model.pipelines[PID].has_stats, what="stats")
        with recsyncd.client() as client:
            assert all(s["rate_limit"] == {} for s in client.request(p.StatsGet()))
        assert app.model.pipelines[PID].rate_limit == {}


async def test_disconnect_and_reconnect_after_a_daemon_restart(recsyncd: Recsyncd) -> None:
    app = make_app(recsyncd.client, silence=1.5)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.model.connected and app.model.pipelines)
        header = app.screen.query_one(ConnectionHeader)
        first = app.snapshots_applied
        recsyncd.stop()
        await until(pilot, lambda: not app.model.connected, what="disconnected")
        assert "disconnected" in str(header.render())
        assert header.has_class("-disconnected")
        recsyncd.start()
        await until(
            pilot,
            lambda: app.model.connected and app.snapshots_applied > first,
            timeout=60,
            what="the reconnect",
        )
        assert "● connected" in str(header.render())
        assert PID in app.model.pipelines
        await until(pilot, lambda: cell(app, "synced") == "20", what="data after reconnect")
        seq = app.model.seq
        await until(pilot, lambda: app.model.seq > seq, what="events from the new daemon")


async def test_pause_resume_and_detail_against_the_real_daemon(recsyncd: Recsyncd) -> None:
    app = make_app(recsyncd.client)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(
            pilot,
            lambda: cell(app, "synced") == "20" if PID in app.model.pipelines else False,
            what="the first sync on screen",
        )

        def state() -> str:
            with recsyncd.client() as client:
                return str(client.request(p.StatusGet())["pipelines"][0]["state"])

        await pilot.press("p")
        await until(pilot, lambda: state() == "paused", what="the daemon to pause")
        await until(pilot, lambda: cell(app, "state") == "paused", what="paused on screen")
        await pilot.press("enter")
        screen = app.screen
        assert isinstance(screen, DetailScreen)
        info = screen.query_one("#detail-info")
        await until(pilot, lambda: screen.polls, what="the detail's status poll")
        assert "state paused" in str(info.render())
        assert '"a": null' not in str(screen.query_one("#detail-actors").render())
        await pilot.press("p")
        await until(pilot, lambda: state() == "running", what="the daemon to resume")
        await until(pilot, lambda: "state running" in str(info.render()), what="running")
        await pilot.press("n")
        await until(
            pilot,
            lambda: any("sync pass started" in n.message for n in app._notifications),
            what="the daemon's answer to sync.now",
        )
        await pilot.press("s")
        settings = app.screen
        assert isinstance(settings, SettingsScreen)
        batch = settings.query_one("#settings-batch_size", Input)
        # the daemon's effective value (customer_settings.toml says batch_size = 100)
        await until(pilot, lambda: batch.placeholder == "100 (current)", what="the settings")


async def test_an_answer_for_a_closed_screen_is_dropped(recsyncd: Recsyncd) -> None:
    """A list fetch still in flight when its screen goes must not crash the dashboard."""
    app = make_app(recsyncd.client)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("f")
        screen = app.screen
        assert isinstance(screen, FailedScreen)
        await until(pilot, lambda: screen.fetches > 0, what="the failed list")
        fetches = screen.fetches
        await pilot.press("o")
        await app.remove_mode("failed")  # the screen and its table are gone
        app.call(p.FailedList(limit=10), screen._loaded)
        await until(
            pilot,
            lambda: all(w.is_finished for w in app.workers if w.group == "commands"),
            what="the fetch to come back",
        )
        await pilot.pause()
        assert screen.fetches == fetches  # dropped, not shown on a detached screen
        app.add_mode("failed", FailedScreen)
        await pilot.press("f")  # a fresh failed screen still works
        fresh = app.screen
        assert isinstance(fresh, FailedScreen) and fresh is not screen
        await until(pilot, lambda: fresh.fetches > 0, what="the new screen's list")
