"""Overview: one row per customer pipeline, updated live."""

from __future__ import annotations

from textual.binding import Binding
from textual.widget import Widget
from textual.widgets import DataTable

from recsync.tui.model import Model, PipelineView, sparkline
from recsync.tui.screens.base import DashboardScreen

COLUMNS = (  # fixed widths: no measuring of every cell, and the same layout every time
    ("customer", "Customer", 10),
    ("pipeline", "Pipeline", 10),
    ("systems", "Systems", 17),
    ("state", "State", 10),
    ("queued", "Queue", 6),
    ("in_flight", "InFl", 4),
    ("synced", "Synced", 8),
    ("failed", "Failed", 6),
    ("rate", "Rec/s", 7),
    ("trend", "Trend", 12),
    ("circuit", "Circuit", 19),
    ("rate_limit", "RateLim", 12),
    ("restarts", "Rst", 4),
)


def row(view: PipelineView) -> tuple[str, ...]:
    return (
        view.customer,
        view.name or view.pipeline,
        view.systems,
        view.state,
        str(view.queued),
        str(view.in_flight),
        str(view.synced),
        str(view.failed),
        f"{view.rate:.1f}",
        sparkline(list(view.rates)),
        view.circuit_text,
        view.rate_limit_text,
        str(view.restarts),
    )


class OverviewScreen(DashboardScreen):
    TITLE_TEXT = "Overview"
    AUTO_FOCUS = "#pipelines"
    BINDINGS = [Binding("enter", "open", "Detail", show=True)]

    def __init__(self) -> None:
        super().__init__()
        self._rows: dict[str, tuple[str, ...]] = {}
        self._version = -1

    def body(self) -> list[Widget]:
        table: DataTable[str] = DataTable(id="pipelines", cursor_type="row", zebra_stripes=True)
        for key, label, width in COLUMNS:
            table.add_column(label, key=key, width=width)
        return [table]

    def show(self, model: Model) -> None:
        if model.version == self._version:
            return
        self._version = model.version
        table: DataTable[str] = self.query_one("#pipelines", DataTable)
        rows = {pid: row(view) for pid, view in sorted(model.pipelines.items())}
        if list(rows) != list(self._rows):
            cursor = table.cursor_row
            table.clear()
            for pid, cells in rows.items():
                table.add_row(*cells, key=pid)
            if rows:
                table.move_cursor(row=min(cursor, len(rows) - 1))
        else:
            for pid, cells in rows.items():
                old = self._rows[pid]
                for (key, _, _), new, was in zip(COLUMNS, cells, old, strict=True):
                    if new != was:
                        table.update_cell(pid, key, new)
        self._rows = rows

    def selected(self) -> str | None:
        table: DataTable[str] = self.query_one("#pipelines", DataTable)
        if not self._rows or table.cursor_row < 0:
            return None
        return list(self._rows)[min(table.cursor_row, len(self._rows) - 1)]

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value:
            self.dash.open_pipeline(event.row_key.value)

    def action_open(self) -> None:
        pid = self.selected()
        if pid:
            self.dash.open_pipeline(pid)
