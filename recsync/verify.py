"""Verify: compare both sides of a pipeline, record by record, under its rule set.

Pure functions, no I/O. The caller lists each side, maps every record into A space through
the compiled rule set (``Seen.of``), and hands both listings, the pipeline's links and the
keys with queued work to :func:`compare`. It returns what differs, by category, and for
each difference the sync that would make the sides agree (a :class:`Fix`), chosen under
the rules:

- ``different``: on both sides with different content. The side that changed since the
  last sync (its content no longer matches the link's hash) is the source; when both
  changed, or the record was never linked, the conflict policy picks it (last writer:
  the newer ``modified``; ties go to A). If the rules do not carry an update that way (the
  direction does not sync updates, or the source fails the filters), the other way is
  tried; if neither, the difference is one the rules leave alone (``ignored``).
- ``missing_a`` / ``missing_b``: on one side only, and linked (recsync knew it): the side
  named lost it. ``extra_a`` / ``extra_b``: on the side named only, never linked (added
  behind recsync's back). Either way: a record that fails the filters does not belong in
  the sync (``ignored``); otherwise it is created on the side that lacks it when the rules
  sync creates that way, else deleted from the side holding it when the rules sync deletes
  the other way (a one-way sync keeps its target equal to its source), else ``ignored``.

Keys with queued work (``pending``) are being synced: they are counted, not compared.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from recsync.messages import Direction, Record, Side
from recsync.rules import CompiledRules, content_hash

__all__ = [
    "CATEGORIES",
    "Category",
    "Comparison",
    "Fix",
    "Link",
    "Seen",
    "compare",
    "key_order",
]

Category = Literal["missing_a", "missing_b", "extra_a", "extra_b", "different"]
CATEGORIES: tuple[Category, ...] = ("missing_a", "missing_b", "extra_a", "extra_b", "different")


class Seen(NamedTuple):
    """One record as listed on one side: its A-space content hash, whether it passes the
    filters, and its last-modified time (epoch seconds)."""

    hash: str
    passes: bool
    modified: float

    @staticmethod
    def of(rules: CompiledRules, side: Side, record: Record, modified: float) -> Seen:
        content = rules.to_a_space(side, record)
        return Seen(content_hash(content), rules.matches(content), modified)


class Link(NamedTuple):
    """What the pipeline's store says each side held at the last sync (None: nothing)."""

    a_hash: str | None
    b_hash: str | None


class Fix(NamedTuple):
    """The sync that makes one record agree: ``upsert`` copies the source's content to the
    target, ``delete`` removes the record from the target (``direction``'s target)."""

    key: str
    category: Category
    direction: Direction
    op: Literal["upsert", "delete"]


@dataclass
class Comparison:
    """The outcome of :func:`compare`."""

    keys: dict[Category, list[str]] = field(default_factory=lambda: {c: [] for c in CATEGORIES})
    fixes: list[Fix] = field(default_factory=list)
    pending: int = 0  # keys with queued work: not compared
    ignored: int = 0  # differences the rules leave alone
    a_records: int = 0
    b_records: int = 0

    @property
    def agree(self) -> bool:
        """True when nothing differs and nothing is pending."""
        return not self.pending and not any(self.keys.values())

    def count(self, category: Category) -> int:
        return len(self.keys[category])

    def first(self, category: Category, n: int) -> list[str]:
        """The first ``n`` keys of ``category``, in key order (numbers by value)."""
        return sorted(self.keys[category], key=key_order)[:n]


def key_order(key: str) -> tuple[int, int, str]:
    """Sort key for record keys: plain numbers by value first, then text."""
    return (0, int(key), "") if key.isdigit() and len(key) < 19 else (1, 0, key)


def _direction(source: Side) -> Direction:
    return "a_to_b" if source == "a" else "b_to_a"


def compare(
    rules: CompiledRules,
    a: Mapping[str, Seen],
    b: Mapping[str, Seen],
    links: Mapping[str, Link],
    pending: Set[str] = frozenset(),
) -> Comparison:
    """Compare the two listings (A-space hashes by key); see the module docstring."""
    out = Comparison(a_records=len(a), b_records=len(b))
    for key in _union(a, b):
        if key in pending:
            out.pending += 1
            continue
        on_a, on_b = a.get(key), b.get(key)
        if on_a is not None and on_b is not None:
            if on_a.hash == on_b.hash:
                continue
            fix = _update(rules, key, on_a, on_b, links.get(key))
        else:
            holder: Side = "a" if on_a is not None else "b"
            seen = on_a if on_a is not None else on_b
            assert seen is not None
            fix = _one_side(rules, key, holder, seen, key in links)
        if fix is None:
            out.ignored += 1
            continue
        out.keys[fix.category].append(key)
        out.fixes.append(fix)
    return out


def _union(a: Mapping[str, Seen], b: Mapping[str, Seen]) -> Iterable[str]:
    yield from a
    for key in b:
        if key not in a:
            yield key


def _update(rules: CompiledRules, key: str, on_a: Seen, on_b: Seen,
            link: Link | None) -> Fix | None:
    changed_a = link is None or link.a_hash != on_a.hash
    changed_b = link is None or link.b_hash != on_b.hash
    first: Side
    if changed_a != changed_b:
        first = "a" if changed_a else "b"
    elif rules.rules.conflict in ("a_wins", "b_wins"):
        first = "a" if rules.rules.conflict == "a_wins" else "b"
    else:
        first = "a" if on_a.modified >= on_b.modified else "b"
    for source in (first, "b" if first == "a" else "a"):
        seen = on_a if source == "a" else on_b
        direction = _direction(source)  # type: ignore[arg-type]
        if seen.passes and rules.op_allowed(direction, "update"):
            return Fix(key, "different", direction, "upsert")
    return None


def _one_side(rules: CompiledRules, key: str, holder: Side, seen: Seen,
              linked: bool) -> Fix | None:
    lacking: Side = "b" if holder == "a" else "a"
    category: Category = f"missing_{lacking}" if linked else f"extra_{holder}"  # type: ignore[assignment]
    if not seen.passes:
        return None
    if rules.op_allowed(_direction(holder), "create"):
        return Fix(key, category, _direction(holder), "upsert")
    if rules.op_allowed(_direction(lacking), "delete"):
        return Fix(key, category, _direction(lacking), "delete")
    return None
