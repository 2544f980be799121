"""The mock Outreach API v2 server, over loopback with real requests."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from recsync import mock as mock_registry
from recsync.mock.outreach import OutreachMock

JSONAPI = "application/vnd.api+json"


@pytest.fixture
def server() -> Iterator[OutreachMock]:
    m = OutreachMock(page_size=3)
    m.start()
    yield m
    m.stop()


def token(m: OutreachMock, s: requests.Session) -> str:
    r = s.post(
        f"{m.url}/oauth/token",
        data={
            "grant_type": "refresh_token",
            "client_id": m.client_id,
            "client_secret": m.client_secret,
            "refresh_token": m.refresh_token,
        },
    )
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


@pytest.fixture
def api(server: OutreachMock) -> Iterator[requests.Session]:
    s = requests.Session()
    s.headers["Authorization"] = "Bearer " + token(server, s)
    yield s
    s.close()


def create(m: OutreachMock, s: requests.Session, **attrs: Any) -> dict[str, Any]:
    r = s.post(
        f"{m.url}/api/v2/prospects",
        json={"data": {"type": "prospect", "attributes": attrs}},
        headers={"Content-Type": JSONAPI},
    )
    assert r.status_code == 201, r.text
    return dict(r.json()["data"])


def test_token_rotation(server: OutreachMock) -> None:
    s = requests.Session()
    first = server.refresh_token
    form = {
        "grant_type": "refresh_token",
        "client_id": server.client_id,
        "client_secret": server.client_secret,
        "refresh_token": first,
    }
    r = s.post(f"{server.url}/oauth/token", data=form)
    body = r.json()
    assert r.status_code == 200 and body["expires_in"] == 7200
    assert "X-RateLimit-Reset" in r.headers
    assert body["refresh_token"] != first == form["refresh_token"]
    assert server.refresh_token == body["refresh_token"]
    again = s.post(f"{server.url}/oauth/token", data=form)
    assert again.status_code == 401 and again.json()["error"] == "invalid_grant"
    wrong = s.post(f"{server.url}/oauth/token", json={**form, "refresh_token": "nope"})
    assert wrong.status_code == 401
    r = s.get(
        f"{server.url}/api/v2/prospects",
        headers={"Authorization": "Bearer " + body["access_token"]},
    )
    assert r.status_code == 200


def test_auth_required_and_expiry(server: OutreachMock, api: requests.Session) -> None:
    r = requests.get(f"{server.url}/api/v2/prospects")
    assert r.status_code == 401 and r.json()["errors"][0]["id"] == "unauthorized"
    assert "X-RateLimit-Remaining" in r.headers
    assert api.get(f"{server.url}/api/v2/prospects").status_code == 200
    server.expire_tokens()
    assert api.get(f"{server.url}/api/v2/prospects").status_code == 401


def test_crud_and_errors(server: OutreachMock, api: requests.Session) -> None:
    p = create(server, api, firstName="Ada", lastName="L", emails=["ada@x.io"], externalId="7")
    assert p["type"] == "prospect" and isinstance(p["id"], int)
    url = f"{server.url}/api/v2/prospects/{p['id']}"
    got = api.get(url)
    assert got.status_code == 200 and got.json()["data"]["attributes"]["emails"] == ["ada@x.io"]
    assert got.headers["Content-Type"] == JSONAPI
    body = {"data": {"type": "prospect", "id": p["id"], "attributes": {"title": "CTO"}}}
    assert api.patch(url, json=body).status_code == 415
    r = api.patch(url, json=body, headers={"Content-Type": JSONAPI})
    assert r.status_code == 200 and r.json()["data"]["attributes"]["title"] == "CTO"
    assert r.json()["data"]["attributes"]["updatedAt"] >= p["attributes"]["updatedAt"]
    d = api.delete(url)
    assert d.status_code == 204 and d.content == b""
    for r in (
        api.get(url),
        api.delete(url),
        api.patch(url, json=body, headers={"Content-Type": JSONAPI}),
    ):
        assert r.status_code == 404
        err = r.json()["errors"][0]
        assert err["id"] == "resourceNotFound" and err["title"] and err["detail"]
    assert server.list_records() == []


@pytest.mark.parametrize(
    ("attrs", "pointer"),
    [
        ({"emails": "a@b.c"}, "/data/attributes/emails"),
        ({"lastName": "x" * 256}, "/data/attributes/lastName"),
        ({"bogus": 1}, "/data/attributes/bogus"),
    ],
)
def test_validation_422(
    server: OutreachMock, api: requests.Session, attrs: dict[str, Any], pointer: str
) -> None:
    r = api.post(
        f"{server.url}/api/v2/prospects",
        json={"data": {"type": "prospect", "attributes": attrs}},
        headers={"Content-Type": JSONAPI},
    )
    assert r.status_code == 422
    err = r.json()["errors"][0]
    assert err["id"] == "validationError" and err["source"]["pointer"] == pointer


def test_filters_sort_sparse_and_paging(server: OutreachMock, api: requests.Session) -> None:
    made = [create(server, api, firstName=f"p{i}", externalId=f"e{i}") for i in range(7)]
    ts = [p["attributes"]["updatedAt"] for p in made]
    base = f"{server.url}/api/v2/prospects"
    seen, url = [], f"{base}?filter[updatedAt]=neginf..inf&sort=updatedAt"
    pages = 0
    while url:
        body = api.get(url).json()
        assert len(body["data"]) <= 3
        seen += [d["id"] for d in body["data"]]
        url = body["links"].get("next")
        assert url is None or url.startswith(server.url)
        pages += 1
    assert seen == [p["id"] for p in made] and pages == 3
    since = api.get(base, params={"filter[updatedAt]": f"{ts[4]}..inf", "page[size]": 10}).json()
    assert {d["id"] for d in since["data"]} == {
        p["id"] for p in made if p["attributes"]["updatedAt"] >= ts[4]
    }
    upto = api.get(base, params={"filter[updatedAt]": f"neginf..{ts[1]}"}).json()["data"]
    assert all(d["attributes"]["updatedAt"] <= ts[1] for d in upto) and upto
    both = api.get(base, params={"filter[updatedAt]": f"{ts[2]}..{ts[3]}"}).json()["data"]
    assert all(ts[2] <= d["attributes"]["updatedAt"] <= ts[3] for d in both) and both
    desc = api.get(base, params={"sort": "-id", "page[size]": 2}).json()["data"]
    assert [d["id"] for d in desc] == [made[6]["id"], made[5]["id"]]
    ext = api.get(base, params={"filter[externalId]": "e3"}).json()["data"]
    assert [d["id"] for d in ext] == [made[3]["id"]]
    ids = f"{made[0]['id']},{made[5]['id']}"
    by_id = api.get(base, params={"filter[id]": ids, "fields[prospect]": "updatedAt"}).json()
    assert [d["id"] for d in by_id["data"]] == [made[0]["id"], made[5]["id"]]
    assert set(by_id["data"][0]["attributes"]) == {"updatedAt"}
    assert api.get(base, params={"filter[updatedAt]": "garbage"}).status_code == 400


def test_rate_limit_headers_and_429() -> None:
    m = OutreachMock(rate_limit=3)
    m.start()
    try:
        s = requests.Session()
        s.headers["Authorization"] = "Bearer " + token(m, s)
        remaining = []
        for _ in range(3):
            r = s.get(f"{m.url}/api/v2/prospects")
            assert r.status_code == 200 and r.headers["X-RateLimit-Limit"] == "3"
            assert float(r.headers["X-RateLimit-Reset"]) > time.time()
            remaining.append(int(r.headers["X-RateLimit-Remaining"]))
        assert remaining == [2, 1, 0]
        r = s.get(f"{m.url}/api/v2/prospects")
        assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
        assert r.json()["errors"][0]["id"] == "rateLimitExceeded"
        assert m.request_count == 5
    finally:
        m.stop()


def test_push_both_shapes_and_list(server: OutreachMock) -> None:
    demo = server.push({"record_id": 301, "full_name": "Mock User", "email_address": "mock@sf.com"})
    assert demo["externalId"] == "301" and demo["firstName"] == "Mock"
    assert demo["lastName"] == "User" and demo["email"] == "mock@sf.com"
    raw = server.push({"firstName": "Raw", "emails": ["r@x.io"], "title": "VP"})
    assert raw["externalId"] is None and raw["email"] == "r@x.io"
    again = server.push({"record_id": 301, "full_name": "Mock Renamed"})
    assert again["id"] == demo["id"] and again["lastName"] == "Renamed"
    records = server.list_records()
    assert [r["id"] for r in records] == [demo["id"], raw["id"]]
    assert records[1]["title"] == "VP"


def test_persistence_across_restart(tmp_path: Path) -> None:
    data = tmp_path / "outreach.json"
    m = OutreachMock(data=data)
    m.start()
    m.push({"record_id": 1, "full_name": "A B", "email_address": "a@b"})
    s = requests.Session()
    token(m, s)
    refresh = m.refresh_token
    m.stop()
    again = mock_registry.create("outreach", data=data)
    assert isinstance(again, OutreachMock)
    again.start()
    try:
        assert [r["externalId"] for r in again.list_records()] == ["1"]
        assert again.refresh_token == refresh and again.client_secret == m.client_secret
        s.headers["Authorization"] = "Bearer " + token(again, s)
        assert again.push({"firstName": "new"})["id"] == 2
    finally:
        again.stop()


def test_faults(server: OutreachMock, api: requests.Session) -> None:
    url = f"{server.url}/api/v2/prospects"
    assert server.set_faults(error_rate=1.0, error_status=502)["error_status"] == 502
    r = api.get(url)
    assert r.status_code == 502 and "errors" in r.json()
    server.set_faults(error_rate=0.0, status_429_retry_after=7)
    r = api.get(url)
    assert r.status_code == 429 and r.headers["Retry-After"] == "7"
    server.set_faults(status_429_retry_after=None, drop_rate=1.0)
    with pytest.raises(requests.ConnectionError):
        api.get(url)
    server.set_faults(drop_rate=0.0, latency=0.05)
    start = time.monotonic()
    assert api.get(url).status_code == 200
    assert time.monotonic() - start >= 0.05
    faults = server.set_faults(latency=0.0)
    assert faults == {
        "error_rate": 0.0,
        "latency": 0.0,
        "status_429_retry_after": None,
        "drop_rate": 0.0,
        "error_status": 502,
    }
    with pytest.raises(ValueError, match="Unknown fault"):
        server.set_faults(nonsense=1)


def test_keep_alive_is_fast(server: OutreachMock, api: requests.Session) -> None:
    took = []
    for _ in range(50):
        start = time.monotonic()
        assert api.get(f"{server.url}/api/v2/prospects").status_code == 200
        took.append(time.monotonic() - start)
    # Nagle + delayed ACK hold most requests 40 ms each; the median, not the sum, so that
    # a few requests slowed by a loaded machine do not fail it
    assert statistics.median(took) < 0.03, took
