"""PostgreSQL values in and out of recsync records, without losing precision.

Read: numeric comes as its exact text (never a float); date, timestamp and timestamptz as
ISO 8601 text (timestamptz in UTC, ``+00:00``); uuid, time and interval as text; bytea as
its hex text (``\\x00ff``, ``\\x`` when empty: its input form, so it goes through a CSV
and back unchanged); jsonb and json as JSON values (dict, list, ...); arrays as lists.
Integers, booleans, floats and text are Python's own.

Write: records go to PostgreSQL as a JSON document that ``json_populate_recordset`` turns
into rows of the table (:mod:`recsync.connectors.pgwrite`): a value goes into the column as
PostgreSQL's text input of it, so "12.50" into a numeric or "2024-01-02T10:00:00+00:00"
into a timestamptz is taken exactly. For a json column a dict or list is JSON, and text
that parses as JSON is that JSON (a CSV cell holds a JSON object as its text); for an array
column a list, or a JSON list text, is the array. An empty string is NULL, except in a NOT
NULL text column or the key column (a CSV cell cannot tell them apart, and the content hash
counts them equal too; a key is never NULL). The writers below make each value one JSON
holds as it is: bytes become bytea's hex text, a float that is not finite its text
("NaN", "Infinity"), anything else unknown its ``str()``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import msgspec
import psycopg
from psycopg import sql
from psycopg.adapt import Buffer, Loader

from recsync.rules import text_form

_TEXT_TYPES = {"text", "character varying", "character", "name", "citext"}


class _AsText(Loader):
    def load(self, data: Buffer) -> str:
        return bytes(data).decode()


class _IsoTimestamp(Loader):
    """'2024-01-02 10:00:00' -> '2024-01-02T10:00:00'; '...+00' -> '...+00:00' (what
    PostgreSQL's to_json gives, ``select_expr``; ' BC' stays last)."""

    def load(self, data: Buffer) -> str:
        text = bytes(data).decode().replace(" ", "T", 1)
        era = ""
        if text.endswith(" BC"):
            text, era = text[:-3], " BC"
        if len(text) > 3 and text[-3] in "+-" and text[-2:].isdigit():
            text += ":00"
        return text + era


_AS_TEXT = ("numeric", "date", "time", "uuid", "interval", "money")


def configure(conn: psycopg.Connection[Any]) -> None:
    """Session settings and loaders that make values come out as described above."""
    for name in ("numeric", "date", "time", "timetz", "uuid", "interval", "money", "bytea"):
        conn.adapters.register_loader(name, _AsText)
    for name in ("timestamp", "timestamptz"):
        conn.adapters.register_loader(name, _IsoTimestamp)
    # one round trip, not three
    conn.execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; "
                 "SET IntervalStyle = 'iso_8601'; SET bytea_output = 'hex'")


def select_expr(column: str, type_name: str) -> sql.Composable:
    """How a reader selects ``column``: the value as the loaders above would make it, but
    computed by PostgreSQL where a loader would run in Python for each value (measured,
    100,000 rows with one timestamptz column: 0.38 s of client CPU with the loader, 0.23 s
    with ``to_json``). Arrays keep the loaders (their elements are loaded one by one)."""
    name = sql.Identifier(column)
    # format_type() output: "timestamp(3) with time zone", "numeric(10,2)", "interval day"
    base = type_name.split("(", 1)[0].removesuffix(" with time zone").removesuffix(
        " without time zone").split(" ", 1)[0] if not type_name.endswith("]") else ""
    if base == "timestamp":  # ISO 8601 with "T" and a "+00:00" offset, as to_json gives
        # it; the text with its space replaced is the same for years 1 to 9999 (and more),
        # at 33 ms of server time for 100,000 values instead of 84 ms (TimeZone is UTC:
        # a timestamptz's text ends "+00")
        offset = sql.SQL(" || ':00'") if type_name.endswith(" with time zone") else sql.SQL("")
        return sql.SQL(
            "CASE WHEN isfinite({c}) AND {c} >= '0001-01-01' THEN replace({c}::text, ' ', 'T')"
            "{o} ELSE to_json({c}) #>> '{{}}' END AS {c}").format(c=name, o=offset)
    if base in _AS_TEXT:
        return sql.SQL("{c}::text AS {c}").format(c=name)
    return name


# the JSON a batch is sent as; a value JSON has no form for goes as its text
encode_json = msgspec.json.Encoder(enc_hook=str).encode


def _to_json(value: Any) -> Any:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            pass
    return value


def _to_array(value: Any) -> Any:
    if value == "":
        return None
    if isinstance(value, str) and value.startswith("["):
        try:
            loaded = json.loads(value)
        except ValueError:
            return value
        return loaded if isinstance(loaded, list) else value
    return value


def _blank_is_null(value: Any) -> Any:
    cls = value.__class__
    if cls is str:
        return value or None
    if cls is float:  # JSON has no NaN or Infinity: their text, as the column reads it
        return value if math.isfinite(value) else (
            "NaN" if value != value else "Infinity" if value > 0 else "-Infinity")
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()  # bytea's input (JSON would take base64)
    return value


def _text(value: Any) -> Any:
    if value is None or value.__class__ is str:
        return value
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return text_form(value)  # 303.0 -> "303", True -> "true": what the content hash saw


def _nullable_text(value: Any) -> Any:
    if value.__class__ is str:  # the common case, in one call per value
        return value or None
    return _text(value)


def blank_padded(type_name: str) -> bool:
    """char(n): PostgreSQL pads its values with spaces, and its ::text drops them."""
    return type_name == "character" or type_name.startswith("character(")


def as_is(type_name: str) -> bool:
    """Whether a non-empty str or an int goes into a column of ``type_name`` as it is:
    its writer returns it unchanged (for a text column, an int's text, which PostgreSQL
    makes of the JSON number too); not so for json and array columns, which parse text."""
    return type_name not in ("json", "jsonb") and not type_name.endswith("[]")


def writer_for(type_name: str, not_null: bool = False) -> Callable[[Any], Any]:
    """How to adapt a record's value for a column of ``type_name``."""
    if type_name in ("json", "jsonb"):
        return _to_json
    if type_name.endswith("[]"):
        return _to_array
    if type_name in _TEXT_TYPES or type_name.startswith(("character varying", "character(")):
        return _text if not_null else _nullable_text
    return _blank_is_null
