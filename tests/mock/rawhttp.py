"""A raw HTTP/1.1 client over one socket, for tests about framing (what a library hides)."""

from __future__ import annotations

import json
import socket
from typing import Any


class RawResponse:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)


class RawConn:
    """One keep-alive connection: ``send`` raw bytes, ``response`` reads one answer."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        host, port = url.split("://", 1)[1].split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def response(self) -> RawResponse:
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError(f"closed before a whole response head: {self.buf!r}")
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        version, status, *_ = lines[0].split(" ", 2)
        assert version == "HTTP/1.1", lines[0]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            if not self._fill():
                raise ConnectionError("closed before the whole body")
        body, self.buf = self.buf[:length], self.buf[length:]
        return RawResponse(int(status), headers, body)

    def closed_by_server(self) -> bool:
        """True once the server has closed its side (recv sees the end) with nothing left."""
        if self.buf:
            return False
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True


def chunked(body: bytes, sizes: tuple[int, ...] = (7, 1, 5)) -> bytes:
    """``body`` in chunked transfer coding, cut in pieces of the given sizes (then the rest)."""
    out, pos = b"", 0
    for size in (*sizes, len(body)):
        piece = body[pos : pos + size]
        if piece:
            out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
            pos += len(piece)
    return out + b"0\r\n\r\n"
