"""PollerActor: reads one side's changes page by page and hands them to the rules.

It never writes. A page is read only after the queue took the previous one: durably, so
the cursor a connector is given is a committed one, or by handing it straight to the
writer (see Store.enqueue). Then the cursor given is the one after that page, saved only
with its outcome; a connector that prunes its change log by it may prune rows of that
page, but such a page holds no delete, and a listing after a crash finds its records.
"""

from __future__ import annotations

import logging
from typing import Any

from recsync.actors.base import FailureSink, PipelineActor
from recsync.actors.protocol import Committed, Housekeep, PageRead, Poll, Prepare, ReadPage
from recsync.clock import Clock
from recsync.messages import Side

log = logging.getLogger(__name__)
MAX_WARNINGS = 5


class PollerActor(PipelineActor):
    def __init__(
        self, pipeline: str, incarnation: int, report: FailureSink, *,
        side: Side, cursor: str | None, page_size: int, peers: Any, clock: Clock,
        reads: bool = True,
        figures: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(pipeline, incarnation, report)
        self.role = f"poller_{side}"
        self.figures = figures
        self.side = side
        self.cursor = cursor
        self.page_size = page_size
        self.peers = peers  # the pipeline's current refs: connector_<side>, rules
        self.clock = clock
        # False when the rules sync nothing from this side: a cycle then reads nothing
        self.reads = reads
        self.busy = False
        self.paused = False
        self.cycle_started: float | None = None
        self.last_cycle_started: float | None = None  # of the last completed cycle
        self.last_error: str | None = None
        self.retry_at = 0.0
        self.pages = 0
        # what the connector warned about (a rebuilt table, a reset change log): the last
        # few, for status, each {"side", "at" (epoch seconds), "text"}
        self.warnings: list[dict[str, Any]] = []
        self.woken = False  # a wake-up came during a cycle: run another one after it
        # the last page committed said the side had more at once; True at start: a pass a
        # crash cut may have left deletes held, released by the queue at the pass's end
        self.mid_pass = True
        self.handles(Poll, self._poll)
        self.handles(PageRead, self._page_read)
        self.handles(Committed, self._committed)

    def _poll(self, msg: Poll) -> None:
        if msg.wake and self.busy:
            self.woken = True
        if self.busy or self.paused or self.clock.time() < self.retry_at:
            return
        self.woken = False
        if msg.full:
            self.cursor = None
        self.busy = True
        self.cycle_started = self.clock.monotonic()
        if not self.reads:
            self.send(self.peers.ref(f"connector_{self.side}"), (Housekeep(), None))
            self._cycle_done()
            return
        self._read_next()

    def _read_next(self) -> None:
        request = ReadPage(self.cursor, self.page_size, self.clock.time())
        self.send(self.peers.ref(f"connector_{self.side}"), (request, self.actor_ref))

    def _page_read(self, msg: PageRead) -> None:
        page = msg.page
        if page is None:
            self.last_error = msg.error
            if msg.retry_at is not None:
                self.retry_at = msg.retry_at
            elif msg.error:
                log.warning("poll failed", extra={"pipeline": self.pipeline, "side": self.side,
                                                  "error": msg.error})
            self.busy = False  # the next tick tries again
            return
        self.last_error = None
        if page.warning:
            self._warn(page.warning)
        if (not page.changes and not page.listing and not page.unreadable
                and page.cursor == self.cursor and not self.mid_pass):
            self._cycle_done()
            return
        # (an empty page ending a pass goes to the queue too: the deletes of the pass wait
        # there for its end, see Store.enqueue)
        self.pages += 1
        self.send(self.peers.ref("rules"), Prepare(self.side, page, msg.observed))

    def _committed(self, msg: Committed) -> None:
        if msg.error is not None:
            self.last_error = msg.error
            self.busy = False
            self.paused = self.paused or msg.hold
            return
        self.cursor = msg.cursor
        self.mid_pass = msg.more
        if msg.more:
            self._read_next()
        else:
            self._cycle_done()

    def _warn(self, text: str) -> None:
        log.warning("side needs attention", extra={"pipeline": self.pipeline,
                                                   "side": self.side, "error": text})
        self.warnings = [*self.warnings[-(MAX_WARNINGS - 1):],
                         {"side": self.side, "at": self.clock.time(), "text": text}]

    def _cycle_done(self) -> None:
        self.busy = False
        self.last_cycle_started = self.cycle_started
        if self.woken:
            self.woken = False
            self.actor_ref.tell(Poll(wake=True))

    # asked by the pipeline
    def progress(self) -> dict[str, Any]:
        return {"busy": self.busy, "last_cycle_started": self.last_cycle_started,
                "error": self.last_error, "paused": self.paused, "cursor": self.cursor,
                "warnings": list(self.warnings)}

    def set_paused(self, paused: bool) -> None:
        self.paused = paused

    def set_page_size(self, page_size: int) -> None:
        self.page_size = page_size

    def set_reads(self, reads: bool) -> None:
        self.reads = reads
