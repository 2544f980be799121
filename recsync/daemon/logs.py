"""JSON-lines logging for recsyncd: one object per line, secrets redacted.

Two outputs share one :class:`JsonFormatter`: a stream (stdout/stderr, which systemd puts in
the journal) and, optionally, a size-rotated file ``record_sync.log`` in
:func:`default_log_file`'s folder (``$LOGS_DIRECTORY`` under systemd, else ``./logs``).

Redaction happens in the formatter, on the whole entry, so no handler can bypass it: values
under secret-looking keys (``password``, ``token``, ``authorization``, ...), ``key=value`` /
``key: value`` / ``"key": "value"`` pairs inside any text (message, extras, tracebacks),
``Bearer`` tokens, and passwords inside URLs (``postgresql://user:***@host/db``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import msgspec

from recsync.dsn import mask_urls
from recsync.errors import RecsyncError

__all__ = [
    "LOG_FILE_NAME",
    "LOG_NOTE",
    "JsonFormatter",
    "LogLocation",
    "default_log_file",
    "journal_unit",
    "read_log_note",
    "redact",
    "redact_text",
    "setup_logging",
    "write_log_note",
]

LOG_FILE_NAME = "record_sync.log"
MASK = "***"

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
_SECRET_KEY = re.compile(
    r"pass(word|wd|phrase)?|pwd|secret|token|api_?key|authorization|credential|cookie"
    r"|session_?id|private_?key",
    re.I,
)
_QUOTED = r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'"
# key (any word around a secret word), separator, optional auth scheme, then the value.
_SECRET_IN_TEXT = re.compile(
    r"(?i)(?P<key>\b[\w.-]*?(?:password|passwd|passphrase|pwd|secret|token|api[_-]?key"
    r"|authorization|credentials?|cookie|session[_-]?id|private[_-]?key)[\w-]*)"
    r"(?P<sep>[\"']?\s*[=:]\s*)"
    r"(?P<scheme>(?:bearer|basic|digest|token|negotiate)\s+)?"
    rf"(?P<value>{_QUOTED}|[^\s\"'&,;)}}\]]+|[\"'][^\n]*)"  # (a quote never closed: the line)
)
_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+")
_SALESFORCE_SESSION = re.compile(r"\b00D[A-Za-z0-9]{12,15}![A-Za-z0-9._-]+")


def _mask_pair(m: re.Match[str]) -> str:
    value = m.group("value")
    masked = f"{value[0]}{MASK}{value[0]}" if value[:1] in ("'", '"') else MASK
    return f"{m.group('key')}{m.group('sep')}{m.group('scheme') or ''}{masked}"


def redact_text(text: str) -> str:
    """``text`` with secret-looking values replaced by ``***``."""
    text = _SECRET_IN_TEXT.sub(_mask_pair, text)
    text = _BEARER.sub(rf"\g<1>{MASK}", text)
    text = mask_urls(text)
    return _SALESFORCE_SESSION.sub(MASK, text)


def redact(value: Any, key: str = "") -> Any:
    """Replace secret-looking values (by key name, or inside text) with ``***``.

    Returns JSON-ready data: msgspec Structs become dicts first (so their secret fields are
    masked by name), and any other object becomes its redacted ``str()``.
    """
    if key and _SECRET_KEY.search(key) and not (key == "token" and type(value) is int):
        return MASK  # (a lease's fencing token is a number, shown by `recsync cluster` too)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {str(k): redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(v) for v in value]
    if isinstance(value, msgspec.Struct):
        try:
            return redact(msgspec.to_builtins(value))
        except (TypeError, msgspec.EncodeError):
            pass
    return redact_text(str(value))


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, extras, exc/stack; redacted."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(redact(entry), default=str, ensure_ascii=False)


def default_log_file() -> Path:
    """``$LOGS_DIRECTORY/record_sync.log`` (systemd ``LogsDirectory=``), else ``./logs/...``.

    ``LOGS_DIRECTORY`` may list several folders separated by ``:``; the first one is used.
    """
    folder = os.environ.get("LOGS_DIRECTORY", "").split(":")[0]
    return Path(folder or "logs") / LOG_FILE_NAME


def setup_logging(
    level: str | int = "info",
    stream: TextIO | None = None,
    *,
    log_file: Path | str | None = None,
    max_bytes: int = 10 * 1024 * 1024,
    backups: int = 5,
) -> None:
    """Send JSON lines to ``stream`` (default stdout) and, if given, to ``log_file``.

    The file (its folder is created) rotates when the next line would make it exceed
    ``max_bytes``, keeping ``backups`` old files (``record_sync.log.1`` is the newest). A
    file that cannot be opened is reported on the stream and skipped: logging to the
    stream goes on. Calling this again replaces (and closes) the handlers it set up before.
    """
    formatter = JsonFormatter()
    handlers: list[logging.Handler] = []
    stream_handler = logging.StreamHandler(stream or sys.stdout)
    handlers.append(stream_handler)
    file_error: str | None = None
    if log_file is not None:
        path = Path(log_file)
        # (with pickle and socket) only with a log file: not for --once
        from logging.handlers import RotatingFileHandler

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handlers.append(
                RotatingFileHandler(
                    path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
                )
            )
        except OSError as exc:
            file_error = f"{path}: {exc.strerror or exc}"
    for handler in handlers:
        handler.setFormatter(formatter)
        handler._recsync = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in root.handlers:
        if getattr(old, "_recsync", False):
            old.close()
    root.handlers[:] = handlers
    root.setLevel(level.upper() if isinstance(level, str) else level)
    pykka_log = logging.getLogger("pykka")
    pykka_log.setLevel(logging.WARNING)
    if not any(isinstance(f, _ReportedFailures) for f in pykka_log.filters):
        pykka_log.addFilter(_ReportedFailures())
    if file_error is not None:
        logging.getLogger(__name__).warning(
            "cannot write the log file; logging to the stream only",
            extra={"error": file_error},
        )


class _ReportedFailures(logging.Filter):
    """Drops pykka's "Unhandled exception in <actor>" traceback of a RecsyncError (a path
    typo, a table missing, a side unreachable): the actor logs it with its pipeline, in
    words ("actor failed"), and the traceback only looked like a crash. Any other
    exception, a bug, keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, RecsyncError)


# ---- where the log is (for `recsync logs`) -----------------------------------------------

LOG_NOTE = "logs.json"  # in the runtime directory, beside the control sockets


class LogLocation(msgspec.Struct, frozen=True):
    """Where a serving recsyncd logs: its JSON log file and, under systemd, its unit."""

    file: str | None = None
    journal_unit: str | None = None  # e.g. "recsyncd.service": read with journalctl -u


def journal_unit(env: dict[str, str] | None = None, cgroup: Path = Path("/proc/self/cgroup")
                 ) -> str | None:
    """The systemd unit whose journal has our stdout/stderr, or None when not under one.

    systemd sets ``JOURNAL_STREAM=DEV:INODE`` for a service whose output goes to the
    journal; it is ours only while stdout or stderr is still that stream. The unit is the
    ``*.service`` of our cgroup (``recsyncd.service`` when it cannot be read).
    """
    env = dict(os.environ) if env is None else env
    stream = env.get("JOURNAL_STREAM", "")
    if not stream:
        return None
    ours = False
    for fd in (1, 2):
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if f"{st.st_dev}:{st.st_ino}" == stream:
            ours = True
    if not ours:
        return None
    try:
        for line in cgroup.read_text().splitlines():
            for part in reversed(line.rpartition(":")[2].split("/")):
                if part.endswith(".service"):
                    return part
    except OSError:
        pass
    return "recsyncd.service"


def write_log_note(folder: Path, location: LogLocation) -> None:
    """Write ``folder/logs.json`` for `recsync logs`; a failure is logged, never raised."""
    path = folder / LOG_NOTE
    try:
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(location))
        tmp.replace(path)
    except OSError as exc:
        logging.getLogger(__name__).warning(
            "cannot write where the log is", extra={"path": str(path), "error": exc.strerror})


def read_log_note(folder: Path) -> LogLocation | None:
    """What a recsyncd serving from ``folder`` wrote there, or None."""
    try:
        return msgspec.json.decode((folder / LOG_NOTE).read_bytes(), type=LogLocation)
    except (OSError, msgspec.DecodeError):
        return None
