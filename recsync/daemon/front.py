"""The control front: a small process that owns the public command socket.

recsyncd's actors keep its interpreter busy; a query answered inside the daemon waits for
the GIL and slows the sync. The front runs in its own process: it answers the pipeline
overview (`status` without a record, `stats`) from the snapshot the daemon writes every
second and on every pipeline state change, and passes every other request, byte for byte,
to the daemon's internal control socket, one DEALER per client so replies find their way
back. Started by recsyncd for ipc:// endpoints (tcp:// with CURVE stays in-process).

    python -m recsync.daemon.front PUBLIC_ENDPOINT INTERNAL_ENDPOINT SNAPSHOT_FILE
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import msgspec
import zmq

from recsync.daemon import protocol
from recsync.daemon.runtime import check_endpoint, ipc_path

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
        except FileNotFoundError:
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


def serve(public: str, internal: str, snapshot_file: Path) -> None:
    check_endpoint(public, curve=False)
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_FRAME * 4)
    router.bind(public)
    path = ipc_path(public)
    if path is not None:
        os.chmod(path, 0o600)
    snapshot = Snapshot(snapshot_file)
    dealers: dict[bytes, zmq.Socket[bytes]] = {}
    owners: dict[zmq.Socket[bytes], bytes] = {}
    poller = zmq.Poller()
    poller.register(router, zmq.POLLIN)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("now", True))
    parent = os.getppid()
    print("ready", flush=True)
    try:
        while not stop["now"] and os.getppid() == parent:  # recsyncd gone (kill -9): leave
            for sock in dict(poller.poll(200)):
                if sock is router:
                    _from_client(router, snapshot, dealers, owners, poller, ctx, internal)
                else:
                    frames = sock.recv_multipart()
                    router.send_multipart([owners[sock], *frames], zmq.NOBLOCK)
    except zmq.ZMQError:
        pass
    finally:
        for sock in [router, *dealers.values()]:
            sock.close(0)
        ctx.term()
        if path is not None:
            path.unlink(missing_ok=True)


def _from_client(
    router: zmq.Socket[bytes], snapshot: Snapshot, dealers: dict[bytes, zmq.Socket[bytes]],
    owners: dict[zmq.Socket[bytes], bytes], poller: zmq.Poller, ctx: zmq.Context[Any],
    internal: str,
) -> None:
    frames = router.recv_multipart()
    identity, rest = frames[0], frames[1:]
    kind = _fast_kind(rest[-1]) if rest and len(rest) <= 2 else None
    reply = snapshot.reply(kind) if kind else None
    if reply is not None:
        router.send_multipart([identity, *rest[:-1], reply], zmq.NOBLOCK)
        return
    dealer = dealers.get(identity)
    if dealer is None:
        if len(dealers) > 1000:  # forget the oldest clients; they reconnect as new ones
            old_id, old = next(iter(dealers.items()))
            poller.unregister(old)
            old.close(0)
            del dealers[old_id], owners[old]
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(internal)
        poller.register(dealer, zmq.POLLIN)
        dealers[identity], owners[dealer] = dealer, identity
    dealer.send_multipart(rest)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    serve(args[0], args[1], Path(args[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
