"""Per-rule-set record functions, written as Python source once the field names are known.

Mapping a record into A space and hashing it run for every record read. Written for one
rule set's fields, as a dict display and straight-line code, they skip the loop and the
per-field calls of the generic versions: preparing a record costs about a quarter fewer
instructions (callgrind). Field names enter the source only as ``repr()`` literals.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from recsync.messages import Record


def _function(source: str, name: str, namespace: dict[str, Any]) -> Callable[..., Any]:
    code = compile(source, f"<recsync.fieldcode {name}>", "exec")
    exec(code, namespace)  # our own source; field names are in it as repr() literals
    return namespace[name]  # type: ignore[no-any-return]


def mapper(pairs: Sequence[tuple[str, str]]) -> Callable[[Record], Record]:
    """``record -> {a: record.get(b) for a, b in pairs}``, in ``pairs`` order."""
    items = ", ".join(f"{a!r}: get({b!r})" for a, b in pairs)
    source = f"def mapped(record):\n    get = record.get\n    return {{{items}}}\n"
    return _function(source, "mapped", {})


def hasher(
    keys: Sequence[str], canon: Callable[[Any], str], digest: Callable[[list[str]], str]
) -> Callable[[Record], str]:
    """``record -> digest([k1, text of record[k1], k2, ...])`` for ``keys`` in order, where
    the text of a value is itself for a str, else ``canon(value)`` (``str()`` for an int).
    Raises KeyError for a missing key, as the generic version does."""
    return _hashing([(key, f"record[{key!r}]") for key in keys], [], canon, digest)


def side_hasher(
    pairs: Sequence[tuple[str, str]], canon: Callable[[Any], str],
    digest: Callable[[list[str]], str],
) -> Callable[[Record], str]:
    """``record -> hasher(a names)(mapper(pairs)(record))`` in one function, without the
    mapped dict: ``pairs`` are (A name, side's name), sorted by A name; a missing field is
    None, as the mapper makes it."""
    return _hashing([(a, f"get({b!r})") for a, b in pairs], ["    get = record.get"],
                    canon, digest)


def _hashing(
    fields: Sequence[tuple[str, str]], prelude: list[str], canon: Callable[[Any], str],
    digest: Callable[[list[str]], str],
) -> Callable[[Record], str]:
    """The hashing function over ``fields``: (name in the digest, expression that reads its
    value from ``record``), after the ``prelude`` lines."""
    lines = ["def hashed(record):", *prelude]
    parts = []
    for i, (name, read) in enumerate(fields):
        lines.append(f"    v{i} = {read}")
        lines.append(f"    if v{i}.__class__ is not str:")  # ints (keys) without a call
        lines.append(f"        v{i} = str(v{i}) if v{i}.__class__ is int else canon(v{i})")
        parts.append(f"{name!r}, v{i}")
    lines.append(f"    return digest([{', '.join(parts)}])")
    return _function("\n".join(lines) + "\n", "hashed", {"canon": canon, "digest": digest})
