"""The keys a file holds, kept in a private temporary SQLite database.

The file connector keeps the keys of the version it last wrote, so that a batch of
records that are all new to the file is added without scanning the file for them.
Memory stays flat however big the file: SQLite spills to a temporary file.

It holds each key's ``hash()`` (stable within the process), an integer SQLite stores and
finds faster than the bytes. Two keys with one hash make the index say "held" for a key
that is not: the batch then takes the scanning path, never a wrong one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from recsync.sqlbulk import execute_rows, values_marks


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
        self.version: str | None = None

    def close(self) -> None:
        self._db.close()

    def clear(self) -> None:
        self.version = None
        self._db.execute("DELETE FROM keys")

    def _insert(self, verb: str, keys: Sequence[bytes]) -> None:
        execute_rows(self._db, lambda n: f"{verb} INTO keys VALUES {values_marks(1, n)}",
                     [(hash(k),) for k in keys])

    def add(self, keys: Sequence[bytes]) -> None:
        self._insert("INSERT OR IGNORE", keys)

    def add_new(self, keys: Sequence[bytes]) -> bool:
        """Add ``keys`` if none of them is held yet (True); else change nothing (False)."""
        self._db.execute("BEGIN")
        try:
            self._insert("INSERT", keys)
        except sqlite3.IntegrityError:
            self._db.execute("ROLLBACK")
            return False
        self._db.execute("COMMIT")
        return True
