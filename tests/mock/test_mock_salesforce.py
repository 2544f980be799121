"""The mock Salesforce, driven by the real simple-salesforce client and requests."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from requests.adapters import HTTPAdapter
from simple_salesforce.api import Salesforce
from simple_salesforce.exceptions import (
    SalesforceExpiredSession,
    SalesforceGeneralError,
    SalesforceMalformedRequest,
    SalesforceMoreThanOneRecord,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)

from recsync.mock import create
from recsync.mock.salesforce import SalesforceMock
from recsync.mock.sf_store import with_checksum


class _Plain(HTTPAdapter):
    def send(self, request: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        request.url = request.url.replace("https://", "http://", 1)
        kwargs["timeout"] = kwargs.get("timeout") or 10
        return super().send(request, **kwargs)


def token(mock: SalesforceMock, **form: str) -> dict[str, Any]:
    data = form or {"grant_type": "client_credentials", "client_id": "c", "client_secret": "s"}
    resp = requests.post(mock.url + "/services/oauth2/token", data=data, timeout=10)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def client(mock: SalesforceMock) -> Salesforce:
    s = requests.Session()
    s.mount("https://", _Plain())
    tok = token(mock)
    return Salesforce(
        instance_url=tok["instance_url"], session_id=tok["access_token"], session=s, version="59.0"
    )


@pytest.fixture
def mock() -> Iterator[SalesforceMock]:
    m = SalesforceMock(page_size=3)
    m.start()
    yield m
    m.stop()


@pytest.fixture
def sf(mock: SalesforceMock) -> Salesforce:
    return client(mock)


def test_registry_and_tokens(mock: SalesforceMock) -> None:
    assert isinstance(create("salesforce"), SalesforceMock)
    tok = token(mock, grant_type="password", username="u", password="p")
    assert tok["instance_url"] == mock.url and tok["access_token"]
    bad = requests.post(
        mock.url + "/services/oauth2/token",
        data={"grant_type": "password", "username": "u"},
        timeout=10,
    )
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_grant"
    r = requests.get(mock.url + "/services/data/v59.0/limits/", timeout=10)
    assert r.status_code == 401 and r.json()[0]["errorCode"] == "INVALID_SESSION_ID"
    assert "Sforce-Limit-Info" in r.headers
    ok = requests.get(
        mock.url + "/services/data/v59.0/limits",
        headers={"Authorization": "Bearer " + mock.token},
        timeout=10,
    )
    assert ok.json()["DailyApiRequests"]["Max"] == 100000


def test_crud_ids_and_errors(sf: Salesforce) -> None:
    res = sf.Contact.create({"LastName": "Smith", "Email": "s@x.com", "Record_Id__c": "1"})
    cid = res["id"]
    assert len(cid) == 18 and cid.startswith("003") and with_checksum(cid[:15]) == cid
    rec = sf.Contact.get(cid[:15])
    assert rec["LastName"] == "Smith" and rec["IsDeleted"] is False
    assert rec["SystemModstamp"].endswith(".000+0000")
    assert sf.Contact.update(cid, {"Title": "Boss"}) == 204
    assert sf.Contact.get(cid)["Title"] == "Boss"
    with pytest.raises(SalesforceMalformedRequest) as err:
        sf.Contact.create({"Email": "x@y.com"})
    assert err.value.content[0]["errorCode"] == "REQUIRED_FIELD_MISSING"
    with pytest.raises(SalesforceMalformedRequest) as err:
        sf.Contact.create({"LastName": "x", "Nope__c": 1})
    assert err.value.content[0]["errorCode"] == "INVALID_FIELD"
    assert sf.Contact.delete(cid) == 204
    with pytest.raises(SalesforceResourceNotFound) as nf:
        sf.Contact.get(cid)
    assert nf.value.content[0]["errorCode"] == "ENTITY_IS_DELETED"
    with pytest.raises(SalesforceResourceNotFound):
        sf.Contact.get("003000000000999AAA")


def test_upsert_by_external_id(sf: Salesforce) -> None:
    assert sf.Contact.upsert("Record_Id__c/a%2Fb", {"LastName": "A"}) == 201
    assert sf.Contact.upsert("Record_Id__c/a%2Fb", {"LastName": "B"}) == 200
    assert sf.Contact.get_by_custom_id("Record_Id__c", "a/b")["LastName"] == "B"
    sf.Contact.create({"LastName": "x", "Legacy_Id__c": "dup"})
    sf.Contact.create({"LastName": "y", "Legacy_Id__c": "dup"})
    with pytest.raises(SalesforceMoreThanOneRecord):
        sf.Contact.upsert("Legacy_Id__c/dup", {"LastName": "z"})


def test_soql_subset(sf: Salesforce) -> None:
    for i in range(5):
        sf.Contact.create({"LastName": f"L{i}", "Email": f"u{i}@x.com", "Record_Id__c": str(i)})
    q = (
        "SELECT Id, LastName FROM Contact WHERE (Record_Id__c IN ('1', '2', '3') "
        "AND LastName != 'L2') OR Email = 'U4@X.COM' ORDER BY LastName DESC LIMIT 10"
    )
    assert [r["LastName"] for r in sf.query_all(q)["records"]] == ["L4", "L3", "L1"]
    since = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    got = sf.query(f"select lastname from contact where SystemModstamp >= {since} limit 2")
    assert got["totalSize"] == 2 and list(got["records"][0])[1] == "LastName"
    assert sf.query("SELECT Id FROM Contact WHERE Email = null")["totalSize"] == 0
    for bad, code in [
        ("SELECT Id FROM Contact WHERE", "MALFORMED_QUERY"),
        ("SELECT Id Contact", "MALFORMED_QUERY"),
        ("SELECT Nope FROM Contact", "INVALID_FIELD"),
        ("SELECT Id FROM Nope", "INVALID_TYPE"),
    ]:
        with pytest.raises(SalesforceMalformedRequest) as err:
            sf.query(bad)
        assert err.value.content[0]["errorCode"] == code


def test_paging_and_query_all(sf: Salesforce, mock: SalesforceMock) -> None:
    ids = [sf.Contact.create({"LastName": f"L{i}"})["id"] for i in range(8)]
    sf.Contact.delete(ids[0])
    first = sf.query("SELECT Id, IsDeleted FROM Contact ORDER BY Id", include_deleted=True)
    assert first["totalSize"] == 8 and not first["done"] and len(first["records"]) == 3
    assert first["nextRecordsUrl"].startswith("/services/data/v59.0/query/")
    everything = sf.query_all("SELECT Id, IsDeleted FROM Contact ORDER BY Id", include_deleted=True)
    assert [r["Id"] for r in everything["records"]] == ids
    assert everything["records"][0]["IsDeleted"] is True
    live = sf.query_all("SELECT Id FROM Contact")
    assert live["totalSize"] == 7


def test_collections(sf: Salesforce) -> None:
    recs = [{"attributes": {"type": "Contact"}, "LastName": f"L{i}"} for i in range(3)]
    res = sf.restful(
        "composite/sobjects", method="POST", json={"allOrNone": False, "records": recs}
    )
    assert [r["success"] for r in res] == [True] * 3
    bad = [*recs, {"attributes": {"type": "Contact"}, "Email": "e@x.com"}]
    res = sf.restful("composite/sobjects", method="POST", json={"allOrNone": True, "records": bad})
    assert [r["errors"][0]["statusCode"] for r in res] == [
        "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    ] * 3 + ["REQUIRED_FIELD_MISSING"]
    assert sf.query("SELECT Id FROM Contact")["totalSize"] == 3
    up = [
        {"attributes": {"type": "Contact"}, "Record_Id__c": "k1", "LastName": "A"},
        {"attributes": {"type": "Contact"}, "Record_Id__c": "k1", "LastName": "B"},
        {"attributes": {"type": "Contact"}, "Record_Id__c": "k2", "LastName": "C"},
    ]
    res = sf.restful(
        "composite/sobjects/Contact/Record_Id__c",
        method="PATCH",
        json={"allOrNone": False, "records": up},
    )
    assert [r["success"] for r in res] == [False, False, True] and res[2]["created"]
    res = sf.restful(
        "composite/sobjects/Contact/Record_Id__c",
        method="PATCH",
        json={"allOrNone": False, "records": up[2:]},
    )
    assert res[0]["created"] is False
    cid = res[0]["id"]
    res = sf.restful(
        "composite/sobjects",
        method="PATCH",
        json={"records": [{"attributes": {"type": "Contact"}, "Id": cid, "Title": "T"}]},
    )
    assert res[0]["success"]
    res = sf.restful(
        "composite/sobjects", method="DELETE", params={"ids": f"{cid},{cid}", "allOrNone": "false"}
    )
    assert res[0]["success"] and res[1]["errors"][0]["statusCode"] == "ENTITY_IS_DELETED"
    with pytest.raises(SalesforceMalformedRequest):
        sf.restful("composite/sobjects", method="POST", json={"records": recs * 70})


def test_feeds_describe_limits(sf: Salesforce) -> None:
    cid = sf.Contact.create({"LastName": "x"})["id"]
    did = sf.Contact.create({"LastName": "y"})["id"]
    sf.Contact.delete(did)
    start, end = datetime.now(UTC) - timedelta(minutes=5), datetime.now(UTC) + timedelta(minutes=1)
    assert sf.Contact.updated(start, end)["ids"] == [cid]
    assert [d["id"] for d in sf.Contact.deleted(start, end)["deletedRecords"]] == [did]
    desc = sf.Contact.describe()
    fields = {f["name"]: f for f in desc["fields"]}
    assert fields["Record_Id__c"]["externalId"] and not fields["LastName"]["nillable"]
    assert not fields["Id"]["createable"]
    assert [o["name"] for o in sf.describe()["sobjects"]] == ["Contact", "Account", "Lead"]
    lim = sf.limits()
    usage = sf.api_usage["api-usage"]
    assert lim["DailyApiRequests"]["Max"] == usage.total == 100000
    assert lim["DailyApiRequests"]["Remaining"] == usage.total - usage.used


def test_bulk2_round_trip(sf: Salesforce, mock: SalesforceMock) -> None:
    recs = [{"Record_Id__c": str(i), "LastName": f"B{i}"} for i in range(20)]
    recs.append({"Record_Id__c": "bad", "LastName": ""})
    out = sf.bulk2.Contact.upsert(records=recs, external_id_field="Record_Id__c", wait=0.01)
    assert out[0]["numberRecordsProcessed"] == 21 and out[0]["numberRecordsFailed"] == 1
    failed = sf.bulk2.Contact.get_failed_records(out[0]["job_id"])
    assert "REQUIRED_FIELD_MISSING" in failed and "bad" in failed
    ok = sf.bulk2.Contact.get_successful_records(out[0]["job_id"])
    assert ok.count("\n") == 21 and "sf__Created" in ok
    assert len(mock.list_records()) == 20


def test_push_list_and_persistence(tmp_path: Path) -> None:
    path = tmp_path / "sf.json"
    m = SalesforceMock(data=path)
    m.start()
    try:
        demo = m.push(
            {
                "record_id": 303,
                "full_name": "Mock303 User",
                "email_address": "mock@sf.com",
                "status": "active",
            }
        )
        assert (demo["Record_Id__c"], demo["LastName"], demo["Status__c"]) == (
            "303",
            "Mock303 User",
            "active",
        )
        raw = m.push({"LastName": "Raw", "Email": "r@x.com"})
        m.push({"Record_Id__c": "303", "LastName": "Renamed"})
        assert sorted(r["LastName"] for r in m.list_records()) == ["Raw", "Renamed"]
        sf = client(m)
        sf.Contact.delete(raw["Id"])
    finally:
        m.stop()
    m2 = SalesforceMock(data=path)
    m2.start()
    try:
        assert [r["LastName"] for r in m2.list_records()] == ["Renamed"]
        new = m2.push({"LastName": "After"})
        assert new["Id"] not in (demo["Id"], raw["Id"])
        q = client(m2).query_all("SELECT Id FROM Contact", include_deleted=True)
        assert q["totalSize"] == 3
    finally:
        m2.stop()


def test_faults(sf: Salesforce, mock: SalesforceMock) -> None:
    assert mock.set_faults(error_rate=1.0)["error_rate"] == 1.0
    with pytest.raises(SalesforceGeneralError) as err:
        sf.query("SELECT Id FROM Contact")
    assert err.value.status == 503
    mock.set_faults(error_rate=0.0, status_429_retry_after=3)
    with pytest.raises(SalesforceGeneralError) as err:
        sf.query("SELECT Id FROM Contact")
    assert err.value.status == 429
    mock.set_faults(status_429_retry_after=None, drop_rate=1.0)
    with pytest.raises(requests.ConnectionError):
        sf.query("SELECT Id FROM Contact")
    mock.set_faults(drop_rate=0.0, limit_after=1)
    sf.query("SELECT Id FROM Contact")
    with pytest.raises(SalesforceRefusedRequest) as ref:
        sf.query("SELECT Id FROM Contact")
    assert ref.value.content[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
    mock.set_faults(limit_after=None)
    mock.expire_tokens()
    with pytest.raises(SalesforceExpiredSession):
        sf.query("SELECT Id FROM Contact")
    assert client(mock).query("SELECT Id FROM Contact")["totalSize"] == 0
    assert mock.request_count > 8
    with pytest.raises(TypeError):
        mock.set_faults(bogus=1)


def test_latency_fault() -> None:
    m = SalesforceMock(latency=0.05)
    m.start()
    try:
        sf = client(m)
        t0 = datetime.now(UTC)
        sf.query("SELECT Id FROM Contact")
        assert datetime.now(UTC) - t0 >= timedelta(seconds=0.05)
    finally:
        m.stop()
