"""`recsync config show`: a pipeline's effective settings, each with where it came from.

Settings merge ``[defaults]`` <- ``[customers.X]`` <- ``[customers.X.pipelines.P]`` (see
recsync.config); a value that differs from what those layers give was changed live
(`recsync config override`). Side options come from the pipeline's ``a``/``b`` tables or
the connector's defaults; secret-looking ones are masked.
"""

from __future__ import annotations

from typing import Any

import msgspec

from recsync.config import SETTINGS_FILE, AppConfig, PipelineConfig, Settings, _fmt
from recsync.daemon.logs import redact
from recsync.daemon.protocol import PipelineSettings, SettingValue

__all__ = ["pipeline_settings"]

Layer = tuple[str, str, dict[str, Any]]  # (source, where, raw TOML table)


def pipeline_settings(config: AppConfig, cfg: PipelineConfig) -> PipelineSettings:
    doc = config.settings_doc
    customer = _table(_table(doc.get("customers")).get(cfg.customer))
    pipe = _table(_table(customer.get("pipelines")).get(cfg.name))
    cpath = ("customers", cfg.customer)
    ppath = (*cpath, "pipelines", cfg.name)
    layers: list[Layer] = [
        ("defaults", f"{SETTINGS_FILE} [defaults]", _table(doc.get("defaults"))),
        ("customer", f"{SETTINGS_FILE} [{_fmt(cpath)}]", customer),
        ("pipeline", f"{SETTINGS_FILE} [{_fmt(ppath)}]", pipe),
    ]
    running = msgspec.to_builtins(cfg.settings)
    settings = {}
    for name, default in _flat(msgspec.to_builtins(Settings())).items():
        source, where, value = "default", "built-in default", default
        for layer, at, table in layers:
            found = _get(table, name)
            if found is not _MISSING:
                source, where, value = layer, at, found
        now = _get(running, name)
        if now != value:
            source, where = "override", "live override (recsync config override)"
        settings[name] = SettingValue(now, source, where)
    sides = {side: _side(side_cfg, _table(pipe.get(side)), f"{SETTINGS_FILE} "
                         f"[{_fmt((*ppath, side))}]")
             for side, side_cfg in (("a", cfg.a), ("b", cfg.b))}
    return PipelineSettings(cfg.id, cfg.customer, cfg.name, cfg.rules, settings, sides)


def _side(side_cfg: Any, raw: dict[str, Any], where: str) -> dict[str, SettingValue]:
    out = {"connector": SettingValue(side_cfg.connector, "pipeline", where)}
    options = side_cfg.options
    for field in msgspec.structs.fields(type(options)):
        value = msgspec.to_builtins(getattr(options, field.name))
        if value not in ("", None):  # secrets by name (not the *_env names), inside text
            value = redact(value, "" if field.encode_name.endswith("_env") else field.encode_name)
        if field.encode_name in raw:
            out[field.encode_name] = SettingValue(value, "pipeline", where)
        else:
            out[field.encode_name] = SettingValue(value, "default", "connector default")
    return out


_MISSING = object()


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _get(table: dict[str, Any], dotted: str) -> Any:
    value: Any = table
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _table(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
