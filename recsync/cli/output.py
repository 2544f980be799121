"""Human output of `recsync`: aligned tables, key: value blocks, one-line confirmations.

Everything here takes plain data (msgpack-decoded dicts and lists) and returns text.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import msgspec


def to_json(value: Any) -> str:
    """Pretty JSON for --json (bytes become base64, like msgspec does)."""
    return msgspec.json.format(msgspec.json.encode(value), indent=2).decode()


def when(ts: Any) -> str:
    if not isinstance(ts, int | float) or isinstance(ts, bool):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) < 1e6 else f"{value:.0f}"
    if isinstance(value, dict):
        return " ".join(f"{k}={cell(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(cell(v) for v in value)
    return str(value)


def _is_number(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An aligned text table; columns of numbers are right-aligned."""
    texts = [[cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in texts:
        widths = [max(w, len(t)) for w, t in zip(widths, row, strict=True)]
    right = [all(_is_number(row[i]) for row in rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(list(headers)), *(line(row) for row in texts)])


def block(pairs: Sequence[tuple[str, Any]], indent: str = "") -> str:
    """``key: value`` lines with the values aligned; nested dicts are indented below."""
    width = max((len(k) for k, _ in pairs), default=0) + 1
    out = []
    for key, value in pairs:
        label = f"{key}:".ljust(width)
        if isinstance(value, dict) and value:
            out.append(f"{indent}{key}:")
            out.append(block(list(value.items()), indent + "  "))
        else:
            out.append(f"{indent}{label} {cell(value)}".rstrip())
    return "\n".join(out)


def generic(value: Any) -> str:
    """Any result, readably: dicts as blocks, lists of dicts as tables."""
    if value is None:
        return "ok"
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return block(list(value.items())) if value else "(empty)"
    if isinstance(value, list):
        if not value:
            return "(none)"
        if all(isinstance(v, dict) for v in value):
            keys: list[str] = []
            for row in value:
                keys.extend(k for k in row if k not in keys)
            return table([k.upper() for k in keys], [[row.get(k) for k in keys] for row in value])
        return "\n".join(cell(v) for v in value)
    return cell(value)


# ---- per command ---------------------------------------------------------------------------


def status(result: dict[str, Any]) -> str:
    out = []
    if result.get("config_error"):
        out.append(
            f"configuration rejected (still running the previous one):\n"
            f"  {result['config_error']}\n"
        )
    for note in result.get("config_mismatch") or []:  # [cluster]: a node owning nothing
        out.append(f"config differs: {note}\n")
    pipes = result.get("pipelines") or []
    if pipes:
        # [cluster]: the node running each pipeline (none on a single node: no column)
        nodes = any(p.get("node") for p in pipes)
        rows = [
            [
                p["pipeline"],
                *([p.get("node")] if nodes else []),
                p["state"],
                p["queued"],
                p["in_flight"],
                p["failed"],
                p["synced_a_to_b"],
                p["synced_b_to_a"],
                p["conflicts"],
                p["restarts"],
            ]
            for p in pipes
        ]
        out.append(
            table(
                [
                    "PIPELINE",
                    *(["NODE"] if nodes else []),
                    "STATE",
                    "QUEUED",
                    "IN FLIGHT",
                    "FAILED",
                    "A->B",
                    "B->A",
                    "CONFLICTS",
                    "RESTARTS",
                ],
                rows,
            )
        )
        errors = [f"  {p['pipeline']}: {p['error']}" for p in pipes if p.get("error")]
        if errors:
            out.append("errors:\n" + "\n".join(errors))
        warned = [f"  {p['pipeline']}: {w}" for p in pipes for w in p.get("warnings") or []]
        if warned:
            out.append("warnings:\n" + "\n".join(warned))
        sides = side_lines(pipes)
        if sides:
            out.append("sides:\n" + "\n".join(sides))
    if result.get("records"):
        out.append("\n\n".join(record(rec) for rec in result["records"]))
    if not pipes and not result.get("records"):
        out.append("no pipelines")
    return "\n".join(out)


def side_text(side: dict[str, Any]) -> str:
    """What holds up one side, in a line ('' when nothing does)."""
    parts = []
    circuit = side.get("circuit") or "closed"
    if circuit != "closed":
        text = f"circuit {circuit.replace('_', '-')}"
        if side.get("circuit_retry_at"):
            text += f" (next probe {when(side['circuit_retry_at'])})"
        parts.append(text)
    if side.get("rate_limited_until"):
        parts.append(f"rate limited until {when(side['rate_limited_until'])}")
    if side.get("budget") and str(side["budget"]).startswith("Redis unreachable"):
        parts.append(f"budget: {side['budget']}")
    if side.get("held_delete"):
        parts.append(f"mass delete held: {side['held_delete']}")
    if side.get("last_error"):
        parts.append(f"last error {when(side.get('last_error_at'))}: {side['last_error']}")
    if side.get("bulk"):
        parts.append(bulk_text(side["bulk"]))
    return "; ".join(parts)


def bulk_text(job: dict[str, Any]) -> str:
    """``bulk upsert job 750... InProgress: 4000 of 10000 rows processed, 3 failed``."""
    return (f"bulk {job.get('operation')} job {job.get('job')} {job.get('state')}: "
            f"{job.get('processed')} of {job.get('total')} rows processed, "
            f"{job.get('failed')} failed")


def side_lines(pipes: Sequence[dict[str, Any]]) -> list[str]:
    """``  PIPELINE side X: ...`` for every side something holds up or went wrong on."""
    out = []
    for p in pipes:
        for name, side in sorted((p.get("sides") or {}).items()):
            text = side_text(side) if isinstance(side, dict) else ""
            if text:
                out.append(f"  {p['pipeline']} side {name}: {text}")
    return out


def record(rec: dict[str, Any]) -> str:
    pairs = [
        ("pipeline", rec["pipeline"]),
        ("record", rec["key"]),
        ("state", rec["state"]),
        ("direction", rec.get("direction")),
        ("attempts", rec.get("attempts")),
        ("last error", rec.get("last_error")),
        ("on side a", rec.get("on_a")),
        ("on side b", rec.get("on_b")),
        ("synced at", when(rec.get("synced_at"))),
    ]
    text = block(pairs)
    history = rec.get("history") or []
    if history:
        lines = [
            f"  {when(h['at'])}  {h['event']}"
            + (f" {h['direction'].replace('_to_', '->')}" if h.get("direction") else "")
            + (f"  {h['detail']}" if h.get("detail") else "")
            for h in history
        ]
        text += "\nhistory:\n" + "\n".join(lines)
    return text


def failed(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no failed records"
    return table(
        ["PIPELINE", "RECORD", "DIRECTION", "ATTEMPTS", "UPDATED", "LAST ERROR"],
        [
            [
                r["pipeline"],
                r["key"],
                r["direction"],
                r["attempts"],
                when(r["updated_at"]),
                r.get("last_error"),
            ]
            for r in rows
        ],
    )


def _sides(value: Any, fmt: str = "{}") -> str:
    if not isinstance(value, dict) or not value:
        return "-"
    parts = []
    for side, v in sorted(value.items()):
        if isinstance(v, list | tuple) and len(v) == 2:
            parts.append(f"{side}={v[0]}/{v[1]}")
        else:
            parts.append(f"{side}={fmt.format(v)}")
    return " ".join(parts)


def stats(result: Any) -> str:
    rows = result.get("pipelines", []) if isinstance(result, dict) else result
    if not rows:
        return "no pipelines"
    return table(
        [
            "PIPELINE",
            "STATE",
            "QUEUED",
            "IN FLIGHT",
            "SYNCED",
            "FAILED",
            "RATE/S",
            "CIRCUIT",
            "RATE LIMIT",
            "RESTARTS",
        ],
        [
            [
                r["pipeline"],
                r["state"],
                r["queued"],
                r["in_flight"],
                r["synced"],
                r["failed"],
                float(r.get("rate") or 0),
                _sides(r.get("circuit")),
                _sides(r.get("rate_limit")),
                r.get("restarts"),
            ]
            for r in rows
        ],
    )


def names(values: Any) -> str:
    return ", ".join(values) if values else "none"


def reload(result: dict[str, Any]) -> str:
    return block(
        [
            ("added", names(result.get("added"))),
            ("changed", names(result.get("changed"))),
            ("removed", names(result.get("removed"))),
            ("rules changed", names(result.get("rules_changed"))),
        ]
    )


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value if v is not None]
    return value


def rules(result: Any) -> str:
    """Rule sets as TOML, the way rules.toml spells them (JSON if TOML can't say it)."""
    if not isinstance(result, dict):
        return generic(result)
    import tomli_w

    try:
        return tomli_w.dumps(_drop_none(result)).rstrip()
    except (TypeError, ValueError):
        return to_json(result)


def crms(rows: Any) -> str:
    if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows):
        return table(
            ["NAME", "DESCRIPTION"], [[r.get("name"), r.get("description") or ""] for r in rows]
        )
    return generic(rows) if rows else "no connectors"


def event_line(event: Any) -> str:
    """One line for an event: time, sequence number, kind, then its data."""
    head = f"{time.strftime('%H:%M:%S', time.localtime(event.ts))} #{event.seq} {event.kind}"
    data = event.data
    if event.kind == "stats" and isinstance(data.get("pipelines"), list):
        parts = [
            f"{p.get('pipeline')} {p.get('state')} q={p.get('queued')} "
            f"f={p.get('in_flight')} synced={p.get('synced')} failed={p.get('failed')} "
            f"{float(p.get('rate') or 0):.1f}/s"
            for p in data["pipelines"]
            if isinstance(p, dict)
        ]
        return f"{head}  " + ("; ".join(parts) or "no pipelines")
    fields = " ".join(
        f"{k}={v}"
        if isinstance(v, str | int | float | bool) or v is None
        else f"{k}={msgspec.json.encode(v).decode()}"
        for k, v in data.items()
    )
    return f"{head}  {fields}".rstrip()


def config_show(rows: Any) -> str:
    """Per pipeline: every setting, its value and where it came from; then the sides."""
    if not isinstance(rows, list) or not rows:
        return "no pipelines"
    out = []
    for r in rows:
        lines = [[name, v["value"], v["where"]] for name, v in r["settings"].items()]
        for side, options in sorted(r["sides"].items()):
            lines += [[f"{side}.{name}", v["value"], v["where"]] for name, v in options.items()]
        body = table(["SETTING", "VALUE", "FROM"], [[n, _value(v), w] for n, v, w in lines])
        out.append(f"{r['pipeline']} (rules {r['rules']})\n{body}")
    return "\n\n".join(out)


def _value(value: Any) -> str:
    """A setting's value as TOML spells it."""
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | dict):
        return msgspec.json.encode(value).decode()
    return cell(value)


def _scope(customer: str, pipeline: str | None) -> str:
    return f"{customer}/{pipeline}" if pipeline else f"customer {customer}"


def paused(cmd: Any, result: dict[str, Any]) -> str:
    """`pause` / `resume`: the pipelines that changed, or that none did."""
    verb = "paused" if type(cmd).__name__ == "Pause" else "resumed"
    listed = (result.get("pipelines") if isinstance(result, dict) else None) or []
    if listed:
        return f"{verb} {', '.join(listed)}"
    was = "running" if verb == "paused" else "paused"
    return f"no {was} pipeline of {_scope(cmd.customer, cmd.pipeline)}: nothing {verb}"


def confirmed(cmd: Any, result: dict[str, Any]) -> str:
    """`deletes confirm`: whose held deletes go through, or that nothing is held."""
    listed = (result.get("pipelines") if isinstance(result, dict) else None) or []
    side = f" on side {cmd.side}" if cmd.side else ""
    if not listed:
        return (f"nothing is held by the mass-delete guard{side} in "
                f"{_scope(cmd.customer, cmd.pipeline)}: nothing to confirm")
    return f"{', '.join(listed)}: the held deletes{side} go through once"


def exact(value: Any) -> str:
    """A fault value as given: 0.02 stays 0.02; None is off."""
    if value is None:
        return "off"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def faults(kind: str, result: dict[str, Any]) -> str:
    """`mock faults`: every fault of the mock now in force, values exactly."""
    width = max((len(k) for k in result), default=0) + 1
    lines = [f"mock {kind} faults now:"]
    lines += [f"  {(k + ':').ljust(width)} {exact(v)}" for k, v in result.items()]
    return "\n".join(lines)


def id_ranges(ids: Sequence[int]) -> str:
    """[1, 2, 3, 7] -> "1-3, 7"."""
    parts: list[str] = []
    ordered = sorted(ids)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ", ".join(parts)


def seeded(path: Any, inserted: Sequence[int], existing: Sequence[int]) -> str:
    """`demo seed`: the record_ids inserted, and those left as they were."""
    if inserted:
        line = (f"{path}: inserted {len(inserted)} demo user{'s' if len(inserted) != 1 else ''}"
                f" (record_id {id_ranges(inserted)})")
    else:
        line = f"{path}: inserted no demo user"
    if existing:
        line += (f"; {len(existing)} already there, left as they were "
                 f"(record_id {id_ranges(existing)})")
    return line
