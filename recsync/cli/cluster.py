"""`recsync cluster`: the nodes and leases of the ``[cluster]`` of a config folder, read
from its PostgreSQL (no daemon needed)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, TextIO

from recsync.cli.commands import UsageError
from recsync.cluster.confighash import cluster_hash
from recsync.cluster.node import open_leases
from recsync.config import load_config
from recsync.errors import StateUnavailable


def add_cluster_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-dir", type=Path, default=Path("."),
                        help="folder with customer_settings.toml (default: the current one)")


def show_cluster(args: argparse.Namespace, out: TextIO) -> int:
    config = load_config(args.config_dir)
    if config.cluster is None:
        raise UsageError(f"{args.config_dir / 'customer_settings.toml'} has no [cluster] "
                         "section: this recsyncd runs alone")
    try:
        leases = open_leases(config.cluster, "recsync-cli", config.cluster.schema)
        try:
            nodes, rows = leases.nodes(), leases.leases()
        finally:
            leases.close()
    except StateUnavailable as exc:  # (its message is for a pipeline, which waits)
        raise StateUnavailable(f"cannot read the cluster from its state database: "
                               f"{exc.problem}; try again once the PostgreSQL server can be "
                               "reached") from None
    owned: dict[str, list[str]] = {}
    for r in rows:
        if r.live:
            owned.setdefault(r.node, []).append(r.pipeline)
    cluster = cluster_hash(nodes)

    def config_state(hash_: str) -> str:  # the node's config against the cluster's
        if not hash_ or cluster is None:
            return "unknown"
        return "matches" if hash_ == cluster else "differs: owns nothing"

    data: dict[str, Any] = {
        "config_hash": cluster,
        "nodes": [{"node": n.node, "host": n.host, "pid": n.pid, "boot": n.boot,
                   "heartbeat_at": n.heartbeat_at.isoformat(), "live": n.live,
                   "pipelines": owned.get(n.node, []), "config": config_state(n.config_hash),
                   "config_hash": n.config_hash, "endpoints": n.endpoints.split()}
                  for n in nodes],
        "leases": [{"pipeline": r.pipeline, "node": r.node, "token": r.token,
                    "expires_at": r.expires_at.isoformat(), "live": r.live} for r in rows],
    }
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2), file=out)
        return 0
    print("NODE  HOST  PID  BOOT  LAST HEARTBEAT  PIPELINES", file=out)
    for n in data["nodes"]:
        state = "" if n["live"] else " (not live)"
        print(f"{n['node']}{state}  {n['host']}  {n['pid']}  {n['boot'][:8]}  "
              f"{n['heartbeat_at']}  {len(n['pipelines'])}: {', '.join(n['pipelines'])}",
              file=out)
    differ = [n for n in data["nodes"] if n["live"] and n["config"].startswith("differs")]
    if cluster is not None:
        print(f"\nCONFIG  the cluster's hash: {cluster[:12]} (held by most live nodes; a tie "
              "goes to the earliest started)", file=out)
    for n in differ:
        print(f"{n['node']}: config hash {n['config_hash'][:12]} differs from the "
              "cluster's: it owns no pipeline until its customer_settings.toml + "
              "rules.toml match", file=out)
    print("\nPIPELINE  OWNER  TOKEN  EXPIRES", file=out)
    for r in data["leases"]:
        expires = r["expires_at"] if r["live"] else f"{r['expires_at']} (expired)"
        print(f"{r['pipeline']}  {r['node']}  {r['token']}  {expires}", file=out)
    return 0
