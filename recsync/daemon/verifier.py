"""`verify.run`: list both sides of a pipeline, compare them under the rules, and repair.

Runs on a control worker thread (never the bridge). It asks the pipeline's connector
actors directly for pages of each side's listing (so reads go through the side's rate
limit and circuit breaker, between the pipeline's own calls), maps them into A space
here, reads the links and queued keys through its own read-only connection to the state
file, and compares with :func:`recsync.verify.compare`. A repair is queued through the
queue actor (``QueueActor.repair``), under the mass-delete guard. Progress goes out as
``verify_progress`` events.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import pykka

from recsync.actors.protocol import Call
from recsync.config import PipelineConfig
from recsync.daemon import protocol as p
from recsync.daemon.records import StateRef, state_reader
from recsync.errors import ConnectorConfigError, ConnectorError, ControlError, RecsyncError
from recsync.messages import Side, source_of, target_of
from recsync.rules import CompiledRules, compile_rules, content_hash
from recsync.state.store import RepairItem
from recsync.verify import Category, Comparison, Fix, Link, Seen, compare

log = logging.getLogger(__name__)
ASK_TIMEOUT = 120.0  # one page of a listing, or one fetch
MAX_WAIT = 300.0  # the longest a rate limit or open circuit may hold a listing up
FETCH = 200  # records fetched per call for a repair
MAX_RUNNING = 2  # verifies at once (the control server has 4 worker threads)
Publish = Callable[[str, dict[str, Any]], None]
_slots = threading.BoundedSemaphore(MAX_RUNNING)
_lock = threading.Lock()
_running: set[str] = set()  # pipelines being verified


class Verifier:
    """Verifies pipelines of a running recsyncd (``daemon``: recsync.daemon.app.Daemon)."""

    def __init__(self, daemon: Any, *, publish: Publish | None = None) -> None:
        self.daemon = daemon
        self.publish: Publish = publish or daemon.publish
        self._last_event = 0.0

    def run(self, cmd: p.VerifyRun, chosen: Iterable[PipelineConfig]) -> list[p.VerifyResult]:
        """Verify each pipeline in turn. At most ``MAX_RUNNING`` verifies run at once (the
        control plane's other commands keep worker threads), one per pipeline."""
        if not _slots.acquire(blocking=False):
            raise ControlError("UNAVAILABLE", f"{MAX_RUNNING} verifies are running already; "
                                              "try again when one has finished.")
        chosen = list(chosen)
        try:
            results = []
            for cfg in chosen:
                try:
                    results.append(self._one_at_a_time(cfg, cmd))
                except ControlError as exc:
                    if len(chosen) == 1:
                        raise
                    # one pipeline that cannot be verified must not hide the others' results
                    results.append(not_verified(cfg.id, exc))
            return results
        finally:
            _slots.release()

    def _one_at_a_time(self, cfg: PipelineConfig, cmd: p.VerifyRun) -> p.VerifyResult:
        with _lock:
            if cfg.id in _running:
                raise ControlError("UNAVAILABLE", f"pipeline {cfg.id} is being verified "
                                                  "already; wait for that verify to finish.")
            _running.add(cfg.id)
        try:
            return self.verify(cfg, cmd.repair, cmd.limit)
        finally:
            with _lock:
                _running.discard(cfg.id)

    # ---- one pipeline --------------------------------------------------------------------
    def verify(self, cfg: PipelineConfig, repair: bool, limit: int) -> p.VerifyResult:
        started = time.monotonic()
        rules = compile_rules(self.daemon.config.rules[cfg.rules])
        try:
            a = self._list(cfg, rules, "a")
            b = self._list(cfg, rules, "b")
            self._progress(cfg.id, "comparing", None, len(a) + len(b), None, force=True)
            where = self.daemon.state.reader(cfg.id)
            # the links matter only for records not the same on both sides
            candidates = [k for k, s in a.items() if (k not in b or b[k].hash != s.hash)]
            candidates += [k for k in b if k not in a]
            links, pending = _state(where, candidates)
            result = compare(rules, a, b, links, pending)
            repaired = None
            if repair and result.fixes:
                self._progress(cfg.id, "repairing", None, 0, len(result.fixes), force=True)
                repaired = self._repair(cfg, rules, result, a, b)
        except pykka.ActorDeadError as exc:
            raise ControlError("UNAVAILABLE", f"pipeline {cfg.id} restarted while it was "
                                              "being verified; run verify again.") from exc
        except pykka.Timeout as exc:
            raise ControlError("UNAVAILABLE", f"a side of pipeline {cfg.id} did not answer "
                                              f"within {ASK_TIMEOUT:g}s; try again.") from exc
        except ConnectorConfigError as exc:
            raise ControlError("INVALID", f"{cfg.id}: {exc}") from exc
        except ConnectorError as exc:
            raise ControlError("UNAVAILABLE", f"{cfg.id}: {exc}") from exc
        self._progress(cfg.id, "done", None, result.a_records + result.b_records, None,
                       force=True)
        def category(name: Category) -> p.VerifyCategory:
            return p.VerifyCategory(result.count(name), result.first(name, limit))

        return p.VerifyResult(
            pipeline=cfg.id, agree=result.agree, a_records=result.a_records,
            b_records=result.b_records,
            missing_a=category("missing_a"), missing_b=category("missing_b"),
            extra_a=category("extra_a"), extra_b=category("extra_b"),
            different=category("different"),
            pending=result.pending, ignored=result.ignored,
            seconds=round(time.monotonic() - started, 3), repair=repaired)

    def _ref(self, cfg: PipelineConfig, role: str) -> pykka.ActorRef[Any]:
        try:
            return self.daemon.proxy.peer_ref(cfg.id, role).get()  # type: ignore[no-any-return]
        except (RecsyncError, KeyError) as exc:
            raise ControlError("UNAVAILABLE", f"{exc}; verify needs the pipeline running "
                                              "(or paused): see `recsync status`.") from exc

    def _ask(self, ref: pykka.ActorRef[Any], name: str, *args: Any) -> Any:
        return ref.ask(Call(name, args), timeout=ASK_TIMEOUT)

    def _list(self, cfg: PipelineConfig, rules: CompiledRules, side: Side) -> dict[str, Seen]:
        ref = self._ref(cfg, f"connector_{side}")
        total = self._ask(ref, "count_records")
        page_size = max(100, cfg.settings.page_size)
        seen: dict[str, Seen] = {}
        position: str | None = None
        self._progress(cfg.id, f"listing {side}", side, 0, total, force=True)
        while True:
            changes, position, retry_at = self._ask(ref, "list_page", position, page_size)
            if changes is None:
                self._wait(retry_at, cfg.id, f"listing {side}", side, len(seen), total)
                continue
            for prepared in rules.prepare(side, changes):
                seen[prepared.key] = Seen(prepared.hash or "", prepared.passes,
                                          prepared.modified)
            self._progress(cfg.id, f"listing {side}", side, len(seen), total,
                           force=position is None)
            if position is None:
                return seen

    def _repair(self, cfg: PipelineConfig, rules: CompiledRules, result: Comparison,
                a: dict[str, Seen], b: dict[str, Seen]) -> p.VerifyRepair:
        items: list[RepairItem] = []
        upserts: dict[Side, list[Fix]] = {"a": [], "b": []}
        for fix in result.fixes:
            if fix.op == "delete":
                holder = target_of(fix.direction)
                held = (a if holder == "a" else b)[fix.key]
                items.append(RepairItem(
                    fix.direction, fix.key, None, None, held.modified,
                    held.hash if holder == "a" else None, held.hash if holder == "b" else None,
                    f"verify: {fix.category}; deleted on side {holder}"))
            else:
                upserts[source_of(fix.direction)].append(fix)
        done = 0
        for source, fixes in upserts.items():
            ref = self._ref(cfg, f"connector_{source}")
            for i in range(0, len(fixes), FETCH):
                part = fixes[i:i + FETCH]
                records = self._fetch(ref, [f.key for f in part], cfg.id)
                for fix in part:
                    record = records.get(fix.key)
                    if record is None:
                        continue  # gone since the listing: the next poll sees it
                    content = rules.to_a_space(source, record)
                    chash = content_hash(content)
                    target: Side = "b" if source == "a" else "a"
                    there = (a if target == "a" else b).get(fix.key)
                    there_hash = there.hash if there is not None else None
                    modified = (a if source == "a" else b)[fix.key].modified
                    items.append(RepairItem(
                        fix.direction, fix.key, content, chash, modified,
                        chash if source == "a" else there_hash,
                        chash if source == "b" else there_hash,
                        f"verify: {fix.category}; copied from side {source}"))
                done += len(part)
                self._progress(cfg.id, "repairing", None, done, len(result.fixes))
        answer = self._ask(self._ref(cfg, "queue"), "repair", items)
        return p.VerifyRepair(queued=answer["queued"], skipped=answer["skipped"],
                              held=answer["held"])

    def _fetch(self, ref: pykka.ActorRef[Any], keys: list[str], pid: str) -> dict[str, Any]:
        while True:
            records, retry_at = self._ask(ref, "fetch_page", keys)
            if records is not None:
                return records  # type: ignore[no-any-return]
            self._wait(retry_at, pid, "repairing", None, 0, None)

    def _progress(self, pid: str, phase: str, side: Side | None, done: int,
                  total: int | None, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_event < 0.2:
            return  # at most five events a second
        self._last_event = now
        self.publish("verify_progress", {"pipeline": pid, "phase": phase, "side": side,
                                         "done": done, "total": total})


    def _wait(self, retry_at: float | None, pid: str, phase: str, side: Side | None,
              done: int, total: int | None) -> None:
        """Wait out a rate limit or an open circuit, telling the client it is waiting (an
        event every second: its timeout bounds the silence, and a wait may be longer)."""
        end = time.monotonic() + max(0.0, (retry_at or 0.0) - time.time())
        if end - time.monotonic() > MAX_WAIT:
            _wait_until(retry_at, pid)  # refuses, saying so
        until = time.strftime("%H:%M:%S", time.localtime(retry_at or time.time()))
        while (left := end - time.monotonic()) > 0:
            self._progress(pid, f"{phase} (rate limit or circuit: waiting until {until})",
                           side, done, total, force=True)
            threading.Event().wait(min(left, 1.0))
        threading.Event().wait(0.05)


def _wait_until(retry_at: float | None, pid: str) -> None:
    """Wait out a rate limit or an open circuit (on this worker thread)."""
    delay = (retry_at or 0.0) - time.time()
    if delay > MAX_WAIT:
        raise ControlError("UNAVAILABLE", f"{pid}: a side is rate limited or its circuit is "
                                          f"open for {delay:.0f}s more; verify again later.")
    threading.Event().wait(max(0.05, delay))


def _state(where: StateRef, keys: list[str]) -> tuple[dict[str, Link], set[str]]:
    """The links of ``keys`` and the keys with queued work (not failed), read through the
    control plane's reader of the pipeline's state."""
    with state_reader(where) as db:
        if db is None:
            return {}, set()
        pending = db.pending_keys()
        links = {k: Link(a, b) for k, (a, b) in db.link_hashes(keys).items()}
    return links, pending


def not_verified(pipeline: str, exc: ControlError) -> p.VerifyResult:
    """The result of a pipeline whose verify failed, beside the others of one command."""
    none = p.VerifyCategory(0, [])
    return p.VerifyResult(
        pipeline=pipeline, agree=False, a_records=0, b_records=0, missing_a=none,
        missing_b=none, extra_a=none, extra_b=none, different=none, pending=0, ignored=0,
        seconds=0.0, error=f"[{exc.code}] {exc}")
