"""`recsync verify`'s rendering: the progress on stderr and the human result."""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from recsync.cli import main, verify
from recsync.cli.verify import VerifyProgress, human
from recsync.client import ControlClient
from recsync.daemon import protocol as p
from recsync.daemon.control import ControlServer
from recsync.daemon.protocol import Event
from recsync.daemon.runtime import default_endpoints
from recsync.errors import DaemonUnreachable


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
    bar(event("listing a", 100, 200))  # within a second of the last line: held back...
    bar(event("comparing", 300, None))  # ...until the next phase, shown after it
    now[0] += 1.0
    bar(event("comparing", 400, None))  # a second later: shown
    bar(event("comparing", 450, None))  # the last figures: shown at the end
    bar.end()
    assert stream.getvalue().splitlines() == [
        "acme/main: listing a [----------]   0%  0/200",
        "acme/main: listing a [#####-----]  50%  100/200",
        "acme/main: comparing  300 records", "acme/main: comparing  400 records",
        "acme/main: comparing  450 records"]


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


# ---- the client side of a long command, against a real ControlServer ----------------------


@pytest.fixture
def folder() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="rsver", dir="/tmp"))  # short: ipc paths are limited
    yield path
    shutil.rmtree(path, ignore_errors=True)


def result(agree: bool) -> p.VerifyResult:
    empty = p.VerifyCategory(0, [])
    return p.VerifyResult("acme/main", agree, 1, 1 if agree else 0, empty,
                          p.VerifyCategory(0 if agree else 1, [] if agree else ["7"]),
                          empty, empty, empty, 0, 0, 0.1)


def serve(folder: Path, handler: Any) -> ControlServer:
    command, events = default_endpoints(folder / "run")
    server = ControlServer(handler, inline=lambda c: False, command_endpoint=command,
                           event_endpoint=events)
    server.start()
    return server


def test_progress_is_shown_while_the_command_runs_and_the_exit_code_says_if_sides_agree(
        folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shown = threading.Event()
    sent: list[p.Command] = []

    def handler(cmd: p.Command) -> Any:
        sent.append(cmd)
        deadline = time.monotonic() + 20
        # publish until the client has shown one (a SUB socket joins a moment late)
        while len(sent) == 1 and not shown.is_set() and time.monotonic() < deadline:
            server.publish("verify_progress", {"pipeline": "acme/main", "phase": "listing a",
                                               "side": "a", "done": 5, "total": 10})
            shown.wait(0.02)
        return [result(agree=isinstance(cmd, p.VerifyRun) and cmd.repair)]

    server = serve(folder, handler)
    err = io.StringIO()

    class Seen(io.StringIO):
        def write(self, text: str) -> int:
            shown.set()
            return err.write(text)

    try:
        ep = ["--endpoint", server.command_endpoint]
        with ControlClient(server.command_endpoint) as client:
            assert verify.run(client, p.VerifyRun("acme", "main"), False, io.StringIO(),
                              Seen()) == 1
        assert "acme/main: listing a [" in err.getvalue()
        assert sent == [p.VerifyRun("acme", "main", False, 10)]
        assert main([*ep, "--json", "verify", "acme", "--repair", "--keys", "3"]) == 0
        assert json.loads(capsys.readouterr().out)[0]["agree"] is True
        assert sent[-1] == p.VerifyRun("acme", None, True, 3)
        assert main([*ep, "verify", "--pipeline", "main"]) == 2  # usage: no CUSTOMER
    finally:
        server.stop()


def test_silence_longer_than_the_timeout_is_unreachable(folder: Path) -> None:
    release = threading.Event()

    def handler(cmd: p.Command) -> Any:
        release.wait(20)
        return []

    server = serve(folder, handler)
    try:
        with ControlClient(server.command_endpoint, timeout=0.3) as client, \
                pytest.raises(DaemonUnreachable, match="neither progress nor an answer"):
            verify.run(client, p.VerifyRun(), False, io.StringIO(), io.StringIO())
    finally:
        release.set()
        server.stop()
