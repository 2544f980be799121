"""`recsync logs`: recsyncd's JSON log, readable, filtered by pipeline and level, followed.

Where the log is: ``--file PATH``; ``--journal`` (``journalctl -u UNIT -o cat``); else
what a serving recsyncd noted in its runtime directory (the journal of its systemd unit
when it runs under one, else its log file); else ``$LOGS_DIRECTORY/record_sync.log`` or
``./logs/record_sync.log``. A line that is not a JSON log entry is printed as it is.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from recsync.daemon import runtime
from recsync.daemon.logs import LOG_NOTE, default_log_file, read_log_note
from recsync.errors import RecsyncError

LEVELS = ("debug", "info", "warning", "error", "critical")
_RANK = {name: i for i, name in enumerate(LEVELS)}
_SHOWN_APART = ("ts", "level", "logger", "msg", "pipeline", "exc", "stack")
DEFAULT_UNIT = "recsyncd"


@dataclass(frozen=True)
class Source:
    """A log file, or a systemd unit's journal."""

    file: Path | None = None
    unit: str | None = None

    def describe(self) -> str:
        return f"the journal of {self.unit}" if self.unit else str(self.file)


def find_source(file: Path | None, journal: bool, unit: str | None,
                endpoint: str | None) -> Source:
    """Where to read, by the rules in this module's docstring; RecsyncError if nowhere."""
    if file is not None:
        return Source(file=file)
    if journal or unit:
        return Source(unit=unit or DEFAULT_UNIT)
    ipc = runtime.ipc_path(endpoint) if endpoint else None
    folder = ipc.parent if ipc is not None else runtime.runtime_dir(create=False)
    note = read_log_note(folder)
    if note is not None and note.journal_unit:
        return Source(unit=note.journal_unit)
    if note is not None and note.file:
        return Source(file=Path(note.file))
    fallback = default_log_file().absolute()
    if fallback.exists():
        return Source(file=fallback)
    raise RecsyncError(
        f"No recsyncd log found: no {folder / LOG_NOTE} from a serving recsyncd and no "
        f"{fallback}. Give --file PATH, or --journal when recsyncd runs under systemd."
    )


# ---- one line -----------------------------------------------------------------------------


def parse(line: str) -> dict[str, Any] | None:
    """The log entry of a line, or None when it is not one."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("msg"), str):
        return None
    return entry


def _value(value: Any) -> str:
    if isinstance(value, str):
        plain = value and not any(c.isspace() or c in "\"'=" for c in value)
        return value if plain else json.dumps(value, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False, default=str)


def render(entry: dict[str, Any]) -> str:
    """``time LEVEL pipeline message key=value...``, a traceback indented below."""
    ts = str(entry.get("ts") or "-").replace("T", " ")
    level = str(entry.get("level") or "-").upper()
    pipeline = str(entry.get("pipeline") or "-")
    extras = " ".join(f"{k}={_value(v)}" for k, v in entry.items() if k not in _SHOWN_APART)
    text = f"{ts} {level:<8} {pipeline}  {entry['msg']}" + (f"  {extras}" if extras else "")
    for key in ("exc", "stack"):
        if entry.get(key):
            text += "\n" + "\n".join("    " + part for part in str(entry[key]).splitlines())
    return text


@dataclass(frozen=True)
class Filter:
    pipeline: str | None = None
    level: str | None = None

    def keep(self, entry: dict[str, Any] | None) -> bool:
        """Entries of the pipeline (or customer) at or above the level; raw lines belong to
        no pipeline: kept unless a pipeline is asked for."""
        if entry is None:
            return self.pipeline is None
        if self.pipeline is not None:
            name = str(entry.get("pipeline") or "")
            if name != self.pipeline and not name.startswith(self.pipeline + "/"):
                return False
        if self.level is not None:
            rank = _RANK.get(str(entry.get("level", "")).lower())
            if rank is not None and rank < _RANK[self.level]:
                return False
        return True


def show(lines: Iterable[str], keep: Filter, as_json: bool, out: TextIO,
         last: int | None = None) -> None:
    """Print the lines ``keep`` keeps (only the last ``last`` of them, when given)."""
    texts: Iterable[str] = _texts(lines, keep, as_json)
    if last is not None:
        texts = deque(texts, maxlen=last)
    for text in texts:
        out.write(text + "\n")
        out.flush()


def _texts(lines: Iterable[str], keep: Filter, as_json: bool) -> Iterator[str]:
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        entry = parse(line)
        if not keep.keep(entry):
            continue
        if as_json:
            yield line if entry is not None else json.dumps({"raw": line})
        else:
            yield render(entry) if entry is not None else line


# ---- reading ------------------------------------------------------------------------------


def merged(files: list[Path]) -> list[str]:
    """The lines of several log files (the nodes of a [cluster]) in a stable order: by
    their time (``ts``), then the file's place in ``files``, then the line's in its file;
    a line that is not a log entry stays after the entry before it."""
    keyed: list[tuple[str, int, int, str]] = []
    for index, path in enumerate(files):
        with _open(path) as f:
            ts = ""
            for number, raw in enumerate(f):
                line = _text(raw)
                entry = parse(line.rstrip("\r\n"))
                if entry is not None and isinstance(entry.get("ts"), str):
                    ts = entry["ts"]
                keyed.append((ts, index, number, line))
    return [line for *_, line in sorted(keyed)]



def _open(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise RecsyncError(f"No log file {path}; is that where recsyncd logs?") from None
    except OSError as exc:
        raise RecsyncError(f"Cannot read the log file {path}: {exc.strerror}.") from exc


def _text(line: bytes) -> str:
    return line.decode("utf-8", errors="replace")


class Follower:
    """Reads a log file that grows, across rotations (the file renamed and a new one
    started, as RotatingFileHandler does) and truncation."""

    def __init__(self, path: Path, *, interval: float = 0.25) -> None:
        self.path = path
        self.interval = interval
        self.file = _open(path)

    def existing(self) -> list[str]:
        """The complete lines there now (a line still being written is left for later)."""
        data = self.file.read()
        cut = data.rfind(b"\n") + 1
        self.file.seek(cut - len(data), os.SEEK_CUR)
        return [_text(line) for line in data[:cut].splitlines()]

    def follow(self, stop: Callable[[], bool] = lambda: False) -> Iterator[str]:
        """Every line added from now on, until ``stop()``."""
        partial = b""
        while not stop():
            chunk = self.file.readline()
            if chunk:
                partial += chunk
                if partial.endswith(b"\n"):
                    yield _text(partial)
                    partial = b""
                continue
            if self._replaced():
                self.file.close()
                self.file = _open(self.path)
                partial = b""
                continue
            time.sleep(self.interval)  # nothing new yet: look again, as tail -f does

    def _replaced(self) -> bool:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return False  # between the rename and the new file
        return st.st_ino != os.fstat(self.file.fileno()).st_ino or st.st_size < self.file.tell()

    def close(self) -> None:
        self.file.close()


def journal_argv(unit: str, follow: bool, lines: int | None) -> list[str]:
    argv = ["journalctl", "-u", unit, "-o", "cat", "--no-pager"]
    if lines is not None:
        argv += ["-n", str(lines)]
    if follow:
        argv.append("-f")
    return argv


def run(source: Source, *, follow: bool, lines: int | None, keep: Filter, as_json: bool,
        out: TextIO) -> int:
    """Print the log; with ``follow``, until Ctrl-C."""
    if source.unit is not None:
        if shutil.which("journalctl") is None:
            raise RecsyncError("journalctl is not installed; give the log file with --file.")
        argv = journal_argv(source.unit, follow, lines)
        with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True,
                              errors="replace") as proc:
            assert proc.stdout is not None
            try:
                show(proc.stdout, keep, as_json, out)
            finally:
                if proc.poll() is None:
                    proc.terminate()
            return 0 if proc.wait() == 0 else 1
    assert source.file is not None
    if not follow:
        with _open(source.file) as f:
            show(map(_text, f), keep, as_json, out, last=lines)
        return 0
    follower = Follower(source.file)
    try:
        show(follower.existing(), keep, as_json, out, last=10 if lines is None else lines)
        show(follower.follow(), keep, as_json, out)
    finally:
        follower.close()
    return 0
