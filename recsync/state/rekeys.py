"""Records a target created under a key of its own (``ItemOutcome.new_key``): a SQLite
table with an INTEGER PRIMARY KEY given a CRM record whose placeholder key (``sf-<Id>``)
it cannot hold makes a new rowid. The store then keeps one link, under the new key, and
queues the write of that key back to the source (``rekeys`` row: the key the source holds
the record under until then); changes the source reports under the old key meanwhile are
dropped (the queued write carries the record's content).

The statements run on a state backend (``recsync.state.backend``, its markers).
"""

from __future__ import annotations

from collections.abc import Sequence

from recsync.messages import Direction, ItemOutcome, Side
from recsync.state.backend import HistoryRow, StateBackend


def pending(db: StateBackend) -> bool:
    return bool(db.x("SELECT EXISTS (SELECT 1 FROM rekeys{WH})").fetchone()[0])


def old_keys(db: StateBackend, keys: Sequence[str]) -> set[str]:
    """The ``keys`` that are a source's old key of a record waiting for its new one."""
    olds = {r[0] for r in db.x("SELECT old_key FROM rekeys{WH}")}
    return olds.intersection(keys)


def link_new_keys(
    db: StateBackend, outcomes: Sequence[ItemOutcome], target: Side, back: Direction,
    written_at: float, now: float,
) -> list[HistoryRow]:
    """Link each record under its new key (the target holds its content now, the source
    not yet) and remember the key the source holds it under; history rows to add."""
    source = "a" if target == "b" else "b"
    history: list[HistoryRow] = []
    for o in outcomes:
        new = o.new_key
        assert new is not None
        db.x("DELETE FROM links WHERE {W}key = ?", (o.key,))
        db.x(
            f"INSERT INTO links (key, {target}_hash, {target}_written, synced_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT ({K}key) DO UPDATE SET "
            f"{target}_hash = excluded.{target}_hash, "
            f"{target}_written = excluded.{target}_written, synced_at = excluded.synced_at, "
            f"{source}_hash = NULL, stale = 0",
            (new, o.hash, written_at, now))
        db.x("INSERT INTO rekeys (direction, key, old_key) VALUES (?, ?, ?) "
             "ON CONFLICT ({K}direction, key) DO UPDATE SET old_key = excluded.old_key",
             (back, new, o.key))
        history.append(HistoryRow(
            o.key, "rekeyed", f"created on side {target} as {new!r}; that key is "
                              f"written back to side {source}"))
        history.append(HistoryRow(
            new, "created", f"on side {target} from side {source}'s record "
                            f"{o.key!r}, which gets this key"))
    return history


def written_back(db: StateBackend, direction: Direction, keys: Sequence[str]) -> None:
    """The new keys of ``keys`` reached the source: nothing is waiting any more."""
    db.unqueue_rekeys(direction, keys)
