"""`recsync verify`'s rendering: the progress on stderr and the human result."""

from __future__ import annotations

import io
from typing import Any

from recsync.cli.verify import VerifyProgress, human
from recsync.daemon.protocol import Event


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def event(phase: str, done: int, total: int | None) -> Event:
    return Event(1, 0.0, "verify_progress",
                 {"pipeline": "acme/main", "phase": phase, "side": "a", "done": done,
                  "total": total})


def test_progress_is_a_bar_on_a_tty_and_a_count_without_a_total() -> None:
    stream = Tty()
    bar = VerifyProgress(stream, width=10)
    bar(event("listing a", 0, 200))
    bar(event("listing a", 100, 200))
    bar(event("listing b", 50, None))
    bar.end()
    assert stream.getvalue() == (
        "\racme/main: listing a [----------]   0%  0/200"
        "\racme/main: listing a [#####-----]  50%  100/200"
        "\n\racme/main: listing b  50 records\n")


def test_progress_off_a_tty_is_a_line_per_phase() -> None:
    stream = io.StringIO()
    now = [100.0]
    bar = VerifyProgress(stream, width=10, clock=lambda: now[0])
    bar(event("listing a", 0, 200))
    bar(event("listing a", 100, 200))  # within a second of the last line: not shown
    bar(event("comparing", 300, None))  # a new phase: shown
    now[0] += 1.0
    bar(event("comparing", 400, None))  # a second later: shown
    bar.end()
    assert stream.getvalue().splitlines() == [
        "acme/main: listing a [----------]   0%  0/200", "acme/main: comparing  300 records",
        "acme/main: comparing  400 records"]


def category(count: int, keys: list[str]) -> dict[str, Any]:
    return {"count": count, "keys": keys}


def test_human_result_names_each_category_with_its_first_keys() -> None:
    none = category(0, [])
    result = {"pipeline": "acme/main", "agree": False, "a_records": 20, "b_records": 19,
              "missing_a": none, "missing_b": category(1, ["5"]), "extra_a": none,
              "extra_b": none, "different": category(12, ["1", "2"]), "pending": 0,
              "ignored": 3, "seconds": 0.25,
              "repair": {"queued": {"a_to_b": 13, "b_to_a": 0}, "skipped": 0, "held": None}}
    text = human([result])
    assert text.splitlines() == [
        "acme/main: sides differ (a: 20 records, b: 19 records, 0.2s)",
        "  missing on b        1  5",
        "  different          12  1, 2, ...",
        "  left alone          3  (differences the rules do not sync: filters, directions)",
        "  repair queued: 13 a->b, 0 b->a",
    ]
    assert human([]) == "no pipeline to verify"
