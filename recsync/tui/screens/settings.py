"""Settings: batch size, flush interval, poll interval and rate limit of a pipeline, live."""

from __future__ import annotations

from typing import Any, Literal

from textual.binding import Binding
from textual.containers import Grid, Horizontal, VerticalScroll
from textual.widget import Widget
from textual.widgets import Button, Checkbox, Input, Label, Select, Static

from recsync.daemon import protocol as p
from recsync.tui.model import Model, plain
from recsync.tui.screens.base import DashboardScreen

FIELDS: tuple[tuple[str, str, Literal["integer", "number"]], ...] = (
    ("batch_size", "Batch size", "integer"),
    ("flush_interval", "Flush interval (s)", "number"),
    ("poll_interval", "Poll interval (s)", "number"),
    ("rate_limit_max", "Rate limit: requests", "integer"),
    ("rate_limit_window", "Rate limit: window (s)", "number"),
)


class SettingsScreen(DashboardScreen):
    TITLE_TEXT = "Settings"
    BINDINGS = [Binding("ctrl+s", "apply", "Apply")]

    def __init__(self) -> None:
        super().__init__()
        self._pipelines: list[str] = []
        self.applied: list[dict[str, Any]] = []  # results of the overrides sent
        self.refreshed = 0  # status answers after an apply (tests wait on it)

    def body(self) -> list[Widget]:
        grid = Grid(
            Label("Pipeline", classes="field-label"),
            Select([], id="settings-pipeline", prompt="choose a pipeline"),
            *[
                w
                for name, label, kind in FIELDS
                for w in (
                    Label(label, classes="field-label"),
                    Input(placeholder="unchanged", type=kind, id=f"settings-{name}"),
                )
            ],
            Label("Persist", classes="field-label"),
            Checkbox("write to customer_settings.toml", id="settings-persist"),
            id="settings-grid",
        )
        return [
            VerticalScroll(
                grid,
                Horizontal(
                    Button("Apply", id="settings-apply", variant="primary"),
                    Static(id="settings-result"),
                    id="settings-bar",
                ),
                Static(
                    "Empty fields keep their current value. Changes apply at once.",
                    classes="hint",
                ),
                id="settings-body",
            )
        ]

    def show(self, model: Model) -> None:
        pids = sorted(model.pipelines)
        select: Select[str] = self.query_one("#settings-pipeline", Select)
        if pids != self._pipelines:
            self._pipelines = pids
            current = select.value
            select.set_options([(pid, pid) for pid in pids])
            if isinstance(current, str) and current in pids:
                select.value = current
            elif pids:
                select.value = pids[0]
        self.show_current(model, select.value)

    def show_current(self, model: Model, pid: object) -> None:
        """The effective values of the chosen pipeline, in each field's placeholder."""
        view = model.pipelines.get(pid) if isinstance(pid, str) else None
        current = view.settings if view is not None else {}
        for name, _label, _kind in FIELDS:
            value = current.get(name)
            text = f"{plain(value)} (current)" if value is not None else "unchanged"
            field = self.query_one(f"#settings-{name}", Input)
            if field.placeholder != text:
                field.placeholder = text

    def on_select_changed(self, event: Select.Changed) -> None:
        self.show_current(self.dash.model, event.value)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "settings-apply":
            self.action_apply()

    def build(self) -> p.ConfigOverride | str:
        """The override to send, or why there is none."""
        pid = self.query_one("#settings-pipeline", Select).value
        if not isinstance(pid, str):
            return "Choose a pipeline first."
        customer, _, name = pid.partition("/")
        values: dict[str, Any] = {}
        for field, label, kind in FIELDS:
            text = self.query_one(f"#settings-{field}", Input).value.strip()
            if not text:
                continue
            try:
                value: float = int(text) if kind == "integer" else float(text)
            except ValueError:
                return f"{label}: {text!r} is not a number."
            if value <= 0:
                return f"{label}: must be above 0."
            values[field] = value
        if not values:
            return "Nothing to change: fill in at least one field."
        persist = self.query_one("#settings-persist", Checkbox).value
        return p.ConfigOverride(customer=customer, pipeline=name or None, persist=persist, **values)

    def action_apply(self) -> None:
        cmd = self.build()
        result = self.query_one("#settings-result", Static)
        if isinstance(cmd, str):
            result.update(f"[red]{cmd}[/]")
            return
        result.update("sending…")

        def done(answer: Any) -> None:
            self.applied.append({"cmd": cmd, "result": answer})
            result.update(f"[green]applied[/] to {cmd.customer}/{cmd.pipeline or '*'}")
            for name, _label, _kind in FIELDS:
                self.query_one(f"#settings-{name}", Input).value = ""
            self.dash.call(p.StatusGet(), self._status)  # the new effective values

        def failed(message: str) -> None:
            result.update(f"[red]rejected[/]: {message}")

        self.dash.call(cmd, done, on_error=failed)

    def _status(self, answer: Any) -> None:
        self.dash.model.apply_status(answer or {})
        self.refreshed += 1
        self.dash.refresh_views()
