"""Records a side holds but that cannot be read (see ``messages.Unreadable``), kept as
failed queue rows (``op = 'unreadable'``, key = where they are: file:line, table rowid).

They are listed by `recsync failed` like any failed record and make `--once` exit 1. They
are replaced as the side is read: a listing keeps those it met again (the ones it did not
meet were fixed) and a page with ``unreadable_all`` names all there are. A retry drops
them and lists the side again (a still bad record comes back). A listing that met a
record that may hide a key takes nothing as deleted (``listing_hidden_<side>``).

The statements run on a state backend (``recsync.state.backend``, its markers).
"""

from __future__ import annotations

from collections.abc import Sequence

from recsync.messages import Direction, Side, Unreadable
from recsync.state.backend import StateBackend

OP = "unreadable"
_SEEN = "u"  # listing_seen.side prefix of the unreadable records a listing met


def hidden_meta(side: Side) -> str:
    return f"listing_hidden_{side}"


def start_listing(db: StateBackend, side: Side) -> None:
    db.clear_listing(_SEEN + side)
    db.delete_meta(hidden_meta(side))


def listing_hid_keys(db: StateBackend, side: Side) -> bool:
    return bool(db.meta(hidden_meta(side)))


def end_listing(db: StateBackend, side: Side, direction: Direction) -> None:
    """The listing is done: the unreadable records it did not meet were fixed."""
    db.x("DELETE FROM queue WHERE {W}direction = ? AND op = ? AND key NOT IN "
         "(SELECT key FROM listing_seen WHERE {W}side = ?)", (direction, OP, _SEEN + side))
    start_listing(db, side)


def record(
    db: StateBackend, side: Side, direction: Direction, items: Sequence[Unreadable],
    replace: bool, observed: float, now: float, gen: int,
) -> list[Unreadable]:
    """Record ``items`` as failed rows (``replace``: and drop the side's others); the new
    ones are returned (the caller adds their history and counts them as failed)."""
    wanted = {u.where: u for u in items}
    existing = {r[0] for r in db.x(
        "SELECT key FROM queue WHERE {W}direction = ? AND op = ?", (direction, OP))}
    if replace:
        db.xm("DELETE FROM queue WHERE {W}direction = ? AND op = ? AND key = ?",
              [(direction, OP, k) for k in existing - wanted.keys()])
    if not wanted:
        return []
    db.add_listing_seen(_SEEN + side, wanted)
    if any(u.hides_key for u in wanted.values()):
        db.set_meta(hidden_meta(side), 1)
    db.xm(
        "INSERT INTO queue (direction, key, op, modified, observed, gen, state, attempts, "
        "next_at, last_error, enqueued_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, 'failed', 1, ?, ?, ?, ?) "
        "ON CONFLICT ({K}direction, key) DO UPDATE SET op = excluded.op, content = NULL, "
        "hash = NULL, src_hash = NULL, state = 'failed', last_error = excluded.last_error",
        [(direction, u.where, OP, observed, observed, gen, now, u.reason, now, now)
         for u in wanted.values()])
    return [u for k, u in wanted.items() if k not in existing]


def drop(db: StateBackend, keys: Sequence[str] | None) -> list[tuple[Direction, str]]:
    """Drop the unreadable records among the failed ``keys`` (all when None); the
    (direction, key) of each (their sides must be listed again)."""
    rows = [(r[0], r[1]) for r in db.x("SELECT direction, key FROM queue WHERE {W}op = ?",
                                       (OP,))]
    if keys is not None:
        wanted = set(keys)
        rows = [r for r in rows if r[1] in wanted]
    db.unqueue(rows)
    return rows
