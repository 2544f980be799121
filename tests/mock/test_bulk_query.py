"""Bulk API 2.0 query jobs of the mock Salesforce: create, poll, CSV result pages with
Sforce-Locator / Sforce-NumberOfRecords, abort, delete; raw requests and simple-salesforce."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from recsync.mock.salesforce import SalesforceMock
from tests.mock.test_mock_salesforce import client

JOBS = "/services/data/v59.0/jobs/query"


@pytest.fixture
def mock() -> Iterator[SalesforceMock]:
    m = SalesforceMock(bulk_query_polls=2)
    m.start()
    for i in range(7):
        m.push({"Record_Id__c": f"r{i}", "LastName": f"Bulk, \"{i}\"", "Email": None})
    m.delete_record("r6")
    yield m
    m.stop()


def _req(mock: SalesforceMock, method: str, path: str, **kw: Any) -> requests.Response:
    headers = {"Authorization": "Bearer " + mock.token, **kw.pop("headers", {})}
    return requests.request(method, mock.url + JOBS + path, headers=headers, timeout=10, **kw)


def _create(mock: SalesforceMock, soql: str, op: str = "query") -> dict[str, Any]:
    resp = _req(mock, "POST", "", json={"operation": op, "query": soql})
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def _rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_query_job_polls_pages_and_is_deleted(mock: SalesforceMock) -> None:
    job = _create(mock, "SELECT Record_Id__c, LastName, Email FROM Contact")
    assert job["state"] == "UploadComplete" and job["jobType"] == "V2Query"
    assert job["object"] == "Contact" and job["operation"] == "query"
    jid = job["id"]
    early = _req(mock, "GET", f"/{jid}/results")
    assert early.status_code == 400 and early.json()[0]["errorCode"] == "INVALIDJOBSTATE"
    states = [_req(mock, "GET", f"/{jid}").json()["state"] for _ in range(3)]
    assert states == ["InProgress", "InProgress", "JobComplete"]
    assert _req(mock, "GET", f"/{jid}").json()["numberRecordsProcessed"] == 6

    rows: list[list[str]] = []
    locator, counts = "", []
    while True:
        params = {"maxRecords": "4", **({"locator": locator} if locator else {})}
        page = _req(mock, "GET", f"/{jid}/results", params=params)
        assert page.status_code == 200 and page.headers["Content-Type"] == "text/csv"
        table = _rows(page.text)
        assert table[0] == ["Record_Id__c", "LastName", "Email"]
        assert page.text.startswith('"Record_Id__c","LastName","Email"\n')
        counts.append(int(page.headers["Sforce-NumberOfRecords"]))
        rows += table[1:]
        locator = page.headers["Sforce-Locator"]
        if locator == "null":
            break
    assert counts == [4, 2]
    assert sorted(r[0] for r in rows) == [f"r{i}" for i in range(6)]  # r6 is deleted
    assert rows[0][1] == 'Bulk, "0"' and rows[0][2] == ""

    assert [j["id"] for j in _req(mock, "GET", "").json()["records"]] == [jid]
    assert _req(mock, "DELETE", f"/{jid}").status_code == 204
    assert _req(mock, "GET", f"/{jid}").status_code == 404


def test_query_all_includes_deleted_records(mock: SalesforceMock) -> None:
    job = _create(mock, "SELECT Record_Id__c, IsDeleted FROM Contact WHERE IsDeleted = true",
                  op="queryAll")
    for _ in range(3):
        _req(mock, "GET", f"/{job['id']}")
    page = _req(mock, "GET", f"/{job['id']}/results")
    assert _rows(page.text)[1:] == [["r6", "true"]]
    assert page.headers["Sforce-Locator"] == "null"


def test_abort_and_refusals(mock: SalesforceMock) -> None:
    job = _create(mock, "SELECT Id FROM Contact")
    aborted = _req(mock, "PATCH", f"/{job['id']}", json={"state": "Aborted"})
    assert aborted.status_code == 200 and aborted.json()["state"] == "Aborted"
    assert _req(mock, "GET", f"/{job['id']}").json()["state"] == "Aborted"
    assert _req(mock, "GET", f"/{job['id']}/results").status_code == 400
    again = _req(mock, "PATCH", f"/{job['id']}", json={"state": "Aborted"})
    assert again.status_code == 400
    assert _req(mock, "DELETE", f"/{job['id']}").status_code == 204

    running = _create(mock, "SELECT Id FROM Contact")
    refused = _req(mock, "DELETE", f"/{running['id']}")
    assert refused.status_code == 400  # still running: abort it first

    bad = _req(mock, "POST", "", json={"operation": "query", "query": "SELECT FROM Contact"})
    assert bad.status_code == 400 and bad.json()[0]["errorCode"] == "MALFORMED_QUERY"
    count = _req(mock, "POST", "", json={"operation": "query",
                                         "query": "SELECT COUNT() FROM Contact"})
    assert count.status_code == 400 and count.json()[0]["errorCode"] == "INVALIDJOB"


def test_simple_salesforce_bulk2_query(mock: SalesforceMock) -> None:
    sf = client(mock)
    pages = list(sf.bulk2.Contact.query("SELECT Id, Record_Id__c FROM Contact",
                                        max_records=5, wait=0))
    assert len(pages) == 2
    keys = [row[1] for page in pages for row in _rows(str(page))[1:]]
    assert sorted(keys) == [f"r{i}" for i in range(6)]
