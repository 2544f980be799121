"""`recsync` driven in-process against a real ControlServer with a recording handler."""

from __future__ import annotations

import io
import json
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from recsync.cli import main
from recsync.cli.commands import Progress
from recsync.daemon import protocol as p
from recsync.daemon.control import ControlServer
from recsync.daemon.runtime import default_endpoints
from recsync.errors import ControlError

PIPE = dict(
    pipeline="acme/main",
    customer="acme",
    name="main",
    a="sqlite",
    b="file",
    state="running",
    error=None,
    queued=0,
    in_flight=0,
    failed=1,
    synced_a_to_b=10,
    synced_b_to_a=2,
    conflicts=0,
    restarts=0,
)
RECORD = p.RecordStatus(
    "acme/main",
    "42",
    "failed",
    "a_to_b",
    3,
    "HTTP 500 from B",
    True,
    False,
    None,
    [p.HistoryEntry(1.7e9, "failed", "HTTP 500 from B")],
)
FAILED = [p.FailedRecord("acme/main", "42", "a_to_b", 3, "boom: HTTP 500", 1.7e9)]
STATS = [
    p.PipelineStats(
        "acme/main", "running", 5, 2, 100, 1, 12.5, {"a": "closed", "b": "open"}, {"a": (3, 100)}, 0
    )
]


class Recorder:
    """The daemon side: records each command and answers like recsyncd does."""

    def __init__(self) -> None:
        self.calls: list[p.Command] = []
        self.backfill: list[dict[str, Any]] = []  # status rows served during sync now --full
        self.override: dict[type, Any] = {}  # canned results by command type

    def __call__(self, cmd: p.Command) -> Any:
        self.calls.append(cmd)
        if type(cmd) in self.override:
            return self.override[type(cmd)]
        one = p.CountResult(1, ["acme/main"])
        match cmd:
            case p.StatusGet(record_id="404"):
                raise ControlError("NOT_FOUND", "record '404' is not known to any pipeline.")
            case p.StatusGet(record_id=None):
                rows = [self.backfill.pop(0)] if self.backfill else [PIPE]
                return p.StatusResult(pipelines=[p.PipelineStatus(**r) for r in rows])
            case p.StatusGet():
                return p.StatusResult(records=[RECORD])
            case p.FailedList():
                return FAILED
            case p.StatsGet():
                return STATS
            case p.RetryFailed():
                return p.CountResult(2, ["acme/main"])
            case p.SyncEvent(record=record):
                return {
                    "pipeline": "acme/main",
                    "key": str(record.get("record_id")),
                    "op": "upsert",
                    "side": cmd.side,
                }
            case p.RulesShow():
                return {"contacts": {"a_to_b": ["create", "update"], "conflict": None}}
            case p.RulesTest():
                return {"rule_set": "contacts", "matches": True, "other_content": {"x": 1}}
            case p.RulesSet() | p.Reload():
                return p.ReloadResult(["acme/new"], [], [], ["contacts"])
            case p.CrmsList():
                return [{"name": "sqlite", "description": "A SQLite table."}]
            case p.CrmsSchema():
                return {"type": "object", "properties": {"path": {"type": "string"}}}
        return one


@pytest.fixture
def daemon() -> Iterator[tuple[ControlServer, Recorder, list[str]]]:
    folder = Path(tempfile.mkdtemp(prefix="rscli", dir="/tmp"))
    recorder = Recorder()
    command, events = default_endpoints(folder / "run")
    server = ControlServer(
        recorder,
        inline=lambda c: isinstance(c, p.StatusGet),
        command_endpoint=command,
        event_endpoint=events,
    )
    server.start()
    yield server, recorder, ["--endpoint", command, "--event-endpoint", events]
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


CASES = [
    (
        [
            "sync",
            "event",
            "acme",
            "--side",
            "a",
            "--op",
            "update",
            "--pipeline",
            "main",
            '{"record_id": 7, "name": "Ann"}',
        ],
        p.SyncEvent("acme", "a", "update", {"record_id": 7, "name": "Ann"}, "main"),
        "acme/main: upsert of record 7 from side a submitted",
    ),
    (
        ["sync", "now", "acme", "--direction", "b-to-a"],
        p.SyncNow("acme", None, "b_to_a"),
        "polling now: acme/main",
    ),
    (["status"], p.StatusGet(), "acme/main  running"),
    (["status", "42"], p.StatusGet("42"), "last error: HTTP 500 from B"),
    (["failed", "acme", "--limit", "5"], p.FailedList("acme", 5), "boom: HTTP 500"),
    (["retry", "42"], p.RetryRecord("42"), "record 42 queued for retry in acme/main"),
    (
        ["retry", "--all-failed", "acme"],
        p.RetryFailed("acme"),
        "2 failed records queued for retry in acme/main",
    ),
    (["retry", "--all-failed"], p.RetryFailed(), "2 failed records"),
    (
        [
            "config",
            "override",
            "acme",
            "--pipeline",
            "main",
            "--batch-size",
            "500",
            "--flush-interval",
            "0.5",
            "--rate-limit",
            "100/60",
            "--persist",
        ],
        p.ConfigOverride(
            "acme",
            "main",
            batch_size=500,
            flush_interval=0.5,
            rate_limit_max=100,
            rate_limit_window=60.0,
            persist=True,
        ),
        "batch_size=500, flush_interval=0.5, rate_limit=100/60s applied to acme/main and saved",
    ),
    (
        ["config", "override", "acme", "--poll-interval", "2"],
        p.ConfigOverride("acme", poll_interval=2.0),
        "poll_interval=2 applied to acme/main",
    ),
    (
        ["rules", "show", "contacts"],
        p.RulesShow("contacts"),
        '[contacts]\na_to_b = [\n    "create",',
    ),
    (["rules", "show"], p.RulesShow(), "[contacts]"),
    (
        ["rules", "test", "contacts", '{"a": 1}', "--side", "b"],
        p.RulesTest("contacts", {"a": 1}, "b"),
        "matches:       yes",
    ),
    (["reload"], p.Reload(), "added:         acme/new\nchanged:       none"),
    (["pause", "acme"], p.Pause("acme"), "paused acme/main"),
    (["resume", "acme", "--pipeline", "main"], p.Resume("acme", "main"), "resumed acme/main"),
    (
        ["deletes", "confirm", "acme", "--pipeline", "main", "--side", "b"],
        p.ConfirmDeletes("acme", "main", "b"),
        "acme/main: the held deletes on side b go through once",
    ),
    (["crms", "list"], p.CrmsList(), "sqlite  A SQLite table."),
    (["crms", "schema", "sqlite"], p.CrmsSchema("sqlite"), '"type": "object"'),
    (["stats"], p.StatsGet(), "a=closed b=open  a=3/100"),
]


@pytest.mark.parametrize(
    ("argv", "command", "shown"), CASES, ids=[" ".join(c[0][:2]) for c in CASES]
)
def test_each_subcommand(
    daemon: Any, capsys: pytest.CaptureFixture[str], argv: list[str], command: p.Command, shown: str
) -> None:
    _, recorder, ep = daemon
    assert main([*ep, *argv]) == 0
    out = capsys.readouterr().out
    assert shown in out
    assert main([*argv, "--json", *ep]) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert recorder.calls == [command, command]
    assert as_json == json.loads(msgspec.json.encode(recorder(command)))


def test_status_table_is_aligned(daemon: Any, capsys: pytest.CaptureFixture[str]) -> None:
    _, _, ep = daemon
    assert main([*ep, "status"]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["PIPELINE", "STATE", "QUEUED"]
    assert header.index("FAILED") + len("FAILED") == row.index(" 1 ") + 2  # right-aligned


def test_status_names_each_pipelines_node_in_a_cluster(
    daemon: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """[cluster]: a NODE column, the owner of each pipeline ('-': none owns it now);
    none on a single node (no pipeline has a node)."""
    _, recorder, ep = daemon
    rows = [dict(PIPE, node="n2"), dict(PIPE, pipeline="acme/other", name="other",
                                        state="stopped", node=None)]
    recorder.override = {p.StatusGet: p.StatusResult(
        pipelines=[p.PipelineStatus(**r) for r in rows])}
    assert main([*ep, "status"]) == 0
    header, mine, orphan = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["PIPELINE", "NODE", "STATE"]
    assert mine.split()[:3] == ["acme/main", "n2", "running"]
    assert orphan.split()[:3] == ["acme/other", "-", "stopped"]
    assert mine.index("n2") == header.index("NODE")
    recorder.override = {}
    assert main([*ep, "status"]) == 0
    assert "NODE" not in capsys.readouterr().out


def test_an_unexpected_result_shape_is_shown_as_json(
    daemon: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    _, recorder, ep = daemon
    recorder.override = {p.StatusGet: {"pipelines": [{"odd": 1}]}, p.Pause: [1, "x"]}
    assert main([*ep, "status"]) == 0
    assert json.loads(capsys.readouterr().out) == {"pipelines": [{"odd": 1}]}
    assert main([*ep, "pause", "acme"]) == 0
    assert capsys.readouterr().out == "no running pipeline of customer acme: nothing paused\n"


def test_rules_set_sends_the_file(
    daemon: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, recorder, ep = daemon
    rules = tmp_path / "rules.toml"
    rules.write_text('[contacts]\na_to_b = ["create"]\n')
    assert main([*ep, "rules", "set", str(rules)]) == 0
    assert recorder.calls == [p.RulesSet('[contacts]\na_to_b = ["create"]\n')]
    assert "rules replaced and applied" in capsys.readouterr().out
    assert main([*ep, "rules", "set", str(tmp_path / "missing.toml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_error_reply_exits_1(daemon: Any, capsys: pytest.CaptureFixture[str]) -> None:
    _, _, ep = daemon
    assert main([*ep, "status", "404"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "recsync: record '404' is not known to any pipeline. [NOT_FOUND]\n"


def test_no_daemon_exits_3_fast(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    assert main(["--endpoint", f"ipc://{tmp_path}/none.sock", "stats"]) == 3
    assert "No recsyncd control socket" in capsys.readouterr().err
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "stale.sock"))  # a file nobody listens on, as after kill -9
    stale.close()
    assert main(["--endpoint", f"ipc://{tmp_path}/stale.sock", "events"]) == 3
    assert "nothing listens on" in capsys.readouterr().err
    assert main(["--endpoint", "tcp://127.0.0.1:9", "--timeout", "0.2", "stats"]) == 3
    assert "did not answer on tcp://127.0.0.1:9 within 0.2s" in capsys.readouterr().err
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("record", "error"),
    [
        (
            '{"record_id": 7,, }',
            "Expecting property name enclosed in double quotes at line 1 column 17 (character 17)",
        ),
        ('{"a": 1}\n{"b"', "Extra data at line 2 column 1"),
        ("[1, 2]", "must be a JSON object ({...}), not list"),
    ],
)
def test_bad_record_json_exits_2(
    daemon: Any, capsys: pytest.CaptureFixture[str], record: str, error: str
) -> None:
    _, recorder, ep = daemon
    assert main([*ep, "sync", "event", "acme", "--side", "a", "--op", "create", record]) == 2
    assert error in capsys.readouterr().err
    assert main([*ep, "rules", "test", "contacts", record]) == 2
    assert recorder.calls == []


def test_usage_errors_exit_2(daemon: Any, capsys: pytest.CaptureFixture[str]) -> None:
    _, recorder, ep = daemon
    assert main([*ep, "retry"]) == 2
    assert main([*ep, "config", "override", "acme"]) == 2
    assert "at least one of --batch-size" in capsys.readouterr().err
    for argv in (
        ["config", "override", "acme", "--rate-limit", "100"],
        ["sync", "now", "acme", "--direction", "sideways"],
        ["failed", "--limit", "0"],
        ["bogus"],
    ):
        with pytest.raises(SystemExit) as exit_:
            main([*ep, *argv])
        assert exit_.value.code == 2
    assert "is not N/SECONDS" in capsys.readouterr().err
    assert main([*ep, "--curve-secret-key", "x.key_secret", "stats"]) == 2
    assert recorder.calls == []


def test_schema_needs_no_daemon(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--endpoint", "ipc:///nonexistent/x.sock", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    tags = {
        d["properties"]["cmd"]["enum"][0]
        for d in schema["$defs"].values()
        if "cmd" in d.get("properties", {}) and "enum" in d["properties"]["cmd"]
    }
    assert tags == {c.__struct_config__.tag for c in p.COMMANDS}
    assert {"Reply", "Fault", "Event", "StatusResult"} <= schema["$defs"].keys()


def test_sync_now_full_waits_for_the_backfill(
    daemon: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    _, recorder, ep = daemon
    recorder.backfill = [
        PIPE | {"queued": q, "in_flight": f, "synced_a_to_b": 10 + s}
        for q, f, s in ((0, 0, 0), (20, 5, 5), (8, 2, 20), (0, 0, 30))
    ]
    assert main([*ep, "sync", "now", "acme", "--full", "--poll", "0.01"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "backfill done: 30 records written in " + captured.out.split(" in ")[1]
    assert "(acme/main)" in captured.out
    assert "[" in captured.err and "30/30 written" in captured.err  # plain lines, not a TTY
    assert "\r" not in captured.err
    assert recorder.calls[0] == p.SyncNow("acme", full=True)
    assert recorder.calls[1:] == [p.StatusGet()] * 4


def test_sync_now_full_stops_on_a_paused_pipeline(
    daemon: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    _, recorder, ep = daemon
    recorder.backfill = [PIPE | {"queued": 5, "state": "paused"}]
    assert main([*ep, "--json", "sync", "now", "acme", "--full", "--poll", "0.01"]) == 1
    assert (
        "pipeline acme/main is paused; `recsync resume` it. [UNAVAILABLE]"
        in capsys.readouterr().err
    )


def test_progress_bar_redraws_on_a_tty() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    bar = Progress(stream, width=10)
    bar.show(0, 10, 0.0)
    bar.show(5, 5, 1.0)
    bar.end()
    assert stream.getvalue() == (
        "\r[----------]   0%  0/10 written  0s\r[#####-----]  50%  5/10 written  1s\n"
    )


def _follow(server: ControlServer, argv: list[str]) -> int:
    """Run `recsync events` in a thread, publishing until it has what it waits for."""
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(main(argv)))
    thread.start()
    deadline = time.monotonic() + 20
    while thread.is_alive() and time.monotonic() < deadline:
        server.publish("stats", {"pipelines": [msgspec.to_builtins(STATS[0])]})
        server.publish("record_failed", {"pipeline": "acme/main", "key": "42"})
        thread.join(0.02)
    thread.join(1)
    assert result, "recsync events did not finish"
    return result[0]


def test_events_human_and_json(daemon: Any, capsys: pytest.CaptureFixture[str]) -> None:
    server, _, ep = daemon
    assert _follow(server, [*ep, "events", "--count", "2", "--kind", "record_failed"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert all(" record_failed  pipeline=acme/main key=42" in line for line in lines)
    assert _follow(server, [*ep, "events", "--count", "4", "--json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + 4))
    assert {e["kind"] for e in events} == {"stats", "record_failed"}


def test_demo_seed_still_works(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "demo.sqlite"
    assert main(["demo", "seed", "--count", "3", "--start-id", "10", "--path", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: inserted 3 demo users (record_id 10-12)\n"
    assert main(["demo", "seed", "--count", "-1", "--path", str(path)]) == 2
