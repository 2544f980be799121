"""Connector registry: the ``recsync.connectors`` entry-point group."""

from __future__ import annotations

import difflib
import importlib
from functools import cache
from typing import Any

from recsync.connectors.base import Connector
from recsync.errors import ConfigError

GROUP = "recsync.connectors"

# The connectors this package registers in pyproject.toml (a test keeps the two equal).
# They load without reading every installed distribution's entry points: importing
# importlib.metadata and scanning the environment cost each `recsyncd --once` about
# 50 ms of start-up (CPU, measured on this machine). Other names are looked up in the
# entry points.
BUILTIN = {
    "sqlite": "recsync.connectors.sqlite:SqliteConnector",
    "file": "recsync.connectors.files:FileConnector",
    "salesforce": "recsync.connectors.salesforce:SalesforceConnector",
    "outreach": "recsync.connectors.outreach:OutreachConnector",
    "postgres": "recsync.connectors.postgres:PostgresConnector",
}


@cache
def _entry_points() -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=GROUP)}


def connector_names() -> list[str]:
    """Names of every registered connector, sorted."""
    return sorted(set(BUILTIN) | set(_entry_points()))


def get_connector_class(name: str) -> type[Connector]:
    """The Connector class registered as ``name``.

    Raises:
        ConfigError: no connector has that name (the message suggests the closest one).
    """
    target = BUILTIN.get(name)
    if target is not None:
        module, _, attr = target.partition(":")
        cls = getattr(importlib.import_module(module), attr)
    else:
        ep = _entry_points().get(name)
        if ep is None:
            names = connector_names()
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"Unknown connector {name!r}; registered connectors: {', '.join(names)}.{hint}"
            )
        cls = ep.load()
    assert isinstance(cls, type) and issubclass(cls, Connector)
    return cls
