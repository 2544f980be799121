"""A client for recsyncd's control socket: requests over DEALER, events over SUB.

Used by the `recsync` command line and the dashboard. Results come back as plain data
(dicts, lists, strings, numbers), as msgpack decoded them. One client per thread.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec
import zmq

from recsync.daemon import protocol, runtime
from recsync.daemon.runtime import ENDPOINT_ENV, EVENT_ENDPOINT_ENV, CurveKeys
from recsync.errors import ControlError, DaemonUnreachable, RecsyncError
from recsync.eventmerge import EventMerge


def resolve_endpoints(
    endpoint: str | None = None, event_endpoint: str | None = None
) -> tuple[str, str]:
    """(command, event) endpoints: the arguments, else $RECSYNC_ENDPOINT and
    $RECSYNC_EVENT_ENDPOINT, else the runtime directory's sockets.

    An event endpoint not given any way is derived from the command endpoint
    (``runtime.derive_event_endpoint``).
    """
    endpoint = endpoint or os.environ.get(ENDPOINT_ENV) or None
    event_endpoint = event_endpoint or os.environ.get(EVENT_ENDPOINT_ENV) or None
    if endpoint is None:
        command, events = runtime.default_endpoints(runtime.runtime_dir(create=False))
        return command, event_endpoint or events
    return endpoint, event_endpoint or runtime.derive_event_endpoint(endpoint)


def _check_reachable(endpoint: str) -> None:
    """Fail fast when an ipc socket file is missing or not ours to use."""
    path = runtime.ipc_path(endpoint)
    if path is None:
        return
    try:
        path.stat()
    except FileNotFoundError:
        raise DaemonUnreachable(
            f"No recsyncd control socket at {path}; is recsyncd running? (give its endpoint "
            f"with --endpoint or ${ENDPOINT_ENV})"
        ) from None
    except PermissionError:
        raise DaemonUnreachable(
            f"No permission to reach {path}; run recsync as the user recsyncd runs as."
        ) from None
    if not os.access(path, os.R_OK | os.W_OK):
        raise DaemonUnreachable(
            f"No permission to use {path}; run recsync as the user recsyncd runs as."
        )
    try:
        listening = runtime.socket_in_use(path)
    except RecsyncError as exc:
        raise DaemonUnreachable(str(exc)) from exc
    if not listening:
        raise DaemonUnreachable(
            f"recsyncd is not running: nothing listens on {path} (a socket file left behind)."
        )


def _apply_curve(sock: zmq.Socket[bytes], keys: CurveKeys | None) -> None:
    if keys is not None:
        sock.curve_publickey = keys.public
        sock.curve_secretkey = keys.secret
        sock.curve_serverkey = keys.server_public


class ControlClient:
    """Talks to recsyncd. ``timeout`` (seconds) bounds each request.

    A request that gets no answer in time raises ``DaemonUnreachable`` (a ControlError with
    code UNAVAILABLE); an error reply raises ``ControlError(code, message)``.
    """

    def __init__(
        self,
        endpoint: str | None = None,
        event_endpoint: str | None = None,
        *,
        timeout: float = 10.0,
        curve_keys: CurveKeys | None = None,
    ) -> None:
        self.endpoint, self.event_endpoint = resolve_endpoints(endpoint, event_endpoint)
        self.timeout = timeout
        self.curve_keys = curve_keys
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._sock: zmq.Socket[bytes] | None = None

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the sockets. Safe to call again."""
        self._drop()
        if not self._ctx.closed:
            self._ctx.destroy(linger=0)

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def _socket(self) -> zmq.Socket[bytes]:
        if self._sock is None:
            _check_reachable(self.endpoint)
            sock = self._ctx.socket(zmq.DEALER)
            sock.linger = 0
            _apply_curve(sock, self.curve_keys)
            sock.connect(self.endpoint)
            self._sock = sock
        return self._sock

    def request(self, cmd: protocol.Command) -> Any:
        """Send one command and return its result; raises ControlError on an error reply."""
        payload = protocol.encoder.encode(protocol.Request(protocol.API_VERSION, cmd))  # type: ignore[arg-type]
        return self.request_raw(payload)

    def request_raw(self, payload: bytes) -> Any:
        """Send an already-encoded request frame (tests send garbage this way)."""
        sock = self._socket()
        sock.send_multipart([b"", payload])
        if not sock.poll(int(self.timeout * 1000), zmq.POLLIN):
            # the reply may still come later: start over with a fresh socket (lazy pirate)
            self._drop()
            raise DaemonUnreachable(
                f"recsyncd did not answer on {self.endpoint} within {self.timeout:g}s; "
                "is it running?"
            )
        return self._result(sock.recv_multipart())

    def _result(self, frames: list[bytes]) -> Any:
        """The result of a reply, or its error raised as a ControlError."""
        try:
            reply = protocol.reply_decoder.decode(frames[-1])
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ControlError("INTERNAL", f"recsyncd sent a malformed reply: {exc}.") from exc
        if reply.v != protocol.API_VERSION:
            raise ControlError(
                "VERSION",
                f"recsyncd speaks control API v{reply.v}, this client v{protocol.API_VERSION}.",
            )
        if not reply.ok:
            if reply.error is None:
                raise ControlError("INTERNAL", "recsyncd sent an error reply without a reason.")
            raise ControlError(reply.error.code, reply.error.message)
        return reply.result

    def request_following(
        self, cmd: protocol.Command, sub: Subscription,
        on_event: Callable[[protocol.Event], None],
    ) -> Any:
        """Send a long-running command and pass the events of ``sub`` to ``on_event`` while
        it runs. ``timeout`` bounds the silence, not the command: each event restarts it."""
        payload = protocol.encoder.encode(protocol.Request(protocol.API_VERSION, cmd))  # type: ignore[arg-type]
        sock = self._socket()
        events = sub.socket
        sock.send_multipart([b"", payload])
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(events, zmq.POLLIN)
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self._drop()
                raise DaemonUnreachable(
                    f"recsyncd sent neither progress nor an answer on {self.endpoint} for "
                    f"{self.timeout:g}s; is it running?")
            ready = dict(poller.poll(int(min(left, 0.2) * 1000) + 1))
            if events in ready:
                event = sub.read_one()
                if event is not None:
                    on_event(event)
                    deadline = time.monotonic() + self.timeout
            if sock in ready:
                return self._result(sock.recv_multipart())

    def subscribe(self, kinds: Iterable[str] | None = None) -> Subscription:
        """Follow the event stream (every kind, or only ``kinds``)."""
        return Subscription(self._ctx, self.event_endpoint, kinds, self.curve_keys)


class Subscription:
    """An open SUB socket: iterate for events (forever), or ``recv(timeout)``.

    Iterating polls in short slices so Ctrl-C (KeyboardInterrupt) gets through. ``gaps``
    counts events missed (a jump in sequence numbers), e.g. while the client was slow.
    """

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        endpoint: str,
        kinds: Iterable[str] | None,
        curve_keys: CurveKeys | None,
        *,
        poll_interval: float = 0.2,
    ) -> None:
        _check_reachable(endpoint)
        self.endpoint = endpoint
        self.kinds = frozenset(kinds) if kinds is not None else None
        self.poll_interval = poll_interval
        self.last_seq = 0
        self.gaps = 0
        self._last: dict[tuple[str | None, str | None], int] = {}
        sock = ctx.socket(zmq.SUB)
        sock.linger = 0
        _apply_curve(sock, curve_keys)
        if self.kinds is None:
            sock.setsockopt(zmq.SUBSCRIBE, b"")
        for kind in (*self.kinds, protocol.TICK_KIND) if self.kinds is not None else ():
            sock.setsockopt(zmq.SUBSCRIBE, kind.encode())
        sock.connect(endpoint)
        self._sock: zmq.Socket[bytes] | None = sock

    def recv(self, timeout: float | None = None) -> protocol.Event | None:
        """The next event, or None when none came within ``timeout`` seconds (None: wait)."""
        sock = self._sock
        if sock is None:
            raise ValueError("This subscription is closed.")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = self.poll_interval
            if deadline is not None:
                step = max(0.0, min(step, deadline - time.monotonic()))
            if sock.poll(int(step * 1000), zmq.POLLIN):
                event = self._read(sock)
                if event is not None:
                    return event
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def _read(self, sock: zmq.Socket[bytes]) -> protocol.Event | None:
        event = self._decode(sock)
        return None if event is None or event.kind == protocol.TICK_KIND else event

    def _decode(self, sock: zmq.Socket[bytes]) -> protocol.Event | None:
        """The next message as an event, ticks included (None: not one subscribed to)."""
        frames = sock.recv_multipart()
        try:
            event = protocol.event_decoder.decode(frames[-1])
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None  # not an event: ignore it
        if (self.kinds is not None and event.kind not in self.kinds
                and event.kind != protocol.TICK_KIND):
            return None  # a longer kind that shares a subscribed prefix
        # [cluster]: each node (and boot) numbers its own events; relayed ones interleave
        origin = (event.node, event.boot)
        last = self._last.get(origin, 0)
        if self.kinds is None and last and event.seq > last + 1:
            self.gaps += event.seq - last - 1
        self._last[origin] = event.seq
        self.last_seq = event.seq
        return event

    @property
    def socket(self) -> zmq.Socket[bytes]:
        if self._sock is None:
            raise ValueError("This subscription is closed.")
        return self._sock

    def read_one(self) -> protocol.Event | None:
        """One waiting event, without blocking (None: none, or not one subscribed to)."""
        try:
            return self._read(self.socket) if self.socket.poll(0, zmq.POLLIN) else None
        except zmq.Again:
            return None

    def merged(self) -> Iterator[protocol.Event]:
        """Events forever, those of several nodes in ``protocol.events_order``, exactly: one
        is held until every other node has said something newer (see ``recsync.eventmerge``).
        Events of a single daemon (no node) go out at once."""
        merge = EventMerge()
        while True:
            sock = self.socket
            if sock.poll(int(self.poll_interval * 1000), zmq.POLLIN):
                event = self._decode(sock)
                if event is not None:
                    merge.add(event, time.monotonic())
            yield from merge.due(time.monotonic())

    def __iter__(self) -> Iterator[protocol.Event]:
        return self

    def __next__(self) -> protocol.Event:
        event = self.recv(None)
        assert event is not None
        return event

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_curve_keys(secret_key_file: str | None, server_key_file: str | None) -> CurveKeys | None:
    """Client CURVE keys from two files (both or neither), or None."""
    if not secret_key_file and not server_key_file:
        return None
    if not secret_key_file or not server_key_file:
        raise RecsyncError(
            "CURVE needs both the client's secret key file and the server's public key file."
        )
    return CurveKeys.from_files(Path(secret_key_file), Path(server_key_file))
