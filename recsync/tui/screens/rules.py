"""Rules: the current rule sets, reload from disk, the result of the last reload."""

from __future__ import annotations

from typing import Any

from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widget import Widget
from textual.widgets import Button, Static

from recsync.daemon import protocol as p
from recsync.tui.model import Model, clock, plain, reload_summary
from recsync.tui.screens.base import DashboardScreen


def rule_lines(key: str, value: Any) -> list[str]:
    """One setting of a rule set as a user writes it (``status in active, pending``)."""
    if not isinstance(value, dict):
        return [f"  {key}: {plain(value)}"]
    if not value:
        return [f"  {key}: -"]
    # mappings: side-A field → side-B field; filters: `status in active, pending`
    sep = {"mappings": " → ", "filters": " "}.get(key, ": ")
    return [f"  {key}:"] + [f"    {k}{sep}{plain(v)}" for k, v in sorted(value.items())]


class RulesScreen(DashboardScreen):
    TITLE_TEXT = "Rules"
    BINDINGS = [Binding("l", "reload_config", "Reload from disk"), Binding("g", "fetch", "Refresh")]

    def __init__(self) -> None:
        super().__init__()
        self.rules: dict[str, Any] = {}
        self._names: list[str] | None = None
        self.fetches = 0

    def body(self) -> list[Widget]:
        return [
            Horizontal(
                Button("Reload from disk", id="rules-reload", variant="primary"),
                Static(id="rules-reload-status"),
                id="rules-bar",
            ),
            VerticalScroll(Static(id="rules-text", markup=False), id="rules-body"),
        ]

    def show(self, model: Model) -> None:
        status = self.query_one("#rules-reload-status", Static)
        last = model.last_reload
        if model.config_error:
            text = f"[b red]configuration rejected[/]: {model.config_error}"
        elif last is None:
            text = "no reload since the daemon started"
        elif last.get("ok"):
            text = f"last reload at {clock(last.get('at'))}: [green]ok[/] ({reload_summary(last)})"
        else:
            text = (
                f"last reload at {clock(last.get('at'))}: [b red]rejected[/]: {last.get('error')}"
            )
        if last is not None and not last.get("ok") and not model.config_error:
            text += " (fixed since)"
        status.update(text)
        if model.rules != self._names:
            self._names = list(model.rules)
            self.action_fetch()

    def action_fetch(self) -> None:
        self.dash.call(p.RulesShow(), self._loaded)

    def _loaded(self, result: Any) -> None:
        self.rules = dict(result or {})
        self.fetches += 1
        lines = []
        for name, rs in sorted(self.rules.items()):
            lines.append(f"[{name}]")
            for key, value in sorted(rs.items()):
                if key == "name":
                    continue  # the heading
                lines.extend(rule_lines(key, value))
        self.query_one("#rules-text", Static).update("\n".join(lines) or "no rule sets")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "rules-reload":
            self.action_reload_config()

    def action_reload_config(self) -> None:
        self.dash.call(p.Reload(), self._reloaded, on_error=self._rejected)

    def _reloaded(self, result: Any) -> None:
        self.notify("Configuration reloaded: " + reload_summary(result or {}))
        self.action_fetch()

    def _rejected(self, message: str) -> None:
        self.notify(f"Reload rejected: {message}", severity="error", timeout=10)
