"""The argparse tree of `recsync`: every subcommand, its options and its --help."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from recsync.daemon.protocol import CLUSTER_EVENT_KINDS, EVENT_KINDS
from recsync.daemon.runtime import ENDPOINT_ENV, EVENT_ENDPOINT_ENV

EPILOG = """\
exit codes: 0 ok, 1 recsyncd answered with an error, 2 usage error, 3 recsyncd unreachable,
4 `status` shows a pipeline in error, held or fatal.
recsyncd is found through its socket in the runtime directory ($RUNTIME_DIRECTORY, else
$XDG_RUNTIME_DIR/recsync, else ./run), or --endpoint / $RECSYNC_ENDPOINT."""


def rate_limit(text: str) -> tuple[int, float]:
    """``N/SECONDS`` -> (N, SECONDS)."""
    count, sep, window = text.partition("/")
    try:
        n, seconds = int(count), float(window)
    except ValueError:
        n, seconds = 0, 0.0
    if not sep or n < 1 or seconds <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not N/SECONDS (e.g. 100/60: at most 100 requests per 60 seconds)"
        )
    return n, seconds


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return value


def _common(suppress: bool, json: bool = True) -> argparse.ArgumentParser:
    """Options accepted before or after the subcommand (``recsync --json status`` or
    ``recsync status --json``); only the top-level copy has defaults. ``json``: offer
    --json (not for a command that prints no result, like the dashboard)."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    env = os.environ.get
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection and output" if json else "connection")
    if json:
        group.add_argument(
            "--json",
            action="store_true",
            default=default(False),
            help="print the result as JSON (for scripts)",
        )
    group.add_argument(
        "--endpoint",
        metavar="URL",
        default=default(env(ENDPOINT_ENV)),
        help=f"recsyncd's control socket (default: ${ENDPOINT_ENV}, else "
        "ipc://RUNTIME_DIR/control.sock)",
    )
    group.add_argument(
        "--event-endpoint",
        metavar="URL",
        default=default(env(EVENT_ENDPOINT_ENV)),
        help="recsyncd's event socket (default: next to --endpoint)",
    )
    group.add_argument(
        "--timeout",
        type=seconds,
        metavar="SECONDS",
        default=default(10.0),
        help="how long to wait for an answer (default 10)",
    )
    group.add_argument(
        "--curve-secret-key",
        metavar="FILE",
        default=default(env("RECSYNC_CURVE_SECRET_KEY")),
        help="for tcp:// endpoints: this client's .key_secret file",
    )
    group.add_argument(
        "--curve-server-key",
        metavar="FILE",
        default=default(env("RECSYNC_CURVE_SERVER_KEY")),
        help="for tcp:// endpoints: recsyncd's public .key file",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recsync",
        description="Operate recsyncd, the record-sync daemon.",
        parents=[_common(False)],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common = [_common(True)]
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        parent: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        summary: str,
        description: str | None = None,
    ) -> argparse.ArgumentParser:
        return parent.add_parser(
            name, help=summary, description=description or summary, parents=common
        )

    def customer_pipeline(p: argparse.ArgumentParser) -> None:
        p.add_argument("customer", metavar="CUSTOMER")
        p.add_argument("--pipeline", metavar="P", help="only this pipeline of the customer")

    sync = sub.add_parser("sync", help="submit a change, or poll now")
    sync_sub = sync.add_subparsers(dest="sync_command", required=True, metavar="COMMAND")
    p = add(
        sync_sub,
        "event",
        "submit a change to a customer pipeline (the real-time path)",
        "Submit a change of one record on one side; `--op read` fetches the record from "
        "that side and syncs it now.",
    )
    customer_pipeline(p)
    p.add_argument("--side", choices=["a", "b"], required=True, help="where the change happened")
    p.add_argument("--op", choices=["create", "read", "update", "delete"], required=True)
    p.add_argument(
        "record",
        metavar="RECORD_JSON",
        help="the record as a JSON object ('-' reads it from stdin, @FILE from a file)",
    )
    p = add(
        sync_sub,
        "now",
        "poll a customer's pipelines at once",
        "Poll at once; --full re-reads everything (a backfill) and shows its progress "
        "until it is queued and written.",
    )
    customer_pipeline(p)
    p.add_argument(
        "--direction", choices=["a-to-b", "b-to-a"], help="only this direction (default: both)"
    )
    p.add_argument("--full", action="store_true", help="re-read everything and wait for it")
    p.add_argument("--poll", type=seconds, default=0.25, help=argparse.SUPPRESS)

    p = add(
        sub,
        "status",
        "every pipeline's state, or one record's",
        "Without RECORD_ID: every pipeline's state and counts. With it (either side's "
        "id): the record's state, attempts, last error and history in every pipeline. "
        "Exits 4 when a pipeline is in error, held or fatal (like `systemctl is-failed`, "
        "for scripts and health checks).",
    )
    p.add_argument("record_id", metavar="RECORD_ID", nargs="?")
    p = add(sub, "failed", "the failed records")
    p.add_argument("customer", metavar="CUSTOMER", nargs="?", help="only this customer")
    p.add_argument("--limit", type=positive_int, default=100, help="at most N (default 100)")
    p = add(
        sub,
        "retry",
        "retry a failed record, or all of them",
        "Queue a failed record again (RECORD_ID), or every failed record "
        "(--all-failed, optionally of one CUSTOMER).",
    )
    p.add_argument("target", metavar="RECORD_ID|CUSTOMER", nargs="?")
    p.add_argument(
        "--all-failed",
        action="store_true",
        help="retry every failed record (of CUSTOMER, when given)",
    )

    config = sub.add_parser("config", help="show the settings, or change them live")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    p = add(
        config_sub,
        "override",
        "change a customer's settings live",
        "Apply settings to running pipelines at once; --persist also writes them to "
        "customer_settings.toml.",
    )
    customer_pipeline(p)
    p.add_argument("--batch-size", type=positive_int, metavar="N")
    p.add_argument("--flush-interval", type=seconds, metavar="SECONDS")
    p.add_argument("--poll-interval", type=seconds, metavar="SECONDS")
    p.add_argument(
        "--rate-limit",
        type=rate_limit,
        metavar="N/SECONDS",
        help="at most N requests per SECONDS to each CRM side (a SQLite or file side is "
        "throttled only by the rate_limit of its own side table)",
    )
    p.add_argument("--persist", action="store_true", help="also save to customer_settings.toml")
    p = add(
        config_sub,
        "show",
        "the effective settings, each with where it came from",
        "Every setting of the pipelines (of CUSTOMER, of pipeline P) as in force now, and "
        "where it came from: a built-in default, customer_settings.toml [defaults], "
        "[customers.X], the pipeline's table, or a live override; then each side's "
        "connector options (secrets masked).",
    )
    p.add_argument("customer", metavar="CUSTOMER", nargs="?", help="only this customer")
    p.add_argument("--pipeline", metavar="P", help="only pipelines named P")

    rules = sub.add_parser("rules", help="show, replace or try the sync rules")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True, metavar="COMMAND")
    p = add(rules_sub, "show", "print the rule sets (or one) as TOML")
    p.add_argument("name", metavar="SET", nargs="?")
    p = add(
        rules_sub,
        "set",
        "replace rules.toml: validated, applied live, saved",
        "Send FILE's text as the new rules.toml; recsyncd validates it first and keeps "
        "the running rules if it is invalid.",
    )
    p.add_argument("file", metavar="FILE", type=Path, help="the new rules ('-' for stdin)")
    p = add(
        rules_sub,
        "test",
        "dry-run a rule set on a record",
        "What would be synced for this record, in which direction, mapped how.",
    )
    p.add_argument("name", metavar="SET")
    p.add_argument("record", metavar="RECORD_JSON", help="the record as a JSON object")
    p.add_argument(
        "--side", choices=["a", "b"], default="a", help="the side the record comes from (default a)"
    )

    add(sub, "reload", "re-read customer_settings.toml and rules.toml (like SIGHUP)")
    for verb, summary in (
        ("pause", "stop syncing a customer's pipelines"),
        ("resume", "resume a customer's paused pipelines"),
    ):
        customer_pipeline(add(sub, verb, summary))

    deletes = sub.add_parser("deletes", help="mass-delete guard")
    deletes_sub = deletes.add_subparsers(dest="deletes_command", required=True, metavar="COMMAND")
    p = add(
        deletes_sub,
        "confirm",
        "let a pass held by the mass-delete guard go through once",
        "Let the passes the mass-delete guard holds in a customer's pipelines (or one, "
        "--pipeline) go through once; says so when nothing is held, and then changes "
        "nothing.",
    )
    customer_pipeline(p)
    p.add_argument("--side", choices=["a", "b"], help="only the deletes read from this side")

    crms = sub.add_parser("crms", help="the registered connectors")
    crms_sub = crms.add_subparsers(dest="crms_command", required=True, metavar="COMMAND")
    add(crms_sub, "list", "the registered connectors")
    p = add(crms_sub, "schema", "the JSON Schema of a connector's configuration")
    p.add_argument("name", metavar="NAME")
    p = add(crms_sub, "setup", "the SQL that sets up change tracking on a database table",
            "With --print-sql it prints the SQL for a DBA to run (for a side with "
            "install = false); with --dsn it runs it. No daemon needed.")
    p.add_argument("name", metavar="NAME", choices=["postgres"], help="postgres")
    p.add_argument("--table", required=True, help="the table, schema.table or table")
    p.add_argument("--key", required=True, help="its unique key column")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--print-sql", action="store_true", help="print the SQL")
    how.add_argument("--dsn", help="run the SQL on this database")
    p.add_argument("--uninstall", action="store_true",
                   help="the SQL that removes what setup added instead")

    add(sub, "stats", "per pipeline: queue, in flight, totals, rate, circuits, rate limits")
    sub.add_parser("tui", help="live dashboard", description="live dashboard",
                   parents=[_common(True, json=False)])
    p = add(
        sub,
        "events",
        "follow the live event stream until Ctrl-C",
        "One line per event (--json: one JSON object per line).",
    )
    p.add_argument(
        "--kind", action="append", metavar="KIND", choices=EVENT_KINDS + CLUSTER_EVENT_KINDS,
        help=f"only events of this kind (repeatable): {', '.join(EVENT_KINDS)}",
    )
    p.add_argument("--count", type=positive_int, metavar="N", help="stop after N events")
    summary = "[cluster]: the nodes and the leases of the pipelines (no daemon needed)"
    from recsync.cli.cluster import add_cluster_parser

    add_cluster_parser(sub.add_parser("cluster", help=summary, description=summary,
                                      parents=[_common(True)]))
    summary = "print the JSON Schema of every command and reply (no daemon needed)"
    sub.add_parser("schema", help=summary, description=summary)
    add_logs_parser(add(
        sub,
        "logs",
        "print recsyncd's log readably (-f: follow it)",
        "recsyncd's JSON log as time, level, pipeline, message and fields (--json: the JSON "
        "lines). Read from --file, else the journal of recsyncd's systemd unit when it "
        "runs under one (journalctl -u UNIT -o cat), else the log file it writes "
        "($LOGS_DIRECTORY or ./logs, record_sync.log). Lines that are not log entries are "
        "printed as they are.",
    ))

    mock_p = sub.add_parser("mock", help="the mock CRM servers (Salesforce, Outreach)")
    mock_sub = mock_p.add_subparsers(dest="mock_command", required=True, metavar="COMMAND")
    kinds = ["salesforce", "outreach"]
    kind_help = "which mock CRM: " + " or ".join(kinds)
    p = mock_sub.add_parser(
        "serve", help="run a mock CRM server in the foreground (no daemon needed)",
        description="Run a mock CRM HTTP server on loopback until Ctrl-C.")
    p.add_argument("kind", metavar="KIND", choices=kinds, help=kind_help)
    p.add_argument("--port", type=int, default=0, help="TCP port (default: a free one)")
    p.add_argument("--data", type=Path, default=None,
                   help="keep the records in this JSON file (survives a restart)")
    p = add(mock_sub, "push", "insert or change a record in recsyncd's embedded mock CRM",
            "As if a CRM user did it, e.g. recsync mock push salesforce "
            "'{\"record_id\": 303, \"full_name\": \"Mock303 User\", "
            "\"email_address\": \"mock@sf.com\", \"status\": \"active\"}'")
    p.add_argument("kind", metavar="KIND", choices=kinds, help=kind_help)
    p.add_argument("record", metavar="RECORD_JSON")
    p = add(mock_sub, "list", "the records recsyncd's embedded mock CRM holds")
    p.add_argument("kind", metavar="KIND", choices=kinds, help=kind_help)
    p = add(mock_sub, "faults", "inject faults into recsyncd's embedded mock CRM")
    p.add_argument("kind", metavar="KIND", choices=kinds, help=kind_help)
    p.add_argument("--error-rate", type=float, help="share of requests answered 500/503")
    p.add_argument("--latency", type=float, help="seconds added to every request")
    p.add_argument("--retry-after", type=float, dest="status_429_retry_after",
                   metavar="SECONDS",
                   help="answer every request 429 with this Retry-After (0 turns it off)")
    p.add_argument("--limit-after", type=int,
                   help="Salesforce: REQUEST_LIMIT_EXCEEDED after N more requests")
    p.add_argument("--drop-rate", type=float, help="share of connections dropped")
    p.add_argument("--clear", action="store_true",
                   help="turn every fault off first (then apply the others given)")

    p = add(
        sub,
        "verify",
        "compare both sides of pipelines; --repair makes them agree",
        "Read both sides, map them through the rules and report records missing on a "
        "side, extra (never synced) or different, with the first keys of each. --repair "
        "queues the syncs that make the sides agree, under the rules and the mass-delete "
        "guard. Exit code 0: the sides agree; 1: they differ (or records were being "
        "synced).",
    )
    p.add_argument("customer", metavar="CUSTOMER", nargs="?", help="only this customer")
    p.add_argument("--pipeline", metavar="P", help="only this pipeline of the customer")
    p.add_argument("--repair", action="store_true",
                   help="queue the syncs that make the sides agree")
    p.add_argument("--keys", type=int, default=10, metavar="N",
                   help="keys shown per category (default 10)")

    demo_p = sub.add_parser("demo", help="demo data")
    demo_sub = demo_p.add_subparsers(dest="demo_command", required=True, metavar="COMMAND")
    seed_p = demo_sub.add_parser("seed", help="create data/demo.sqlite with demo users")
    seed_p.add_argument("--count", type=int, default=50, help="users to insert (default 50)")
    seed_p.add_argument("--start-id", type=int, default=1, help="first record_id (default 1)")
    seed_p.add_argument("--path", type=Path, default=Path("data/demo.sqlite"))
    return parser


def add_logs_parser(p: argparse.ArgumentParser) -> None:
    """The options of `recsync logs`."""
    from recsync.cli.logs import LEVELS

    p.add_argument("-f", "--follow", action="store_true",
                   help="print the last lines, then new ones as they come, until Ctrl-C")
    p.add_argument("--pipeline", metavar="P",
                   help="only this pipeline's lines (CUSTOMER/NAME, or a CUSTOMER's)")
    p.add_argument("--level", choices=LEVELS, metavar="L",
                   help=f"only lines at this level or above ({', '.join(LEVELS)})")
    p.add_argument("-n", "--lines", type=positive_int, metavar="N",
                   help="only the last N lines (default: all; with -f, 10)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--file", type=Path, metavar="PATH", action="append",
                       help="read this log file; repeat it for the logs of several nodes "
                            "([cluster]): their lines merged in time order")
    where.add_argument("--journal", action="store_true",
                       help="read the systemd journal of --unit (default recsyncd)")
    p.add_argument("--unit", metavar="UNIT", help="with --journal: the systemd unit")
