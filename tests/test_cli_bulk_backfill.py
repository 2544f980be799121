"""`sync now --full` waits for, and shows, a side that reads through a bulk query job."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from recsync.cli import main
from recsync.cli.commands import Progress, wait_backfill
from recsync.cli.reading import bulk_reads
from recsync.client import ControlClient
from recsync.daemon import protocol as p
from tests.test_cli import PIPE, daemon  # noqa: F401 - the fake recsyncd fixture


def _bulk(read: int, total: int) -> str:
    state = {"job": "750x", "since": "2026-01-01T00:00:00.000+0000", "locator": "",
             "total": total, "read": read, "polls": 2}
    return json.dumps({"bulk": state})


def test_sync_now_full_shows_the_bulk_read_then_the_writes(
    daemon: Any, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    _, recorder, ep = daemon
    base = PIPE | {"synced_a_to_b": 0, "synced_b_to_a": 0}
    after = '{"ts":"2026-01-01T00:00:00.000+0000","seen":[]}'
    recorder.backfill = [
        base | {"cursors": {"b": _bulk(0, 100)}},  # the job runs: nothing queued yet
        base | {"cursors": {"b": _bulk(0, 100)}},
        base | {"cursors": {"b": _bulk(40, 100)}},
        base | {"cursors": {"b": _bulk(100, 100)}, "queued": 60},
        base | {"cursors": {"b": after}, "queued": 30, "synced_b_to_a": 70},
        base | {"cursors": {"b": after}, "synced_b_to_a": 100},
    ]
    assert main([*ep, "sync", "now", "acme", "--full", "--poll", "0.01"]) == 0
    captured = capsys.readouterr()
    assert "backfill done: 100 records written" in captured.out
    assert "0/100 read (bulk query job)" in captured.err
    assert "100/100 written" in captured.err
    assert recorder.calls[1:] == [p.StatusGet()] * 6  # it did not stop while reading


def test_bulk_reads_sums_sides_and_ignores_other_cursors() -> None:
    rows = [
        {"cursors": {"a": _bulk(5, 10), "b": '{"ts": "x"}'}},
        {"cursors": {"a": "not json {\"bulk\"", "b": _bulk(1, 3)}},
        {"cursors": {}},
    ]
    assert bulk_reads(rows) == (6, 13)
    assert bulk_reads([{"cursors": {"a": '{"ts": "x"}', "b": None}}]) is None


def test_reading_bar_on_a_tty() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    bar = Progress(stream, width=10)
    bar.show_reading(40, 100, 3.0)
    bar.show(10, 50, 4.0)
    bar.end()
    first = "[####------]  40%  40/100 read (bulk query job)  3s"
    second = "[##--------]  17%  10/60 written  4s"
    # each redraw blanks out what is left of the longer line before it
    assert stream.getvalue() == f"\r{first}\r{second.ljust(len(first))}\n"


def test_the_wait_does_not_end_while_a_side_is_still_reading(daemon: Any) -> None:  # noqa: F811
    """Past the grace period with nothing queued, a running bulk read still counts."""
    _, recorder, ep = daemon
    base = PIPE | {"synced_a_to_b": 0, "synced_b_to_a": 0}
    recorder.backfill = [base | {"cursors": {"b": _bulk(0, 10)}}] * 3 + [
        base | {"cursors": {"b": '{"ts":"x"}'}, "queued": 10},
        base | {"cursors": {"b": '{"ts":"x"}'}, "synced_b_to_a": 10},
    ]
    with ControlClient(ep[1]) as client:
        done = wait_backfill(client, p.SyncNow("acme", full=True), None, 0.0, io.StringIO(),
                             grace=0.0)
    assert done["written"] == 10
    assert len(recorder.calls) == 5
