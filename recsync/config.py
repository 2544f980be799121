"""Configuration: ``customer_settings.toml`` and ``rules.toml`` into strict msgspec Structs.

Settings merge key by key: ``[defaults]`` <- customer-level keys <- pipeline-level keys
(nested tables such as ``rate_limit`` merge key by key too). Every problem raises
:class:`~recsync.errors.ConfigError` with one sentence naming the file, the line when it can
be found, and the full TOML key path, e.g.::

    customer_settings.toml, line 9: unknown key 'customers.demo.pipelines.contacts.a.tabel';
    did you mean 'table'?
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta

from recsync.connectors.registry import get_connector_class
from recsync.errors import ConfigError
from recsync.rules import RuleError, RuleSet

__all__ = [
    "RULES_FILE",
    "SETTINGS_FILE",
    "AppConfig",
    "CircuitBreakerSettings",
    "ClusterConfig",
    "ConnectorLookup",
    "PipelineConfig",
    "RateLimitSettings",
    "Settings",
    "SideConfig",
    "load_config",
    "load_rules",
    "load_rules_text",
    "load_settings_text",
    "settings_with_overrides",
]

SETTINGS_FILE = "customer_settings.toml"
RULES_FILE = "rules.toml"

ConnectorLookup = Callable[[str], type[Any]]
T = TypeVar("T")

AtLeastOne = Annotated[int, Meta(ge=1)]
Positive = Annotated[float, Meta(gt=0)]


class RateLimitSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Sliding window per external system; reads and writes both count."""

    max_requests: AtLeastOne = 100
    window_seconds: Positive = 60.0


class CircuitBreakerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Open after ``failure_threshold`` consecutive failures; probe after ``reset_timeout``."""

    failure_threshold: AtLeastOne = 5
    reset_timeout: Positive = 30.0


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Tunables of a pipeline; any key may be set in defaults, per customer, per pipeline."""

    batch_size: AtLeastOne = 1000  # = page_size: a page is written as one batch
    page_size: AtLeastOne = 1000
    flush_interval: Positive = 1.0
    poll_interval: Positive = 2.0
    max_attempts: AtLeastOne = 8
    retry_base_delay: Positive = 1.0
    retry_max_delay: Positive = 300.0
    mass_delete_threshold: Annotated[float, Meta(ge=0, le=1)] = 0.5
    mass_delete_min: Annotated[int, Meta(ge=0)] = 10
    reconcile_interval: Positive = 300.0
    history_per_record: AtLeastOne = 50  # history entries kept per record (newest)
    history_days: Positive = 30.0  # and none older than this
    # a direction's backlog for a side that takes bulk writes (Salesforce) above this many
    # records goes out as Bulk API 2.0 jobs of up to bulk_batch_size records; 0 = never
    bulk_threshold: Annotated[int, Meta(ge=0)] = 2000
    bulk_batch_size: Annotated[int, Meta(ge=1, le=150000)] = 10000
    rate_limit: RateLimitSettings = msgspec.field(default_factory=RateLimitSettings)
    circuit_breaker: CircuitBreakerSettings = msgspec.field(default_factory=CircuitBreakerSettings)


class SideConfig(msgspec.Struct, frozen=True):
    """One side of a pipeline: the connector name and its validated Config Struct."""

    connector: str
    options: Any
    #: the side's own request budget (``rate_limit = { max_requests, window_seconds }`` in
    #: the side table); None: a CRM side uses the pipeline's settings, a local side
    #: (SQLite, files) is not throttled
    rate_limit: RateLimitSettings | None = None

    @property
    def key(self) -> str:
        """The field that identifies a record on this side."""
        return str(self.options.key)


class PipelineConfig(msgspec.Struct, frozen=True, kw_only=True):
    """One pipeline of one customer, with its fully merged settings."""

    customer: str
    name: str
    rules: str
    a: SideConfig
    b: SideConfig
    settings: Settings
    base_dir: str

    @property
    def id(self) -> str:
        return f"{self.customer}/{self.name}"


class ClusterConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[cluster]``: the pipelines' state in PostgreSQL (several recsyncd share it).

    ``state`` is a connection URL, or ``state_env`` the environment variable holding it
    (read when the daemon starts; the URL's password is never shown)."""

    state: Annotated[str, Meta(description=(
        "PostgreSQL URL of the shared state (postgresql://user:password@host:5432/db); "
        "secret, never shown"))] = ""
    state_env: Annotated[str, Meta(description=(
        "environment variable holding the state URL, instead of state"))] = ""
    redis: Annotated[str, Meta(description=(
        "Redis URL of the shared API budget (redis://host:6379/0); optional"))] = ""
    lease_ttl: Annotated[Positive, Meta(description=(
        "seconds a node's lease on a pipeline lasts without renewal"))] = 15.0
    nodes_hint: Annotated[int, Meta(ge=1, description=(
        "nodes sharing the API budgets, while Redis is unreachable: each keeps budget / "
        "this many (until the live nodes are counted from the cluster's nodes table)"))] = 1
    metrics_port: Annotated[int, Meta(ge=0, le=65535, description=(
        "port of each node's Prometheus metrics (0: none; recsyncd --metrics-port "
        "overrides it, e.g. for several nodes on one host)"))] = 0
    control_bind: Annotated[str, Meta(description=(
        "tcp:// endpoint where each node also serves its control socket, so that nodes on "
        "other hosts can forward a pipeline's commands to its owner (e.g. "
        "tcp://0.0.0.0:7731; needs recsyncd --curve-dir: CURVE, as any tcp:// socket; "
        "each node's server.key goes in the others' authorized_clients). Without it, "
        "commands reach owners on the same host only"))] = ""
    schema: Annotated[str, Meta(min_length=1, max_length=63, description=(
        "PostgreSQL schema of the state, nodes and leases (several clusters on one "
        "database each have their own)"))] = "recsync"

    def state_url(self) -> str:
        """The state URL (``state``, else ``$state_env``).

        Raises:
            ConfigError: ``state_env`` names a variable that is not set.
        """
        if self.state:
            return self.state
        value = os.environ.get(self.state_env, "")
        if not value:
            raise ConfigError(f"{SETTINGS_FILE}: cluster.state_env names environment variable "
                              f"{self.state_env!r}, which is not set; set it to the state's "
                              "PostgreSQL URL (postgresql://user:password@host:5432/db)")
        return value

    def shown(self) -> str:
        """Where the state is, for logs and status (the password masked)."""
        from recsync.dsn import mask_dsn

        return mask_dsn(self.state) if self.state else f"${self.state_env}"

    def __repr__(self) -> str:
        from recsync.dsn import mask_dsn

        return (f"ClusterConfig(state={self.shown()!r}, redis={mask_dsn(self.redis)!r}, "
                f"lease_ttl={self.lease_ttl!r})")


class AppConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The whole configuration. ``customers`` holds each customer's merged settings.

    ``cluster`` is None without a ``[cluster]`` table: one node, a SQLite state file per
    pipeline."""

    pipelines: dict[str, PipelineConfig]
    rules: dict[str, RuleSet]
    defaults: Settings
    customers: dict[str, Settings] = {}
    cluster: ClusterConfig | None = None
    # customer_settings.toml as parsed: where each setting came from (`recsync config show`)
    settings_doc: dict[str, Any] = {}


# --------------------------------------------------------------------------- public API


def load_config(
    config_dir: Path | str, connector_lookup: ConnectorLookup = get_connector_class
) -> AppConfig:
    """Load and validate both files of ``config_dir``.

    Raises:
        ConfigError: a file is missing, unreadable or invalid.
    """
    folder = Path(config_dir).resolve()
    rules = load_rules(folder / RULES_FILE)
    text = _read(folder / SETTINGS_FILE)
    return load_settings_text(
        text, rules, base_dir=folder, connector_lookup=connector_lookup, filename=SETTINGS_FILE
    )


def load_rules(path: Path | str) -> dict[str, RuleSet]:
    """Load a rules file (one table per rule set)."""
    path = Path(path)
    return load_rules_text(_read(path), filename=path.name)


def load_rules_text(text: str, filename: str = RULES_FILE) -> dict[str, RuleSet]:
    """Parse the text of a rules file; each RuleSet gets its table name as ``name``."""
    doc = _parse(text, filename)
    try:
        out: dict[str, RuleSet] = {}
        for name, raw in doc.items():
            table = _table(raw, (name,))
            if "name" in table and table["name"] != name:
                raise _Problem(
                    (name, "name"), f"{name}.name: must be '{name}' (the table name) or left out"
                )
            out[name] = _convert({**table, "name": name}, RuleSet, (name,))
        return out
    except _Problem as p:
        raise ConfigError(_located(filename, text, p)) from None


def load_settings_text(
    text: str,
    rules: Mapping[str, RuleSet],
    *,
    base_dir: Path | str,
    connector_lookup: ConnectorLookup = get_connector_class,
    filename: str = SETTINGS_FILE,
) -> AppConfig:
    """Parse the text of a settings file against the rule sets ``rules``.

    ``base_dir`` (made absolute) is where connectors resolve relative paths.
    """
    doc = _parse(text, filename)
    folder = str(Path(base_dir).resolve())
    try:
        return _build(doc, rules, folder, connector_lookup)
    except _Problem as p:
        raise ConfigError(_located(filename, text, p)) from None


def settings_with_overrides(settings: Settings, **overrides: Any) -> Settings:
    """``settings`` with some keys replaced; nested tables (dicts) merge key by key.

    Raises:
        ConfigError: an override names an unknown key or has an invalid value.
    """
    try:
        return _apply(settings, overrides, ())
    except _Problem as p:
        raise ConfigError(f"invalid settings override: {p.message}") from None


# --------------------------------------------------------------------------- building

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
KeyPath = tuple[str | int, ...]


def _build(
    doc: dict[str, Any], rules: Mapping[str, RuleSet], base_dir: str, lookup: ConnectorLookup
) -> AppConfig:
    for key in doc:
        if key not in ("defaults", "customers", "cluster"):
            raise _Problem((key,), _unknown_key((key,), ["defaults", "customers", "cluster"]))
    cluster = _cluster(doc["cluster"]) if "cluster" in doc else None
    defaults_raw = _table(doc.get("defaults", {}), ("defaults",))
    defaults = _apply(Settings(), defaults_raw, ("defaults",))
    pipelines: dict[str, PipelineConfig] = {}
    customers: dict[str, Settings] = {}
    for customer, craw in _table(doc.get("customers", {}), ("customers",)).items():
        cpath: KeyPath = ("customers", customer)
        _check_name(customer, cpath, "customer")
        ctable = dict(_table(craw, cpath))
        pipes = _table(ctable.pop("pipelines", {}), (*cpath, "pipelines"))
        csettings = _apply(defaults, ctable, cpath, extra=("pipelines",))
        customers[customer] = csettings
        for name, praw in pipes.items():
            ppath: KeyPath = (*cpath, "pipelines", name)
            _check_name(name, ppath, "pipeline")
            table = _table(praw, ppath)
            pipe = _pipeline(customer, name, table, ppath, csettings, rules, lookup, base_dir)
            pipelines[pipe.id] = pipe
    return AppConfig(pipelines=pipelines, rules=dict(rules), defaults=defaults, customers=customers,
                     settings_doc={k: v for k, v in doc.items() if k != "cluster"},
                     cluster=cluster)


_STATE_SCHEMES = ("postgresql://", "postgres://")
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def _cluster(raw: Any) -> ClusterConfig:
    path: KeyPath = ("cluster",)
    cluster = _convert(_table(raw, path), ClusterConfig, path)
    if bool(cluster.state) == bool(cluster.state_env):
        raise _Problem((*path, "state") if cluster.state else path,
                       "cluster: set one of 'state' (a PostgreSQL URL) or 'state_env' (the "
                       "environment variable holding it)"
                       + (", not both" if cluster.state else ""))
    if cluster.state and not cluster.state.startswith(_STATE_SCHEMES):
        raise _Problem((*path, "state"), "cluster.state: must be a PostgreSQL URL "
                       "(postgresql://user:password@host:5432/db), got "
                       f"{cluster.shown()!r}")
    if cluster.redis and not cluster.redis.startswith(_REDIS_SCHEMES):
        from recsync.dsn import mask_dsn

        raise _Problem((*path, "redis"), "cluster.redis: must be a Redis URL "
                       f"(redis://host:6379/0), got {mask_dsn(cluster.redis)!r}")
    return cluster


def _pipeline(
    customer: str,
    name: str,
    table: dict[str, Any],
    path: KeyPath,
    parent: Settings,
    rules: Mapping[str, RuleSet],
    lookup: ConnectorLookup,
    base_dir: str,
) -> PipelineConfig:
    table = dict(table)
    own = {k: table.pop(k) for k in ("rules", "a", "b") if k in table}
    settings = _apply(parent, table, path, extra=("rules", "a", "b"))
    for key in ("rules", "a", "b"):
        if key not in own:
            raise _Problem(path, f"{_fmt(path)} is missing required key '{key}'")
    rule_set = own["rules"]
    if not isinstance(rule_set, str):
        raise _Problem((*path, "rules"), _wrong_type((*path, "rules"), "a string", rule_set))
    if rule_set not in rules:
        close = difflib.get_close_matches(rule_set, list(rules), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise _Problem(
            (*path, "rules"),
            f"{_fmt((*path, 'rules'))} names rule set '{rule_set}', "
            f"which {RULES_FILE} does not define{hint}",
        )
    return PipelineConfig(
        customer=customer,
        name=name,
        rules=rule_set,
        a=_side(own["a"], (*path, "a"), lookup),
        b=_side(own["b"], (*path, "b"), lookup),
        settings=settings,
        base_dir=base_dir,
    )


def _side(raw: Any, path: KeyPath, lookup: ConnectorLookup) -> SideConfig:
    table = dict(_table(raw, path))
    if "connector" not in table:
        raise _Problem(path, f"{_fmt(path)} is missing required key 'connector'")
    name = table.pop("connector")
    limit_raw = table.pop("rate_limit", None)
    limit = None
    if limit_raw is not None:
        lpath: KeyPath = (*path, "rate_limit")
        limit = _convert(_table(limit_raw, lpath), RateLimitSettings, lpath)
    cpath = (*path, "connector")
    if not isinstance(name, str):
        raise _Problem(cpath, _wrong_type(cpath, "a string", name))
    try:
        cls = lookup(name)
    except ConfigError as err:
        msg = str(err).replace(". Did you mean", "; did you mean")
        raise _Problem(cpath, f"{_fmt(cpath)}: {_lower_first(msg)}") from None
    except Exception as err:  # a broken plug-in must not take the loader down
        raise _Problem(
            cpath, f"{_fmt(cpath)}: connector '{name}' cannot be loaded ({err})"
        ) from None
    config_type = getattr(cls, "Config", None)
    if not (isinstance(config_type, type) and issubclass(config_type, msgspec.Struct)):
        raise _Problem(cpath, f"{_fmt(cpath)}: connector '{name}' has no Config Struct")
    options = _convert(table, config_type, path, ("connector", "rate_limit"))
    return SideConfig(connector=name, options=_expand_path(options, path), rate_limit=limit)


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand_path(options: Any, path: KeyPath) -> Any:
    """A connector's ``path`` option with ``${NAME}`` replaced by the environment variable
    (recsyncd sets ``STATE_DIRECTORY`` to its state folder), so a config can put the files
    recsync writes in the writable state folder without naming it."""
    value = getattr(options, "path", None)
    if not isinstance(value, str) or "${" not in value:
        return options

    def var(m: re.Match[str]) -> str:
        found = os.environ.get(m.group(1))
        if found is None:
            ppath = (*path, "path")
            raise _Problem(ppath, f"{_fmt(ppath)} uses ${{{m.group(1)}}}, an environment "
                                  "variable that is not set")
        return found

    return msgspec.structs.replace(options, path=_VAR.sub(var, value))


def _apply(
    base: Settings, overrides: Mapping[str, Any], path: KeyPath, extra: Sequence[str] = ()
) -> Settings:
    """``base`` with the raw ``overrides`` merged in; errors name keys under ``path``."""
    _convert(dict(overrides), Settings, path, extra)  # errors point at this layer's keys
    plain = {
        k: msgspec.to_builtins(v) if isinstance(v, msgspec.Struct) else v
        for k, v in overrides.items()
    }
    return _convert(_merge(msgspec.to_builtins(base), plain), Settings, path, extra)


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        if isinstance(value, Mapping) and isinstance(old, dict):
            out[key] = _merge(old, value)
        else:
            out[key] = value
    return out


def _check_name(name: str, path: KeyPath, what: str) -> None:
    if not _NAME.fullmatch(name):
        raise _Problem(
            path,
            f"{_fmt(path)}: a {what} name may only contain letters, digits, '_', '-' and '.' "
            "(and must not start with '.' or '-')",
        )


# --------------------------------------------------------------------------- reading


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path.name}: file not found in {path.parent}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path.name}: not valid UTF-8 text ({err.reason})") from None
    except OSError as err:
        raise ConfigError(f"{path.name}: cannot be read ({err.strerror or err})") from None


_TOML_AT = re.compile(r"(?s)(.*?)\s*\((?:at line (\d+), column (\d+)|at end of document)\)\s*")


def _parse(text: str, filename: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        m = _TOML_AT.fullmatch(str(err))
        if m is None:
            raise ConfigError(f"{filename}: {_lower_first(str(err))}") from None
        what = _lower_first(m.group(1))
        if m.group(2) is None:
            raise ConfigError(f"{filename}, at the end of the file: {what}") from None
        raise ConfigError(f"{filename}, line {m.group(2)}: {what} (column {m.group(3)})") from None


# --------------------------------------------------------------------------- errors


class _Problem(Exception):
    """A config problem at ``path``; ``message`` already names the key path."""

    def __init__(self, path: KeyPath, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def _located(filename: str, text: str, problem: _Problem) -> str:
    line = _find_line(text, problem.path)
    where = f"{filename}, line {line}" if line else filename
    return f"{where}: {problem.message}"


def _table(value: Any, path: KeyPath) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Problem(path, _wrong_type(path, "a table", value))
    return value


def _convert(obj: Any, tp: type[T], path: KeyPath, extra: Sequence[str] = ()) -> T:
    """``msgspec.convert`` whose errors become a _Problem with a TOML-worded message."""
    try:
        return msgspec.convert(obj, tp)
    except msgspec.ValidationError as err:
        raise _reword(err, obj, tp, path, extra) from None


_AT = re.compile(r"(?s)(.*?)(?: - at `\$(.*)`)?")
_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+)\]|\[\.\.\.\]")
_EXPECTED = re.compile(r"Expected `([^`]+)`, got `(\w+)`")
_BOUND = re.compile(r"Expected `(\w+)` (>=|>|<=|<) (\S+)")
_MISSING = re.compile(r"Object missing required field `([^`]+)`")
_UNKNOWN = re.compile(r"Object contains unknown field `([^`]+)`")
_ENUM = re.compile(r"Invalid enum value (.+)")


def _reword(
    err: msgspec.ValidationError, obj: Any, tp: Any, path: KeyPath, extra: Sequence[str]
) -> _Problem:
    m = _AT.fullmatch(str(err))
    assert m is not None
    text = m.group(1)
    segs: list[str | int | None] = []
    for s in _SEGMENT.finditer(m.group(2) or ""):
        segs.append(s.group(1) if s.group(1) is not None else _int_or_none(s.group(2)))
    if None in segs:  # msgspec does not name dict keys: find the failing entry ourselves
        i = segs.index(None)
        sub_obj, sub_tp = _walk(obj, tp, segs[:i])
        value_tp = _dict_value_type(sub_tp)
        if isinstance(sub_obj, dict):
            for key, value in sub_obj.items():
                try:
                    msgspec.convert(value, value_tp)
                except msgspec.ValidationError as inner:
                    rel = tuple(s for s in segs[:i] if s is not None)
                    return _reword(inner, value, value_tp, (*path, *rel, key), ())
        segs = segs[:i]
    rel_path: KeyPath = tuple(s for s in segs if s is not None)
    full: KeyPath = (*path, *rel_path)
    here_obj, here_tp = _walk(obj, tp, list(rel_path))

    if mm := _UNKNOWN.fullmatch(text):
        names = _field_names(here_tp) + (list(extra) if not rel_path else [])
        return _Problem((*full, mm.group(1)), _unknown_key((*full, mm.group(1)), names))
    if mm := _MISSING.fullmatch(text):
        where = _fmt(full) if full else "the file"
        return _Problem(full, f"{where} is missing required key '{mm.group(1)}'")
    if mm := _EXPECTED.fullmatch(text):
        wanted = [_TOML_TYPES.get(t, t) for t in mm.group(1).split(" | ") if t != "null"]
        got = _GOT_TYPES.get(mm.group(2), mm.group(2))
        return _Problem(full, f"{_fmt(full)}: expected {_join_or(wanted)}, got {got}")
    if mm := _BOUND.fullmatch(text):
        bound = _num(mm.group(3))
        phrase = {
            ">=": "at least",
            ">": "greater than",
            "<=": "at most",
            "<": "less than",
        }[mm.group(2)]
        return _Problem(full, f"{_fmt(full)}: must be {phrase} {bound}, got {_show(here_obj)}")
    if mm := _ENUM.fullmatch(text):
        allowed = [str(v) for v in _literal_values(here_tp)]
        msg = f"{_fmt(full)}: invalid value {_show(here_obj)}"
        if allowed:
            msg += "; expected one of " + ", ".join(f"'{v}'" for v in allowed)
            close = difflib.get_close_matches(str(here_obj), allowed, n=1)
            if close:
                msg += f"; did you mean '{close[0]}'?"
        return _Problem(full, msg)
    cause = err.__cause__
    if isinstance(cause, RuleError):
        full = (*full, *cause.path)
        return _Problem(full, f"{_fmt(full)}: {cause}")
    return _Problem(full, f"{_fmt(full)}: {_lower_first(text)}" if full else _lower_first(text))


def _unknown_key(path: KeyPath, allowed: Sequence[str]) -> str:
    msg = f"unknown key '{_fmt(path)}'"
    close = difflib.get_close_matches(str(path[-1]), list(allowed), n=1)
    return f"{msg}; did you mean '{close[0]}'?" if close else msg


def _wrong_type(path: KeyPath, expected: str, value: Any) -> str:
    return f"{_fmt(path)}: expected {expected}, got {_toml_type(value)}"


_TOML_TYPES = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "array": "an array",
    "object": "a table",
    "datetime": "a date-time",
    "date": "a date",
    "time": "a time",
}
_GOT_TYPES = {**_TOML_TYPES, "float": "a float"}


def _toml_type(value: Any) -> str:
    for tp, name in (
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a float"),
        (str, "a string"),
        (list, "an array"),
        (dict, "a table"),
    ):
        if isinstance(value, tp):
            return name
    return type(value).__name__


def _join_or(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"'{value}'"
    return str(value)


def _num(text: str) -> str:
    try:
        value = float(text)
    except ValueError:
        return text
    return str(int(value)) if value.is_integer() else text


def _int_or_none(text: str | None) -> int | None:
    return None if text is None else int(text)


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text[1:2].islower() or len(text) < 2 else text


_BARE = re.compile(r"[A-Za-z0-9_-]+")


def _fmt(path: KeyPath) -> str:
    """A key path as written in TOML: ``customers.demo.pipelines."my pipe".a_to_b[1]``."""
    out = ""
    for seg in path:
        if isinstance(seg, int):
            out += f"[{seg}]"
        else:
            part = seg if _BARE.fullmatch(seg) else json.dumps(seg, ensure_ascii=False)
            out += f".{part}" if out else part
    return out


# --------------------------------------------------------------------------- type walking


def _strip(tp: Any) -> list[Any]:
    """The member types of ``tp`` without Annotated, unions flattened, UNSET/None dropped."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _strip(typing.get_args(tp)[0])
    if origin is typing.Union or origin is types.UnionType:
        return [m for arg in typing.get_args(tp) for m in _strip(arg)]
    if tp is type(None) or tp is msgspec.UnsetType:
        return []
    return [tp]


def _struct(tp: Any) -> type[msgspec.Struct] | None:
    for member in _strip(tp):
        if isinstance(member, type) and issubclass(member, msgspec.Struct):
            return member
    return None


def _dict_value_type(tp: Any) -> Any:
    for member in _strip(tp):
        if typing.get_origin(member) is dict:
            return typing.get_args(member)[1]
    return Any


def _walk(obj: Any, tp: Any, segs: Sequence[str | int | None]) -> tuple[Any, Any]:
    """The raw value and the declared type at ``segs`` (best effort; Any when unknown)."""
    for seg in segs:
        if isinstance(seg, str):
            struct = _struct(tp)
            tp = Any
            if struct is not None:
                for f in msgspec.structs.fields(struct):
                    if f.encode_name == seg:
                        tp = f.type
            obj = obj.get(seg) if isinstance(obj, dict) else None
        elif isinstance(seg, int):
            item: Any = Any
            for member in _strip(tp):
                if typing.get_origin(member) is list:
                    item = typing.get_args(member)[0]
            tp = item
            obj = obj[seg] if isinstance(obj, list) and seg < len(obj) else None
    return obj, tp


def _field_names(tp: Any) -> list[str]:
    struct = _struct(tp)
    return [f.encode_name for f in msgspec.structs.fields(struct)] if struct else []


def _literal_values(tp: Any) -> list[Any]:
    return [
        v for m in _strip(tp) if typing.get_origin(m) is typing.Literal for v in typing.get_args(m)
    ]


# --------------------------------------------------------------------------- line numbers

_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_HEADER = re.compile(rf"\s*\[\[?\s*({_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*\]\]?")
_ASSIGN = re.compile(rf"\s*({_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*=")
_PART = re.compile(_KEY_PART)


def _split_key(text: str) -> tuple[str, ...]:
    parts: list[str] = []
    for m in _PART.finditer(text):
        tok = m.group(0)
        if tok.startswith('"'):
            try:
                tok = json.loads(tok)
            except ValueError:
                tok = tok[1:-1]
        elif tok.startswith("'"):
            tok = tok[1:-1]
        parts.append(tok)
    return tuple(parts)


def _find_line(text: str, path: KeyPath) -> int | None:
    """Line (1-based) of the deepest table header or key that ``path`` starts with."""
    want: list[str] = []
    for seg in path:
        if not isinstance(seg, str):
            break
        want.append(seg)
    best, best_line = 0, None
    header: tuple[str, ...] = ()
    in_string: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if in_string is not None:
            if in_string in line:
                in_string = None
            continue
        if m := _HEADER.match(line):
            header = _split_key(m.group(1))
            candidate = header
        elif m := _ASSIGN.match(line):
            candidate = header + _split_key(m.group(1))
            rest = line[m.end() :]
            for quote in ('"""', "'''"):
                if rest.count(quote) == 1:
                    in_string = quote
        else:
            continue
        n = len(candidate)
        if n > best and tuple(want[:n]) == candidate:
            best, best_line = n, number
            if n == len(want):
                break
    return best_line
