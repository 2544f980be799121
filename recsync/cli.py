"""`recsync` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from recsync import demo


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsync", description="Operate recsyncd.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo_p = sub.add_parser("demo", help="demo data")
    demo_sub = demo_p.add_subparsers(dest="demo_command", required=True)
    seed_p = demo_sub.add_parser("seed", help="create data/demo.sqlite with demo users")
    seed_p.add_argument("--count", type=int, default=50, help="users to insert (default 50)")
    seed_p.add_argument("--start-id", type=int, default=1, help="first record_id (default 1)")
    seed_p.add_argument("--path", type=Path, default=Path("data/demo.sqlite"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo" and args.demo_command == "seed":
        if args.count < 0:
            print("recsync: --count must be 0 or more", file=sys.stderr)
            return 2
        n = demo.seed(args.path, args.count, start_id=args.start_id)
        print(f"{args.path}: {n} demo users inserted ({args.count - n} already there)")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
