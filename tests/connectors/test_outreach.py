"""The Outreach connector against the mock Outreach server (real HTTP over loopback)."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from recsync.connectors.outreach import OutreachConnector
from recsync.connectors.registry import get_connector_class
from recsync.errors import ConnectorConfigError, ConnectorError, RateLimited
from recsync.messages import ChangePage, WriteOp
from recsync.mock.outreach import OutreachMock


@pytest.fixture
def server() -> Iterator[OutreachMock]:
    m = OutreachMock(page_size=100)
    m.start()
    yield m
    m.stop()


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "state"
    monkeypatch.setenv("STATE_DIRECTORY", str(folder))
    for name in (
        "OUTREACH_CLIENT_ID",
        "OUTREACH_CLIENT_SECRET",
        "OUTREACH_REFRESH_TOKEN",
        "CREDENTIALS_DIRECTORY",
    ):
        monkeypatch.delenv(name, raising=False)
    return folder


def make(
    server: OutreachMock, tmp_path: Path, refresh: str | None = None, **extra: Any
) -> OutreachConnector:
    conf = {
        "base_url": server.url,
        "client_id": server.client_id,
        "client_secret": server.client_secret,
        "refresh_token": refresh or server.refresh_token,
        **extra,
    }
    conn = OutreachConnector(conf, tmp_path)
    conn.open()
    return conn


@pytest.fixture
def conn(server: OutreachMock, tmp_path: Path) -> Iterator[OutreachConnector]:
    c = make(server, tmp_path)
    yield c
    c.close()


def drain(
    conn: OutreachConnector, cursor: str | None, limit: int = 100
) -> tuple[list[ChangePage], str | None]:
    pages = []
    while True:
        page = conn.read_changes(cursor, limit)
        pages.append(page)
        cursor = page.cursor
        if not page.more:
            return pages, cursor


def upsert(key: str, **fields: Any) -> WriteOp:
    return WriteOp(key, "upsert", {"externalId": key, **fields})


def test_registered() -> None:
    assert get_connector_class("outreach") is OutreachConnector


def test_reads_in_pages_with_listing_then_polls(
    server: OutreachMock, conn: OutreachConnector
) -> None:
    for i in range(5):
        server.push({"record_id": i, "full_name": f"P {i}", "email_address": f"p{i}@x.io"})
    pages, cursor = drain(conn, None, limit=2)
    assert [len(p.changes) for p in pages] == [2, 2, 1]
    assert all(p.listing for p in pages)
    assert pages[0].listing_start and not pages[0].listing_done
    assert pages[-1].listing_done and not pages[-1].listing_start
    rec = pages[0].changes[0].fields
    assert rec is not None and set(rec) >= {
        "id",
        "externalId",
        "firstName",
        "lastName",
        "email",
        "title",
        "createdAt",
        "updatedAt",
    }
    assert pages[0].changes[0].key == "0" and rec["email"] == "p0@x.io"
    assert pages[0].changes[0].modified_at == conn.record_modified(rec)
    # nothing new: an empty, non-listing poll
    page = conn.read_changes(cursor, 100)
    assert page.changes == [] and not page.listing and not page.more
    server.push({"record_id": 2, "full_name": "P Changed"})
    page = conn.read_changes(page.cursor, 100)
    assert [(c.key, c.op) for c in page.changes] == [("2", "upsert")] and not page.listing
    assert page.changes[0].fields is not None
    assert page.changes[0].fields["lastName"] == "Changed"
    assert conn.read_changes(page.cursor, 100).changes == []


def test_reconcile_listing_when_due_or_forced(server: OutreachMock, tmp_path: Path) -> None:
    conn = make(server, tmp_path, reconcile_interval=3600)
    server.push({"record_id": 1, "full_name": "A B"})
    _, cursor = drain(conn, None)
    assert not conn.read_changes(cursor, 10).listing
    forced = conn.read_changes(OutreachConnector.relist_cursor(cursor), 10)
    assert forced.listing and forced.listing_start and forced.listing_done
    assert [c.key for c in forced.changes] == ["1"]
    state = json.loads(str(forced.cursor))
    state["last_reconcile"] -= 3601  # an hour ago: due again
    assert conn.read_changes(json.dumps(state), 10).listing
    conn.close()


def test_hand_made_prospect_gets_external_id(server: OutreachMock, conn: OutreachConnector) -> None:
    made = server.push({"firstName": "Hand", "lastName": "Made", "emails": ["h@x.io"]})
    pages, _ = drain(conn, None)
    keys = [c.key for p in pages for c in p.changes]
    assert keys[0] == f"or-{made['id']}"
    assert server.list_records()[0]["externalId"] == f"or-{made['id']}"


def test_writes_fetch_and_no_duplicate_on_retried_create(
    server: OutreachMock, tmp_path: Path, conn: OutreachConnector
) -> None:
    ops = [
        upsert("a1", firstName="Ann", lastName="A", email="ann@x.io", title="CEO"),
        upsert("a2", firstName="Bob", lastName="B", email=None),
    ]
    assert [r.error for r in conn.write(ops)] == [None, None]
    # a retried batch from a connector that never saw the first answer: no duplicates
    fresh = make(server, tmp_path, refresh=None)
    assert [r.error for r in fresh.write(ops)] == [None, None]
    fresh.close()
    recs = server.list_records()
    assert sorted(r["externalId"] for r in recs) == ["a1", "a2"]
    ann = next(r for r in recs if r["externalId"] == "a1")
    assert ann["email"] == "ann@x.io" and ann["title"] == "CEO"
    got = conn.fetch(["a1", "a2", "missing"])
    assert set(got) == {"a1", "a2"} and got["a2"]["email"] is None
    conn.write([upsert("a1", firstName="Ann", lastName="Z", email="z@x.io")])
    assert conn.fetch(["a1"])["a1"]["lastName"] == "Z"


def test_per_record_rejection(server: OutreachMock, conn: OutreachConnector) -> None:
    results = conn.write(
        [
            upsert("ok1", lastName="Fine"),
            upsert("bad", lastName="x" * 300),
            upsert("ok2", lastName="Also"),
        ]
    )
    assert results[0].error is None and results[2].error is None
    bad = results[1]
    assert bad.key == "bad" and not bad.retryable and bad.error is not None
    assert "/data/attributes/lastName" in bad.error and "too long" in bad.error
    assert sorted(r["externalId"] for r in server.list_records()) == ["ok1", "ok2"]


def test_deletes_including_already_deleted(server: OutreachMock, conn: OutreachConnector) -> None:
    conn.write([upsert("d1", lastName="One"), upsert("d2", lastName="Two")])
    server_id = next(r["id"] for r in server.list_records() if r["externalId"] == "d2")
    server.delete(server_id)  # gone on Outreach already, still in the connector's id map
    results = conn.write(
        [
            WriteOp("d1", "delete", None),
            WriteOp("d2", "delete", None),
            WriteOp("never", "delete", None),
        ]
    )
    assert [r.error for r in results] == [None, None, None]
    assert server.list_records() == []
    # upsert of a record deleted on Outreach meanwhile creates it again
    conn.write([upsert("d3", lastName="Three")])
    server.delete(server.list_records()[0]["id"])
    assert conn.write([upsert("d3", lastName="Back")])[0].error is None
    assert [r["lastName"] for r in server.list_records()] == ["Back"]


def test_expired_token_renewed_and_rotation_persisted(
    server: OutreachMock, tmp_path: Path, state_dir: Path
) -> None:
    initial = server.refresh_token
    conn = make(server, tmp_path, refresh=initial)
    files = list(state_dir.glob("outreach-*.json"))
    assert len(files) == 1 and stat.S_IMODE(os.stat(files[0]).st_mode) == 0o600
    rotated = json.loads(files[0].read_text())["refresh_token"]
    assert rotated == server.refresh_token != initial
    server.expire_tokens()
    conn.write([upsert("t1", lastName="T")])  # 401 -> renew -> retry
    assert server.refresh_token != rotated
    assert json.loads(files[0].read_text())["refresh_token"] == server.refresh_token
    conn.close()
    # a new instance configured with the stale initial token uses the stored one
    server.expire_tokens()
    again = make(server, tmp_path, refresh=initial)
    assert [c.key for p in drain(again, None)[0] for c in p.changes] == ["t1"]
    again.close()


def test_refused_refresh_token_is_a_config_error(server: OutreachMock, tmp_path: Path) -> None:
    conn = OutreachConnector(
        {
            "base_url": server.url,
            "client_id": server.client_id,
            "client_secret": "wrong-secret-value",
            "refresh_token": "stale-refresh-value",
        },
        tmp_path,
    )
    with pytest.raises(ConnectorConfigError) as err:
        conn.open()
    assert "wrong-secret-value" not in str(err.value)
    assert "stale-refresh-value" not in str(err.value)


def test_rate_limited_and_server_errors(server: OutreachMock, conn: OutreachConnector) -> None:
    server.set_faults(status_429_retry_after=12)
    with pytest.raises(RateLimited) as limited:
        conn.read_changes(None, 10)
    assert limited.value.retry_after == 12
    with pytest.raises(RateLimited):
        conn.write([upsert("r1", lastName="R")])
    server.set_faults(status_429_retry_after=None, error_rate=1.0, error_status=503)
    with pytest.raises(ConnectorError) as failed:
        conn.write([upsert("r1", lastName="R")])
    assert "503" in str(failed.value) and not isinstance(failed.value, RateLimited)
    server.set_faults(error_rate=0.0, drop_rate=1.0)
    with pytest.raises(ConnectorError):
        conn.fetch(["r1"])
    server.set_faults(drop_rate=0.0)
    assert conn.write([upsert("r1", lastName="R")])[0].error is None


def test_rate_limit_exhausted_uses_reset_header(tmp_path: Path) -> None:
    m = OutreachMock(rate_limit=4)
    m.start()
    try:
        conn = make(m, tmp_path, throttle_below=3)
        assert conn.remote_budget() is None  # 3 left: not below the threshold
        conn.read_changes(None, 10)
        budget = conn.remote_budget()
        assert budget is not None and budget[0] == 2 and budget[1] is not None
        conn.read_changes(None, 10)
        conn.read_changes(None, 10)
        with pytest.raises(RateLimited) as limited:
            conn.read_changes(None, 10)
        assert limited.value.retry_after is not None and limited.value.retry_after > 0
        conn.close()
    finally:
        m.stop()


def test_secrets_hidden(
    server: OutreachMock, tmp_path: Path, conn: OutreachConnector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    server.expire_tokens()
    conn.read_changes(None, 10)
    server.set_faults(error_rate=1.0)
    with pytest.raises(ConnectorError) as err:
        conn.read_changes(None, 10)
    text = " ".join([repr(conn), repr(conn.config), str(err.value), caplog.text])
    for secret in (server.client_secret, server.refresh_token):
        assert secret not in text


def test_credentials_from_env_and_credentials_directory(
    server: OutreachMock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "OR_SECRET").write_text(server.client_secret + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    monkeypatch.setenv("OUTREACH_REFRESH_TOKEN", server.refresh_token)
    conn = OutreachConnector(
        {"base_url": server.url, "client_id": server.client_id, "client_secret_env": "OR_SECRET"},
        tmp_path,
    )
    conn.open()
    assert conn.system_id == "outreach:" + server.url + server.client_id
    conn.close()
    missing = OutreachConnector({"base_url": server.url}, tmp_path)
    with pytest.raises(ConnectorConfigError, match="credentials missing"):
        missing.open()


def test_mock_mode_uses_embedded_server(tmp_path: Path) -> None:
    from recsync import mock

    try:
        conn = OutreachConnector({"mock": True}, tmp_path)
        conn.open()
        conn.write([upsert("m1", lastName="Mock")])
        server: Any = mock.embedded("outreach")
        assert [r["externalId"] for r in server.list_records()] == ["m1"]
        server.expire_tokens()
        other = OutreachConnector({"mock": True}, tmp_path)
        other.open()  # shares the account: renews after the first one rotated the token
        assert set(other.fetch(["m1"])) == {"m1"}
        assert conn.fetch(["m1"])["m1"]["lastName"] == "Mock"
        conn.close()
        other.close()
    finally:
        mock.stop_all()


def test_bad_key_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConnectorConfigError, match="externalId"):
        OutreachConnector({"key": "email", "base_url": "http://x"}, tmp_path)


def test_stale_page_cursor_starts_the_scan_again(
    server: OutreachMock, conn: OutreachConnector
) -> None:
    for i in range(3):
        server.push({"record_id": i, "full_name": f"P {i}"})
    first = conn.read_changes(None, 2)
    assert first.more and first.listing_start
    state = json.loads(str(first.cursor))
    state["next"] = "http://127.0.0.1:1/api/v2/prospects?page%5Bafter%5D=gone"
    again = conn.read_changes(json.dumps(state), 2)
    assert again.listing_start and [c.key for c in again.changes] == ["0", "1"]
    state = json.loads(str(again.cursor))
    state["next"] = server.url + "/api/v2/prospects?page%5Bafter%5D=bm90LWpzb24"
    resumed = conn.read_changes(json.dumps(state), 2)
    assert resumed.listing_start


def test_every_request_is_taken_from_the_budget(server: OutreachMock, tmp_path: Path) -> None:
    """The token refresh, the check when the side opens, reads, lookups and writes each
    take one request from the budget first: the budget's count is the mock's."""
    spent: list[bool] = []
    conf = {"base_url": server.url, "client_id": server.client_id,
            "client_secret": server.client_secret, "refresh_token": server.refresh_token}
    conn = OutreachConnector(conf, tmp_path)
    conn.spend = spent.append  # what the connector actor sets: take one request (read?)
    before = server.request_count
    conn.open()
    try:
        assert len(spent) == server.request_count - before >= 2  # token and the check
        ops = [WriteOp(f"k{i}", "upsert", {"firstName": f"F{i}", "emails": [f"f{i}@x.org"]})
               for i in range(3)]
        assert all(r.error is None for r in conn.write(ops))
        conn.fetch(["k0", "k1"])
        drain(conn, None)
        assert len(spent) == server.request_count - before
        assert False in spent and True in spent  # writes and reads
    finally:
        conn.close()
