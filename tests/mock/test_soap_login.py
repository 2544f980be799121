"""SOAP partner login of the mock Salesforce, and the connector's username + password +
security token configuration end to end through simple-salesforce's login against it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from recsync.connectors.salesforce import SalesforceConnector
from recsync.errors import ConnectorConfigError
from recsync.messages import WriteOp
from recsync.mock.salesforce import SalesforceMock
from tests.mock.rawhttp import RawConn, chunked

USER, PASSWORD, TOKEN = "ops@example.com", "hunter2", "Xk9TOKENq"


def envelope(username: str, password: str) -> bytes:
    return f"""<?xml version="1.0" encoding="utf-8" ?>
<env:Envelope xmlns:xsd="http://www.w3.org/2001/XMLSchema"
        xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
        xmlns:env="http://schemas.xmlsoap.org/soap/envelope/"
        xmlns:urn="urn:partner.soap.sforce.com">
    <env:Body>
        <n1:login xmlns:n1="urn:partner.soap.sforce.com">
            <n1:username>{username}</n1:username>
            <n1:password>{password}</n1:password>
        </n1:login>
    </env:Body>
</env:Envelope>""".encode()


@pytest.fixture
def mock() -> Iterator[SalesforceMock]:
    m = SalesforceMock(users={USER: PASSWORD + TOKEN})
    m.start()
    yield m
    m.stop()


def _soap(mock: SalesforceMock, body: bytes, version: str = "59.0") -> requests.Response:
    return requests.post(
        f"{mock.url}/services/Soap/u/{version}",
        data=body,
        headers={"Content-Type": "text/xml; charset=UTF-8", "SOAPAction": "login"},
        timeout=10,
    )


def test_soap_login_returns_session_id_and_server_url(mock: SalesforceMock) -> None:
    resp = _soap(mock, envelope(USER, PASSWORD + TOKEN))
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("text/xml")
    text = resp.text
    session = text.split("<sessionId>")[1].split("</sessionId>")[0]
    server = text.split("<serverUrl>")[1].split("</serverUrl>")[0]
    assert server.startswith(mock.url + "/services/Soap/u/59.0/00D")
    lim = requests.get(
        mock.url + "/services/data/v59.0/limits",
        headers={"Authorization": "Bearer " + session},
        timeout=10,
    )
    assert lim.status_code == 200  # the session id is a REST bearer token
    assert mock.logins == [("soap", USER)]


@pytest.mark.parametrize(
    ("username", "password"),
    [(USER, PASSWORD), (USER, PASSWORD + "WRONG"), ("nobody@example.com", PASSWORD + TOKEN)],
    ids=["token-missing", "wrong-token", "unknown-user"],
)
def test_bad_credentials_get_the_invalid_login_fault(
    mock: SalesforceMock, username: str, password: str
) -> None:
    resp = _soap(mock, envelope(username, password))
    assert resp.status_code == 500
    assert "<faultcode>sf:INVALID_LOGIN</faultcode>" in resp.text
    assert "<sf:exceptionCode>INVALID_LOGIN</sf:exceptionCode>" in resp.text
    assert "Invalid username, password, security token; or user locked out." in resp.text
    assert mock.logins == []


def test_not_a_login_envelope_is_a_client_fault(mock: SalesforceMock) -> None:
    resp = _soap(mock, b"<not xml")
    assert resp.status_code == 500 and "<faultcode>soapenv:Client</faultcode>" in resp.text


def test_soap_login_sent_chunked(mock: SalesforceMock) -> None:
    body = envelope(USER, PASSWORD + TOKEN)
    with RawConn(mock.url) as c:
        c.send(
            b"POST /services/Soap/u/59.0 HTTP/1.1\r\nHost: m\r\nContent-Type: text/xml\r\n"
            b"SOAPAction: login\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunked(body, (100, 3, 250))
        )
        resp = c.response()
        assert resp.status == 200 and b"<sessionId>" in resp.body


def _connector(mock: SalesforceMock, tmp_path: Path, **creds: str) -> SalesforceConnector:
    return SalesforceConnector(
        {"key": "Record_Id__c", "mock": True, "instance_url": mock.url, **creds}, tmp_path
    )


def test_connector_username_password_token_end_to_end(
    mock: SalesforceMock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SF_TOKEN_FOR_TEST", TOKEN)
    conn = _connector(
        mock, tmp_path, username=USER, password=PASSWORD, security_token_env="SF_TOKEN_FOR_TEST"
    )
    conn.open()
    try:
        assert mock.logins == [("soap", USER)]  # simple-salesforce's SOAP login, not OAuth
        res = conn.write([WriteOp("41", "upsert", {"LastName": "Soap", "Email": "s@x.io"})])
        assert res[0].error is None
        page = conn.read_changes(None, 10)
        assert [(c.key, c.fields["LastName"]) for c in page.changes if c.fields] == [
            ("41", "Soap")
        ]
        mock.expire_tokens()  # an expired session logs in again, the same way
        assert conn.fetch(["41"])["41"]["Email"] == "s@x.io"
        assert mock.logins == [("soap", USER), ("soap", USER)]
    finally:
        conn.close()


def test_connector_bad_security_token_is_a_config_error_without_secrets(
    mock: SalesforceMock, tmp_path: Path
) -> None:
    conn = _connector(mock, tmp_path, username=USER, password=PASSWORD, security_token="nope")
    with pytest.raises(ConnectorConfigError) as err:
        conn.open()
    text = str(err.value)
    assert "login" in text and "credentials" in text
    assert PASSWORD not in text and "nope" not in text
    assert mock.logins == []


def test_connector_password_grant_with_client_id_against_the_mock(
    mock: SalesforceMock, tmp_path: Path
) -> None:
    conn = _connector(
        mock, tmp_path, username=USER, password=PASSWORD + TOKEN, client_id="cid",
        client_secret="csecret",
    )
    conn.open()
    try:
        assert mock.logins == [("oauth-password", USER)]
        assert conn.write([WriteOp("7", "upsert", {"LastName": "Grant"})])[0].error is None
    finally:
        conn.close()
