"""PostgreSQL values in and out of recsync records, without losing precision.

Read: numeric comes as its exact text (never a float); date, timestamp and timestamptz as
ISO 8601 text (timestamptz in UTC, ``+00:00``); uuid, time and interval as text; jsonb and
json as JSON values (dict, list, ...); arrays as lists. Integers, booleans, floats and
text are Python's own.

Write: a value goes into the column as PostgreSQL's text input of it, so "12.50" into a
numeric or "2024-01-02T10:00:00+00:00" into a timestamptz is taken exactly. For a json
column a dict or list is JSON, and text that parses as JSON is that JSON (a CSV cell holds
a JSON object as its text); for an array column a JSON list text is the list. An empty
string into a column that is not text is NULL (a CSV cell cannot tell them apart).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.adapt import Buffer, Loader
from psycopg.types.json import Jsonb

_TEXT_TYPES = {"text", "character varying", "character", "name", "citext"}


class _AsText(Loader):
    def load(self, data: Buffer) -> str:
        return bytes(data).decode()


class _IsoTimestamp(Loader):
    """'2024-01-02 10:00:00' -> '2024-01-02T10:00:00'; '...+00' -> '...+00:00'."""

    def load(self, data: Buffer) -> str:
        text = bytes(data).decode().replace(" ", "T", 1)
        if len(text) > 3 and text[-3] in "+-" and text[-2:].isdigit():
            text += ":00"
        return text


def configure(conn: psycopg.Connection[Any]) -> None:
    """Session settings and loaders that make values come out as described above."""
    for name in ("numeric", "date", "time", "timetz", "uuid", "interval", "money"):
        conn.adapters.register_loader(name, _AsText)
    for name in ("timestamp", "timestamptz"):
        conn.adapters.register_loader(name, _IsoTimestamp)
    conn.execute("SET TimeZone = 'UTC'")
    conn.execute("SET DateStyle = 'ISO, YMD'")
    conn.execute("SET IntervalStyle = 'iso_8601'")


def _to_json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            pass
    return Jsonb(value)


def _to_array(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("["):
        try:
            loaded = json.loads(value)
        except ValueError:
            return value
        return loaded if isinstance(loaded, list) else value
    return value


def _blank_is_null(value: Any) -> Any:
    return None if value == "" else value


def _nested_text(value: Any) -> Any:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else value


def writer_for(type_name: str) -> Callable[[Any], Any] | None:
    """How to adapt a record's value for a column of ``type_name`` (None: as it is)."""
    if type_name in ("json", "jsonb"):
        return _to_json
    if type_name.endswith("[]"):
        return _to_array
    if type_name in _TEXT_TYPES or type_name.startswith(("character varying", "character(")):
        return _nested_text
    return _blank_is_null
