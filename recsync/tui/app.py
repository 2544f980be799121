"""The `recsync tui` application: the link worker, the model, the screens."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from textual.app import App
from textual.binding import Binding
from textual.message import Message
from textual.message_pump import MessagePump

from recsync.client import ControlClient, resolve_endpoints
from recsync.daemon import protocol as p
from recsync.errors import ControlError, RecsyncError
from recsync.tui import link
from recsync.tui.model import Model
from recsync.tui.screens.base import DashboardScreen
from recsync.tui.screens.detail import DetailScreen
from recsync.tui.screens.dialogs import HelpScreen
from recsync.tui.screens.failed import FailedScreen
from recsync.tui.screens.overview import OverviewScreen
from recsync.tui.screens.rules import RulesScreen
from recsync.tui.screens.settings import SettingsScreen

ClientFactory = Callable[[], ControlClient]


class SnapshotLoaded(Message):
    def __init__(self, snap: dict[str, Any]) -> None:
        super().__init__()
        self.snap = snap


class EventsArrived(Message):
    def __init__(self, batch: list[dict[str, Any]]) -> None:
        super().__init__()
        self.batch = batch


class LinkDown(Message):
    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason


class _Sink:
    """Hands what the link worker learns to the UI thread as messages (thread-safe)."""

    def __init__(self, app: RecsyncApp) -> None:
        self.app = app

    def snapshot(self, snap: dict[str, Any]) -> None:
        self.app.post_message(SnapshotLoaded(snap))

    def events(self, batch: list[dict[str, Any]]) -> None:
        self.app.post_message(EventsArrived(batch))

    def down(self, reason: str) -> None:
        self.app.post_message(LinkDown(reason))


class RecsyncApp(App[None]):
    CSS_PATH = "recsync.tcss"
    TITLE = "recsync"
    MODES = {
        "overview": OverviewScreen,
        "failed": FailedScreen,
        "rules": RulesScreen,
        "settings": SettingsScreen,
    }
    DEFAULT_MODE = "overview"
    BINDINGS = [
        Binding("o", "overview", "Overview"),
        Binding("f", "switch_mode('failed')", "Failed"),
        Binding("r", "switch_mode('rules')", "Rules"),
        Binding("s", "switch_mode('settings')", "Settings"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        client_factory: ClientFactory,
        *,
        endpoint: str = "",
        batch_window: float = 0.1,
        silence: float = 3.0,
        retry: float = 0.5,
        refresh_interval: float = 0.5,
    ) -> None:
        super().__init__()
        self.client_factory = client_factory
        self.model = Model(endpoint=endpoint)
        self.link_options = {"batch_window": batch_window, "silence": silence, "retry": retry}
        self.refresh_interval = refresh_interval
        self._stop = threading.Event()
        self._dirty = False
        self.events_applied = 0  # for tests and the benchmark
        self.snapshots_applied = 0

    # ---- the link ------------------------------------------------------------------------
    def on_mount(self) -> None:
        self.run_worker(self._follow, thread=True, group="link", name="link")
        # events only mark the view dirty; redraw at most every refresh_interval, so a busy
        # daemon (hundreds of pipelines, 100 events/s) costs a few redraws a second
        self.set_interval(self.refresh_interval, self._redraw_if_dirty)

    def _follow(self) -> None:
        link.follow(self.client_factory, _Sink(self), self._stop, **self.link_options)

    def on_unmount(self) -> None:
        self._stop.set()

    def on_snapshot_loaded(self, message: SnapshotLoaded) -> None:
        self.model.load_snapshot(message.snap)
        self.model.connected = True
        self.model.connection_note = "connected"
        self.snapshots_applied += 1
        self.refresh_views()

    def on_events_arrived(self, message: EventsArrived) -> None:
        for event in message.batch:
            self.model.apply_event(event)
        self.events_applied += len(message.batch)
        self._dirty = True

    def _redraw_if_dirty(self) -> None:
        if self._dirty:
            self.refresh_views()

    def on_link_down(self, message: LinkDown) -> None:
        was = self.model.connected
        self.model.connected = False
        self.model.connection_note = f"disconnected: {message.reason}"
        self.model.version += 1
        if was or self.snapshots_applied == 0:
            self.refresh_views()

    def refresh_views(self) -> None:
        """Update what is on screen (screens below the top catch up when they resume)."""
        self._dirty = False
        if not self.screen_stack:
            return  # starting up or shutting down
        for screen in reversed(self.screen_stack):
            if isinstance(screen, DashboardScreen) and screen.is_mounted:
                screen.refresh_model()
                break

    # ---- commands ------------------------------------------------------------------------
    def call(
        self,
        cmd: p.Command,
        done: Callable[[Any], None],
        *,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        """Send ``cmd`` on a worker thread; ``done(result)`` runs on the UI thread.

        An answer that arrives after the screen that asked has gone (closed, or the app
        shutting down) is dropped: its widgets are no longer there to show it.
        """

        def work() -> None:
            try:
                result = link.command(self.client_factory, cmd)
            except (ControlError, RecsyncError) as exc:
                message = str(exc)
                self.call_from_thread(self._failed, message, on_error)
                return
            self.call_from_thread(self._deliver, done, result)

        self.run_worker(work, thread=True, group="commands")

    def _deliver(self, done: Callable[[Any], None], result: Any) -> None:
        if not self._gone(done):
            done(result)

    def _gone(self, callback: Callable[..., None]) -> bool:
        owner = getattr(callback, "__self__", None)
        return isinstance(owner, MessagePump) and owner is not self and not owner.is_attached

    def _failed(self, message: str, on_error: Callable[[str], None] | None) -> None:
        if on_error is not None:
            if self._gone(on_error):
                return
            on_error(message)
        else:
            self.notify(message, title="recsyncd", severity="error", timeout=8)

    # ---- navigation ----------------------------------------------------------------------
    def open_pipeline(self, pipeline: str) -> None:
        self.push_screen(DetailScreen(pipeline))

    def action_overview(self) -> None:
        """Back to the overview table from any screen or dialog."""
        while len(self.screen_stack) > 1:
            self.pop_screen()  # dialogs and pushed screens of this mode: closed
        if self.current_mode != "overview":
            self.switch_mode("overview")
        while len(self.screen_stack) > 1:
            self.pop_screen()  # the detail screen opened from the overview

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())


def make_app(
    client_factory: ClientFactory | None = None,
    *,
    endpoint: str | None = None,
    event_endpoint: str | None = None,
    timeout: float = 2.0,
    **options: Any,
) -> RecsyncApp:
    """The dashboard; tests give a ``client_factory`` (a fresh ControlClient per call)."""
    label = endpoint or ""
    if client_factory is None:

        def client_factory() -> ControlClient:
            return ControlClient(endpoint, event_endpoint, timeout=timeout)

        try:
            label = resolve_endpoints(endpoint, event_endpoint)[0]
        except RecsyncError:
            pass
    elif not label:
        try:
            with client_factory() as probe:
                label = probe.endpoint
        except RecsyncError:
            pass
    return RecsyncApp(client_factory, endpoint=label, **options)
