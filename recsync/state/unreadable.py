"""Records a side holds but that cannot be read (see ``messages.Unreadable``), kept as
failed queue rows (``op = 'unreadable'``, key = where they are: file:line, table rowid).

They are listed by `recsync failed` like any failed record and make `--once` exit 1. They
are replaced as the side is read: a listing keeps those it met again (the ones it did not
meet were fixed) and a page with ``unreadable_all`` names all there are. A retry drops
them and lists the side again (a still bad record comes back). A listing that met a
record that may hide a key takes nothing as deleted (``listing_hidden_<side>``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from recsync.messages import Direction, Side, Unreadable

OP = "unreadable"
_SEEN = "u"  # listing_seen.side prefix of the unreadable records a listing met


def hidden_meta(side: Side) -> str:
    return f"listing_hidden_{side}"


def start_listing(db: sqlite3.Connection, side: Side) -> None:
    db.execute("DELETE FROM listing_seen WHERE side = ?", (_SEEN + side,))
    db.execute("DELETE FROM meta WHERE name = ?", (hidden_meta(side),))


def listing_hid_keys(db: sqlite3.Connection, side: Side) -> bool:
    row = db.execute("SELECT value FROM meta WHERE name = ?", (hidden_meta(side),)).fetchone()
    return bool(row and row[0])


def end_listing(db: sqlite3.Connection, side: Side, direction: Direction) -> None:
    """The listing is done: the unreadable records it did not meet were fixed."""
    db.execute(
        "DELETE FROM queue WHERE direction = ? AND op = ? AND key NOT IN "
        "(SELECT key FROM listing_seen WHERE side = ?)", (direction, OP, _SEEN + side))
    start_listing(db, side)


def record(
    db: sqlite3.Connection, side: Side, direction: Direction, items: Sequence[Unreadable],
    replace: bool, observed: float, now: float, gen: int,
) -> list[Unreadable]:
    """Record ``items`` as failed rows (``replace``: and drop the side's others); the new
    ones are returned (the caller adds their history and counts them as failed)."""
    wanted = {u.where: u for u in items}
    existing = {r[0] for r in db.execute(
        "SELECT key FROM queue WHERE direction = ? AND op = ?", (direction, OP))}
    if replace:
        db.executemany("DELETE FROM queue WHERE direction = ? AND op = ? AND key = ?",
                       [(direction, OP, k) for k in existing - wanted.keys()])
    if not wanted:
        return []
    db.executemany("INSERT OR IGNORE INTO listing_seen VALUES (?, ?)",
                   [(_SEEN + side, k) for k in wanted])
    if any(u.hides_key for u in wanted.values()):
        db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, 1)",
                   (hidden_meta(side),))
    db.executemany(
        "INSERT INTO queue (direction, key, op, modified, observed, gen, state, attempts, "
        "next_at, last_error, enqueued_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, 'failed', 1, ?, ?, ?, ?) "
        "ON CONFLICT (direction, key) DO UPDATE SET op = excluded.op, content = NULL, "
        "hash = NULL, src_hash = NULL, state = 'failed', last_error = excluded.last_error",
        [(direction, u.where, OP, observed, observed, gen, now, u.reason, now, now)
         for u in wanted.values()])
    return [u for k, u in wanted.items() if k not in existing]


def drop(db: sqlite3.Connection, keys: Sequence[str] | None) -> list[tuple[Direction, str]]:
    """Drop the unreadable records among the failed ``keys`` (all when None); the
    (direction, key) of each (their sides must be listed again)."""
    rows = db.execute("SELECT direction, key FROM queue WHERE op = ?", (OP,)).fetchall()
    if keys is not None:
        wanted = set(keys)
        rows = [r for r in rows if r[1] in wanted]
    db.executemany("DELETE FROM queue WHERE direction = ? AND key = ?", rows)
    return [(r[0], r[1]) for r in rows]
