"""Messages between the actors of a pipeline (in-process; never on the wire)."""

from __future__ import annotations

from typing import Any

import msgspec

from recsync.messages import (
    ChangePage,
    Direction,
    ItemOutcome,
    Prepared,
    Side,
    Unreadable,
    WorkItem,
)
from recsync.rules import RuleSet


class Poll(msgspec.Struct, frozen=True):
    """Tick or `sync now`: start a poll cycle if none is running. ``full`` re-reads all.

    ``wake``: the system said the side changed; one arriving during a cycle starts another
    cycle right after it, so the change is not left for the next tick.
    """

    full: bool = False
    wake: bool = False


# A listing of a local side (no request budget) is answered in units of at least this many
# records, whatever its page_size: each read still reads page_size rows, but the pages are
# handed on together (see ConnectorActor._read_on). Each unit costs the pipeline a round of
# messages and state transactions; at page_size 100 those were most of an initial load's
# time (100,000 rows: 5.0 s against 2.4 s at page_size 2000). 5,000 rather than 1,000 at
# the shipped page_size of 1,000 (10 paired runs each, 100,000 rows): SQLite -> SQLite
# 2.74 -> 2.53 s, SQLite -> CSV 2.80 -> 2.46 s, for 15 MiB more peak memory.
LISTING_UNIT = 5000


class ReadPage(msgspec.Struct, frozen=True):
    cursor: str | None
    limit: int
    observed: float


class Housekeep(msgspec.Struct, frozen=True):
    """To a connector whose side is not read: trim what reading would (no answer)."""


class PageRead(msgspec.Struct, frozen=True):
    """A connector's answer to ReadPage: a page, or an error, or a wait (``retry_at``)."""

    page: ChangePage | None
    observed: float
    error: str | None = None
    retry_at: float | None = None


class Prepare(msgspec.Struct, frozen=True):
    side: Side
    page: ChangePage
    observed: float
    event: bool = False  # submitted by `sync event`: no cursor, no poller to answer


class Enqueue(msgspec.Struct, frozen=True):
    side: Side
    changes: list[Prepared]
    cursor: str | None
    observed: float
    ruleset: RuleSet
    listing_start: bool
    listing_done: bool
    more: bool
    event: bool = False
    unreadable: list[Unreadable] = []  # see ChangePage
    unreadable_all: bool = False


class Committed(msgspec.Struct, frozen=True):
    """The queue durably took a page: the poller may read the next one."""

    cursor: str | None
    more: bool
    error: str | None = None
    hold: bool = False  # stop polling this side until an operator acts (mass-delete guard)


class Flush(msgspec.Struct, frozen=True):
    pass


class WriteBatch(msgspec.Struct, frozen=True):
    direction: Direction
    items: list[WorkItem]
    ruleset: RuleSet
    bulk: bool = False  # a backlog: write it as bulk jobs (Connector.write_bulk)
    # at most this many records per write call (0: all in one): a page passed to the
    # writer whole is still written in batches of batch_size
    chunk: int = 0
    # the target side's cursor as last committed when the batch was made: the queue's
    # state holds every change of the target up to it (see Connector.changed_since)...
    seen: str | None = None
    # ... but these records also have work queued the other way, which a change of the
    # target may have joined unresolved (it was queued while the record was being written
    # the other way): the writer compares them with the target whatever the cursor says
    check: frozenset[str] = frozenset()


class BatchDone(msgspec.Struct, frozen=True):
    direction: Direction
    outcomes: list[ItemOutcome]
    written_at: float
    # bulk jobs whose results these outcomes are: their journal rows go with the outcomes
    jobs: list[str] = []
    note: str | None = None  # history detail of the records written (e.g. the bulk job)


class Crash(msgspec.Struct, frozen=True):
    """Fault injection: the receiving actor raises, as a bug would."""

    reason: str = "injected crash"


class Ping(msgspec.Struct, frozen=True):
    pass


class ChildFailed(msgspec.Struct, frozen=True):
    pipeline: str
    incarnation: int
    actor: str
    error: str
    fatal: bool = False  # a configuration problem: restarting cannot help
    # the state storage is unavailable for now (disk full, I/O error, read-only folder):
    # wait and start again, however often, never fatal
    transient: bool = False


class RestartPipeline(msgspec.Struct, frozen=True):
    pipeline: str
    waited: bool = False  # after waiting for the state storage: not a crash restart


class Call(msgspec.Struct, frozen=True):
    """Run ``name`` with ``args`` on the actor (asks from outside the pipeline)."""

    name: str
    args: tuple[Any, ...] = ()
