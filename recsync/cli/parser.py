"""The argparse tree of `recsync`: every subcommand, its options and its --help."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from recsync.client import ENDPOINT_ENV, EVENT_ENDPOINT_ENV

EPILOG = """\
exit codes: 0 ok, 1 recsyncd answered with an error, 2 usage error, 3 recsyncd unreachable.
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


def _common(suppress: bool) -> argparse.ArgumentParser:
    """Options accepted before or after the subcommand (``recsync --json status`` or
    ``recsync status --json``); only the top-level copy has defaults."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    env = os.environ.get
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection and output")
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
        "id): the record's state, attempts, last error and history in every pipeline.",
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

    config = sub.add_parser("config", help="change settings live")
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
        help="at most N requests per SECONDS to each side",
    )
    p.add_argument("--persist", action="store_true", help="also save to customer_settings.toml")

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
    p = add(deletes_sub, "confirm", "let a pass held by the mass-delete guard go through once")
    p.add_argument("customer", metavar="CUSTOMER")
    p.add_argument("pipeline", metavar="PIPELINE")
    p.add_argument("side", metavar="SIDE", choices=["a", "b"])

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
    add(sub, "tui", "live dashboard")
    p = add(
        sub,
        "events",
        "follow the live event stream until Ctrl-C",
        "One line per event (--json: one JSON object per line).",
    )
    p.add_argument(
        "--kind", action="append", metavar="KIND", help="only events of this kind (repeatable)"
    )
    p.add_argument("--count", type=positive_int, metavar="N", help="stop after N events")
    add(sub, "schema", "print the JSON Schema of every command and reply (no daemon needed)")

    mock_p = sub.add_parser("mock", help="the mock CRM servers (Salesforce, Outreach)")
    mock_sub = mock_p.add_subparsers(dest="mock_command", required=True, metavar="COMMAND")
    kinds = ["salesforce", "outreach"]
    p = mock_sub.add_parser(
        "serve", help="run a mock CRM server in the foreground (no daemon needed)",
        description="Run a mock CRM HTTP server on loopback until Ctrl-C.")
    p.add_argument("kind", metavar="KIND", choices=kinds)
    p.add_argument("--port", type=int, default=0, help="TCP port (default: a free one)")
    p.add_argument("--data", type=Path, default=None,
                   help="keep the records in this JSON file (survives a restart)")
    p = add(mock_sub, "push", "insert or change a record in recsyncd's embedded mock CRM",
            "As if a CRM user did it, e.g. recsync mock push salesforce "
            "'{\"record_id\": 303, \"full_name\": \"Mock303 User\", "
            "\"email_address\": \"mock@sf.com\", \"status\": \"active\"}'")
    p.add_argument("kind", metavar="KIND", choices=kinds)
    p.add_argument("record", metavar="RECORD_JSON")
    p = add(mock_sub, "list", "the records recsyncd's embedded mock CRM holds")
    p.add_argument("kind", metavar="KIND", choices=kinds)
    p = add(mock_sub, "faults", "inject faults into recsyncd's embedded mock CRM")
    p.add_argument("kind", metavar="KIND", choices=kinds)
    p.add_argument("--error-rate", type=float, help="share of requests answered 500/503")
    p.add_argument("--latency", type=float, help="seconds added to every request")
    p.add_argument("--retry-after", type=float, dest="status_429_retry_after",
                   help="answer 429 with this Retry-After (0 turns it off)")
    p.add_argument("--limit-after", type=int,
                   help="Salesforce: REQUEST_LIMIT_EXCEEDED after N more requests")
    p.add_argument("--drop-rate", type=float, help="share of connections dropped")

    demo_p = sub.add_parser("demo", help="demo data")
    demo_sub = demo_p.add_subparsers(dest="demo_command", required=True, metavar="COMMAND")
    seed_p = demo_sub.add_parser("seed", help="create data/demo.sqlite with demo users")
    seed_p.add_argument("--count", type=int, default=50, help="users to insert (default 50)")
    seed_p.add_argument("--start-id", type=int, default=1, help="first record_id (default 1)")
    seed_p.add_argument("--path", type=Path, default=Path("data/demo.sqlite"))
    return parser
