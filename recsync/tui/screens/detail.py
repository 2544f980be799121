"""Pipeline detail: figures, actors and restarts, cursors, the pipeline's recent events.

Counts and state follow the event stream like the overview; the figures only the status
carries (per-direction counts, conflicts, cursors, errors) are asked for with
``status.get`` every ``poll`` seconds while the screen is shown.
"""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import DataTable, Label, Sparkline, Static

from recsync.daemon import protocol as p
from recsync.tui.model import NA, Model, PipelineView, clock, plain
from recsync.tui.screens.control import PipelineScreen


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


def info_text(view: PipelineView) -> str:
    lines = [
        f"[b]{escape(view.pipeline)}[/b]  customer [b]{escape(view.customer)}[/b]  "
        f"{escape(view.a)} ↔ {escape(view.b)}  node {escape(view.node_text)}",
        f"state [b]{escape(view.state)}[/b]  queue {view.queued}  in flight {view.in_flight}  "
        f"failed {view.failed}  conflicts {view.conflicts}",
        f"synced a→b {view.synced_a_to_b}  b→a {view.synced_b_to_a}  (total {view.synced})  "
        f"rate {view.rate:.1f}/s",
        f"circuit {view.circuit_text}  rate limit {view.rate_limit_text}",
        f"last error: {escape(view.error) if view.error else 'none'}",
    ]
    if sides := sides_text(view.sides):
        lines.append(sides)
    for key, value in sorted(view.extra.items()):
        if value in (None, "", [], {}):
            continue
        label = key.replace("_", " ")
        lines.append(f"{escape(label)}: {escape(plain(value))}")
    return "\n".join(lines)


class DetailScreen(PipelineScreen):
    TITLE_TEXT = "Pipeline"
    BINDINGS = [Binding("escape", "back", "Back")]

    def __init__(self, pipeline: str, poll: float = 1.0) -> None:
        super().__init__()
        self.pipeline = pipeline
        self.poll = poll
        self.polls = 0  # status answers applied (tests wait on it)
        self._asking = False
        self._timer: Timer | None = None
        self._version = -1
        self._events: list[tuple[float, str, str]] | None = None

    def body(self) -> list[Widget]:
        events: DataTable[str] = DataTable(id="detail-events", cursor_type="row")
        events.add_columns("Time (UTC)", "Kind", "Detail")
        return [
            VerticalScroll(
                Static(id="detail-info"),
                Static(id="detail-actors"),
                Label("Records/s, last minutes", classes="section"),
                Sparkline([], id="detail-spark"),
                Label("Recent events", classes="section"),
                events,
                id="detail-body",
            )
        ]

    def selected(self) -> str | None:
        return self.pipeline

    # ---- the status poll -----------------------------------------------------------------
    # (textual also runs DashboardScreen's on_mount and on_screen_resume: no super() calls)
    def on_mount(self) -> None:
        self._timer = self.set_interval(self.poll, self.ask_status)
        self.ask_status()

    def on_screen_resume(self) -> None:
        if self._timer is not None:
            self._timer.resume()

    def on_screen_suspend(self) -> None:
        if self._timer is not None:
            self._timer.pause()

    def ask_status(self) -> None:
        if self._asking or not self.dash.model.connected:
            return
        self._asking = True
        self.dash.call(p.StatusGet(), self._status, on_error=self._status_failed)

    def _status(self, result: Any) -> None:
        self._asking = False
        self.polls += 1
        self.dash.model.apply_status(result or {})
        self.dash.refresh_views()

    def _status_failed(self, _message: str) -> None:
        self._asking = False  # the header tells about a lost connection

    # ---- showing -------------------------------------------------------------------------
    def show(self, model: Model) -> None:
        if model.version == self._version:
            return
        self._version = model.version
        view = model.pipelines.get(self.pipeline)
        info = self.query_one("#detail-info", Static)
        if view is None:
            info.update(f"[b]{escape(self.pipeline)}[/b]: not configured in the daemon (any more)")
            return
        info.update(info_text(view))
        self.query_one("#detail-spark", Sparkline).data = list(view.rates) or [0.0]
        if view.actors:
            failures = ", ".join(f"{a} x{n}" for a, n in sorted(view.actors.items()))
        else:
            failures = f"{NA} (none seen since the dashboard started)"
        self.query_one("#detail-actors", Static).update(
            f"[b]Actors[/b]: restarts {view.restarts}; failures: {escape(failures)}\n"
            f"[b]Cursors[/b]: {cursors_text(view.cursors)}"
        )
        events = list(view.events)
        if events == self._events:
            return  # the table only changes when the pipeline has new events
        self._events = events
        table: DataTable[str] = self.query_one("#detail-events", DataTable)
        table.clear()
        for ts, kind, text in reversed(events):
            table.add_row(clock(ts), kind, text)
        if not events:
            table.add_row(NA, "", "no event for this pipeline since the dashboard started")

    def action_back(self) -> None:
        self.dismiss()
