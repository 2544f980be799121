"""The control front: a small process that owns the public command socket.

recsyncd's actors keep its interpreter busy; a query answered inside the daemon waits for
the GIL and slows the sync. The front runs in its own process: it answers the pipeline
overview (`status` without a record, `stats`) from the snapshot the daemon writes every
second and on every pipeline state change, and passes every other request, byte for byte,
to the daemon's internal control socket through one DEALER, with the client's identity so
replies find their way back (see Front). Started and kept running by recsyncd for ipc://
endpoints (tcp:// with CURVE stays in-process): see recsync.daemon.frontproc.

    python -m recsync.daemon.front PUBLIC_ENDPOINT INTERNAL_ENDPOINT SNAPSHOT_FILE
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import zmq

from recsync.daemon import protocol
from recsync.daemon.logs import setup_logging
from recsync.daemon.runtime import check_endpoint, ipc_path
from recsync.errors import RecsyncError

log = logging.getLogger("recsyncd.front")
QUEUE_LIMIT = 1000  # requests waiting for the daemon; past it a client is told "busy"
_snapshot_decoder = msgspec.msgpack.Decoder(dict[str, Any])


class Snapshot:
    """The daemon's last written overview, re-read when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sig: tuple[int, int] | None = None
        self.replies: dict[str, bytes] = {}

    def reply(self, kind: str) -> bytes | None:
        try:
            st = os.stat(self.path)
        except OSError:  # not written yet, or its folder is going away
            return None
        sig = (st.st_ino, st.st_mtime_ns)
        if sig != self._sig:
            try:
                data = _snapshot_decoder.decode(self.path.read_bytes())
            except (OSError, msgspec.DecodeError):
                return self.replies.get(kind)  # being replaced: the last one will do
            self._sig = sig
            self.replies = {k: protocol.encoder.encode(protocol.ok(v)) for k, v in data.items()}
        return self.replies.get(kind)


def _fast_kind(body: bytes) -> str | None:
    """``status`` / ``stats`` when the request is one the snapshot answers, else None."""
    if len(body) > 256:
        return None
    try:
        request = protocol.request_decoder.decode(body)
    except msgspec.DecodeError:
        return None
    if request.v != protocol.API_VERSION:
        return None
    if isinstance(request.cmd, protocol.StatusGet) and request.cmd.record_id is None:
        return "status"
    if isinstance(request.cmd, protocol.StatsGet):
        return "stats"
    return None


class Front:
    """The front's sockets: the public ROUTER, and ONE DEALER to the daemon for every client.

    A request the snapshot cannot answer goes to the daemon as ``[client, b"", *frames]``;
    the daemon's bridge keeps everything up to the last empty frame as the reply's
    envelope, so the reply comes back as ``[client, b"", *reply]`` and is routed to the
    client by the first frame. One DEALER, whatever the number of clients: the descriptors
    of both processes stay flat (a socket per client ran out of them after ~500 clients).
    """

    def __init__(self, public: str, internal: str, snapshot_file: Path) -> None:
        self.public = public
        self.snapshot = Snapshot(snapshot_file)
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_FRAME * 4)
        self.dealer = self.ctx.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.LINGER, 0)
        self.dealer.setsockopt(zmq.SNDHWM, QUEUE_LIMIT)
        self.dealer.setsockopt(zmq.RCVHWM, 0)
        self.dealer.connect(internal)
        self.path = ipc_path(public)
        self.errors = 0

    def bind(self) -> None:
        check_endpoint(self.public, curve=False)
        self.router.bind(self.public)
        if self.path is not None:
            os.chmod(self.path, 0o600)

    def close(self) -> None:
        self.ctx.destroy(linger=0)
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def run(self, running: Callable[[], bool]) -> None:
        """Serve while ``running()``; an error with one message is logged and skipped."""
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.dealer, zmq.POLLIN)
        while running():
            try:
                ready = dict(poller.poll(200))
            except zmq.ZMQError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            if self.router in ready:
                for frames in _drain(self.router, 64):
                    self._guarded(self.from_client, frames)
            if self.dealer in ready:
                for frames in _drain(self.dealer, 256):
                    self._guarded(self.from_daemon, frames)

    def _guarded(self, step: Callable[[list[bytes]], None], frames: list[bytes]) -> None:
        try:
            step(frames)
        except Exception as exc:
            self.errors += 1
            log.exception("control front: a message was not passed on",
                          extra={"error": str(exc) or type(exc).__name__,
                                 "errors": self.errors})

    def from_client(self, frames: list[bytes]) -> None:
        identity, rest = frames[0], frames[1:]
        if not rest:
            return
        kind = _fast_kind(rest[-1]) if len(rest) <= 2 else None
        reply = self.snapshot.reply(kind) if kind else None
        if reply is not None:
            self.router.send_multipart([identity, *rest[:-1], reply], zmq.NOBLOCK)
            return
        try:
            self.dealer.send_multipart([identity, b"", *rest], zmq.NOBLOCK)
        except zmq.Again:
            busy = protocol.fault(
                "UNAVAILABLE",
                f"recsyncd is busy: {QUEUE_LIMIT} requests are waiting; try again shortly.")
            self.router.send_multipart(
                [identity, *rest[:-1], protocol.encoder.encode(busy)], zmq.NOBLOCK)

    def from_daemon(self, frames: list[bytes]) -> None:
        if len(frames) < 3 or frames[1] != b"":
            log.warning("control front: a reply without a client was dropped",
                        extra={"frames": len(frames)})
            return
        self.router.send_multipart([frames[0], *frames[2:]], zmq.NOBLOCK)


def _drain(sock: zmq.Socket[bytes], limit: int) -> Iterator[list[bytes]]:
    """Up to ``limit`` messages waiting on ``sock``, without blocking."""
    for _ in range(limit):
        try:
            yield sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return


def serve(public: str, internal: str, snapshot_file: Path) -> int:
    """Run the front until SIGTERM or until recsyncd is gone; the exit status.

    Log lines go to stdout as JSON; recsyncd reads them into its own log. An error outside
    the handling of one message ends the front with status 1 (after logging it), and
    recsyncd starts a new one.
    """
    front = Front(public, internal, snapshot_file)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("now", True))
    parent = os.getppid()
    try:
        try:
            front.bind()
        except (RecsyncError, zmq.ZMQError) as exc:
            text = exc.strerror if isinstance(exc, zmq.ZMQError) else str(exc)
            log.error("control front cannot listen", extra={"endpoint": public,
                                                             "error": text})
            return 2
        print("ready", flush=True)
        # recsyncd gone (kill -9): leave, and free the socket for the next recsyncd
        front.run(lambda: not stop["now"] and os.getppid() == parent)
        return 0
    except BaseException as exc:
        log.critical("control front crashed", exc_info=True,
                     extra={"error": str(exc) or type(exc).__name__})
        return 1
    finally:
        front.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    setup_logging(os.environ.get("RECSYNC_LOG_LEVEL", "info"), sys.stdout)
    return serve(args[0], args[1], Path(args[2]))


if __name__ == "__main__":
    sys.exit(main())
