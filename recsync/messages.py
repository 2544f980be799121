"""msgspec Structs exchanged between actors and returned by connectors.

Records are plain ``dict[str, Any]`` of one system's field names. Keys are compared by
their text form across systems (SQLite's integer 303 and a CSV's "303" are one record).

The per-record Structs are ``gc=False``: a page of thousands of them would otherwise feed
the cyclic garbage collector, which then walks them again and again while they travel
the pipeline. They hold records of plain values and take part in no reference cycle.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

Side = Literal["a", "b"]
Direction = Literal["a_to_b", "b_to_a"]
ChangeOp = Literal["upsert", "delete"]
WriteKind = Literal["upsert", "delete"]
Record = dict[str, Any]


def other(side: Side) -> Side:
    return "b" if side == "a" else "a"


def direction_from(side: Side) -> Direction:
    """The direction whose source is ``side``."""
    return "a_to_b" if side == "a" else "b_to_a"


def source_of(direction: Direction) -> Side:
    return "a" if direction == "a_to_b" else "b"


def target_of(direction: Direction) -> Side:
    return "b" if direction == "a_to_b" else "a"


def opposite_of(direction: Direction) -> Direction:
    return "b_to_a" if direction == "a_to_b" else "a_to_b"


def key_text(value: Any) -> str:
    """The text form of a record key, the same for 303, "303" and 303.0."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


class Change(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One record as seen on one side: its current fields, or ``None`` when deleted.

    ``modified_at`` is the record's own timestamp (epoch seconds) when the system has one,
    else when the change was observed; last-writer-wins compares it.
    """

    key: str
    op: ChangeOp
    fields: Record | None
    modified_at: float


class Unreadable(msgspec.Struct, frozen=True, array_like=True):
    """A record a side holds that cannot be read (a line that is not JSON, a row with no
    key): a failed record named ``where`` (file:line, table rowid) until it is fixed.

    ``hides_key``: the record may be a linked one whose key could not be read, so a listing
    that met it must not take the records it did not list as deleted.
    """

    where: str
    reason: str
    hides_key: bool = True


class ChangePage(msgspec.Struct, frozen=True):
    """A page of changes read from one side, and the cursor that is safe after it.

    When ``listing`` is set the page is part of a full listing of the side; on the page
    with ``listing_done`` every linked record not listed is taken as deleted.

    ``unreadable``: records met on the page that cannot be read; with ``unreadable_all``
    they are every unreadable record of the side (the ones recorded before and not in the
    list were fixed). ``warning``: something an operator must know (shown in status).
    """

    changes: list[Change]
    cursor: str | None
    more: bool = False
    listing: bool = False
    listing_start: bool = False
    listing_done: bool = False
    unreadable: list[Unreadable] = []
    unreadable_all: bool = False
    warning: str | None = None


class WriteOp(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One write to a target: upsert ``fields`` (target field names) or delete ``key``."""

    key: str
    kind: WriteKind
    fields: Record | None


class WriteResult(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """Outcome of one WriteOp. ``error`` is None on success.

    ``retryable`` tells a transient failure (retry with backoff) from a rejection (failed).
    ``retry_after`` (seconds) says the target asked to wait: the op was not attempted and
    is tried again then, without counting an attempt.
    """

    key: str
    error: str | None = None
    retryable: bool = False
    retry_after: float | None = None
    # the target created the record under a key of its own (the one given was not a
    # key it can hold, e.g. a CRM's placeholder for an INTEGER PRIMARY KEY)
    new_key: str | None = None


class Prepared(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A change after the rules: content in side-A field names, its hash, filter verdict."""

    key: str
    op: ChangeOp
    content: Record | None
    hash: str | None
    passes: bool
    modified: float


class WorkItem(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A leased queue item: write ``content`` (side-A names) or delete ``key`` on the target.

    ``expected_hash`` is the target's content hash as last known (None: not on the target),
    so the writer can see a change on the target that no poll has reported yet (a conflict).
    """

    key: str
    op: ChangeOp
    content: Record | None
    hash: str | None
    modified: float
    gen: int
    attempts: int
    expected_hash: str | None
    src_hash: str | None = None
    # the record is held on the target under this key: change it to ``key`` (the key the
    # other side made for it), then write
    rekey_from: str | None = None


ItemStatus = Literal["synced", "retry", "rejected", "deferred", "superseded"]


class ItemOutcome(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """What became of one WorkItem.

    - synced: written (``hash`` is what the target now holds);
    - retry: transient failure, counts an attempt; rejected: the target refused it for good;
    - deferred: not attempted (circuit open, rate limited), retry at ``retry_at``;
    - superseded: a conflict found at write time; ``content``/``hash`` is what must end up on
      the source side (the target's content, or a merge), ``winner`` says who won.
    """

    key: str
    gen: int
    status: ItemStatus
    error: str | None = None
    retry_at: float | None = None
    content: Record | None = None
    hash: str | None = None
    winner: str | None = None
    src_hash: str | None = None  # the source's content hash, when the source holds it
    new_key: str | None = None  # the target made its own key for the record (WriteResult)
