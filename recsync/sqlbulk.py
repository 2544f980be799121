"""Many rows per SQLite statement.

Python's sqlite3 releases the GIL around every step, so ``executemany`` gives it up and
takes it back once per row; while another thread of the daemon runs Python, each take
back waits up to a switch interval, which makes a 2,000-row batch a hundred times slower
under load. One multi-row statement runs in one step, off the GIL.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from itertools import chain
from typing import Any


def row_chunks(count: int, per: int) -> Iterator[tuple[int, int]]:
    """(start, size) pieces of ``count`` rows: full ``per``-row pieces, then powers of two,
    so only a few distinct statements get compiled and cached."""
    i = 0
    while i < count:
        left = count - i
        size = per if left >= per else 1 << (left.bit_length() - 1)
        yield i, size
        i += size


def values_marks(width: int, rows: int) -> str:
    """``(?, ?), (?, ?)``: the VALUES list of ``rows`` rows of ``width`` columns."""
    one = "(" + ", ".join("?" * width) + ")"
    return ", ".join([one] * rows)


def execute_rows(
    db: sqlite3.Connection,
    sql_for: Callable[[int], str],
    rows: Sequence[Sequence[Any]],
    max_params: int = 9000,
) -> None:
    """Run ``sql_for(n)`` (a statement with an n-row VALUES list) over ``rows``."""
    if not rows:
        return
    width = len(rows[0])
    per = max(1, max_params // max(1, width))
    for start, size in row_chunks(len(rows), per):
        db.execute(sql_for(size), list(chain.from_iterable(rows[start : start + size])))
