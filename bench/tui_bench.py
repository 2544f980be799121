"""Dashboard benchmark: `python -m bench.tui_bench`.

A fake recsyncd (the real ControlServer, in a child process so its CPU is not counted)
serves a snapshot of 200 pipelines and publishes 100 events/s (a stats event for all 200
pipelines every second, pipeline_state events in between). The dashboard runs headless
under Textual's Pilot. Measured: key press -> screen updated (perf_counter), and the
dashboard process's CPU (process time over wall time) while events flow.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PIPELINES = 200
RATE = 100  # events per second
LATENCY_TARGET_MS = 100.0
CPU_TARGET = 0.25


def _status(i: int) -> dict[str, Any]:
    customer, name = f"customer{i // 2:03d}", f"p{i % 2}"
    return {
        "pipeline": f"{customer}/{name}",
        "customer": customer,
        "name": name,
        "a": "sqlite",
        "b": "salesforce",
        "state": "running",
        "error": None,
        "queued": i,
        "in_flight": 0,
        "failed": 0,
        "synced_a_to_b": 10 * i,
        "synced_b_to_a": 0,
        "conflicts": 0,
        "restarts": 0,
    }


def _stats(i: int, tick: int) -> dict[str, Any]:
    s = _status(i)
    return {
        "pipeline": s["pipeline"],
        "state": "running",
        "queued": (i + tick) % 50,
        "in_flight": tick % 3,
        "synced": 10 * i + tick,
        "failed": 0,
        "rate": float((i * tick) % 40),
        "circuit": {"a": "closed", "b": "closed"},
        "rate_limit": {"a": [tick % 100, 100], "b": [i % 100, 100]},
        "restarts": 0,
    }


def serve(folder: Path, seconds: float) -> None:
    """The fake daemon: answer snapshots, publish RATE events/s for ``seconds``."""
    from recsync.daemon import protocol as p
    from recsync.daemon.control import ControlServer
    from recsync.errors import ControlError

    tick = 0
    server: ControlServer

    def handle(cmd: p.Command) -> Any:
        if isinstance(cmd, p.SnapshotGet):
            return {
                "seq": server.last_seq,
                "endpoint": "bench",
                "status": {
                    "pipelines": [_status(i) for i in range(PIPELINES)],
                    "config_error": None,
                },
                "stats": [_stats(i, tick) for i in range(PIPELINES)],
                "failed": [],
                "rules": ["contacts"],
                "last_reload": None,
            }
        if isinstance(cmd, p.FailedList):
            return []
        if isinstance(cmd, p.RulesShow):
            return {"contacts": {"mappings": {"a": "b"}}}
        raise ControlError("UNKNOWN_COMMAND", type(cmd).__name__)

    server = ControlServer(
        handle,
        inline=lambda c: True,
        command_endpoint=f"ipc://{folder}/control.sock",
        event_endpoint=f"ipc://{folder}/events.sock",
    )
    server.start()
    print("ready", flush=True)
    rnd = random.Random(1)
    start = time.monotonic()
    n = 0
    try:
        while time.monotonic() - start < seconds:
            n += 1
            due = start + n / RATE
            time.sleep(max(0.0, due - time.monotonic()))  # pacing the publisher
            if n % RATE == 0:
                tick += 1
                server.publish("stats", {"pipelines": [_stats(i, tick) for i in range(PIPELINES)]})
            else:
                i = rnd.randrange(PIPELINES)
                state = rnd.choice(["running", "running", "restarting", "paused"])
                server.publish(
                    "pipeline_state",
                    {
                        "pipeline": _status(i)["pipeline"],
                        "state": state,
                        "error": None,
                        "restarts": n % 5,
                    },
                )
    finally:
        server.stop()


async def measure(folder: Path, cpu_seconds: float, presses: int) -> dict[str, Any]:
    from recsync.client import ControlClient
    from recsync.tui.app import make_app

    app = make_app(
        lambda: ControlClient(
            f"ipc://{folder}/control.sock", f"ipc://{folder}/events.sock", timeout=2.0
        )
    )
    async with app.run_test(size=(120, 40)) as pilot:
        deadline = time.monotonic() + 20
        while not (app.snapshots_applied and app.events_applied > RATE):
            if time.monotonic() > deadline:
                raise SystemExit("the dashboard got no snapshot or events from the fake daemon")
            await pilot.pause(0.05)
        events0, wall0, cpu0 = app.events_applied, time.perf_counter(), time.process_time()
        await pilot.pause(cpu_seconds)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        events = app.events_applied - events0
        latencies, round_trips = [], []
        per_key: dict[str, list[float]] = {}

        def view() -> tuple[str, int | None]:
            tables = app.screen.query("LiveTable, DataTable")
            return type(app.screen).__name__, tables.first().cursor_row if tables else None

        # The screen update is when the app hands a rendered frame to its driver (App._display;
        # the headless driver then writes nothing). Pilot's own waits after a key (about
        # 120 ms even for a two-screen toy app here) are not the app's latency; they are
        # reported separately as the round trip.
        frames: list[tuple[float, tuple[str, int | None]]] = []
        display = app._display

        def timed_display(screen: Any, renderable: Any) -> None:
            display(screen, renderable)
            if renderable is not None:
                frames.append((time.perf_counter(), view()))

        app._display = timed_display  # type: ignore[method-assign]
        keys = ["down", "down", "up", "f", "o", "r", "o"]
        for n in range(presses):
            key = keys[n % len(keys)]
            before = view()
            frames.clear()
            t0 = time.perf_counter()
            await pilot.press(key)
            await pilot.pause()  # the refresh that follows the key
            round_trips.append((time.perf_counter() - t0) * 1000)
            shown = next((t for t, state in frames if t >= t0 and state != before), None)
            assert shown is not None, f"{key} changed nothing on screen"
            latencies.append((shown - t0) * 1000)
            per_key.setdefault(key, []).append(latencies[-1])
    return {
        "events": events,
        "wall": wall,
        "cpu": cpu,
        "latencies": latencies,
        "round_trips": round_trips,
        "per_key": per_key,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=10.0, help="CPU measuring window")
    parser.add_argument("--presses", type=int, default=35)
    parser.add_argument("--pipelines", type=int, default=PIPELINES)
    args = parser.parse_args()
    globals()["PIPELINES"] = args.pipelines
    if args.serve:
        serve(args.serve, args.seconds + 60)
        return 0
    with tempfile.TemporaryDirectory(prefix="tui-bench-") as tmp:
        child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.tui_bench",
                "--serve",
                tmp,
                "--seconds",
                str(args.seconds),
                "--pipelines",
                str(args.pipelines),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            if child.stdout.readline().strip() != "ready":
                raise SystemExit("the fake daemon did not start")
            result = asyncio.run(measure(Path(tmp), args.seconds, args.presses))
        finally:
            child.terminate()
            child.wait(timeout=30)
    lat = sorted(result["latencies"])
    trips = sorted(result["round_trips"])
    p95 = lat[max(0, int(len(lat) * 0.95) - 1)]
    share = result["cpu"] / result["wall"]
    print(
        f"dashboard: {PIPELINES} pipelines, {result['events'] / result['wall']:.0f} events/s "
        f"received over {result['wall']:.1f}s"
    )
    print(
        f"key press -> screen update: median {statistics.median(lat):.1f} ms, "
        f"p95 {p95:.1f} ms, max {lat[-1]:.1f} ms over {len(lat)} presses "
        f"(target: under {LATENCY_TARGET_MS:.0f} ms) "
        f"{'OK' if p95 < LATENCY_TARGET_MS else 'MISSED'}"
    )
    print("per key, max ms: " + ", ".join(
        f"{key} {max(v):.0f}" for key, v in sorted(result["per_key"].items())))
    print(
        f"(Pilot round trip per key, harness waits included: median "
        f"{statistics.median(trips):.1f} ms)"
    )
    print(
        f"CPU while events flow: {100 * share:.1f}% of one core "
        f"(target: under {100 * CPU_TARGET:.0f}%) {'OK' if share < CPU_TARGET else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
