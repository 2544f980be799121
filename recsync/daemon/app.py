"""Daemon: loads the config, starts the supervisor and its pipelines, runs, drains, stops."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pykka

from recsync.actors.scheduler import Scheduler
from recsync.actors.supervisor import RestartPolicy, Supervisor
from recsync.clock import Clock, SystemClock
from recsync.config import AppConfig

log = logging.getLogger(__name__)
DONE_STATES = ("error", "fatal")


@dataclass
class PipelineReport:
    pipeline: str
    state: str
    synced_a_to_b: int = 0
    synced_b_to_a: int = 0
    failed: int = 0
    conflicts: int = 0
    pending: int = 0
    error: str | None = None
    done: bool = False

    def line(self, seconds: float) -> str:
        if self.state in DONE_STATES:
            return f"{self.pipeline}: {self.state}: {self.error}"
        text = (f"{self.pipeline}: {self.state}, a->b {self.synced_a_to_b} synced, "
                f"b->a {self.synced_b_to_a} synced, {self.failed} failed, "
                f"{self.conflicts} conflicts, {self.pending} pending, in {seconds:.2f} s")
        if self.error:
            text += f" ({self.error})"
        return text


@dataclass
class Daemon:
    config: AppConfig
    state_dir: Path
    clock: Clock = field(default_factory=SystemClock)
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    stopping: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.scheduler = Scheduler(self.clock)
        self.supervisor: pykka.ActorRef[Supervisor] | None = None
        self.baseline: dict[str, dict[str, int]] = {}

    @property
    def proxy(self) -> Any:
        assert self.supervisor is not None
        return self.supervisor.proxy()

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.scheduler.start()
        self.supervisor = Supervisor.start(self.state_dir, scheduler=self.scheduler,
                                           clock=self.clock, policy=self.policy)
        for pid, cfg in self.config.pipelines.items():
            state = self.proxy.start_pipeline(cfg, self.config.rules[cfg.rules]).get()
            log.info("pipeline %s", state, extra={"pipeline": pid})
        self.baseline = {pid: r for pid, r in self._counts().items()}

    def _counts(self) -> dict[str, dict[str, int]]:
        return self.proxy.call_all("queue", "counts").get()  # type: ignore[no-any-return]

    def stop(self, drain_timeout: float = 30.0) -> None:
        """Stop polling, let in-flight batches finish (up to ``drain_timeout``), stop all."""
        if self.supervisor is None:
            return
        try:
            self.proxy.pause_all().get()
            deadline = time.monotonic() + drain_timeout
            while time.monotonic() < deadline:
                flying = self.proxy.in_flight_total().get()
                if not flying:
                    break
                self.stopping.wait(0.05)
            self.supervisor.stop(timeout=drain_timeout + 30)
        except pykka.ActorDeadError:
            pass
        self.supervisor = None
        self.scheduler.stop()

    # -- --once ------------------------------------------------------------------------------
    def run_once(self, timeout: float | None = None) -> list[PipelineReport]:
        """Run until every pipeline is caught up (or cannot go on); report each."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.stopping.is_set():
            reports = self.reports()
            if all(r.done for r in reports):
                return reports
            if deadline is not None and time.monotonic() > deadline:
                return self.reports(final=True)
            self.stopping.wait(0.05)
        return self.reports(final=True)

    def reports(self, final: bool = False) -> list[PipelineReport]:
        out = []
        progress: dict[str, dict[str, Any]] = self.proxy.progress_all().get()
        done = all(_caught_up(prog) for prog in progress.values())
        counts = self._counts() if done or final else {}
        for pid, prog in progress.items():
            rep = PipelineReport(pid, prog["state"], error=prog.get("error"))
            now, base = counts.get(pid, {}), self.baseline.get(pid, {})

            def delta(name: str, now: dict[str, int] = now, base: dict[str, int] = base) -> int:
                return now.get(name, 0) - base.get(name, 0)

            rep.synced_a_to_b = delta("total_synced_a_to_b")
            rep.synced_b_to_a = delta("total_synced_b_to_a")
            rep.conflicts = delta("total_conflicts")
            rep.failed = now.get("failed_a_to_b", 0) + now.get("failed_b_to_a", 0)
            rep.done = _caught_up(prog)
            queue = prog.get("queue") or {}
            rep.pending = sum(v for k, v in now.items() if k.startswith(("ready_", "in_flight_")))
            if queue.get("held"):
                rep.state = "held"
                rep.error = "; ".join(queue["held"].values())
            if not rep.done and prog["state"] == "running" and not queue.get("pending"):
                self.proxy.poll_idle(pid)
            out.append(rep)
        return out


def _caught_up(prog: dict[str, Any]) -> bool:
    """Both sides polled after the last queue activity, and nothing left but failures."""
    if prog["state"] in DONE_STATES:
        return True
    if prog["state"] != "running":
        return False
    queue, pollers = prog["queue"], prog["pollers"]
    if queue.get("held"):
        return True
    if queue["pending"] or queue["in_flight"]:
        return False
    for poller in pollers.values():
        started = poller["last_cycle_started"]
        if poller["busy"] or started is None or started <= queue["last_activity"]:
            return False
    return True
