"""ConnectorActor: does one side's I/O, behind its rate limiter and circuit breaker."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from recsync import rules as rules_mod
from recsync.actors.base import FailureSink, PipelineActor
from recsync.actors.protocol import BatchDone, Call, PageRead, ReadPage, WriteBatch
from recsync.clock import Clock
from recsync.config import SideConfig
from recsync.connectors import Connector, get_connector_class
from recsync.errors import ConnectorConfigError, ConnectorError, RateLimited
from recsync.messages import ItemOutcome, Side, WorkItem, WriteOp
from recsync.resilience import CircuitBreaker

log = logging.getLogger(__name__)


class ConnectorActor(PipelineActor):
    def __init__(
        self,
        pipeline: str,
        incarnation: int,
        report: FailureSink,
        *,
        side: Side,
        side_config: SideConfig,
        base_dir: Path,
        peers: Any,
        breaker: CircuitBreaker,
        clock: Clock,
    ) -> None:
        super().__init__(pipeline, incarnation, report)
        self.role = f"connector_{side}"
        self.side = side
        self.side_config = side_config
        self.base_dir = base_dir
        self.peers = peers
        self.breaker = breaker
        self.clock = clock
        self.connector: Connector | None = None
        self.opened = False
        self.requests = 0
        self.handles(ReadPage, self._read)
        self.handles(tuple, self._dispatch)

    def setup(self) -> None:
        cls = get_connector_class(self.side_config.connector)
        self.connector = cls(self.side_config.options, self.base_dir)
        self.opened = False
        try:
            self._ensure_open()
        except ConnectorConfigError:
            raise
        except ConnectorError as exc:
            # The system is down right now: start anyway and open on the next call, so an
            # outage at start-up is retried like any other instead of failing the pipeline.
            log.warning("connector not reachable yet", extra={
                "pipeline": self.pipeline, "side": self.side, "error": str(exc)})

    def _ensure_open(self) -> None:
        assert self.connector is not None
        if not self.opened:
            self.connector.open()
            self.opened = True

    def on_stop(self) -> None:
        if self.connector is not None and self.opened:
            self.connector.close()

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        request, reply_to = message
        if isinstance(request, ReadPage):
            self.send(reply_to, self._read(request))
        elif isinstance(request, WriteBatch):
            self.send(reply_to, self._write(request))

    def _gate(self) -> float | None:
        """None when a call may go out now, else the wall time to try again."""
        if not self.breaker.allow():
            reopen = self.breaker.retry_at or self.clock.monotonic()
            return self.clock.time() + max(0.0, reopen - self.clock.monotonic())
        # A half-open probe refused here is given up by the breaker after its timeout.
        wait = self.peers.ref("rate_limiter").ask(Call("acquire", (self.side,)))
        if wait > 0:
            return self.clock.time() + wait
        self.requests += 1
        return None

    def _read(self, request: ReadPage) -> PageRead:
        assert self.connector is not None
        retry_at = self._gate()
        if retry_at is not None:
            return PageRead(None, request.observed, "waiting for rate limit or circuit",
                            retry_at)
        try:
            self._ensure_open()
            page = self.connector.read_changes(request.cursor, request.limit)
        except RateLimited as exc:
            self._limited(exc)
            return PageRead(None, request.observed, str(exc), self.clock.time() + 1.0)
        except ConnectorError as exc:
            self.breaker.record_failure()
            return PageRead(None, request.observed, str(exc))
        self.breaker.record_success()
        return PageRead(page, request.observed)

    def _limited(self, exc: RateLimited) -> None:
        if exc.retry_after is not None:
            self.peers.ref("rate_limiter").tell(Call("block", (self.side, exc.retry_after)))

    def _write(self, batch: WriteBatch) -> BatchDone:
        assert self.connector is not None
        retry_at = self._gate()
        if retry_at is not None:
            return self._all(batch, "deferred", None, retry_at)
        try:
            self._ensure_open()
            outcomes = self._write_checked(batch)
        except RateLimited as exc:
            self._limited(exc)
            return self._all(batch, "deferred", str(exc), self.clock.time() + (exc.retry_after
                                                                            or 1.0))
        except ConnectorError as exc:
            self.breaker.record_failure()
            log.warning("write failed", extra={"pipeline": self.pipeline, "side": self.side,
                                               "error": str(exc), "records": len(batch.items)})
            return self._all(batch, "retry", str(exc), None)
        self.breaker.record_success()
        return BatchDone(batch.direction, outcomes, self.clock.time())

    def _all(self, batch: WriteBatch, status: Any, error: str | None,
             retry_at: float | None) -> BatchDone:
        outcomes = [ItemOutcome(i.key, i.gen, status, error, retry_at) for i in batch.items]
        return BatchDone(batch.direction, outcomes, self.clock.time())

    def _write_checked(self, batch: WriteBatch) -> list[ItemOutcome]:
        """Check the target for changes no poll has reported yet, then write."""
        assert self.connector is not None
        rs, side = batch.ruleset, self.side
        source: Side = "a" if side == "b" else "b"
        key_field = self.side_config.options.key
        outcomes: dict[str, ItemOutcome] = {}
        to_write: list[tuple[WorkItem, Any, str | None]] = []
        known = [i.key for i in batch.items if i.expected_hash is not None]
        current = self.connector.fetch(known) if known else {}
        for item in batch.items:
            content, chash, winner = item.content, item.hash, None
            if item.expected_hash is not None:
                rec = current.get(item.key)
                theirs = rules_mod.to_a_space(rs, side, rec) if rec is not None else None
                their_hash = rules_mod.content_hash(theirs) if theirs is not None else None
                if their_hash != item.expected_hash and their_hash != item.hash:
                    their_mod = self.clock.time()
                    mine = (source, content, item.modified)
                    (_, a_rec, a_mod), (_, b_rec, b_mod) = sorted(
                        [mine, (side, theirs, their_mod)], key=lambda t: t[0])
                    winner, result = rules_mod.resolve_conflict(rs, a_rec, a_mod, b_rec, b_mod)
                    if winner == side:
                        outcomes[item.key] = ItemOutcome(
                            item.key, item.gen, "superseded", None, None, theirs, their_hash,
                            winner)
                        continue
                    if winner != source:
                        content = result
                        chash = rules_mod.content_hash(result) if result is not None else None
            to_write.append((item, content, winner))
            _ = chash
        ops = []
        for item, content, _w in to_write:
            if content is None:
                ops.append(WriteOp(item.key, "delete", None))
            else:
                fields = rules_mod.to_side(rs, side, content)
                fields[key_field] = item.key if fields.get(key_field) is None else fields[
                    key_field]
                ops.append(WriteOp(item.key, "upsert", fields))
        results = self.connector.write(ops) if ops else []
        for (item, content, winner), res in zip(to_write, results, strict=True):
            if res.error is None:
                chash = rules_mod.content_hash(content) if content is not None else None
                outcomes[item.key] = ItemOutcome(
                    item.key, item.gen, "synced", None, None,
                    content if winner == "merged" else None, chash, winner,
                    item.src_hash if winner != "merged" else None)
            else:
                status = "retry" if res.retryable else "rejected"
                outcomes[item.key] = ItemOutcome(item.key, item.gen, status, res.error)
        return [outcomes[i.key] for i in batch.items]

