"""A pipeline's durable state: the store's decisions over a backend (SQLite or PostgreSQL)."""

from recsync.state.backend import SqlBackend, SqliteBackend, StateBackend
from recsync.state.store import Store

__all__ = ["SqlBackend", "SqliteBackend", "StateBackend", "Store"]
