"""What every dashboard screen shares: the header, the footer, live refresh."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer

from recsync.tui.model import Model
from recsync.tui.widgets.header import ConnectionHeader

if TYPE_CHECKING:
    from recsync.tui.app import RecsyncApp


class DashboardScreen(Screen[Any]):
    """A screen that shows part of the model and is told when it changes."""

    TITLE_TEXT = ""

    @property
    def dash(self) -> RecsyncApp:
        from recsync.tui.app import RecsyncApp

        app = self.app
        assert isinstance(app, RecsyncApp)
        return app

    def compose(self) -> ComposeResult:
        yield ConnectionHeader(self.TITLE_TEXT)
        yield from self.body()
        yield Footer()

    def body(self) -> list[Widget]:
        return []

    def on_mount(self) -> None:
        self.refresh_model()

    def on_screen_resume(self) -> None:
        self.refresh_model()

    def refresh_model(self) -> None:
        headers = self.query(ConnectionHeader)
        if not headers:
            return  # mounted but not composed yet, or closing: on_mount shows the model
        model = self.dash.model
        headers.first().show(model)
        self.show(model)

    def show(self, model: Model) -> None:
        """Bring the screen's widgets up to date with ``model``."""
