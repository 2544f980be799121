"""ControlServer and ControlClient over real sockets: round trips, bad frames, isolation of
slow commands, events, socket permissions and CURVE."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
import zmq.auth

from recsync.client import ControlClient, load_curve_keys
from recsync.daemon import protocol as p
from recsync.daemon.control import ControlServer
from recsync.daemon.runtime import CurveConfig, CurveKeys, default_endpoints, runtime_dir
from recsync.errors import ControlError, DaemonUnreachable, RecsyncError

PIPE = p.PipelineStatus(
    pipeline="acme/main",
    customer="acme",
    name="main",
    a="sqlite",
    b="file",
    state="running",
    error=None,
    queued=3,
    in_flight=1,
    failed=0,
    synced_a_to_b=10,
    synced_b_to_a=2,
    conflicts=0,
    restarts=0,
)


class Backend:
    """A handler that records its commands; sync.now blocks until ``release`` is set."""

    def __init__(self) -> None:
        self.calls: list[p.Command] = []
        self.started = threading.Event()
        self.release = threading.Event()

    def inline(self, cmd: p.Command) -> bool:
        return isinstance(cmd, p.StatusGet | p.StatsGet)

    def __call__(self, cmd: p.Command) -> Any:
        self.calls.append(cmd)
        match cmd:
            case p.StatusGet(record_id=None):
                return p.StatusResult(pipelines=[PIPE])
            case p.StatusGet(record_id=rid):
                raise ControlError("NOT_FOUND", f"record {rid!r} is not known to any pipeline.")
            case p.RulesShow(name=name):
                return {name or "contacts": {"a_to_b": ["create"]}}
            case p.SyncEvent():
                return {"pipeline": "acme/main", "record": cmd.record}
            case p.Reload():
                raise ZeroDivisionError("boom")
            case p.SyncNow():
                self.started.set()
                assert self.release.wait(30)
                return p.CountResult(1, ["acme/main"])
        return None


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short private folder: unix socket paths are limited to ~107 characters."""
    path = Path(tempfile.mkdtemp(prefix="rsc", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def serve(short_dir: Path) -> Iterator[Callable[..., tuple[ControlServer, Backend]]]:
    servers: list[ControlServer] = []

    def start(**kwargs: Any) -> tuple[ControlServer, Backend]:
        backend = Backend()
        cmd_ep, ev_ep = default_endpoints(short_dir / "run")
        kwargs.setdefault("command_endpoint", cmd_ep)
        kwargs.setdefault("event_endpoint", ev_ep)
        server = ControlServer(backend, inline=backend.inline, **kwargs)
        servers.append(server)
        server.start()
        return server, backend

    yield start
    for server in servers:
        server.stop()


def client(server: ControlServer, **kwargs: Any) -> ControlClient:
    return ControlClient(server.bound[0], server.bound[1], **kwargs)


def test_round_trip_of_several_commands(serve: Any) -> None:
    server, backend = serve()
    with client(server) as c:
        status = c.request(p.StatusGet())
        assert status["pipelines"][0]["pipeline"] == "acme/main"
        assert status["config_error"] is None
        assert c.request(p.RulesShow("contacts")) == {"contacts": {"a_to_b": ["create"]}}
        echo = c.request(p.SyncEvent("acme", "a", "update", {"record_id": 7, "x": [1, 2]}))
        assert echo["record"] == {"record_id": 7, "x": [1, 2]}
        assert c.request(p.Pause("acme")) is None
    assert [type(cmd) for cmd in backend.calls] == [p.StatusGet, p.RulesShow, p.SyncEvent, p.Pause]


def test_a_req_socket_client_works_too(serve: Any) -> None:
    server, _ = serve()
    with zmq.Context() as ctx, ctx.socket(zmq.REQ) as req:
        req.linger = 0
        req.connect(server.bound[0])
        req.send(p.encoder.encode(p.Request(p.API_VERSION, p.StatusGet())))
        assert req.poll(5000)
        reply = p.reply_decoder.decode(req.recv())
    assert reply.ok and reply.result["pipelines"][0]["customer"] == "acme"


def test_control_error_becomes_its_fault_code(serve: Any) -> None:
    server, _ = serve()
    with client(server) as c, pytest.raises(ControlError) as err:
        c.request(p.StatusGet("42"))
    assert err.value.code == "NOT_FOUND"
    assert str(err.value) == "record '42' is not known to any pipeline."


def test_handler_crash_is_internal_and_the_server_keeps_serving(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server, _ = serve()
    with client(server) as c:
        with pytest.raises(ControlError) as err:
            c.request(p.Reload())
        assert err.value.code == "INTERNAL"
        assert "reload" in str(err.value) and "ZeroDivisionError" in str(err.value)
        assert c.request(p.StatusGet())["pipelines"]
    assert any(r.exc_info for r in caplog.records if r.name == "recsyncd.control")


def _bad(cmd: dict[str, Any], v: Any = p.API_VERSION) -> bytes:
    return msgspec.msgpack.encode({"v": v, "cmd": cmd})


BAD_FRAMES = [
    pytest.param(b"\xc1\xc1 not msgpack", "BAD_REQUEST", "not MessagePack", id="garbage"),
    pytest.param(b"", "BAD_REQUEST", "not MessagePack", id="empty"),
    pytest.param(msgspec.msgpack.encode([1, 2]), "BAD_REQUEST", "must be object", id="array"),
    pytest.param(b"\x00" * 5000, "TOO_LARGE", "5000 bytes; the limit is 4096", id="too-large"),
    pytest.param(_bad({"cmd": "nuke.all"}), "UNKNOWN_COMMAND", "'nuke.all'", id="unknown"),
    pytest.param(
        _bad({"cmd": "sync.event", "customer": 5, "side": "a", "op": "create", "record": {}}),
        "BAD_REQUEST",
        "field `customer` of the `sync.event` command must be str, not int",
        id="wrong-type",
    ),
    pytest.param(
        _bad({"cmd": "status.get", "bogus": 1}),
        "BAD_REQUEST",
        "the `status.get` command has no field `bogus`",
        id="unknown-field",
    ),
    pytest.param(
        _bad({"cmd": "retry.record"}),
        "BAD_REQUEST",
        "missing the required field `record_id`",
        id="missing-field",
    ),
    pytest.param(
        _bad({"cmd": "stats.get"}, v=99), "VERSION", "v1, the request is v99", id="version"
    ),
    pytest.param(_bad({"cmd": "stats.get"}, v="1"), "BAD_REQUEST", "field `v`", id="v-type"),
]


@pytest.mark.parametrize(("frame", "code", "words"), BAD_FRAMES)
def test_bad_frames_get_a_fault_and_others_are_still_served(
    serve: Any, frame: bytes, code: str, words: str
) -> None:
    server, backend = serve(max_frame=4096)
    with client(server) as bad, pytest.raises(ControlError) as err:
        bad.request_raw(frame)
    assert err.value.code == code
    assert words in str(err.value)
    assert backend.calls == []  # nothing ran
    with client(server) as good:
        assert good.request(p.StatusGet())["pipelines"]


def test_a_huge_frame_is_dropped_without_reading_it(serve: Any) -> None:
    server, backend = serve(max_frame=4096)  # frames past 4 x max_frame cut the peer off
    with client(server, timeout=0.5) as huge, pytest.raises(DaemonUnreachable):
        huge.request_raw(b"\x00" * 200_000)
    with client(server) as good:
        assert good.request(p.StatusGet())["pipelines"]
    assert backend.calls == [p.StatusGet()]


def test_multi_frame_garbage_does_not_crash_the_bridge(serve: Any) -> None:
    server, _ = serve()
    with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as dealer:
        dealer.linger = 0
        dealer.connect(server.bound[0])
        dealer.send_multipart([b"\xff", b"two", b"three"])
        assert dealer.poll(5000)
        reply = p.reply_decoder.decode(dealer.recv_multipart()[-1])
        assert reply.error is not None and reply.error.code == "BAD_REQUEST"
        assert "one frame, got 3" in reply.error.message
        dealer.send_multipart([b"", b"", b"x"])  # REQ-style envelope, two body frames
        assert dealer.poll(5000)
        assert p.reply_decoder.decode(dealer.recv_multipart()[-1]).ok is False
    with client(server) as good:
        assert good.request(p.StatusGet())["pipelines"]


def test_a_slow_command_does_not_delay_an_inline_one(serve: Any) -> None:
    server, backend = serve()
    slow_result: list[Any] = []
    slow = threading.Thread(
        target=lambda: slow_result.append(client(server).request(p.SyncNow("acme", full=True)))
    )
    slow.start()
    try:
        assert backend.started.wait(10)
        with client(server, timeout=5) as fast:
            assert fast.request(p.StatusGet())["pipelines"]
            assert fast.request(p.StatsGet()) is None
        assert not backend.release.is_set() and slow.is_alive() and slow_result == []
    finally:
        backend.release.set()
        slow.join(10)
    assert slow_result == [{"count": 1, "pipelines": ["acme/main"]}]


def _wait_subscribed(server: ControlServer, sub: Any) -> int:
    """Publish probes until the subscriber sees one (the PUB/SUB handshake is async)."""
    for _ in range(500):
        seq = server.publish("probe", {})
        event = sub.recv(timeout=0.02)
        if event is not None:
            while sub.recv(timeout=0.05) is not None:  # drain the probes in flight
                pass
            return seq
    raise AssertionError("the subscriber never connected")


def test_events_have_gap_free_sequence_numbers(serve: Any) -> None:
    server, _ = serve()
    assert server.last_seq == 0
    with client(server) as c, c.subscribe() as sub:
        last = _wait_subscribed(server, sub)
        seqs: list[int] = []
        threads = [
            threading.Thread(
                target=lambda: [seqs.append(server.publish("stats", {"n": i})) for i in range(50)]
            )
            for _ in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(seqs) == list(range(last + 1, last + 201))
        assert server.last_seq == last + 200
        got = [sub.recv(timeout=5) for _ in range(200)]
    assert [e.seq for e in got if e] == list(range(last + 1, last + 201))
    assert {e.kind for e in got if e} == {"stats"}
    assert sub.gaps == 0


def test_subscribe_by_kind(serve: Any) -> None:
    server, _ = serve()
    with client(server) as c, c.subscribe(["probe", "record_failed"]) as sub:
        _wait_subscribed(server, sub)
        server.publish("stats", {"x": 1})
        server.publish("probe_other", {})  # same prefix, different kind
        seq = server.publish("record_failed", {"key": "7", "error": "nope"})
        event = sub.recv(timeout=5)
    assert event is not None and (event.seq, event.kind) == (seq, "record_failed")
    assert event.data == {"key": "7", "error": "nope"}


def test_runtime_dir_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    xdg = tmp_path / "xdg"
    xdg.mkdir()
    path = runtime_dir({"XDG_RUNTIME_DIR": str(xdg)})
    assert path == xdg / "recsync" and stat.S_IMODE(path.stat().st_mode) == 0o700
    loose = tmp_path / "systemd"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    assert runtime_dir({"RUNTIME_DIRECTORY": f"{loose}:/other", "XDG_RUNTIME_DIR": "/x"}) == loose
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700
    monkeypatch.chdir(tmp_path)
    assert runtime_dir({}) == tmp_path / "run"
    assert runtime_dir({}, create=True).is_dir()
    assert runtime_dir({"XDG_RUNTIME_DIR": str(tmp_path / "nope")}, create=False) == (
        tmp_path / "nope" / "recsync"
    )
    assert not (tmp_path / "nope").exists()


def test_socket_files_are_private(serve: Any, short_dir: Path) -> None:
    server, _ = serve()
    run = short_dir / "run"
    assert stat.S_IMODE(run.stat().st_mode) == 0o700
    for name in ("control.sock", "events.sock"):
        st = (run / name).stat()
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    server.stop()
    server.stop()  # idempotent
    assert not (run / "control.sock").exists()


def test_refuses_an_open_folder_a_second_server_and_tcp_without_curve(
    serve: Any, short_dir: Path
) -> None:
    open_dir = short_dir / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o755)
    bad = ControlServer(
        Backend(),
        inline=lambda c: True,
        command_endpoint=f"ipc://{open_dir}/c.sock",
        event_endpoint=f"ipc://{open_dir}/e.sock",
    )
    with pytest.raises(RecsyncError, match="open to other users"):
        bad.start()
    server, _ = serve()
    second = ControlServer(
        Backend(),
        inline=lambda c: True,
        command_endpoint=server.command_endpoint,
        event_endpoint=server.event_endpoint,
    )
    with pytest.raises(RecsyncError, match="already listening"):
        second.start()
    with client(server) as c:  # the first one was left alone
        assert c.request(p.StatusGet())["pipelines"]
    tcp = ControlServer(
        Backend(),
        inline=lambda c: True,
        command_endpoint="tcp://127.0.0.1:*",
        event_endpoint="tcp://127.0.0.1:*",
    )
    with pytest.raises(RecsyncError, match="without CURVE"):
        tcp.start()


def test_a_too_long_socket_path_is_a_clear_error(short_dir: Path) -> None:
    deep = short_dir / ("x" * 120)
    server = ControlServer(
        Backend(),
        inline=lambda c: True,
        command_endpoint=f"ipc://{deep}/c.sock",
        event_endpoint=f"ipc://{deep}/e.sock",
    )
    with pytest.raises(RecsyncError, match="longer than the 107 characters"):
        server.start()


def test_no_daemon_fails_fast(short_dir: Path) -> None:
    with pytest.raises(DaemonUnreachable, match="No recsyncd control socket"):
        ControlClient(f"ipc://{short_dir}/none.sock").request(p.StatusGet())


# ---- CURVE --------------------------------------------------------------------------------


@pytest.fixture
def keys(short_dir: Path) -> dict[str, Path]:
    folder = short_dir / "curve"
    clients = folder / "authorized_clients"
    clients.mkdir(parents=True)
    (folder / "made").mkdir()
    out: dict[str, Path] = {}
    for name in ("server", "client", "stranger"):
        public, secret = zmq.auth.create_certificates(str(folder / "made"), name)
        out[name], out[f"{name}_secret"] = Path(public), Path(secret)
    shutil.copy(out["server_secret"], folder / "server.key_secret")
    shutil.copy(out["server"], folder / "server.key")
    shutil.copy(out["client"], clients / "client.key")
    out["folder"] = folder
    return out


def test_curve_config_errors_are_clear(keys: dict[str, Path], short_dir: Path) -> None:
    with pytest.raises(RecsyncError, match=r"server.key_secret does not exist"):
        CurveConfig.load(short_dir)
    with pytest.raises(RecsyncError, match="holds no secret key"):
        CurveConfig(keys["server"], keys["folder"] / "authorized_clients").keys()
    with pytest.raises(RecsyncError, match="does not belong"):
        CurveConfig(keys["server_secret"], keys["folder"], keys["client"]).keys()
    empty = short_dir / "empty"
    empty.mkdir()
    with pytest.raises(RecsyncError, match=r"has no \.key files"):
        CurveConfig(keys["server_secret"], empty).keys()
    with pytest.raises(RecsyncError, match="both"):
        load_curve_keys(str(keys["client_secret"]), None)


def test_tcp_with_curve(serve: Any, keys: dict[str, Path]) -> None:
    server, backend = serve(
        command_endpoint="tcp://127.0.0.1:*",
        event_endpoint="tcp://127.0.0.1:*",
        curve=CurveConfig.load(keys["folder"]),
    )
    good = CurveKeys.from_files(keys["client_secret"], keys["server"])
    with client(server, curve_keys=good, timeout=5) as c:
        assert c.request(p.StatusGet())["pipelines"]
        with c.subscribe() as sub:
            _wait_subscribed(server, sub)
    assert len(backend.calls) == 1

    stranger = CurveKeys.from_files(keys["stranger_secret"], keys["server"])
    with (
        client(server, curve_keys=stranger, timeout=0.5) as c,
        pytest.raises(DaemonUnreachable, match="did not answer"),
    ):
        c.request(p.RulesShow())
    wrong_server = CurveKeys.from_files(keys["client_secret"], keys["stranger"])
    with (
        client(server, curve_keys=wrong_server, timeout=0.5) as c,
        pytest.raises(DaemonUnreachable),
    ):
        c.request(p.RulesShow())
    with client(server, timeout=0.5) as c, pytest.raises(DaemonUnreachable):
        c.request(p.RulesShow())  # plain text client
    assert len(backend.calls) == 1  # none of them ran anything


def test_ticks_order_a_merged_stream_and_never_reach_recv(serve: Any) -> None:
    # [cluster]: node n2 follows; n1's events come relayed, one of them after a newer one
    # of n2's own. Ticks reach neither recv() nor the gap count, kinds filter or not
    server, _ = serve()
    server.origin = ("n2", "b2")

    def relayed(seq: int, ts: float, kind: str, data: dict[str, Any]) -> None:
        server.relay(kind.encode(), p.encoder.encode(p.Event(seq, ts, kind, data, "n1", "b1")))

    with client(server) as c, c.subscribe(["pipeline_state"]) as sub, c.subscribe() as every:
        first = _wait_subscribed(server, every)
        for _ in range(500):  # the filtered one joins too: the tick it gets stays hidden
            server.tick({"peers": ["n1"]})
            if sub.socket.poll(20, zmq.POLLIN):
                assert sub.read_one() is None
                break
        relayed(1, 0.0, p.TICK_KIND, {"peers": ["n2"]})
        server.tick({"peers": ["n1"]})
        mine = server.publish("pipeline_state", {"pipeline": "a", "state": "paused"})
        relayed(2, 1.0, "pipeline_state", {"pipeline": "b", "state": "paused"})  # older
        relayed(2, 2e9, p.TICK_KIND, {"peers": ["n2"]})  # n1 is past everything
        server.tick({"peers": ["n1"]})
        merged = sub.merged()
        got = [next(merged), next(merged)]
        plain = [every.recv(timeout=5) for _ in range(2)]
        assert every.recv(timeout=0.2) is None  # the ticks are not returned
    assert [(e.node, e.data["pipeline"]) for e in got] == [("n1", "b"), ("n2", "a")]
    assert [e and (e.node, e.seq) for e in plain] == [("n2", mine), ("n1", 2)]
    assert every.gaps == 0 and mine > first


class RecordingMirror(ControlServer):
    """A mirror server (not started) that keeps what it is asked to relay; ``on_event``
    runs first (a publisher preempted at that moment)."""

    def __init__(self, short_dir: Path) -> None:
        cmd_ep, ev_ep = default_endpoints(short_dir / "mirror")
        super().__init__(Backend(), inline=lambda _c: True, command_endpoint=cmd_ep,
                         event_endpoint=ev_ep)
        self.got: list[p.Event] = []
        self.on_event: Callable[[bytes], None] = lambda _kind: None

    def relay(self, kind: bytes, payload: bytes) -> None:
        self.on_event(kind)
        self.got.append(p.event_decoder.decode(payload))
        super().relay(kind, payload)


def test_a_mirror_never_gets_a_tick_before_an_event_published_earlier(
        serve: Any, short_dir: Path) -> None:
    # [cluster] control_bind: the tcp server is a mirror, and peers on other hosts relay
    # from it. A tick taken while an event is on its way to the mirror must reach the
    # mirror after it: a tick promises that nothing older comes
    server, _ = serve()
    server.origin = ("n2", "b2")
    mirror = RecordingMirror(short_dir)
    server.mirrors.append(mirror)
    ticker = threading.Thread(target=server.tick, args=({"peers": []},))

    def preempted(kind: bytes) -> None:
        if kind != p.TICK_KIND.encode() and not ticker.is_alive() and not mirror.got:
            ticker.start()
            ticker.join(0.5)  # the tick has its turn (it waits for the lock: it cannot)

    mirror.on_event = preempted
    server.publish("pipeline_state", {"pipeline": "a", "state": "paused"})
    ticker.join(5)
    assert [e.kind for e in mirror.got] == ["pipeline_state", p.TICK_KIND]
    assert mirror.got[0].ts <= mirror.got[1].ts


def test_event_times_never_go_back_when_the_wall_clock_does(serve: Any) -> None:
    reading = [500.0]
    server, _ = serve(wall_clock=lambda: reading[0])
    server.origin = ("n2", "b2")
    with client(server) as c, c.subscribe() as sub:
        for _ in range(500):  # the subscription joins a moment after it is made
            server.tick({"peers": []})
            if sub.socket.poll(20, zmq.POLLIN):
                break
        reading[0] = 1000.0
        server.tick({"peers": []})
        reading[0] = 999.0  # an NTP step back
        seq = server.publish("pipeline_state", {"pipeline": "a", "state": "paused"})
        reading[0] = 1000.5
        later = server.publish("pipeline_state", {"pipeline": "a", "state": "running"})
        got = [sub.recv(timeout=5), sub.recv(timeout=5)]
    assert [e and (e.seq, e.ts) for e in got] == [(seq, 1000.0), (later, 1000.5)]
