"""RulesActor: turns raw changes into mapped, filtered, hashed work for the queue."""

from __future__ import annotations

from typing import Any

from recsync import rules as rules_mod
from recsync.actors.base import FailureSink, PipelineActor
from recsync.actors.protocol import Enqueue, Prepare
from recsync.rules import RuleSet


class RulesActor(PipelineActor):
    role = "rules"

    def __init__(
        self, pipeline: str, incarnation: int, report: FailureSink, *,
        ruleset: RuleSet, peers: Any,
    ) -> None:
        super().__init__(pipeline, incarnation, report)
        self.ruleset = ruleset
        self.peers = peers
        self.handles(Prepare, self._prepare)

    def set_ruleset(self, ruleset: RuleSet) -> None:
        """Swap the rule set; pages already prepared keep the one they were prepared with."""
        self.ruleset = ruleset

    def _prepare(self, msg: Prepare) -> None:
        rs, side = self.ruleset, msg.side
        out = rules_mod.compile_rules(rs).prepare(side, msg.page.changes)
        page = msg.page
        self.send(self.peers.ref("queue"), Enqueue(
            side, out, page.cursor, msg.observed, rs, page.listing_start, page.listing_done,
            page.more, msg.event, page.unreadable, page.unreadable_all))
