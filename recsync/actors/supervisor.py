"""Supervisor: starts pipelines, restarts them on failure with OTP-style restart intensity.

Strategy per pipeline is one_for_all: all of a pipeline's state is in its store, so a
fresh set of actors resumes exactly where the old one stopped. At most ``max_restarts``
restarts in ``within`` seconds; past that the pipeline waits in ``backoff`` and tries
again, and after ``max_backoffs`` such rounds it is ``fatal`` (stopped until reload).
One pipeline's failure never touches another.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pykka

from recsync.actors.pipeline import ASK_TIMEOUT, START_ORDER, Pipeline, PipelineStartError
from recsync.actors.protocol import ChildFailed, Crash, Poll, RestartPipeline
from recsync.actors.scheduler import Scheduler
from recsync.actors.systems import Systems
from recsync.clock import Clock, SystemClock
from recsync.config import PipelineConfig
from recsync.errors import RecsyncError
from recsync.messages import ChangePage, Side
from recsync.rules import RuleSet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestartPolicy:
    max_restarts: int = 5
    within: float = 60.0
    backoff: float = 5.0
    max_backoffs: int = 3


class Supervisor(pykka.ThreadingActor):
    use_daemon_thread = True

    def __init__(
        self, state_dir: Path, *, scheduler: Scheduler, clock: Clock | None = None,
        policy: RestartPolicy | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        super().__init__()
        self.state_dir = state_dir
        self.scheduler = scheduler
        self.clock = clock or SystemClock()
        self.policy = policy or RestartPolicy()
        self.systems = Systems(self.clock)
        self.pipelines: dict[str, Pipeline] = {}
        self.restart_times: dict[str, deque[float]] = {}
        self.backoffs: dict[str, int] = {}
        self.last_failure: dict[str, float] = {}
        self.on_event = on_event or (lambda kind, data: None)

    # -- lifecycle ---------------------------------------------------------------------------
    def _report(self, failure: ChildFailed) -> None:
        try:
            self.actor_ref.tell(failure)
        except pykka.ActorDeadError:
            pass

    def start_pipeline(self, config: PipelineConfig, ruleset: RuleSet) -> str:
        """Start a pipeline; returns its state (running, or error with the reason logged)."""
        pipeline = Pipeline(
            config, ruleset, state_dir=self.state_dir, systems=self.systems,
            scheduler=self.scheduler, clock=self.clock, report=self._report)
        self.pipelines[config.id] = pipeline
        self.restart_times[config.id] = deque()
        self.backoffs[config.id] = 0
        self._try_start(pipeline)
        return pipeline.state

    def _try_start(self, pipeline: Pipeline) -> bool:
        try:
            pipeline.start()
        except Exception as exc:
            pipeline.error = str(exc) or type(exc).__name__
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

    def stop_all(self, timeout: float = 30.0) -> None:
        """Stop every pipeline: role by role in reverse start order, each role of all
        pipelines at once (a thousand pipelines stop as fast as one)."""
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
        if isinstance(message, ChildFailed):
            self._child_failed(message)
        elif isinstance(message, RestartPipeline):
            pipeline = self.pipelines.get(message.pipeline)
            if pipeline is not None and pipeline.state == "backoff":
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
        self._restart(pipeline)

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
        self.pipelines[pipeline_id].apply_ruleset(ruleset)

    def set_paused(self, pipeline_id: str, paused: bool) -> str:
        pipeline = self.pipelines[pipeline_id]
        pipeline.set_paused(paused)
        self._event("pipeline_state", pipeline)
        return pipeline.state

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

    def allow_deletes(self, pipeline_id: str, side: Side) -> None:
        pipeline = self.pipelines[pipeline_id]
        pipeline.ask("queue", "allow_deletes", side)
        pipeline.ask(f"poller_{side}", "set_paused", pipeline.paused)
        pipeline.tell(f"poller_{side}", Poll())

    def health(self) -> dict[str, Any]:
        """Per pipeline: state, and breaker and budget of each side (for stats)."""
        out: dict[str, Any] = {}
        for pid, p in self.pipelines.items():
            circuit, budget = {}, {}
            for side, (limiter, breaker) in p.limits.items():
                circuit[side] = breaker.state
                budget[side] = limiter.usage()
            out[pid] = {"state": p.state, "error": p.error, "restarts": p.restarts,
                        "circuit": circuit, "rate_limit": budget}
        return out

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

    def progress_all(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for pid, p in self.pipelines.items():
            entry: dict[str, Any] = {"state": p.state, "error": p.error, "restarts": p.restarts}
            if _live(p):
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


def _safe_tell(ref: pykka.ActorRef[Any], message: Any) -> None:
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        pass


def _live(pipeline: Pipeline) -> bool:
    return pipeline.state in ("running", "paused")
