"""Pipeline: the actors of one customer pipeline, started in order and stopped in reverse."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pykka

from recsync.actors.base import EventSink, FailureSink, no_events
from recsync.actors.connector import ConnectorActor
from recsync.actors.health import SideHealth
from recsync.actors.poller import PollerActor
from recsync.actors.protocol import Call, ChildFailed, Flush, Ping, Poll, Prepare
from recsync.actors.queue import QueueActor
from recsync.actors.ratelimit import RateLimiterActor
from recsync.actors.rules import RulesActor
from recsync.actors.scheduler import Scheduler, TimerHandle
from recsync.actors.systems import Systems
from recsync.clock import Clock
from recsync.config import PipelineConfig, RateLimitSettings, Settings, SideConfig
from recsync.connectors import get_connector_class
from recsync.errors import RecsyncError, StateUnavailable
from recsync.messages import ChangePage, Side
from recsync.rules import RuleSet
from recsync.state.access import StateAccess
from recsync.state.paths import state_file_name

log = logging.getLogger(__name__)
START_ORDER = ("rate_limiter", "connector_a", "connector_b", "queue", "rules", "poller_a",
               "poller_b")
ASK_TIMEOUT = 10.0


class PipelineStartError(RecsyncError):
    """A pipeline's actors could not all start; ``fatal`` when a restart cannot help,
    ``transient`` when its state storage is unavailable for now (wait, then start again)."""

    def __init__(self, message: str, fatal: bool = False, transient: bool = False) -> None:
        super().__init__(message)
        self.fatal = fatal
        self.transient = transient


class Peers:
    """The current ActorRefs of one pipeline incarnation, looked up by role."""

    def __init__(self) -> None:
        self.refs: dict[str, pykka.ActorRef[Any]] = {}

    def ref(self, role: str) -> pykka.ActorRef[Any]:
        return self.refs[role]


def state_file(state_dir: Path, pipeline_id: str) -> Path:
    """The pipeline's own state file (never shared: see ``recsync.state.paths``)."""
    return state_dir / state_file_name(pipeline_id)


class Pipeline:
    """Owns the actors of one pipeline; used only from the supervisor's thread."""

    def __init__(
        self, config: PipelineConfig, ruleset: RuleSet, *, state_dir: Path, systems: Systems,
        scheduler: Scheduler, clock: Clock, report: FailureSink,
        on_event: EventSink | None = None, state: StateAccess | None = None,
    ) -> None:
        self.config = config
        self.ruleset = ruleset
        self.state_path = state_file(state_dir, config.id)
        self.state_access = state
        self.systems = systems
        self.scheduler = scheduler
        self.clock = clock
        self._supervisor_report = report
        self.on_event = on_event or no_events
        self.start_failure: ChildFailed | None = None
        self.incarnation = 0
        self.peers = Peers()
        self.timers: list[TimerHandle] = []
        self.figures: dict[str, Any] = {}  # what the queue and pollers last published
        self.ticks: dict[str, PollTick | FlushTick] = {}  # this incarnation's timers
        self.state = "stopped"
        self.error: str | None = None
        self.restarts = 0
        self.paused = False
        self.limits: dict[str, tuple[Any, Any]] = {}
        # last errors per side, kept across incarnations (shown by `recsync status`)
        self.side_health = {"a": SideHealth(clock), "b": SideHealth(clock)}

    @property
    def id(self) -> str:
        return self.config.id

    def report(self, failure: ChildFailed) -> None:
        """Failure sink of the actors: remembers why a start failed, tells the supervisor."""
        if self.state == "starting" and failure.incarnation == self.incarnation:
            self.start_failure = self.start_failure or failure
        side = failure.actor.rpartition("_")[2]
        if side in self.side_health:
            self.side_health[side].error(f"{failure.actor}: {failure.error}")
        self._supervisor_report(failure)

    def _system(self, side: Side) -> tuple[Any, Any]:
        side_cfg = self.config.a if side == "a" else self.config.b
        cls = get_connector_class(side_cfg.connector)
        system_id = cls(side_cfg.options, Path(self.config.base_dir)).system_id
        settings = self.config.settings
        return self.systems.get(system_id, side_limit(side_cfg, cls.local, settings),
                                settings.circuit_breaker, shared=not cls.local)

    def _bulk_targets(self) -> frozenset[str]:
        """The sides whose connector takes bulk writes (see QueueActor._bulk_limit)."""
        return frozenset(side for side, cfg in (("a", self.config.a), ("b", self.config.b))
                         if get_connector_class(cfg.connector).bulk_writes)

    def start(self) -> None:
        """Start every actor in order and ping it; on failure stop what started and raise."""
        self.incarnation += 1
        self.state = "starting"
        self.start_failure = None
        self.peers = peers = Peers()
        cfg, s, inc = self.config, self.config.settings, self.incarnation
        common = (cfg.id, inc, self.report)
        limits = {side: self._system(side) for side in ("a", "b")}
        self.limits = limits
        try:
            peers.refs["rate_limiter"] = RateLimiterActor.start(
                *common, {side: lim for side, (lim, _b) in limits.items()})
            for side in ("a", "b"):
                peers.refs[f"connector_{side}"] = ConnectorActor.start(
                    *common, side=side, side_config=cfg.a if side == "a" else cfg.b,
                    base_dir=Path(cfg.base_dir), peers=peers, breaker=limits[side][1],
                    clock=self.clock, health=self.side_health[side],
                    state_path=self.state_path, state=self.state_access,
                    throttled=limits[side][0] is not None)
            peers.refs["queue"] = QueueActor.start(
                *common, state_path=self.state_path, settings=s, ruleset=self.ruleset,
                peers=peers, clock=self.clock, safe_start=self.restarts > 0,
                on_event=self.on_event, state=self.state_access,
                bulk_targets=self._bulk_targets(), figures=self.figures,
                unthrottled=frozenset(side for side, (lim, _b) in limits.items()
                                      if lim is None))
            for role in ("rate_limiter", "connector_a", "connector_b", "queue"):
                peers.refs[role].ask(Ping(), timeout=ASK_TIMEOUT)
            self.check_fields(self.ruleset)
            cursors: dict[str, str | None] = peers.refs["queue"].ask(  # type: ignore[assignment]
                Call("cursors"), timeout=ASK_TIMEOUT)
            peers.refs["rules"] = RulesActor.start(*common, ruleset=self.ruleset, peers=peers)
            for side in ("a", "b"):
                peers.refs[f"poller_{side}"] = PollerActor.start(
                    *common, side=side, cursor=cursors[side], page_size=s.page_size,
                    peers=peers, clock=self.clock, reads=_syncs_from(self.ruleset, side),
                    figures=self.figures)
            for role in ("rules", "poller_a", "poller_b"):
                peers.refs[role].ask(Ping(), timeout=ASK_TIMEOUT)
        except PipelineStartError:
            self.stop_actors()
            raise
        except Exception as exc:
            self.stop_actors()
            failure = self.start_failure
            if failure is not None:
                raise PipelineStartError(f"{failure.actor}: {failure.error}",
                                         fatal=failure.fatal,
                                         transient=failure.transient) from exc
            raise PipelineStartError(str(exc) or type(exc).__name__,
                                     transient=isinstance(exc, StateUnavailable)) from exc
        if self.paused:  # its pollers paused before the first tick can poll
            for side in ("a", "b"):
                self.ask(f"poller_{side}", "set_paused", True)
        self._start_timers()
        self.state = "paused" if self.paused else "running"
        self.error = None

    def _start_timers(self) -> None:
        s = self.config.settings
        ticks = [PollTick(self, side, self.ask(f"connector_{side}", "change_probe"))
                 for side in ("a", "b")]
        flush = FlushTick(self)
        self.ticks = {"a": ticks[0], "b": ticks[1], "flush": flush}
        self.timers = [
            *(self.scheduler.call_every(s.poll_interval, tick, first_delay=0.0)
              for tick in ticks),
            self.scheduler.call_every(s.flush_interval, flush),
        ]

    def cancel_timers(self) -> None:
        for timer in self.timers:
            timer.cancel()
        self.timers = []

    def stop_actors(self, timeout: float = 30.0) -> None:
        """Cancel timers, then stop the actors in reverse start order."""
        self.cancel_timers()
        for role in reversed(START_ORDER):
            ref = self.peers.refs.get(role)
            if ref is not None and ref.is_alive():
                try:
                    ref.stop(timeout=timeout)
                except pykka.Timeout:
                    log.error("actor did not stop in time",
                              extra={"pipeline": self.id, "actor": role})

    def stop(self) -> None:
        self.stop_actors()
        self.state = "stopped"

    def ask(self, role: str, name: str, *args: Any, timeout: float = ASK_TIMEOUT) -> Any:
        return self.peers.ref(role).ask(Call(name, args), timeout=timeout)

    def ask_later(self, role: str, name: str, *args: Any) -> pykka.Future[Any]:
        """Like ``ask``, but returns the future at once."""
        return self.peers.ref(role).ask(Call(name, args), block=False)

    def tell(self, role: str, message: Any) -> None:
        ref = self.peers.refs.get(role)
        if ref is not None:
            _tell(ref, message)

    def poll_now(self, full: bool = False) -> None:
        for side in ("a", "b"):
            self.tell(f"poller_{side}", Poll(full))

    def set_paused(self, paused: bool) -> None:
        self.paused = paused
        if self.state in ("running", "paused"):
            for side in ("a", "b"):
                self.ask(f"poller_{side}", "set_paused", paused)
            self.state = "paused" if paused else "running"

    def apply_settings(self, config: PipelineConfig) -> None:
        """Take new settings live: batch and page sizes, intervals, budgets."""
        self.config = config
        s = config.settings
        for side in ("a", "b"):
            self._system(side)  # reconfigures the shared limiter and breaker
        if self.state in ("running", "paused"):
            self.ask("queue", "set_settings", s)
            for side in ("a", "b"):
                self.ask(f"poller_{side}", "set_page_size", s.page_size)
            if len(self.timers) == 3:
                self.timers[0].reschedule(s.poll_interval)
                self.timers[1].reschedule(s.poll_interval)
                self.timers[2].reschedule(s.flush_interval)

    def check_fields(self, ruleset: RuleSet) -> None:
        """Refuse a rule set that maps a field a side has no column for: it would sync as
        an empty value, silently (PipelineStartError, fatal: fix rules.toml or the table)."""
        wanted = {"a": list(ruleset.mappings), "b": list(ruleset.mappings.values())}
        problems = []
        for side, names in wanted.items():
            unknown = self.ask(f"connector_{side}", "unknown_fields", names,
                               _syncs_from(ruleset, side))
            if unknown:
                cfg = self.config.a if side == "a" else self.config.b
                hints = self.ask(f"connector_{side}", "field_hints", unknown) or {}
                problems.append(f"side {side} ({cfg.connector}) has no field " + ", ".join(
                    repr(n) + (f" ({hints[n]})" if hints.get(n) else "") for n in unknown))
        if problems:
            raise PipelineStartError(
                f"rules.toml [{self.config.rules}.mappings] names fields the sides do not "
                f"have: {'; '.join(problems)}. Fix the mapping (or add the column), then "
                "reload.", fatal=True)

    def apply_ruleset(self, ruleset: RuleSet) -> None:
        if self.state in ("running", "paused"):
            self.check_fields(ruleset)  # before anything changes
        self.ruleset = ruleset
        if self.state in ("running", "paused"):
            self.ask("rules", "set_ruleset", ruleset)
            self.ask("queue", "set_ruleset", ruleset)
            for side in ("a", "b"):
                self.ask(f"poller_{side}", "set_reads", _syncs_from(ruleset, side))

    def submit(self, side: Side, page: ChangePage) -> None:
        """Changes from outside (`sync event`): through the rules into the queue."""
        self.peers.ref("rules").tell(Prepare(side, page, self.clock.time(), event=True))

    def progress(self) -> dict[str, Any]:
        """Live figures from the actors (asks; only while running).

        The pollers are asked before the queue: work a poller hands on after its answer
        then shows in the queue's answer (as pending, or as activity after the poller's
        cycle), so `--once` can never take a pipeline for caught up too early.
        """
        pollers = {side: self.ask(f"poller_{side}", "progress") for side in ("a", "b")}
        queue = self.ask("queue", "progress")
        return {"queue": queue, "pollers": pollers}

    def last_progress(self) -> dict[str, Any]:
        """The figures the queue and pollers last published (no asks; may be a moment old;
        empty parts before they started)."""
        figures = self.figures
        return {"queue": dict(figures.get("queue") or {}),
                "pollers": {side: dict(figures.get(f"poller_{side}") or {})
                            for side in ("a", "b")}}


# an idle side's poll or queue's flush is skipped (see PollTick, FlushTick), but not more
# than this many times in a row: the safety net for whatever a probe cannot see
FORCED_EVERY = 10
FLUSH_FORCED_AFTER = 60.0  # seconds: the queue's periodic work (history pruning) still runs


class PollTick:
    """The poll timer of one side. With a change probe, a tick is skipped while the probe
    says nothing changed since the last poll that ran and the poller is idle without an
    error (a thousand idle pipelines then cost a stat() each per interval, no actor)."""

    def __init__(self, pipeline: Pipeline, side: Side, probe: Any) -> None:
        self.pipeline, self.side, self.probe = pipeline, side, probe
        self.ref = pipeline.peers.ref(f"poller_{side}")
        self.seen: object = None
        self.skipped = 0
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        if self.probe is not None:
            seen = self.probe()
            poller = self.pipeline.figures.get(f"poller_{self.side}") or {}
            idle = (poller and not poller.get("busy") and not poller.get("error")
                    and not poller.get("paused"))
            if idle and seen == self.seen and self.skipped < FORCED_EVERY:
                self.skipped += 1
                return
            # remembered only when this poll starts a cycle, which reads after the probe
            self.seen, self.skipped = (seen if idle else None), 0
        _tell(self.ref, Poll())


class FlushTick:
    """The flush timer: skipped while the queue last said it has nothing pending or in
    flight, and at most ``FLUSH_FORCED_AFTER`` seconds in a row."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.ref = pipeline.peers.ref("queue")
        self.sent = pipeline.clock.monotonic()

    def __call__(self) -> None:
        queue = self.pipeline.figures.get("queue") or {}
        now = self.pipeline.clock.monotonic()
        if (queue and not queue.get("pending") and not queue.get("in_flight")
                and not queue.get("held") and now - self.sent < FLUSH_FORCED_AFTER):
            return
        self.sent = now
        _tell(self.ref, Flush())


def side_limit(side_cfg: SideConfig, local: bool, settings: Settings) -> RateLimitSettings | None:
    """The request budget a side draws on: its own ``rate_limit`` when it sets one, else
    the pipeline's for a CRM; a local side (SQLite, files) has no API budget: None."""
    if side_cfg.rate_limit is not None:
        return side_cfg.rate_limit
    return None if local else settings.rate_limit


def _syncs_from(ruleset: RuleSet, side: str) -> bool:
    """Whether any change on ``side`` can trigger a sync (else it need not be read)."""
    return bool(ruleset.a_to_b if side == "a" else ruleset.b_to_a)


def _tell(ref: pykka.ActorRef[Any], message: Any) -> None:
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        pass  # the supervisor is restarting it
