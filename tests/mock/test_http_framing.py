"""HTTP/1.1 request framing of both mock CRMs, spoken as raw bytes over one socket.

Any client must work against the mocks, not only ours: chunked bodies (what Node, Java and
requests with a generator send), ``Expect: 100-continue``, pipelining, and a malformed
request answered ``400`` with the connection closed (never left out of step).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator

import pytest
import requests

from recsync.mock.httpserver import HttpServer, Request, Response
from recsync.mock.outreach import OutreachMock
from recsync.mock.salesforce import SalesforceMock
from tests.mock.rawhttp import RawConn, chunked

FORM = b"grant_type=client_credentials&client_id=node-client&client_secret=s3cret"


@pytest.fixture
def sf() -> Iterator[SalesforceMock]:
    m = SalesforceMock()
    m.start()
    yield m
    m.stop()


@pytest.fixture
def outreach() -> Iterator[OutreachMock]:
    m = OutreachMock()
    m.start()
    yield m
    m.stop()


def _token_post(body: bytes, *, framing: str = "chunked", extra: str = "") -> bytes:
    head = (
        "POST /services/oauth2/token HTTP/1.1\r\nHost: mock\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n" + extra
    )
    if framing == "chunked":
        return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + chunked(body)
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _limits(token: str) -> bytes:
    return (
        "GET /services/data/v59.0/limits HTTP/1.1\r\nHost: mock\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    ).encode()


def test_chunked_token_post_is_read_and_the_connection_stays_in_step(
    sf: SalesforceMock,
) -> None:
    with RawConn(sf.url) as c:
        c.send(_token_post(FORM))
        tok = c.response()
        assert tok.status == 200, tok.body
        assert tok.headers["content-type"].startswith("application/json")
        access = tok.json()["access_token"]
        c.send(_limits(access))  # the same keep-alive connection, next request
        lim = c.response()
        assert lim.status == 200 and "DailyApiRequests" in lim.json()


def test_content_length_and_chunked_with_trailers_both_frame(sf: SalesforceMock) -> None:
    with RawConn(sf.url) as c:
        c.send(_token_post(FORM, framing="length"))
        assert c.response().status == 200
        trailer = chunked(FORM)[: -2] + b"X-Checksum: 1\r\n\r\n"
        c.send(
            b"POST /services/oauth2/token HTTP/1.1\r\nHost: mock\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + trailer
        )
        assert c.response().status == 200


def test_expect_100_continue_gets_continue_before_the_body(sf: SalesforceMock) -> None:
    with RawConn(sf.url) as c:
        head = _token_post(FORM, framing="length", extra="Expect: 100-continue\r\n")
        c.send(head[: -len(FORM)])  # headers only: a client like curl or Java waits here
        interim = c.response()
        assert interim.status == 100
        c.send(FORM)
        final = c.response()
        assert final.status == 200 and final.json()["access_token"]


def test_pipelined_requests_are_answered_in_order(sf: SalesforceMock) -> None:
    with RawConn(sf.url) as c:
        c.send(_limits(sf.token) + _token_post(FORM) + _limits("wrong"))
        assert c.response().status == 200
        assert c.response().status == 200
        assert c.response().status == 401


@pytest.mark.parametrize(
    "raw",
    [
        b"NOT AN HTTP REQUEST\r\n\r\n",
        # both framings at once: the request-smuggling case, refused
        b"POST /services/oauth2/token HTTP/1.1\r\nHost: m\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /services/oauth2/token HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nabc\r\n0\r\n\r\n",
        b"GET /services/data/v59.0/limits HTTP/1.1\r\nHost: m\r\nBad Header\r\n\r\n",
    ],
    ids=["garbage", "length-and-chunked", "bad-chunk-size", "bad-header-line"],
)
def test_malformed_request_gets_400_and_a_closed_connection(
    sf: SalesforceMock, raw: bytes
) -> None:
    with RawConn(sf.url) as c:
        c.send(raw)
        resp = c.response()
        assert resp.status == 400
        assert resp.headers["connection"] == "close"
        assert resp.json()[0]["errorCode"] == "BAD_REQUEST"
        assert c.closed_by_server()
    with RawConn(sf.url) as c:  # the server goes on serving
        c.send(_limits(sf.token))
        assert c.response().status == 200


def test_http_10_client_gets_an_answer_and_a_close(sf: SalesforceMock) -> None:
    with RawConn(sf.url) as c:
        c.send(b"GET /services/data/v59.0/limits HTTP/1.0\r\nAuthorization: Bearer "
               + sf.token.encode() + b"\r\n\r\n")
        assert c.response().status == 200
        assert c.closed_by_server()


def test_bulk_csv_upload_sent_chunked_by_requests(sf: SalesforceMock) -> None:
    hdr = {"Authorization": "Bearer " + sf.token}
    base = sf.url + "/services/data/v59.0/jobs/ingest"
    job = requests.post(
        base, json={"object": "Contact", "operation": "insert"}, headers=hdr, timeout=10
    ).json()

    def rows() -> Iterator[bytes]:  # a generator body: requests sends it chunked
        yield b"LastName,Email\n"
        for i in range(50):
            yield f"Chunk{i},c{i}@example.com\n".encode()

    put = requests.put(
        f"{base}/{job['id']}/batches", data=rows(), headers={**hdr, "Content-Type": "text/csv"},
        timeout=10,
    )
    assert put.request.headers.get("Transfer-Encoding") == "chunked"
    assert put.status_code == 201
    done = requests.patch(
        f"{base}/{job['id']}", json={"state": "UploadComplete"}, headers=hdr, timeout=10
    ).json()
    assert done["state"] == "JobComplete" and done["numberRecordsProcessed"] == 50
    assert done["numberRecordsFailed"] == 0
    assert len(sf.list_records()) == 50


def test_body_over_the_cap_gets_413_and_a_close() -> None:
    def echo(req: Request) -> Response:
        return 200, {"Content-Type": "text/plain"}, req.body

    server = HttpServer("127.0.0.1", 0, echo, max_body=1000)
    server.start()
    try:
        url = f"http://127.0.0.1:{server.port}"
        with RawConn(url) as c:
            c.send(b"POST / HTTP/1.1\r\nHost: m\r\nContent-Length: 5000\r\n\r\n")
            assert c.response().status == 413
            assert c.closed_by_server()
        with RawConn(url) as c:  # the same cap holds for a chunked body (no length up front)
            c.send(b"POST / HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\n\r\n"
                   + chunked(b"x" * 3000, (600, 600, 600)))
            assert c.response().status == 413
            assert c.closed_by_server()
        with RawConn(url) as c:
            c.send(b"POST / HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\n\r\n"
                   + chunked(b"x" * 900))
            ok = c.response()
            assert ok.status == 200 and ok.body == b"x" * 900
    finally:
        server.stop()


# ---------------------------------------------------------------------- Outreach


def _outreach_token_form(m: OutreachMock) -> bytes:
    return (
        f"grant_type=refresh_token&client_id={m.client_id}&client_secret={m.client_secret}"
        f"&refresh_token={m.refresh_token}"
    ).encode()


def test_outreach_chunked_token_and_prospect_bodies(outreach: OutreachMock) -> None:
    with RawConn(outreach.url) as c:
        c.send(
            b"POST /oauth/token HTTP/1.1\r\nHost: m\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + chunked(_outreach_token_form(outreach))
        )
        tok = c.response()
        assert tok.status == 200, tok.body
        access = tok.json()["access_token"]
        body = b'{"data": {"type": "prospect", "attributes": {"firstName": "Chunky"}}}'
        c.send(
            b"POST /api/v2/prospects HTTP/1.1\r\nHost: m\r\n"
            b"Content-Type: application/vnd.api+json\r\nAuthorization: Bearer "
            + access.encode() + b"\r\nExpect: 100-continue\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        assert c.response().status == 100
        c.send(chunked(body))
        created = c.response()
        assert created.status == 201, created.body
        assert created.json()["data"]["attributes"]["firstName"] == "Chunky"
    assert [p["firstName"] for p in outreach.list_records()] == ["Chunky"]


def test_outreach_malformed_request_gets_jsonapi_400_and_close(outreach: OutreachMock) -> None:
    with RawConn(outreach.url) as c:
        c.send(b"GET /api/v2/prospects HTTP/1.1\r\nHost: m\r\nContent-Length: 2\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        resp = c.response()
        assert resp.status == 400 and resp.headers["connection"] == "close"
        assert resp.headers["content-type"] == "application/vnd.api+json"
        assert resp.json()["errors"][0]["id"] == "badRequest"
        assert c.closed_by_server()


@pytest.mark.parametrize("ctype", ["application/json", "text/plain", None])
def test_outreach_wrong_content_type_is_a_jsonapi_415(
    outreach: OutreachMock, ctype: str | None
) -> None:
    tok = requests.post(
        outreach.url + "/oauth/token", data=_outreach_token_form(outreach).decode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=10,
    ).json()["access_token"]
    headers = {"Authorization": "Bearer " + tok}
    if ctype:
        headers["Content-Type"] = ctype
    r = requests.post(
        outreach.url + "/api/v2/prospects",
        data=b'{"data": {"type": "prospect", "attributes": {"firstName": "A"}}}',
        headers=headers,
        timeout=10,
    )
    assert r.status_code == 415
    assert r.headers["Content-Type"] == "application/vnd.api+json"
    err = r.json()["errors"][0]
    assert err["id"] == "unsupportedMediaType" and err["status"] == "415"
    assert err["source"] == {"header": "Content-Type"}
    assert outreach.list_records() == []


def test_gzip_request_bodies_are_inflated(sf: SalesforceMock) -> None:
    body = json.dumps({"LastName": "Zipped", "Record_Id__c": "z1"}).encode()
    with RawConn(sf.url) as c:
        c.send(
            b"POST /services/data/v59.0/sobjects/Contact HTTP/1.1\r\nHost: m\r\n"
            b"Content-Type: application/json\r\nContent-Encoding: gzip\r\nAuthorization: "
            b"Bearer " + sf.token.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunked(gzip.compress(body))
        )
        created = c.response()
        assert created.status == 201, created.body
        c.send(
            b"POST /services/data/v59.0/sobjects/Contact HTTP/1.1\r\nHost: m\r\n"
            b"Content-Encoding: gzip\r\nContent-Length: 9\r\n\r\nnot gzip!"
        )
        assert c.response().status == 400
        assert c.closed_by_server()
    with RawConn(sf.url) as c:
        c.send(b"POST /services/oauth2/token HTTP/1.1\r\nHost: m\r\nContent-Encoding: br\r\n"
               b"Content-Length: 3\r\n\r\nabc")
        assert c.response().status == 415
    assert [r["LastName"] for r in sf.list_records()] == ["Zipped"]


def test_an_idle_keep_alive_connection_is_closed() -> None:
    server = HttpServer("127.0.0.1", 0, lambda req: (200, {}, b"ok"), idle_timeout=0.2)
    server.start()
    try:
        with RawConn(f"http://127.0.0.1:{server.port}") as c:
            c.send(b"GET / HTTP/1.1\r\nHost: m\r\n\r\n")
            assert c.response().body == b"ok"
            assert c.closed_by_server()  # recv waits (up to 10 s) for the server's close
    finally:
        server.stop()
