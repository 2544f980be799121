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
# `recsync status` exits non-zero while a pipeline is in one of these (see the README)
BAD_STATES = ("error", "held", "fatal")

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
    "NO_OWNER",  # [cluster]: no live node owns the pipeline now (no lease)
    "NOT_OWNER",  # [cluster]: a forwarded command reached a node that no longer owns it
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
    pipeline: str | None = None  # None: every pipeline of the customer
    side: Side | None = None  # None: every held side


class CrmsList(Command, frozen=True, tag="crms.list"):
    pass


class CrmsSchema(Command, frozen=True, tag="crms.schema"):
    name: str


class StatsGet(Command, frozen=True, tag="stats.get"):
    pass


class SnapshotGet(Command, frozen=True, tag="snapshot.get"):
    """Everything a live client needs, and the last event sequence number it includes."""


class ConfigShow(Command, frozen=True, tag="config.show"):
    """The effective settings of pipelines, each value with where it came from."""

    customer: str | None = None
    pipeline: str | None = None


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
    clear: bool = False  # first turn every fault off


class VerifyRun(Command, frozen=True, tag="verify.run"):
    """Compare both sides of pipelines under their rules; ``repair`` queues the syncs that
    make them agree. Progress goes out as ``verify_progress`` events."""

    customer: str | None = None  # None: every pipeline
    pipeline: str | None = None
    repair: bool = False
    limit: int = 10  # keys shown per category


class Route(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """[cluster]: a command forwarded by node ``via`` to the owner of ``pipelines``; the
    owner acts on those pipelines only, and forwards nothing further."""

    via: str
    pipelines: list[str]


class Request(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    v: int
    cmd: (
        StatusGet | FailedList | RetryRecord | RetryFailed | SyncEvent | SyncNow
        | ConfigOverride | RulesShow | RulesSet | RulesTest | Reload | Pause | Resume
        | ConfirmDeletes | CrmsList | CrmsSchema | StatsGet | SnapshotGet | MockPush
        | MockList | MockFaults | VerifyRun | ConfigShow
    )
    route: Route | None = None  # set by a node forwarding the command to the owner


COMMANDS: tuple[type[Command], ...] = (
    StatusGet, FailedList, RetryRecord, RetryFailed, SyncEvent, SyncNow, ConfigOverride,
    RulesShow, RulesSet, RulesTest, Reload, Pause, Resume, ConfirmDeletes, CrmsList,
    CrmsSchema, StatsGet, SnapshotGet, MockPush, MockList, MockFaults, VerifyRun, ConfigShow,
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
    kind: str  # one of EVENT_KINDS
    data: dict[str, Any]
    # [cluster]: the node that published it and its boot (seq counts per node and boot);
    # events of several nodes merge in the order (ts, node, boot, seq): see events_order
    node: str | None = None
    boot: str | None = None


def events_order(event: Event) -> tuple[float, str, str, int]:
    """The stable order of events merged from several nodes: time, then node, boot and
    sequence number (a node's own events keep their sequence order at equal times)."""
    return (event.ts, event.node or "", event.boot or "", event.seq)


# [cluster]: each node's relay publishes one every 0.25 s, ``{peers: [names]}``, repeating
# its last seq; a promise that it publishes nothing older (recsync.eventmerge). Subscription
# consumes them: recv() never returns one. Not in EVENT_KINDS: nothing to follow
TICK_KIND = "tick"


# ---- results (documented by `recsync schema`) ---------------------------------------------


class BulkJobStatus(msgspec.Struct, frozen=True):
    """The last bulk write job of a side (Salesforce Bulk API 2.0 ingest)."""

    job: str
    operation: str  # upsert, delete
    state: str  # Open, UploadComplete, InProgress, JobComplete, Failed, Aborted
    processed: int  # rows Salesforce has processed (failed ones included)
    failed: int
    total: int  # rows of the job


class SideStatus(msgspec.Struct, frozen=True):
    """What holds up one side of a pipeline, if anything (wall-clock times)."""

    circuit: str = "closed"  # closed, open, half_open (the breaker of the side's system)
    circuit_retry_at: float | None = None  # while open: when the next probe may go out
    rate_limited_until: float | None = None  # a Retry-After, a full window, a reserve
    held_delete: str | None = None  # why the mass-delete guard holds the side's polling
    last_error: str | None = None  # the last error met reading or writing the side
    last_error_at: float | None = None
    bulk: BulkJobStatus | None = None  # the side's last bulk write job
    # [cluster] redis: how the side's API budget is kept (shared, or this node's fallback)
    budget: str | None = None


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
    # what a side warned about lately ("side a: ..."): a rebuilt table, a reset change log
    warnings: list[str] = []
    sides: dict[str, SideStatus] = {}  # side -> circuit, rate-limit wait, held, last error
    # the node running the pipeline; None: the daemon that answers (one node today)
    node: str | None = None
    # effective values of the live-tunable settings, named as in `config.override`
    settings: dict[str, float] = {}


class HistoryEntry(msgspec.Struct, frozen=True):
    at: float
    event: str  # create, update, delete (a sync), conflict, retry, failed, manual_retry
    detail: str | None
    direction: str | None = None  # a_to_b or b_to_a


class RecordStatus(msgspec.Struct, frozen=True):
    pipeline: str
    key: str
    state: str  # queued, failed, synced, deleted, unknown
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
    # [cluster]: a sentence per live node whose config differs from the cluster's (it owns
    # no pipeline until its customer_settings.toml + rules.toml match)
    config_mismatch: list[str] = []


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
    sides: dict[str, SideStatus] = {}


class SettingValue(msgspec.Struct, frozen=True):
    value: Any
    source: str  # default, defaults, customer, pipeline, override
    where: str  # e.g. "customer_settings.toml [customers.acme]", "built-in default"


class PipelineSettings(msgspec.Struct, frozen=True):
    """`config show`: one pipeline's effective settings and side options (secrets masked)."""

    pipeline: str
    customer: str
    name: str
    rules: str
    settings: dict[str, SettingValue]  # nested tables flattened: "rate_limit.max_requests"
    sides: dict[str, dict[str, SettingValue]]  # side -> "connector" and its options


class VerifyCategory(msgspec.Struct, frozen=True):
    count: int
    keys: list[str]  # the first keys, in key order


class VerifyRepair(msgspec.Struct, frozen=True):
    queued: dict[str, int]  # direction -> syncs queued
    skipped: int  # records with other work queued meanwhile: left to it
    held: str | None  # the mass-delete guard held the repair: why, and what to do


class VerifyResult(msgspec.Struct, frozen=True):
    """One pipeline's comparison. ``missing_a``: linked records side A no longer holds;
    ``extra_a``: records only side A holds, never linked; likewise for B; ``different``:
    on both sides with different content. ``pending``: records with queued work (not
    compared); ``ignored``: differences the rules leave alone (filters, directions).
    ``error``: why this pipeline could not be verified (its counts are then zero), when
    others in the same command were."""

    pipeline: str
    agree: bool
    a_records: int
    b_records: int
    missing_a: VerifyCategory
    missing_b: VerifyCategory
    extra_a: VerifyCategory
    extra_b: VerifyCategory
    different: VerifyCategory
    pending: int
    ignored: int
    seconds: float
    repair: VerifyRepair | None = None
    error: str | None = None


RESULT_TYPES: tuple[type[msgspec.Struct], ...] = (
    StatusResult, PipelineStatus, RecordStatus, FailedRecord, ReloadResult, CountResult,
    PipelineStats, Event, VerifyResult, SideStatus, SettingValue, PipelineSettings,
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


# Every kind of event recsyncd publishes, and when (`recsync events --kind` takes these):
EVENT_KINDS: tuple[str, ...] = (
    "stats",  # every second: {pipelines: [PipelineStats]}
    "pipeline_state",  # a pipeline started, stopped, paused, restarted, backed off, failed
    "actor_failed",  # an actor of a pipeline crashed: {pipeline, actor, error, ...}
    "record_failed",  # a record gave up after max_attempts: {pipeline, key, direction, error}
    "config_reloaded",  # the TOML files were reloaded: ReloadResult
    "config_rejected",  # a reload was refused: {error}; the running configuration stays
    "sync_warning",  # a side needs attention (a rebuilt table, a reset change log):
    #                  {pipeline, side, at, warning}
    "verify_progress",  # `recsync verify` under way: {pipeline, phase, side, done, total}
)
# ... and with [cluster]:
CLUSTER_EVENT_KINDS: tuple[str, ...] = (
    "lease_acquired",  # [cluster]: a node took a pipeline's lease: {pipeline, node, token}
    "lease_released",  # [cluster]: a node handed a pipeline over: {pipeline, node}
    "lease_lost",  # [cluster]: a node lost a lease and stopped the pipeline: {..., error}
    "config_mismatch",  # [cluster]: a node's config differs; it owns nothing: {node, error}
    "config_matches",  # [cluster]: its config matches again; it takes a share: {node}
)
