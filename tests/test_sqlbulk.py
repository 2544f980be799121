"""Many rows per SQLite statement: every row written once, few distinct statements."""

from __future__ import annotations

import sqlite3

import pytest

from recsync.sqlbulk import execute_rows, row_chunks, values_marks


@pytest.mark.parametrize("count", [0, 1, 7, 300, 1023, 5000])
def test_chunks_cover_every_row_once(count: int) -> None:
    pieces = list(row_chunks(count, 300))
    assert sum(size for _, size in pieces) == count
    assert [start for start, _ in pieces] == [sum(s for _, s in pieces[:i])
                                              for i in range(len(pieces))]
    sizes = {size for _, size in pieces}
    assert all(s == 300 or s & (s - 1) == 0 for s in sizes)  # full pieces or powers of two


def test_execute_rows_writes_every_row_with_its_types() -> None:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v, w)")
    rows = [(i, f"v{i}" if i % 3 else None, i / 7 if i % 2 else b"\x00") for i in range(4321)]
    compiled: set[int] = set()

    def sql_for(n: int) -> str:
        compiled.add(n)
        return f"INSERT INTO t VALUES {values_marks(3, n)}"

    execute_rows(db, sql_for, rows, max_params=999)
    assert db.execute("SELECT k, v, w FROM t ORDER BY k").fetchall() == rows
    assert len(compiled) <= 10  # 333-row statements, then powers of two
