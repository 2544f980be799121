"""`recsync`: operate recsyncd through its control socket.

Exit codes: 0 ok, 1 recsyncd answered with an error (printed as ``recsync: <message>
[<CODE>]``), 2 usage error, 3 recsyncd unreachable, 4 (``status`` without a record) a
pipeline is in error, held or fatal.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from recsync.cli import output, verify
from recsync.cli.commands import BUILDERS, UsageError, follow_events, human, wait_backfill
from recsync.cli.parser import build_parser
from recsync.daemon import protocol as p
from recsync.errors import ControlError, DaemonUnreachable, RecsyncError

if TYPE_CHECKING:
    from recsync.client import ControlClient

__all__ = ["build_parser", "main"]
STATUS_BAD = 4  # `status`: a pipeline is in error, held or fatal


def _name(args: argparse.Namespace) -> str:
    """``sync event``, ``status``...: the subcommand path."""
    parts = [args.command]
    sub = getattr(args, f"{args.command}_command", None)
    if sub:
        parts.append(sub)
    return " ".join(parts)


def crms_setup(args: argparse.Namespace) -> int:
    """`recsync crms setup postgres`: print or run the change-tracking SQL."""
    from recsync.connectors.pgsql import TableNames, setup_sql, split_table, uninstall_sql

    try:
        names = TableNames(*split_table(args.table))
    except ValueError as exc:
        raise UsageError(f"--table: {exc}") from exc
    if args.print_sql:
        # the script itself stops, installing nothing, when the table has no such column
        print(uninstall_sql(names) if args.uninstall else setup_sql(names, args.key), end="")
        return 0
    import psycopg

    from recsync.connectors.pgsql import COLUMNS_SQL, resolve_key
    from recsync.dsn import normalize_url, scrub

    try:
        with psycopg.connect(normalize_url(args.dsn), autocommit=True) as conn:
            if args.uninstall:
                script = uninstall_sql(names)
            else:
                # the key column as the connector resolves it ("ID" for a column id), and
                # checked before anything is installed: triggers naming a column the table
                # lacks would make every write of the application fail
                columns = [r[0] for r in conn.execute(COLUMNS_SQL, (names.qualified,))]
                if not columns:
                    print(f"recsync: setting up {args.table} failed: there is no table "
                          f"{names.schema}.{names.table}; nothing was installed",
                          file=sys.stderr)
                    return 1
                key = resolve_key(columns, args.key)
                if key is None:
                    print(f"recsync: setting up {args.table} failed: table "
                          f"{names.schema}.{names.table} has no key column {args.key!r} "
                          f"(columns: {', '.join(columns)}); nothing was installed",
                          file=sys.stderr)
                    return 1
                script = setup_sql(names, key)
            conn.execute(script.encode())
    except psycopg.Error as exc:
        print(f"recsync: setting up {args.table} failed: {scrub(str(exc).strip(), args.dsn)}",
              file=sys.stderr)
        return 1
    print(f"{'removed' if args.uninstall else 'installed'} change tracking on {args.table}")
    return 0


def _client(args: argparse.Namespace) -> ControlClient:
    # zmq (a third of `import recsync.cli`) only for the commands that talk to recsyncd
    from recsync.client import ControlClient, load_curve_keys

    return ControlClient(
        args.endpoint,
        args.event_endpoint,
        timeout=args.timeout,
        curve_keys=load_curve_keys(args.curve_secret_key, args.curve_server_key),
    )


def _run(args: argparse.Namespace) -> int:
    name = _name(args)
    if name == "schema":
        print(json.dumps(p.json_schema(), indent=2))
        return 0
    if name == "demo seed":
        if args.count < 0:
            raise UsageError("--count must be 0 or more")
        from recsync import demo

        print(output.seeded(args.path, *demo.seed_ids(args.path, args.count,
                                                         start_id=args.start_id)))
        return 0
    if name == "tui":
        from recsync.tui import run

        return run(args.endpoint, args.event_endpoint)
    if name == "mock serve":
        return serve_mock(args.kind, args.port, args.data)
    if name == "logs":
        return show_logs(args)
    if name == "cluster":
        from recsync.cli.cluster import show_cluster

        return show_cluster(args, sys.stdout)
    if name == "crms setup":
        return crms_setup(args)
    if name == "events":
        with _client(args) as client:
            client.request(p.StatsGet())  # fail fast (exit 3) when recsyncd is not there
            return follow_events(client, args.kind, args.count, args.json, sys.stdout, sys.stderr)
    if name == "verify":
        if args.pipeline and not args.customer:
            raise UsageError("--pipeline needs a CUSTOMER")
        if args.keys < 0:
            raise UsageError("--keys must be 0 or more")
        with _client(args) as client:
            return verify.run(client, verify.build(args), args.json, sys.stdout, sys.stderr)
    cmd = BUILDERS[name](args)  # before connecting: usage errors come first
    with _client(args) as client:
        result = client.request(cmd)
        if isinstance(cmd, p.SyncNow) and cmd.full:
            done = wait_backfill(client, cmd, result, args.poll, sys.stderr)
            if args.json:
                print(output.to_json(done))
            else:
                print(
                    f"backfill done: {done['written']} records written in "
                    f"{done['seconds']:.1f}s ({', '.join(done['pipelines']) or 'no pipeline'})"
                )
            return 0
    print(output.to_json(result) if args.json else human(cmd, result))
    return status_exit(cmd, result)


def status_exit(cmd: p.Command, result: object) -> int:
    """4 when `status` (the overview) shows a pipeline in error, held or fatal, else 0."""
    if not isinstance(cmd, p.StatusGet) or cmd.record_id is not None:
        return 0
    pipes = result.get("pipelines") if isinstance(result, dict) else None
    bad = [r for r in pipes or [] if isinstance(r, dict) and r.get("state") in p.BAD_STATES]
    return STATUS_BAD if bad else 0


def serve_mock(kind: str, port: int, data: Path | None) -> int:
    """`recsync mock serve`: a mock CRM in the foreground until Ctrl-C."""
    from recsync import mock

    server = mock.create(kind, port=port, data=data)
    server.start()
    print(f"mock {kind} serving on {server.url}" + (f" (data: {data})" if data else "")
          + "; Ctrl-C stops it", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def show_logs(args: argparse.Namespace) -> int:
    """`recsync logs`: the daemon's log, readable; no daemon needed."""
    from recsync.cli import logs

    if args.unit and args.file:
        raise UsageError("--unit goes with --journal, not with --file")
    keep = logs.Filter(args.pipeline, args.level)
    files = args.file or []
    if len(files) > 1:  # several nodes' logs: one stream in time order
        if args.follow:
            raise UsageError("--follow reads one log file; merge several without it")
        logs.show(logs.merged(files), keep, args.json, sys.stdout, last=args.lines)
        return 0
    source = logs.find_source(files[0] if files else None, args.journal, args.unit,
                              args.endpoint)
    try:
        return logs.run(source, follow=args.follow, lines=args.lines, keep=keep,
                        as_json=args.json, out=sys.stdout)
    except KeyboardInterrupt:
        return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except UsageError as exc:
        print(f"recsync: {exc}", file=sys.stderr)
        return 2
    except DaemonUnreachable as exc:
        print(f"recsync: {exc} [{exc.code}]", file=sys.stderr)
        return 3
    except ControlError as exc:
        print(f"recsync: {exc} [{exc.code}]", file=sys.stderr)
        return 1
    except RecsyncError as exc:  # local set-up problems: key files and the like
        print(f"recsync: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # `recsync ... | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
