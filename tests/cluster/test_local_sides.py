"""A pipeline with a side in a file of this host moves only between nodes on this host."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from recsync.cluster.coordinator import has_local_side
from recsync.config import load_config

SIDES = {
    "sqlite": '{ connector = "sqlite", path = "a.sqlite", table = "users", key = "id" }',
    "csv": '{ connector = "file", path = "b.csv", key = "id" }',
    "jsonl": '{ connector = "file", path = "b.jsonl", key = "id" }',
    "postgres": ('{ connector = "postgres", dsn = "postgresql://db/app", table = "users", '
                 'key = "id" }'),
    "salesforce": '{ connector = "salesforce", mock = true, key = "Record_Id__c" }',
}


@pytest.mark.parametrize(("a", "b", "local"), [
    ("salesforce", "sqlite", True), ("salesforce", "csv", True), ("jsonl", "postgres", True),
    ("postgres", "salesforce", False),
])
def test_a_file_side_keeps_the_pipeline_on_its_host(tmp_path: Path, a: str, b: str,
                                                    local: bool) -> None:
    (tmp_path / "customer_settings.toml").write_text(textwrap.dedent(f"""
        [customers.c.pipelines.p]
        rules = "r"
        a = {SIDES[a]}
        b = {SIDES[b]}
        """))
    (tmp_path / "rules.toml").write_text('[r]\na_to_b = ["create"]\n[r.mappings]\nid = "id"\n')
    config = load_config(tmp_path)
    assert has_local_side(config.pipelines["c/p"]) is local
