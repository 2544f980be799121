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
        self._shown: Text | None = None

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
        if text == self._shown:
            return  # an update would re-layout the whole screen for nothing
        self._shown = text
        self.set_class(model.connected, "-connected")
        self.set_class(not model.connected, "-disconnected")
        self.update(text, layout=False)  # one line, always
