"""The Connector ABC: what every system adapter (sqlite, file, salesforce, ...) provides."""

from __future__ import annotations

import abc
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import msgspec

from recsync.errors import ConnectorConfigError
from recsync.messages import Change, ChangePage, Record, WriteOp, WriteResult
from recsync.state.bulkjobs import BulkJournal


class ConnectorConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every connector's config Struct (its JSON Schema is the connector's schema).

    ``key`` names the field that identifies a record on that system.
    """

    key: str


class BulkWrite(msgspec.Struct, frozen=True):
    """What ``Connector.write_bulk`` did: one result per op, in order; the ids of the bulk
    jobs the results come from (the queue takes them off the journal with the outcomes);
    the history detail of the records written (``None``: nothing to say)."""

    results: list[WriteResult]
    jobs: list[str] = []
    note: str | None = None


class Connector(abc.ABC):
    """Adapter for one system on one side of a pipeline.

    A connector instance is used by a single thread (its connector actor). It is created
    with its validated config and the folder relative paths resolve against, then
    ``open()``-ed before any other call and ``close()``-d at the end.
    """

    name: ClassVar[str]
    Config: ClassVar[type[ConnectorConfig]]
    #: A local resource (a file or database we own) has no API budget: its side is not
    #: rate limited unless the side's own config sets ``rate_limit``.
    local: ClassVar[bool] = False
    # who writes through this instance (the pipeline id, set by its connector actor): a
    # system that can tag its writes with it lets the reader skip its own echoes
    origin: str = ""
    #: the connector writes a large backlog as bulk jobs (``write_bulk``): the queue
    #: leases up to ``bulk_batch_size`` records at once for it past ``bulk_threshold``
    bulk_writes: ClassVar[bool] = False
    #: called (from the connector's thread) with the bulk write's progress as it goes
    on_bulk_progress: Callable[[dict[str, Any]], None] | None = None
    #: the connector takes each API request it sends (describe, token, key lookups, each
    #: chunk of a write...) from its system's budget itself, through ``spend``; otherwise
    #: its actor takes one request per read or write call
    counts_requests: ClassVar[bool] = False
    #: ``spend(read)``, set by the connector actor: take one request from the budget
    #: before sending it (waits for room, or raises RateLimited); None: not throttled
    spend: Callable[[bool], None] | None = None

    def __init__(self, config: Any, base_dir: Path) -> None:
        """``config`` is the connector's Config Struct, or a mapping converted into one.

        Raises:
            ConnectorConfigError: the mapping does not fit the Config Struct.
        """
        if not isinstance(config, self.Config):
            try:
                config = msgspec.convert(config, self.Config)
            except msgspec.ValidationError as exc:
                raise ConnectorConfigError(f"Invalid {self.name} connector config: {exc}.") from exc
        self.config = config
        self.base_dir = base_dir

    @property
    @abc.abstractmethod
    def system_id(self) -> str:
        """Identifies the external system; pipelines on one system share its rate limit."""

    @abc.abstractmethod
    def open(self) -> None:
        """Connect and check the target is usable.

        Raises:
            ConnectorConfigError: the table, key column or file is missing or unusable.
            ConnectorError: the system cannot be reached right now.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and files."""

    def change_probe(self) -> Callable[[], object] | None:
        """A cheap function whose result changes whenever the side may have changed (a
        file's size and times, say), or None when the system offers none. It is called
        from the scheduler's thread before each poll; a poll is skipped while its result
        stays the same (and at least every ``FORCED_POLL_EVERY`` intervals it is not). It
        must be thread-safe and never raise."""
        return None

    def watch(self, wake: Callable[[], None]) -> None:  # noqa: B027 - optional hook
        """Call ``wake()`` (from any thread) whenever the system says it may have changed,
        so the side is read at once; polling stays the safety net. Optional."""

    @abc.abstractmethod
    def read_changes(self, cursor: str | None, limit: int) -> ChangePage:
        """Return up to ``limit`` changes after ``cursor`` (None: from the beginning).

        ``cursor`` is the last cursor the caller has durably committed.

        Raises:
            ConnectorError: transient failure; the same call may be retried.
            RateLimited: the system asked to slow down.
        """

    @abc.abstractmethod
    def fetch(self, keys: list[str]) -> dict[str, Record]:
        """Current records for ``keys`` (missing keys are absent from the result).

        Raises:
            ConnectorError: transient failure.
        """

    def changed_since(self, cursor: str, keys: list[str]) -> set[str] | None:
        """Of ``keys``, those that may have changed on this side, by anyone but this
        connector, after ``cursor`` (one this side's ``read_changes`` returned); None when
        the side cannot tell. Before writing, the records the queue knew as of ``cursor``
        are fetched and compared only when changed (``fetch`` is the slow part of an
        update: about a fifth of the CPU of 100k updates SQLite -> SQLite). A side that
        says a key has not changed must be sure of it: its change then goes unchecked.

        Raises:
            ConnectorError: transient failure.
        """
        return None

    def remote_budget(self) -> tuple[int, float | None] | None:
        """What the remote API said is left of its request allocation: (remaining,
        reset time as epoch seconds or None), or None when it says nothing. The rate
        limiter stops before the allocation runs out."""
        return None

    def housekeep(self) -> None:  # noqa: B027 - optional hook
        """Called now and then instead of ``read_changes`` on a side that is not read
        (the rules sync nothing from it): trim what reading would have trimmed."""

    def record_modified(self, record: Record) -> float | None:
        """The record's own last-modified time (epoch seconds), when the system keeps one.

        Last-writer-wins compares it; None means unknown (the time it was read is used).
        """
        return None

    def rekey(self, pairs: list[tuple[str, str]]) -> list[WriteResult]:
        """For each (old, new): the record held under key ``old`` gets key ``new`` (the
        other side created it under a key of its own); one result per pair, keyed by
        ``new``. A record not found under ``old`` succeeds (the write that follows puts it
        under ``new``). By default a connector cannot change keys.

        Raises:
            ConnectorError: transient failure.
        """
        return [
            WriteResult(new, f"The {self.name} connector cannot change the key of record "
                             f"{old!r} to {new!r}.", retryable=False)
            for old, new in pairs
        ]

    @abc.abstractmethod
    def write(self, ops: list[WriteOp]) -> list[WriteResult]:
        """Apply a batch of upserts and deletes; one result per op, in order.

        Deleting a record that does not exist succeeds. A record the system refuses gets a
        result with ``retryable=False`` and the rest of the batch still goes through.

        Raises:
            ConnectorError: the whole batch failed transiently (nothing or all may be applied;
                writes are idempotent so a retry is safe).
        """

    def write_bulk(self, ops: list[WriteOp], journal: BulkJournal, scope: str) -> BulkWrite:
        """Write a backlog (the queue leased it as one bulk batch): like ``write``, through
        the system's bulk interface. A job is noted in ``journal`` under ``scope`` (the
        direction) once it has an id and before its data goes out; jobs of ``scope`` found
        there (a run killed while they were in flight) are finished and their results used
        instead of writing the same records again. By default: ``write``.

        Raises:
            ConnectorError: transient failure (a job noted in the journal is found again).
        """
        return BulkWrite(self.write(ops))

    def list_records(self, position: str | None, limit: int) -> tuple[list[Change], str | None]:
        """One page of a full listing of the side's current records (for `recsync verify`):
        up to ``limit`` upserts after ``position`` (None: from the start), and the position
        of the next page (None: this was the last). It only reads: no cursor, change log or
        own-write state of the connector changes.

        Raises:
            ConnectorConfigError: this connector cannot list its records.
            ConnectorError: transient failure, or the listing was interrupted (start again).
        """
        raise ConnectorConfigError(
            f"The {self.name} connector cannot list its records, so `recsync verify` cannot "
            "check this side.")

    def unknown_fields(self, names: list[str], *, read: bool = True) -> list[str]:
        """Of ``names`` (the fields a rule set maps on this side), those the side has no
        column or field for, as far as it knows once open; [] when the schema is not
        known. ``read``: whether the rules sync from this side (a file's header grows with
        the records written to it, so it lacks a field only where it is read). A mapped
        name the side lacks would sync as an empty value without a word, so the pipeline
        refuses to start instead."""
        return []

    def field_hint(self, name: str) -> str:
        """For a name ``unknown_fields`` returned: what the side has that is close to it
        (e.g. ``did you mean 'Name'?``), or ""."""
        return ""

    def count_records(self) -> int | None:
        """How many records a full listing holds, when the system says so cheaply (None:
        unknown). Only shown as the total of `recsync verify`'s progress."""
        return None
