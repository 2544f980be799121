"""`recsync tui`: the live Textual dashboard of recsyncd (the only user of textual)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from recsync.tui.app import RecsyncApp


def make_app(*args: object, **kwargs: object) -> RecsyncApp:
    from recsync.tui.app import make_app as _make

    return _make(*args, **kwargs)  # type: ignore[arg-type]


def run(endpoint: str | None = None, event_endpoint: str | None = None) -> int:
    """Run the dashboard until the user quits; the exit code of `recsync tui`."""
    from recsync.tui.app import make_app as _make

    _make(endpoint=endpoint, event_endpoint=event_endpoint).run()
    return 0
