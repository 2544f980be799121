"""Connector.list_records: a full listing for `recsync verify`, in pages, that changes
nothing (no cursor, change log or listing state of the connector)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from recsync.connectors.base import Connector, ConnectorConfig
from recsync.connectors.files import FileConfig, FileConnector
from recsync.connectors.outreach import OutreachConnector
from recsync.connectors.salesforce import SalesforceConnector
from recsync.connectors.sqlite import SqliteConfig, SqliteConnector
from recsync.errors import ConnectorConfigError, ConnectorError
from recsync.messages import ChangePage, WriteOp
from recsync.mock.outreach import OutreachMock
from recsync.mock.salesforce import SalesforceMock


def listing(conn: Connector, limit: int) -> tuple[dict[str, Any], int]:
    """Every record listed (key -> fields) and the number of pages."""
    out: dict[str, Any] = {}
    position: str | None = None
    pages = 0
    while True:
        changes, position = conn.list_records(position, limit)
        pages += 1
        assert len(changes) <= limit
        out.update({c.key: c.fields for c in changes})
        if position is None:
            return out, pages


def test_sqlite_lists_the_table_in_pages_and_leaves_the_log_alone(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "db.sqlite") as db:
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        db.executemany("INSERT INTO users VALUES (?, ?)", [(i, f"U{i}") for i in range(1, 8)])
    db.close()
    conn = SqliteConnector(SqliteConfig(path="db.sqlite", table="users", key="id"), tmp_path)
    conn.open()
    try:
        cursor_page = conn.read_changes(None, 100)
        found, pages = listing(conn, 3)
        assert pages == 3 and found["7"] == {"id": 7, "name": "U7"} and len(found) == 7
        assert conn.count_records() == 7
        # the pipeline's own reading goes on where it was: nothing was consumed
        assert conn.read_changes(cursor_page.cursor, 100).changes == []
        conn.write([WriteOp("8", "upsert", {"id": 8, "name": "U8"})])
        assert len(listing(conn, 100)[0]) == 8
    finally:
        conn.close()


def test_file_lists_from_its_own_handle_without_disturbing_a_poll(tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_text("id,name\n" + "".join(f"{i},N{i}\n" for i in range(1, 8)))
    conn = FileConnector(FileConfig(path="p.csv", key="id"), tmp_path)
    conn.open()
    try:
        poll = conn.read_changes(None, 3)  # a poll's listing, mid-way
        found, pages = listing(conn, 3)
        assert pages == 3 and found["5"] == {"id": "5", "name": "N5"} and len(found) == 7
        rest = conn.read_changes(poll.cursor, 100)  # the poll's listing goes on
        assert [c.key for c in rest.changes] == ["4", "5", "6", "7"]
        _, position = conn.list_records(None, 2)
        conn.list_records(None, 2)  # a new listing: the old position is no longer good
        with pytest.raises(ConnectorError, match="interrupted"):
            conn.list_records(position, 2)
    finally:
        conn.close()
    missing = FileConnector(FileConfig(path="none.csv", key="id"), tmp_path)
    missing.open()
    assert missing.list_records(None, 10) == ([], None)


@pytest.fixture
def sf() -> Iterator[SalesforceMock]:
    mock = SalesforceMock(page_size=5)
    mock.start()
    yield mock
    mock.stop()


def test_salesforce_lists_live_keyed_records_in_id_pages(tmp_path: Path,
                                                         sf: SalesforceMock) -> None:
    conn = SalesforceConnector({"key": "Record_Id__c", "mock": True, "instance_url": sf.url},
                               tmp_path)
    conn.open()
    try:
        conn.write([WriteOp(str(i), "upsert", {"LastName": f"N{i}"}) for i in range(1, 13)])
        conn.write([WriteOp("3", "delete", None)])
        sf.push({"LastName": "Typed in by a user"})  # no key yet: the next poll gives one
        found, pages = listing(conn, 7)  # the mock's query pages hold 5: queryMore too
        assert sorted(found, key=int) == [str(i) for i in range(1, 13) if i != 3]
        assert found["12"]["LastName"] == "N12" and pages == 2
    finally:
        conn.close()


@pytest.fixture
def outreach(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[OutreachMock]:
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    mock = OutreachMock(page_size=100)
    mock.start()
    yield mock
    mock.stop()


def test_outreach_lists_prospects_with_an_external_id_by_id(
        tmp_path: Path, outreach: OutreachMock) -> None:
    conn = OutreachConnector({"base_url": outreach.url, "client_id": outreach.client_id,
                              "client_secret": outreach.client_secret,
                              "refresh_token": outreach.refresh_token}, tmp_path)
    conn.open()
    try:
        conn.write([WriteOp(str(i), "upsert", {"lastName": f"N{i}"}) for i in range(1, 8)])
        outreach.push({"lastName": "Typed in by a user"})  # no externalId yet
        found, pages = listing(conn, 3)
        assert sorted(found, key=int) == [str(i) for i in range(1, 8)] and pages == 3
        assert found["7"]["lastName"] == "N7"
    finally:
        conn.close()


class Plugin(Connector):
    """A third-party connector (entry point) that does not implement listing."""

    name = "plugin"
    Config = ConnectorConfig

    @property
    def system_id(self) -> str:
        return "plugin"

    def open(self) -> None:
        pass

    def read_changes(self, cursor: str | None, limit: int) -> ChangePage:
        return ChangePage([], cursor)

    def fetch(self, keys: list[str]) -> dict[str, Any]:
        return {}

    def write(self, ops: list[WriteOp]) -> list[Any]:
        return []


def test_a_connector_that_cannot_list_says_so(tmp_path: Path) -> None:
    conn = Plugin({"key": "id"}, tmp_path)
    with pytest.raises(ConnectorConfigError, match="plugin connector cannot list its records"):
        conn.list_records(None, 10)
    assert conn.count_records() is None
