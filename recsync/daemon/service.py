"""ControlService: what each control command does inside recsyncd.

Read-only commands (status, failed, stats, snapshot, rules show/test, crms, schema) read
the state files through their own read-only connections and cached figures: they never
wait for an actor, so a busy pipeline cannot stall them. The others act through the
supervisor and run on the control server's worker threads.
"""

from __future__ import annotations

import contextvars
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, Literal

import msgspec
import tomlkit

from recsync import rules as rules_mod
from recsync.config import (
    RULES_FILE,
    SETTINGS_FILE,
    AppConfig,
    PipelineConfig,
    Settings,
    load_config,
    load_rules_text,
    settings_with_overrides,
)
from recsync.connectors import connector_names, get_connector_class
from recsync.daemon import protocol as p
from recsync.daemon.configshow import pipeline_settings
from recsync.daemon.plans import faults_to_set, other_side_plan
from recsync.daemon.records import (
    EMPTY_COUNTS,
    StateRef,
    failed_records,
    pipeline_counts,
    pipeline_cursors,
    record_status,
)
from recsync.daemon.sides import side_statuses
from recsync.daemon.verifier import Verifier
from recsync.errors import ConfigError, ControlError, RecsyncError
from recsync.messages import Change, ChangePage, key_text

log = logging.getLogger(__name__)
INLINE = (p.StatusGet, p.FailedList, p.StatsGet, p.SnapshotGet, p.RulesShow, p.RulesTest,
          p.CrmsList, p.CrmsSchema, p.ConfigShow)
# [cluster]: the pipelines a routed command acts on here (None: every one it names)
_scope: contextvars.ContextVar[frozenset[str] | None] = contextvars.ContextVar(
    "scope", default=None)


class ControlService:
    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon  # recsync.daemon.app.Daemon
        self.lock = threading.Lock()  # one configuration change at a time
        self.handlers: dict[type, Callable[[Any], Any]] = {
            p.StatusGet: self.status, p.FailedList: self.failed, p.RetryRecord: self.retry,
            p.RetryFailed: self.retry_failed, p.SyncEvent: self.sync_event,
            p.SyncNow: self.sync_now, p.ConfigOverride: self.config_override,
            p.RulesShow: self.rules_show, p.RulesSet: self.rules_set,
            p.RulesTest: self.rules_test, p.Reload: self.reload, p.Pause: self.pause,
            p.Resume: self.resume, p.ConfirmDeletes: self.confirm_deletes,
            p.CrmsList: self.crms_list, p.CrmsSchema: self.crms_schema,
            p.StatsGet: self.stats, p.SnapshotGet: self.snapshot,
            p.MockPush: self.mock_push, p.MockList: self.mock_list,
            p.MockFaults: self.mock_faults, p.VerifyRun: self.verify_run,
            p.ConfigShow: self.config_show,
        }

        self.router: Any = None  # [cluster]: recsync.cluster.routing.Router

    def inline(self, cmd: p.Command) -> bool:
        if self.router is not None:  # a routed command may wait for another node
            from recsync.cluster.routing import ROUTED

            if isinstance(cmd, ROUTED):
                return False
        return isinstance(cmd, INLINE)

    def handle(self, cmd: p.Command) -> Any:
        if self.router is not None:
            return self.router.handle(cmd)
        return self.dispatch(cmd)

    def run_scoped(self, cmd: p.Command, pipelines: list[str]) -> Any:
        """Run ``cmd`` here on ``pipelines`` only (the ones of it this node owns)."""
        token = _scope.set(frozenset(pipelines))
        try:
            return self.dispatch(cmd)
        finally:
            _scope.reset(token)

    def dispatch(self, cmd: p.Command) -> Any:
        """Run ``cmd`` on this node."""
        try:
            return self.handlers[type(cmd)](cmd)
        except ControlError:
            raise
        except ConfigError as exc:
            raise ControlError("INVALID", str(exc)) from exc
        except RecsyncError as exc:
            raise ControlError("UNAVAILABLE", str(exc)) from exc

    # -- helpers -------------------------------------------------------------------------
    @property
    def config(self) -> AppConfig:
        return self.daemon.config  # type: ignore[no-any-return]

    def _pipelines(self, customer: str | None, pipeline: str | None = None,
                   one: bool = False) -> list[PipelineConfig]:
        chosen = [c for c in self.config.pipelines.values()
                  if (customer is None or c.customer == customer)
                  and (pipeline is None or c.name == pipeline)]
        if not chosen:
            what = f"customer {customer!r}" + (f" has no pipeline {pipeline!r}" if pipeline
                                                else " has no pipelines")
            raise ControlError("NOT_FOUND", f"{what}; see `recsync status` for the list.")
        if one and len(chosen) > 1:
            names = ", ".join(c.name for c in chosen)
            raise ControlError("INVALID", f"customer {customer!r} has several pipelines "
                                          f"({names}); name one with --pipeline.")
        return self._scoped(chosen)

    @staticmethod
    def _scoped(chosen: list[PipelineConfig]) -> list[PipelineConfig]:
        """``chosen`` less the pipelines outside a routed command's scope."""
        scope = _scope.get()
        return chosen if scope is None else [c for c in chosen if c.id in scope]

    def _every(self) -> list[PipelineConfig]:
        """Every pipeline (in a routed command's scope)."""
        return self._scoped(list(self.config.pipelines.values()))

    def _state_path(self, cfg: PipelineConfig) -> StateRef:
        return self.daemon.state.reader(cfg.id)  # type: ignore[no-any-return]

    def _ask(self, pid: str, role: str, name: str, *args: Any) -> Any:
        return self.daemon.proxy.ask_actor(pid, role, name, *args).get()

    # -- read-only -------------------------------------------------------------------------
    def status(self, cmd: p.StatusGet) -> p.StatusResult:
        if cmd.record_id is None:
            coordinator = self.daemon.coordinator
            return p.StatusResult(pipelines=self._pipeline_statuses(),
                                  config_error=self.daemon.config_error,
                                  config_mismatch=[] if coordinator is None else
                                  coordinator.notes())
        records = []
        for cfg in self.config.pipelines.values():
            found = record_status(self._state_path(cfg), cfg.id, key_text(cmd.record_id),
                                  cfg.settings.history_per_record)
            if found is not None:
                records.append(found)
        if not records:
            raise ControlError("NOT_FOUND", f"record {cmd.record_id!r} is not known to any "
                                            "pipeline (never seen, or filtered out).")
        return p.StatusResult(records=records)

    def pipeline_statuses(self, only: Collection[str] | None = None) -> list[p.PipelineStatus]:
        """The status rows of every pipeline, or of those in ``only`` (the daemon's status
        snapshot rebuilds only the rows of pipelines that changed)."""
        return self._pipeline_statuses(only)

    def _pipeline_statuses(self, only: Collection[str] | None = None) -> list[p.PipelineStatus]:
        health = self.daemon.health()
        cached = self.daemon.counts_snapshot()
        cursors = self.daemon.cursors_snapshot()
        out = []
        coordinator = self.daemon.coordinator
        for pid, cfg in sorted(self.config.pipelines.items()):
            if only is not None and pid not in only:
                continue
            h = health.get(pid, {})
            remote = None if coordinator is None else remote_state(coordinator, pid)
            # figures of the last stats tick (at most a second old): a status query must
            # not scan a large queue while the pipeline is busy filling it
            # a serving daemon begins every pipeline as `starting` (at once: not a moment
            # later, when its event comes in)
            unknown = "starting" if self.daemon.serving else "stopped"
            starting = h.get("state", unknown) == "starting"
            # a pipeline still starting has no figures yet: its state file is not opened
            # (a thousand of them starting must not hold up `status`)
            counts = cached.get(pid) or (dict(EMPTY_COUNTS) if starting else
                                         pipeline_counts(self._state_path(cfg)))
            out.append(p.PipelineStatus(
                pipeline=pid, customer=cfg.customer, name=cfg.name, a=cfg.a.connector,
                b=cfg.b.connector, state=h.get("state", unknown), error=h.get("error"),
                queued=counts["queued"], in_flight=int(h.get("in_flight", 0)),
                failed=counts["failed"], synced_a_to_b=counts["synced_a_to_b"],
                synced_b_to_a=counts["synced_b_to_a"], conflicts=counts["conflicts"],
                restarts=int(h.get("restarts", 0)),
                cursors=(cursors[pid] if pid in cursors else {} if starting
                         else pipeline_cursors(self._state_path(cfg))),
                warnings=list(h.get("warnings", [])),
                sides=side_statuses(h, self.daemon.clock.time()),
                settings=live_settings(cfg.settings), node=self.daemon.owner_of(pid)))
            if remote is not None:  # [cluster]: run elsewhere: as its owner says
                out[-1] = msgspec.structs.replace(out[-1], **remote)
        return out

    def failed(self, cmd: p.FailedList) -> list[p.FailedRecord]:
        out: list[p.FailedRecord] = []
        for cfg in self._pipelines(cmd.customer) if cmd.customer else \
                self.config.pipelines.values():
            out.extend(failed_records(self._state_path(cfg), cfg.id, cmd.limit - len(out)))
            if len(out) >= cmd.limit:
                break
        return out

    def stats(self, _cmd: p.StatsGet) -> list[p.PipelineStats]:
        return self.daemon.stats_snapshot()  # type: ignore[no-any-return]

    def snapshot(self, _cmd: p.SnapshotGet) -> dict[str, Any]:
        seq = self.daemon.last_event_seq()
        return {
            "seq": seq,
            "endpoint": self.daemon.endpoints[0] if self.daemon.endpoints else None,
            "status": self.status(p.StatusGet()),
            "stats": self.daemon.stats_snapshot(),
            "failed": self.failed(p.FailedList(limit=500)),
            "rules": sorted(self.config.rules),
            "last_reload": self.daemon.last_reload,
            # [cluster]: the node answering (its own events are numbered by ``seq``)
            "node": None if self.daemon.coordinator is None else self.daemon.coordinator.node,
        }

    def config_show(self, cmd: p.ConfigShow) -> list[p.PipelineSettings]:
        config = self.config
        if cmd.customer is None and cmd.pipeline is None:
            chosen = [config.pipelines[pid] for pid in sorted(config.pipelines)]
        elif cmd.customer is None:
            chosen = [c for pid, c in sorted(config.pipelines.items()) if c.name == cmd.pipeline]
            if not chosen:
                raise ControlError("NOT_FOUND", f"no customer has a pipeline {cmd.pipeline!r}; "
                                                "see `recsync status` for the list.")
        else:
            chosen = sorted(self._pipelines(cmd.customer, cmd.pipeline), key=lambda c: c.id)
        return [pipeline_settings(config, c) for c in chosen]

    def rules_show(self, cmd: p.RulesShow) -> dict[str, Any]:
        sets = self.config.rules
        if cmd.name is not None:
            if cmd.name not in sets:
                raise ControlError("NOT_FOUND", f"no rule set {cmd.name!r} in rules.toml; "
                                                f"there are: {', '.join(sorted(sets))}.")
            sets = {cmd.name: sets[cmd.name]}
        return {name: msgspec.to_builtins(rs) for name, rs in sets.items()}

    def rules_test(self, cmd: p.RulesTest) -> dict[str, Any]:
        ruleset = self.config.rules.get(cmd.name)
        if ruleset is None:
            raise ControlError("NOT_FOUND", f"no rule set {cmd.name!r} in rules.toml; "
                                            f"there are: {', '.join(sorted(self.config.rules))}.")
        return rules_mod.explain(ruleset, cmd.side, cmd.record)

    def crms_list(self, _cmd: p.CrmsList) -> list[dict[str, str]]:
        out = []
        for name in connector_names():
            cls = get_connector_class(name)
            doc = (cls.__doc__ or "").strip().splitlines()
            out.append({"name": name, "description": doc[0] if doc else ""})
        return out

    def crms_schema(self, cmd: p.CrmsSchema) -> dict[str, Any]:
        if cmd.name not in connector_names():
            raise ControlError("NOT_FOUND", f"no connector {cmd.name!r}; registered: "
                                            f"{', '.join(connector_names())}.")
        return msgspec.json.schema(get_connector_class(cmd.name).Config)

    # -- embedded mock CRMs ----------------------------------------------------------------
    @staticmethod
    def _mock(kind: str) -> Any:
        from recsync import mock

        server = mock.running().get(kind)
        if server is None:
            raise ControlError("NOT_FOUND", f"recsyncd runs no embedded mock {kind}: give a "
                                            f"pipeline side `mock = true`, or run "
                                            f"`recsync mock serve {kind}`.")
        return server

    def mock_push(self, cmd: p.MockPush) -> dict[str, Any]:
        try:
            return self._mock(cmd.kind).push(cmd.record)  # type: ignore[no-any-return]
        except (ValueError, KeyError, TypeError) as exc:
            message = f"the mock {cmd.kind} refused the record: {exc}"
            raise ControlError("INVALID", message) from exc

    def mock_list(self, cmd: p.MockList) -> list[dict[str, Any]]:
        return self._mock(cmd.kind).list_records()  # type: ignore[no-any-return]

    def mock_faults(self, cmd: p.MockFaults) -> dict[str, Any]:
        requested = {k: v for k, v in msgspec.structs.asdict(cmd).items()
                     if k not in ("kind", "clear") and v is not None}
        server = self._mock(cmd.kind)
        known: dict[str, Any] = server.set_faults()
        unknown = sorted(set(requested) - set(known))
        if unknown:
            raise ControlError("INVALID", f"the mock {cmd.kind} has no fault {unknown[0]!r}; "
                                          f"it has: {', '.join(known)}.")
        try:
            return server.set_faults(  # type: ignore[no-any-return]
                **faults_to_set(requested, cmd.clear, known))
        except (ValueError, TypeError) as exc:
            raise ControlError("INVALID", f"the mock {cmd.kind} refused the faults: {exc}") from exc

    # -- actions ---------------------------------------------------------------------------
    def retry(self, cmd: p.RetryRecord) -> p.CountResult:
        key, total, where = key_text(cmd.record_id), 0, []
        for cfg in self._every():
            n = self._ask(cfg.id, "queue", "retry_failed", [key])
            if n:
                total += n
                where.append(cfg.id)
        if not total:
            raise ControlError("NOT_FOUND", f"record {cmd.record_id!r} is not failed in any "
                                            "pipeline; see `recsync failed`.")
        return p.CountResult(total, where)

    def retry_failed(self, cmd: p.RetryFailed) -> p.CountResult:
        chosen = self._pipelines(cmd.customer) if cmd.customer else self._every()
        total, where = 0, []
        for cfg in chosen:
            n = self._ask(cfg.id, "queue", "retry_failed", None)
            if n:
                total += n
                where.append(cfg.id)
        return p.CountResult(total, where)

    def sync_event(self, cmd: p.SyncEvent) -> dict[str, Any]:
        (cfg,) = self._pipelines(cmd.customer, cmd.pipeline, one=True)
        side_cfg = cfg.a if cmd.side == "a" else cfg.b
        key_field = side_cfg.options.key
        if cmd.record.get(key_field) in (None, ""):
            raise ControlError("INVALID", f"the record has no {key_field!r}, the key field of "
                                          f"side {cmd.side} of {cfg.id}.")
        key = key_text(cmd.record[key_field])
        record: dict[str, Any] | None = dict(cmd.record)
        if cmd.op == "read":
            found = self._ask(cfg.id, f"connector_{cmd.side}", "fetch_records", [key])
            record = found.get(key)
        op: Literal["upsert", "delete"] = (
            "delete" if cmd.op == "delete" or record is None else "upsert")
        found_status = record_status(self._state_path(cfg), cfg.id, key)
        linked = found_status is not None and (
            found_status.on_b if cmd.side == "a" else found_status.on_a)
        plan = other_side_plan(cfg, self.config.rules[cfg.rules], cmd.side, op, record, linked)
        change = Change(key, op, None if op == "delete" else record,
                        self.daemon.clock.time())
        self.daemon.proxy.submit(cfg.id, cmd.side, ChangePage([change], None)).get()
        return {"pipeline": cfg.id, "key": key, "op": op, "side": cmd.side, "other_side": plan}

    def sync_now(self, cmd: p.SyncNow) -> p.CountResult:
        chosen = self._pipelines(cmd.customer, cmd.pipeline)
        sides = {"a_to_b": ("a",), "b_to_a": ("b",), None: ("a", "b")}[cmd.direction]
        for cfg in chosen:
            self.daemon.proxy.sync_now(cfg.id, sides, cmd.full).get()
        return p.CountResult(len(chosen), [c.id for c in chosen])

    def pause(self, cmd: p.Pause) -> p.CountResult:
        return self._set_paused(cmd.customer, cmd.pipeline, True)

    def resume(self, cmd: p.Resume) -> p.CountResult:
        return self._set_paused(cmd.customer, cmd.pipeline, False)

    def _set_paused(self, customer: str, pipeline: str | None, paused: bool) -> p.CountResult:
        """Pause (resume) the chosen pipelines; counts only those that were not (were)
        paused). With ``[cluster]`` the pause is kept in the cluster's state too, so the
        node a pipeline moves to starts it paused."""
        chosen = self._pipelines(customer, pipeline)
        coordinator = self.daemon.coordinator
        if coordinator is not None:
            import psycopg  # [cluster] only

            try:
                for cfg in chosen:
                    coordinator.leases.set_paused(cfg.id, paused)
            except psycopg.Error as exc:
                raise ControlError("UNAVAILABLE", (
                    "cannot note the pause in the cluster's state database "
                    f"({type(exc).__name__}); is its PostgreSQL reachable? try again")
                ) from exc
        changed = [cfg.id for cfg in chosen
                   if self.daemon.proxy.change_paused(cfg.id, paused).get()]
        return p.CountResult(len(changed), changed)

    def confirm_deletes(self, cmd: p.ConfirmDeletes) -> p.CountResult:
        """Let the passes the mass-delete guard holds go through once: on the chosen
        pipelines, on ``cmd.side`` or every held side. Nothing held: nothing changes."""
        confirmed: list[str] = []
        sides = 0
        for cfg in self._pipelines(cmd.customer, cmd.pipeline):
            try:
                held = self._ask(cfg.id, "queue", "progress").get("held") or {}
            except RecsyncError:  # not running: its guard holds nothing now
                continue
            for side in sorted(held):
                if cmd.side in (None, side):
                    self.daemon.proxy.allow_deletes(cfg.id, side).get()
                    sides += 1
                    if cfg.id not in confirmed:
                        confirmed.append(cfg.id)
        return p.CountResult(sides, confirmed)

    def config_override(self, cmd: p.ConfigOverride) -> p.CountResult:
        overrides: dict[str, Any] = {
            k: v for k, v in (("batch_size", cmd.batch_size),
                              ("flush_interval", cmd.flush_interval),
                              ("poll_interval", cmd.poll_interval)) if v is not None}
        limit = {k: v for k, v in (("max_requests", cmd.rate_limit_max),
                                   ("window_seconds", cmd.rate_limit_window)) if v is not None}
        if limit:
            overrides["rate_limit"] = limit
        if not overrides:
            raise ControlError("INVALID", "nothing to change: give --batch-size, "
                                          "--flush-interval, --poll-interval or --rate-limit.")
        with self.lock:
            chosen = self._pipelines(cmd.customer, cmd.pipeline)
            updated = {}
            for cfg in chosen:
                settings = settings_with_overrides(cfg.settings, **overrides)
                updated[cfg.id] = msgspec.structs.replace(cfg, settings=settings)
            if cmd.persist:
                self._persist_overrides(cmd.customer, cmd.pipeline, overrides)
            for new in updated.values():
                self.daemon.proxy.apply_settings(new).get()
            self.daemon.replace_pipelines(updated)
        return p.CountResult(len(updated), sorted(updated))

    def _persist_overrides(self, customer: str, pipeline: str | None,
                           overrides: dict[str, Any]) -> None:
        """Write ``overrides`` into customer_settings.toml, the rest of the file (comments,
        layout) as it was; the file watcher takes the result as the running configuration
        (it is: the overrides are applied live), so no reload drops the other pipelines'
        live overrides."""
        path = self.daemon.config_dir / SETTINGS_FILE
        doc = tomlkit.parse(path.read_text())
        table = doc.setdefault("customers", tomlkit.table(is_super_table=True)).setdefault(
            customer, tomlkit.table())
        if pipeline is not None:
            table = table.setdefault("pipelines", tomlkit.table(is_super_table=True)).setdefault(
                pipeline, tomlkit.table())
        for key, value in overrides.items():
            if isinstance(value, dict) and key in table:
                table[key].update(value)
            else:
                table[key] = value
        text = tomlkit.dumps(doc)
        load_config_text_check(self.daemon.config_dir, text, None)
        atomic_write(path, text)
        if self.daemon.watcher is not None:
            self.daemon.watcher.accept()

    def rules_set(self, cmd: p.RulesSet) -> p.ReloadResult:
        with self.lock:
            load_rules_text(cmd.text)  # syntax and shape first: nothing changes on error
            load_config_text_check(self.daemon.config_dir, None, cmd.text)
            atomic_write(self.daemon.config_dir / RULES_FILE, cmd.text)
            return self.daemon.reload_config()  # type: ignore[no-any-return]

    def reload(self, _cmd: p.Reload) -> p.ReloadResult:
        with self.lock:
            return self.daemon.reload_config()  # type: ignore[no-any-return]


    # -- verify ----------------------------------------------------------------------------
    def verify_run(self, cmd: p.VerifyRun) -> list[p.VerifyResult]:
        """Compare (and repair) pipelines; runs long, on a worker thread (not inline)."""
        if cmd.customer is None and cmd.pipeline is not None:
            raise ControlError("INVALID", "--pipeline needs a CUSTOMER.")
        if cmd.limit < 0:
            raise ControlError("INVALID", f"limit must be 0 or more, not {cmd.limit}.")
        chosen = (self._pipelines(cmd.customer, cmd.pipeline) if cmd.customer else
                  sorted(self._every(), key=lambda c: c.id))
        return Verifier(self.daemon).run(cmd, chosen)

def load_config_text_check(config_dir: Path, settings_text: str | None,
                           rules_text: str | None) -> AppConfig:
    """Validate a would-be pair of config files (in a scratch copy) before writing them."""
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        for name, text in ((SETTINGS_FILE, settings_text), (RULES_FILE, rules_text)):
            source = config_dir / name
            (scratch / name).write_text(text if text is not None else source.read_text())
        try:
            config = load_config(scratch)
        except ConfigError as exc:
            message = str(exc).replace(str(scratch), str(config_dir))
            raise ControlError("INVALID", message) from exc
    return config


def atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remote_state(coordinator: Any, pid: str) -> dict[str, Any] | None:
    """[cluster]: the status fields of a pipeline another node owns, as that node last
    published them (None: owned here, by nobody, or nothing heard yet)."""
    owner = coordinator.owner(pid)
    if owner is None or owner == coordinator.node:
        return None
    row = coordinator.remote.get(pid, owner)
    if row is None:
        return None
    out: dict[str, Any] = {k: row[k] for k in ("state", "error") if k in row}
    for k in ("in_flight", "restarts"):
        if k in row:
            out[k] = int(row[k])
    if isinstance(row.get("sides"), dict):
        out["sides"] = msgspec.convert(row["sides"], dict[str, p.SideStatus])
    return out


def live_settings(settings: Settings) -> dict[str, float]:
    """The settings `config.override` can change, by its field names (for status output)."""
    return {
        "batch_size": settings.batch_size,
        "flush_interval": settings.flush_interval,
        "poll_interval": settings.poll_interval,
        "rate_limit_max": settings.rate_limit.max_requests,
        "rate_limit_window": settings.rate_limit.window_seconds,
    }
