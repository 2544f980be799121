"""`recsync verify`: compare both sides of pipelines, show progress, print the differences.

Exit codes: 0 the sides agree, 1 they differ (or records were still being synced), and
the usual 2 (usage) and 3 (recsyncd unreachable); an error reply is also 1.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from recsync.cli import output
from recsync.daemon import protocol as p

if TYPE_CHECKING:
    from recsync.client import ControlClient

LABELS = (
    ("missing_a", "missing on a"),
    ("missing_b", "missing on b"),
    ("extra_a", "extra on a"),
    ("extra_b", "extra on b"),
    ("different", "different"),
)


def build(a: argparse.Namespace) -> p.VerifyRun:
    return p.VerifyRun(a.customer, a.pipeline, a.repair, a.keys)


class VerifyProgress:
    """``verify_progress`` events on ``stream``: a bar redrawn in place on a TTY (a count
    when the total is unknown), else a line per phase and at most one a second, and the
    phase's last figures when it ends."""

    def __init__(self, stream: TextIO, width: int = 30,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.clock = clock
        self.tty = stream.isatty()
        self.width = width
        self.shown = 0
        self.phase: tuple[str, str] | None = None
        self.last_at = 0.0
        self.held_back: str | None = None  # off a TTY: the phase's last line not shown yet

    def __call__(self, event: p.Event) -> None:
        d = event.data
        pid, phase = str(d.get("pipeline")), str(d.get("phase"))
        done, total = int(d.get("done") or 0), d.get("total")
        if isinstance(total, int) and total > 0:
            fraction = min(1.0, done / total)
            filled = round(fraction * self.width)
            bar = "#" * filled + "-" * (self.width - filled)
            line = f"{pid}: {phase} [{bar}] {fraction:4.0%}  {done}/{total}"
        else:
            line = f"{pid}: {phase}  {done} records"
        now = self.clock()
        new_phase = (pid, phase) != self.phase
        if self.tty:
            if new_phase and self.shown:
                self.stream.write("\n")
                self.shown = 0
            self.stream.write("\r" + line.ljust(self.shown))
            self.shown = len(line)
        elif new_phase or now - self.last_at >= 1.0:
            if new_phase and self.held_back is not None:  # where the last phase ended
                self.stream.write(self.held_back + "\n")
            self.stream.write(line + "\n")
            self.last_at, self.held_back = now, None
        else:
            self.held_back = line
            return
        self.phase = (pid, phase)
        self.stream.flush()

    def end(self) -> None:
        if self.tty and self.shown:
            self.stream.write("\n")
            self.stream.flush()
        elif self.held_back is not None:
            self.stream.write(self.held_back + "\n")
            self.stream.flush()
            self.held_back = None


def run(client: ControlClient, cmd: p.VerifyRun, as_json: bool, out: TextIO,
        err: TextIO) -> int:
    """Send ``verify.run``, show its progress on ``err``, print the result on ``out``."""
    progress = VerifyProgress(err)
    try:
        with client.subscribe(["verify_progress"]) as sub:
            results = client.request_following(cmd, sub, progress)
    finally:
        progress.end()
    out.write((output.to_json(results) if as_json else human(results)) + "\n")
    agree = isinstance(results, list) and all(r.get("agree") for r in results)
    return 0 if agree else 1


def human(results: Any) -> str:
    """One block per pipeline: agreement, counts and the first keys of each category."""
    if not isinstance(results, list):
        return output.generic(results)
    if not results:
        return "no pipeline to verify"
    return "\n".join(_one(r) for r in results)


def _one(r: dict[str, Any]) -> str:
    if r.get("error"):
        return f"{r['pipeline']}: not verified: {r['error']}"
    sizes = f"a: {r['a_records']} records, b: {r['b_records']} records, {r['seconds']:.1f}s"
    head = f"{r['pipeline']}: sides {'agree' if r['agree'] else 'differ'} ({sizes})"
    lines = [head]
    for name, label in LABELS:
        cat = r[name]
        if cat["count"]:
            keys = ", ".join(cat["keys"])
            more = ", ..." if cat["count"] > len(cat["keys"]) else ""
            lines.append(f"  {label:<13} {cat['count']:>7}  {keys}{more}")
    if r["pending"]:
        lines.append(f"  {'being synced':<13} {r['pending']:>7}  (queued work; verify again "
                     "once the queue is empty)")
    if r["ignored"]:
        lines.append(f"  {'left alone':<13} {r['ignored']:>7}  (differences the rules do not "
                     "sync: filters, directions)")
    repair = r.get("repair")
    if repair:
        if repair.get("held"):
            lines.append(f"  repair held: {repair['held']}")
        else:
            q = repair["queued"]
            skipped = (f"; {repair['skipped']} left to work queued meanwhile"
                       if repair.get("skipped") else "")
            lines.append(f"  repair queued: {q.get('a_to_b', 0)} a->b, {q.get('b_to_a', 0)} "
                         f"b->a{skipped}")
    return "\n".join(lines)
