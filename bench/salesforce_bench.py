"""Salesforce write path benchmark against the mock (``python -m bench.salesforce_bench``).

Measures, in one run against one SalesforceMock on loopback:
(a) the mock's raw requests/s with a keep-alive requests.Session, next to a bare stdlib
    ThreadingHTTPServer answering the same client (this machine's limit for such a server;
    crm-apis.md measured about 1,900/s on an idle machine);
(b) a plain per-record simple-salesforce loop (``sf.Contact.upsert("Record_Id__c/<id>")``);
(c) SalesforceConnector.write for N records in engine-sized batches: records/s and requests
    per 1,000 records; then the ratio (c)/(b).
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from simple_salesforce.api import Salesforce

from recsync.connectors.salesforce import SalesforceConnector
from recsync.messages import WriteOp
from recsync.mock.salesforce import SalesforceMock


class _Bare(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def bare_rate(n: int) -> float:
    """Requests/s of a stdlib server that does nothing, with the same kind of client."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Bare)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with requests.Session() as s:
            url = f"http://127.0.0.1:{srv.server_port}/"
            s.get(url)
            t0 = time.perf_counter()
            for _ in range(n):
                s.get(url).raise_for_status()
            return n / (time.perf_counter() - t0)
    finally:
        srv.shutdown()
        srv.server_close()


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
        bare = bare_rate(args.raw_requests)
        print(f"(a) mock raw: {raw:,.0f} requests/s (keep-alive GET /limits); a bare stdlib "
              f"server on this machine now: {bare:,.0f} requests/s (mock = "
              f"{raw / bare:.2f} of it)")

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
