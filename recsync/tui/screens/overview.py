"""Overview: one row per customer pipeline, updated live."""

from __future__ import annotations

from textual.widget import Widget

from recsync.tui.model import Model, PipelineView, sparkline
from recsync.tui.screens.control import PipelineScreen
from recsync.tui.widgets.table import Column, LiveTable

# priority 0 always shows; on a narrow terminal the highest numbers drop first
COLUMNS = (
    Column("customer", "Customer", 10, 0, min_width=6),
    Column("pipeline", "Pipeline", 10, 0, min_width=6),
    Column("systems", "Systems", 17, 5, min_width=9),
    Column("state", "State", 10, 0, min_width=7),
    Column("queued", "Queue", 6, 1, right=True),
    Column("in_flight", "InFl", 4, 6, right=True),
    Column("synced", "Synced", 8, 2, right=True),
    Column("failed", "Failed", 6, 1, right=True),
    Column("rate", "Rec/s", 7, 3, right=True),
    Column("trend", "Trend", 12, 8, min_width=6),
    Column("circuit", "Circuit", 19, 9, min_width=9),
    Column("rate_limit", "RateLim", 12, 10, min_width=7),
    Column("restarts", "Rst", 4, 4, right=True),
    Column("node", "Node", 8, 7, min_width=5),
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
        view.node_text,
    )


class OverviewScreen(PipelineScreen):
    TITLE_TEXT = "Overview"
    AUTO_FOCUS = "#pipelines"

    def __init__(self) -> None:
        super().__init__()
        self._version = -1

    def body(self) -> list[Widget]:
        return [LiveTable(COLUMNS, id="pipelines")]

    @property
    def table(self) -> LiveTable:
        return self.query_one("#pipelines", LiveTable)

    def show(self, model: Model) -> None:
        if model.version == self._version:
            return
        self._version = model.version
        pipelines = model.pipelines

        def cells(pid: str) -> tuple[str, ...]:  # asked for the rows on screen only
            view = pipelines.get(pid)
            return row(view) if view is not None else (("",) * len(COLUMNS))

        self.table.set_source(sorted(pipelines), cells)

    def selected(self) -> str | None:
        return self.table.cursor_key

    def on_live_table_selected(self, event: LiveTable.Selected) -> None:
        self.dash.open_pipeline(event.key)

    def action_open(self) -> None:
        pid = self.selected()
        if pid:
            self.dash.open_pipeline(pid)
