"""The key bar: textual's Footer, rebuilt only when the keys it shows change.

Textual's Footer re-creates all its key widgets whenever a screen's bindings *might*
have changed (every focus change, every screen switch: several times per key press).
Rebuilding a dozen styled widgets is most of what a key press costs on the dashboard.
"""

from __future__ import annotations

from typing import Any

from textual.screen import Screen
from textual.widgets import Footer


def _signature(screen: Screen[Any]) -> tuple[tuple[object, ...], ...]:
    return tuple(
        (
            key,
            active.binding.action,
            active.binding.description,
            active.binding.show,
            active.binding.key_display,
            active.enabled,
            active.tooltip,
        )
        for key, active in screen.active_bindings.items()
    )


class KeyFooter(Footer):
    def __init__(self) -> None:
        super().__init__()
        self._shown: tuple[tuple[object, ...], ...] | None = None

    def bindings_changed(self, screen: Screen[Any]) -> None:
        if self.is_attached and screen is self.screen and screen.app.app_focus:
            signature = _signature(screen)
            if signature == self._shown:
                return  # the same keys: nothing to rebuild
            self._shown = signature
        super().bindings_changed(screen)
