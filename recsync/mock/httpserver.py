"""The HTTP/1.1 server under both mock CRMs: httptools parses, one thread per connection.

httptools (MagicStack's binding of llhttp, Node.js's HTTP parser; uvicorn's parser) frames
every request the way RFC 9112 says: ``Content-Length`` or ``Transfer-Encoding: chunked``
bodies (with trailers), keep-alive and pipelining, HTTP/1.0 clients, and it refuses what
could smuggle a request (both framings at once, bad chunk sizes, bad header syntax).
``Expect: 100-continue`` gets its ``100 Continue`` once the headers are read; a gzip or
deflate ``Content-Encoding`` is inflated (another one gets 415). A request it
cannot frame gets ``400`` (``413`` when its body is over ``max_body``, ``431`` when its
head is over ``max_header``) and the connection is closed, so a client is never left out
of step.

The mock itself is a plain function ``handler(Request) -> Response | None``; ``None``
drops the connection without an answer (the ``drop_rate`` fault). Every response goes out
in one ``sendall`` with TCP_NODELAY (no Nagle + delayed-ACK stall on keep-alive).
"""

from __future__ import annotations

import collections
import contextlib
import email.utils
import socket
import socketserver
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import httptools

Response = tuple[int, dict[str, str], bytes]
ErrorBody = Callable[[int, str], Response]
MAX_BODY = 64 * 1024 * 1024
_NO_BODY = (204, 304)
_REASONS = {
    100: "Continue",
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    300: "Multiple Choices",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


class Headers:
    """A request's headers, looked up case-insensitively (repeated ones joined by ``, ``)."""

    __slots__ = ("_map",)

    def __init__(self, pairs: list[tuple[bytes, bytes]]) -> None:
        self._map: dict[str, str] = {}
        for name, value in pairs:  # h11 gives lower-case names
            key = name.decode("latin-1")
            text = value.decode("latin-1")
            old = self._map.get(key)
            self._map[key] = text if old is None else f"{old}, {text}"

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._map.get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return self._map[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._map

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def items(self) -> list[tuple[str, str]]:
        return list(self._map.items())


class Request:
    """One complete request: ``target`` is the raw request target (path and query)."""

    __slots__ = ("body", "headers", "method", "target")

    def __init__(self, method: str, target: str, headers: Headers, body: bytes) -> None:
        self.method, self.target, self.headers, self.body = method, target, headers, body


Handler = Callable[[Request], Response | None]


def plain_error(status: int, message: str) -> Response:
    return status, {"Content-Type": "text/plain; charset=utf-8"}, message.encode()


_DATE: list[Any] = [0, ""]


def _date() -> str:
    """The ``Date`` header line (made once a second)."""
    now = int(time.time())
    if _DATE[0] != now:
        _DATE[1] = "Date: " + email.utils.formatdate(now, usegmt=True)
        _DATE[0] = now
    return str(_DATE[1])


class _Refuse(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class _Framer:
    """httptools callbacks: collects complete requests (pipelined ones too) in ``done``."""

    def __init__(self, sock: socket.socket, max_body: int, max_header: int) -> None:
        self.sock, self.max_body, self.max_header = sock, max_body, max_header
        self.parser = httptools.HttpRequestParser(self)
        self.done: collections.deque[tuple[Request, bool]] = collections.deque()
        self.refused: _Refuse | None = None
        self.url = b""
        self.head = 0
        self.pairs: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.size = 0

    def on_message_begin(self) -> None:
        self.url, self.head, self.pairs, self.body, self.size = b"", 0, [], [], 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.pairs.append((name.lower(), value))
        self.head += len(name) + len(value) + 4
        if self.head > self.max_header and self.refused is None:
            self.refused = _Refuse(431, f"The request head is over {self.max_header} bytes.")

    def on_headers_complete(self) -> None:
        if self.refused is not None:
            return
        length, expect = None, False
        for name, value in self.pairs:
            if name == b"content-length" and value.strip().isdigit():
                length = int(value)
            elif name == b"expect" and value.strip().lower() == b"100-continue":
                expect = True
        if length is not None and length > self.max_body:
            self.refused = _Refuse(413, f"The request body is over {self.max_body} bytes.")
        elif expect and length != 0 and self.parser.get_http_version() == "1.1":
            self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")  # the client waits for it

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.max_body:
            if self.refused is None:
                self.refused = _Refuse(413, f"The request body is over {self.max_body} bytes.")
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.refused is not None:
            return
        headers = Headers(self.pairs)
        body = b"".join(self.body)
        coding = (headers.get("Content-Encoding") or "identity").strip().lower()
        if coding in ("gzip", "x-gzip", "deflate"):  # compressed request bodies, as
            try:  # Salesforce accepts them (Bulk CSV uploads, large JSON)
                body = _inflate(body, coding, self.max_body)
            except (zlib.error, EOFError, _TooBig):
                self.refused = _Refuse(400, f"The {coding} request body cannot be inflated "
                                            f"(or is over {self.max_body} bytes).")
                return
        elif coding != "identity":
            self.refused = _Refuse(415, f"Content-Encoding {coding} is not supported.")
            return
        req = Request(self.parser.get_method().decode("ascii"), self.url.decode("latin-1"),
                      headers, body)
        self.done.append((req, self.parser.should_keep_alive()))


class _TooBig(Exception):
    pass


def _inflate(body: bytes, coding: str, limit: int) -> bytes:
    wbits = 31 if "gzip" in coding else 15
    d = zlib.decompressobj(wbits)
    out = d.decompress(body, limit + 1)
    if len(out) > limit or d.unconsumed_tail:
        raise _TooBig
    if not d.eof:
        raise EOFError("truncated")
    return out


class _Conn(socketserver.BaseRequestHandler):
    """Serves one connection until either side closes it."""

    server: _TCPServer
    request: socket.socket

    def setup(self) -> None:
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.request.settimeout(self.server.idle_timeout)  # an idle keep-alive ends
        self.server.track(self.request, True)

    def finish(self) -> None:
        self.server.track(self.request, False)

    def handle(self) -> None:
        sock, srv = self.request, self.server
        framer = _Framer(sock, srv.max_body, srv.max_header)
        feed, done = framer.parser.feed_data, framer.done
        upgraded = False
        try:
            while True:
                while not done:
                    if upgraded:
                        return
                    data = sock.recv(65536)
                    if not data:
                        return  # closed by the client (a half-sent request has no one to answer)
                    try:
                        feed(data)
                    except httptools.HttpParserUpgrade:
                        upgraded = True  # not supported: answer the request, then close
                    except httptools.HttpParserError as exc:
                        if framer.refused is None:
                            reason = str(exc) or type(exc).__name__
                            framer.refused = _Refuse(400, f"Malformed HTTP request: {reason}.")
                    if framer.refused is not None:
                        self._refuse(framer.refused)
                        return
                req, keep_alive = done.popleft()
                keep_alive = keep_alive and not upgraded
                try:
                    resp = srv.handler(req)
                except Exception as exc:  # a bug in the mock: answer 500 rather than hang
                    resp = srv.error_body(500, f"Internal error of the mock: {exc!r}")
                if resp is None:  # the drop_rate fault: no answer at all
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                    return
                sock.sendall(_encode(req.method, resp, keep_alive))
                if not keep_alive or resp[1].get("Connection", "").lower() == "close":
                    return
        except OSError:
            return

    def _refuse(self, refusal: _Refuse) -> None:
        """Answer a request that cannot be framed, then close the connection."""
        resp = self.server.error_body(refusal.status, refusal.message)
        with contextlib.suppress(OSError):
            self.request.sendall(_encode("GET", resp, False))
            self.request.shutdown(socket.SHUT_RDWR)


def _encode(method: str, resp: Response, keep_alive: bool) -> bytes:
    """The whole response: status line, headers (Content-Length and Date added), body."""
    status, headers, payload = resp
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
    lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() != "content-length"]
    if status not in _NO_BODY:
        lines.append(f"Content-Length: {len(payload)}")
    else:
        payload = b""
    lines.append(_date())
    if not keep_alive and "Connection" not in headers:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if method == "HEAD" else head + payload


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(
        self,
        addr: tuple[str, int],
        handler: Handler,
        error_body: ErrorBody,
        max_body: int,
        max_header: int,
        idle_timeout: float,
    ) -> None:
        self.handler = handler
        self.idle_timeout = idle_timeout
        self.error_body = error_body
        self.max_body = max_body
        self.max_header = max_header
        self.conns: set[socket.socket] = set()
        self.conns_lock = threading.Lock()
        super().__init__(addr, _Conn)

    def track(self, sock: socket.socket, add: bool) -> None:
        with self.conns_lock:
            if add:
                self.conns.add(sock)
            else:
                self.conns.discard(sock)


class HttpServer:
    """``handler`` served over HTTP/1.1 on ``host:port`` (0: a free port) in the background."""

    def __init__(
        self,
        host: str,
        port: int,
        handler: Handler,
        *,
        name: str = "mock-http",
        error_body: ErrorBody = plain_error,
        max_body: int = MAX_BODY,
        max_header: int = 64 * 1024,
        idle_timeout: float = 300.0,
    ) -> None:
        self.host, self.port = host, port
        self.name = name
        self._args = (handler, error_body, max_body, max_header, idle_timeout)
        self._server: _TCPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._server is not None:
            return
        server = _TCPServer((self.host, self.port), *self._args)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"{self.name}-{self.port}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, and close the open connections (their threads end)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with server.conns_lock:
            conns = list(server.conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
