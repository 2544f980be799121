"""End to end: SQLite <-> Salesforce and SQLite <-> Outreach through a real `recsyncd`
process against the project's mock CRM servers, started in the test process so a test can
push, list and inject faults on them directly."""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from recsync.mock.outreach import OutreachMock
from recsync.mock.salesforce import SalesforceMock
from tests.e2e.helpers import make_users, recsyncd_cmd, sql, users, wait_for, write_config

SQLITE_A = '{ connector = "sqlite", path = "a.sqlite", table = "users", key = "record_id" }'

# The repo's rules.toml rule sets contacts_sf and prospects, under the pipeline's name.
SF_RULES = """
[contacts]
a_to_b = ["create", "update", "delete"]
b_to_a = ["create", "update", "delete"]
conflict = "{conflict}"
[contacts.mappings]
record_id = "Record_Id__c"
full_name = "LastName"
email_address = "Email"
status = "Status__c"
[contacts.filters]
status = {{ in = ["active", "pending"] }}
"""
OUTREACH_RULES = """
[contacts]
a_to_b = ["create", "update", "delete"]
b_to_a = ["create", "update"]
conflict = "{conflict}"
[contacts.mappings]
record_id = "externalId"
full_name = "lastName"
email_address = "email"
"""
SUMMARY_ZERO = "a->b 0 synced, b->a 0 synced"


def seed_rows(n: int, start: int = 1) -> list[tuple[object, ...]]:
    """Every 5th user is inactive (filtered out), every 7th pending."""
    return [
        (
            i,
            f"User {i}",
            f"u{i}@example.com",
            "inactive" if i % 5 == 0 else "pending" if i % 7 == 0 else "active",
        )
        for i in range(start, start + n)
    ]


# ---------------------------------------------------------------------------- the CRMs


@dataclass
class Crm:
    """One mock CRM started in the test process, and how recsyncd's side b reaches it."""

    kind: str
    mock: Any

    @property
    def side_b(self) -> str:
        if self.kind == "salesforce":
            return (
                '{ connector = "salesforce", mock = true, key = "Record_Id__c", '
                f'instance_url = "{self.mock.url}", daily_reserve = 0 }}'
            )
        return (
            '{ connector = "outreach", mock = false, '
            f'base_url = "{self.mock.url}", client_id = "{self.mock.client_id}", '
            f'client_secret = "{self.mock.client_secret}", '
            f'refresh_token = "{self.mock.refresh_token}", reconcile_interval = 0 }}'
        )

    def rules(self, conflict: str = "last_writer_wins") -> str:
        text = SF_RULES if self.kind == "salesforce" else OUTREACH_RULES
        return text.format(conflict=conflict)

    # The CRM's records as SQLite rows would map them: key -> (name, email[, status]).

    def key_of(self, rec: dict[str, Any]) -> str:
        return str(rec["Record_Id__c"] if self.kind == "salesforce" else rec["externalId"])

    def records(self) -> list[dict[str, Any]]:
        return self.mock.list_records()  # type: ignore[no-any-return]

    def rows(self) -> dict[str, tuple[str, ...]]:
        out: dict[str, tuple[str, ...]] = {}
        for rec in self.records():
            if self.kind == "salesforce":
                out[self.key_of(rec)] = (rec["LastName"], rec["Email"], rec["Status__c"])
            else:
                out[self.key_of(rec)] = (rec["lastName"], rec["email"])
        return out

    def stamps(self) -> dict[str, str]:
        """key -> last modification stamp (SystemModstamp / updatedAt)."""
        field = "SystemModstamp" if self.kind == "salesforce" else "updatedAt"
        return {self.key_of(r): r[field] for r in self.records()}

    def push(self, key: int | str, name: str, email: str, status: str = "active") -> None:
        if self.kind == "salesforce":
            self.mock.push(
                {"record_id": str(key), "full_name": name, "email_address": email, "status": status}
            )
        else:
            self.mock.push({"externalId": str(key), "lastName": name, "email": email})

    def duplicates(self) -> dict[str, int]:
        counts = Counter(self.key_of(r) for r in self.records())
        return {k: n for k, n in counts.items() if n > 1}


def expected(rows: dict[str, tuple[str, ...]], kind: str) -> dict[str, tuple[str, ...]]:
    """SQLite users (key -> name, email, status) as the CRM should hold them (contacts_sf
    filters on status; prospects has no filter and no status)."""
    if kind == "salesforce":
        return {k: v for k, v in rows.items() if v[2] in ("active", "pending")}
    return {k: v[:2] for k, v in rows.items()}


@pytest.fixture
def salesforce(tmp_path: Path) -> Iterator[Crm]:
    # A data file: the mock rewrites it after every change, so its mtime shows any write.
    mock = SalesforceMock(data=tmp_path / "salesforce.json")
    mock.start()
    try:
        yield Crm("salesforce", mock)
    finally:
        mock.stop()


@pytest.fixture
def outreach() -> Iterator[Crm]:
    mock = OutreachMock()
    mock.start()
    try:
        yield Crm("outreach", mock)
    finally:
        mock.stop()


@pytest.fixture(params=["salesforce", "outreach"])
def crm(request: pytest.FixtureRequest) -> Crm:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------- recsyncd


def env_for(folder: Path) -> dict[str, str]:
    env = dict(os.environ, STATE_DIRECTORY=str(folder / "state"))
    env.pop("NOTIFY_SOCKET", None)
    env.pop("CREDENTIALS_DIRECTORY", None)
    return env


def once(folder: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        recsyncd_cmd(folder, folder / "state", "--once", "--timeout", str(timeout - 10)),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env_for(folder),
    )


def ok(result: subprocess.CompletedProcess[str], code: int = 0) -> str:
    assert result.returncode == code, result.stdout + result.stderr
    return result.stdout


def setup_pipeline(
    folder: Path,
    crm: Crm,
    rows: list[tuple[object, ...]],
    *,
    conflict: str = "last_writer_wins",
    settings: str = "",
    side_b: str | None = None,
) -> Path:
    make_users(folder / "a.sqlite", rows)
    write_config(
        folder, SQLITE_A, side_b or crm.side_b, rules=crm.rules(conflict), settings=settings
    )
    return folder / "a.sqlite"


def state_rows(folder: Path, statement: str) -> list[tuple[Any, ...]]:
    return sql(folder / "state" / "test__p.sqlite", statement)


# ---------------------------------------------------------------------------- 1. both ways


def test_both_ways_creates_updates_deletes(tmp_path: Path, crm: Crm) -> None:
    a = setup_pipeline(tmp_path, crm, seed_rows(30))
    out = ok(once(tmp_path))
    want = expected(users(a), crm.kind)
    assert f"a->b {len(want)} synced" in out
    assert crm.rows() == want
    assert not crm.duplicates()

    # CRM side: a new record and a change of an existing one.
    crm.push(500, "From CRM", "crm@example.com")
    crm.push(3, "Renamed in CRM", "u3@example.com")
    # SQLite side: insert, update, delete.
    sql(
        a,
        "INSERT INTO users (record_id, full_name, email_address, status) "
        "VALUES (100, 'New', 'new@example.org', 'pending')",
    )
    sql(a, "UPDATE users SET email_address = 'four@example.org' WHERE record_id = 4")
    sql(a, "DELETE FROM users WHERE record_id = 6")
    out = ok(once(tmp_path))
    assert "a->b 3 synced, b->a 2 synced" in out, out

    db = users(a)
    assert db["500"][:2] == ("From CRM", "crm@example.com")
    assert db["3"][0] == "Renamed in CRM"
    assert crm.rows() == expected(db, crm.kind)
    assert "6" not in crm.rows()
    assert not crm.duplicates()
    if crm.kind == "salesforce":
        gone = [r for r in crm.mock.store.rows("Contact") if r["Record_Id__c"] == "6"]
        assert [r["IsDeleted"] for r in gone] == [True]  # in the recycle bin

        # contacts_sf syncs deletes b -> a too.
        assert crm.mock.delete_record("8")
        out = ok(once(tmp_path))
        assert "b->a 1 synced" in out, out
        assert "8" not in users(a)
        assert crm.rows() == expected(users(a), crm.kind)


# ---------------------------------------------------------------------------- 2. no loops


def test_second_run_writes_nothing(tmp_path: Path, crm: Crm) -> None:
    a = setup_pipeline(tmp_path, crm, seed_rows(30))
    crm.push(900, "Only in CRM", "crm900@example.com")
    ok(once(tmp_path))
    assert crm.rows() == expected(users(a), crm.kind)
    table = sql(a, "SELECT * FROM users ORDER BY record_id")
    stamps = crm.stamps()
    data = tmp_path / "salesforce.json"
    data_stat = os.stat(data) if crm.kind == "salesforce" else None
    requests = crm.mock.request_count

    out = ok(once(tmp_path))
    assert SUMMARY_ZERO in out, out
    assert crm.stamps() == stamps  # no record of the CRM was written
    if data_stat is not None:  # SystemModstamp has whole seconds: the data file tells
        after = os.stat(data)
        assert (after.st_ino, after.st_mtime_ns) == (data_stat.st_ino, data_stat.st_mtime_ns)
    assert sql(a, "SELECT * FROM users ORDER BY record_id") == table
    # Only the start-up and polling reads: a token, a describe / probe, a few polls.
    assert crm.mock.request_count - requests <= 12, crm.mock.request_count - requests


def test_a_side_the_rules_sync_nothing_from_is_not_polled(
    tmp_path: Path, salesforce: Crm
) -> None:
    crm = salesforce
    make_users(tmp_path / "a.sqlite", seed_rows(20))
    one_way = crm.rules().replace(
        'b_to_a = ["create", "update", "delete"]', "b_to_a = []")
    write_config(tmp_path, SQLITE_A, crm.side_b, rules=one_way)
    crm.push(900, "Only in CRM", "crm900@example.com")
    seen: list[str] = []
    handle = crm.mock.handle

    def logged(method: str, target: str, headers: Any, body: bytes) -> Any:
        seen.append(f"{method} {target.split('?')[0]}")
        return handle(method, target, headers, body)

    crm.mock.handle = logged  # type: ignore[method-assign]
    ok(once(tmp_path))
    assert "900" not in users(tmp_path / "a.sqlite")
    assert not [r for r in seen if "/query" in r], seen
    assert crm.rows() == expected(users(tmp_path / "a.sqlite"), crm.kind) | {
        "900": ("Only in CRM", "crm900@example.com", "active")}



def test_a_mapping_to_a_field_salesforce_does_not_have_stops_the_pipeline(
    tmp_path: Path, salesforce: Crm
) -> None:
    crm = salesforce
    make_users(tmp_path / "a.sqlite", seed_rows(5))
    typo = crm.rules().replace('"LastName"', '"LastNmae"')
    write_config(tmp_path, SQLITE_A, crm.side_b, rules=typo)
    out = once(tmp_path).stdout
    assert "test/p: error: rules.toml [contacts.mappings]" in out, out
    assert "side b (salesforce) has no field 'LastNmae'" in out, out
    assert crm.rows() == {}  # no Contact created without its name

# ---------------------------------------------------------------------------- 3. conflicts


@pytest.mark.parametrize(("policy", "winner"), [("a_wins", "from A"), ("b_wins", "from CRM")])
def test_conflict_resolved_by_policy_and_recorded(
    tmp_path: Path, crm: Crm, policy: str, winner: str
) -> None:
    a = setup_pipeline(tmp_path, crm, seed_rows(5), conflict=policy)
    ok(once(tmp_path))
    sql(a, "UPDATE users SET full_name = 'from A' WHERE record_id = 2")
    crm.push(2, "from CRM", "u2@example.com")
    out = ok(once(tmp_path))
    assert "1 conflicts" in out, out
    assert users(a)["2"][0] == winner
    assert crm.rows()["2"][0] == winner
    assert crm.rows() == expected(users(a), crm.kind)
    history = state_rows(tmp_path, "SELECT event, detail FROM history WHERE key = '2'")
    assert any(
        event == "conflict" and policy[0] + " wins" in detail for event, detail in history
    ), history


# ---------------------------------------------------------------------------- 4. faults


FAULTS: dict[str, dict[str, Any]] = {
    "error_500": {"error_rate": 0.5, "error_status": 500},
    "error_503": {"error_rate": 0.5, "error_status": 503},
    "latency": {"latency": 0.2},
    "status_429": {"status_429_retry_after": 1},
    "limit_exceeded": {"limit_after": 3},
    "dropped": {"drop_rate": 0.3},
}
CLEAR: dict[str, Any] = {
    "error_rate": 0.0,
    "latency": 0.0,
    "status_429_retry_after": None,
    "drop_rate": 0.0,
}


# Requests the mock must have answered under the fault before it is cleared.
HITS = {"error_500": 20, "error_503": 20, "latency": 10, "status_429": 3, "dropped": 20}


def start_once(folder: Path, timeout: float = 40) -> subprocess.Popen[str]:
    return subprocess.Popen(
        recsyncd_cmd(folder, folder / "state", "--once", "--timeout", str(timeout)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_for(folder),
    )


@pytest.mark.parametrize(
    ("kind", "fault"),
    [
        (kind, fault)
        for kind in ("salesforce", "outreach")
        for fault in FAULTS
        if kind == "salesforce" or fault != "limit_exceeded"
    ],
)  # a Salesforce daily limit
def test_fault_then_recovery_loses_and_duplicates_nothing(
    tmp_path: Path, request: pytest.FixtureRequest, kind: str, fault: str
) -> None:
    crm: Crm = request.getfixturevalue(kind)
    a = setup_pipeline(
        tmp_path, crm, seed_rows(30), settings="max_attempts = 1000\nbatch_size = 10\n"
    )
    for i in range(700, 705):
        crm.push(i, f"CRM {i}", f"crm{i}@example.com")
    crm.mock.set_faults(**FAULTS[fault])
    before = crm.mock.request_count
    if fault == "limit_exceeded":
        # --timeout 8: it cannot finish (the rest wait for the allocation's 60 s re-check);
        # 8 s leave a loaded machine time to reach the reserve (3 s did not, once in CI)
        result = once(tmp_path, timeout=18)
        assert result.returncode == 3, result.stdout + result.stderr
        assert " 0 failed" in result.stdout, result.stdout
        assert state_rows(tmp_path, "SELECT key FROM queue WHERE state = 'ready'")
        crm.mock.set_faults(limit_after=None)
        # Deferred for the connector's 60 s re-check of the allocation (kept across a
        # restart): let that time pass instead of waiting it.
        sql(tmp_path / "state" / "test__p.sqlite", "UPDATE queue SET next_at = 0")
    else:
        # One run that meets the fault, then sees it go away and finishes.
        proc = start_once(tmp_path)
        try:
            wait_for(
                lambda: crm.mock.request_count >= before + HITS[fault] or proc.poll() is not None,
                what="requests under the fault",
            )
            crm.mock.set_faults(**CLEAR)
            out, err = proc.communicate(timeout=45)
        finally:
            proc.kill()
        assert proc.returncode == 0, out + err
        assert " 0 failed" in out, out

    out = ok(once(tmp_path))
    assert " 0 failed, 0 conflicts, 0 pending" in out, out
    if fault != "limit_exceeded":
        assert SUMMARY_ZERO in out, out  # the run under the fault did it all
    db = users(a)
    assert {str(i) for i in range(1, 31)} | {str(i) for i in range(700, 705)} == set(db)
    assert crm.rows() == expected(db, crm.kind)  # nothing lost either way
    assert not crm.duplicates()  # nothing created twice
    assert len(crm.records()) == len(expected(db, crm.kind))
    assert not state_rows(tmp_path, "SELECT key FROM queue")


# ---------------------------------------------------------------------------- 5. daily limit


def test_salesforce_daily_limit_stops_before_the_allocation_runs_out(tmp_path: Path) -> None:
    limit, reserve = 30, 20
    data = tmp_path / "salesforce.json"
    mock = SalesforceMock(data=data, daily_limit=limit)
    mock.start()
    try:
        crm = Crm("salesforce", mock)
        side_b = crm.side_b.replace("daily_reserve = 0", f"daily_reserve = {reserve}")
        # 40 records in writes of 2: 20 requests needed, 10 allowed.
        a = setup_pipeline(tmp_path, crm, seed_rows(50), settings="batch_size = 2\n", side_b=side_b)
        # --timeout 8: it cannot finish (the rest wait for the allocation's 60 s re-check);
        # 8 s leave a loaded machine time to reach the reserve (3 s did not, once in CI)
        result = once(tmp_path, timeout=18)
        assert result.returncode == 3, result.stdout + result.stderr
        assert " 0 failed" in result.stdout, result.stdout
        used = int(mock.limit_info().split("=")[1].split("/")[0])
        assert used <= limit - reserve, mock.limit_info()  # stopped at the reserve
        # Every request but the one token grant counted against the allocation: none was
        # answered REQUEST_LIMIT_EXCEEDED.
        assert mock.request_count - used == 1, (mock.request_count, used)
        want = expected(users(a), "salesforce")
        synced = len(crm.rows())
        assert 0 < synced < len(want)
        queue = state_rows(tmp_path, "SELECT state, attempts, next_at, last_error FROM queue")
        assert len(queue) == len(want) - synced
        assert {(state, attempts) for state, attempts, _, _ in queue} == {("ready", 0)}
        assert any("daily_reserve" in (err or "") for *_, err in queue), queue
    finally:
        mock.stop()

    # The allocation is raised (the mock restarted with a bigger one on its data file).
    mock = SalesforceMock(data=data, daily_limit=100000)
    mock.start()
    try:
        crm = Crm("salesforce", mock)
        assert len(crm.rows()) == synced
        side_b = crm.side_b.replace("daily_reserve = 0", f"daily_reserve = {reserve}")
        write_config(tmp_path, SQLITE_A, side_b, rules=crm.rules(), settings="batch_size = 2\n")
        # The records were deferred for the connector's 60 s re-check of the allocation, and
        # the deferral is kept across a restart: let that time pass instead of waiting it.
        sql(tmp_path / "state" / "test__p.sqlite", "UPDATE queue SET next_at = 0")
        out = ok(once(tmp_path))
        assert f"a->b {len(want) - synced} synced" in out, out
        assert " 0 failed, 0 conflicts, 0 pending" in out, out
        assert crm.rows() == expected(users(a), "salesforce")
        assert not crm.duplicates()
        assert not state_rows(tmp_path, "SELECT key FROM queue")
    finally:
        mock.stop()


# ---------------------------------------------------------------------------- 6. tokens


def test_expired_token_between_runs_is_renewed(tmp_path: Path, crm: Crm) -> None:
    a = setup_pipeline(tmp_path, crm, seed_rows(10))
    ok(once(tmp_path))
    crm.mock.expire_tokens()
    sql(a, "UPDATE users SET full_name = 'After expiry' WHERE record_id = 1")
    crm.push(600, "New after expiry", "n600@example.com")
    out = ok(once(tmp_path))
    assert "a->b 1 synced, b->a 1 synced, 0 failed" in out, out
    assert crm.rows() == expected(users(a), crm.kind)
    if crm.kind == "outreach":  # the rotated refresh token was kept in $STATE_DIRECTORY
        (stored,) = (tmp_path / "state").glob("outreach-*.json")
        assert crm.mock.refresh_token in stored.read_text()


def test_expired_token_during_a_run_is_renewed(tmp_path: Path, crm: Crm) -> None:
    a = setup_pipeline(tmp_path, crm, seed_rows(40), settings="batch_size = 4\n")
    crm.mock.set_faults(latency=0.03)  # a run long enough to expire the token within it
    proc = start_once(tmp_path)
    try:
        wait_for(lambda: len(crm.records()) >= 8, what="the first records")
        crm.mock.expire_tokens()
        seen = len(crm.records())
        out, err = proc.communicate(timeout=40)
    finally:
        proc.kill()
    assert proc.returncode == 0, out + err
    assert " 0 failed" in out, out
    want = expected(users(a), crm.kind)
    assert seen < len(want), "the run ended before the token was expired"
    assert crm.rows() == want
    assert not crm.duplicates()


# ---------------------------------------------------------------------------- keys made by A


def push_without_key(crm: Crm, name: str, email: str) -> None:
    """A record created by hand in the CRM: no external id (Record_Id__c, externalId)."""
    if crm.kind == "salesforce":
        crm.mock.push({"LastName": name, "Email": email, "Status__c": "active"})
    else:
        crm.mock.push({"lastName": name, "email": email})


def test_a_crm_record_without_the_a_key_becomes_a_new_row_whose_key_goes_back(
    tmp_path: Path, crm: Crm
) -> None:
    a = setup_pipeline(tmp_path, crm, seed_rows(3))
    ok(once(tmp_path))
    push_without_key(crm, "No Key", "nokey@crm.org")
    out = ok(once(tmp_path))
    assert "b->a 1 synced" in out and "0 failed" in out, out
    (row,) = sql(a, "SELECT record_id, full_name, email_address FROM users "
                    "WHERE email_address = 'nokey@crm.org'")
    assert row[0] == 4 and row[1] == "No Key"  # a new key from the INTEGER PRIMARY KEY
    email = "Email" if crm.kind == "salesforce" else "email"
    (record,) = [r for r in crm.records() if r[email] == "nokey@crm.org"]
    assert crm.key_of(record) == "4" and not crm.duplicates()
    links = state_rows(tmp_path, "SELECT key, a_hash IS NOT NULL, b_hash IS NOT NULL "
                                 "FROM links WHERE key NOT IN ('1', '2', '3')")
    assert links == [("4", 1, 1)]
    # settled: nothing more to write, and a change on either side syncs under the new key
    assert SUMMARY_ZERO in ok(once(tmp_path))
    crm.push(4, "Renamed in CRM", "nokey@crm.org")
    ok(once(tmp_path))
    assert users(a)["4"][0] == "Renamed in CRM"
    assert crm.rows() == expected(users(a), crm.kind)


def test_a_contact_without_the_a_key_fails_saying_why_when_a_cannot_make_keys(
    tmp_path: Path, salesforce: Crm
) -> None:
    strict = """
    CREATE TABLE users (
        record_id INTEGER NOT NULL UNIQUE,
        full_name TEXT NOT NULL,
        email_address TEXT,
        status TEXT NOT NULL DEFAULT 'active'
    ) STRICT
    """
    make_users(tmp_path / "a.sqlite", seed_rows(2), schema=strict)
    write_config(tmp_path, SQLITE_A, salesforce.side_b, rules=salesforce.rules())
    ok(once(tmp_path))
    salesforce.mock.push({"LastName": "No Key", "Email": "nokey@crm.org", "Status__c": "active"})
    out = ok(once(tmp_path), code=1)
    assert "1 failed" in out, out
    ((key, error),) = state_rows(tmp_path, "SELECT key, last_error FROM queue "
                                           "WHERE state = 'failed'")
    assert key.startswith("sf-")
    assert "cannot make keys itself" in error and "not an INTEGER PRIMARY KEY" in error
