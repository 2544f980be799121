"""Salesforce write path benchmark against the mock (``python -m bench.salesforce_bench``).

Measures, in one run against one SalesforceMock on loopback:
(a) the mock's raw requests/s with a keep-alive requests.Session;
(b) a plain per-record simple-salesforce loop (``sf.Contact.upsert("Record_Id__c/<id>")``);
(c) SalesforceConnector.write for N records in engine-sized batches: records/s and requests
    per 1,000 records; then the ratio (c)/(b).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from simple_salesforce.api import Salesforce

from recsync.connectors.mock.salesforce import SalesforceMock
from recsync.connectors.salesforce import SalesforceConnector
from recsync.messages import WriteOp


class _Plain(HTTPAdapter):
    def send(self, request: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        request.url = request.url.replace("https://", "http://", 1)
        return super().send(request, **kwargs)


def record(i: int) -> dict[str, Any]:
    return {
        "LastName": f"User{i}",
        "FirstName": "Bench",
        "Email": f"user{i}@example.com",
        "Title": "Engineer",
        "Status__c": "active",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--records", type=int, default=10000)
    ap.add_argument("--loop-records", type=int, default=1000)
    ap.add_argument("--raw-requests", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=2000, help="ops per write call")
    args = ap.parse_args()

    mock = SalesforceMock(daily_limit=10_000_000)
    mock.start()
    try:
        s = requests.Session()
        s.mount("https://", _Plain())
        tok = s.post(
            mock.url + "/services/oauth2/token",
            data={"grant_type": "client_credentials", "client_id": "b", "client_secret": "b"},
        ).json()
        hdr = {"Authorization": "Bearer " + tok["access_token"]}

        t0 = time.perf_counter()
        for _ in range(args.raw_requests):
            s.get(mock.url + "/services/data/v59.0/limits", headers=hdr).raise_for_status()
        raw = args.raw_requests / (time.perf_counter() - t0)
        print(f"(a) mock raw: {raw:,.0f} requests/s (keep-alive GET /limits)")

        sf = Salesforce(
            instance_url=tok["instance_url"],
            session_id=tok["access_token"],
            session=s,
            version="59.0",
        )
        t0 = time.perf_counter()
        for i in range(args.loop_records):
            sf.Contact.upsert(f"Record_Id__c/loop{i}", record(i))
        loop = args.loop_records / (time.perf_counter() - t0)
        print(
            f"(b) per-record simple-salesforce loop: {loop:,.0f} records/s "
            f"({args.loop_records} records)"
        )

        with tempfile.TemporaryDirectory() as tmp:
            conn = SalesforceConnector(
                {"key": "Record_Id__c", "mock": True, "instance_url": mock.url}, Path(tmp)
            )
            conn.open()
            ops = [WriteOp(str(i), "upsert", record(i)) for i in range(args.records)]
            before = mock.request_count
            t0 = time.perf_counter()
            for start in range(0, len(ops), args.batch):
                res = conn.write(ops[start : start + args.batch])
                assert all(r.error is None for r in res), res[:3]
            elapsed = time.perf_counter() - t0
            reqs = mock.request_count - before
            conn.close()
        rate = args.records / elapsed
        print(
            f"(c) SalesforceConnector.write: {rate:,.0f} records/s, {args.records} records "
            f"in batches of {args.batch}, {reqs} requests = "
            f"{reqs * 1000 / args.records:.1f} per 1,000 records"
        )
        print(f"ratio (c)/(b): {rate / loop:.1f}x (target >= 30x; <= 6 requests per 1,000)")
    finally:
        mock.stop()


if __name__ == "__main__":
    main()
