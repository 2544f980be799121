"""recsyncd: the record-sync daemon.

``Daemon``, ``PipelineReport`` and ``main`` load on first use: the `recsync` client imports
``recsync.daemon.protocol`` and ``recsync.daemon.runtime``, and must not pay for the whole
daemon (actors, connectors, state), which cost each `recsync` call ~0.3 s of CPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recsync.daemon.app import Daemon, PipelineReport
    from recsync.daemon.main import main

__all__ = ["Daemon", "PipelineReport", "main"]

_LAZY = {"Daemon": "recsync.daemon.app", "PipelineReport": "recsync.daemon.app",
         "main": "recsync.daemon.main"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
