"""The link to recsyncd: snapshot over the command socket, then the event stream.

``follow`` runs on a worker thread (never on the UI's event loop). It reports through
``emit`` callbacks: a fresh snapshot, a batch of events, or the connection going down.
A gap in the sequence numbers, a reload, or a reconnect triggers a new snapshot.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from recsync.client import ControlClient, Subscription
from recsync.daemon import protocol as p
from recsync.errors import ControlError, RecsyncError

ClientFactory = Callable[[], ControlClient]
RESNAPSHOT = frozenset({"config_reloaded", "config_rejected"})


class Sink(Protocol):
    def snapshot(self, snap: dict[str, Any]) -> None: ...
    def events(self, batch: list[dict[str, Any]]) -> None: ...
    def down(self, reason: str) -> None: ...


def follow(
    factory: ClientFactory,
    sink: Sink,
    stop: threading.Event,
    *,
    batch_window: float = 0.1,
    silence: float = 3.0,
    retry: float = 0.5,
) -> None:
    """Keep ``sink`` current until ``stop`` is set."""
    while not stop.is_set():
        try:
            _session(factory, sink, stop, batch_window, silence)
        except (ControlError, RecsyncError, OSError) as exc:
            sink.down(str(exc))
        if not stop.is_set():
            stop.wait(retry)


def _session(
    factory: ClientFactory, sink: Sink, stop: threading.Event, window: float, silence: float
) -> None:
    client = factory()
    sub: Subscription | None = None
    try:
        sub = client.subscribe()  # before the snapshot: nothing falls between the two
        snap = client.request(p.SnapshotGet())
        last = int(snap.get("seq") or 0)
        node = snap.get("node")  # [cluster]: events of other nodes are not numbered here
        sink.snapshot(snap)
        quiet_since = time.monotonic()
        while not stop.is_set():
            batch: list[dict[str, Any]] = []
            deadline = time.monotonic() + window
            resnap = False
            while not stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                event = sub.recv(left)
                if event is None:
                    break
                if event.node not in (None, node):  # another node's, relayed: as it is
                    batch.append(msgspec.to_builtins(event))
                    continue
                if event.seq <= last:
                    continue  # already in the snapshot
                if event.seq != last + 1:
                    resnap = True  # a gap: events were lost
                    break
                last = event.seq
                batch.append(msgspec.to_builtins(event))
                if event.kind in RESNAPSHOT:
                    resnap = True
                    break
            now = time.monotonic()
            if batch:
                quiet_since = now
                sink.events(batch)
            if resnap:
                snap = client.request(p.SnapshotGet())
                last = int(snap.get("seq") or 0)
                sink.snapshot(snap)
                quiet_since = now
            elif now - quiet_since > silence:
                # stats come every second: silence means the daemon may be gone; ask it
                seq = int(client.request(p.SnapshotGet()).get("seq") or 0)
                if seq < last:  # a new daemon (sequence numbers start over)
                    snap = client.request(p.SnapshotGet())
                    last = int(snap.get("seq") or 0)
                    sink.snapshot(snap)
                quiet_since = now
    finally:
        if sub is not None:
            sub.close()
        client.close()


def command(factory: ClientFactory, cmd: p.Command) -> Any:
    """One request on a fresh client (for a worker thread)."""
    with factory() as client:
        return client.request(cmd)
