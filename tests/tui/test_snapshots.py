"""Snapshots of every screen, against a fake daemon (the real ControlServer with fixed
results), at 80x24 and 120x40."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from textual.pilot import Pilot  # noqa: TID251 (the dashboard tests drive textual)
from textual.widgets import DataTable  # noqa: TID251 (the dashboard tests drive textual)

from recsync.tui.app import RecsyncApp, make_app
from recsync.tui.screens.failed import FailedScreen, RecordScreen
from recsync.tui.screens.rules import RulesScreen
from tests.tui.conftest import until
from tests.tui.fake import FakeDaemon

SIZES = [(80, 24), (120, 40)]


async def settle(pilot: Pilot[Any]) -> None:
    """Let tables measure their columns (they do it when idle)."""
    for _ in range(3):
        await pilot.pause(0.05)
        await pilot.wait_for_scheduled_animations()
    for table in pilot.app.screen.query(DataTable):
        await until(pilot, lambda t=table: not t._require_update_dimensions)  # type: ignore[misc]
    await pilot.pause(0.1)


async def connected(pilot: Pilot[Any]) -> None:
    app = pilot.app
    assert isinstance(app, RecsyncApp)
    await until(pilot, lambda: app.snapshots_applied, what="the snapshot")


def steps(
    *keys: str, wait: Callable[[Pilot[Any]], Awaitable[None]] | None = None
) -> Callable[[Pilot[Any]], Awaitable[None]]:
    async def run_before(pilot: Pilot[Any]) -> None:
        await connected(pilot)
        await settle(pilot)
        if keys:
            await pilot.press(*keys)
        if wait is not None:
            await wait(pilot)
        await settle(pilot)

    return run_before


async def failed_loaded(pilot: Pilot[Any]) -> None:
    screen = pilot.app.screen
    assert isinstance(screen, FailedScreen)
    await until(pilot, lambda: screen.fetches, what="the failed list")


async def rules_loaded(pilot: Pilot[Any]) -> None:
    screen = pilot.app.screen
    assert isinstance(screen, RulesScreen)
    await until(pilot, lambda: screen.fetches, what="the rules")


async def record_loaded(pilot: Pilot[Any]) -> None:
    await failed_loaded(pilot)
    await pilot.press("enter")
    await until(pilot, lambda: isinstance(pilot.app.screen, RecordScreen))
    screen = pilot.app.screen
    assert isinstance(screen, RecordScreen)
    await until(pilot, lambda: screen.loaded, what="the record")


SCREENS: dict[str, Callable[[Pilot[Any]], Awaitable[None]]] = {
    "overview": steps(),
    "detail": steps(
        "enter",
        wait=lambda pilot: until(pilot, lambda: type(pilot.app.screen).__name__ == "DetailScreen"),
    ),
    "failed": steps("f", wait=failed_loaded),
    "record": steps("f", wait=record_loaded),
    "confirm": steps("f", wait=lambda pilot: _then(pilot, failed_loaded, "t")),
    "rules": steps("r", wait=rules_loaded),
    "settings": steps("s"),
    "help": steps("question_mark"),
}


async def _then(
    pilot: Pilot[Any], first: Callable[[Pilot[Any]], Awaitable[None]], *keys: str
) -> None:
    await first(pilot)
    await pilot.press(*keys)
    await until(pilot, lambda: type(pilot.app.screen).__name__ == "ConfirmScreen")


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", list(SCREENS))
def test_screen(snap_compare: Any, fake: FakeDaemon, name: str, size: tuple[int, int]) -> None:
    app = make_app(fake.client)
    assert snap_compare(app, terminal_size=size, run_before=SCREENS[name])


def test_disconnected_header(snap_compare: Any, tmp_path: Any) -> None:
    """No daemon at all: the header says so (and the app keeps trying)."""
    from recsync.client import ControlClient

    endpoint = "ipc:///nonexistent/recsync/control.sock"
    app = make_app(lambda: ControlClient(endpoint, timeout=0.5))

    async def run_before(pilot: Pilot[Any]) -> None:
        await until(pilot, lambda: "disconnected" in app.model.connection_note)
        await settle(pilot)

    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)
