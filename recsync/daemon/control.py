"""The control plane's bridge: a ROUTER for commands, a PUB for events, one thread owns both.

Requests are validated on the bridge thread. Cheap commands (``inline``) run right there;
the others run on a thread pool and their replies come back to the bridge through an
inproc PUSH/PULL pair, so a busy actor never stalls the control socket. Events from any
thread take the same path and leave on the PUB socket as ``[kind, Event]`` frames.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, get_args

import msgspec
import zmq

from recsync.daemon import protocol
from recsync.daemon.runtime import CurveConfig, check_endpoint, ipc_path
from recsync.errors import ConfigError, ControlError, RecsyncError

log = logging.getLogger("recsyncd.control")

Handler = Callable[[protocol.Command], Any]
Inline = Callable[[protocol.Command], bool]

_REPLY, _EVENT, _STOP = b"r", b"e", b"s"
# the route of the request being handled (a command another node forwarded), or None
current_route: contextvars.ContextVar[protocol.Route | None] = contextvars.ContextVar(
    "current_route", default=None)
_TAGS = frozenset(str(c.__struct_config__.tag) for c in protocol.COMMANDS)
_CODES = frozenset(get_args(protocol.FaultCode))


def command_tag(cmd: protocol.Command) -> str:
    """The wire name of a command (``status.get``...)."""
    return str(type(cmd).__struct_config__.tag)


def _reword(exc: msgspec.ValidationError, tag: str | None) -> str:
    """msgspec's validation message as a sentence about the request's fields."""
    text = str(exc)
    where = ""
    if " - at `" in text:
        text, _, where = text.partition(" - at `")
        where = where.rstrip("`")
    field = where.removeprefix("$.cmd").removeprefix("$").lstrip(".")
    if "` in `" in where:  # a dict key: "key` in `$.cmd.record"
        key_of = where.split("` in `")[1].removeprefix("$.cmd").lstrip(".")
        field = f"{key_of or 'cmd'} keys"
    about = f"the `{tag}` command" if tag else "the request"
    if where.startswith("$.") and not where.startswith("$.cmd"):
        about = "the request"
    if text.startswith("Expected `") and "`, got `" in text:
        want, _, got = text.removeprefix("Expected `").partition("`, got `")
        what = f"field `{field}`" if field else "it"
        return f"Bad request: {what} of {about} must be {want}, not {got.rstrip('`')}."
    if text.startswith("Object missing required field `"):
        name = text.removeprefix("Object missing required field `").rstrip("`")
        return f"Bad request: {about} is missing the required field `{name}`."
    if text.startswith("Object contains unknown field `"):
        name = text.removeprefix("Object contains unknown field `").rstrip("`")
        return f"Bad request: {about} has no field `{name}`."
    suffix = f" (field `{field}`)" if field else ""
    return f"Bad request: {text[:1].lower()}{text[1:]} in {about}{suffix}."


def diagnose(body: bytes) -> protocol.Reply:
    """The fault reply for a request body that did not decode as a ``protocol.Request``."""
    try:
        raw = msgspec.msgpack.decode(body)
    except msgspec.DecodeError:
        return protocol.fault("BAD_REQUEST", "Bad request: the frame is not MessagePack.")
    v = raw.get("v") if isinstance(raw, dict) else None
    if isinstance(v, int) and not isinstance(v, bool) and v != protocol.API_VERSION:
        return protocol.fault(
            "VERSION",
            f"recsyncd speaks control API v{protocol.API_VERSION}, the request is v{v}; "
            "use a recsync client of the same version.",
        )
    cmd = raw.get("cmd") if isinstance(raw, dict) else None
    tag = cmd.get("cmd") if isinstance(cmd, dict) else None
    if isinstance(tag, str) and tag not in _TAGS:
        return protocol.fault(
            "UNKNOWN_COMMAND",
            f"Unknown command {tag!r}; `recsync schema` lists the commands.",
        )
    try:
        protocol.request_decoder.decode(body)
    except msgspec.ValidationError as exc:
        return protocol.fault("BAD_REQUEST", _reword(exc, tag if isinstance(tag, str) else None))
    except msgspec.DecodeError:  # pragma: no cover - decoded generically above
        pass
    return protocol.fault("BAD_REQUEST", "Bad request: it does not match the protocol.")


def _drain(sock: zmq.Socket[bytes], limit: int) -> Iterator[list[bytes]]:
    """Up to ``limit`` messages waiting on ``sock``, without blocking."""
    for _ in range(limit):
        try:
            yield sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return


class ControlServer:
    """Serves ``handler`` on ``command_endpoint`` and publishes events on ``event_endpoint``.

    ``handler(cmd)`` returns the result (Struct, list, dict, primitive) or raises
    ``ControlError(code, message)``; a ``ConfigError`` becomes INVALID with its sentence,
    another ``RecsyncError`` INTERNAL with its sentence, any other exception INTERNAL (the
    traceback is logged). ``inline(cmd)`` says which commands run on the bridge thread;
    the rest run on ``workers`` threads.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        inline: Inline,
        command_endpoint: str,
        event_endpoint: str,
        curve: CurveConfig | None = None,
        max_frame: int = protocol.MAX_FRAME,
        workers: int = 4,
        reply_hwm: int | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.handler = handler
        self.wall_clock = wall_clock  # event times: see _stamp
        self.inline = inline
        self.command_endpoint = command_endpoint
        self.event_endpoint = event_endpoint
        self.curve = curve
        self.max_frame = max_frame
        self.workers = workers
        # replies queued per peer before more are dropped (None: ZeroMQ's 1000); 0 (no
        # limit) for the internal socket, whose one peer, the control front, carries the
        # replies of every client and always reads them
        self.reply_hwm = reply_hwm
        self._lock = threading.Lock()  # guards _push, _seq, _state
        self._seq = 0
        self._state = "new"  # new -> running -> stopped
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._push: zmq.Socket[bytes] | None = None
        self._auth: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._files: list[Path] = []
        self.bound: list[str] = []  # the endpoints as bound (tcp://...:* resolved to a port)
        # [cluster]: (node, boot) stamped on every event published here
        self.origin: tuple[str | None, str | None] = (None, None)
        self.mirrors: list[ControlServer] = []  # servers publishing the same events
        self._ts = 0.0  # the time of the last event or tick published

    # ---- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Bind both sockets and start the bridge thread. Raises RecsyncError when it can't."""
        with self._lock:
            if self._state != "new":
                raise RecsyncError("This control server was started already.")
            self._state = "starting"
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        keys = None
        for endpoint in (self.command_endpoint, self.event_endpoint):
            check_endpoint(endpoint, curve=self.curve is not None)
        if self.curve is not None:
            keys = self.curve.keys()
        self._ctx = ctx = zmq.Context()
        if keys is not None:
            assert self.curve is not None
            from zmq.auth.thread import ThreadAuthenticator

            self._auth = ThreadAuthenticator(ctx, log=logging.getLogger("recsyncd.control.auth"))
            self._auth.start()
            self._auth.configure_curve(domain="*", location=str(self.curve.clients_dir))
        router = ctx.socket(zmq.ROUTER)
        pub = ctx.socket(zmq.PUB)
        pull = ctx.socket(zmq.PULL)
        for sock in (router, pub, pull):
            sock.linger = 0
        router.setsockopt(zmq.ROUTER_MANDATORY, 0)
        if self.reply_hwm is not None:
            router.setsockopt(zmq.SNDHWM, self.reply_hwm)
        # a hard cap far above max_frame: such peers are dropped, not read into memory
        router.setsockopt(zmq.MAXMSGSIZE, max(self.max_frame * 4, 1 << 16))
        pull.setsockopt(zmq.RCVHWM, 0)
        if keys is not None:
            for sock in (router, pub):
                sock.curve_publickey, sock.curve_secretkey = keys
                sock.curve_server = True
        inproc = f"inproc://recsync-control-{id(self)}"
        pull.bind(inproc)
        self._bind(router, self.command_endpoint)
        self._bind(pub, self.event_endpoint)
        push = ctx.socket(zmq.PUSH)
        push.linger = 0
        push.setsockopt(zmq.SNDHWM, 0)
        push.connect(inproc)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="control-worker")
        self._thread = threading.Thread(
            target=self._bridge, args=(router, pub, pull), name="control-bridge", daemon=True
        )
        with self._lock:
            self._push = push
            self._state = "running"
        self._thread.start()
        log.info(
            "control socket listening",
            extra={"endpoint": self.command_endpoint, "events": self.event_endpoint},
        )

    def _bind(self, sock: zmq.Socket[bytes], endpoint: str) -> None:
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            sock.close()
            raise RecsyncError(f"Cannot listen on {endpoint}: {exc.strerror}.") from exc
        self.bound.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
        path = ipc_path(endpoint)
        if path is not None:
            os.chmod(path, 0o600)
            self._files.append(path)

    def stop(self) -> None:
        """Stop serving: close the sockets and join the bridge. Safe to call again."""
        with self._lock:
            if self._state == "stopped":
                return
            was = self._state
            self._state = "stopped"
            if self._push is not None and was == "running":
                with contextlib.suppress(zmq.ZMQError):
                    self._push.send(_STOP)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
            if thread.is_alive():
                log.error("control bridge did not stop within 10 s (an inline command hangs?)")
        with self._lock:
            if self._push is not None:
                self._push.close()
                self._push = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._auth is not None:
            self._auth.stop()
        if self._ctx is not None and (thread is None or not thread.is_alive()):
            self._ctx.destroy(linger=0)  # closes what a failed start left open, then terms
        for path in self._files:
            with contextlib.suppress(OSError):
                path.unlink()
        self._files.clear()

    def __enter__(self) -> ControlServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- events --------------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The sequence number of the last event published (0: none yet)."""
        return self._seq

    def publish(self, kind: str, data: dict[str, Any]) -> int:
        """Publish one event from any thread; returns its sequence number (1, 2, 3...).

        Events published while the server is not running are numbered but go nowhere.
        """
        with self._lock:
            seq = self._seq + 1
            payload = protocol.encoder.encode(
                protocol.Event(seq, self._stamp(), kind, data, *self.origin))
            self._seq = seq  # only once encodable: a bad event must not leave a gap
            self._out(kind.encode(), payload)
        return seq

    def _out(self, kind: bytes, payload: bytes) -> None:
        """Out on the event socket and every mirror (the caller holds the lock, so that
        all of them get the events in the same order). A mirror has no mirrors: there is
        no lock order to break."""
        if self._push is not None and self._state == "running":
            self._push.send_multipart([_EVENT, kind, payload])
        for mirror in self.mirrors:
            mirror.relay(kind, payload)

    def _stamp(self) -> float:
        """The time of an event (the caller holds the lock): the wall clock, but never
        before the last one's, even when the clock steps back (recsync.eventmerge trusts
        a node's times to follow its sequence numbers)."""
        self._ts = max(self._ts, self.wall_clock())
        return self._ts

    def tick(self, data: dict[str, Any]) -> None:
        """[cluster]: publish a ``tick`` (see ``recsync.eventmerge``): this node's time now,
        after every event it published before. It repeats the last sequence number rather
        than take one, so clients that count gaps in the numbers see none."""
        with self._lock:
            payload = protocol.encoder.encode(
                protocol.Event(self._seq, self._stamp(), protocol.TICK_KIND, data, *self.origin))
            self._out(protocol.TICK_KIND.encode(), payload)

    def relay(self, kind: bytes, payload: bytes) -> None:
        """Publish an event as it is (another node's, or this node's on a second socket)."""
        with self._lock:
            self._out(kind, payload)

    # ---- the bridge thread ---------------------------------------------------------------

    def _bridge(
        self, router: zmq.Socket[bytes], pub: zmq.Socket[bytes], pull: zmq.Socket[bytes]
    ) -> None:
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(pull, zmq.POLLIN)
        try:
            while True:
                ready = dict(poller.poll())
                for frames in _drain(router, 64) if router in ready else ():
                    try:
                        self._on_request(router, frames)
                    except Exception:  # one odd frame must not take the bridge down
                        log.exception("control request not handled")
                for msg in _drain(pull, 256) if pull in ready else ():
                    if msg[0] == _STOP:
                        return
                    self._send(router if msg[0] == _REPLY else pub, msg[1:])
        except Exception:  # pragma: no cover - a bug here must be loud, not silent
            log.exception("control bridge crashed")
        finally:
            for sock in (router, pub, pull):
                sock.close()

    @staticmethod
    def _send(sock: zmq.Socket[bytes], frames: list[bytes]) -> None:
        try:
            sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # the client went away or does not read: drop it
            log.debug("reply dropped", extra={"error": exc.strerror})

    def _on_request(self, router: zmq.Socket[bytes], frames: list[bytes]) -> None:
        if len(frames) < 2:
            return  # nothing to answer to
        # DEALER clients send [body]; REQ clients [b"", body]; the control front sends
        # [client, b"", *client's frames]: the envelope is everything up to the last empty
        # frame before the body, and goes back in front of the reply
        cut = 1
        for i in range(len(frames) - 2, 0, -1):  # the body is one frame at least
            if frames[i] == b"":
                cut = i + 1
                break
        envelope, body = frames[:cut], frames[cut:]
        if len(body) != 1:
            reply = protocol.fault(
                "BAD_REQUEST", f"Bad request: expected one frame, got {len(body)}."
            )
            self._send(router, [*envelope, protocol.encoder.encode(reply)])
            return
        data = body[0]
        if len(data) > self.max_frame:
            reply = protocol.fault(
                "TOO_LARGE",
                f"The request is {len(data)} bytes; the limit is {self.max_frame} bytes.",
            )
        else:
            try:
                request = protocol.request_decoder.decode(data)
            except (msgspec.DecodeError, msgspec.ValidationError):
                reply = diagnose(data)
            else:
                if request.v != protocol.API_VERSION:
                    reply = diagnose(data)
                elif request.route is None and self._is_inline(request.cmd):
                    reply = self._run(request.cmd)
                else:  # a forwarded command may wait for its pipeline: on a worker
                    self._submit(envelope, request.cmd, request.route)
                    return
        self._send(router, [*envelope, self._encode(reply)])

    def _is_inline(self, cmd: protocol.Command) -> bool:
        try:
            return bool(self.inline(cmd))
        except Exception:
            log.exception("inline() failed; running the command on a worker")
            return False

    def _submit(self, envelope: list[bytes], cmd: protocol.Command,
                route: protocol.Route | None = None) -> None:
        assert self._pool is not None
        try:
            self._pool.submit(self._work, envelope, cmd, route)
        except RuntimeError:  # shutting down
            reply = protocol.fault("UNAVAILABLE", "recsyncd is shutting down.")
            self._reply(envelope, self._encode(reply))

    def _work(self, envelope: list[bytes], cmd: protocol.Command,
              route: protocol.Route | None = None) -> None:
        token = current_route.set(route)
        try:
            self._reply(envelope, self._encode(self._run(cmd)))
        finally:
            current_route.reset(token)

    def _reply(self, envelope: list[bytes], payload: bytes) -> None:
        with self._lock:
            if self._push is not None and self._state == "running":
                self._push.send_multipart([_REPLY, *envelope, payload])

    def _run(self, cmd: protocol.Command) -> protocol.Reply:
        tag = command_tag(cmd)
        try:
            return protocol.ok(self.handler(cmd))
        except ControlError as exc:
            if exc.code in _CODES:
                return protocol.fault(exc.code, str(exc))  # type: ignore[arg-type]
            log.warning("unknown fault code", extra={"cmd": tag, "code": exc.code})
            return protocol.fault("INTERNAL", f"{exc} [{exc.code}]")
        except ConfigError as exc:
            return protocol.fault("INVALID", str(exc))
        except RecsyncError as exc:
            log.warning("command failed", extra={"cmd": tag, "error": str(exc)})
            return protocol.fault("INTERNAL", str(exc))
        except Exception as exc:
            log.exception("command crashed", extra={"cmd": tag})
            return protocol.fault(
                "INTERNAL",
                f"recsyncd failed running `{tag}` ({type(exc).__name__}); its log has the details.",
            )

    @staticmethod
    def _encode(reply: protocol.Reply) -> bytes:
        try:
            return protocol.encoder.encode(reply)
        except (TypeError, ValueError, OverflowError) as exc:
            log.error("reply not encodable", extra={"error": str(exc)})
            return protocol.encoder.encode(
                protocol.fault("INTERNAL", "recsyncd produced a reply it cannot encode.")
            )
