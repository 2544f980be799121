"""Supervisor: starts pipelines, restarts them on failure with OTP-style restart intensity.

Strategy per pipeline is one_for_all: all of a pipeline's state is in its store, so a
fresh set of actors resumes exactly where the old one stopped. At most ``max_restarts``
restarts in ``within`` seconds; past that the pipeline waits in ``backoff`` and tries
again, and after ``max_backoffs`` such rounds it is ``fatal`` (stopped until reload).
One pipeline's failure never touches another.

A failure of the state storage (disk full, I/O error, read-only folder: ``transient``)
is no crash: the pipeline waits in ``backoff`` with the reason as its error, starts again
after ``backoff`` seconds, doubling up to ``max_wait``, for as long as it takes, and runs
on by itself once the storage takes writes again.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pykka

from recsync.actors.pipeline import ASK_TIMEOUT, START_ORDER, Pipeline, PipelineStartError
from recsync.actors.protocol import ChildFailed, Crash, Poll, RestartPipeline
from recsync.actors.scheduler import Scheduler
from recsync.actors.startpool import StartPool
from recsync.actors.systems import Systems
from recsync.clock import Clock, SystemClock
from recsync.config import PipelineConfig
from recsync.errors import RecsyncError
from recsync.messages import ChangePage, Side
from recsync.rules import RuleSet
from recsync.state.access import StateAccess

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestartPolicy:
    max_restarts: int = 5
    within: float = 60.0
    backoff: float = 5.0
    max_backoffs: int = 3
    max_wait: float = 60.0  # longest wait between starts while the state storage fails


class Supervisor(pykka.ThreadingActor):
    use_daemon_thread = True

    def __init__(
        self, state_dir: Path, *, scheduler: Scheduler, clock: Clock | None = None,
        policy: RestartPolicy | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        state: StateAccess | None = None, redis_url: str = "", nodes_hint: int = 1,
    ) -> None:
        super().__init__()
        self.state_dir = state_dir
        self.state = state  # None: a state file per pipeline in state_dir
        self.scheduler = scheduler
        self.clock = clock or SystemClock()
        self.policy = policy or RestartPolicy()
        self.systems = Systems(self.clock, redis_url=redis_url, nodes_hint=nodes_hint)
        self.pipelines: dict[str, Pipeline] = {}
        self.restart_times: dict[str, deque[float]] = {}
        self.backoffs: dict[str, int] = {}
        self.last_failure: dict[str, float] = {}
        self.storage_waits: dict[str, int] = {}
        self.on_event = on_event or (lambda kind, data: None)
        # begin_pipeline: starts run on a pool and report back with StartDone
        self.concurrent_starts = False
        self.stopping = False  # quiesce(): a start that ends now is paused at once
        self._starter: StartPool | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def _report(self, failure: ChildFailed) -> None:
        try:
            self.actor_ref.tell(failure)
        except pykka.ActorDeadError:
            pass

    def start_pipeline(self, config: PipelineConfig, ruleset: RuleSet) -> str:
        """Start a pipeline; returns its state (running, or error with the reason logged)."""
        pipeline = self._register(config, ruleset)
        self._try_start(pipeline)
        return pipeline.state

    def begin_pipeline(self, config: PipelineConfig, ruleset: RuleSet,
                       paused: bool = False) -> None:
        """Register a pipeline as ``starting`` and start it on the start pool: returns at
        once. Starts run ``START_CONCURRENCY`` at a time, so a thousand pipelines start in
        parallel, and one that is slow to start holds back no other. ``paused``: it starts
        paused (an operator paused it on the node that ran it before)."""
        pipeline = self._register(config, ruleset)
        pipeline.paused = paused
        pipeline.state = "starting"
        self.concurrent_starts = True
        self._event("pipeline_state", pipeline)
        self._try_start(pipeline)

    def _register(self, config: PipelineConfig, ruleset: RuleSet) -> Pipeline:
        pipeline = Pipeline(
            config, ruleset, state_dir=self.state_dir, systems=self.systems,
            scheduler=self.scheduler, clock=self.clock, report=self._report,
            on_event=self.on_event, state=self.state)
        self.pipelines[config.id] = pipeline
        self.restart_times[config.id] = deque()
        self.backoffs[config.id] = 0
        return pipeline

    def _start_later(self, pipeline: Pipeline) -> None:
        ref = self.actor_ref

        def run() -> None:
            error: Exception | None = None
            try:
                pipeline.start()
            except Exception as exc:  # reported to the supervisor, as a sync start would
                error = exc
            _safe_tell(ref, StartDone(pipeline, error))

        pipeline.state = "starting"
        if self._starter is None:
            self._starter = StartPool(START_CONCURRENCY)
        self._starter.submit(run)

    def _start_done(self, done: StartDone) -> None:
        pipeline = done.pipeline
        if self.pipelines.get(pipeline.id) is not pipeline:  # stopped or replaced meanwhile
            if done.error is None:
                pipeline.stop_actors()
            return
        self._finish_start(pipeline, done.error)
        if self.stopping and _live(pipeline):
            pipeline.set_paused(True)

    def _try_start(self, pipeline: Pipeline) -> bool:
        if self.concurrent_starts:
            self._start_later(pipeline)
            return False
        try:
            pipeline.start()
        except Exception as exc:
            return self._finish_start(pipeline, exc)
        return self._finish_start(pipeline, None)

    def _finish_start(self, pipeline: Pipeline, exc: Exception | None) -> bool:
        if exc is not None:
            pipeline.error = str(exc) or type(exc).__name__
            if isinstance(exc, PipelineStartError) and exc.transient:
                self._wait_for_storage(pipeline)
                return False
            fatal = isinstance(exc, PipelineStartError) and exc.fatal
            if fatal or (isinstance(exc, RecsyncError) and not isinstance(exc, PipelineStartError)):
                pipeline.state = "error"
                log.error("pipeline cannot start", extra={"pipeline": pipeline.id,
                                                          "error": pipeline.error})
                self._event("pipeline_state", pipeline)
                return False
            log.error("pipeline start failed", extra={"pipeline": pipeline.id,
                                                      "error": pipeline.error})
            self._escalate(pipeline)
            return False
        log.info("pipeline started", extra={"pipeline": pipeline.id,
                                            "incarnation": pipeline.incarnation})
        self._event("pipeline_state", pipeline)
        return True

    def stop_pipeline(self, pipeline_id: str) -> None:
        pipeline = self.pipelines.pop(pipeline_id, None)
        if pipeline is not None:
            pipeline.stop()
            self._event("pipeline_state", pipeline)

    def quiesce(self) -> None:
        """Before a stop: start no more pipelines (those not begun stay ``starting``),
        let the starts under way end for a moment, and pause whatever then runs."""
        self.stopping = True
        if self._starter is not None:
            if not self._starter.close(timeout=START_WAIT_ON_STOP):
                log.warning("pipeline starts still running at stop are left behind")
            self._starter = None

    def stop_all(self, timeout: float = 30.0) -> None:
        """Stop every pipeline: role by role in reverse start order, each role of all
        pipelines at once (a thousand pipelines stop as fast as one)."""
        if self._starter is not None:  # starts not begun are dropped; running ones may end
            if not self._starter.close(timeout=START_WAIT_ON_STOP):
                log.warning("pipeline starts still running at stop are left behind")
            self._starter = None
        pipelines = list(self.pipelines.values())
        self.pipelines.clear()
        for pipeline in pipelines:
            pipeline.cancel_timers()
        for role in reversed(START_ORDER):
            waiting = []
            for pipeline in pipelines:
                ref = pipeline.peers.refs.get(role)
                if ref is not None and ref.is_alive():
                    waiting.append((pipeline, ref.stop(block=False)))
            deadline = time.monotonic() + timeout
            for pipeline, future in waiting:
                try:
                    future.get(timeout=max(0.0, deadline - time.monotonic()))
                except pykka.Timeout:
                    log.error("actor did not stop in time",
                              extra={"pipeline": pipeline.id, "actor": role})
        for pipeline in pipelines:
            pipeline.state = "stopped"
            self._event("pipeline_state", pipeline)

    def on_stop(self) -> None:
        self.stop_all()

    # -- failures ----------------------------------------------------------------------------
    def on_receive(self, message: Any) -> Any:
        if isinstance(message, StartDone):
            self._start_done(message)
        elif isinstance(message, ChildFailed):
            self._child_failed(message)
        elif isinstance(message, RestartPipeline):
            pipeline = self.pipelines.get(message.pipeline)
            if pipeline is not None and pipeline.state == "backoff":
                if message.waited:
                    pipeline.restarts += 1
                    pipeline.state = "restarting"
                    self._try_start(pipeline)
                else:
                    self._restart(pipeline)
        return None

    def _child_failed(self, failure: ChildFailed) -> None:
        pipeline = self.pipelines.get(failure.pipeline)
        if pipeline is None or failure.incarnation != pipeline.incarnation:
            return  # a late report from an incarnation already replaced
        if pipeline.state not in ("running", "paused"):
            return  # start() is dealing with it
        pipeline.error = f"{failure.actor}: {failure.error}"
        self._event("actor_failed", pipeline, actor=failure.actor, error=failure.error)
        if failure.fatal:
            pipeline.stop_actors()
            pipeline.state = "error"
            self._event("pipeline_state", pipeline)
            return
        if failure.transient:
            self._wait_for_storage(pipeline)
            return
        self._restart(pipeline)

    def _wait_for_storage(self, pipeline: Pipeline) -> None:
        """The state storage failed (``pipeline.error`` says how): wait, then start again.
        The waits double from ``backoff`` up to ``max_wait``; never fatal."""
        pipeline.stop_actors()
        now = self.clock.monotonic()
        quiet = self.policy.within + self.policy.max_wait  # the last wait, then a while fine
        if now - self.last_failure.get(pipeline.id, now) > quiet:
            self.storage_waits[pipeline.id] = 0  # it ran well for a while: start short again
        self.last_failure[pipeline.id] = now
        waits = self.storage_waits[pipeline.id] = self.storage_waits.get(pipeline.id, 0) + 1
        delay = min(self.policy.backoff * 2 ** (waits - 1), self.policy.max_wait)
        pipeline.state = "backoff"
        log.warning("pipeline waits for its state storage",
                    extra={"pipeline": pipeline.id, "error": pipeline.error, "seconds": delay})
        self._event("pipeline_state", pipeline)
        ref = self.actor_ref
        self.scheduler.call_later(
            delay, lambda: _safe_tell(ref, RestartPipeline(pipeline.id, waited=True)))

    def _restart(self, pipeline: Pipeline) -> None:
        pipeline.stop_actors()
        now = self.clock.monotonic()
        times = self.restart_times[pipeline.id]
        while times and now - times[0] > self.policy.within:
            times.popleft()
        if now - self.last_failure.get(pipeline.id, now) > self.policy.within:
            self.backoffs[pipeline.id] = 0  # stable for a whole period: forgive old rounds
        self.last_failure[pipeline.id] = now
        if len(times) >= self.policy.max_restarts:
            self._escalate(pipeline)
            return
        times.append(now)
        pipeline.restarts += 1
        pipeline.state = "restarting"
        log.warning("restarting pipeline", extra={"pipeline": pipeline.id,
                                                  "restarts": pipeline.restarts})
        self._try_start(pipeline)

    def _escalate(self, pipeline: Pipeline) -> None:
        """Too many restarts: wait in backoff, or give up (fatal) after enough rounds."""
        pipeline.stop_actors()
        self.restart_times[pipeline.id].clear()
        self.backoffs[pipeline.id] = rounds = self.backoffs.get(pipeline.id, 0) + 1
        if rounds > self.policy.max_backoffs:
            pipeline.state = "fatal"
            log.error("pipeline is fatal", extra={"pipeline": pipeline.id,
                                                  "error": pipeline.error})
            self._event("pipeline_state", pipeline)
            return
        pipeline.state = "backoff"
        delay = self.policy.backoff * 2 ** (rounds - 1)
        log.warning("pipeline in backoff", extra={"pipeline": pipeline.id, "seconds": delay})
        self._event("pipeline_state", pipeline)
        ref = self.actor_ref
        self.scheduler.call_later(delay, lambda: _safe_tell(ref, RestartPipeline(pipeline.id)))

    def _event(self, kind: str, pipeline: Pipeline, **data: Any) -> None:
        self.on_event(kind, {"pipeline": pipeline.id, "state": pipeline.state,
                             "error": pipeline.error, "restarts": pipeline.restarts, **data})

    # -- queries (asked through a proxy) -----------------------------------------------------
    def states(self) -> dict[str, dict[str, Any]]:
        return {
            pid: {"state": p.state, "error": p.error, "restarts": p.restarts,
                  "incarnation": p.incarnation}
            for pid, p in self.pipelines.items()
        }

    def pipeline(self, pipeline_id: str) -> Pipeline:
        return self.pipelines[pipeline_id]

    def replace_pipeline(self, config: PipelineConfig, ruleset: RuleSet) -> str:
        """Stop a pipeline and start it again with a new configuration."""
        self.stop_pipeline(config.id)
        return self.start_pipeline(config, ruleset)

    def apply_settings(self, config: PipelineConfig) -> None:
        self.pipelines[config.id].apply_settings(config)

    def apply_ruleset(self, pipeline_id: str, ruleset: RuleSet) -> None:
        pipeline = self.pipelines[pipeline_id]
        if pipeline.state == "error":  # new rules may be its fix: start it again
            self.replace_pipeline(pipeline.config, ruleset)
            return
        try:
            pipeline.apply_ruleset(ruleset)
        except PipelineStartError:  # the new mapping names a missing field: fail it, loudly
            self.replace_pipeline(pipeline.config, ruleset)

    def set_paused(self, pipeline_id: str, paused: bool) -> str:
        pipeline = self.pipelines[pipeline_id]
        pipeline.set_paused(paused)
        self._event("pipeline_state", pipeline)
        return pipeline.state

    def change_paused(self, pipeline_id: str, paused: bool) -> bool:
        """Pause or resume a pipeline; False (and nothing done) when it already was."""
        if self.pipelines[pipeline_id].paused == paused:
            return False
        self.set_paused(pipeline_id, paused)
        return True

    def sync_now(self, pipeline_id: str, sides: tuple[str, ...], full: bool) -> None:
        pipeline = self.pipelines[pipeline_id]
        for side in sides:
            pipeline.tell(f"poller_{side}", Poll(full))

    def submit(self, pipeline_id: str, side: Side, page: ChangePage) -> None:
        self.pipelines[pipeline_id].submit(side, page)

    def ask_actor(self, pipeline_id: str, role: str, name: str, *args: Any) -> Any:
        pipeline = self.pipelines[pipeline_id]
        if not _live(pipeline):
            raise PipelineStartError(f"pipeline {pipeline_id} is {pipeline.state}")
        return pipeline.ask(role, name, *args)

    def peer_ref(self, pipeline_id: str, role: str) -> pykka.ActorRef[Any]:
        """The current ref of one actor of a live pipeline, to ask it directly (a long
        task, such as `recsync verify`, then never holds the supervisor up)."""
        pipeline = self.pipelines.get(pipeline_id)
        if pipeline is None or not _live(pipeline):
            state = pipeline.state if pipeline is not None else "not started"
            raise PipelineStartError(f"pipeline {pipeline_id} is {state}")
        return pipeline.peers.ref(role)

    def allow_deletes(self, pipeline_id: str, side: Side) -> None:
        pipeline = self.pipelines[pipeline_id]
        pipeline.ask("queue", "allow_deletes", side)
        pipeline.ask(f"poller_{side}", "set_paused", pipeline.paused)
        pipeline.tell(f"poller_{side}", Poll())

    def health(self, only: Collection[str] | None = None) -> dict[str, Any]:
        """Per pipeline (those in ``only``, if given): state, and breaker and budget of
        each side (for stats)."""
        out: dict[str, Any] = {}
        chosen = self.pipelines.items() if only is None else \
            [(pid, self.pipelines[pid]) for pid in only if pid in self.pipelines]
        for pid, p in chosen:
            circuit, budget, sides = {}, {}, {}
            for side, (limiter, breaker) in p.limits.items():
                circuit[side] = breaker.state
                if limiter is not None:  # an unthrottled local side has none
                    budget[side] = limiter.usage()
                sides[side] = self._side_health(p, side, limiter, breaker)
            out[pid] = {"state": p.state, "error": p.error, "restarts": p.restarts,
                        "circuit": circuit, "rate_limit": budget, "sides": sides}
        return out

    def _side_health(self, p: Pipeline, side: str, limiter: Any, breaker: Any) -> dict[str, Any]:
        """Circuit, rate-limit wait (wall times) and last error of one side."""
        now, mono = self.clock.time(), self.clock.monotonic()
        state = breaker.state
        retry = breaker.retry_at
        wait = limiter.wait_seconds() if limiter is not None else 0.0
        return {"circuit": state,
                "circuit_retry_at": (now + max(0.0, retry - mono)
                                     if state == "open" and retry is not None else None),
                "rate_limited_until": now + wait if wait > 0 else None,
                "budget": limiter.budget_note() if hasattr(limiter, "budget_note") else None,
                **p.side_health[side].snapshot()}

    def inject_crash(self, pipeline_id: str, role: str) -> None:
        """Fault injection: make one actor of a pipeline fail as a bug would."""
        self.pipelines[pipeline_id].tell(role, Crash("injected crash"))

    def call_all(self, role: str, name: str, *args: Any) -> dict[str, Any]:
        """Ask every live pipeline's ``role`` actor to run ``name``, all at once; dead ones
        and ones that do not answer in time are left out."""
        asked = {}
        for pid, p in self.pipelines.items():
            if _live(p):
                try:
                    asked[pid] = p.ask_later(role, name, *args)
                except pykka.ActorDeadError:
                    continue
        out = {}
        deadline = time.monotonic() + ASK_TIMEOUT
        for pid, future in asked.items():
            try:
                out[pid] = future.get(timeout=max(0.0, deadline - time.monotonic()))
            except (pykka.ActorDeadError, pykka.Timeout):
                continue
        return out

    def progress_all(self, cached: bool = False) -> dict[str, dict[str, Any]]:
        """Per pipeline: state, error, restarts and the live figures of its actors, asked
        of them (``cached``: as they last published them, without asking)."""
        out: dict[str, dict[str, Any]] = {}
        for pid, p in self.pipelines.items():
            entry: dict[str, Any] = {"state": p.state, "error": p.error, "restarts": p.restarts}
            if _live(p):
                if cached:
                    entry.update(p.last_progress())
                else:
                    try:
                        entry.update(p.progress())
                    except (pykka.ActorDeadError, pykka.Timeout):
                        entry["state"] = "restarting"
            out[pid] = entry
        return out

    def poll_idle(self, pipeline_id: str) -> None:
        """Start a poll cycle now on the idle sides of a pipeline (``--once`` goes faster)."""
        p = self.pipelines.get(pipeline_id)
        if p is not None and p.state == "running":
            p.poll_now()

    def pause_all(self) -> None:
        for side in ("a", "b"):
            self.call_all(f"poller_{side}", "set_paused", True)
        for p in self.pipelines.values():
            if _live(p):
                p.paused = True
                p.state = "paused"

    def in_flight_total(self) -> int:
        return sum(int(v["in_flight"]) for v in self.call_all("queue", "progress").values())


@dataclass(frozen=True)
class StartDone:
    """A start begun by ``begin_pipeline`` ended (``error`` None: the pipeline runs)."""

    pipeline: Pipeline
    error: Exception | None


START_CONCURRENCY = 16
START_WAIT_ON_STOP = 5.0  # seconds a stop waits for starts under way


def _safe_tell(ref: pykka.ActorRef[Any], message: Any) -> None:
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        pass


def _live(pipeline: Pipeline) -> bool:
    return pipeline.state in ("running", "paused")
