"""Pipeline detail: figures, actors and restarts, cursors, the pipeline's recent events."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widget import Widget
from textual.widgets import DataTable, Label, Sparkline, Static

from recsync.tui.model import NA, Model, clock
from recsync.tui.screens.base import DashboardScreen


def sides_text(sides: dict[str, dict[str, Any]]) -> str:
    """A line per side that something holds up or went wrong on ('' when none)."""
    lines = []
    for side, data in sorted(sides.items()):
        parts = []
        if data.get("circuit") not in (None, "closed"):
            retry = data.get("circuit_retry_at")
            parts.append(f"circuit {data['circuit']}"
                         + (f" (next probe {clock(retry)})" if retry else ""))
        if data.get("rate_limited_until"):
            parts.append(f"rate limited until {clock(data['rate_limited_until'])}")
        if data.get("held_delete"):
            parts.append(f"mass delete held: {data['held_delete']}")
        if data.get("last_error"):
            parts.append(f"last error {clock(data.get('last_error_at'))}: {data['last_error']}")
        if parts:
            lines.append(f"[b]Side {side}[/b]: " + escape("; ".join(parts)))
    return "\n".join(lines)


def cursors_text(cursors: dict[str, str | None]) -> str:
    if not cursors:
        return f"{NA} (nothing read yet)"
    return "  ".join(
        f"{side}: {escape(str(c)) if c else NA}" for side, c in sorted(cursors.items())
    )


class DetailScreen(DashboardScreen):
    TITLE_TEXT = "Pipeline"
    BINDINGS = [Binding("escape", "back", "Back")]

    def __init__(self, pipeline: str) -> None:
        super().__init__()
        self.pipeline = pipeline
        self._version = -1

    def body(self) -> list[Widget]:
        events: DataTable[str] = DataTable(id="detail-events", cursor_type="row")
        events.add_columns("Time (UTC)", "Kind", "Detail")
        return [
            VerticalScroll(
                Static(id="detail-info"),
                Label("Records/s, last minutes", classes="section"),
                Sparkline([], id="detail-spark"),
                Static(id="detail-actors"),
                Label("Recent events", classes="section"),
                events,
                id="detail-body",
            )
        ]

    def show(self, model: Model) -> None:
        if model.version == self._version:
            return
        self._version = model.version
        view = model.pipelines.get(self.pipeline)
        info = self.query_one("#detail-info", Static)
        if view is None:
            info.update(f"[b]{self.pipeline}[/b]: not configured in the daemon (any more)")
            return
        error = view.error or "none"
        info.update(
            f"[b]{view.pipeline}[/b]  customer [b]{view.customer}[/b]  "
            f"{view.a} ↔ {view.b}  state [b]{view.state}[/b]\n"
            f"queue {view.queued}  in flight {view.in_flight}  "
            f"synced a→b {view.synced_a_to_b}  b→a {view.synced_b_to_a}  "
            f"(total {view.synced})  failed {view.failed}  conflicts {view.conflicts}\n"
            f"rate {view.rate:.1f}/s  circuit {view.circuit_text}  "
            f"rate limit {view.rate_limit_text}\n"
            f"last error: {error}"
            + (f"\n{sides}" if (sides := sides_text(view.sides)) else "")
        )
        self.query_one("#detail-spark", Sparkline).data = list(view.rates) or [0.0]
        if view.actors:
            failures = ", ".join(f"{a} x{n}" for a, n in sorted(view.actors.items()))
        else:
            failures = f"{NA} (no actor failure seen since the dashboard started)"
        self.query_one("#detail-actors", Static).update(
            f"[b]Actors[/b]: pipeline restarts {view.restarts}; actor failures: {failures}\n"
            f"[b]Cursors[/b]: {cursors_text(view.cursors)}"
        )
        table: DataTable[str] = self.query_one("#detail-events", DataTable)
        table.clear()
        for ts, kind, text in reversed(view.events):
            table.add_row(clock(ts), kind, text)
        if not view.events:
            table.add_row(NA, "", "no event for this pipeline since the dashboard started")

    def action_back(self) -> None:
        self.dismiss()
