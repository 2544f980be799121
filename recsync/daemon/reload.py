"""Hot reload: watch the two config files, and tell what a new configuration changes.

:class:`ConfigWatcher` polls ``customer_settings.toml`` and ``rules.toml`` by their stat
signature ``(st_ino, st_mtime_ns, st_size)`` and calls ``on_change()`` once per *settled*
change: a new signature must stay the same for one more poll before the callback fires, so
a file still being written is not loaded half-way. Editors that save by writing a temporary
file and renaming it over the original change the inode, which the signature catches; a file
that is briefly missing during such a save is waited for, not reported.

Any change of the signature counts, including ``touch`` on an unchanged file: ``on_change``
must therefore be cheap to call when nothing really changed (load, :func:`diff_configs`,
and do nothing for an empty diff). ``touch customer_settings.toml`` is a way to force a
reload.

:func:`diff_configs` compares two loaded configurations; it is pure.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import msgspec

from recsync.clock import Clock, SystemClock
from recsync.config import RULES_FILE, SETTINGS_FILE, AppConfig, PipelineConfig
from recsync.rules import RuleSet

__all__ = ["ConfigDiff", "ConfigWatcher", "Signature", "diff_configs", "file_signature"]

log = logging.getLogger(__name__)

Signature = tuple[int, int, int]
"""``(st_ino, st_mtime_ns, st_size)`` of a file."""

# Warn (once) when a watched file stays missing this long: more than a rename-save.
MISSING_WARNING_AFTER = 5.0


def file_signature(path: Path) -> Signature | None:
    """The stat signature of ``path``, or ``None`` when it does not exist (or is unreadable)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class ConfigWatcher:
    """A thread that calls ``on_change()`` once per settled change of the config files.

    With the default ``interval`` of 0.5 s an edit is picked up within about 1 s: one poll
    to see it, one more to see it has settled. ``on_change`` runs on the watcher thread; an
    exception in it is logged and the watcher goes on. ``clock`` (a
    :class:`~recsync.clock.Clock`) only measures how long a file has been missing.
    """

    def __init__(
        self,
        config_dir: Path | str,
        on_change: Callable[[], None],
        *,
        interval: float = 0.5,
        clock: Clock | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be greater than 0, got {interval}")
        folder = Path(config_dir)
        self.paths: tuple[Path, ...] = (folder / SETTINGS_FILE, folder / RULES_FILE)
        self.interval = interval
        self._on_change = on_change
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._baseline = self._signatures()  # the state last reported (or found at creation)
        self._candidate: tuple[Signature | None, ...] | None = None  # seen once, not settled
        self._missing_since: float | None = None
        self._missing_warned = False
        self.changes = 0  # on_change calls so far (handy for status and tests)

    # -- thread ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start watching.

        The baseline is the files' state when the watcher was *created*: create it before
        loading the config, start it once the daemon runs, and an edit made during startup
        is still reported.
        """
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("ConfigWatcher already started")
            self._thread = threading.Thread(target=self._run, name="config-watcher", daemon=True)
            self._thread.start()
        log.debug("watching config files", extra={"files": [str(p) for p in self.paths]})

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop the thread and wait for it (unless called from ``on_change``). Idempotent."""
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def __enter__(self) -> ConfigWatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:  # never let the watcher die
                log.exception("config watcher: unexpected error while polling")

    # -- one poll ----------------------------------------------------------------------------
    def poll(self) -> bool:
        """Look at the files once; call ``on_change`` if a change has settled.

        The thread calls this every ``interval``; it is public so a caller can drive the
        watcher by hand (without :meth:`start`). Returns whether ``on_change`` was called.
        """
        current = self._signatures()
        if None in current:
            self._note_missing(current)
            self._candidate = None  # start settling again once the file is back
            return False
        if self._missing_since is not None:
            # back after missing, maybe as the very same file (moved away and back): a
            # reload, to replace the error a reload meanwhile reported (file not found)
            self._baseline = ()
        self._note_present()
        if current == self._baseline:
            self._candidate = None
            return False
        if current != self._candidate:
            self._candidate = current  # changed since the last poll: wait one more interval
            return False
        changed = [p.name for p, now, before in zip(self.paths, current, self._baseline or
                                                   (None,) * len(self.paths), strict=True)
                   if now != before]
        self._baseline = current
        self._candidate = None
        self.changes += 1
        log.info("config files changed", extra={"files": changed})
        try:
            self._on_change()
        except Exception:
            log.exception("config reload failed; the watcher goes on")
        return True

    def accept(self) -> None:
        """The files as they are now are the running configuration (the daemon wrote them
        itself, with their change applied already): not a change to report."""
        self._baseline = self._signatures()
        self._candidate = None

    def _signatures(self) -> tuple[Signature | None, ...]:
        return tuple(file_signature(p) for p in self.paths)

    def _note_missing(self, current: tuple[Signature | None, ...]) -> None:
        now = self._clock.monotonic()
        missing = [p.name for p, sig in zip(self.paths, current, strict=True) if sig is None]
        if self._missing_since is None:
            self._missing_since = now
            log.debug("config file missing; waiting for it", extra={"files": missing})
        elif not self._missing_warned and now - self._missing_since >= MISSING_WARNING_AFTER:
            self._missing_warned = True
            log.warning(
                "config file missing; the running configuration stays until it is back",
                extra={"files": missing, "folder": str(self.paths[0].parent)},
            )

    def _note_present(self) -> None:
        if self._missing_warned:
            log.info("config files are back")
        self._missing_since = None
        self._missing_warned = False


# --------------------------------------------------------------------------- diff


class ConfigDiff(msgspec.Struct, frozen=True, kw_only=True):
    """What a new configuration changes, by pipeline id and rule set name.

    - ``added`` / ``removed``: pipelines only in the new / the old configuration.
    - ``changed``: pipelines in both whose :class:`~recsync.config.PipelineConfig` differs or
      whose rule set (by content) differs.
    - ``settings_only``: the part of ``changed`` where only ``settings`` differ (batch size,
      intervals, rate limit, ...): apply live, no restart.
    - ``rules_live``: the part of ``changed`` where the connectors and the rule set *name*
      are the same but the rule set's content differs (settings may differ too): the rules
      actor can swap the rule set atomically instead of restarting the pipeline.
    - ``restart``: ``changed - settings_only`` (connector options, rule set name, base
      folder, or rule set content): the safe choice is to restart these pipelines.
    - ``rules_changed``: rule set names added, removed or changed in ``rules.toml``.
    """

    added: frozenset[str] = frozenset()
    removed: frozenset[str] = frozenset()
    changed: frozenset[str] = frozenset()
    settings_only: frozenset[str] = frozenset()
    rules_live: frozenset[str] = frozenset()
    rules_changed: frozenset[str] = frozenset()

    @property
    def restart(self) -> frozenset[str]:
        """Changed pipelines that cannot be updated by new settings alone."""
        return self.changed - self.settings_only

    @property
    def empty(self) -> bool:
        """Nothing that matters changed (e.g. only a comment, or a ``touch``)."""
        return not (self.added or self.removed or self.changed or self.rules_changed)

    def __bool__(self) -> bool:
        return not self.empty

    def summary(self) -> dict[str, list[str]]:
        """Sorted lists of the non-empty parts, for logs and replies."""
        parts = {
            "added": self.added,
            "removed": self.removed,
            "changed": self.changed,
            "settings_only": self.settings_only,
            "rules_live": self.rules_live,
            "restart": self.restart,
            "rules_changed": self.rules_changed,
        }
        return {name: sorted(ids) for name, ids in parts.items() if ids}


def diff_configs(old: AppConfig, new: AppConfig) -> ConfigDiff:
    """Compare two configurations (pure: no I/O, the inputs are not touched)."""
    old_ids, new_ids = set(old.pipelines), set(new.pipelines)
    changed: set[str] = set()
    settings_only: set[str] = set()
    rules_live: set[str] = set()
    for pid in old_ids & new_ids:
        before, after = old.pipelines[pid], new.pipelines[pid]
        same_rules = _rule_set(old, before) == _rule_set(new, after)
        if before == after and same_rules:
            continue
        changed.add(pid)
        structural = msgspec.structs.replace(before, settings=after.settings) != after
        if structural:
            continue
        if same_rules:
            settings_only.add(pid)
        else:
            rules_live.add(pid)
    names = set(old.rules) | set(new.rules)
    rules_changed = {n for n in names if old.rules.get(n) != new.rules.get(n)}
    return ConfigDiff(
        added=frozenset(new_ids - old_ids),
        removed=frozenset(old_ids - new_ids),
        changed=frozenset(changed),
        settings_only=frozenset(settings_only),
        rules_live=frozenset(rules_live),
        rules_changed=frozenset(rules_changed),
    )


def _rule_set(config: AppConfig, pipeline: PipelineConfig) -> RuleSet | None:
    return config.rules.get(pipeline.rules)
