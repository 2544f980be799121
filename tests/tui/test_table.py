"""The live table's column fitting and row keeping, and values written as users write them."""

from __future__ import annotations

import pytest
from textual.app import App, ComposeResult  # noqa: TID251 (the dashboard tests drive textual)

from recsync.tui.model import plain
from recsync.tui.screens.overview import COLUMNS
from recsync.tui.widgets.table import Column, LiveTable, fit, fit_columns


def widths(width: int) -> dict[str, int]:
    return {c.key: w for c, w in fit_columns(COLUMNS, width)}


def test_fit_cuts_with_an_ellipsis_and_pads() -> None:
    assert fit("HTTP 400: INVALID_EMAIL", 10) == "HTTP 400:…"
    assert fit("7", 4, right=True) == "   7"
    assert fit("ok", 4) == "ok  "


@pytest.mark.parametrize("width", [40, 60, 80, 100, 120, 160, 240])
def test_overview_columns_fit_any_width_without_sideways_scrolling(width: int) -> None:
    fitted = widths(width)
    assert sum(fitted.values()) + len(fitted) - 1 <= width
    assert {"customer", "pipeline", "state"} <= set(fitted)  # never dropped
    order = [c.key for c in COLUMNS]
    assert list(fitted) == [k for k in order if k in fitted]  # their own order


def test_columns_drop_by_priority_and_shrink_before_dropping() -> None:
    narrow, wide = widths(80), widths(240)
    assert set(wide) == {c.key for c in COLUMNS}
    assert "rate_limit" not in narrow and "circuit" not in narrow and "trend" not in narrow
    assert {"queued", "failed", "synced", "rate"} <= set(narrow)
    assert 9 <= narrow["systems"] < 17  # shrunk, not dropped


def test_a_fill_column_takes_what_the_others_leave() -> None:
    cols = [Column("k", "Key", 6), Column("e", "Error", 20, min_width=10, fill=True)]
    assert [w for _, w in fit_columns(cols, 80)] == [6, 73]
    assert [w for _, w in fit_columns(cols, 12)] == [1, 10]  # the key shrinks to fit


def test_plain_writes_values_as_users_do() -> None:
    assert plain(["active", "pending"]) == "active, pending"
    assert plain({"in": ["active", "pending"]}) == "in active, pending"
    assert plain(True) == "true" and plain(None) == "none"
    assert plain(60.0) == "60" and plain(0.5) == "0.5" and plain([]) == "-"


class TableApp(App[None]):
    def compose(self) -> ComposeResult:
        yield LiveTable([Column("name", "Name", 10)], id="t")


@pytest.mark.asyncio
async def test_the_cursor_stays_on_its_row_when_rows_come_and_go() -> None:
    app = TableApp()
    async with app.run_test(size=(40, 10)) as pilot:
        table = app.query_one(LiveTable)
        table.set_rows({k: (k,) for k in ("b", "c", "d")})
        table.focus()
        await pilot.press("down")
        assert table.cursor_key == "c"
        table.set_rows({k: (k,) for k in ("a", "b", "c", "d")})
        assert table.cursor_key == "c"
        table.set_rows({k: (k,) for k in ("a", "b")})
        assert table.cursor_key == "b"  # its row is gone: the nearest one
        await pilot.press("end")
        assert table.cursor_key == "b"
        await pilot.press("home")
        assert table.cursor_key == "a"


class ClickApp(TableApp):
    def __init__(self) -> None:
        super().__init__()
        self.opened: list[str] = []

    def on_live_table_selected(self, event: LiveTable.Selected) -> None:
        self.opened.append(event.key)


@pytest.mark.asyncio
async def test_a_click_moves_the_cursor_and_a_second_click_opens_the_row() -> None:
    app = ClickApp()
    async with app.run_test(size=(40, 10)) as pilot:
        table = app.query_one(LiveTable)
        table.set_rows({k: (k,) for k in ("a", "b", "c")})
        await pilot.pause()
        await pilot.click("#t", offset=(2, 3))  # line 0 is the header: row "c"
        assert table.cursor_key == "c" and app.opened == []
        await pilot.click("#t", offset=(2, 3))
        assert app.opened == ["c"]
        await pilot.click("#t", offset=(2, 0))  # the header: nothing
        assert table.cursor_key == "c" and app.opened == ["c"]


@pytest.mark.asyncio
async def test_a_sourced_table_builds_only_the_rows_on_screen() -> None:
    # a thousand pipelines: each refresh must not build a thousand rows, only those shown
    app = TableApp()
    async with app.run_test(size=(40, 10)) as pilot:
        table = app.query_one(LiveTable)
        asked: list[str] = []
        values = {f"k{i:04d}": f"v{i}" for i in range(1000)}

        def cells(key: str) -> tuple[str, ...]:
            asked.append(key)
            return (values[key],)

        table.set_source(list(values), cells)
        await pilot.pause()
        assert 0 < len(set(asked)) <= 10 and table.get_cell("k0001", "name") == "v1"
        asked.clear()
        values["k0002"] = "changed"
        table.set_source(list(values), cells)
        await pilot.pause()
        assert 0 < len(set(asked)) <= 10 and "k0500" not in asked
        assert "changed" in str(table.render_line(3).text)  # header, k0000, k0001, k0002
        await pilot.press("end")  # scrolled to the last rows: asked for them, as they are
        values["k0999"] = "last"
        table.set_source(list(values), cells)
        await pilot.pause()
        assert table.cursor_key == "k0999" and table.get_cell("k0999", "name") == "last"
