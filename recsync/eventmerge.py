"""Several nodes' event streams merged into one stable order, exactly.

Each node's own events reach a client in the order the node published them, each with a
time that never goes back (``ControlServer.publish`` stamps it under its lock). With
[cluster], each node also publishes a ``tick`` every ``TICK`` seconds, naming the peers
whose events it relays. A tick is a promise: this node will publish nothing older. So an
event can go out once every other node the client waits for has said something newer than
it; a relay that is slow for a moment then delays events but never reorders them.

The client waits for each node it heard from, and each peer a tick named, in the last
``SILENT`` seconds (a node that died stops being waited for); until the first tick, it
knows not whom to wait for, and holds every node's events. An event held ``MAX_HOLD``
seconds goes out anyway, with every event before it: a live view must not stop for a node
that is named but never heard, or whose clock lags by more than that.
"""

from __future__ import annotations

import bisect
import itertools

from recsync.daemon import protocol

MAX_HOLD = 5.0  # seconds an event waits at most for the other nodes to catch up
SILENT = 5.0  # seconds after which a node not heard from is no longer waited for


class EventMerge:
    """Feed it every event received (ticks included) with ``add``; ``due`` returns those
    that can go out, in ``protocol.events_order``. Times are ``time.monotonic()`` values
    passed in, so tests give their own."""

    def __init__(self, max_hold: float = MAX_HOLD, silent: float = SILENT) -> None:
        self.max_hold, self.silent = max_hold, silent
        self._held: list[tuple[tuple[float, str, str, int], int, float, protocol.Event]] = []
        self._count = itertools.count()  # ties of equal keys (a duplicate) keep arrival order
        self._newest: dict[str, float] = {}  # node -> the newest time it published
        self._heard: dict[str, float] = {}  # node -> when the client last heard from it
        self._named: dict[str, float] = {}  # peer -> when a tick last named it
        self._now: list[protocol.Event] = []  # events of a single daemon: no order to wait for
        self._ticked = False  # a tick came: the peers are known

    def add(self, event: protocol.Event, now: float) -> None:
        node = event.node
        if node is None:
            if event.kind != protocol.TICK_KIND:
                self._now.append(event)
            return
        self._newest[node] = max(self._newest.get(node, event.ts), event.ts)
        self._heard[node] = now
        if event.kind == protocol.TICK_KIND:
            self._ticked = True
            for peer in event.data.get("peers") or ():
                if isinstance(peer, str):
                    self._named[peer] = now
            return
        item = (protocol.events_order(event), next(self._count), now, event)
        bisect.insort(self._held, item)

    def due(self, now: float) -> list[protocol.Event]:
        """The events that can go out now, in order."""
        out, self._now = self._now, []
        held = self._held
        overdue = 0  # held[:overdue] go out whatever the others say: one of them waited long
        for i, (_, _, arrived, _) in enumerate(held):
            if now - arrived >= self.max_hold:
                overdue = i + 1
        waited = {n for n, t in self._heard.items() if now - t < self.silent}
        waited.update(n for n, t in self._named.items() if now - t < self.silent)
        taken = 0
        for i, (_, _, _, event) in enumerate(held):
            if i >= overdue and not self._safe(event, waited):
                break
            out.append(event)
            taken = i + 1
        del held[:taken]
        return out

    def _safe(self, event: protocol.Event, waited: set[str]) -> bool:
        if not self._ticked:
            return False
        # a later event of node n sorts after (newest[n], n): none can come before `event`
        for n in waited:
            if n != event.node:
                newest = self._newest.get(n)
                if newest is None or (newest, n) <= (event.ts, event.node or ""):
                    return False
        return True

    @property
    def held(self) -> int:
        return len(self._held)
