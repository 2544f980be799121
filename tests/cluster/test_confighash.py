"""The cluster's config hash: the one most live nodes hold; a tie goes to the node that
started first. A node's hash covers both config files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from recsync.cluster.confighash import cluster_hash, config_hash
from recsync.cluster.leases import NodeRow

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def row(name: str, hash_: str, started: int, live: bool = True) -> NodeRow:
    return NodeRow(name, "h", 1, "b", T0, live, config_hash=hash_,
                   started_at=T0 + timedelta(seconds=started))


def test_the_majority_of_live_nodes_decides() -> None:
    nodes = [row("a", "old", 0), row("b", "new", 1), row("c", "new", 2)]
    assert cluster_hash(nodes) == "new"


def test_a_tie_goes_to_the_earliest_started_node() -> None:
    assert cluster_hash([row("b", "x", 5), row("a", "y", 1)]) == "y"
    assert cluster_hash([row("a", "x", 1), row("b", "y", 1)]) == "x"  # then by name


def test_nodes_not_live_or_without_a_hash_do_not_count() -> None:
    nodes = [row("a", "x", 0, live=False), row("b", "x", 1, live=False), row("c", "y", 2),
             row("d", "", 3)]
    assert cluster_hash(nodes) == "y"
    assert cluster_hash([row("a", "", 0)]) is None


def test_the_hash_covers_both_files(tmp_path: Path) -> None:
    (tmp_path / "customer_settings.toml").write_text("[defaults]\n")
    (tmp_path / "rules.toml").write_text("[r]\n")
    first = config_hash(tmp_path)
    assert config_hash(tmp_path) == first
    (tmp_path / "rules.toml").write_text("[r]\n# a comment\n")
    assert config_hash(tmp_path) != first
    # the bytes of each file, not their concatenation: moving text across files counts
    (tmp_path / "customer_settings.toml").write_text("[defaults]\n[r]\n")
    (tmp_path / "rules.toml").write_text("")
    moved = config_hash(tmp_path)
    (tmp_path / "customer_settings.toml").write_text("[defaults]\n")
    (tmp_path / "rules.toml").write_text("[r]\n")
    assert moved != config_hash(tmp_path)
