"""A TCP forwarder on loopback that a test can pause: a network partition on demand.

``TcpProxy(host, port)`` listens on 127.0.0.1 (``.port``) and forwards each connection to
``host:port``. ``pause()`` holds every byte in both directions and every new connection
(the peers see a silent network, as with packets dropped, not a reset); ``resume()`` lets
what was held through, as a healed network would.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.pgfixture import PG_DSN


class TcpProxy:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self._open = threading.Event()
        self._open.set()
        self._closed = threading.Event()
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.server.getsockname()[1]
        threading.Thread(target=self._accept, name="tcpproxy", daemon=True).start()

    @property
    def paused(self) -> bool:
        return not self._open.is_set()

    def pause(self) -> None:
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    def dsn(self, dsn: str) -> str:
        """``dsn`` (a postgresql:// URL on 127.0.0.1:5432) through this proxy."""
        return dsn.replace(f"{self.target[0]}:{self.target[1]}", f"127.0.0.1:{self.port}")

    def close(self) -> None:
        self._closed.set()
        self._open.set()
        with contextlib.suppress(OSError):
            self.server.close()
        with self._lock:
            for s in self._socks:
                with contextlib.suppress(OSError):
                    s.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        self._open.wait()  # a new connection during a partition hangs, unanswered
        try:
            upstream = socket.create_connection(self.target)
        except OSError:
            client.close()
            return
        with self._lock:
            self._socks += [client, upstream]
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self._open.wait()  # paused: held here, sent once resumed
                if self._closed.is_set():
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def pg_proxy() -> Iterator[TcpProxy]:
    """A TCP forwarder to the test PostgreSQL server (``.dsn(PG_DSN)``) the test can pause."""
    host, port = PG_DSN.split("@", 1)[1].split("/", 1)[0].split(":")
    proxy = TcpProxy(host, int(port))
    yield proxy
    proxy.close()
