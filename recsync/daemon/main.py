"""`recsyncd` command line: parse options, load config, run until done or signalled."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsync.config import AppConfig, load_config
from recsync.daemon.app import Daemon
from recsync.daemon.logs import (
    LogLocation,
    default_log_file,
    journal_unit,
    setup_logging,
    write_log_note,
)
from recsync.daemon.notify import Notifier, Watchdog
from recsync.daemon.reload import ConfigWatcher
from recsync.errors import ConfigError, RecsyncError
from recsync.state.lock import StateDirLock

if TYPE_CHECKING:  # imported when serving (it brings subprocess): not by --once
    from recsync.daemon.frontproc import FrontProcess

log = logging.getLogger("recsyncd")


def _env_dir(name: str, default: str) -> Path:
    return Path(os.environ.get(name, default).split(":")[0])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="recsyncd", description="Keep records in sync both ways, per customer pipeline.")
    parser.add_argument(
        "--config-dir", type=Path, default=_env_dir("CONFIGURATION_DIRECTORY", "."),
        help="folder with customer_settings.toml and rules.toml "
             "(default: $CONFIGURATION_DIRECTORY or the current folder)")
    parser.add_argument(
        "--state-dir", type=Path, default=_env_dir("STATE_DIRECTORY", "state"),
        help="folder for the per-pipeline state files (default: $STATE_DIRECTORY or ./state)")
    parser.add_argument(
        "--once", action="store_true",
        help="run until both sides are caught up, print a summary per pipeline, exit "
             "(0, or 1 if any record is failed)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="with --once: give up after this many seconds (exit 3)")
    parser.add_argument("--endpoint", default=os.environ.get("RECSYNC_ENDPOINT"),
                        help="control socket (default: ipc:// in the runtime directory)")
    parser.add_argument("--event-endpoint", default=os.environ.get("RECSYNC_EVENT_ENDPOINT"),
                        help="event socket (default: ipc:// in the runtime directory)")
    parser.add_argument("--curve-dir", type=Path, default=None,
                        help="for tcp:// endpoints: folder with server.key_secret and an "
                             "authorized_clients/ folder of client public keys")
    parser.add_argument("--log-file", type=Path, default=None,
                        help="JSON log file with rotation (default: $LOGS_DIRECTORY or "
                             "./logs, record_sync.log)")
    parser.add_argument("--log-level", default=os.environ.get("RECSYNC_LOG_LEVEL", "info"),
                        choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--metrics-port", default=os.environ.get("RECSYNC_METRICS_PORT"),
        help="serve Prometheus metrics on PORT (127.0.0.1) or HOST:PORT (default: "
             "$RECSYNC_METRICS_PORT, else [cluster] metrics_port, else none)")
    parser.add_argument("--node", default=None,
                        help="with [cluster]: this node's name, unique among the live ones "
                             "(default: $RECSYNC_NODE, else the host name)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.once:
        setup_logging("warning", sys.stderr)
    else:
        setup_logging(args.log_level, sys.stdout, log_file=args.log_file or default_log_file())
    # ${STATE_DIRECTORY} in a connector's path names the state folder in use, however given
    os.environ["STATE_DIRECTORY"] = str(args.state_dir.resolve())
    try:
        config = load_config(args.config_dir)
    except ConfigError as exc:
        print(f"recsyncd: {exc}", file=sys.stderr)
        return 2
    lock = StateDirLock(args.state_dir)
    try:
        lock.acquire()  # before anything in the state directory is touched
    except RecsyncError as exc:
        print(f"recsyncd: {exc}", file=sys.stderr)
        return 2
    try:
        daemon = Daemon(config, args.state_dir, config_dir=args.config_dir)
        start_embedded_mocks(config, args.state_dir)
        tune_gc()
        if args.once:
            return _run_once(daemon, args)
        return _serve(daemon, args)
    finally:
        lock.release()


# Pages of records in flight are thousands of young objects that the cyclic collector
# would walk again on every pass; they are freed by reference counting, and garbage
# cycles are rare here, so the youngest generation is collected 20 times less often.
GC_THRESHOLDS = (14_000, 10, 10)
SIGNAL_CHECK = 0.5  # seconds: the longest a signal waits for its handler (see the main loop)


def tune_gc() -> None:
    """After start-up: keep the modules and config out of collections, collect less often.

    Only the young generations are collected before the freeze: what imports and the
    config leave as garbage is young, and a full collection of the imported modules took
    10 ms of each `recsyncd --once` (0.35 ms for the young ones; none freed either way)."""
    gc.collect(1)
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def start_embedded_mocks(config: AppConfig, state_dir: Path) -> None:
    """Start the mock CRMs that `mock = true` sides use, keeping their records in the state
    folder: the links recsyncd keeps there must find the same records after a restart."""
    wanted = [side for cfg in config.pipelines.values() for side in (cfg.a, cfg.b)
              if getattr(side.options, "mock", False)
              and not getattr(side.options, "instance_url", "")]
    if not wanted:
        return  # (the mocks' modules are not even imported)
    from recsync import mock

    kinds = {side.connector for side in wanted if side.connector in mock.KINDS}
    for kind in sorted(kinds):
        state_dir.mkdir(parents=True, exist_ok=True)
        server = mock.embedded(kind, data=state_dir / f"mock-{kind}.json")
        log.info("embedded mock started", extra={"mock": kind, "url": server.url})


def note_logs(args: argparse.Namespace, folder: Path) -> None:
    """Tell `recsync logs` where the log is: the journal of our unit, and the file."""
    log_file = (args.log_file or default_log_file()).absolute()
    write_log_note(folder, LogLocation(file=str(log_file), journal_unit=journal_unit()))


def _install_signals(daemon: Daemon, wake: threading.Event | None = None,
                     reload: threading.Event | None = None) -> None:
    def on_stop(signum: int, _frame: object) -> None:
        log.info("signal received, draining", extra={"signal": signal.Signals(signum).name})
        daemon.stopping.set()
        if wake is not None:
            wake.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    if reload is not None and wake is not None:
        def on_hup(_signum: int, _frame: object) -> None:
            reload.set()
            wake.set()

        signal.signal(signal.SIGHUP, on_hup)


def _cli_hint() -> str:
    """How to call `recsync` from here: bare when it is on PATH, else by its path."""
    import shutil

    beside = Path(sys.executable).parent / "recsync"
    if shutil.which("recsync") == str(beside) or not beside.exists():
        return "recsync"
    relative = os.path.relpath(beside)
    return str(beside) if relative.startswith("..") else relative


def _run_once(daemon: Daemon, args: argparse.Namespace) -> int:
    _install_signals(daemon)
    started = time.monotonic()
    daemon.start()
    try:
        reports = daemon.run_once(args.timeout)
        seconds = time.monotonic() - started
        for rep in reports:
            print(rep.line(seconds), flush=True)
        if not all(r.done for r in reports):
            return 3
        bad = any(r.failed or r.state not in ("running", "paused") for r in reports)
        return 1 if bad else 0
    finally:
        daemon.stop()
        from recsync import mock

        mock.stop_all()


# Threads that spend most of their time in Python (the actors) keep the GIL for the whole
# switch interval (5 ms by default); the control bridge needs it for a moment per request.
# A shorter interval keeps `recsync status` answering fast while a pipeline is busy.
SWITCH_INTERVAL = 0.0005


def _serve(daemon: Daemon, args: argparse.Namespace) -> int:
    from recsync.daemon.control import ControlServer
    from recsync.daemon.runtime import (
        CurveConfig,
        default_endpoints,
        derive_event_endpoint,
        ipc_path,
        runtime_dir,
    )
    from recsync.daemon.service import ControlService

    sys.setswitchinterval(SWITCH_INTERVAL)
    if daemon.config.cluster is not None:
        from recsync.cluster.node import join, node_name

        try:
            join(daemon, node_name(args.node))
        except RecsyncError as exc:
            print(f"recsyncd: {exc}", file=sys.stderr)
            return 2
    notifier = Notifier.from_env()
    reload_requested, wake = threading.Event(), threading.Event()
    _install_signals(daemon, wake, reload_requested)
    try:
        if args.endpoint:
            endpoints = (args.endpoint,
                         args.event_endpoint or derive_event_endpoint(args.endpoint))
        else:
            command, events = default_endpoints(runtime_dir())
            endpoints = (command, args.event_endpoint or events)
        curve = CurveConfig.load(args.curve_dir) if args.curve_dir else None
        service = ControlService(daemon)
        public = ipc_path(endpoints[0]) if curve is None else None
        # ipc: a front process owns the public socket (see daemon/front.py)
        command = (f"ipc://{public.with_name(public.stem + '-internal' + public.suffix)}"
                   if public is not None else endpoints[0])
        server = ControlServer(service.handle, inline=service.inline,
                               command_endpoint=command, event_endpoint=endpoints[1],
                               curve=curve, reply_hwm=0 if public is not None else None)
        server.start()
    except RecsyncError as exc:
        print(f"recsyncd: {exc}", file=sys.stderr)
        return 2
    daemon.server, daemon.endpoints = server, endpoints
    cluster_server = None  # [cluster]: events stamped, commands routed, control_bind
    if daemon.coordinator is not None:
        from recsync.cluster.control import serve_cluster_control

        try:
            cluster_server = serve_cluster_control(daemon, service, server, endpoints[0], curve)
        except RecsyncError as exc:
            print(f"recsyncd: {exc}", file=sys.stderr)
            server.stop()
            return 2
    note_logs(args, public.parent if public is not None else runtime_dir())
    daemon.serving = True
    front: FrontProcess | None = None
    failure: list[str] = []

    def give_up(reason: str) -> None:  # the front cannot be kept running: exit non-zero
        failure.append(reason)
        daemon.stopping.set()
        wake.set()

    if public is not None and not daemon.stopping.is_set():
        daemon.snapshot_path = public.with_name("status.snapshot")
        daemon.status_rows = service.pipeline_statuses
        daemon.write_snapshot()
        from recsync.daemon.frontproc import FrontProcess

        front = FrontProcess(endpoints[0], command, daemon.snapshot_path,
                             on_give_up=give_up)
        if not front.start():
            print(f"recsyncd: the control front could not listen on {endpoints[0]} (see the "
                  "log)", file=sys.stderr)
            daemon.stop()
            server.stop()
            return 2
    # the control socket (and its front) answer first; the pipelines start behind them
    daemon.start(wait=False)
    daemon.start_stats()
    try:
        metrics = start_metrics(daemon, args)
    except RecsyncError as exc:
        print(f"recsyncd: {exc}", file=sys.stderr)
        daemon.stop()
        server.stop()
        return 2
    watcher = daemon.watcher = ConfigWatcher(args.config_dir, daemon.reload_quietly)
    watcher.start()
    watchdog = Watchdog(notifier, daemon.is_healthy)
    watchdog.start()
    pipelines = ", ".join(sorted(daemon.config.pipelines)) or "none"
    log.info("recsyncd ready", extra={"endpoint": endpoints[0], "events": endpoints[1],
                                      "pipelines": pipelines})
    cli = _cli_hint()
    print(f"recsyncd: control socket {endpoints[0]} ({pipelines})\n"
          f"  try: {cli} --endpoint {endpoints[0]} status", file=sys.stderr)
    if any(getattr(side.options, "mock", False)
           and side.connector == "salesforce"
           for cfg in daemon.config.pipelines.values() for side in (cfg.a, cfg.b)):
        print(f"       {cli} --endpoint {endpoints[0]} mock push salesforce "
              "'{\"record_id\": 303, \"full_name\": \"Mock303 User\", "
              "\"email_address\": \"mock@sf.com\", \"status\": \"active\"}'\n"
              f"       {cli} --endpoint {endpoints[0]} mock list salesforce", file=sys.stderr)
    else:
        print(f"       {cli} --endpoint {endpoints[0]} events", file=sys.stderr)
    sys.stderr.flush()
    notifier.ready(f"{len(daemon.config.pipelines)} pipelines running")
    try:
        while not daemon.stopping.is_set():
            # Python runs a signal's handler in the main thread, between bytecodes: when the
            # kernel delivers SIGHUP or SIGTERM to another of our threads, a main thread
            # blocked in an untimed wait never runs it (seen: a SIGHUP ignored for good)
            wake.wait(SIGNAL_CHECK)
            wake.clear()
            if reload_requested.is_set() and not daemon.stopping.is_set():
                reload_requested.clear()
                log.info("SIGHUP: reloading configuration")
                notifier.reloading("reloading configuration")
                daemon.reload_quietly()
                notifier.ready(daemon.config_error or "configuration reloaded")
    finally:
        notifier.stopping("draining in-flight batches")
        watcher.stop()
        watchdog.stop()
        if front is not None:
            front.stop()
        if metrics is not None:
            metrics.stop()
        daemon.stop()
        server.stop()
        if cluster_server is not None:
            cluster_server.stop()
        from recsync import mock

        mock.stop_all()
        notifier.close()
        log.info("recsyncd stopped: in-flight batches drained")
    if daemon.exit_reason is not None:  # [cluster]: another recsyncd took the node's name
        failure.append(daemon.exit_reason)
    if failure:
        log.critical("recsyncd exits with status 1", extra={"error": failure[0]})
        print(f"recsyncd: {failure[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


def start_metrics(daemon: Daemon, args: argparse.Namespace) -> Any:
    """The Prometheus metrics server (``--metrics-port``, else ``[cluster] metrics_port``),
    started; None when neither asks for one."""
    from recsync.daemon.metrics import MetricsServer, NodeCollector, parse_metrics_address

    if args.metrics_port:
        host, port = parse_metrics_address(str(args.metrics_port))
    elif daemon.config.cluster is not None and daemon.config.cluster.metrics_port:
        host, port = "0.0.0.0", daemon.config.cluster.metrics_port
    else:
        return None
    # the node's own name (--node with [cluster]), as in its leases and events
    node = (daemon.coordinator.node if daemon.coordinator is not None
            else args.node or os.environ.get("RECSYNC_NODE") or socket.gethostname())
    collector = NodeCollector(node, daemon.metric_figures, daemon.metric_systems,
                              daemon.leases)
    metrics = MetricsServer(collector, host, port)
    metrics.start()
    print(f"recsyncd: metrics on http://{host}:{metrics.port}/metrics", file=sys.stderr)
    return metrics
