"""The header: the daemon's endpoint and the connection state."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from recsync.tui.model import Model


class ConnectionHeader(Static):
    """``recsync  <endpoint>  ● connected`` or ``○ disconnected: why``."""

    def __init__(self, title: str) -> None:
        super().__init__(id="header")
        self.title_text = title

    def show(self, model: Model) -> None:
        text = Text()
        text.append(" recsync ", style="bold reverse")
        text.append(f" {self.title_text} ", style="bold")
        text.append(model.endpoint or "?", style="italic")
        text.append("  ")
        if model.connected:
            text.append("● connected", style="bold green")
        else:
            text.append(f"○ {model.connection_note}", style="bold red")
        self.set_class(model.connected, "-connected")
        self.set_class(not model.connected, "-disconnected")
        self.update(text)
