"""SalesforceConnector against a SalesforceMock on loopback (the real simple-salesforce)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from recsync.connectors.registry import get_connector_class
from recsync.connectors.salesforce import SalesforceConfig, SalesforceConnector
from recsync.errors import ConnectorConfigError, ConnectorError, RateLimited
from recsync.messages import WriteOp
from recsync.mock.salesforce import SalesforceMock

KEY = "Record_Id__c"


@pytest.fixture
def mock() -> Iterator[SalesforceMock]:
    m = SalesforceMock(page_size=5)
    m.start()
    yield m
    m.stop()


def make(mock: SalesforceMock, tmp_path: Path, **cfg: Any) -> SalesforceConnector:
    conf = {"key": KEY, "mock": True, "instance_url": mock.url, **cfg}
    conn = SalesforceConnector(conf, tmp_path)
    conn.open()
    return conn


@pytest.fixture
def conn(mock: SalesforceMock, tmp_path: Path) -> Iterator[SalesforceConnector]:
    c = make(mock, tmp_path)
    yield c
    c.close()


def up(key: str, **fields: Any) -> WriteOp:
    return WriteOp(key, "upsert", {"LastName": f"Name{key}", **fields})


def read_all(
    conn: SalesforceConnector, cursor: str | None, limit: int = 3
) -> tuple[list[Any], str | None]:
    out = []
    while True:
        page = conn.read_changes(cursor, limit)
        assert len(page.changes) <= limit
        out.extend(page.changes)
        cursor = page.cursor
        if not page.more:
            return out, cursor


def test_registered() -> None:
    assert get_connector_class("salesforce") is SalesforceConnector


def test_write_then_read_in_pages(conn: SalesforceConnector, mock: SalesforceMock) -> None:
    res = conn.write([up(str(i), Email=f"u{i}@x.com") for i in range(12)])
    assert [r.error for r in res] == [None] * 12
    changes, cursor = read_all(conn, None)
    assert sorted(c.key for c in changes) == sorted(str(i) for i in range(12))
    assert all(
        c.op == "upsert" and c.fields and c.fields["LastName"] == f"Name{c.key}" for c in changes
    )
    assert all(c.modified_at > 1e9 for c in changes)
    # boundary de-dup: nothing new -> nothing read again
    again, cursor2 = read_all(conn, cursor)
    assert again == []
    mock.push(
        {
            "record_id": 303,
            "full_name": "Mock303 User",
            "email_address": "m@sf.com",
            "status": "active",
        }
    )
    new, _ = read_all(conn, cursor2)
    assert [(c.key, c.fields["LastName"], c.fields["Status__c"]) for c in new] == [
        ("303", "Mock303 User", "active")
    ]
    assert conn.record_modified(new[0].fields) == new[0].modified_at


def test_fetch(conn: SalesforceConnector) -> None:
    conn.write([up("a", Email="a@x.com"), up("b")])
    got = conn.fetch(["a", "b", "zzz"])
    assert set(got) == {"a", "b"}
    assert got["a"]["Email"] == "a@x.com"


def test_delete_visible_and_idempotent(conn: SalesforceConnector, mock: SalesforceMock) -> None:
    conn.write([up("1"), up("2"), up("3")])
    _, cursor = read_all(conn, None)
    res = conn.write([WriteOp("2", "delete", None), WriteOp("nope", "delete", None)])
    assert [r.error for r in res] == [None, None]
    assert sorted(r[KEY] for r in mock.list_records()) == ["1", "3"]
    changes, cursor = read_all(conn, cursor)
    assert [(c.key, c.op, c.fields) for c in changes] == [("2", "delete", None)]
    # already deleted: still a success
    assert conn.write([WriteOp("2", "delete", None)])[0].error is None
    mock.delete_record("3")
    changes, _ = read_all(conn, cursor)
    assert [(c.key, c.op) for c in changes] == [("3", "delete")]


def test_upsert_idempotent(conn: SalesforceConnector, mock: SalesforceMock) -> None:
    batch = [up("7", Email="x@y.com")]
    conn.write(batch)
    conn.write(batch)
    assert [r[KEY] for r in mock.list_records()] == ["7"]
    # duplicate keys in one batch: the last one wins, both succeed
    res = conn.write([up("8", Title="a"), up("8", Title="b")])
    assert [r.error for r in res] == [None, None]
    assert conn.fetch(["8"])["8"]["Title"] == "b"


def test_rejected_record_rest_succeeds(conn: SalesforceConnector, mock: SalesforceMock) -> None:
    ops = [
        up("1"),
        WriteOp("2", "upsert", {"Email": "no-last-name@x.com"}),
        up("3", Email="not an email"),
        up("4", Bogus__c=1),
        up("5"),
    ]
    res = conn.write(ops)
    assert [r.error is None for r in res] == [True, False, False, False, True]
    assert "REQUIRED_FIELD_MISSING" in (res[1].error or "")
    assert "INVALID_EMAIL_ADDRESS" in (res[2].error or "")
    assert "INVALID_FIELD" in (res[3].error or "")
    assert not any(r.retryable for r in res)
    assert sorted(r[KEY] for r in mock.list_records()) == ["1", "5"]


@pytest.fixture
def frozen(tmp_path: Path) -> Iterator[tuple[SalesforceConnector, SalesforceMock]]:
    """A connector on a mock whose clock stands still: every change in one second."""
    m = SalesforceMock(page_size=5, clock=lambda: 1_764_000_000.0)
    m.start()
    c = make(m, tmp_path)
    yield c, m
    c.close()
    m.stop()


def test_boundary_dedup_same_second(
    frozen: tuple[SalesforceConnector, SalesforceMock]
) -> None:
    conn, mock = frozen
    conn.write([up(str(i)) for i in range(4)])
    page = conn.read_changes(None, 2)
    assert page.more and len(page.changes) == 2
    state = json.loads(page.cursor or "")
    assert len(state["seen"]) == 2
    rest, cursor = read_all(conn, page.cursor, 10)
    assert sorted(c.key for c in page.changes + rest) == ["0", "1", "2", "3"]
    # a record changed within the same second as the cursor is still seen
    mock.push({"Record_Id__c": "0", "LastName": "Changed"})
    changed, _ = read_all(conn, cursor)
    assert [(c.key, c.fields["LastName"]) for c in changed] == [("0", "Changed")]


def test_keyset_cursor_many_in_one_second(
    frozen: tuple[SalesforceConnector, SalesforceMock]
) -> None:
    conn, _mock = frozen
    conn.write([up(str(i)) for i in range(600)])
    changes, cursor = read_all(conn, None, 550)
    assert len({c.key for c in changes}) == 600 and len(changes) == 600
    assert "id" in json.loads(cursor or "")
    assert read_all(conn, cursor, 550)[0] == []


def test_records_without_external_id_get_one(
    conn: SalesforceConnector, mock: SalesforceMock
) -> None:
    rec = mock.push({"LastName": "Hand Made"})
    changes, _ = read_all(conn, None)
    assert [c.key for c in changes] == ["sf-" + rec["Id"]]
    assert mock.list_records()[0][KEY] == "sf-" + rec["Id"]


def test_token_expiry_renewed(conn: SalesforceConnector, mock: SalesforceMock) -> None:
    conn.write([up("1")])
    mock.expire_tokens()
    assert conn.write([up("2")])[0].error is None
    mock.expire_tokens()
    assert len(read_all(conn, None)[0]) == 2


def test_limit_exceeded_and_429(
    conn: SalesforceConnector, mock: SalesforceMock, tmp_path: Path
) -> None:
    mock.set_faults(limit_after=0)
    with pytest.raises(RateLimited) as info:
        conn.write([up("1")])
    assert info.value.retry_after is None  # REQUEST_LIMIT_EXCEEDED from the server
    with pytest.raises(RateLimited) as info:  # the header said nothing is left: no call
        conn.write([up("1")])
    assert info.value.retry_after == 60.0
    mock.set_faults(limit_after=None)
    conn = make(mock, tmp_path)
    mock.set_faults(status_429_retry_after=7)
    with pytest.raises(RateLimited) as info:
        conn.read_changes(None, 10)
    assert info.value.retry_after == 7.0
    mock.set_faults(status_429_retry_after=None, error_rate=1.0)
    with pytest.raises(ConnectorError) as err:
        conn.write([up("1")])
    assert not isinstance(err.value, RateLimited) and "503" in str(err.value)
    mock.set_faults(error_rate=0.0, drop_rate=1.0)
    with pytest.raises(ConnectorError):
        conn.fetch(["1"])
    mock.set_faults(drop_rate=0.0)
    assert conn.write([up("1")])[0].error is None


def test_daily_reserve(mock: SalesforceMock, tmp_path: Path) -> None:
    c = make(mock, tmp_path, daily_reserve=100)
    budget = c.remote_budget()
    assert budget is not None and budget[0] > 100
    mock.daily_limit = mock.request_count + 100
    with pytest.raises(RateLimited):
        c.write([up("1")])
        c.write([up("2")])
    budget = c.remote_budget()
    assert budget is not None and budget[0] <= 100
    c.close()


def test_requests_per_thousand(conn: SalesforceConnector, mock: SalesforceMock) -> None:
    before = mock.request_count
    for start in range(0, 2000, 1000):
        res = conn.write([up(str(i), Email=f"u{i}@x.com") for i in range(start, start + 1000)])
        assert all(r.error is None for r in res)
    assert (mock.request_count - before) / 2 <= 6
    assert len(mock.list_records()) == 2000


def test_bulk_path(mock: SalesforceMock, tmp_path: Path) -> None:
    c = make(mock, tmp_path, bulk_threshold=50)
    ops = [up(str(i), Email=None) for i in range(60)] + [
        WriteOp("bad", "upsert", {"Email": "q@x.com"})
    ]
    before = mock.request_count
    res = c.write(ops)
    assert mock.request_count - before <= 7
    assert [r.error is None for r in res] == [True] * 60 + [False]
    assert "REQUIRED_FIELD_MISSING" in (res[-1].error or "")
    assert len(mock.list_records()) == 60
    c.close()


def test_config_errors(mock: SalesforceMock, tmp_path: Path) -> None:
    with pytest.raises(ConnectorConfigError):
        make(mock, tmp_path, key="LastName")
    with pytest.raises(ConnectorConfigError):
        make(mock, tmp_path, sobject="Nope")
    with pytest.raises(ConnectorConfigError):
        SalesforceConnector({"key": KEY, "bogus": 1}, tmp_path)


def test_secrets_hidden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = SalesforceConfig(
        key=KEY,
        username="alice@x.com",
        password="hunter2-secret",
        security_token="tok-SECRET",
        client_secret="cs-SECRET",
    )
    conn = SalesforceConnector(cfg, tmp_path)
    for text in (repr(cfg), str(cfg), repr(conn), str(conn)):
        assert "hunter2" not in text and "SECRET" not in text
    monkeypatch.setenv("SF_PW", "env-pw")
    cred = tmp_path / "creds"
    cred.mkdir()
    (cred / "sf_token").write_text("file-token\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(cred))
    c2 = SalesforceConnector(
        {"key": KEY, "password_env": "SF_PW", "security_token_env": "sf_token"}, tmp_path
    )
    assert c2._secret("password") == "env-pw"
    assert c2._secret("security_token") == "file-token"
    # a failing real login: no secret in the message (no network: login cannot succeed)
    c3 = SalesforceConnector(
        {
            "key": KEY,
            "username": "u",
            "password": "hunter2-secret",
            "domain": "127.0.0.1:9",
            "timeout": 2.0,
        },
        tmp_path,
    )
    with pytest.raises(ConnectorError) as err:
        c3.open()
    assert "hunter2" not in str(err.value)


def test_a_failure_in_a_later_chunk_keeps_the_written_chunks(
    conn: SalesforceConnector, mock: SalesforceMock
) -> None:
    mock.set_faults(limit_after=1)  # the first Collections call goes through, then no more
    results = conn.write([up(str(i)) for i in range(300)])  # two chunks: 200 + 100, sent
    written = {r[KEY] for r in mock.list_records()}  # at once: either may be the first
    assert len(written) in (100, 200)
    for i, res in enumerate(results):
        if str(i) in written:
            assert res.error is None
        else:  # Salesforce's limit: the rest waits, without spending an attempt
            assert res.error and res.retryable and res.retry_after is not None


@pytest.mark.parametrize("parallel", [1, 4])
def test_collections_sent_in_parallel_write_every_record_once(
    mock: SalesforceMock, tmp_path: Path, parallel: int
) -> None:
    conn = make(mock, tmp_path, parallel_requests=parallel)
    before = mock.request_count
    results = conn.write([up(str(i), Email=f"u{i}@example.com") for i in range(1000)])
    conn.close()
    assert mock.request_count - before == 5  # five collections of 200
    assert [r.error for r in results] == [None] * 1000
    rows = mock.list_records()
    assert sorted(int(r[KEY]) for r in rows) == list(range(1000))
    assert all(r["Email"] == f"u{r[KEY]}@example.com" for r in rows)


def test_the_username_is_shown_as_everywhere_else(tmp_path: Path) -> None:
    """The username names the org user in system ids, errors and logs: it is not a secret,
    so the config shows it too (and the password stays hidden)."""
    cfg = SalesforceConfig(key=KEY, username="alice@x.com", password="hunter2-secret")
    conn = SalesforceConnector(cfg, tmp_path)
    assert "username='alice@x.com'" in repr(cfg)
    assert "alice@x.com" in conn.system_id
    assert "hunter2" not in repr(cfg) and "hunter2" not in conn.system_id


def test_every_request_is_taken_from_the_budget(mock: SalesforceMock, tmp_path: Path) -> None:
    """The token, the describe call when the side opens, reads, the key lookups and every
    chunk of a write (sent in parallel) each take one request from the budget first:
    the count the budget saw is the count the mock saw."""
    spent: list[bool] = []
    conf = {"key": KEY, "mock": True, "instance_url": mock.url}
    conn = SalesforceConnector(conf, tmp_path)
    conn.spend = spent.append  # what the connector actor sets: take one request (read?)
    before = mock.request_count
    conn.open()
    try:
        assert len(spent) == mock.request_count - before >= 2  # token and describe
        res = conn.write([up(str(i)) for i in range(450)])  # three collections
        assert all(r.error is None for r in res)
        conn.fetch([str(i) for i in range(0, 450, 7)])  # the key lookup query
        read_all(conn, None, limit=200)
        assert len(spent) == mock.request_count - before
        assert spent.count(False) >= 3 and spent.count(True) >= 3  # writes and reads
    finally:
        conn.close()


def test_a_spent_budget_stops_the_call(mock: SalesforceMock, tmp_path: Path) -> None:
    conf = {"key": KEY, "mock": True, "instance_url": mock.url}
    conn = SalesforceConnector(conf, tmp_path)
    conn.open()

    def spent(read: bool) -> None:
        raise RateLimited("the API budget is spent", None)

    conn.spend = spent
    before = mock.request_count
    try:
        with pytest.raises(RateLimited):
            conn.write([up("1")])
        assert mock.request_count == before  # nothing went out
    finally:
        conn.close()
