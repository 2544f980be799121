"""Demo data: the `users` table the default configuration syncs."""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path

USERS_TABLE = """
CREATE TABLE IF NOT EXISTS users (
    record_id INTEGER PRIMARY KEY,
    full_name TEXT NOT NULL,
    email_address TEXT,
    status TEXT NOT NULL DEFAULT 'active',
    updated_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
)
"""
FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Tim"]
LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson",
        "Perlman", "Berners-Lee"]
STATUSES = ["active", "active", "active", "pending", "inactive"]


def seed(path: Path, count: int = 50, *, start_id: int = 1, seed_value: int = 7) -> int:
    """Create the users table if needed and insert ``count`` users from ``start_id`` on.

    Rows that exist already are left alone; returns the number of rows inserted.
    """
    return len(seed_ids(path, count, start_id=start_id, seed_value=seed_value)[0])


def seed_ids(
    path: Path, count: int = 50, *, start_id: int = 1, seed_value: int = 7
) -> tuple[list[int], list[int]]:
    """Like :func:`seed`; returns the record_ids inserted and those already there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed_value + start_id)
    now = time.time()
    rows = []
    for rid in range(start_id, start_id + count):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        rows.append((rid, f"{first} {last}", f"{first}.{last}{rid}@example.com".lower(),
                     rng.choice(STATUSES), now))
    with sqlite3.connect(path) as conn:
        conn.execute(USERS_TABLE)
        existing = [r[0] for r in conn.execute(
            "SELECT record_id FROM users WHERE record_id BETWEEN ? AND ? ORDER BY record_id",
            (start_id, start_id + count - 1))]
        conn.executemany(
            "INSERT OR IGNORE INTO users (record_id, full_name, email_address, status, "
            "updated_at) VALUES (?, ?, ?, ?, ?)", rows)
    conn.close()
    there = set(existing)
    inserted = [rid for rid in range(start_id, start_id + count) if rid not in there]
    return inserted, existing
