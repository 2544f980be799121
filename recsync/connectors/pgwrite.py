"""Write a batch to a PostgreSQL table: one query, one round trip.

Each shape of record (which fields it has) goes as one JSON document that PostgreSQL's
``json_populate_recordset`` turns into rows of the table (each value through its column's
text input, as COPY would); the query is the whole batch as one transaction tagged
``recsync.origin`` (so our own reader skips the log rows it makes): the upserts, the
deletes, COMMIT. (It was a COPY into a temporary stage table, then the query: three round
trips a batch, and each costs 5-12 ms on a loaded machine. Measured, 100,000 rows in
batches of 1000: client CPU 0.35-0.40 -> 0.28-0.34 s, server CPU 0.94-1.05 -> 0.76-0.92 s.)
When PostgreSQL refuses the batch because of one record's values (a constraint, a value of
the wrong type), it runs again with a savepoint per record: that record fails alone with
PostgreSQL's message and the rest go through.

A record whose key the key column cannot hold (a CRM's placeholder ``sf-<Id>`` for an
integer or uuid key) is inserted without its key when the column has a default (a
sequence, an identity): PostgreSQL makes the key, returned as ``WriteResult.new_key``.
Without a default the record fails saying so. A key the column holds in another form
(``007`` or ``+7`` for an integer column, which stores 7; an upper-case uuid) fails saying
which: linked under its own text, the row would be read back as another record.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from recsync.connectors.pgtypes import encode_json
from recsync.connectors.sqltable import first_line, int_text
from recsync.messages import WriteOp, WriteResult

if TYPE_CHECKING:
    from recsync.connectors.postgres import PostgresConnector

_INTEGERS = ("smallint", "integer", "bigint")
_QUERY_BYTES = 32 << 20  # of JSON in one query, at most (bar one record larger alone)

_Row = tuple[int, WriteOp]
# a record's field names that are columns, and those columns (in that order)
_Shape = tuple[tuple[str, ...], tuple[str, ...]]


def _shape(c: PostgresConnector, fields: tuple[str, ...]) -> _Shape:
    shape = c._shapes.get(fields)  # records of a batch mostly share their field names
    if shape is None:
        seen: dict[str, str] = {}
        for f in fields:
            # the column of that exact name (mapped names are checked exact at start)
            col = f if f in c._columns else c._colmap.get(f.lower())
            if col is not None and col not in seen:
                seen[col] = f
        shape = c._shapes[fields] = (tuple(seen.values()), tuple(seen))
    return shape


def _uuid_form(key: str) -> str | None:
    try:
        return str(uuid.UUID(key))  # what PostgreSQL's uuid::text gives: lower case, hyphens
    except ValueError:
        return None


def _integer_form(key: str) -> str | None:
    if key.isdigit() and key.isascii() and (key[0] != "0" or key == "0"):
        return key  # digits: the usual key, already as PostgreSQL writes it
    return str(int(key)) if int_text(key) else None


def _char_form(key: str) -> str | None:
    return key.rstrip(" ")  # char(n) pads; its text (what the key is read as) does not


def _any_form(key: str) -> str | None:
    return key


def _holder(c: PostgresConnector) -> Callable[[str], str | None]:
    """The text the key column would read a key back as (None: it cannot hold it; integer,
    uuid and char(n) columns are checked, in Python; other types as they are)."""
    if c._key_type in _INTEGERS:
        return _integer_form
    if c._key_type == "uuid":
        return _uuid_form
    if c._key_type in ("character", "bpchar") or c._key_type.startswith("character("):
        return _char_form
    return _any_form


def _not_normal(c: PostgresConnector, key: str, normal: str) -> str:
    return (f"Record {key!r} cannot be written to {c.where}: its key column {c._key!r} "
            f"holds {c._key_type} values and would store {key!r} as {normal!r}, a key "
            "read back as another record (a duplicate on the other side); give the record "
            f"the key {normal!r} on the other side.")


def _cannot_hold(c: PostgresConnector, key: str) -> str:
    return (f"Record {key!r} cannot be written to {c.where}: its key column {c._key!r} "
            f"holds {c._key_type} values, {key!r} is not one, and the table cannot make "
            "keys itself (the column has no default: no sequence, identity or "
            f"generated value); give the record a {c._key!r} value on the other side.")


def write_batch(c: PostgresConnector, ops: list[WriteOp]) -> list[WriteResult]:
    results: list[WriteResult | None] = [None] * len(ops)
    last: dict[str, int] = {}
    for i, op in enumerate(ops):  # one op per key: the later one wins
        last[op.key] = i
    upserts: dict[_Shape, list[_Row]] = {}
    deletes: list[_Row] = []
    made: list[tuple[int, WriteOp, _Shape]] = []
    holds, shapes = _holder(c), c._shapes
    for key, i in last.items():
        op = ops[i]
        if op.kind == "delete":
            if holds(key) == key:
                deletes.append((i, op))
            else:  # no row can have this key: its normal form is another record's key
                results[i] = WriteResult(key)
            continue
        fields = tuple(op.fields or {})
        shape = shapes.get(fields) or _shape(c, fields)
        if c._key not in shape[1]:
            results[i] = WriteResult(
                key, f"Record {key!r} has no value for key column {c._key!r} of {c.where}.")
            continue
        normal = holds(key)
        if normal is None:
            if c._makes_keys:  # a new row: PostgreSQL makes its key
                made.append((i, op, shape))
            else:
                results[i] = WriteResult(key, _cannot_hold(c, key))
            continue
        if normal != key:  # "007" is stored as 7: linked under "007", it would come back
            results[i] = WriteResult(key, _not_normal(c, key, normal))
            continue
        upserts.setdefault(shape, []).append((i, op))
    if not upserts and not deletes and not made:
        return [r if r is not None else WriteResult(op.key)
                for r, op in zip(results, ops, strict=True)]
    conn = c.conn
    begin = sql.SQL("BEGIN; SELECT set_config('recsync.origin', {o}, true); "
                    "SAVEPOINT recsync_batch").format(o=sql.Literal(c.origin or "-"))
    # (statement, its size): the size of the JSON it holds
    parts: list[tuple[sql.Composable, int]] = [(begin, 0), *(
        (_upsert_sql(c, shape[1], _rows_sql(c, shape[1], sql.Literal(doc))), len(doc))
        for shape, rows in upserts.items() for doc in _documents(c, shape, rows))]
    if deletes:
        parts.append((_delete_sql(c, [op.key for _i, op in deletes]), 0))
    if not made:
        parts.append((sql.SQL("COMMIT"), 0))

    def batch() -> None:
        # one query, one round trip: the whole batch and its COMMIT (a batch of more than
        # _QUERY_BYTES of JSON in several); never prepared: a query of its own each time
        group: list[sql.Composable] = []
        size = 0
        for part, n in parts:
            if group and size + n > _QUERY_BYTES:
                conn.execute(sql.SQL("; ").join(group), prepare=False)
                group, size = [], 0
            group.append(part)
            size += n
        conn.execute(sql.SQL("; ").join(group), prepare=False)

    def one_by_one() -> None:
        conn.execute("ROLLBACK TO SAVEPOINT recsync_batch")
        _one_by_one(c, upserts, deletes, results)

    try:
        c._batch_or_rows(batch, one_by_one)
        if made:
            _insert_new_keys(c, made, results)
        if conn.info.transaction_status != TransactionStatus.IDLE:
            conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(psycopg.Error):
            conn.rollback()
        raise
    return [r if r is not None else WriteResult(op.key) for r, op in zip(results, ops,
                                                                         strict=True)]


def _rows_sql(c: PostgresConnector, cols: tuple[str, ...], document: sql.Composable,
              one: bool = False) -> sql.Composed:
    """``cols`` of rows of the table made from a JSON document: an array of objects by
    column name (``one``: a single object)."""
    return sql.SQL("SELECT {cols} FROM {f}(NULL::{t}, {d}::json)").format(
        cols=sql.SQL(", ").join(map(sql.Identifier, cols)),
        f=sql.SQL("json_populate_record" if one else "json_populate_recordset"),
        t=sql.SQL(c.names.qualified), d=document)


def _json_objects(c: PostgresConnector, shape: _Shape, rows: Iterable[_Row]
                  ) -> list[dict[str, Any]]:
    """The records as objects by column name, each value as its column's writer makes it.
    A non-empty str or an int, in a column that takes them as they are, skips the call:
    0.75 -> 0.29 ms for 1000 records of four fields."""
    steps = [(f, col, c._writers[col], col in c._as_is)
             for f, col in zip(shape[0], shape[1], strict=True)]
    out = []
    for _i, op in rows:
        record = op.fields or {}
        obj = {}
        for f, col, write, as_is in steps:
            v = record[f]
            obj[col] = (v if as_is and ((v.__class__ is str and v) or v.__class__ is int)
                        else write(v))
        out.append(obj)
    return out


def _json_rows(c: PostgresConnector, shape: _Shape, rows: Iterable[_Row]) -> str:
    return encode_json(_json_objects(c, shape, rows)).decode()


def _documents(c: PostgresConnector, shape: _Shape, rows: list[_Row]) -> Iterator[str]:
    """The rows as JSON documents of at most _QUERY_BYTES each (unless one record alone is
    more): PostgreSQL takes a query of up to 1 GB, and holds it whole."""
    doc = _json_rows(c, shape, rows)
    if len(doc) <= _QUERY_BYTES or len(rows) == 1:
        yield doc
        return
    half = len(rows) // 2
    yield from _documents(c, shape, rows[:half])
    yield from _documents(c, shape, rows[half:])


def _upsert_sql(c: PostgresConnector, cols: tuple[str, ...], source: sql.Composable
                ) -> sql.Composed:
    collist = sql.SQL(", ").join(map(sql.Identifier, cols))
    others = [col for col in cols if col != c._key]
    action: sql.Composable = (
        sql.SQL("DO UPDATE SET ") + sql.SQL(", ").join(
            sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(col)) for col in others)
        if others else sql.SQL("DO NOTHING"))
    return sql.SQL("INSERT INTO {t} ({cols}) {src} ON CONFLICT ({k}) {a}").format(
        t=sql.SQL(c.names.qualified), cols=collist, src=source, k=sql.Identifier(c._key),
        a=action)


def _delete_sql(c: PostgresConnector, keys: list[str]) -> sql.Composed:
    return sql.SQL("DELETE FROM {t} WHERE {k} = ANY({keys}::text[]::{kt}[])").format(
        t=sql.SQL(c.names.qualified), k=sql.Identifier(c._key), kt=sql.SQL(c._key_type),
        keys=sql.Literal(keys))


def _delete(c: PostgresConnector, keys: list[str]) -> None:
    c.conn.execute(_delete_sql(c, keys))


def _one_by_one(c: PostgresConnector, upserts: dict[_Shape, list[_Row]],
                deletes: list[_Row], results: list[WriteResult | None]) -> None:
    def refused(key: str, exc: BaseException) -> str:
        return f"PostgreSQL refused record {key!r} for {c.where}: {first_line(exc)}."

    def refused_delete(key: str, exc: BaseException) -> str:
        return f"PostgreSQL refused deleting {key!r} from {c.where}: {first_line(exc)}."

    for shape, rows in upserts.items():
        statement = _upsert_sql(c, shape[1], _rows_sql(c, shape[1], sql.Placeholder(), True))
        c._each_row(((i, op.key, partial(_execute, c, statement, (encode_json(obj).decode(),)))
                     for (i, op), obj in zip(rows, _json_objects(c, shape, rows), strict=True)),
                    results, refused)
    c._each_row(((i, op.key, partial(_delete, c, [op.key])) for i, op in deletes),
                results, refused_delete)


def _insert_new_keys(c: PostgresConnector, made: list[tuple[int, WriteOp, _Shape]],
                     results: list[WriteResult | None]) -> None:
    """Insert records without the key they came with; the key PostgreSQL made for each
    (the column's default) is its new key."""
    for i, op, (fields, cols) in made:
        keep = [n for n, col in enumerate(cols) if col != c._key]
        shape = (tuple(fields[n] for n in keep), tuple(cols[n] for n in keep))
        (obj,) = _json_objects(c, shape, [(i, op)])
        values = (encode_json(obj).decode(),)
        names = sql.SQL(", ").join(map(sql.Identifier, shape[1]))
        statement = (
            sql.SQL("INSERT INTO {t} ({cols}) {rows} RETURNING {k}::text").format(
                t=sql.SQL(c.names.qualified), cols=names, k=sql.Identifier(c._key),
                rows=_rows_sql(c, shape[1], sql.Placeholder(), True))
            if shape[1] else
            sql.SQL("INSERT INTO {t} DEFAULT VALUES RETURNING {k}::text").format(
                t=sql.SQL(c.names.qualified), k=sql.Identifier(c._key)))
        made_key: list[str] = []

        def insert(statement: sql.Composed = statement,
                   values: tuple[Any, ...] = values, out: list[str] = made_key) -> None:
            row = c.conn.execute(statement, values).fetchone()
            assert row is not None
            out.append(row[0])

        c._each_row([(i, op.key, insert)], results, lambda key, exc: (
            f"PostgreSQL refused record {key!r} for {c.where}: {first_line(exc)}."))
        if made_key:
            results[i] = WriteResult(op.key, new_key=made_key[0])


def _execute(c: PostgresConnector, statement: sql.Composed, values: tuple[Any, ...]) -> None:
    c.conn.execute(statement, values)
