"""With ``[cluster]`` the Outreach connector keeps its rotated refresh token in the
cluster's PostgreSQL: a connector on another node (another state folder) keeps working
with it. Real HTTP to the mock Outreach over loopback, a PostgreSQL schema of its own."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from recsync.connectors import sharedstate
from recsync.connectors.outreach import OutreachConnector
from recsync.errors import ConnectorConfigError
from recsync.messages import WriteOp
from recsync.mock.outreach import OutreachMock
from tests.pgfixture import PgSchema, pg  # noqa: F401 - the fixture


@pytest.fixture
def server() -> Iterator[OutreachMock]:
    m = OutreachMock(page_size=100)
    m.start()
    yield m
    m.stop()


@pytest.fixture
def shared(pg: PgSchema) -> Iterator[sharedstate.SharedConnectorState]:  # noqa: F811
    state = sharedstate.SharedConnectorState(pg.dsn, pg.schema)
    sharedstate.install(state)
    yield state
    sharedstate.install(None)


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OUTREACH_CLIENT_ID", "OUTREACH_CLIENT_SECRET", "OUTREACH_REFRESH_TOKEN",
                 "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)


def node(server: OutreachMock, folder: Path, refresh: str,
         monkeypatch: pytest.MonkeyPatch) -> OutreachConnector:
    """A connector as a node with its own state folder opens it."""
    monkeypatch.setenv("STATE_DIRECTORY", str(folder))
    conn = OutreachConnector({"base_url": server.url, "client_id": server.client_id,
                              "client_secret": server.client_secret,
                              "refresh_token": refresh}, folder)
    conn.open()
    return conn


def upsert(key: str, **fields: Any) -> WriteOp:
    return WriteOp(key, "upsert", {"externalId": key, **fields})


def test_a_rotated_token_follows_the_pipeline_to_another_node(
        server: OutreachMock, shared: sharedstate.SharedConnectorState, pg: PgSchema,  # noqa: F811
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    initial = server.refresh_token
    one = node(server, tmp_path / "n1", initial, monkeypatch)
    one.write([upsert("k1", lastName="One")])
    one.close()
    rotated = server.refresh_token
    assert rotated != initial  # the grant rotated it: the configured one is dead now
    assert not list((tmp_path / "n1").glob("outreach-*.json"))  # no file: in PostgreSQL
    (value,) = [r[0] for r in pg.run("SELECT value FROM connector_state")]
    assert value["refresh_token"] == rotated
    # the pipeline moves: node 2 (its own folder, the stale configured token) goes on
    server.expire_tokens()
    two = node(server, tmp_path / "n2", initial, monkeypatch)
    assert two.fetch(["k1"])["k1"]["lastName"] == "One"
    two.close()
    # without the shared state, the same move fails: the configured token was rotated
    sharedstate.install(None)
    server.expire_tokens()
    with pytest.raises(ConnectorConfigError, match="refused"):
        node(server, tmp_path / "n3", initial, monkeypatch).close()


def test_a_single_nodes_token_file_is_taken_over_once(
        server: OutreachMock, pg: PgSchema, tmp_path: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    initial = server.refresh_token
    alone = node(server, tmp_path / "single", initial, monkeypatch)  # a single node: a file
    alone.close()
    (file,) = (tmp_path / "single").glob("outreach-*.json")
    assert json.loads(file.read_text())["refresh_token"] == server.refresh_token
    # the same node joins a [cluster]: the file's token moves to the shared state
    state = sharedstate.SharedConnectorState(pg.dsn, pg.schema)
    sharedstate.install(state)
    try:
        server.expire_tokens()
        again = node(server, tmp_path / "single", initial, monkeypatch)
        again.close()
        (value,) = [r[0] for r in pg.run("SELECT value FROM connector_state")]
        assert value["refresh_token"] == server.refresh_token
    finally:
        sharedstate.install(None)
