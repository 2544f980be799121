"""recsyncd as a service: every command through the real `recsync` CLI against a real
recsyncd process, hot reload, SIGHUP, SIGTERM drain, sd_notify on a test NOTIFY_SOCKET."""

from __future__ import annotations

import ctypes
import json
import os
import platform
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import make_users, recsyncd_cmd, run_once, sql, users, wait_for

RULES = """
[contacts]
a_to_b = ["create", "update", "delete"]
b_to_a = ["create", "update", "delete"]
[contacts.mappings]
record_id = "record_id"
full_name = "full_name"
email_address = "email_address"
status = "status"
[contacts.filters]
status = { in = ["active", "pending"] }
"""
SETTINGS = """
[defaults]
batch_size = 100  # the team's note: kept small
flush_interval = 0.05
poll_interval = 0.1
retry_base_delay = 0.05
retry_max_delay = 0.2
[defaults.rate_limit]
max_requests = 100000
window_seconds = 1

[customers.acme.pipelines.people]
rules = "contacts"
a = { connector = "sqlite", path = "a.sqlite", table = "users", key = "record_id" }
b = { connector = "sqlite", path = "b.sqlite", table = "users", key = "record_id" }
"""
# Side B refuses records whose key is listed in `blocked` (a real constraint, in SQL).
BLOCKING = """
CREATE TABLE blocked (record_id INTEGER PRIMARY KEY);
CREATE TRIGGER refuse BEFORE INSERT ON users
WHEN EXISTS (SELECT 1 FROM blocked WHERE record_id = NEW.record_id)
BEGIN SELECT RAISE(ABORT, 'record is blocked by the target'); END;
"""


@dataclass
class Service:
    folder: Path
    proc: subprocess.Popen[str]
    notify: socket.socket
    endpoint: str
    messages: list[str] = field(default_factory=list)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "recsync.cli", "--endpoint", self.endpoint, *args],
            capture_output=True, text=True, timeout=60)
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.cli("--json", *args).stdout)

    def listen(self) -> None:
        """Read every datagram from the test NOTIFY_SOCKET, as systemd does. Unread, the
        watchdog pings fill the socket's queue (net.unix.max_dgram_qlen, 10) and the
        daemon's next sd_notify blocks: its SIGTERM drain never ends."""
        self.notify.settimeout(0.2)

        def read() -> None:
            while self.notify.fileno() != -1:
                try:
                    self.messages.append(self.notify.recv(4096).decode())
                except (TimeoutError, OSError):
                    pass

        threading.Thread(target=read, daemon=True).start()

    def notified(self, field_: str, timeout: float = 20.0) -> str:
        """Wait for a datagram on the test NOTIFY_SOCKET that carries ``field_``."""

        def seen() -> str | None:
            return next((m for m in list(self.messages) if field_ in m.split("\n")), None)

        return wait_for(seen, timeout=timeout, what=f"{field_} on NOTIFY_SOCKET")  # type: ignore[no-any-return]


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    make_users(tmp_path / "a.sqlite", [(i, f"User {i}", f"u{i}@x.org", "active")
                                       for i in range(1, 21)])
    make_users(tmp_path / "b.sqlite", [])
    with sqlite3.connect(tmp_path / "b.sqlite") as db:
        db.executescript(BLOCKING)
    db.close()
    (tmp_path / "customer_settings.toml").write_text(SETTINGS)
    (tmp_path / "rules.toml").write_text(RULES)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    env = dict(os.environ, RUNTIME_DIRECTORY=str(tmp_path / "run"),
               NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="1000000",
               LOGS_DIRECTORY=str(tmp_path / "logs"))
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen(recsyncd_cmd(tmp_path, tmp_path / "state"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    svc = Service(tmp_path, proc, notify, f"ipc://{tmp_path}/run/control.sock")
    svc.listen()
    try:
        svc.notified("READY=1")
        yield svc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        notify.close()


def synced(svc: Service) -> bool:
    return users(svc.folder / "a.sqlite") == users(svc.folder / "b.sqlite")


def test_status_stats_crms_schema_and_rules_through_the_cli(service: Service) -> None:
    wait_for(lambda: synced(service), what="the first sync")
    # the overview figures are those of the last stats tick: at most a second old
    wait_for(lambda: service.json("status")["pipelines"][0]["synced_a_to_b"] == 20,
             what="the counts in status")
    (pipeline,) = service.json("status")["pipelines"]
    assert pipeline["pipeline"] == "acme/people" and pipeline["state"] == "running"
    assert "acme/people" in service.cli("status").stdout
    record = service.json("status", "7")["records"][0]
    assert (record["state"], record["on_a"], record["on_b"]) == ("synced", True, True)
    wait_for(lambda: service.json("stats"), what="a stats tick")
    (stats,) = service.json("stats")
    assert stats["circuit"] == {"a": "closed", "b": "closed"} and stats["synced"] == 20
    names = [c["name"] for c in service.json("crms", "list")]
    assert {"sqlite", "file"} <= set(names)
    assert "busy_timeout" in service.cli("crms", "schema", "sqlite").stdout
    assert service.cli("crms", "schema", "nope", check=False).returncode == 1
    assert "contacts" in service.json("rules", "show")
    test = service.json("rules", "test", "contacts", '{"record_id": 1, "status": "gone"}')
    assert test["matches"] is False
    unknown = service.cli("status", "999999", check=False)
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr


def test_failed_record_is_listed_and_retried_after_the_cause_is_fixed(
    service: Service
) -> None:
    wait_for(lambda: synced(service), what="the first sync")
    sql(service.folder / "b.sqlite", "INSERT INTO blocked VALUES (42)")
    sql(service.folder / "a.sqlite", "INSERT INTO users (record_id, full_name, email_address, "
                                     "status) VALUES (42, 'Blocked', 'b@x.org', 'active')")
    failed = wait_for(lambda: service.json("failed"), what="the record to fail")
    assert failed[0]["key"] == "42" and "blocked by the target" in failed[0]["last_error"]
    assert "42" in service.cli("failed", "acme").stdout
    sql(service.folder / "b.sqlite", "DELETE FROM blocked")
    assert "queued for retry" in service.cli("retry", "42").stdout
    wait_for(lambda: "42" in users(service.folder / "b.sqlite"), what="the retried record")
    assert service.json("status", "42")["records"][0]["state"] == "synced"
    history = [h["event"] for h in service.json("status", "42")["records"][0]["history"]]
    assert history[:2] == ["failed", "manual_retry"]


def test_sync_event_pause_resume_and_sync_now(service: Service) -> None:
    wait_for(lambda: synced(service), what="the first sync")
    out = service.cli("sync", "event", "acme", "--side", "b", "--op", "create",
                      '{"record_id": 303, "full_name": "Mock303 User", '
                      '"email_address": "mock@sf.com", "status": "active"}').stdout
    assert "303" in out
    wait_for(lambda: "303" in users(service.folder / "a.sqlite"), what="the submitted event")
    assert users(service.folder / "a.sqlite")["303"] == ("Mock303 User", "mock@sf.com",
                                                         "active")

    service.cli("pause", "acme")
    assert service.json("status")["pipelines"][0]["state"] == "paused"
    service.cli("config", "override", "acme", "--poll-interval", "3600")
    service.cli("resume", "acme")
    sql(service.folder / "a.sqlite", "UPDATE users SET full_name = 'Later' WHERE record_id = 5")
    assert users(service.folder / "b.sqlite")["5"][0] == "User 5"  # not polled for an hour
    service.cli("sync", "now", "acme", "--direction", "a-to-b")
    wait_for(lambda: users(service.folder / "b.sqlite")["5"][0] == "Later",
             what="sync now to poll at once")
    bad = service.cli("sync", "event", "acme", "--side", "a", "--op", "update", "{nope",
                      check=False)
    assert bad.returncode == 2


def test_rules_set_applies_live_and_persists(service: Service) -> None:
    wait_for(lambda: synced(service), what="the first sync")
    new_rules = service.folder / "new_rules.toml"
    new_rules.write_text(RULES.replace('in = ["active", "pending"]', 'in = ["active"]')
                         + '[contacts.transforms]\nfull_name = "upper"\n')
    service.cli("rules", "set", str(new_rules))
    assert 'in = ["active"]' in (service.folder / "rules.toml").read_text()
    sql(service.folder / "a.sqlite", "INSERT INTO users (record_id, full_name, email_address, "
                                     "status) VALUES (50, 'pending one', 'p@x', 'pending'), "
                                     "(51, 'active one', 'a@x', 'active')")
    wait_for(lambda: "51" in users(service.folder / "b.sqlite"), what="the active record")
    assert users(service.folder / "b.sqlite")["51"][0] == "ACTIVE ONE"  # the new transform
    assert "50" not in users(service.folder / "b.sqlite")  # the new filter
    broken = service.folder / "broken.toml"
    broken.write_text("[contacts]\nmappings = 3\n")
    result = service.cli("rules", "set", str(broken), check=False)
    assert result.returncode == 1 and "mappings" in result.stderr
    assert 'in = ["active"]' in (service.folder / "rules.toml").read_text()  # unchanged


def test_config_override_persist_writes_the_settings_file(service: Service) -> None:
    settings = service.folder / "customer_settings.toml"
    service.cli("config", "override", "acme", "--pipeline", "people", "--batch-size", "7",
                "--rate-limit", "50/10", "--persist")
    text = settings.read_text()
    assert "batch_size = 7" in text and "max_requests = 50" in text
    # the rest of the file as the user wrote it: comments, one-line side tables
    assert "batch_size = 100  # the team's note: kept small" in text
    assert 'a = { connector = "sqlite", path = "a.sqlite", table = "users", key = ' in text
    # the budget is the CRMs': both sides here are SQLite files, which it never throttles
    wait_for(lambda: service.json("stats"), what="stats")
    assert all(s["rate_limit"] == {} for s in service.json("stats"))


def test_hot_reload_of_both_files_valid_and_invalid(service: Service) -> None:
    settings = service.folder / "customer_settings.toml"
    events = subprocess.Popen(
        [sys.executable, "-m", "recsync.cli", "--endpoint", service.endpoint, "--json",
         "events"], stdout=subprocess.PIPE, text=True)
    assert events.stdout is not None
    # subscribed once the first event (a stats tick, every second) is in: on a busy machine
    # the client may start after the rejection below, and miss it
    first = events.stdout.readline()
    try:
        wait_for(lambda: synced(service), what="the first sync")
        broken = settings.read_text().replace("batch_size = 100", "batch_size = 'many'")
        tmp = settings.with_suffix(".swp")
        tmp.write_text(broken)
        os.replace(tmp, settings)  # an editor that saves by rename
        error = wait_for(lambda: service.json("status")["config_error"], what="rejection")
        assert "customer_settings.toml, line 3" in error and "batch_size" in error
        sql(service.folder / "a.sqlite", "UPDATE users SET status = 'pending' "
                                         "WHERE record_id = 2")
        wait_for(lambda: users(service.folder / "b.sqlite")["2"][2] == "pending",
                 what="the old config to keep syncing")

        settings.write_text(SETTINGS + '\n[customers.beta.pipelines.copy]\nrules = "contacts"\n'
                            'a = { connector = "sqlite", path = "a.sqlite", table = "users", '
                            'key = "record_id" }\n'
                            'b = { connector = "file", path = "copy.csv", key = "record_id" }\n')
        wait_for(lambda: not service.json("status")["config_error"], what="the fixed file")
        wait_for(lambda: (service.folder / "copy.csv").exists(), what="the added pipeline")
        rules = service.folder / "rules.toml"
        rules.write_text(RULES + "[contacts.transforms]\nemail_address = \"upper\"\n")
        wait_for(lambda: "contacts" in (service.json("status")["config_error"] or "contacts")
                 and service.json("rules", "show")["contacts"]["transforms"],
                 what="the rules reload")
        sql(service.folder / "a.sqlite", "UPDATE users SET full_name = 'Three' "
                                         "WHERE record_id = 3")
        wait_for(lambda: users(service.folder / "b.sqlite")["3"] == ("Three", "U3@X.ORG",
                                                                      "active"),
                 what="the new rules on the next batch")
    finally:
        events.terminate()
        out, _ = events.communicate(timeout=10)
    out = first + out
    kinds = [json.loads(line)["kind"] for line in out.splitlines() if line.strip()]
    assert "config_rejected" in kinds and "config_reloaded" in kinds
    seqs = [json.loads(line)["seq"] for line in out.splitlines() if line.strip()]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no gaps


def test_sighup_reloads(service: Service) -> None:
    (service.folder / "customer_settings.toml").write_text(
        SETTINGS.replace("[customers.acme.pipelines.people]", "[customers.acme.pipelines.renamed]"))
    service.proc.send_signal(signal.SIGHUP)
    service.notified("RELOADING=1")
    wait_for(lambda: [p["pipeline"] for p in service.json("status")["pipelines"]]
             == ["acme/renamed"], what="the reload")


SYS_TGKILL = {"x86_64": 234, "aarch64": 131}.get(platform.machine())


@pytest.mark.skipif(not sys.platform.startswith("linux") or SYS_TGKILL is None,
                    reason="tgkill (a signal to one thread) is a Linux system call")
def test_a_signal_delivered_to_another_thread_is_still_handled(service: Service) -> None:
    """The kernel may hand a process's SIGHUP to any of its threads; the main thread,
    which alone runs Python's signal handlers, must still see it (it once waited for good)."""
    pid = service.proc.pid
    others = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)
    assert others, "recsyncd runs threads besides its main one"
    (service.folder / "customer_settings.toml").write_text(
        SETTINGS.replace("[customers.acme.pipelines.people]", "[customers.acme.pipelines.renamed]"))
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.syscall(SYS_TGKILL, pid, others[-1], signal.SIGHUP) == 0, ctypes.get_errno()
    service.notified("RELOADING=1")


def test_sigterm_drains_and_loses_nothing(service: Service) -> None:
    wait_for(lambda: synced(service), what="the first sync")
    rows = ", ".join(f"({i}, 'Bulk {i}', 'b{i}@x.org', 'active')" for i in range(1000, 6000))
    sql(service.folder / "a.sqlite",
        f"INSERT INTO users (record_id, full_name, email_address, status) VALUES {rows}")
    wait_for(lambda: len(users(service.folder / "b.sqlite")) > 100, what="the bulk to start")
    service.proc.send_signal(signal.SIGTERM)
    service.notified("STOPPING=1")
    assert service.proc.wait(timeout=60) == 0
    result = run_once(service.folder)
    assert result.returncode == 0, result.stdout + result.stderr
    assert users(service.folder / "a.sqlite") == users(service.folder / "b.sqlite")
    assert sql(service.folder / "b.sqlite", "SELECT COUNT(*) FROM users")[0][0] == 5020


def test_sd_notify_ready_status_and_watchdog(service: Service) -> None:
    ready = service.notified("READY=1")
    assert any(line.startswith("STATUS=") for line in ready.split("\n"))
    service.notified("WATCHDOG=1")


def test_garbage_on_the_socket_does_not_hurt_the_daemon(service: Service) -> None:
    import zmq

    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(service.endpoint)
    for frame in (b"\x00\xff garbage", b"x" * (2 << 20), b"\x81\xa1v\x01"):
        sock.send_multipart([b"", frame])
        assert sock.poll(10_000), "no error reply"
        reply = sock.recv_multipart()
        assert b"BAD_REQUEST" in reply[-1] or b"TOO_LARGE" in reply[-1]
    sock.close()
    assert service.json("status")["pipelines"][0]["state"] == "running"


def test_after_kill_9_the_front_leaves_and_a_new_daemon_takes_the_socket(
    service: Service,
) -> None:
    sock = service.folder / "run" / "control.sock"
    assert sock.exists()
    service.proc.kill()  # no drain, no cleanup: the front must notice on its own
    service.proc.wait(timeout=10)
    wait_for(lambda: not sock.exists(), what="the front to leave with its socket")
    env = dict(os.environ, RUNTIME_DIRECTORY=str(service.folder / "run"),
               LOGS_DIRECTORY=str(service.folder / "logs"))
    env.pop("NOTIFY_SOCKET", None)
    again = subprocess.Popen(recsyncd_cmd(service.folder, service.folder / "state"), env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: service.cli("status", check=False).returncode == 0,
                 what="the new daemon to answer")
        assert service.json("status")["pipelines"][0]["pipeline"] == "acme/people"
    finally:
        again.terminate()
        again.wait(timeout=30)


def test_remaining_commands_through_the_cli(service: Service) -> None:
    wait_for(lambda: synced(service), what="the first sync")
    reply = service.json("reload")
    assert reply == {"added": [], "changed": [], "removed": [], "rules_changed": []}
    assert service.json("retry", "--all-failed")["count"] == 0
    schema = json.loads(service.cli("schema").stdout)
    assert "StatusGet" in schema["$defs"] and "Reply" in schema["$defs"]
    sql(service.folder / "a.sqlite", "UPDATE users SET full_name = 'Full' WHERE record_id = 9")
    done = service.json("sync", "now", "acme", "--full")
    assert done["pipelines"] == ["acme/people"]
    assert users(service.folder / "b.sqlite")["9"][0] == "Full"
    confirm = service.json("deletes", "confirm", "acme", "--pipeline", "people", "--side", "a")
    assert confirm == {"count": 0, "pipelines": []}  # nothing is held
    missing = service.cli("pause", "nobody", check=False)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_tcp_with_curve_serves_known_clients_only(tmp_path: Path) -> None:
    import zmq.auth

    make_users(tmp_path / "a.sqlite", [(1, "One", "1@x", "active")])
    make_users(tmp_path / "b.sqlite", [])
    (tmp_path / "customer_settings.toml").write_text(SETTINGS)
    (tmp_path / "rules.toml").write_text(RULES)
    keys = tmp_path / "curve"
    (keys / "authorized_clients").mkdir(parents=True)
    zmq.auth.create_certificates(keys, "server")
    client_pub, client_secret = zmq.auth.create_certificates(tmp_path, "client")
    (keys / "authorized_clients" / "client.key").write_bytes(Path(client_pub).read_bytes())
    _stranger_pub, stranger_secret = zmq.auth.create_certificates(tmp_path, "stranger")
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    env = dict(os.environ, RUNTIME_DIRECTORY=str(tmp_path / "run"),
               LOGS_DIRECTORY=str(tmp_path / "logs"))
    env.pop("NOTIFY_SOCKET", None)
    proc = subprocess.Popen(
        [*recsyncd_cmd(tmp_path, tmp_path / "state"), "--endpoint", endpoint,
         "--event-endpoint", f"tcp://127.0.0.1:{_free_port()}", "--curve-dir", str(keys)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def cli(secret: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "recsync.cli", "--endpoint", endpoint, "--timeout", "2",
             "--curve-secret-key", secret, "--curve-server-key", str(keys / "server.key"),
             *args], capture_output=True, text=True, timeout=60)

    try:
        ok = wait_for(lambda: (r := cli(str(client_secret), "--json", "status")).returncode
                      == 0 and r, what="the known client to be served")
        assert json.loads(ok.stdout)["pipelines"][0]["pipeline"] == "acme/people"
        refused = cli(str(stranger_secret), "status")
        assert refused.returncode == 3  # an unknown key gets nothing, not even an error
    finally:
        proc.terminate()
        proc.wait(timeout=30)
