"""What each `recsync` subcommand sends, and how its answer is shown."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import msgspec

from recsync.cli import output
from recsync.cli.reading import bulk_reads
from recsync.daemon import protocol as p
from recsync.errors import ControlError

if TYPE_CHECKING:
    from recsync.client import ControlClient


class UsageError(Exception):
    """A mistake in the command line (exit code 2)."""


def record_json(text: str, what: str = "RECORD_JSON") -> dict[str, Any]:
    """A JSON object from the command line ('-': stdin, '@FILE': a file)."""
    if text == "-":
        text = sys.stdin.read()
    elif text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read {text[1:]}: {exc.strerror}") from exc
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno} "
            f"(character {exc.pos + 1})"
        ) from exc
    if not isinstance(value, dict):
        raise UsageError(f"{what} must be a JSON object ({{...}}), not {type(value).__name__}")
    return value


def _direction(value: str | None) -> Any:
    return None if value is None else value.replace("-", "_")


def _rules_text(path: Path) -> str:
    if str(path) == "-":
        return sys.stdin.read()
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not UTF-8 text") from exc


def _override(a: argparse.Namespace) -> p.ConfigOverride:
    if all(v is None for v in (a.batch_size, a.flush_interval, a.poll_interval, a.rate_limit)):
        raise UsageError(
            "give at least one of --batch-size, --flush-interval, --poll-interval, --rate-limit"
        )
    limit_max, limit_window = a.rate_limit if a.rate_limit else (None, None)
    return p.ConfigOverride(
        a.customer,
        a.pipeline,
        batch_size=a.batch_size,
        flush_interval=a.flush_interval,
        poll_interval=a.poll_interval,
        rate_limit_max=limit_max,
        rate_limit_window=limit_window,
        persist=a.persist,
    )


def _retry(a: argparse.Namespace) -> p.Command:
    if a.all_failed:
        return p.RetryFailed(a.target)
    if not a.target:
        raise UsageError("give a RECORD_ID, or --all-failed [CUSTOMER]")
    return p.RetryRecord(a.target)


BUILDERS: dict[str, Callable[[argparse.Namespace], p.Command]] = {
    "sync event": lambda a: p.SyncEvent(
        a.customer, a.side, a.op, record_json(a.record), a.pipeline
    ),
    "sync now": lambda a: p.SyncNow(a.customer, a.pipeline, _direction(a.direction), a.full),
    "status": lambda a: p.StatusGet(a.record_id),
    "failed": lambda a: p.FailedList(a.customer, a.limit),
    "retry": _retry,
    "config override": _override,
    "rules show": lambda a: p.RulesShow(a.name),
    "rules set": lambda a: p.RulesSet(_rules_text(a.file)),
    "rules test": lambda a: p.RulesTest(a.name, record_json(a.record), a.side),
    "reload": lambda a: p.Reload(),
    "pause": lambda a: p.Pause(a.customer, a.pipeline),
    "resume": lambda a: p.Resume(a.customer, a.pipeline),
    "deletes confirm": lambda a: p.ConfirmDeletes(a.customer, a.pipeline, a.side),
    "crms list": lambda a: p.CrmsList(),
    "crms schema": lambda a: p.CrmsSchema(a.name),
    "stats": lambda a: p.StatsGet(),
    "mock push": lambda a: p.MockPush(a.kind, record_json(a.record)),
    "mock list": lambda a: p.MockList(a.kind),
    "config show": lambda a: p.ConfigShow(a.customer, a.pipeline),
    "mock faults": lambda a: p.MockFaults(
        a.kind, a.error_rate, a.latency, a.status_429_retry_after, a.limit_after, a.drop_rate,
        a.clear),
}


def _pipelines(result: Any) -> str:
    listed = result.get("pipelines") if isinstance(result, dict) else None
    return ", ".join(str(x) for x in listed) if listed else "no pipeline"


def _count(result: Any) -> int:
    return int(result.get("count", 0)) if isinstance(result, dict) else 0


def _settings(cmd: p.ConfigOverride) -> str:
    parts = [
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in (
            ("batch_size", cmd.batch_size),
            ("flush_interval", cmd.flush_interval),
            ("poll_interval", cmd.poll_interval),
        )
        if v is not None
    ]
    if cmd.rate_limit_max is not None and cmd.rate_limit_window is not None:
        parts.append(f"rate_limit={cmd.rate_limit_max}/{cmd.rate_limit_window:g}s")
    return ", ".join(parts)


def human(cmd: p.Command, result: Any) -> str:
    """The human rendering of ``cmd``'s result (JSON when it has an unexpected shape)."""
    try:
        return _human(cmd, result)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        return output.to_json(result)


def _human(cmd: p.Command, result: Any) -> str:
    match cmd:
        case p.StatusGet():
            return output.status(result) if isinstance(result, dict) else output.generic(result)
        case p.FailedList():
            return output.failed(result) if isinstance(result, list) else output.generic(result)
        case p.StatsGet():
            return output.stats(result)
        case p.RetryRecord(record_id=rid):
            return f"record {rid} queued for retry in {_pipelines(result)}"
        case p.RetryFailed():
            n = _count(result)
            if not n:
                return "no failed records to retry"
            return (
                f"{n} failed record{'s' if n != 1 else ''} queued for retry in {_pipelines(result)}"
            )
        case p.SyncEvent(side=side):
            if isinstance(result, dict) and {"pipeline", "key", "op"} <= result.keys():
                line = (
                    f"{result['pipeline']}: {result['op']} of record {result['key']} "
                    f"from side {side} submitted"
                )
                plan = result.get("other_side")
                return f"{line}; {plan}" if plan else line
            return output.generic(result)
        case p.SyncNow():
            return f"polling now: {_pipelines(result)}"
        case p.ConfigOverride(persist=persist):
            saved = " and saved to customer_settings.toml" if persist else ""
            return f"{_settings(cmd)} applied to {_pipelines(result)}{saved}"
        case p.RulesShow():
            return output.rules(result)
        case p.RulesSet() | p.Reload():
            if isinstance(result, dict) and "added" in result:
                head = (
                    "rules replaced and applied"
                    if isinstance(cmd, p.RulesSet)
                    else "configuration reloaded"
                )
                return f"{head}\n{output.reload(result)}"
            return output.generic(result)
        case p.Pause() | p.Resume():
            return output.paused(cmd, result)
        case p.ConfirmDeletes():
            return output.confirmed(cmd, result)
        case p.MockFaults(kind=kind):
            return output.faults(kind, result)
        case p.CrmsList():
            return output.crms(result)
        case p.CrmsSchema():
            return output.to_json(result)
        case p.ConfigShow():
            return output.config_show(result)
    return output.generic(result)


# ---- long-running commands -------------------------------------------------------------------


class Progress:
    """A text progress bar on ``stream``: redrawn in place on a TTY, plain lines otherwise
    (when the figures change, at most once a second, and always the last one)."""

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.width = width
        self.drawn = False
        self.shown = 0
        self.last: tuple[int, int] | None = None
        self.last_at = 0.0

    def show(self, done: int, remaining: int, elapsed: float) -> None:
        self._draw(done, done + remaining, "written", elapsed)

    def show_reading(self, read: int, total: int, elapsed: float) -> None:
        """The read phase of a backfill (a Bulk API query job), before anything is queued."""
        self._draw(read, total, "read (bulk query job)", elapsed)

    def _draw(self, done: int, total: int, what: str, elapsed: float) -> None:
        remaining = total - done
        fraction = done / total if total else 1.0
        filled = round(fraction * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        line = f"[{bar}] {fraction:4.0%}  {done}/{total} {what}  {elapsed:.0f}s"
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r" + line.ljust(self.shown))  # blank out a longer last line
            self.shown = len(line)
        elif (done, remaining) != self.last and (now - self.last_at >= 1.0 or not remaining):
            self.stream.write(line + "\n")
            self.last, self.last_at = (done, remaining), now
        else:
            return
        self.stream.flush()
        self.drawn = True

    def end(self) -> None:
        if self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()


STUCK_STATES = {
    "paused": "is paused; `recsync resume` it",
    "held": "is held by the mass-delete guard; see `recsync deletes confirm`",
    "fatal": "has failed for good",
    "error": "has failed",
    "stopped": "is stopped",
}


def wait_backfill(
    client: ControlClient,
    cmd: p.SyncNow,
    started: Any,
    poll: float,
    stream: TextIO,
    *,
    grace: float = 2.0,
) -> dict[str, Any]:
    """Poll status.get until the chosen pipelines' queued + in_flight reach 0.

    Done once nothing is left and either work was seen or ``grace`` seconds passed with
    nothing to do (the backfill may take a moment to queue its first page).
    """
    listed = started.get("pipelines") if isinstance(started, dict) else None
    ids = {x for x in listed or [] if isinstance(x, str)}

    def chosen(status: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            s
            for s in status.get("pipelines") or []
            if s["pipeline"] in ids
            or (not ids and s["customer"] == cmd.customer and cmd.pipeline in (None, s["name"]))
        ]

    def synced(rows: list[dict[str, Any]]) -> int:
        return sum(int(r["synced_a_to_b"]) + int(r["synced_b_to_a"]) for r in rows)

    progress = Progress(stream)
    t0 = time.monotonic()
    base: int | None = None
    seen_work = False
    try:
        while True:
            rows = chosen(client.request(p.StatusGet()))
            base = synced(rows) if base is None else base
            done = max(0, synced(rows) - base)
            remaining = sum(int(r["queued"]) + int(r["in_flight"]) for r in rows)
            reading = bulk_reads(rows)  # a side still reading through a bulk query job
            seen_work = seen_work or remaining > 0 or done > 0 or reading is not None
            elapsed = time.monotonic() - t0
            if reading is not None and not remaining:
                progress.show_reading(*reading, elapsed)
            else:
                progress.show(done, remaining, elapsed)
            if not remaining and reading is None and (seen_work or elapsed >= grace):
                return {
                    "pipelines": sorted(r["pipeline"] for r in rows),
                    "written": done,
                    "seconds": round(elapsed, 3),
                }
            for r in rows:
                if r["state"] in STUCK_STATES:
                    raise ControlError(
                        "UNAVAILABLE", f"pipeline {r['pipeline']} {STUCK_STATES[r['state']]}."
                    )
            time.sleep(poll)  # the CLI polls the daemon at a fixed pace
    finally:
        progress.end()


def follow_events(
    client: ControlClient,
    kinds: list[str] | None,
    count: int | None,
    as_json: bool,
    out: TextIO,
    err: TextIO,
) -> int:
    """Print events until Ctrl-C (or ``count`` events)."""
    seen = 0
    with client.subscribe(kinds) as sub:
        try:
            for event in sub.merged():  # several nodes' events: in a stable order
                if sub.gaps:
                    err.write(f"recsync: missed {sub.gaps} event(s) before #{event.seq}\n")
                    sub.gaps = 0
                if as_json:
                    out.write(msgspec.json.encode(event).decode() + "\n")
                else:
                    out.write(output.event_line(event) + "\n")
                out.flush()
                seen += 1
                if count is not None and seen >= count:
                    break
        except KeyboardInterrupt:
            pass
    return 0
