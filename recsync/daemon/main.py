"""`recsyncd` command line: parse options, load config, run until done or signalled."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path

from recsync.config import load_config
from recsync.daemon.app import Daemon
from recsync.daemon.logs import setup_logging
from recsync.errors import ConfigError

log = logging.getLogger("recsyncd")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="recsyncd", description="Keep records in sync both ways, per customer pipeline.")
    parser.add_argument(
        "--config-dir", type=Path,
        default=Path(os.environ.get("CONFIGURATION_DIRECTORY", ".").split(":")[0]),
        help="folder with customer_settings.toml and rules.toml "
             "(default: $CONFIGURATION_DIRECTORY or the current folder)")
    parser.add_argument(
        "--state-dir", type=Path,
        default=Path(os.environ.get("STATE_DIRECTORY", "state").split(":")[0]),
        help="folder for the per-pipeline state files (default: $STATE_DIRECTORY or ./state)")
    parser.add_argument(
        "--once", action="store_true",
        help="run until both sides are caught up, print a summary per pipeline, exit "
             "(0, or 1 if any record is failed)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="with --once: give up after this many seconds (exit 3)")
    parser.add_argument("--log-level", default=os.environ.get("RECSYNC_LOG_LEVEL", "info"),
                        choices=["debug", "info", "warning", "error"])
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level if not args.once else "warning", sys.stderr)
    try:
        config = load_config(args.config_dir)
    except ConfigError as exc:
        print(f"recsyncd: {exc}", file=sys.stderr)
        return 2
    daemon = Daemon(config, args.state_dir)

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal received, draining", extra={"signal": signal.Signals(signum).name})
        daemon.stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    started = time.monotonic()
    daemon.start()
    try:
        if args.once:
            reports = daemon.run_once(args.timeout)
            seconds = time.monotonic() - started
            for rep in reports:
                print(rep.line(seconds), flush=True)
            if not all(r.done for r in reports):
                return 3
            bad = any(r.failed or r.state not in ("running", "paused") for r in reports)
            return 1 if bad else 0
        log.info("recsyncd running", extra={"pipelines": sorted(config.pipelines)})
        daemon.stopping.wait()
        return 0
    finally:
        daemon.stop()


if __name__ == "__main__":
    sys.exit(main())
