"""Mock CRM servers (a product feature: `recsync mock serve`, `mock = true` sides).

Each mock is a real HTTP server on loopback that speaks a faithful subset of its CRM's API
(see ../shared/reference/crm-apis.md), so the real clients (simple-salesforce, requests)
run against it. ``embedded(kind)`` starts one per kind per process, on a free port, the
first time a pipeline side with ``mock = true`` needs it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Protocol

from recsync.errors import ConfigError

KINDS = ("salesforce", "outreach")


class MockServer(Protocol):
    """What every mock offers (implemented by SalesforceMock and OutreachMock)."""

    @property
    def url(self) -> str: ...  # base URL, e.g. http://127.0.0.1:PORT

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def push(self, record: dict[str, Any]) -> dict[str, Any]: ...  # as if a CRM user did it
    def list_records(self) -> list[dict[str, Any]]: ...
    def set_faults(self, **faults: Any) -> dict[str, Any]: ...


_lock = threading.Lock()
_embedded: dict[str, MockServer] = {}


def create(
    kind: str, *, host: str = "127.0.0.1", port: int = 0, data: Path | None = None, **options: Any
) -> MockServer:
    """A new (not started) mock server of ``kind``."""
    if kind == "salesforce":
        from recsync.mock.salesforce import SalesforceMock

        return SalesforceMock(host=host, port=port, data=data, **options)
    if kind == "outreach":
        from recsync.mock.outreach import OutreachMock

        return OutreachMock(host=host, port=port, data=data, **options)
    raise ConfigError(f"Unknown mock {kind!r}; there are: {', '.join(KINDS)}.")


def embedded(kind: str, data: Path | None = None) -> MockServer:
    """The process's embedded mock of ``kind``, started on first use."""
    with _lock:
        server = _embedded.get(kind)
        if server is None:
            server = create(kind, data=data)
            server.start()
            _embedded[kind] = server
        return server


def running() -> dict[str, MockServer]:
    """The embedded mocks started so far, by kind."""
    with _lock:
        return dict(_embedded)


def stop_all() -> None:
    with _lock:
        servers = list(_embedded.values())
        _embedded.clear()
    for server in servers:
        server.stop()
