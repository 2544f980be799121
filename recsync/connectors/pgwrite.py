"""Write a batch to a PostgreSQL table: COPY into a temporary table, then one upsert.

A batch is one transaction tagged ``recsync.origin`` (so our own reader skips the log
rows it makes). When PostgreSQL refuses the batch because of one record's values (a
constraint, a value of the wrong type), it runs again with a savepoint per record: that
record fails alone with PostgreSQL's message and the rest go through.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import errors as pgerr
from psycopg import sql

from recsync.messages import WriteOp, WriteResult

if TYPE_CHECKING:
    from recsync.connectors.postgres import PostgresConnector

_STAGE = "recsync_stage"
# one record's values were refused: the batch is retried a record at a time
_RECORD_ERRORS = (pgerr.IntegrityError, pgerr.DataError)

_Row = tuple[int, WriteOp]
# a record's field names that are columns, and those columns (in that order)
_Shape = tuple[tuple[str, ...], tuple[str, ...]]


def _shape(c: PostgresConnector, fields: tuple[str, ...]) -> _Shape:
    seen: dict[str, str] = {}
    for f in fields:
        col = c._colmap.get(f.lower())
        if col is not None and col not in seen:
            seen[col] = f
    return tuple(seen.values()), tuple(seen)


def _is_record_error(exc: BaseException) -> bool:
    return isinstance(exc, _RECORD_ERRORS) and not isinstance(
        exc, pgerr.TransactionRollback)


def write_batch(c: PostgresConnector, ops: list[WriteOp]) -> list[WriteResult]:
    results: list[WriteResult | None] = [None] * len(ops)
    last: dict[str, int] = {}
    for i, op in enumerate(ops):  # one op per key: the later one wins
        last[op.key] = i
    upserts: dict[_Shape, list[_Row]] = {}
    deletes: list[_Row] = []
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
        upserts.setdefault(shape, []).append((i, op))
    conn = c.conn
    _ensure_stage(c)
    try:
        with conn.transaction():
            _tag(c)
            for shape, rows in upserts.items():
                _copy_upsert(c, shape, rows)
            if deletes:
                _delete(c, [op.key for _i, op in deletes])
    except Exception as exc:
        if not _is_record_error(exc):
            raise
        _one_by_one(c, upserts, deletes, results)
    return [r if r is not None else WriteResult(op.key) for r, op in zip(results, ops,
                                                                         strict=True)]


def _tag(c: PostgresConnector) -> None:
    c.conn.execute("SELECT set_config('recsync.origin', %s, true)", (c.origin or "-",))


def _ensure_stage(c: PostgresConnector) -> None:
    conn = c.conn
    if getattr(conn, "_recsync_stage", None) == c.names.qualified:
        return
    conn.execute(sql.SQL("DROP TABLE IF EXISTS pg_temp.{s}").format(s=sql.Identifier(_STAGE)))
    conn.execute(sql.SQL(
        "CREATE TEMP TABLE {s} ON COMMIT DELETE ROWS AS SELECT * FROM {t} WITH NO DATA").format(
            s=sql.Identifier(_STAGE), t=sql.SQL(c.names.qualified)))
    conn._recsync_stage = c.names.qualified  # type: ignore[attr-defined]


def _values(c: PostgresConnector, shape: _Shape, rows: Iterable[_Row]
            ) -> Iterator[tuple[Any, ...]]:
    fields, cols = shape
    writers = [c._writers.get(col) for col in cols]
    for _i, op in rows:
        record = op.fields or {}
        yield tuple(record[f] if w is None else w(record[f])
                    for f, w in zip(fields, writers, strict=True))


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


def _copy_upsert(c: PostgresConnector, shape: _Shape, rows: list[_Row]) -> None:
    conn, stage, cols = c.conn, sql.Identifier(_STAGE), shape[1]
    collist = sql.SQL(", ").join(map(sql.Identifier, cols))
    with conn.cursor() as cur:
        cur.execute(sql.SQL("TRUNCATE {s}").format(s=stage))
        with cur.copy(sql.SQL("COPY {s} ({cols}) FROM STDIN").format(s=stage, cols=collist)
                      ) as copy:
            for values in _values(c, shape, rows):
                copy.write_row(values)
        cur.execute(_upsert_sql(c, cols, sql.SQL("SELECT {cols} FROM {s}").format(
            cols=collist, s=stage)))


def _delete(c: PostgresConnector, keys: list[str]) -> None:
    c.conn.execute(sql.SQL("DELETE FROM {t} WHERE {k} = ANY(%s::text[]::{kt}[])").format(
        t=sql.SQL(c.names.qualified), k=sql.Identifier(c._key), kt=sql.SQL(c._key_type)),
        (keys,))


def _one_by_one(c: PostgresConnector, upserts: dict[_Shape, list[_Row]],
                deletes: list[_Row], results: list[WriteResult | None]) -> None:
    conn = c.conn
    with conn.transaction():
        _tag(c)
        for shape, rows in upserts.items():
            cols = shape[1]
            statement = _upsert_sql(c, cols, sql.SQL("VALUES ({m})").format(
                m=sql.SQL(", ").join(sql.Placeholder() * len(cols))))
            for (i, op), values in zip(rows, _values(c, shape, rows), strict=True):
                try:
                    with conn.transaction():
                        conn.execute(statement, values)
                except psycopg.Error as exc:
                    if not _is_record_error(exc):
                        raise
                    results[i] = WriteResult(
                        op.key, f"PostgreSQL refused record {op.key!r} for {c.where}: "
                        f"{_first_line(exc)}.")
        for i, op in deletes:
            try:
                with conn.transaction():
                    _delete(c, [op.key])
            except psycopg.Error as exc:
                if not _is_record_error(exc):
                    raise
                results[i] = WriteResult(
                    op.key, f"PostgreSQL refused deleting {op.key!r} from {c.where}: "
                    f"{_first_line(exc)}.")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
