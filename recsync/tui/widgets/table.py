"""A live table for many rows that change often: each row renders only when it changes.

Textual's DataTable re-renders every visible cell after any ``update_cell`` (one change
empties its whole cache). The overview gets a stats event for every pipeline every second
and state events in between, so this table keeps one rendered line per row and redraws a
row only when its cells change. Columns have a priority: when the terminal is narrow the
least important columns drop (and the shrinkable ones shrink) instead of scrolling sideways.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from rich.segment import Segment
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

ELLIPSIS = "…"


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    width: int
    priority: int = 0  # 0: always shown; higher numbers drop first when space runs out
    min_width: int | None = None  # shrinkable down to this width (None: not shrinkable)
    right: bool = False  # right-aligned (numbers)
    fill: bool = False  # takes the width the others leave (at least min_width, or width)


def fit(text: str, width: int, right: bool = False) -> str:
    """``text`` in exactly ``width`` cells: cut with an ellipsis, or padded."""
    if width <= 0:
        return ""
    if len(text) > width:
        return text[: width - 1] + ELLIPSIS
    return text.rjust(width) if right else text.ljust(width)


def fit_columns(columns: Sequence[Column], width: int) -> list[tuple[Column, int]]:
    """Which columns fit in ``width`` cells and how wide each is, in their own order.

    Columns are taken by priority (then position); one that does not fit at full width
    takes what is left if it is shrinkable and that is at least its minimum, else it is
    dropped. Priority-0 columns are always kept (shrunk to their minimum if need be).
    ``fill`` columns get their minimum first and then all the width left over.
    """
    fills = [i for i, c in enumerate(columns) if c.fill]
    chosen: dict[int, int] = {i: columns[i].min_width or columns[i].width for i in fills}
    left = width + 1 - sum(chosen.values()) - len(chosen)  # +1: no gap before the first
    order = sorted(
        (i for i in range(len(columns)) if i not in chosen),
        key=lambda i: (columns[i].priority, i),
    )
    for i in order:
        col = columns[i]
        room = left - 1
        if col.width <= room:
            chosen[i] = col.width
        elif col.min_width is not None and col.min_width <= room:
            chosen[i] = room
        elif col.priority == 0:
            chosen[i] = max(1, min(col.width, col.min_width or col.width, room))
        else:
            continue
        left -= chosen[i] + 1
    if fills and left > 0:
        share, extra = divmod(left, len(fills))
        for n, i in enumerate(fills):
            chosen[i] += share + (1 if n < extra else 0)
    return [(columns[i], chosen[i]) for i in sorted(chosen)]


class LiveTable(ScrollView, can_focus=True):
    """Rows by key; ``set_rows`` redraws only the rows whose cells changed."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "live-table--header",
        "live-table--cursor",
        "live-table--even",
    }
    DEFAULT_CSS = """
    LiveTable {
        background: $surface;
        color: $foreground;
        height: 1fr;
        overflow-x: hidden;
        & > .live-table--header { text-style: bold; background: $panel; color: $foreground; }
        & > .live-table--even { background: $surface-lighten-1 50%; }
        & > .live-table--cursor {
            background: $block-cursor-blurred-background;
            color: $block-cursor-blurred-foreground;
            text-style: $block-cursor-blurred-text-style;
        }
        &:focus > .live-table--cursor {
            background: $block-cursor-background;
            color: $block-cursor-foreground;
            text-style: $block-cursor-text-style;
        }
        &:dark > .live-table--even { background: $surface-darken-1 40%; }
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "cursor(-1)", "Up", show=False),
        Binding("down", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "edge(0)", "First", show=False),
        Binding("end", "edge(1)", "Last", show=False),
        Binding("enter", "select", "Open"),
    ]

    cursor_row: reactive[int] = reactive(0, layout=False, repaint=False)

    class Selected(Message):
        """Enter (or a click on the highlighted row) on a row."""

        def __init__(self, table: LiveTable, key: str) -> None:
            super().__init__()
            self.table = table
            self.key = key

        @property
        def control(self) -> LiveTable:
            return self.table

    def __init__(self, columns: Sequence[Column], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.columns = tuple(columns)
        self.keys: list[str] = []
        self.rows: dict[str, tuple[str, ...]] = {}
        # with set_source: the cells of a row, asked only for the rows on screen
        self._source: Callable[[str], tuple[str, ...]] | None = None
        self._layout: list[tuple[int, int]] = []  # (column index, width) shown
        self._layout_width = -1
        self._lines: dict[str, tuple[tuple[object, ...], Strip]] = {}
        self.rendered_rows = 0  # row lines built (not taken from the cache): for tests

    # ---- data ----------------------------------------------------------------------------
    def set_rows(self, rows: dict[str, tuple[str, ...]]) -> None:
        """Show ``rows`` (key -> one text per column), in the dict's order."""
        self._source = None
        keys = list(rows)
        if keys != self.keys:
            selected = self.cursor_key
            self.keys = keys
            self.rows = dict(rows)
            self.virtual_size = Size(self.size.width, len(keys) + 1)
            if selected in rows:  # the cursor stays on its row when others come or go
                self.cursor_row = keys.index(selected)
            else:
                self.cursor_row = min(self.cursor_row, max(0, len(keys) - 1))
            self.refresh()
            return
        top = int(self.scroll_offset.y)
        for index, key in enumerate(keys):
            cells = rows[key]
            if cells != self.rows[key]:
                self.rows[key] = cells
                if top <= index < top + self.size.height:
                    self.refresh_lines(index + 1)

    def set_source(self, keys: list[str], cells: Callable[[str], tuple[str, ...]]) -> None:
        """Show the rows ``keys``, in that order, each with the texts ``cells(key)``.

        Only the rows on screen are asked for their cells (now, and when they scroll into
        view): with a thousand pipelines the overview builds the ~40 rows it shows per
        refresh instead of all 1,000 (which took most of its time switching back to it).
        """
        self._source = cells
        if keys != self.keys:
            selected = self.cursor_key
            self.keys = list(keys)
            self.rows = {}
            self.virtual_size = Size(self.size.width, len(keys) + 1)
            if selected is not None and selected in self.keys:
                self.cursor_row = self.keys.index(selected)
            else:
                self.cursor_row = min(self.cursor_row, max(0, len(keys) - 1))
            self.refresh()
            return
        top = int(self.scroll_offset.y)
        for index in range(top, min(len(keys), top + self.size.height)):
            key = keys[index]
            fresh = cells(key)
            if fresh != self.rows.get(key):
                self.rows[key] = fresh
                self.refresh_lines(index + 1)

    def _cells(self, key: str) -> tuple[str, ...]:
        # a read (get_cell) does not record the cells as shown: set_source compares the
        # fresh cells with those last drawn to know which lines to redraw
        return self._source(key) if self._source is not None else self.rows[key]

    def get_cell(self, key: str, column: str) -> str:
        index = next(i for i, c in enumerate(self.columns) if c.key == column)
        return self._cells(key)[index]

    @property
    def shown_columns(self) -> list[str]:
        """Keys of the columns that fit the current width."""
        return [self.columns[i].key for i, _ in self._fitted()]

    @property
    def cursor_key(self) -> str | None:
        if not self.keys:
            return None
        return self.keys[min(self.cursor_row, len(self.keys) - 1)]

    # ---- rendering -----------------------------------------------------------------------
    def _fitted(self) -> list[tuple[int, int]]:
        width = self.scrollable_content_region.width
        if width != self._layout_width:
            index = {c.key: i for i, c in enumerate(self.columns)}
            self._layout = [(index[c.key], w) for c, w in fit_columns(self.columns, width)]
            self._layout_width = width
            self._lines.clear()
        return self._layout

    def _text(self, cells: Sequence[str]) -> str:
        parts = [fit(cells[i], w, self.columns[i].right) for i, w in self._fitted()]
        return " ".join(parts)

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        layout = self._fitted()
        base = self.rich_style
        if y == 0:
            style = base + self.get_component_rich_style("live-table--header")
            labels = [fit(self.columns[i].label, w, self.columns[i].right) for i, w in layout]
            return Strip([Segment(" ".join(labels).ljust(width), style)], width)
        index = int(self.scroll_offset.y) + y - 1
        if index >= len(self.keys):
            return Strip([Segment(" " * width, base)], width)
        key = self.keys[index]
        cells = self._cells(key)
        if self._source is not None:
            self.rows[key] = cells  # as drawn
        if index == self.cursor_row:
            style = base + self.get_component_rich_style("live-table--cursor")
        elif index % 2:
            style = base + self.get_component_rich_style("live-table--even")
        else:
            style = base
        line = self._text(cells).ljust(width)  # cheap; hidden columns do not count
        stamp: tuple[object, ...] = (line, style)
        cached = self._lines.get(key)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        strip = Strip([Segment(line, style)], width)
        self._lines[key] = (stamp, strip)
        self.rendered_rows += 1
        return strip

    def on_resize(self, _event: events.Resize) -> None:
        self.virtual_size = Size(self.size.width, len(self.keys) + 1)
        self._layout_width = -1

    # ---- cursor --------------------------------------------------------------------------
    def watch_cursor_row(self, old: int, new: int) -> None:
        top = int(self.scroll_offset.y)
        rows_shown = max(1, self.size.height - 1)
        if new < top:
            self.scroll_to(y=new, animate=False)
        elif new >= top + rows_shown:
            self.scroll_to(y=new - rows_shown + 1, animate=False)
        for index in (old, new):
            self.refresh_lines(index + 1)

    def move(self, rows: int) -> None:
        if self.keys:
            self.cursor_row = max(0, min(len(self.keys) - 1, self.cursor_row + rows))

    def action_cursor(self, step: int) -> None:
        self.move(step)

    def action_page(self, direction: int) -> None:
        self.move(direction * max(1, self.size.height - 2))

    def action_edge(self, end: int) -> None:
        self.move(len(self.keys) if end else -len(self.keys))

    def action_select(self) -> None:
        key = self.cursor_key
        if key is not None:
            self.post_message(self.Selected(self, key))

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None or offset.y < 1:
            return
        index = int(self.scroll_offset.y) + offset.y - 1
        if 0 <= index < len(self.keys):
            if index == self.cursor_row:
                self.action_select()
            else:
                self.cursor_row = index
