"""The keys a file holds, kept in a private temporary SQLite database.

The file connector keeps the keys of the version it last wrote, so that a batch of
records that are all new to the file is added without scanning the file for them.
Memory stays flat however big the file: SQLite spills to a temporary file.

Keys that spell a plain decimal number (the ids of most tables) and come in runs of
consecutive numbers, as a table read in id order gives them, are kept as runs: the 2,000
new ids of such a batch are one row, checked with one index lookup, where a row per key
cost more than the rest of the write. Other keys, and numbers that come scattered, are
kept as their ``hash()`` (stable within the process), an integer SQLite stores and finds
faster than the bytes. Two keys with one hash make the index say "held" for a key that
is not: the batch then takes the scanning path, never a wrong one. A key may be held in
both forms; it is held if either says so.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from recsync.sqlbulk import execute_rows, row_chunks, values_marks

Run = tuple[int, int]  # lo, hi: the numbers lo..hi, both included

_MAX_DIGITS = 18  # every such number fits SQLite's 64-bit INTEGER
_LEADING_ZERO = re.compile(rb",0[0-9]")  # in ",".join(keys): a number written 0...
_MIN_RUN = 4  # numbers that come in shorter runs on average are kept hashed

# Stored runs never overlap, so the only one that can reach into [a, z] from below is
# the last one starting before a.
_OVERLAPS = """
WITH b(a, z) AS (VALUES {values})
SELECT b.a, r.lo, r.hi FROM b JOIN runs r ON r.lo BETWEEN b.a AND b.z
UNION ALL
SELECT b.a, r.lo, r.hi FROM b JOIN runs r
    ON r.lo = (SELECT lo FROM runs WHERE lo < b.a ORDER BY lo DESC LIMIT 1) AND r.hi >= b.a
"""
_IN_RUNS = """
WITH b(n) AS (VALUES {values})
SELECT 1 FROM b WHERE (SELECT hi FROM runs WHERE lo <= b.n ORDER BY lo DESC LIMIT 1) >= b.n
LIMIT 1
"""


def runs_of(numbers: set[int]) -> list[Run]:
    """``numbers`` as sorted runs of consecutive numbers."""
    if not numbers:
        return []
    lo, hi = min(numbers), max(numbers)
    if hi - lo + 1 == len(numbers):
        return [(lo, hi)]  # the usual batch: consecutive ids
    ordered = sorted(numbers)
    runs: list[Run] = []
    start = prev = ordered[0]
    for n in ordered[1:]:
        if n != prev + 1:
            runs.append((start, prev))
            start = n
        prev = n
    runs.append((start, prev))
    return runs


def subtract(run: Run, taken: list[Run]) -> list[Run]:
    """The parts of ``run`` outside the runs ``taken``."""
    lo, hi = run
    left: list[Run] = []
    for t_lo, t_hi in sorted(taken):
        if t_hi < lo or t_lo > hi:
            continue
        if t_lo > lo:
            left.append((lo, t_lo - 1))
        lo = max(lo, t_hi + 1)
        if lo > hi:
            return left
    left.append((lo, hi))
    return left


class KeyIndex:
    """Keys (bytes, as written in the file) of one file version, named by its signature."""

    def __init__(self) -> None:
        # "" opens a private temporary database, deleted when it is closed
        self._db = sqlite3.connect("", isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA cache_size = -2000")
        # a cache that is rebuilt when in doubt: no journal, no syncing
        self._db.execute("PRAGMA journal_mode = OFF")
        self._db.execute("PRAGMA synchronous = OFF")
        self._db.execute("CREATE TABLE keys (h INTEGER PRIMARY KEY)")
        self._db.execute("CREATE TABLE runs (lo INTEGER PRIMARY KEY, hi INTEGER NOT NULL)")
        self.version: str | None = None
        self._has_runs = False
        self._numbers_hashed = False  # the hashes may include numbers' hashes

    def close(self) -> None:
        self._db.close()

    def clear(self) -> None:
        self.version = None
        self._db.execute("DELETE FROM keys")
        self._db.execute("DELETE FROM runs")
        self._has_runs = self._numbers_hashed = False

    def _overlaps(self, runs: list[Run]) -> dict[int, list[Run]]:
        """The stored runs that overlap each of ``runs``, by the run's start."""
        found: dict[int, list[Run]] = {}
        if not self._has_runs:
            return found
        for start, size in row_chunks(len(runs), 2000):
            part = runs[start : start + size]
            sql = _OVERLAPS.format(values=values_marks(2, len(part)))
            for a, lo, hi in self._db.execute(sql, [n for run in part for n in run]):
                found.setdefault(a, []).append((lo, hi))
        return found

    def _in_runs(self, keys: list[bytes]) -> bool:
        """True when the number of some of ``keys`` (plain numbers) lies in a stored run."""
        if not self._has_runs:
            return False
        numbers = list(map(int, keys))
        for start, size in row_chunks(len(numbers), 5000):
            sql = _IN_RUNS.format(values=values_marks(1, size))
            if self._db.execute(sql, numbers[start : start + size]).fetchone():
                return True
        return False

    def _hashed(self, keys: Sequence[bytes]) -> bool:
        """True when the hash of some of ``keys`` is stored."""
        for start, size in row_chunks(len(keys), 5000):
            sql = f"SELECT 1 FROM keys WHERE h IN ({','.join('?' * size)}) LIMIT 1"
            if self._db.execute(sql, [hash(k) for k in keys[start : start + size]]).fetchone():
                return True
        return False

    def _store_runs(self, runs: list[Run]) -> None:
        execute_rows(self._db, lambda n: f"INSERT INTO runs VALUES {values_marks(2, n)}", runs)
        self._has_runs = self._has_runs or bool(runs)

    def _store_hashes(self, keys: Sequence[bytes], numbers: bool) -> int:
        """Store the hashes of ``keys`` (any may be stored already); how many were new."""
        before = self._db.total_changes
        execute_rows(self._db, lambda n: f"INSERT OR IGNORE INTO keys VALUES {values_marks(1, n)}",
                     [(hash(k),) for k in keys])
        self._numbers_hashed = self._numbers_hashed or (numbers and bool(keys))
        return self._db.total_changes - before

    def add(self, keys: Sequence[bytes]) -> None:
        """Add ``keys``; any of them may be held already."""
        part = _Split.of(keys)
        self._store_hashes(part.others, False)
        self._store_hashes(part.scattered, True)
        taken = self._overlaps(part.runs)
        self._store_runs([p for run in part.runs for p in subtract(run, taken.get(run[0], []))])

    def add_new(self, keys: Sequence[bytes]) -> bool:
        """Add ``keys`` if none of them is held yet and none is named twice (True). Else
        False, and the index is emptied: the caller rebuilds it from the file (a batch
        that cannot simply be added goes the scanning way, which does)."""
        part = _Split.of(keys)
        hashed = part.others + part.scattered
        if (part.repeated or self._overlaps(part.runs)
                or (self._numbers_hashed and part.in_runs and self._hashed(part.in_runs))
                or (part.scattered and self._in_runs(part.scattered))
                # some were held, or two keys share a hash: the new ones are in by now
                or self._store_hashes(hashed, bool(part.scattered)) != len(hashed)):
            self.clear()
            return False
        self._store_runs(part.runs)
        return True


@dataclass
class _Split:
    """A batch of keys by how the index keeps them."""

    runs: list[Run]  # numbers that come in runs
    in_runs: list[bytes]  # the keys of those numbers
    scattered: list[bytes]  # numbers that do not come in runs: kept hashed
    others: list[bytes]  # keys that are no plain number: kept hashed
    repeated: bool  # some number is named twice (other keys: add_new counts new hashes)

    @classmethod
    def of(cls, keys: Sequence[bytes]) -> _Split:
        if (keys and b"".join(keys).isdigit() and min(map(len, keys)) > 0
                and max(map(len, keys)) <= _MAX_DIGITS
                and not _LEADING_ZERO.search(b"," + b",".join(keys))):
            # all numbers: the usual case, checked in C. Consecutive ones in ascending
            # order (a table read in id order) are one run; any other order is scattered.
            first = int(keys[0])
            if (int(keys[-1]) - first + 1 == len(keys)
                    and list(map(int, keys)) == list(range(first, first + len(keys)))):
                return cls([(first, first + len(keys) - 1)], list(keys), [], [], False)
            return cls([], [], list(keys), [], len(set(keys)) != len(keys))
        if not any(map(bytes.isdigit, keys)):
            return cls([], [], [], list(keys), False)  # no numbers at all
        numbers: list[int] = []
        number_keys: list[bytes] = []
        others: list[bytes] = []
        for k in keys:
            if k.isdigit() and len(k) <= _MAX_DIGITS and (k[:1] != b"0" or len(k) == 1):
                numbers.append(int(k))
                number_keys.append(k)
            else:
                others.append(k)
        distinct = set(numbers)
        repeated = len(distinct) != len(numbers)
        # more than twice as wide as it is long: scattered, whatever the runs would be
        if distinct and max(distinct) - min(distinct) < 2 * len(distinct):
            runs = runs_of(distinct)
            if len(runs) * _MIN_RUN <= len(distinct):
                return cls(runs, number_keys, [], others, repeated)
        return cls([], [], number_keys, others, repeated)
