"""Failed records: list, filter by customer, open one (error and history), retry."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Button, DataTable, Label, Select, Static

from recsync.daemon import protocol as p
from recsync.tui.model import NA, Model, clock, plain
from recsync.tui.screens.base import DashboardScreen
from recsync.tui.screens.dialogs import TO_OVERVIEW, ConfirmScreen
from recsync.tui.widgets.table import Column, LiveTable

ALL = "*"
COLUMNS = (  # the error takes the width left; it shows in full in the record dialog
    Column("pipeline", "Pipeline", 16, 0, min_width=8),
    Column("key", "Key", 10, 0, min_width=4),
    Column("direction", "Dir", 6, 2),
    Column("attempts", "Tries", 5, 1, right=True),
    Column("updated", "Updated (UTC)", 19, 3),
    Column("error", "Error", 40, 0, min_width=12, fill=True),
)


class FailedScreen(DashboardScreen):
    TITLE_TEXT = "Failed records"
    AUTO_FOCUS = "#failed-table"
    BINDINGS = [
        Binding("t", "retry_one", "Retry"),
        Binding("T", "retry_all", "Retry all"),
        Binding("g", "reload", "Refresh"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.records: list[dict[str, Any]] = []
        self.customer: str | None = None
        self._customers: list[str] = []
        self._failed_total = -1
        self.fetches = 0  # completed list fetches (tests wait on it)

    def body(self) -> list[Widget]:
        return [
            Horizontal(
                Label("Customer", classes="field-label"),
                Select([(ALL, ALL)], value=ALL, allow_blank=False, id="failed-customer"),
                Button("Retry", id="failed-retry"),
                Button("Retry all", id="failed-retry-all", variant="warning"),
                id="failed-bar",
            ),
            Static(id="failed-summary"),
            LiveTable(COLUMNS, id="failed-table"),
        ]

    def show(self, model: Model) -> None:
        customers = model.customers()
        if customers != self._customers:
            self._customers = customers
            select: Select[str] = self.query_one("#failed-customer", Select)
            value = self.customer or ALL
            select.set_options([(ALL, ALL)] + [(c, c) for c in customers])
            select.value = value if value == ALL or value in customers else ALL
        total = sum(v.failed for v in model.pipelines.values())
        if total != self._failed_total:
            self._failed_total = total
            self.action_reload()

    def action_reload(self) -> None:
        self.dash.call(p.FailedList(customer=self.customer, limit=500), self._loaded)

    def _loaded(self, result: Any) -> None:
        self.records = list(result or [])
        self.fetches += 1
        self.query_one("#failed-table", LiveTable).set_rows(
            {
                f"{rec['pipeline']}|{rec['key']}": (
                    rec["pipeline"],
                    rec["key"],
                    rec["direction"],
                    str(rec["attempts"]),
                    clock(rec.get("updated_at")),
                    " ".join((rec.get("last_error") or NA).split()),
                )
                for rec in self.records
            }
        )
        who = f"customer {self.customer}" if self.customer else "all customers"
        self.query_one("#failed-summary", Static).update(
            f"{len(self.records)} failed record(s), {who}"
            + ("" if self.records else ": nothing to retry")
        )

    def on_select_changed(self, event: Select.Changed) -> None:
        value = event.value
        customer = None if value == ALL or not isinstance(value, str) else value
        if customer != self.customer:
            self.customer = customer
            self.action_reload()

    def current(self) -> dict[str, Any] | None:
        table = self.query_one("#failed-table", LiveTable)
        if not self.records:
            return None
        return self.records[min(table.cursor_row, len(self.records) - 1)]

    def on_live_table_selected(self, event: LiveTable.Selected) -> None:
        rec = self.current()
        if rec is not None:
            self.app.push_screen(RecordScreen(rec["key"]))

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "failed-retry":
            self.action_retry_one()
        elif event.button.id == "failed-retry-all":
            self.action_retry_all()

    def action_retry_one(self) -> None:
        rec = self.current()
        if rec is None:
            self.notify("No failed record selected.", severity="warning")
            return
        key = rec["key"]

        def answer(yes: bool | None) -> None:
            if yes:
                self.dash.call(p.RetryRecord(key), self._retried)

        self.app.push_screen(ConfirmScreen(f"Retry record {key} ({rec['pipeline']})?"), answer)

    def action_retry_all(self) -> None:
        who = f"of customer {self.customer}" if self.customer else "of every customer"
        customer = self.customer

        def answer(yes: bool | None) -> None:
            if yes:
                self.dash.call(p.RetryFailed(customer=customer), self._retried)

        self.app.push_screen(ConfirmScreen(f"Retry all failed records {who}?"), answer)

    def _retried(self, result: Any) -> None:
        count = result.get("count", 0) if isinstance(result, dict) else result
        self.notify(f"{count} record(s) queued for retry.")
        self.action_reload()


class RecordScreen(ModalScreen[None]):
    """One record: its state, error and history (StatusGet(record_id))."""

    BINDINGS = [Binding("escape", "close", "Close"), Binding("t", "retry", "Retry"), TO_OVERVIEW]

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key
        self.loaded = 0  # answers received (tests wait on it)

    def compose(self) -> ComposeResult:
        history: DataTable[str] = DataTable(id="record-history", cursor_type="row")
        history.add_columns("Time (UTC)", "Event", "Detail")
        with Vertical(id="record", classes="dialog"):
            yield Static(f"Record {self.key}: loading…", id="record-info")
            yield history
            with Horizontal(classes="buttons"):
                yield Button("Retry", variant="warning", id="record-retry")
                yield Button("Close", variant="primary", id="record-close")

    def on_mount(self) -> None:
        from recsync.tui.app import RecsyncApp

        assert isinstance(self.app, RecsyncApp)
        self.app.call(p.StatusGet(self.key), self._loaded)

    def _loaded(self, result: Any) -> None:
        records = (result or {}).get("records") or []
        self.loaded += 1
        info = self.query_one("#record-info", Static)
        table: DataTable[str] = self.query_one("#record-history", DataTable)
        table.clear()
        if not records:
            info.update(f"Record {self.key}: unknown to the daemon")
            return
        lines = []
        for rec in records:
            lines.append(
                f"[b]{escape(rec['pipeline'])}[/b] key {escape(rec['key'])}: "
                f"[b]{escape(rec['state'])}[/b] direction {rec.get('direction') or NA}, "
                f"attempts {rec['attempts']}, on a {plain(rec['on_a'])}, "
                f"on b {plain(rec['on_b'])}, synced {clock(rec.get('synced_at'))}\n"
                f"error: {escape(rec.get('last_error') or 'none')}"
            )
            for h in rec.get("history") or []:
                table.add_row(clock(h.get("at")), h.get("event", ""), h.get("detail") or "")
        info.update("\n".join(lines))

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "record-retry":
            self.action_retry()
        else:
            self.dismiss()

    def action_retry(self) -> None:
        from recsync.tui.app import RecsyncApp

        app = self.app
        assert isinstance(app, RecsyncApp)

        def answer(yes: bool | None) -> None:
            if yes:
                app.call(p.RetryRecord(self.key), self._retried)

        app.push_screen(ConfirmScreen(f"Retry record {self.key}?"), answer)

    def _retried(self, result: Any) -> None:
        self.notify(f"{result.get('count', 0)} record(s) queued for retry.")
        self.on_mount()

    def action_close(self) -> None:
        self.dismiss()
