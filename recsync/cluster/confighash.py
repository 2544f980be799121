"""The config hash of a node, and the cluster's: nodes whose config differs own nothing.

A node's hash is sha256 over its ``customer_settings.toml`` and ``rules.toml`` as loaded
(the bytes of both files, each preceded by its name and length), taken at start and after
every reload that is accepted. It is registered in the ``nodes`` table.

The cluster's hash (``cluster_hash``) is the one held by the most live nodes; a tie goes
to the hash of the node that started first (the oldest ``started_at``, then the node name).
A node whose hash is not the cluster's owns no pipeline until a reload makes it match; it
is not counted in the others' fair share.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from recsync.cluster.leases import NodeRow
from recsync.config import RULES_FILE, SETTINGS_FILE

_EPOCH = datetime.min.replace(tzinfo=UTC)


def config_hash(config_dir: Path) -> str:
    """The hash of the two config files in ``config_dir`` (hex)."""
    digest = hashlib.sha256()
    for name in (SETTINGS_FILE, RULES_FILE):
        try:
            data = (config_dir / name).read_bytes()
        except FileNotFoundError:
            data = b""
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def cluster_hash(nodes: Sequence[NodeRow]) -> str | None:
    """The hash held by the most live nodes; a tie goes to the earliest started node's.
    None: no live node registered a hash."""
    live = [n for n in nodes if n.live and n.config_hash]
    if not live:
        return None
    counts: dict[str, int] = {}
    for n in live:
        counts[n.config_hash] = counts.get(n.config_hash, 0) + 1
    top = max(counts.values())
    tied = [n for n in live if counts[n.config_hash] == top]
    oldest = min(tied, key=lambda n: (n.started_at or _EPOCH, n.node))
    return oldest.config_hash


def mismatch_note(node: str, mine: str, cluster: str) -> str:
    """What a node whose config differs says (status, log, `recsync cluster`)."""
    return (f"node {node}: its customer_settings.toml + rules.toml (hash {mine[:12]}) differ "
            f"from the cluster's (hash {cluster[:12]}, held by most live nodes); it owns no "
            "pipeline until its config matches (copy the cluster's files and reload)")
