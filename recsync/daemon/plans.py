"""What a submitted change will do on the other side, in one sentence (`recsync sync event`),
and the fault settings the embedded mocks go back to on `recsync mock faults --clear`."""

from __future__ import annotations

from typing import Any

from recsync import rules as rules_mod
from recsync.config import PipelineConfig
from recsync.messages import Side, direction_from, other
from recsync.rules import RuleSet

#: the embedded mock CRMs' faults when none is injected (``mock faults --clear``)
NO_FAULTS: dict[str, Any] = {
    "error_rate": 0.0,
    "latency": 0.0,
    "status_429_retry_after": None,
    "limit_after": None,
    "drop_rate": 0.0,
}


def other_side_plan(
    cfg: PipelineConfig, ruleset: RuleSet, side: Side, op: str, record: dict[str, Any] | None,
    linked: bool,
) -> str:
    """What side ``other(side)`` of ``cfg`` will do with a change of ``op`` ("upsert" or
    "delete") on ``side``; ``linked``: the record is known on the other side already."""
    target_side = other(side)
    target = f"side {target_side} ({(cfg.b if target_side == 'b' else cfg.a).connector})"
    direction = direction_from(side)
    arrow = "a to b" if side == "a" else "b to a"
    synced = list(getattr(ruleset, direction))
    wanted = "delete" if op == "delete" else ("update" if linked else "create")
    if wanted not in synced:
        return (f"{target} will not change: rule set {ruleset.name!r} does not sync a "
                f"{wanted} from {arrow} (it syncs: {', '.join(synced) or 'nothing'})")
    if op == "delete":
        if not linked:
            return f"{target} will not change: it has no record linked to this one"
        return f"{target} will delete its copy of the record at the next flush"
    explained = rules_mod.explain(ruleset, side, record or {})
    if not explained["matches"]:
        failed = "; ".join(
            f"{f['field']} {f['operator']} {f['expected']!r}, but it is {f['value']!r}"
            for f in explained["failed_filters"])
        return (f"{target} will not change: the record does not pass the filters of rule "
                f"set {ruleset.name!r} ({failed})")
    verb = "update its copy of the record" if linked else "create the record"
    return f"{target} will {verb} at the next flush"


def faults_to_set(requested: dict[str, Any], clear: bool, known: dict[str, Any]) -> dict[str, Any]:
    """The ``set_faults`` arguments for a `mock faults` command: ``clear`` first resets every
    fault the mock has (``known``: its current faults); a Retry-After of 0 turns 429s off."""
    out = {k: v for k, v in NO_FAULTS.items() if k in known} if clear else {}
    for name, value in requested.items():
        if name == "status_429_retry_after" and value is not None and value <= 0:
            value = None
        out[name] = value
    return out
