"""The control protocol: versioned msgpack messages between `recsync` and recsyncd.

Every request is ``Request(v, cmd)`` where ``cmd`` is one tagged command Struct (the tag is
its verb-noun name); every reply is ``Reply(v, ok, result | error)``. Events on the PUB
socket are ``Event(seq, ts, kind, data)`` with gap-free sequence numbers.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

API_VERSION = 1
MAX_FRAME = 1 << 20  # bytes; larger frames get a TOO_LARGE error

Side = Literal["a", "b"]
FaultCode = Literal[
    "BAD_REQUEST",  # not msgpack, wrong shape or types
    "UNKNOWN_COMMAND",
    "VERSION",  # an API version this daemon does not speak
    "TOO_LARGE",
    "NOT_FOUND",  # no such customer, pipeline, record, rule set or connector
    "INVALID",  # the request is well formed but its content is rejected (bad rules, ...)
    "UNAVAILABLE",  # the pipeline is not running
    "INTERNAL",
]


class Command(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="cmd"):
    """Base of every command; its tag is the command name."""


class StatusGet(Command, frozen=True, tag="status.get"):
    """One record's status by either side's id, across pipelines; None: every pipeline."""

    record_id: str | None = None


class FailedList(Command, frozen=True, tag="failed.list"):
    customer: str | None = None
    limit: int = 100


class RetryRecord(Command, frozen=True, tag="retry.record"):
    record_id: str


class RetryFailed(Command, frozen=True, tag="retry.failed"):
    customer: str | None = None


class SyncEvent(Command, frozen=True, tag="sync.event"):
    """A change submitted by a caller (the real-time path beside polling)."""

    customer: str
    side: Side
    op: Literal["create", "read", "update", "delete"]
    record: dict[str, Any]
    pipeline: str | None = None


class SyncNow(Command, frozen=True, tag="sync.now"):
    customer: str
    pipeline: str | None = None
    direction: Literal["a_to_b", "b_to_a"] | None = None
    full: bool = False


class ConfigOverride(Command, frozen=True, tag="config.override"):
    customer: str
    pipeline: str | None = None
    batch_size: int | None = None
    flush_interval: float | None = None
    poll_interval: float | None = None
    rate_limit_max: int | None = None
    rate_limit_window: float | None = None
    persist: bool = False


class RulesShow(Command, frozen=True, tag="rules.show"):
    name: str | None = None


class RulesSet(Command, frozen=True, tag="rules.set"):
    """Replace rules.toml with ``text`` (validated first; applied live; persisted)."""

    text: str


class RulesTest(Command, frozen=True, tag="rules.test"):
    name: str
    record: dict[str, Any]
    side: Side = "a"


class Reload(Command, frozen=True, tag="reload"):
    pass


class Pause(Command, frozen=True, tag="pause"):
    customer: str
    pipeline: str | None = None


class Resume(Command, frozen=True, tag="resume"):
    customer: str
    pipeline: str | None = None


class ConfirmDeletes(Command, frozen=True, tag="deletes.confirm"):
    """Let a pass held by the mass-delete guard go through once."""

    customer: str
    pipeline: str
    side: Side


class CrmsList(Command, frozen=True, tag="crms.list"):
    pass


class CrmsSchema(Command, frozen=True, tag="crms.schema"):
    name: str


class StatsGet(Command, frozen=True, tag="stats.get"):
    pass


class SnapshotGet(Command, frozen=True, tag="snapshot.get"):
    """Everything a live client needs, and the last event sequence number it includes."""


MockKind = Literal["salesforce", "outreach"]


class MockPush(Command, frozen=True, tag="mock.push"):
    """Insert or change a record in the daemon's embedded mock CRM, as a CRM user would."""

    kind: MockKind
    record: dict[str, Any]


class MockList(Command, frozen=True, tag="mock.list"):
    kind: MockKind


class MockFaults(Command, frozen=True, tag="mock.faults"):
    """Change the embedded mock's injected faults; unset fields keep their value."""

    kind: MockKind
    error_rate: float | None = None
    latency: float | None = None
    status_429_retry_after: float | None = None
    limit_after: int | None = None
    drop_rate: float | None = None


class Request(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    v: int
    cmd: (
        StatusGet | FailedList | RetryRecord | RetryFailed | SyncEvent | SyncNow
        | ConfigOverride | RulesShow | RulesSet | RulesTest | Reload | Pause | Resume
        | ConfirmDeletes | CrmsList | CrmsSchema | StatsGet | SnapshotGet | MockPush
        | MockList | MockFaults
    )


COMMANDS: tuple[type[Command], ...] = (
    StatusGet, FailedList, RetryRecord, RetryFailed, SyncEvent, SyncNow, ConfigOverride,
    RulesShow, RulesSet, RulesTest, Reload, Pause, Resume, ConfirmDeletes, CrmsList,
    CrmsSchema, StatsGet, SnapshotGet, MockPush, MockList, MockFaults,
)


class Fault(msgspec.Struct, frozen=True):
    code: FaultCode
    message: str


class Reply(msgspec.Struct, frozen=True):
    v: int
    ok: bool
    result: Any = None
    error: Fault | None = None


class Event(msgspec.Struct, frozen=True):
    seq: int
    ts: float
    kind: str  # stats, pipeline_state, record_failed, config_reloaded, config_rejected, ...
    data: dict[str, Any]


# ---- results (documented by `recsync schema`) ---------------------------------------------


class PipelineStatus(msgspec.Struct, frozen=True):
    pipeline: str
    customer: str
    name: str
    a: str  # connector names of the two sides
    b: str
    state: str  # running, paused, held, restarting, backoff, fatal, error, stopped
    error: str | None
    queued: int
    in_flight: int
    failed: int
    synced_a_to_b: int
    synced_b_to_a: int
    conflicts: int
    restarts: int
    cursors: dict[str, str | None] = {}  # side -> the committed read position
    # the node running the pipeline; None: the daemon that answers (one node today)
    node: str | None = None
    # effective values of the live-tunable settings, named as in `config.override`
    settings: dict[str, float] = {}


class HistoryEntry(msgspec.Struct, frozen=True):
    at: float
    event: str
    detail: str | None


class RecordStatus(msgspec.Struct, frozen=True):
    pipeline: str
    key: str
    state: str  # queued, failed, synced, unknown
    direction: str | None
    attempts: int
    last_error: str | None
    on_a: bool
    on_b: bool
    synced_at: float | None
    history: list[HistoryEntry]


class StatusResult(msgspec.Struct, frozen=True):
    pipelines: list[PipelineStatus] = []
    records: list[RecordStatus] = []
    config_error: str | None = None  # the last rejected reload, while it is not fixed


class FailedRecord(msgspec.Struct, frozen=True):
    pipeline: str
    key: str
    direction: str
    attempts: int
    last_error: str | None
    updated_at: float


class ReloadResult(msgspec.Struct, frozen=True):
    added: list[str]
    changed: list[str]
    removed: list[str]
    rules_changed: list[str]


class CountResult(msgspec.Struct, frozen=True):
    count: int
    pipelines: list[str] = []


class PipelineStats(msgspec.Struct, frozen=True):
    pipeline: str
    state: str
    queued: int
    in_flight: int
    synced: int
    failed: int
    rate: float  # records synced per second over the last interval
    circuit: dict[str, str]  # side -> closed/open/half_open
    rate_limit: dict[str, tuple[int, int]]  # side -> (used, max) in the window
    restarts: int


RESULT_TYPES: tuple[type[msgspec.Struct], ...] = (
    StatusResult, PipelineStatus, RecordStatus, FailedRecord, ReloadResult, CountResult,
    PipelineStats, Event,
)

request_decoder = msgspec.msgpack.Decoder(Request)
reply_decoder = msgspec.msgpack.Decoder(Reply)
event_decoder = msgspec.msgpack.Decoder(Event)
encoder = msgspec.msgpack.Encoder()


def ok(result: Any = None) -> Reply:
    return Reply(API_VERSION, True, result)


def fault(code: FaultCode, message: str) -> Reply:
    return Reply(API_VERSION, False, None, Fault(code, message))


def json_schema() -> dict[str, Any]:
    """The JSON Schema of every command, the envelopes and the results."""
    _, components = msgspec.json.schema_components(
        [Request, Reply, Event, *COMMANDS, *RESULT_TYPES],
        ref_template="#/$defs/{name}",
    )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"recsync control protocol v{API_VERSION}",
        "$defs": components,
    }
