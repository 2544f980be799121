"""The mock Salesforce answers as the REST API documentation says, for any client.

Requests are sent as plain JSON with requests (as another client library would) and, where
it has a call for it, with simple-salesforce.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
from simple_salesforce.api import Salesforce
from simple_salesforce.exceptions import SalesforceMalformedRequest

from recsync.mock.salesforce import SalesforceMock
from tests.mock.test_mock_salesforce import client

V = "/services/data/v59.0"


@pytest.fixture
def mock() -> Iterator[SalesforceMock]:
    m = SalesforceMock()
    m.start()
    yield m
    m.stop()


def _call(mock: SalesforceMock, method: str, path: str, body: Any = None) -> requests.Response:
    return requests.request(
        method,
        mock.url + V + path,
        json=body,
        headers={"Authorization": "Bearer " + mock.token},
        timeout=10,
    )


def _contacts(mock: SalesforceMock, n: int) -> list[str]:
    records = [
        {"attributes": {"type": "Contact"}, "LastName": f"Case{i}", "Record_Id__c": f"c{i}"}
        for i in range(n)
    ]
    res = _call(mock, "POST", "/composite/sobjects", {"records": records}).json()
    assert all(r["success"] for r in res), res
    return [r["id"] for r in res]


# ---------------------------------------------------------------- case-insensitive fields


def test_collections_patch_with_lower_case_id_updates_the_records(mock: SalesforceMock) -> None:
    ids = _contacts(mock, 2)
    body = {  # as in the Salesforce docs' own example: "id", not "Id"
        "allOrNone": False,
        "records": [
            {"attributes": {"type": "Contact"}, "id": ids[0], "email": "first@example.com"},
            {"attributes": {"type": "Contact"}, "ID": ids[1], "TITLE": "Boss"},
        ],
    }
    res = _call(mock, "PATCH", "/composite/sobjects", body).json()
    assert [r["success"] for r in res] == [True, True], res
    assert [r["id"] for r in res] == ids
    got = {r["Id"]: r for r in mock.list_records()}
    assert got[ids[0]]["Email"] == "first@example.com"
    assert got[ids[1]]["Title"] == "Boss"


def test_lower_case_fields_in_create_upsert_and_soql_answer_canonical_names(
    mock: SalesforceMock,
) -> None:
    created = _call(mock, "POST", "/sobjects/Contact", {"lastname": "Low", "EMAIL": "l@x.io"})
    assert created.status_code == 201, created.text
    up = _call(
        mock,
        "PATCH",
        "/composite/sobjects/Contact/record_id__c",
        {"records": [{"attributes": {"type": "Contact"}, "record_id__c": "u1",
                      "lastname": "Upserted"}]},
    ).json()
    assert up[0]["success"] and up[0]["created"], up
    q = _call(mock, "GET", "/query?q=select+id,+lastname,+record_id__c+from+contact+"
              "where+LASTNAME+=+'upserted'").json()
    assert q["totalSize"] == 1
    rec = q["records"][0]
    assert set(rec) == {"attributes", "Id", "LastName", "Record_Id__c"}
    assert rec["LastName"] == "Upserted" and rec["Record_Id__c"] == "u1"
    one = _call(mock, "GET", f"/sobjects/Contact/{created.json()['id']}?fields=lastname,email")
    assert {k: v for k, v in one.json().items() if k != "attributes"} == {
        "LastName": "Low", "Email": "l@x.io"
    }


# ---------------------------------------------------------------- retrieve with a body


def test_collections_retrieve_with_a_request_body(mock: SalesforceMock) -> None:
    ids = _contacts(mock, 3)
    missing = ids[0][:3] + "0" * 12
    resp = _call(
        mock,
        "POST",
        "/composite/sobjects/Contact",
        {"ids": [ids[2], missing, ids[0]], "fields": ["id", "LastName", "record_id__c"]},
    )
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out[1] is None
    assert [(r["Id"], r["LastName"], r["Record_Id__c"]) for r in (out[0], out[2])] == [
        (ids[2], "Case2", "c2"),
        (ids[0], "Case0", "c0"),
    ]
    assert out[0]["attributes"]["type"] == "Contact"
    bad = _call(mock, "POST", "/composite/sobjects/Contact", {"ids": ids, "fields": ["Nope"]})
    assert bad.status_code == 400 and bad.json()[0]["errorCode"] == "INVALID_FIELD"
    empty = _call(mock, "POST", "/composite/sobjects/Contact", {"ids": ids})
    assert empty.status_code == 400 and "fields" in empty.json()[0]["message"]


# ---------------------------------------------------------------- SOQL aggregates


def test_count_queries(mock: SalesforceMock) -> None:
    _contacts(mock, 5)
    sf: Salesforce = client(mock)
    plain = sf.query("SELECT COUNT() FROM Contact")
    assert plain == {"totalSize": 5, "done": True, "records": []}
    where = sf.query("SELECT count() FROM Contact WHERE LastName IN ('Case1', 'Case3')")
    assert where["totalSize"] == 2 and where["records"] == []
    agg = sf.query("SELECT COUNT(Id), COUNT(Email) emails, COUNT_DISTINCT(LastName) FROM Contact")
    assert agg["totalSize"] == 1 and agg["done"] is True
    assert agg["records"] == [
        {"attributes": {"type": "AggregateResult"}, "expr0": 5, "emails": 0, "expr2": 5}
    ]


@pytest.mark.parametrize(
    ("q", "column", "what"),
    [
        ("SELECT Id FROM Contact GROUP BY LastName", 24, "unexpected token: 'GROUP'"),
        ("SELECT COUNT(), Id FROM Contact", 8, "COUNT() must be the only element"),
        ("SELECT SUM(Id) FROM Contact", 8, "unsupported function"),
        ("SELECT Id, COUNT(Id) FROM Contact", 8, "Field must be grouped or aggregated"),
        ("SELECT Id FROM Contact WHERE", 29, "end of query"),
    ],
)
def test_unsupported_soql_is_malformed_query_with_the_position(
    mock: SalesforceMock, q: str, column: int, what: str
) -> None:
    sf: Salesforce = client(mock)
    with pytest.raises(SalesforceMalformedRequest) as err:
        sf.query(q)
    content = err.value.content[0]
    assert content["errorCode"] == "MALFORMED_QUERY"
    message = content["message"]
    assert f"ERROR at Row:1:Column:{column}" in message and what in message
    line, caret = message.split("\n")[:2]
    assert line == q and caret == " " * (column - 1) + "^"
