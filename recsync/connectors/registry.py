"""Connector registry: the ``recsync.connectors`` entry-point group."""

from __future__ import annotations

import difflib
from functools import cache
from importlib.metadata import entry_points

from recsync.connectors.base import Connector
from recsync.errors import ConfigError

GROUP = "recsync.connectors"


@cache
def _entry_points() -> dict[str, object]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def connector_names() -> list[str]:
    """Names of every registered connector, sorted."""
    return sorted(_entry_points())


def get_connector_class(name: str) -> type[Connector]:
    """The Connector class registered as ``name``.

    Raises:
        ConfigError: no connector has that name (the message suggests the closest one).
    """
    eps = _entry_points()
    ep = eps.get(name)
    if ep is None:
        close = difflib.get_close_matches(name, list(eps), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"Unknown connector {name!r}; registered connectors: {', '.join(sorted(eps))}.{hint}"
        )
    cls = ep.load()  # type: ignore[attr-defined]
    assert isinstance(cls, type) and issubclass(cls, Connector)
    return cls
