"""Pause/resume and sync-now of one pipeline, from any screen that has one selected."""

from __future__ import annotations

from typing import Any

from textual.binding import Binding

from recsync.daemon import protocol as p
from recsync.tui.screens.base import DashboardScreen


class PipelineScreen(DashboardScreen):
    """A screen with a current pipeline: `p` pauses or resumes it, `n` syncs it now."""

    BINDINGS = [
        Binding("p", "pause_resume", "Pause/Resume"),
        Binding("n", "sync_now", "Sync now"),
    ]

    def selected(self) -> str | None:
        """The pipeline the actions apply to (``customer/name``)."""
        return None

    def _target(self) -> tuple[str, str, str] | None:
        pid = self.selected()
        view = self.dash.model.pipelines.get(pid) if pid else None
        if pid is None or view is None:
            self.notify("No pipeline selected.", severity="warning")
            return None
        customer, _, name = pid.partition("/")
        return pid, view.customer or customer, view.name or name

    def action_pause_resume(self) -> None:
        target = self._target()
        if target is None:
            return
        pid, customer, name = target
        paused = self.dash.model.pipelines[pid].state == "paused"
        cmd: p.Command = (
            p.Resume(customer=customer, pipeline=name)
            if paused
            else p.Pause(customer=customer, pipeline=name)
        )
        verb = "resumed" if paused else "paused"

        def done(_result: Any) -> None:
            self.notify(f"{pid} {verb}.")

        self.dash.call(cmd, done)

    def action_sync_now(self) -> None:
        target = self._target()
        if target is None:
            return
        pid, customer, name = target

        def done(_result: Any) -> None:
            self.notify(f"{pid}: a sync pass started.")

        self.dash.call(p.SyncNow(customer=customer, pipeline=name), done)
