"""What dropping written items costs does not grow with the queue behind them.

Counted in SQLite virtual-machine steps (a progress handler), not in time: the same on
any machine.
"""

from __future__ import annotations

from pathlib import Path

from recsync.state.backend import Done, NewItem, SqliteBackend

STEPS = 100  # the progress handler is called every this many VM instructions


def steps_to_unqueue(path: Path, queued: int) -> int:
    """VM steps of dropping 50 written items from a queue of ``queued`` items."""
    backend = SqliteBackend(path)
    try:
        with backend.transaction():
            backend.put_queue([NewItem("a_to_b", f"k{i}", "upsert", b"x", "h", "h", 1.0, 1.0,
                                       i) for i in range(queued)], 1.0)
        calls = 0

        def count() -> int:
            nonlocal calls
            calls += 1
            return 0

        backend.db.set_progress_handler(count, STEPS)
        with backend.transaction():
            backend.unqueue_done([Done("a_to_b", f"k{i}", i) for i in range(0, 100, 2)])
        backend.db.set_progress_handler(None, 0)
        left = backend.db.execute("SELECT COUNT(*) FROM queue").fetchone()[0]
        assert left == queued - 50  # the 50 written ones are gone, the rest stay
        return calls
    finally:
        backend.close()


def test_unqueuing_a_batch_costs_the_same_behind_a_long_queue(tmp_path: Path) -> None:
    short = steps_to_unqueue(tmp_path / "short.sqlite", 100)
    long = steps_to_unqueue(tmp_path / "long.sqlite", 20_000)
    # a scan of the queue would cost 200x more behind 20,000 items than behind 100
    assert long < 2 * short + 20, (short, long)


def test_an_item_requeued_with_another_gen_stays(tmp_path: Path) -> None:
    backend = SqliteBackend(tmp_path / "s.sqlite")
    try:
        with backend.transaction():
            backend.put_queue([NewItem("a_to_b", "k", "upsert", b"x", "h", "h", 1.0, 1.0, 2)],
                              1.0)
            backend.unqueue_done([Done("a_to_b", "k", 1)])  # the gen written was 1
        assert backend.db.execute("SELECT gen FROM queue").fetchall() == [(2,)]
    finally:
        backend.close()
