"""Daemon: loads the config, starts the supervisor and its pipelines, serves the control
socket, reloads config, reports to systemd, drains on stop."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pykka

from recsync.actors.scheduler import Scheduler
from recsync.actors.supervisor import RestartPolicy, Supervisor
from recsync.clock import Clock, SystemClock
from recsync.config import AppConfig, PipelineConfig, load_config
from recsync.daemon import protocol as p
from recsync.daemon.logs import redact_text
from recsync.daemon.overview import EncodedRows
from recsync.daemon.records import pipeline_counts
from recsync.daemon.reload import ConfigWatcher, diff_configs
from recsync.daemon.sides import side_statuses
from recsync.errors import ConfigError, ControlError, RecsyncError
from recsync.state.access import StateAccess
from recsync.state.paths import migrate_state_files

log = logging.getLogger(__name__)
DONE_STATES = ("error", "fatal")
# timers due within this run in one wake-up of the scheduler (see Scheduler): with 1,000
# idle pipelines (2,000 poll and flush timers a second) its thread took 6.6% of a core,
# 5.2% after (one run each, per-thread CPU, on this loaded 2-core machine)
TIMER_SLACK = 0.01
# an idle pipeline's breakers, budgets and side errors are asked of the supervisor every
# HEALTH_EVERY stats ticks (a slice of them each tick), an active one's every tick: the
# supervisor's health of 1,000 pipelines every second took ~4% of a core
HEALTH_EVERY = 5


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
    warnings: list[str] = field(default_factory=list)

    def line(self, seconds: float) -> str:
        if self.state in DONE_STATES:
            return f"{self.pipeline}: {self.state}: {self.error}"
        text = (f"{self.pipeline}: {self.state}, a->b {self.synced_a_to_b} synced, "
                f"b->a {self.synced_b_to_a} synced, {self.failed} failed, "
                f"{self.conflicts} conflicts, {self.pending} pending, in {seconds:.2f} s")
        if self.error:
            text += f" ({self.error})"
        for warning in self.warnings:
            text += f"; warning: {warning}"
        return text


@dataclass
class Daemon:
    config: AppConfig
    state_dir: Path
    config_dir: Path = Path(".")
    clock: Clock = field(default_factory=SystemClock)
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    stopping: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.scheduler = Scheduler(self.clock, slack=TIMER_SLACK)
        self.supervisor: pykka.ActorRef[Supervisor] | None = None
        self.baseline: dict[str, dict[str, int]] = {}
        self.serving = False  # pipelines start in the background (the control plane first)
        self._snapshot_wanted = threading.Event()
        self._counted: dict[str, Any] = {}  # pipeline -> queue version its counts are of
        self._cursors: dict[str, dict[str, str | None]] = {}
        self.config_error: str | None = None
        self.exit_reason: str | None = None  # [cluster]: why it stops of itself (replaced)
        self.last_reload: dict[str, Any] | None = None
        self.endpoints: tuple[str, str] | None = None
        self.server: Any = None  # ControlServer, when the control socket is on
        self.watcher: ConfigWatcher | None = None  # of the config files, when serving
        self.states: dict[str, dict[str, Any]] = {}
        self._stats: list[p.PipelineStats] = []
        self._counts_cache: dict[str, dict[str, int]] = {}
        self._progress: dict[str, dict[str, Any]] = {}
        self._totals: dict[str, int] = {}  # per pipeline: records synced at the last tick
        self.healthy_at = time.monotonic()
        # the control front answers status/stats from this file (see daemon/front.py)
        self.snapshot_path: Path | None = None
        # the status rows of all pipelines (None) or of some (ControlService.pipeline_statuses)
        self.status_rows: Callable[[Collection[str] | None], list[p.PipelineStatus]] | None = None
        # each pipeline's stats and status rows, encoded once per change (daemon/overview.py)
        self._stat_rows = EncodedRows()
        self._status_rows = EncodedRows()
        self._rows_config: AppConfig | None = None  # the config the status rows are of
        self._snapshot_head: tuple[Any, ...] | None = None  # what else the file last held
        self._dirty: set[str] = set()  # pipelines whose status row may have changed
        self._touched: set[str] = set()  # pipelines an event told about since the last tick
        self._dirty_lock = threading.Lock()
        self._inputs: dict[str, tuple[Any, ...]] = {}  # per pipeline: its last stats inputs
        self._tick_at: float | None = None
        self._ticks = 0
        self._health: dict[str, dict[str, Any]] = {}  # per pipeline: the supervisor's last
        self._snapshot_lock = threading.Lock()
        self._stats_thread: threading.Thread | None = None
        self._reload_lock = threading.Lock()
        self._proxy: tuple[Any, Any] | None = None
        self._polled_idle = False
        self._warned: dict[str, float] = {}  # per pipeline: the newest warning published
        # where the pipelines' state is: files in state_dir, or [cluster] state
        self.state = StateAccess(self.state_dir, self.config.cluster)
        from recsync.daemon.metrics import LeaseMetrics

        self.leases = LeaseMetrics()  # the lease code reports here (see daemon/metrics.py)
        # with [cluster] and a --node: the leases decide which pipelines run here
        self.coordinator: Any = None

    @property
    def proxy(self) -> Any:
        if self.supervisor is None:  # the control socket is served before the pipelines
            raise ControlError("UNAVAILABLE", "recsyncd is starting (or stopping); try "
                                              "again in a moment.")
        # making a pykka proxy introspects the actor (about a millisecond): make one
        if self._proxy is None or self._proxy[0] is not self.supervisor:
            self._proxy = (self.supervisor, self.supervisor.proxy())
        return self._proxy[1]

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, wait: bool = True) -> None:
        """Start the supervisor and every pipeline; with ``wait`` False the pipelines are
        only begun (shown as ``starting``) and start in parallel while this returns."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.config.cluster is None:
            self._migrate_state_files(self.config)
        else:
            log.info("pipeline state in %s", self.state.shown)
            _share_connector_state(self.config.cluster, self.state.schema)
        self.scheduler.start()
        self.supervisor = Supervisor.start(self.state_dir, scheduler=self.scheduler,
                                           clock=self.clock, policy=self.policy,
                                           on_event=self._on_supervisor_event,
                                           state=self.state, **self._budget_options())
        if self.coordinator is not None:  # the pipelines whose lease this node gets
            self.coordinator.start()
            return
        if not wait:
            for cfg in self.config.pipelines.values():
                self.proxy.begin_pipeline(cfg, self.config.rules[cfg.rules]).get()
            return
        # the totals before any pipeline runs: taken after the starts, a fast first page
        # was already counted in them, and the --once summary under-counted it
        self.baseline = {pid: counts for pid in self.config.pipelines
                         if (counts := self._stored_counts(pid)) is not None}
        for pid, cfg in self.config.pipelines.items():
            state = self.proxy.start_pipeline(cfg, self.config.rules[cfg.rules]).get()
            log.info("pipeline %s", state, extra={"pipeline": pid})
        for pid, counts in self._counts().items():  # state unreadable before: as it is now
            self.baseline.setdefault(pid, counts)

    def _stored_counts(self, pid: str) -> dict[str, int] | None:
        """The pipeline's totals in its state; None while the state cannot be read (its
        pipeline says why once started)."""
        try:
            store = self.state.open_store(pid, self.clock)
        except RecsyncError:
            return None
        try:
            return store.counts()
        except RecsyncError:
            return None
        finally:
            store.close()

    def metric_figures(self) -> dict[str, dict[str, int]]:
        """Per pipeline: the totals and queue figures the stats thread last took; ``here``
        0 for a pipeline another node of the cluster runs (its totals are the cluster's,
        which that node exports: summed over the nodes, each counts once)."""
        out = {}
        owned = None if self.coordinator is None else set(self.coordinator.leases.tokens)
        for pid in list(self.config.pipelines):
            counts = self._counts_cache.get(pid) or {}
            out[pid] = {**{k: int(v) for k, v in counts.items()},
                        "in_flight": int(self.states.get(pid, {}).get("in_flight", 0) or 0),
                        "here": int(owned is None or pid in owned)}
        return out

    def metric_systems(self) -> dict[str, tuple[Any, Any]]:
        """Per external system: (its limiter or None, its breaker)."""
        if self.supervisor is None:
            return {}
        systems = self.proxy.systems.get(timeout=5)
        breakers, limiters = dict(systems.breakers), dict(systems.limiters)
        return {sid: (limiters.get(sid), breakers.get(sid))
                for sid in sorted(set(breakers) | set(limiters))}

    def _budget_options(self) -> dict[str, Any]:
        """``[cluster] redis``: the CRM budgets shared by the nodes through Redis."""
        cluster = self.config.cluster
        if cluster is None:
            return {}
        return {"redis_url": cluster.redis, "nodes_hint": cluster.nodes_hint}

    def _migrate_state_files(self, config: AppConfig) -> None:
        """Old-named state files of ``config``'s pipelines get their unambiguous names."""
        try:
            notes = migrate_state_files(self.state_dir, config.pipelines)
        except (OSError, sqlite3.Error) as exc:
            log.error("state files not renamed", extra={"error": f"{self.state_dir}: {exc}"})
            return
        for note in notes:
            if "renamed" in note:
                log.info(note)
            else:
                log.warning(note)

    def _on_supervisor_event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "record_failed":  # from a queue actor: about a record, not the pipeline
            self.publish(kind, {**data, "error": redact_text(str(data.get("error")))})
            return
        pid = data.get("pipeline")
        if pid:
            self.states[pid] = {**self.states.get(pid, {}), **data}
            self._mark_dirty((pid,), touched=True)
            self._snapshot_wanted.set()  # written soon, once for a burst of events
        self.publish(kind, data)

    def _snapshot_loop(self, coalesce: float = 0.1) -> None:
        while not self.stopping.is_set():
            self._snapshot_wanted.wait()
            if self.stopping.wait(coalesce):
                return
            self._snapshot_wanted.clear()
            self.write_snapshot(self._take_dirty())

    def _mark_dirty(self, pids: Collection[str], touched: bool = False) -> None:
        with self._dirty_lock:
            self._dirty.update(pids)
            if touched:
                self._touched.update(pids)

    def _take_dirty(self) -> set[str]:
        with self._dirty_lock:
            dirty, self._dirty = self._dirty, set()
            return dirty

    def write_snapshot(self, only: Collection[str] | None = None) -> None:
        """Write the overview the control front serves (atomically; never raises).

        Only the status rows of the pipelines in ``only`` are rebuilt (None: every row);
        the file is not rewritten when nothing in it changed."""
        if self.snapshot_path is None or self.status_rows is None:
            return
        try:
            with self._snapshot_lock:
                config = self.config
                if config is not self._rows_config or self.coordinator is not None:
                    only = None  # a reload, or owners that move without an event here
                for row in self.status_rows(only):
                    self._status_rows.put(row.pipeline, row)
                if only is None:
                    self._status_rows.retain(config.pipelines)
                    self._rows_config = config
                mismatch = [] if self.coordinator is None else self.coordinator.notes()
                head = (self.config_error, mismatch)
                if not (self._status_rows.changed or self._stat_rows.changed
                        or head != self._snapshot_head):
                    return  # the front would read the same figures again
                self._status_rows.changed = self._stat_rows.changed = False
                self._snapshot_head = head
                status = msgspec.to_builtins(p.StatusResult(config_error=self.config_error,
                                                            config_mismatch=mismatch))
                status["pipelines"] = self._status_rows.encoded(sorted(config.pipelines))
                stats = self._stat_rows.encoded(row.pipeline for row in self._stats)
                data = p.encoder.encode({"status": status, "stats": stats})
                tmp = self.snapshot_path.with_suffix(".tmp")
                tmp.write_bytes(data)
                tmp.replace(self.snapshot_path)
        except Exception:
            log.exception("status snapshot not written")

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        if self.server is not None:
            self.server.publish(kind, msgspec.to_builtins(data))

    def last_event_seq(self) -> int:
        return int(self.server.last_seq) if self.server is not None else 0

    def start_stats(self, interval: float = 1.0) -> None:
        """A thread that refreshes live figures every ``interval`` and publishes them, and
        one that writes the status snapshot soon after pipeline events."""
        threading.Thread(target=self._snapshot_loop, name="snapshot", daemon=True).start()
        def loop() -> None:
            while not self.stopping.wait(interval):
                try:
                    self.refresh_stats()
                except Exception:  # the daemon never dies of a stats hiccup
                    log.exception("stats refresh failed")

        self._stats_thread = threading.Thread(target=loop, name="stats", daemon=True)
        self._stats_thread.start()

    def refresh_stats(self) -> None:
        # the figures the actors last published: no ask per pipeline, and a state file is
        # read again only when its queue did something since (idle pipelines cost nothing).
        # A pipeline whose figures are those of the last tick keeps its row (see
        # _stats_inputs): a thousand idle pipelines cost a comparison each, not a row built
        # and encoded each (with the snapshot, about 9% of a core on this 2-core machine)
        progress = self.proxy.progress_all(cached=True).get(timeout=30)
        with self._dirty_lock:
            touched, self._touched = self._touched, set()
        pipelines = self.config.pipelines
        slice_, self._ticks = self._ticks % HEALTH_EVERY, self._ticks + 1
        figures = {pid: _stats_inputs(progress.get(pid, {})) for pid in pipelines}
        asked = [pid for n, pid in enumerate(pipelines)
                 if n % HEALTH_EVERY == slice_ or pid in touched
                 or self._busy(pid, figures[pid])]
        self._health.update(self.proxy.health(asked).get(timeout=30))
        if len(self._health) > len(pipelines):
            self._health = {pid: h for pid, h in self._health.items() if pid in pipelines}
        self.healthy_at = time.monotonic()
        now = self.clock.monotonic()
        since = now - self._tick_at if self._tick_at is not None else 0.0
        self._tick_at = now
        out, changed = [], []
        # [cluster]: a pipeline another node runs changes without a figure moving here; its
        # totals are read again from the shared state each tick
        owned = None if self.coordinator is None else set(self.coordinator.leases.tokens)
        for pid, cfg in pipelines.items():
            prog, h = progress.get(pid, {}), self._health.get(pid, {})
            inputs = (figures[pid], h)
            row = self._stat_rows.rows.get(pid)
            if (row is not None and not row.rate and pid not in touched
                    and (owned is None or pid in owned)
                    and self._inputs.get(pid) == inputs and not _timed(h)):
                out.append(row)
                continue
            self._inputs[pid] = inputs
            queue = prog.get("queue") or {}
            version = queue.get("version")
            counts = self._counts_cache.get(pid)
            if counts is None or version is None or version != self._counted.get(pid):
                counts = pipeline_counts(self.state.reader(cfg.id))
                self._counts_cache[pid] = counts
                self._counted[pid] = version
            if "cursors" in queue:
                self._cursors[pid] = dict(queue["cursors"])
            synced = counts["synced_a_to_b"] + counts["synced_b_to_a"]
            last = self._totals.get(pid, synced)
            rate = (synced - last) / since if since > 0 else 0.0
            self._totals[pid] = synced
            state = "held" if queue.get("held") else h.get("state", "stopped")
            self.states[pid] = {**self.states.get(pid, {}), **h, "state": state,
                                "in_flight": queue.get("in_flight", 0),
                                "warnings": self._warnings(pid, prog),
                                "held": dict(queue.get("held") or {})}
            row = p.PipelineStats(
                pipeline=pid, state=state, queued=counts["queued"],
                in_flight=int(queue.get("in_flight", 0)), synced=synced,
                failed=counts["failed"], rate=round(max(rate, 0.0), 1),
                circuit=h.get("circuit", {}), rate_limit=h.get("rate_limit", {}),
                restarts=int(h.get("restarts", 0)),
                sides=side_statuses(self.states[pid], self.clock.time()))
            self._stat_rows.put(pid, row)
            out.append(row)
            changed.append(pid)
        if len(self._stat_rows.rows) > len(out):
            self._stat_rows.retain(self.config.pipelines)
        self._stats = out
        self._mark_dirty(changed)
        self.write_snapshot(self._take_dirty())
        if self.server is not None:  # the rows as encoded once (see daemon/overview.py)
            shown = [row.pipeline for row in out]
            if owned is not None:  # [cluster]: a pipeline's figures come from its owner only
                shown = [pid for pid in shown if pid in owned]
            self.server.publish("stats", {"pipelines": self._stat_rows.encoded(shown)})

    def _busy(self, pid: str, inputs: tuple[Any, ...]) -> bool:
        """Whether a pipeline's health is wanted this tick: its actors' figures moved, it
        synced in the last tick, or its figures show a wait (a circuit open, a budget)."""
        last, row = self._inputs.get(pid), self._stat_rows.rows.get(pid)
        return (last is None or row is None or last[0] != inputs or bool(row.rate)
                or _timed(last[1]))

    def _warnings(self, pid: str, prog: dict[str, Any]) -> list[str]:
        """The pipeline's recent side warnings as status lines; new ones are published
        as ``sync_warning`` events."""
        seen = self._warned.get(pid, 0.0)
        lines, newest = [], seen
        for w in _side_warnings(prog):
            at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(w["at"])))
            lines.append(f"side {w['side']}, {at}: {w['text']}")  # it stays: say when
            if w["at"] > seen:
                newest = max(newest, w["at"])
                self.publish("sync_warning", {"pipeline": pid, "side": w["side"],
                                              "at": w["at"], "warning": w["text"]})
        self._warned[pid] = newest
        return lines

    def counts_snapshot(self) -> dict[str, dict[str, int]]:
        return dict(self._counts_cache)

    def cursors_snapshot(self) -> dict[str, dict[str, str | None]]:
        """Each pipeline's committed cursors as its queue last published them."""
        return dict(self._cursors)

    def stats_snapshot(self) -> list[p.PipelineStats]:
        return list(self._stats)

    def health(self) -> dict[str, dict[str, Any]]:
        return dict(self.states)

    def is_healthy(self, within: float = 30.0) -> bool:
        """The supervisor answered the stats thread recently (for the systemd watchdog)."""
        return time.monotonic() - self.healthy_at < within

    def _counts(self) -> dict[str, dict[str, int]]:
        return self.proxy.call_all("queue", "counts").get()  # type: ignore[no-any-return]

    def stop(self, drain_timeout: float = 30.0) -> None:
        """Stop polling, let in-flight batches finish (up to ``drain_timeout``), stop all."""
        self.stopping.set()
        if self.coordinator is not None:
            self.coordinator.stop()  # no more leases taken; released once stopped
        if self.supervisor is None:
            return
        try:
            self.proxy.quiesce().get()
            self.proxy.pause_all().get()
            deadline = time.monotonic() + drain_timeout
            while time.monotonic() < deadline:
                if not self.proxy.in_flight_total().get():
                    break
                time.sleep(0.05)  # drain wait between asks, not a test wait
            self.supervisor.stop(timeout=drain_timeout + 30)
        except pykka.ActorDeadError:
            pass
        self.supervisor = None
        self.scheduler.stop()
        if self.coordinator is not None:
            self.coordinator.leave()
        self.state.close()
        if self.config.cluster is not None:
            from recsync.connectors import sharedstate

            sharedstate.install(None)

    # -- cluster: the pipelines whose lease this node holds ----------------------------------
    def replaced(self, note: str) -> None:
        """Another recsyncd runs under this node's name now: stop, exiting with ``note``."""
        self.exit_reason = note
        self.stopping.set()

    def owner_of(self, pid: str) -> str | None:
        """The node running the pipeline (``[cluster]``), else None."""
        return None if self.coordinator is None else self.coordinator.owner(pid)

    def begin_owned(self, cfg: PipelineConfig) -> None:
        """Start a pipeline whose lease this node just acquired; paused when an operator
        paused it (on whichever node ran it then: the pause is in the cluster's state)."""
        self.states.pop(cfg.id, None)
        paused = self.coordinator is not None and self.coordinator.leases.is_paused(cfg.id)
        self.proxy.begin_pipeline(cfg, self.config.rules[cfg.rules], paused).get()

    def stop_owned(self, pid: str, reason: str | None) -> None:
        """Stop a pipeline here (its lease lost, or handed over); ``reason`` shown."""
        try:
            self.proxy.stop_pipeline(pid).get()
        except (ControlError, pykka.ActorDeadError):
            pass
        self.states[pid] = {**self.states.get(pid, {}), "state": "stopped", "error": reason}
        self.write_snapshot()

    def drain_pipeline(self, pid: str, timeout: float) -> None:
        """Pause a pipeline's polling and wait (up to ``timeout``) for its in-flight
        batches to end."""
        self.proxy.set_paused(pid, True).get()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                progress = self.proxy.ask_actor(pid, "queue", "progress").get()
            except (KeyError, RecsyncError, pykka.ActorDeadError, pykka.Timeout):
                return  # not running (any more): nothing in flight
            if not int(progress.get("in_flight", 0)):
                return
            time.sleep(0.05)  # drain wait between asks, not a test wait

    # -- configuration -----------------------------------------------------------------------
    def replace_pipelines(self, updated: dict[str, PipelineConfig]) -> None:
        pipelines = {**self.config.pipelines, **updated}
        self.config = msgspec.structs.replace(self.config, pipelines=pipelines)
        self.write_snapshot()

    def reload_config(self) -> p.ReloadResult:
        """Re-read both files; apply what changed; keep the running config on error."""
        with self._reload_lock:
            try:
                new = load_config(self.config_dir)
                if new.cluster != self.config.cluster:
                    raise ConfigError(
                        "customer_settings.toml: [cluster] changed; where the state lives "
                        "changes only with a restart of recsyncd")
            except ConfigError as exc:
                self.config_error = str(exc)
                log.error("configuration rejected", extra={"error": str(exc)})
                self.publish("config_rejected", {"error": str(exc)})
                self.last_reload = {"ok": False, "error": str(exc), "at": time.time()}
                self.write_snapshot()
                raise ControlError("INVALID", f"{exc} The running configuration is "
                                              "unchanged.") from exc
            diff = diff_configs(self.config, new)
            for pid in diff.removed:
                self.proxy.stop_pipeline(pid).get()
            if new.cluster is None:
                self._migrate_state_files(new)  # with the removed ones' files closed
            for pid in diff.added:
                cfg = new.pipelines[pid]
                if self.coordinator is not None:
                    continue  # started here once this node gets its lease
                if self.serving:
                    self.proxy.begin_pipeline(cfg, new.rules[cfg.rules]).get()
                else:
                    self.proxy.start_pipeline(cfg, new.rules[cfg.rules]).get()
            for pid in diff.changed:
                cfg = new.pipelines[pid]
                if self.coordinator is not None and self.owner_of(pid) != \
                        self.coordinator.node:
                    continue  # runs elsewhere (its owner reloads it)
                if pid in diff.settings_only:
                    self.proxy.apply_settings(cfg).get()
                elif pid in diff.rules_live:
                    self.proxy.apply_settings(cfg).get()
                    self.proxy.apply_ruleset(pid, new.rules[cfg.rules]).get()
                else:
                    self.proxy.replace_pipeline(cfg, new.rules[cfg.rules]).get()
            self.config = new
            self.config_error = None
            if self.coordinator is not None:  # [cluster]: its config hash, registered
                self.coordinator.config_loaded(self.config_dir)
            self.write_snapshot()
            result = p.ReloadResult(sorted(diff.added), sorted(diff.changed),
                                    sorted(diff.removed), sorted(diff.rules_changed))
            self.last_reload = {"ok": True, "at": time.time(), **msgspec.to_builtins(result)}
            log.info("configuration reloaded", extra=msgspec.to_builtins(result))
            self.publish("config_reloaded", msgspec.to_builtins(result))
            return result

    def reload_quietly(self) -> None:
        """For SIGHUP and the file watcher: errors are logged and published, not raised."""
        try:
            self.reload_config()
        except ControlError:
            pass

    # -- --once ------------------------------------------------------------------------------
    def run_once(self, timeout: float | None = None) -> list[PipelineReport]:
        """Run until every pipeline is caught up (or cannot go on); report each."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.stopping.is_set():
            self._polled_idle = False
            reports = self.reports()
            if all(r.done for r in reports):
                return reports
            if deadline is not None and time.monotonic() > deadline:
                return self.reports(final=True)
            # right after asking idle sides for a last poll, look again soon
            self.stopping.wait(0.005 if self._polled_idle else 0.05)
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
            rep.warnings = [f"side {w['side']}: {w['text']}" for w in _side_warnings(prog)]
            queue = prog.get("queue") or {}
            rep.pending = sum(v for k, v in now.items() if k.startswith("ready_"))
            if queue.get("held"):
                rep.state = "held"
                rep.error = "; ".join(queue["held"].values())
            if (not rep.done and prog["state"] == "running" and not queue.get("pending")
                    and not queue.get("in_flight")):
                self.proxy.poll_idle(pid)
                self._polled_idle = True
            out.append(rep)
        return out


def _share_connector_state(cluster: Any, schema: str | None) -> None:
    """[cluster]: the connectors keep their own state (the Outreach refresh token) in the
    cluster's PostgreSQL, where the node a pipeline moves to finds it."""
    from recsync.connectors import sharedstate
    from recsync.state.pgbackend import SCHEMA

    sharedstate.install(sharedstate.SharedConnectorState(cluster.state_url(),
                                                         schema or SCHEMA))


def _stats_inputs(prog: dict[str, Any]) -> tuple[Any, ...]:
    """What a pipeline's stats and status rows are made of, as its actors published it
    (with its health, the rest): equal on two ticks, the rows are too (the poll cycles'
    times, which change on every poll of an idle side, are left out)."""
    warned = tuple(((poller.get("warnings") or [{}])[-1].get("at"), poller.get("error"))
                   for poller in (prog.get("pollers") or {}).values())
    return (prog.get("state"), prog.get("error"), prog.get("restarts"), prog.get("queue"),
            warned)


def _timed(h: dict[str, Any]) -> bool:
    """Whether a side's figures hold a wait whose end the rows show (until it passes)."""
    return any(side.get("circuit_retry_at") is not None
               or side.get("rate_limited_until") is not None
               for side in (h.get("sides") or {}).values())


def _side_warnings(prog: dict[str, Any]) -> list[dict[str, Any]]:
    """The warnings the pollers of a pipeline hold, oldest first."""
    found = [w for poller in (prog.get("pollers") or {}).values()
             for w in poller.get("warnings") or []]
    return sorted(found, key=lambda w: float(w["at"]))


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
