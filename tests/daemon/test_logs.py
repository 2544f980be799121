"""JSON-lines logging: stream and rotating file, secrets redacted in both."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from recsync.daemon.logs import (
    LOG_FILE_NAME,
    JsonFormatter,
    default_log_file,
    redact,
    redact_text,
    setup_logging,
)
from recsync.dsn import mask_dsn
from recsync.errors import ConnectorConfigError

SECRETS = ("hunter2", "abc123tok", "s3cr3tpw", "sk_live_42", "pgpass9", "00D5g000004XyZaEAI")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for h in root.handlers:
        if h not in handlers:
            h.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line]


def test_default_log_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LOGS_DIRECTORY", raising=False)
    assert default_log_file() == Path("logs") / "record_sync.log"
    monkeypatch.setenv("LOGS_DIRECTORY", f"{tmp_path}/one:{tmp_path}/two")
    assert default_log_file() == tmp_path / "one" / LOG_FILE_NAME


def test_stream_and_file_get_the_same_json_lines(tmp_path: Path, restore_logging: None) -> None:
    stream = io.StringIO()
    log_file = tmp_path / "logs" / LOG_FILE_NAME  # folder does not exist yet
    setup_logging("debug", stream, log_file=log_file)
    log = logging.getLogger("recsync.test")
    log.info("pipeline %s started", "acme/contacts", extra={"pipeline": "acme/contacts", "n": 3})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("it failed")
    for handler in logging.getLogger().handlers:
        handler.flush()
    from_stream = lines(stream.getvalue())
    from_file = lines(log_file.read_text(encoding="utf-8"))
    assert from_stream == from_file
    first, second = from_file
    assert first["msg"] == "pipeline acme/contacts started"
    assert first["level"] == "info" and first["logger"] == "recsync.test"
    assert first["pipeline"] == "acme/contacts" and first["n"] == 3
    assert first["ts"].endswith("Z")
    assert second["level"] == "error" and "ValueError: boom" in second["exc"]


def test_file_rotates_at_max_bytes(tmp_path: Path, restore_logging: None) -> None:
    log_file = tmp_path / "logs" / LOG_FILE_NAME
    setup_logging("info", io.StringIO(), log_file=log_file, max_bytes=2000, backups=2)
    log = logging.getLogger("recsync.rotation")
    for i in range(200):
        log.info("record %d synced", i, extra={"pipeline": "acme/contacts"})
    for handler in logging.getLogger().handlers:
        handler.flush()
    files = sorted(p.name for p in log_file.parent.iterdir())
    assert files == [LOG_FILE_NAME, f"{LOG_FILE_NAME}.1", f"{LOG_FILE_NAME}.2"]
    numbers = []
    for name in files:
        path = log_file.parent / name
        assert path.stat().st_size <= 2000
        numbers += [entry["msg"] for entry in lines(path.read_text(encoding="utf-8"))]
    assert "record 199 synced" in numbers  # newest in the current file
    assert "record 0 synced" not in numbers  # oldest rotated away (backups=2)


def test_unwritable_log_file_falls_back_to_the_stream(
    tmp_path: Path, restore_logging: None
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    stream = io.StringIO()
    setup_logging("info", stream, log_file=blocker / LOG_FILE_NAME)
    logging.getLogger("recsync.test").info("still here")
    entries = lines(stream.getvalue())
    assert entries[0]["level"] == "warning" and "log file" in entries[0]["msg"]
    assert entries[-1]["msg"] == "still here"


def test_setup_twice_closes_the_old_file(tmp_path: Path, restore_logging: None) -> None:
    setup_logging("info", io.StringIO(), log_file=tmp_path / "a.log")
    first = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    setup_logging("info", io.StringIO(), log_file=tmp_path / "b.log")
    assert first and first[0].stream is None  # closed
    assert len(logging.getLogger().handlers) == 2


class Creds(msgspec.Struct):
    user: str
    password: str


@pytest.mark.parametrize(
    ("message", "args", "extra"),
    [
        ("login password=hunter2 failed", (), {}),
        ("calling CRM with Authorization: Bearer abc123tok", (), {}),
        ("headers %s", ({"Authorization": "Bearer abc123tok", "Accept": "json"},), {}),
        ('payload {"password": "s3cr3tpw", "user": "bob"}', (), {}),
        ("connect %s", ("postgresql://bob:pgpass9@db.internal/sync",), {}),
        ("token refreshed", (), {"token": "abc123tok", "api_key": "sk_live_42"}),
        ("config", (), {"sides": {"a": {"password": "hunter2", "user": "bob"}}}),
        ("auth", (), {"creds": Creds(user="bob", password="hunter2")}),
        ("retry", (), {"error": "401 for url ?access_token=abc123tok&x=1"}),
        ("session", (), {"detail": "sid 00D5g000004XyZaEAI!AQ0AQH.abcdef"}),
    ],
)
def test_secrets_never_reach_either_output(
    tmp_path: Path,
    restore_logging: None,
    message: str,
    args: tuple[Any, ...],
    extra: dict[str, Any],
) -> None:
    stream = io.StringIO()
    log_file = tmp_path / LOG_FILE_NAME
    setup_logging("info", stream, log_file=log_file)
    logging.getLogger("recsync.test").info(message, *args, extra=extra)
    for handler in logging.getLogger().handlers:
        handler.flush()
    outputs = {"stream": stream.getvalue(), "file": log_file.read_text(encoding="utf-8")}
    for where, text in outputs.items():
        assert text.strip(), where
        json.loads(text)  # one valid JSON line
        for secret in SECRETS:
            assert secret not in text, f"{secret} leaked to the {where}: {text}"
        assert "***" in text


def test_secret_in_exception_text_is_redacted() -> None:
    fmt = JsonFormatter()
    try:
        raise RuntimeError("login failed for password=hunter2")
    except RuntimeError:
        record = logging.getLogger("x").makeRecord(
            "x", logging.ERROR, __file__, 1, "oops", (), exc_info=sys.exc_info()
        )
    out = fmt.format(record)
    assert "hunter2" not in out and "password=***" in out


@pytest.mark.parametrize("text", [
    "host=127.0.0.1 password='S3cretQ",  # a quote never closed (a typo in a dsn)
    "host=h password='ab\\'S3cretQ tail' user=x",  # libpq's escaped quote
    "host=h sslpassword=S3cretQ user=x",
    "postgresql://postgres:Zq9/S3cretQ@127.0.0.1/test",  # '/' and '@' left unencoded
    "redis://:Red@isS3cretQ@127.0.0.1:6390/7 and more",
])
def test_malformed_dsns_keep_their_password_out_of_logs_and_messages(text: str) -> None:
    """The log formatter's redaction and mask_dsn (errors, `config show`) alike."""
    for masked in (redact_text(text), mask_dsn(text)):
        assert "S3cretQ" not in masked and "***" in masked, masked


def test_an_actor_failing_on_a_reported_error_logs_no_traceback(
    restore_logging: None,
) -> None:
    """pykka's "Unhandled exception" of a ConnectorConfigError (logged by the actor in
    words, with its pipeline) is dropped; a bug's keeps its traceback."""
    stream = io.StringIO()
    setup_logging("info", stream)
    pykka_log = logging.getLogger("pykka")
    for exc in (ConnectorConfigError("SQLite database x does not exist"),
                RuntimeError("a bug in a connector")):
        try:
            raise exc
        except Exception:
            pykka_log.error("Unhandled exception in ConnectorActor (urn:uuid:1):",
                            exc_info=True)
    (line,) = stream.getvalue().splitlines()
    assert "a bug in a connector" in json.loads(line)["exc"]


def test_redact_keeps_harmless_text() -> None:
    assert redact("synced 12 records for acme/contacts") == "synced 12 records for acme/contacts"
    assert redact({"user": "bob", "count": 3, "ok": True, "none": None}) == {
        "user": "bob",
        "count": 3,
        "ok": True,
        "none": None,
    }
    assert redact({"password": {"nested": "x"}}) == {"password": "***"}
    # a lease's fencing token is a number, shown (`recsync cluster` prints it too)
    assert redact({"node": "n1", "token": 7}) == {"node": "n1", "token": 7}
    assert redact({"token": "abc123tok", "password": 123456}) == {"token": "***",
                                                                   "password": "***"}
    assert redact("Authorization: Bearer abc") == "Authorization: Bearer ***"
    assert redact(Path("/etc/recsync")) == "/etc/recsync"
