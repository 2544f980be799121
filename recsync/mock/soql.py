"""The SOQL subset of the mock Salesforce: a tokenizer, a recursive-descent parser, an evaluator.

``SELECT f, ... FROM Obj [WHERE cond] [ORDER BY f [ASC|DESC] [NULLS FIRST|LAST], ...]
[LIMIT n]``, or the aggregates ``SELECT COUNT() FROM ...`` (the count is ``totalSize``) and
``SELECT COUNT(f) [alias], COUNT_DISTINCT(f) [alias] FROM ...`` (one AggregateResult row,
``expr0``... without an alias); no GROUP BY. A MALFORMED_QUERY error shows the position as
Salesforce does (``ERROR at Row:1:Column:N``). Conditions combine
``= != <> < <= > >= IN NOT IN LIKE`` with AND, OR, NOT and parentheses; literals are
'strings', numbers, true, false, null, dates and unquoted datetimes (``Z`` or ``+hh:mm``).
Field names are case-insensitive.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

Record = dict[str, Any]
Pred = Callable[[Record], bool]


class SoqlError(Exception):
    """A query the mock refuses: ``code`` is MALFORMED_QUERY or INVALID_FIELD / INVALID_TYPE."""

    def __init__(self, code: str, message: str, pos: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.pos = pos  # where in the query (MALFORMED_QUERY), as Salesforce shows it


_TOKEN = re.compile(
    r"""\s*(?:
    (?P<str>'(?:[^'\\]|\\.)*')
    |(?P<dt>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2}))
    |(?P<date>\d{4}-\d{2}-\d{2})
    |(?P<num>-?\d+(?:\.\d+)?)
    |(?P<name>[A-Za-z_][A-Za-z0-9_.]*)
    |(?P<op>!=|<>|<=|>=|=|<|>)
    |(?P<punct>[(),])
    )""",
    re.VERBOSE,
)
_ESC = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}


def ts_text(dt: datetime) -> str:
    """Salesforce's datetime format: ``YYYY-MM-DDThh:mm:ss.000+0000`` (UTC)."""
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}+0000"


def parse_ts(text: str) -> datetime:
    """A datetime in any of the forms Salesforce accepts or returns."""
    t = text.strip().replace(" ", "+")
    if t.endswith("Z"):
        t = t[:-1] + "+00:00"
    if re.search(r"[+-]\d{4}$", t):
        t = t[:-2] + ":" + t[-2:]
    dt = datetime.fromisoformat(t)
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


@dataclass
class Tok:
    kind: str
    text: str
    pos: int


def tokenize(q: str) -> list[Tok]:
    out: list[Tok] = []
    pos, n = 0, len(q)
    while pos < n:
        if q[pos:].strip() == "":
            break
        m = _TOKEN.match(q, pos)
        if m is None or m.lastgroup is None:
            start = len(q[:pos]) + len(q[pos:]) - len(q[pos:].lstrip())
            raise SoqlError(
                "MALFORMED_QUERY", f"unexpected token: '{q[pos:].strip()[:20]}'", start
            )
        out.append(Tok(m.lastgroup, m.group(m.lastgroup), m.start(m.lastgroup)))
        pos = m.end()
    return out


@dataclass
class Aggregate:
    """``COUNT(field)`` / ``COUNT_DISTINCT(field)`` in the SELECT list, named ``alias``."""

    func: str
    field: str
    alias: str


@dataclass
class Query:
    obj: str
    fields: list[str]
    where: Pred | None = None
    order: list[tuple[str, bool, bool]] = field(default_factory=list)  # name, desc, nulls_last
    limit: int | None = None
    count_only: bool = False  # SELECT COUNT() FROM ...: totalSize, no records
    aggregates: list[Aggregate] = field(default_factory=list)  # one AggregateResult row


_AGGREGATES = ("COUNT", "COUNT_DISTINCT")


class _Parser:
    def __init__(self, q: str, schema: dict[str, dict[str, str]]) -> None:
        self.q = q
        self.toks = tokenize(q)
        self.i = 0
        self.schema = schema  # object name -> {lower field name: canonical name}
        self.obj = ""
        self.fmap: dict[str, str] = {}
        self.types: dict[str, str] = {}

    # -- token helpers
    def peek(self, k: int = 0) -> Tok | None:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else None

    def kw(self, *words: str) -> bool:
        t = self.peek()
        if t is not None and t.kind == "name" and t.text.upper() in words:
            self.i += 1
            return True
        return False

    def bad(self, message: str, tok: Tok | None = None) -> SoqlError:
        """MALFORMED_QUERY at ``tok`` (default: the next token, or the end of the query)."""
        tok = tok or self.peek()
        return SoqlError("MALFORMED_QUERY", message, tok.pos if tok else len(self.q))

    def expect_kw(self, word: str) -> None:
        if not self.kw(word):
            t = self.peek()
            got = t.text if t else "end of query"
            raise self.bad(f"expecting '{word}', unexpected token: '{got}'")

    def take(self, kind: str) -> Tok:
        t = self.peek()
        if t is None or t.kind != kind:
            got = t.text if t else "end of query"
            raise self.bad(f"unexpected token: '{got}'")
        self.i += 1
        return t

    def punct(self, ch: str) -> bool:
        t = self.peek()
        if t is not None and t.kind == "punct" and t.text == ch:
            self.i += 1
            return True
        return False

    def field_name(self, text: str) -> str:
        name = self.fmap.get(text.lower())
        if name is None:
            raise SoqlError(
                "INVALID_FIELD",
                f"No such column '{text}' on entity '{self.obj}'. If you are attempting to use a "
                "custom field, be sure to append the '__c' after the custom field name.",
            )
        return name

    # -- grammar
    def select_item(self, raw: list[str], aggs: list[tuple[str, Tok | None, str | None]]) -> None:
        """One item of the SELECT list: a field, ``COUNT()``, or ``COUNT(f) [alias]``."""
        tok = self.take("name")
        nxt = self.peek()
        if nxt is None or nxt.kind != "punct" or nxt.text != "(":
            raw.append(tok.text)
            return
        func = tok.text.upper()
        if func not in _AGGREGATES:
            raise self.bad(f"unsupported function: '{tok.text}'", tok)
        self.i += 1
        arg = None if func == "COUNT" and self.punct(")") else self.take("name")
        if arg is not None and not self.punct(")"):
            raise self.bad("expecting ')'")
        alias = None
        t = self.peek()
        if t is not None and t.kind == "name" and t.text.upper() != "FROM":
            alias = t.text
            self.i += 1
        if arg is None and alias is not None:
            raise self.bad(f"unexpected token: '{alias}'", t)
        aggs.append((func, arg, alias))

    def parse(self) -> Query:
        self.expect_kw("SELECT")
        raw: list[str] = []
        aggs: list[tuple[str, Tok | None, str | None]] = []
        select_at = self.peek()
        self.select_item(raw, aggs)
        while self.punct(","):
            self.select_item(raw, aggs)
        count_only = any(arg is None for _, arg, _ in aggs)
        if count_only and (raw or len(aggs) > 1):
            raise self.bad("COUNT() must be the only element in the SELECT list", select_at)
        if aggs and raw:
            raise self.bad(
                f"Field must be grouped or aggregated: {raw[0]} (GROUP BY is not supported "
                "by the mock)",
                select_at,
            )
        self.expect_kw("FROM")
        obj_tok = self.take("name")
        objs = {o.lower(): o for o in self.schema}
        obj = objs.get(obj_tok.text.lower())
        if obj is None:
            raise SoqlError(
                "INVALID_TYPE",
                f"sObject type '{obj_tok.text}' is not supported. If you are attempting to use a "
                "custom object, be sure to append the '__c' after the entity name.",
            )
        self.obj = obj
        self.fmap = {k: v for k, v in self.schema[obj].items() if not k.startswith("#")}
        self.types = {v: self.schema[obj].get("#" + v, "string") for v in self.fmap.values()}
        query = Query(obj, [self.field_name(f) for f in raw], count_only=count_only)
        for n, (func, arg, alias) in enumerate(aggs):
            if arg is not None:
                query.aggregates.append(
                    Aggregate(func, self.field_name(arg.text), alias or f"expr{n}")
                )
        if self.kw("WHERE"):
            query.where = self.or_expr()
        if self.kw("ORDER"):
            if aggs:
                raise self.bad("ORDER BY of an aggregate query is not supported by the mock",
                               self.toks[self.i - 1])
            self.expect_kw("BY")
            while True:
                name = self.field_name(self.take("name").text)
                desc = self.kw("DESC")
                if not desc:
                    self.kw("ASC")
                nulls_last = desc
                if self.kw("NULLS"):
                    nulls_last = self.kw("LAST")
                    if not nulls_last:
                        self.expect_kw("FIRST")
                query.order.append((name, desc, nulls_last))
                if not self.punct(","):
                    break
        if self.kw("LIMIT"):
            query.limit = int(self.take("num").text)
        t = self.peek()
        if t is not None:
            raise self.bad(f"unexpected token: '{t.text}'")
        return query

    def or_expr(self) -> Pred:
        parts = [self.and_expr()]
        while self.kw("OR"):
            parts.append(self.and_expr())
        if len(parts) == 1:
            return parts[0]
        return lambda r: any(p(r) for p in parts)

    def and_expr(self) -> Pred:
        parts = [self.not_expr()]
        while self.kw("AND"):
            parts.append(self.not_expr())
        if len(parts) == 1:
            return parts[0]
        return lambda r: all(p(r) for p in parts)

    def not_expr(self) -> Pred:
        if self.kw("NOT"):
            inner = self.not_expr()
            return lambda r: not inner(r)
        if self.punct("("):
            inner = self.or_expr()
            if not self.punct(")"):
                raise self.bad("expecting ')'")
            return inner
        return self.condition()

    def condition(self) -> Pred:
        name = self.field_name(self.take("name").text)
        ftype = self.types.get(name, "string")
        negate = self.kw("NOT")
        if self.kw("IN"):
            if not self.punct("("):
                raise self.bad("expecting '(' after IN")
            values = [self.literal(ftype)]
            while self.punct(","):
                values.append(self.literal(ftype))
            if not self.punct(")"):
                raise self.bad("expecting ')'")
            vset = set(values)
            if negate:
                return lambda r: r.get(name) not in vset
            return lambda r: r.get(name) in vset
        if negate:
            raise self.bad("expecting 'IN' after 'NOT'")
        if self.kw("LIKE"):
            pattern = self.literal("string")
            rx = re.compile(
                "^" + re.escape(str(pattern)).replace("%", ".*").replace("_", ".") + "$",
                re.IGNORECASE | re.DOTALL,
            )
            return lambda r: isinstance(r.get(name), str) and rx.match(r[name]) is not None
        op = self.take("op").text
        value = self.literal(ftype)
        return _compare(name, op, value)

    def literal(self, ftype: str) -> Any:
        t = self.peek()
        if t is None:
            raise self.bad("unexpected end of query")
        self.i += 1
        if t.kind == "str":
            body = re.sub(r"\\(.)", lambda m: _ESC.get(m.group(1), m.group(1)), t.text[1:-1])
            return body
        if t.kind == "num":
            v: float = float(t.text)
            return int(v) if v.is_integer() and "." not in t.text else v
        if t.kind in ("dt", "date"):
            text = t.text if t.kind == "dt" else t.text + "T00:00:00Z"
            if ftype not in ("datetime", "date"):
                raise SoqlError(
                    "INVALID_FIELD",
                    f"value of filter criterion for field must be of type {ftype}"
                    " and should not be enclosed in quotes",
                )
            try:
                return ts_text(parse_ts(text))
            except ValueError as exc:
                raise self.bad(f"invalid datetime: {t.text}", t) from exc
        if t.kind == "name":
            word = t.text.lower()
            if word in ("true", "false"):
                return word == "true"
            if word == "null":
                return None
        raise self.bad(f"unexpected token: '{t.text}'", t)


def _compare(name: str, op: str, value: Any) -> Pred:
    if value is None:
        if op == "=":
            return lambda r: r.get(name) is None
        if op in ("!=", "<>"):
            return lambda r: r.get(name) is not None
        return lambda r: False

    def ok(v: Any) -> bool:
        return v is not None and (isinstance(v, str) == isinstance(value, str))

    if op == "=":
        if isinstance(value, str):
            low = value.lower()
            return lambda r: isinstance(r.get(name), str) and r[name].lower() == low
        return lambda r: r.get(name) == value
    if op in ("!=", "<>"):
        return lambda r: r.get(name) != value
    if op == "<":
        return lambda r: ok(r.get(name)) and r[name] < value
    if op == "<=":
        return lambda r: ok(r.get(name)) and r[name] <= value
    if op == ">":
        return lambda r: ok(r.get(name)) and r[name] > value
    return lambda r: ok(r.get(name)) and r[name] >= value


def parse(q: str, schema: dict[str, dict[str, str]]) -> Query:
    """Parse ``q``; ``schema`` maps object names to {lower name: name, "#Name": type}.

    A MALFORMED_QUERY error's message shows where, as Salesforce's does: the query's line,
    a caret under the position, ``ERROR at Row:R:Column:C``, then what is wrong.
    """
    try:
        return _Parser(q, schema).parse()
    except SoqlError as exc:
        if exc.code != "MALFORMED_QUERY" or exc.pos is None:
            raise
        before = q[: exc.pos]
        row = before.count("\n") + 1
        col = exc.pos - (before.rfind("\n") + 1)
        line = q.split("\n")[row - 1]
        exc.message = (
            f"{line}\n{' ' * col}^\nERROR at Row:{row}:Column:{col + 1}\n{exc.message}"
        )
        exc.args = (exc.message,)
        raise


def aggregate(query: Query, rows: list[Record]) -> Record:
    """The one AggregateResult row of an aggregate query over the matching ``rows``."""
    out: Record = {"attributes": {"type": "AggregateResult"}}
    for agg in query.aggregates:
        values = [r.get(agg.field) for r in rows if r.get(agg.field) is not None]
        if agg.func == "COUNT_DISTINCT":
            values = list({str(v).lower() if isinstance(v, str) else v for v in values})
        out[agg.alias] = len(values)
    return out


def run(query: Query, rows: list[Record]) -> list[Record]:
    """Filter, order and limit ``rows`` (full records) by ``query``."""
    out = [r for r in rows if query.where(r)] if query.where else list(rows)
    for name, desc, nulls_last in reversed(query.order):
        present = [r for r in out if r.get(name) is not None]
        nulls = [r for r in out if r.get(name) is None]
        present.sort(key=lambda r: _sort_key(r[name]), reverse=desc)
        out = present + nulls if nulls_last else nulls + present
    if query.limit is not None:
        out = out[: query.limit]
    return out


def _sort_key(v: Any) -> Any:
    if isinstance(v, str):
        return (1, v)
    if isinstance(v, bool):
        return (0, int(v))
    return (0, v)
