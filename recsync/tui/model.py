"""The dashboard's view of the daemon: plain data, no textual, no sockets.

A ``Model`` is rebuilt from a ``snapshot.get`` result and then kept current by events
(``stats``, ``pipeline_state``, ``actor_failed``, ``config_reloaded``, ``config_rejected``).
It lives on the UI thread; the link worker only hands it decoded data.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

HISTORY = 180  # stats samples kept per pipeline (one a second: three minutes)
EVENTS = 100  # recent events kept per pipeline
SPARK = "▁▂▃▄▅▆▇█"
NA = "n/a"
LOCAL = "local"  # the owner node when the status names none (a single daemon)


def sparkline(values: list[float], width: int = 12) -> str:
    """The last ``width`` values as block characters, scaled to their maximum."""
    tail = values[-width:]
    if not tail:
        return ""
    top = max(tail)
    if top <= 0:
        return SPARK[0] * len(tail)
    return "".join(SPARK[min(len(SPARK) - 1, int(v / top * (len(SPARK) - 1)))] for v in tail)


def clock(ts: float | None) -> str:
    """A timestamp as UTC wall-clock text (deterministic across machines)."""
    if ts is None:
        return NA
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


STATUS_FIELDS = (  # the PipelineStatus fields the dashboard knows by name
    "pipeline",
    "customer",
    "name",
    "a",
    "b",
    "state",
    "error",
    "queued",
    "in_flight",
    "failed",
    "synced_a_to_b",
    "synced_b_to_a",
    "conflicts",
    "restarts",
    "cursors",
    "node",
    "settings",
    "sides",
)


@dataclass
class PipelineView:
    pipeline: str
    customer: str = ""
    name: str = ""
    a: str = NA
    b: str = NA
    state: str = "unknown"
    error: str | None = None
    queued: int = 0
    in_flight: int = 0
    synced: int = 0
    synced_a_to_b: int = 0
    synced_b_to_a: int = 0
    failed: int = 0
    conflicts: int = 0
    rate: float = 0.0
    circuit: dict[str, str] = field(default_factory=dict)
    rate_limit: dict[str, list[int]] = field(default_factory=dict)
    restarts: int = 0
    has_stats: bool = False
    rates: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    events: deque[tuple[float, str, str]] = field(default_factory=lambda: deque(maxlen=EVENTS))
    actors: dict[str, int] = field(default_factory=dict)  # actor -> failures seen
    cursors: dict[str, str | None] = field(default_factory=dict)
    # side -> circuit, circuit_retry_at, rate_limited_until, held_delete, last_error(_at)
    sides: dict[str, dict[str, Any]] = field(default_factory=dict)
    node: str | None = None  # the owner node; None: the daemon the dashboard talks to
    settings: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def node_text(self) -> str:
        return self.node or LOCAL

    @property
    def systems(self) -> str:
        return f"{self.a}↔{self.b}"

    @property
    def circuit_text(self) -> str:
        if not self.has_stats or not self.circuit:
            return NA
        return " ".join(f"{side}:{state}" for side, state in sorted(self.circuit.items()))

    @property
    def rate_limit_text(self) -> str:
        if not self.has_stats or not self.rate_limit:
            return NA
        parts = []
        for side, pair in sorted(self.rate_limit.items()):
            used, top = int(pair[0]), int(pair[1])
            parts.append(f"{side}:{round(100 * used / top) if top else 0}%")
        return " ".join(parts)

    def apply_status(self, data: dict[str, Any]) -> None:
        for key in STATUS_FIELDS[1:]:
            if key in data:
                setattr(self, key, data[key])
        self.synced = int(data.get("synced_a_to_b", 0)) + int(data.get("synced_b_to_a", 0))
        # fields this dashboard does not know yet (a newer daemon): shown as they are
        self.extra = {k: v for k, v in data.items() if k not in STATUS_FIELDS}
        self._apply_sides(data)

    def _apply_sides(self, data: dict[str, Any]) -> None:
        sides = data.get("sides")
        if isinstance(sides, dict):
            self.sides = {str(k): dict(v) for k, v in sides.items() if isinstance(v, dict)}

    def apply_stats(self, data: dict[str, Any], sample: bool = True) -> None:
        self.has_stats = True
        for key in ("state", "queued", "in_flight", "synced", "failed", "rate", "restarts"):
            if key in data:
                setattr(self, key, data[key])
        self.circuit = dict(data.get("circuit") or {})
        self.rate_limit = {k: list(v) for k, v in (data.get("rate_limit") or {}).items()}
        self._apply_sides(data)
        if sample:
            self.rates.append(float(data.get("rate", 0.0)))


@dataclass
class Model:
    endpoint: str = ""
    connected: bool = False
    connection_note: str = "connecting"
    seq: int = 0
    snapshots: int = 0
    pipelines: dict[str, PipelineView] = field(default_factory=dict)
    failed: list[dict[str, Any]] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)
    last_reload: dict[str, Any] | None = None
    config_error: str | None = None
    events: deque[tuple[float, str, str]] = field(default_factory=lambda: deque(maxlen=EVENTS))
    version: int = 0  # bumped on every change, so views can skip redundant refreshes

    def load_snapshot(self, snap: dict[str, Any]) -> None:
        """Replace the state by a fresh snapshot (keeping each pipeline's history)."""
        old = self.pipelines
        self.pipelines = {}
        self.seq = int(snap.get("seq") or 0)
        self.endpoint = snap.get("endpoint") or self.endpoint
        status = snap.get("status") or {}
        for row in status.get("pipelines") or []:
            view = old.get(row["pipeline"]) or PipelineView(row["pipeline"])
            view.apply_status(row)
            self.pipelines[view.pipeline] = view
        for row in snap.get("stats") or []:
            known = self.pipelines.get(row["pipeline"])
            if known is not None:
                known.apply_stats(row, sample=not known.rates)
        self.failed = list(snap.get("failed") or [])
        self.rules = list(snap.get("rules") or [])
        self.last_reload = snap.get("last_reload")
        self.config_error = status.get("config_error")
        self.snapshots += 1
        self.version += 1

    def apply_status(self, status: dict[str, Any]) -> None:
        """A ``status.get`` answer: the counts, cursors and errors of every pipeline."""
        for row in status.get("pipelines") or []:
            view = self.pipelines.get(row.get("pipeline", ""))
            if view is not None:
                view.apply_status(row)
        if "config_error" in status:
            self.config_error = status["config_error"]
        self.version += 1

    def apply_event(self, event: dict[str, Any]) -> None:
        """One event (``seq``, ``ts``, ``kind``, ``data``)."""
        kind, data, ts = event["kind"], event.get("data") or {}, float(event.get("ts") or 0)
        self.seq = max(self.seq, int(event.get("seq") or 0))
        self.version += 1
        node = event.get("node")  # [cluster]: the node that published it
        if kind == "stats":
            for row in data.get("pipelines") or []:
                view = self.pipelines.get(row.get("pipeline", ""))
                # a pipeline's figures come from its owner (it moved: from the new one)
                if view is not None and (node is None or view.node in (None, node)):
                    view.apply_stats(row)
            return
        if kind == "lease_acquired" and data.get("pipeline") in self.pipelines:
            self.pipelines[data["pipeline"]].node = data.get("node")
        pid = data.get("pipeline")
        view = self.pipelines.get(pid) if isinstance(pid, str) else None
        summary = describe(kind, data)
        self.events.append((ts, kind, f"{pid}: {summary}" if pid else summary))
        if view is None:
            if kind == "config_rejected":
                self.config_error = data.get("error")
                self.last_reload = {"ok": False, "error": data.get("error"), "at": ts}
            elif kind == "config_reloaded":
                self.config_error = None
                self.last_reload = {"ok": True, "at": ts, **data}
            return
        view.events.append((ts, kind, summary))
        if "state" in data:
            view.state = data["state"]
        if "error" in data:
            view.error = data["error"]
        if "restarts" in data:
            view.restarts = int(data["restarts"])
        if kind == "actor_failed":
            actor = str(data.get("actor") or "?")
            view.actors[actor] = view.actors.get(actor, 0) + 1

    def customers(self) -> list[str]:
        return sorted({v.customer for v in self.pipelines.values() if v.customer})


def describe(kind: str, data: dict[str, Any]) -> str:
    """One line about an event."""
    if kind == "pipeline_state":
        text = f"state {data.get('state')}, restarts {data.get('restarts', 0)}"
        return text + (f" ({data['error']})" if data.get("error") else "")
    if kind == "actor_failed":
        return f"actor {data.get('actor')} failed: {data.get('error')}"
    if kind == "config_rejected":
        return f"configuration rejected: {data.get('error')}"
    if kind == "config_reloaded":
        return "configuration reloaded: " + reload_summary(data)
    items = sorted(data.items())
    return ", ".join(f"{k} {plain(v)}" for k, v in items if k != "pipeline") or kind


def reload_summary(data: dict[str, Any]) -> str:
    parts = [
        f"{key} {', '.join(data.get(key) or []) or '-'}"
        for key in ("added", "changed", "removed", "rules_changed")
    ]
    return "; ".join(parts)


def plain(value: Any) -> str:
    """A value as a user writes it: ``active, pending``, ``in active, pending``, ``true``,
    ``60``; never a Python repr (no brackets, braces or quotes)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if isinstance(value, dict):
        return "; ".join(f"{k} {plain(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple | set | frozenset):
        return ", ".join(plain(v) for v in value) or "-"
    return str(value)
