"""Records a target created under a key of its own (``ItemOutcome.new_key``): a SQLite
table with an INTEGER PRIMARY KEY given a CRM record whose placeholder key (``sf-<Id>``)
it cannot hold makes a new rowid. The store then keeps one link, under the new key, and
queues the write of that key back to the source (``rekeys`` row: the key the source holds
the record under until then); changes the source reports under the old key meanwhile are
dropped (the queued write carries the record's content).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from recsync.messages import Direction, ItemOutcome, Side


def pending(db: sqlite3.Connection) -> bool:
    return bool(db.execute("SELECT EXISTS (SELECT 1 FROM rekeys)").fetchone()[0])


def old_keys(db: sqlite3.Connection, keys: Sequence[str]) -> set[str]:
    """The ``keys`` that are a source's old key of a record waiting for its new one."""
    olds = {r[0] for r in db.execute("SELECT old_key FROM rekeys")}
    return olds.intersection(keys)


def link_new_keys(
    db: sqlite3.Connection, outcomes: Sequence[ItemOutcome], target: Side, back: Direction,
    written_at: float, now: float,
) -> list[tuple[str, str, str | None]]:
    """Link each record under its new key (the target holds its content now, the source
    not yet) and remember the key the source holds it under; history rows to add."""
    source = "a" if target == "b" else "b"
    history: list[tuple[str, str, str | None]] = []
    for o in outcomes:
        new = o.new_key
        assert new is not None
        db.execute("DELETE FROM links WHERE key = ?", (o.key,))
        db.execute(
            f"INSERT INTO links (key, {target}_hash, {target}_written, synced_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
            f"{target}_hash = excluded.{target}_hash, "
            f"{target}_written = excluded.{target}_written, synced_at = excluded.synced_at, "
            f"{source}_hash = NULL, stale = 0",
            (new, o.hash, written_at, now))
        db.execute("INSERT OR REPLACE INTO rekeys (direction, key, old_key) VALUES (?, ?, ?)",
                   (back, new, o.key))
        history.append((o.key, "rekeyed", f"created on side {target} as {new!r}; that key is "
                                          f"written back to side {source}"))
        history.append((new, "created", f"on side {target} from side {source}'s record "
                                        f"{o.key!r}, which gets this key"))
    return history


def written_back(db: sqlite3.Connection, direction: Direction, keys: Sequence[str]) -> None:
    """The new keys of ``keys`` reached the source: nothing is waiting any more."""
    db.executemany("DELETE FROM rekeys WHERE direction = ? AND key = ?",
                   [(direction, k) for k in keys])
