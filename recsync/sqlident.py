"""SQL identifiers quoted the standard way (SQLite and PostgreSQL alike)."""

from __future__ import annotations


def quote_ident(name: str) -> str:
    """``name`` as a double-quoted identifier (inner quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'
