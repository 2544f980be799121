"""Write a batch to a PostgreSQL table: COPY into a temporary table, then one upsert.

The rows are COPYed into the session's stage table first (its own short transaction: a
temporary table writes no WAL, so it waits for no flush), then one query runs the whole
batch as one transaction tagged ``recsync.origin`` (so our own reader skips the log rows
it makes): the upserts from the stage, the deletes, emptying the stage, COMMIT. Three
round trips a batch, whatever its size (each costs 5-12 ms on a loaded machine: there
were five). When PostgreSQL refuses the batch because of one record's values (a
constraint, a value of the wrong type, in the COPY or the upsert), it runs again with a
savepoint per record: that record fails alone with PostgreSQL's message and the rest go
through.

A record whose key the key column cannot hold (a CRM's placeholder ``sf-<Id>`` for an
integer or uuid key) is inserted without its key when the column has a default (a
sequence, an identity): PostgreSQL makes the key, returned as ``WriteResult.new_key``.
Without a default the record fails saying so.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from recsync.connectors.sqltable import first_line, int_text
from recsync.messages import WriteOp, WriteResult

if TYPE_CHECKING:
    from recsync.connectors.postgres import PostgresConnector

_STAGE = "recsync_stage"
_STAGE_SHAPE = "recsync_stage_shape"  # which shape of the batch a staged row has
_STAGE_ID = sql.SQL("pg_temp.{s}").format(s=sql.Identifier(_STAGE))
_INTEGERS = ("smallint", "integer", "bigint")

_Row = tuple[int, WriteOp]
# a record's field names that are columns, and those columns (in that order)
_Shape = tuple[tuple[str, ...], tuple[str, ...]]


def _shape(c: PostgresConnector, fields: tuple[str, ...]) -> _Shape:
    shape = c._shapes.get(fields)  # records of a batch mostly share their field names
    if shape is None:
        seen: dict[str, str] = {}
        for f in fields:
            col = c._colmap.get(f.lower())
            if col is not None and col not in seen:
                seen[col] = f
        shape = c._shapes[fields] = (tuple(seen.values()), tuple(seen))
    return shape


def _uuid_text(key: str) -> bool:
    try:
        uuid.UUID(key)
    except ValueError:
        return False
    return True


def _holds(c: PostgresConnector, key: str) -> bool:
    """Whether the key column can hold ``key`` (integer and uuid columns are checked)."""
    if c._key_type in _INTEGERS:
        return int_text(key)
    if c._key_type == "uuid":
        return _uuid_text(key)
    return True


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
    for key, i in last.items():
        op = ops[i]
        if op.kind == "delete":
            deletes.append((i, op))
            continue
        shape = _shape(c, tuple(op.fields or {}))
        if c._key not in shape[1]:
            results[i] = WriteResult(
                key, f"Record {key!r} has no value for key column {c._key!r} of {c.where}.")
            continue
        if not _holds(c, key):
            if c._makes_keys:  # a new row: PostgreSQL makes its key
                made.append((i, op, shape))
            else:
                results[i] = WriteResult(key, _cannot_hold(c, key))
            continue
        upserts.setdefault(shape, []).append((i, op))
    if not upserts and not deletes and not made:
        return [r if r is not None else WriteResult(op.key)
                for r, op in zip(results, ops, strict=True)]
    conn = c.conn
    shapes = list(upserts.items())
    begin = sql.SQL("BEGIN; SELECT set_config('recsync.origin', {o}, true); "
                    "SAVEPOINT recsync_batch").format(o=sql.Literal(c.origin or "-"))
    staged = bool(shapes) and _stage(c, shapes)
    parts: list[sql.Composable] = []
    emptied: list[bool] = []  # the batch's query ran (it empties the stage)

    def batch() -> None:
        conn.execute(sql.SQL("; ").join(parts))
        emptied.append(True)

    def one_by_one() -> None:
        conn.execute("ROLLBACK TO SAVEPOINT recsync_batch")
        _one_by_one(c, upserts, deletes, results)

    try:
        if staged:
            # one query, one round trip: the whole batch, the stage emptied, COMMIT
            parts += [begin, *(
                _upsert_sql(c, shape[1], sql.SQL("SELECT {cols} FROM {s} WHERE {n} = {i}").format(
                    cols=sql.SQL(", ").join(map(sql.Identifier, shape[1])), s=_STAGE_ID,
                    n=sql.Identifier(_STAGE_SHAPE), i=sql.Literal(n)))
                for n, (shape, _rows) in enumerate(shapes))]
            if deletes:
                parts.append(_delete_sql(c, [op.key for _i, op in deletes]))
            parts.append(sql.SQL("TRUNCATE {s}").format(s=_STAGE_ID))
            if not made:
                parts.append(sql.SQL("COMMIT"))
            c._batch_or_rows(batch, one_by_one)
        else:
            # nothing staged: deletes only, or the COPY refused a value
            conn.execute(begin)
            if shapes:
                _one_by_one(c, upserts, deletes, results)
            elif deletes:
                keys = [op.key for _i, op in deletes]
                c._batch_or_rows(lambda: _delete(c, keys), one_by_one)
        if made:
            _insert_new_keys(c, made, results)
        if conn.info.transaction_status != TransactionStatus.IDLE:
            conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(psycopg.Error):
            conn.rollback()
        raise
    if shapes:
        # the stage is empty once the batch's query committed; otherwise (a refused or a
        # failed batch) the next batch empties it first
        conn._recsync_stage = (c.names.qualified, not emptied)  # type: ignore[attr-defined]
    return [r if r is not None else WriteResult(op.key) for r, op in zip(results, ops,
                                                                         strict=True)]


def _stage(c: PostgresConnector, shapes: list[tuple[_Shape, list[_Row]]]) -> bool:
    """COPY every shape's rows into the stage (its own transaction); False when
    PostgreSQL refused a value (the records then go one at a time)."""
    conn = c.conn
    stage = getattr(conn, "_recsync_stage", None)  # (table, may hold rows)
    if stage is None or stage[0] != c.names.qualified:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {s}").format(s=_STAGE_ID))
        conn.execute(sql.SQL(
            "CREATE TEMP TABLE {s} AS SELECT *, 0 AS {n} FROM {t} WITH NO DATA").format(
                s=sql.Identifier(_STAGE), n=sql.Identifier(_STAGE_SHAPE),
                t=sql.SQL(c.names.qualified)))
    elif stage[1]:
        conn.execute(sql.SQL("TRUNCATE {s}").format(s=_STAGE_ID))
    conn._recsync_stage = (c.names.qualified, True)  # type: ignore[attr-defined]
    try:
        with conn.cursor() as cur:
            for n, (shape, rows) in enumerate(shapes):
                cols = sql.SQL(", ").join(map(sql.Identifier, (*shape[1], _STAGE_SHAPE)))
                with cur.copy(sql.SQL("COPY {s} ({cols}) FROM STDIN").format(
                        s=_STAGE_ID, cols=cols)) as copy:
                    write_row = copy.write_row
                    for values in _values(c, shape, rows):
                        write_row((*values, n))
    except Exception as exc:
        if not c._is_record_error(exc):
            raise
        return False
    return True


def _values(c: PostgresConnector, shape: _Shape, rows: Iterable[_Row]
            ) -> Iterator[tuple[Any, ...]]:
    fields, cols = shape
    pairs = [(f, c._writers.get(col)) for f, col in zip(fields, cols, strict=True)]
    for _i, op in rows:
        record = op.fields or {}
        yield tuple([record[f] if w is None else w(record[f]) for f, w in pairs])


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
        cols = shape[1]
        statement = _upsert_sql(c, cols, sql.SQL("VALUES ({m})").format(
            m=sql.SQL(", ").join(sql.Placeholder() * len(cols))))
        c._each_row(((i, op.key, partial(_execute, c, statement, values))
                     for (i, op), values in zip(rows, _values(c, shape, rows), strict=True)),
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
        (values,) = _values(c, shape, [(i, op)])
        names = sql.SQL(", ").join(map(sql.Identifier, shape[1]))
        statement = (
            sql.SQL("INSERT INTO {t} ({cols}) VALUES ({m}) RETURNING {k}::text").format(
                t=sql.SQL(c.names.qualified), cols=names, k=sql.Identifier(c._key),
                m=sql.SQL(", ").join(sql.Placeholder() * len(values)))
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
