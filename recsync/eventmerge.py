"""Several nodes' event streams merged into one stable order, exactly.

Each node's own events reach a client in the order the node published them, each with a
time that never goes back (``ControlServer.publish`` stamps it under its lock). With
[cluster], each node also publishes a ``tick`` every ``TICK`` seconds, naming the peers
whose events it relays. A tick is a promise: this node will publish nothing older. So an
event can go out once every other node the client waits for has said something newer than
it; a relay that is slow for a moment then delays events but never reorders them.

The client waits for each node it heard from in the last ``SILENT`` seconds (a node that
died stops being waited for), and for ``NAMED`` seconds for a peer a tick names that it
has not heard yet (one relayed a moment ago; not one this client cannot hear, say a
peer that only another node reaches); until the first tick, it knows not whom to wait
for, and holds every node's events. An event held ``MAX_HOLD``
seconds goes out anyway, with every event before it: a live view must not stop for a node
that is named but never heard, or whose clock lags by more than that.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import math

from recsync.daemon import protocol

MAX_HOLD = 5.0  # seconds an event waits at most for the other nodes to catch up
SILENT = 5.0  # seconds after which a node not heard from is no longer waited for
NAMED = 1.0  # seconds a peer named by a tick is waited for before it is first heard


class EventMerge:
    """Feed it every event received (ticks included) with ``add``; ``due`` returns those
    that can go out, in ``protocol.events_order``. Times are ``time.monotonic()`` values
    passed in, so tests give their own."""

    def __init__(self, max_hold: float = MAX_HOLD, silent: float = SILENT,
                 named: float = NAMED) -> None:
        self.max_hold, self.silent, self.named = max_hold, silent, named
        self._held: list[tuple[tuple[float, str, str, int], int, float, protocol.Event]] = []
        self._count = itertools.count()  # ties of equal keys (a duplicate) keep arrival order
        # (arrival, key, count) of held events in arrival order (some gone out already):
        # the overdue ones are always the first
        self._arrivals: collections.deque[
            tuple[float, tuple[float, str, str, int], int]] = collections.deque()
        self._live: set[int] = set()  # the counts of the events held
        self._newest: dict[str, float] = {}  # node -> the newest time it published
        self._heard: dict[str, float] = {}  # node -> when the client last heard from it
        self._named: dict[str, float] = {}  # peer not heard yet -> when a tick first named it
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
        self._named.pop(node, None)
        if event.kind == protocol.TICK_KIND:
            self._ticked = True
            for peer in event.data.get("peers") or ():
                if isinstance(peer, str) and peer not in self._heard:
                    self._named.setdefault(peer, now)
            return
        key, count = protocol.events_order(event), next(self._count)
        bisect.insort(self._held, (key, count, now, event))
        self._arrivals.append((now, key, count))
        self._live.add(count)

    def due(self, now: float) -> list[protocol.Event]:
        """The events that can go out now, in order."""
        out, self._now = self._now, []
        held, arrivals = self._held, self._arrivals
        last: tuple[tuple[float, str, str, int], int] | None = None  # the last overdue
        while arrivals and now - arrivals[0][0] >= self.max_hold:
            _, key, count = arrivals.popleft()
            if count in self._live and (last is None or (key, count) > last):
                last = (key, count)
        # held[:overdue] go out whatever the others say: one of them waited long enough
        overdue = 0 if last is None else bisect.bisect_right(held, (*last, math.inf))
        waited = {n for n, t in self._heard.items() if now - t < self.silent}
        waited.update(n for n, t in self._named.items() if now - t < self.named)
        taken = 0
        for i, (_, count, _, event) in enumerate(held):
            if i >= overdue and not self._safe(event, waited):
                break
            out.append(event)
            self._live.discard(count)
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
