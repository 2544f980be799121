"""The connector registry: the built-in table and the package's entry points agree."""

from __future__ import annotations

import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from recsync.connectors.registry import BUILTIN, connector_names, get_connector_class
from recsync.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_builtin_table_is_what_pyproject_registers() -> None:
    with (ROOT / "pyproject.toml").open("rb") as f:
        registered = tomllib.load(f)["project"]["entry-points"]["recsync.connectors"]
    assert registered == BUILTIN
    installed = {ep.name: ep.value for ep in entry_points(group="recsync.connectors")}
    assert {k: v for k, v in installed.items() if k in BUILTIN} == BUILTIN


def test_every_builtin_connector_loads() -> None:
    for name in BUILTIN:
        assert get_connector_class(name).__name__ == BUILTIN[name].rpartition(":")[2]
    assert set(BUILTIN) <= set(connector_names())


def test_unknown_name_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"Unknown connector 'sqlit'.*Did you mean 'sqlite'"):
        get_connector_class("sqlit")
