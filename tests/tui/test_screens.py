"""Every screen at 80x24 against the fake daemon (the real ControlServer and client):
navigation, live updates, pipeline actions, values as users write them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import pytest
from textual.pilot import Pilot  # noqa: TID251 (the dashboard tests drive textual)
from textual.widgets import DataTable, Input, Select, Static  # noqa: TID251

from recsync.daemon import protocol as p
from recsync.tui.app import RecsyncApp, make_app
from recsync.tui.screens.detail import DetailScreen
from recsync.tui.screens.dialogs import ConfirmScreen, HelpScreen
from recsync.tui.screens.failed import FailedScreen, RecordScreen
from recsync.tui.screens.overview import OverviewScreen
from recsync.tui.screens.rules import RulesScreen
from recsync.tui.screens.settings import SettingsScreen
from recsync.tui.widgets.table import LiveTable
from tests.tui.conftest import until
from tests.tui.fake import FakeDaemon

pytestmark = pytest.mark.asyncio
SMALL = (80, 24)
PID = "acme/people0"  # paused in the fake
LONG_ERROR = (
    "HTTP 503 from salesforce: Service Unavailable; the circuit opened after 5 failures "
    "in a row, next probe in 30 s (see the daemon's log)"
)


def text(widget: Any) -> str:
    return str(widget.render())


async def start(pilot: Pilot[Any]) -> RecsyncApp:
    app = pilot.app
    assert isinstance(app, RecsyncApp)
    await until(pilot, lambda: app.snapshots_applied, what="the snapshot")
    return app


def overview_table(app: RecsyncApp) -> LiveTable:
    return app.screen.query_one("#pipelines", LiveTable)


async def to_detail(pilot: Pilot[Any]) -> None:
    await pilot.press("enter")
    await until(pilot, lambda: isinstance(pilot.app.screen, DetailScreen), what="the detail")


async def to_failed(pilot: Pilot[Any]) -> None:
    await pilot.press("f")
    screen = pilot.app.screen
    assert isinstance(screen, FailedScreen)
    await until(pilot, lambda: screen.fetches, what="the failed list")


async def to_record(pilot: Pilot[Any]) -> None:
    await to_failed(pilot)
    await pilot.press("enter")
    await until(pilot, lambda: isinstance(pilot.app.screen, RecordScreen))
    screen = pilot.app.screen
    assert isinstance(screen, RecordScreen)
    await until(pilot, lambda: screen.loaded, what="the record")


async def to_confirm(pilot: Pilot[Any]) -> None:
    await to_failed(pilot)
    await pilot.press("t")
    await until(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen))


async def to_rules(pilot: Pilot[Any]) -> None:
    await pilot.press("r")
    screen = pilot.app.screen
    assert isinstance(screen, RulesScreen)
    await until(pilot, lambda: screen.fetches, what="the rules")


async def to_settings(pilot: Pilot[Any]) -> None:
    await pilot.press("s")
    await until(pilot, lambda: isinstance(pilot.app.screen, SettingsScreen))


async def to_help(pilot: Pilot[Any]) -> None:
    await pilot.press("question_mark")
    await until(pilot, lambda: isinstance(pilot.app.screen, HelpScreen))


SCREENS: dict[str, Callable[[Pilot[Any]], Awaitable[None]]] = {
    "detail": to_detail,
    "failed": to_failed,
    "record": to_record,
    "confirm": to_confirm,
    "rules": to_rules,
    "settings": to_settings,
    "help": to_help,
}


@pytest.mark.parametrize("name", list(SCREENS))
async def test_o_returns_to_the_overview_from_every_screen(fake: FakeDaemon, name: str) -> None:
    app = make_app(fake.client)
    async with app.run_test(size=SMALL) as pilot:
        await start(pilot)
        await SCREENS[name](pilot)
        assert not isinstance(app.screen, OverviewScreen)
        await pilot.press("o")
        await until(pilot, lambda: isinstance(app.screen, OverviewScreen), what="the overview")
        assert len(app.screen_stack) == 1  # no dialog or detail left over it
        assert overview_table(app).cursor_key == PID


async def test_overview_at_80x24_keeps_the_important_columns(fake: FakeDaemon) -> None:
    app = make_app(fake.client)
    async with app.run_test(size=SMALL) as pilot:
        await start(pilot)
        table = overview_table(app)
        await until(pilot, lambda: table.keys, what="the rows")
        shown = table.shown_columns
        for key in ("customer", "pipeline", "state", "queued", "failed", "synced", "rate"):
            assert key in shown
        assert "rate_limit" not in shown and "node" not in shown  # dropped first
        assert table.virtual_size.width <= table.size.width  # no sideways scrolling
        line = table.render_line(1).text
        assert len(line) == table.scrollable_content_region.width
        assert line.split()[:4] == ["acme", "people0", "sqlite↔sal…", "paused"]
    wide = make_app(fake.client)
    async with wide.run_test(size=(170, 40)) as pilot:
        await start(pilot)
        table = overview_table(wide)
        await until(pilot, lambda: table.keys, what="the rows")
        assert table.shown_columns == [
            "customer", "pipeline", "systems", "state", "queued", "in_flight", "synced",
            "failed", "rate", "trend", "circuit", "rate_limit", "restarts", "node",
        ]  # fmt: skip
        assert table.get_cell(PID, "node") == "local"  # no node name in the status yet


async def test_node_column_shows_the_owner_node_when_the_status_names_one(
    fake: FakeDaemon,
) -> None:
    fake.status[1] = msgspec.structs.replace(fake.status[1], node="node-b")
    app = make_app(fake.client)
    async with app.run_test(size=(170, 40)) as pilot:
        await start(pilot)
        table = overview_table(app)
        await until(pilot, lambda: table.keys, what="the rows")
        assert table.get_cell("globex/people0", "node") == "node-b"
        assert table.get_cell(PID, "node") == "local"
        await pilot.press("down", "enter")
        await until(pilot, lambda: isinstance(app.screen, DetailScreen))
        assert "node node-b" in text(app.screen.query_one("#detail-info"))


async def test_detail_screen_updates_live(fake: FakeDaemon) -> None:
    app = make_app(fake.client)
    async with app.run_test(size=SMALL) as pilot:
        await start(pilot)
        await to_detail(pilot)
        screen = app.screen
        assert isinstance(screen, DetailScreen)
        info = screen.query_one("#detail-info", Static)
        actors = screen.query_one("#detail-actors", Static)
        await until(pilot, lambda: "synced a→b 120" in text(info), what="the first figures")
        assert "last error: none" in text(info)
        fake.change(
            PID,
            state="backoff",
            error=LONG_ERROR,
            queued=17,
            synced_a_to_b=140,
            conflicts=2,
            cursors={"a": '{"seq":4800}', "b": None},
        )
        await until(pilot, lambda: "synced a→b 140" in text(info), what="the new counts")
        shown = text(info)
        assert "state backoff" in shown and "queue 17" in shown and "conflicts 2" in shown
        assert LONG_ERROR in " ".join(shown.split())  # in full, wrapped
        await until(pilot, lambda: '{"seq":4800}' in text(actors), what="the new cursor")
        events: DataTable[str] = screen.query_one("#detail-events", DataTable)
        await until(
            pilot,
            lambda: any("backoff" in str(events.get_row_at(i)) for i in range(events.row_count)),
            what="the state event in the pipeline's events",
        )
        assert screen.polls > 0  # status.get while shown: cursors are not in any event


async def test_detail_shows_status_fields_it_does_not_know_yet(fake: FakeDaemon) -> None:
    """A newer daemon's extra status fields (per-side errors...) show, written plainly."""
    app = make_app(fake.client)
    async with app.run_test(size=SMALL) as pilot:
        await start(pilot)
        await to_detail(pilot)
        model = app.model
        model.apply_status(
            {
                "pipelines": [
                    {"pipeline": PID, "last_error": {"a": None, "b": "HTTP 429: too many"}}
                ]
            }
        )
        app.refresh_views()
        info = app.screen.query_one("#detail-info", Static)
        await until(pilot, lambda: "last error: a none; b HTTP 429: too many" in text(info))


@pytest.mark.parametrize("where", ["overview", "detail"])
async def test_pause_resume_and_sync_now_of_one_pipeline(fake: FakeDaemon, where: str) -> None:
    app = make_app(fake.client)
    async with app.run_test(size=SMALL) as pilot:
        await start(pilot)
        await pilot.press("down")  # globex/people0, running
        if where == "detail":
            await to_detail(pilot)
        pid = "globex/people0"
        await pilot.press("p")
        await until(pilot, lambda: p.Pause("globex", "people0") in fake.commands, what="pause")
        await until(pilot, lambda: app.model.pipelines[pid].state == "paused")
        await pilot.press("p")
        await until(pilot, lambda: p.Resume("globex", "people0") in fake.commands, what="resume")
        await until(pilot, lambda: app.model.pipelines[pid].state == "running")
        await pilot.press("n")
        await until(pilot, lambda: p.SyncNow("globex", "people0") in fake.commands, what="sync")
        assert not any(
            isinstance(c, p.Pause | p.Resume | p.SyncNow) and c.customer != "globex"
            for c in fake.commands
        )
        if where == "overview":
            table = overview_table(app)
            await until(pilot, lambda: table.get_cell(pid, "state") == "running")


async def test_failed_list_cuts_long_errors_and_the_record_shows_them_in_full(
    fake: FakeDaemon,
) -> None:
    first = fake.failed[0]
    fake.failed[0] = p.FailedRecord(
        first.pipeline, first.key, first.direction, first.attempts, LONG_ERROR, first.updated_at
    )
    app = make_app(fake.client)
    async with app.run_test(size=SMALL) as pilot:
        await start(pilot)
        await to_failed(pilot)
        table = app.screen.query_one("#failed-table", LiveTable)
        assert table.shown_columns[-1] == "error"
        line = table.render_line(1).text
        assert len(line) == table.scrollable_content_region.width
        assert line.rstrip().endswith("…") and line.split()[0] == "acme/people0"
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, RecordScreen))
        record = app.screen
        assert isinstance(record, RecordScreen)
        await until(pilot, lambda: record.loaded, what="the record")
        # the fake's record 42 has its own error; the dialog shows whatever it gets in full
        assert "record is blocked by the target" in text(record.query_one("#record-info"))
        dialog = record.query_one("#record")
        assert dialog.region.right <= SMALL[0] and dialog.region.bottom <= SMALL[1]


async def test_rules_are_shown_as_users_write_them(fake: FakeDaemon) -> None:
    app = make_app(fake.client)
    async with app.run_test(size=SMALL) as pilot:
        await start(pilot)
        await to_rules(pilot)
        shown = text(app.screen.query_one("#rules-text"))
        assert "a_to_b: create, update, delete" in shown
        assert "status in active, pending" in shown
        assert "email_address → Email" in shown
        assert not any(c in shown for c in "'{}") and "['" not in shown


async def test_settings_show_the_effective_values(fake: FakeDaemon) -> None:
    fake.change("globex/people0", settings={**fake.status[1].settings, "batch_size": 50})
    app = make_app(fake.client)
    async with app.run_test(size=SMALL) as pilot:
        await start(pilot)
        await to_settings(pilot)
        screen = app.screen
        batch = screen.query_one("#settings-batch_size", Input)
        window = screen.query_one("#settings-rate_limit_window", Input)
        await until(pilot, lambda: batch.placeholder == "200 (current)", what="acme's values")
        assert window.placeholder == "60 (current)"
        screen.query_one("#settings-pipeline", Select).value = "globex/people0"
        await until(pilot, lambda: batch.placeholder == "50 (current)", what="globex's values")


async def test_live_table_redraws_only_the_rows_that_change(fake: FakeDaemon) -> None:
    """The overview must not re-render every visible row for each change (it did)."""
    app = make_app(fake.client, refresh_interval=0.05)
    async with app.run_test(size=SMALL) as pilot:
        await start(pilot)
        table = overview_table(app)
        await until(pilot, lambda: table.keys and table.rendered_rows >= 3, what="rows drawn")
        before = table.rendered_rows
        fake.change("initech/people0", queued=99)
        await until(pilot, lambda: table.get_cell("initech/people0", "queued") == "99")
        await until(pilot, lambda: table.rendered_rows > before, what="the row redrawn")
        await pilot.pause(0.2)
        assert table.rendered_rows - before == 1


MAIN = {  # the widget a screen is for, and the rows of it that must be on screen at 80x24
    "detail": ("#detail-info", 5),
    "failed": ("#failed-table", 3),
    "record": ("#record-info", 3),
    "confirm": ("#confirm-question", 1),
    "rules": ("#rules-text", 10),
    "settings": ("#settings-pipeline", 3),
    "help": ("#help", 10),
}


@pytest.mark.parametrize("name", list(SCREENS))
async def test_every_screen_is_usable_at_80x24(fake: FakeDaemon, name: str) -> None:
    app = make_app(fake.client)
    async with app.run_test(size=SMALL) as pilot:
        await start(pilot)
        await SCREENS[name](pilot)
        await pilot.pause(0.1)
        selector, rows = MAIN[name]
        widget = app.screen.query_one(selector)
        visible = widget.region.intersection(app.screen.region)
        assert visible.height >= rows, (name, widget.region)
        assert visible.width == widget.region.width  # nothing cut off on the right

