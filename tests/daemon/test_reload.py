"""Config hot reload: the file watcher (real files, real thread) and diff_configs."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from recsync.clock import FakeClock
from recsync.config import RULES_FILE, SETTINGS_FILE, AppConfig, load_config
from recsync.daemon.reload import ConfigDiff, ConfigWatcher, diff_configs, file_signature

RULES = """\
[contacts]
a_to_b = ["create", "update", "delete"]
b_to_a = ["create", "update"]
[contacts.mappings]
id = "id"
name = "full_name"

[leads]
a_to_b = ["create"]
[leads.mappings]
id = "id"
"""

SETTINGS = """\
[defaults]
batch_size = 200

[customers.acme.pipelines.contacts]
rules = "contacts"
a = { connector = "file", path = "data/a.csv", key = "id" }
b = { connector = "file", path = "data/b.csv", key = "id" }

[customers.acme.pipelines.leads]
rules = "leads"
a = { connector = "file", path = "data/leads_a.csv", key = "id" }
b = { connector = "file", path = "data/leads_b.csv", key = "id" }
"""


def write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def rename_save(path: Path, text: str) -> None:
    """Save the way many editors do: write a temporary file, rename it over the original."""
    tmp = path.with_name(f".{path.name}.swp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    write(tmp_path / SETTINGS_FILE, SETTINGS)
    write(tmp_path / RULES_FILE, RULES)
    return tmp_path


class Recorder:
    """An on_change that counts its calls and lets tests wait for the n-th one."""

    def __init__(self, action: Callable[[int], None] | None = None) -> None:
        self.calls = 0
        self._cond = threading.Condition()
        self._action = action

    def __call__(self) -> None:
        with self._cond:
            self.calls += 1
            n = self.calls
            self._cond.notify_all()
        if self._action is not None:
            self._action(n)

    def wait_for(self, n: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.calls >= n, timeout)


@pytest.fixture
def watchers() -> Iterator[list[ConfigWatcher]]:
    made: list[ConfigWatcher] = []
    yield made
    for w in made:
        w.stop()


# --------------------------------------------------------------------------- polling by hand


def test_no_change_never_fires(config_dir: Path) -> None:
    rec = Recorder()
    w = ConfigWatcher(config_dir, rec)
    assert not any(w.poll() for _ in range(5))
    assert rec.calls == 0


def test_in_place_edit_fires_once_after_it_settles(config_dir: Path) -> None:
    rec = Recorder()
    w = ConfigWatcher(config_dir, rec)
    write(config_dir / SETTINGS_FILE, SETTINGS.replace("batch_size = 200", "batch_size = 50"))
    assert w.poll() is False  # seen once: not settled yet
    assert w.poll() is True  # same signature one interval later: fire
    assert rec.calls == 1
    assert not any(w.poll() for _ in range(5))  # once per change
    assert rec.calls == 1


def test_a_write_of_the_daemons_own_is_accepted_not_reloaded(config_dir: Path) -> None:
    """`config override --persist` writes the file with its change already live: a reload
    would only drop the other pipelines' live overrides. An edit after it still fires."""
    rec = Recorder()
    w = ConfigWatcher(config_dir, rec)
    write(config_dir / SETTINGS_FILE, SETTINGS.replace("batch_size = 200", "batch_size = 50"))
    assert w.poll() is False  # seen once before the daemon says it is its own
    w.accept()
    assert not any(w.poll() for _ in range(5))
    assert rec.calls == 0
    write(config_dir / SETTINGS_FILE, SETTINGS.replace("batch_size = 200", "batch_size = 60"))
    assert w.poll() is False and w.poll() is True
    assert rec.calls == 1


def test_the_change_is_logged_with_the_file_that_changed(
    config_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    w = ConfigWatcher(config_dir, Recorder())
    write(config_dir / RULES_FILE, RULES + "\n")
    with caplog.at_level(logging.INFO, logger="recsync.daemon.reload"):
        assert [w.poll(), w.poll()] == [False, True]
    (record,) = [r for r in caplog.records if r.getMessage() == "config files changed"]
    assert record.files == [RULES_FILE]  # type: ignore[attr-defined]


def test_half_written_file_is_not_loaded(config_dir: Path) -> None:
    seen: list[str] = []
    rec = Recorder(lambda _n: seen.append((config_dir / RULES_FILE).read_text()))
    w = ConfigWatcher(config_dir, rec)
    path = config_dir / RULES_FILE
    new = RULES + '\n[more]\na_to_b = ["update"]\n[more.mappings]\nid = "id"\n'
    with path.open("w", encoding="utf-8") as f:  # truncate + first half
        f.write(new[:40])
        f.flush()
        assert w.poll() is False
        f.write(new[40:])  # still being written at the next poll
        f.flush()
        assert w.poll() is False
    assert w.poll() is True
    assert seen == [new]


def test_rename_save_fires_once(config_dir: Path) -> None:
    rec = Recorder()
    w = ConfigWatcher(config_dir, rec)
    path = config_dir / RULES_FILE
    before = file_signature(path)
    rename_save(path, RULES.replace('"delete"', '"delete" '))  # same size? no matter
    after = file_signature(path)
    assert before is not None and after is not None and before[0] != after[0]  # new inode
    assert w.poll() is False
    assert w.poll() is True
    assert not any(w.poll() for _ in range(3))
    assert rec.calls == 1


def test_same_size_same_mtime_rename_is_still_a_change(config_dir: Path) -> None:
    """Only the inode differs: the rename-save is still seen."""
    rec = Recorder()
    w = ConfigWatcher(config_dir, rec)
    path = config_dir / SETTINGS_FILE
    st = path.stat()
    tmp = path.with_name("new.toml")
    write(tmp, SETTINGS.replace("200", "300"))
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, path)
    assert w.poll() is False
    assert w.poll() is True


def test_missing_file_waits_until_it_is_back(config_dir: Path) -> None:
    rec = Recorder()
    w = ConfigWatcher(config_dir, rec)
    path = config_dir / SETTINGS_FILE
    backup = path.with_name(SETTINGS_FILE + "~")
    os.rename(path, backup)  # vim-style save: original moved away first...
    assert not any(w.poll() for _ in range(5))  # ...missing is not a change, nor an error
    assert rec.calls == 0
    write(path, SETTINGS.replace("batch_size = 200", "batch_size = 10"))  # ...new file written
    assert w.poll() is False
    assert w.poll() is True
    assert rec.calls == 1


def test_a_file_moved_away_and_back_unchanged_is_reloaded(config_dir: Path) -> None:
    """`mv rules.toml /tmp/x; recsync reload` reports the file missing; `mv /tmp/x
    rules.toml` brings back the very same file (inode, mtime, size): reloaded all the same,
    so that error does not stay."""
    rec = Recorder()
    w = ConfigWatcher(config_dir, rec)
    path = config_dir / RULES_FILE
    away = config_dir.parent / "away.toml"
    os.rename(path, away)
    assert not any(w.poll() for _ in range(3))
    os.rename(away, path)
    assert [w.poll(), w.poll()] == [False, True]
    assert rec.calls == 1
    assert not any(w.poll() for _ in range(3))


def test_file_missing_at_start_fires_when_it_appears(tmp_path: Path) -> None:
    write(tmp_path / RULES_FILE, RULES)
    rec = Recorder()
    w = ConfigWatcher(tmp_path, rec)
    assert w.poll() is False
    write(tmp_path / SETTINGS_FILE, SETTINGS)
    assert [w.poll(), w.poll()] == [False, True]


def test_touch_counts_as_a_change(config_dir: Path) -> None:
    """Documented: any new mtime fires (the daemon then finds an empty diff)."""
    rec = Recorder()
    w = ConfigWatcher(config_dir, rec)
    path = config_dir / RULES_FILE
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert [w.poll(), w.poll()] == [False, True]
    old = load_config(config_dir)
    assert diff_configs(old, load_config(config_dir)).empty


def test_long_missing_file_is_warned_about_once(
    config_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    w = ConfigWatcher(config_dir, Recorder(), clock=clock)
    (config_dir / RULES_FILE).unlink()
    with caplog.at_level(logging.DEBUG, logger="recsync.daemon.reload"):
        w.poll()
        clock.advance(1.0)
        w.poll()
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        clock.advance(5.0)
        w.poll()
        w.poll()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "missing" in warnings[0].getMessage()


# --------------------------------------------------------------------------- the thread


def test_thread_picks_up_an_edit_within_two_seconds(
    config_dir: Path, watchers: list[ConfigWatcher]
) -> None:
    rec = Recorder()
    w = ConfigWatcher(config_dir, rec)  # default interval
    watchers.append(w)
    w.start()
    started = time.monotonic()
    write(config_dir / SETTINGS_FILE, SETTINGS.replace("batch_size = 200", "batch_size = 7"))
    assert rec.wait_for(1, timeout=2.0)
    assert time.monotonic() - started < 2.0
    t0 = time.monotonic()
    w.stop()
    assert time.monotonic() - t0 < 0.4  # Event.wait: stop does not wait out the interval
    assert not w.running
    w.stop()  # idempotent


def test_thread_fires_once_per_rename_save(config_dir: Path, watchers: list[ConfigWatcher]) -> None:
    rec = Recorder()
    w = ConfigWatcher(config_dir, rec, interval=0.02)
    watchers.append(w)
    w.start()
    rename_save(config_dir / RULES_FILE, RULES + "\n# edited\n")
    assert rec.wait_for(1, timeout=5.0)
    # Several more polls happen while we wait for a second call that must not come.
    assert not rec.wait_for(2, timeout=0.3)
    assert rec.calls == 1


def test_thread_survives_on_change_raising(
    config_dir: Path, watchers: list[ConfigWatcher], caplog: pytest.LogCaptureFixture
) -> None:
    def explode(n: int) -> None:
        if n == 1:
            raise RuntimeError("bad reload")

    rec = Recorder(explode)
    w = ConfigWatcher(config_dir, rec, interval=0.02)
    watchers.append(w)
    with caplog.at_level(logging.ERROR, logger="recsync.daemon.reload"):
        w.start()
        write(config_dir / SETTINGS_FILE, SETTINGS + "\n# one\n")
        assert rec.wait_for(1, timeout=5.0)
        write(config_dir / SETTINGS_FILE, SETTINGS + "\n# two, longer\n")
        assert rec.wait_for(2, timeout=5.0)
    assert w.running
    assert any("bad reload" in (r.exc_text or str(r.exc_info)) for r in caplog.records)


def test_stop_before_start_and_from_on_change(
    config_dir: Path, watchers: list[ConfigWatcher]
) -> None:
    ConfigWatcher(config_dir, Recorder()).stop()  # never started: fine

    holder: list[ConfigWatcher] = []
    rec = Recorder(lambda _n: holder[0].stop())  # stop from inside the callback: no deadlock
    w = ConfigWatcher(config_dir, rec, interval=0.02)
    holder.append(w)
    watchers.append(w)
    w.start()
    write(config_dir / RULES_FILE, RULES + "\n# x\n")
    assert rec.wait_for(1, timeout=5.0)
    deadline = time.monotonic() + 5.0
    while w.running and time.monotonic() < deadline:
        threading.Event().wait(0.01)
    assert not w.running
    with pytest.raises(RuntimeError):
        w.start()


# --------------------------------------------------------------------------- diff_configs


def reload_with(
    config_dir: Path, settings: str | None = None, rules: str | None = None
) -> AppConfig:
    if settings is not None:
        write(config_dir / SETTINGS_FILE, settings)
    if rules is not None:
        write(config_dir / RULES_FILE, rules)
    return load_config(config_dir)


def test_diff_identical_is_empty(config_dir: Path) -> None:
    diff = diff_configs(load_config(config_dir), load_config(config_dir))
    assert diff == ConfigDiff()
    assert diff.empty and not diff
    assert diff.summary() == {}


def test_diff_settings_only(config_dir: Path) -> None:
    old = load_config(config_dir)
    new = reload_with(config_dir, SETTINGS.replace("batch_size = 200", "batch_size = 50"))
    diff = diff_configs(old, new)
    assert diff.changed == {"acme/contacts", "acme/leads"}  # defaults reach every pipeline
    assert diff.settings_only == diff.changed
    assert diff.restart == set()
    assert not diff.added and not diff.removed and not diff.rules_changed


def test_diff_connector_change_needs_restart(config_dir: Path) -> None:
    old = load_config(config_dir)
    new = reload_with(
        config_dir,
        SETTINGS.replace('path = "data/b.csv"', 'path = "data/b2.csv"').replace(
            "[customers.acme.pipelines.leads]",
            "[customers.acme.pipelines.leads]\npoll_interval = 9",
        ),
    )
    diff = diff_configs(old, new)
    assert diff.changed == {"acme/contacts", "acme/leads"}
    assert diff.settings_only == {"acme/leads"}
    assert diff.restart == {"acme/contacts"}


def test_diff_rule_set_content_change(config_dir: Path) -> None:
    old = load_config(config_dir)
    new = reload_with(config_dir, rules=RULES.replace('b_to_a = ["create", "update"]', ""))
    diff = diff_configs(old, new)
    assert diff.rules_changed == {"contacts"}
    assert diff.changed == {"acme/contacts"}  # its PipelineConfig is equal, its RuleSet is not
    assert old.pipelines["acme/contacts"] == new.pipelines["acme/contacts"]
    assert diff.settings_only == set()
    assert diff.rules_live == {"acme/contacts"}
    assert diff.restart == {"acme/contacts"}


def test_diff_rule_set_name_change(config_dir: Path) -> None:
    old = load_config(config_dir)
    new = reload_with(
        config_dir,
        SETTINGS.replace('rules = "leads"', 'rules = "contacts"'),
    )
    diff = diff_configs(old, new)
    assert diff.changed == {"acme/leads"}
    assert diff.restart == {"acme/leads"}
    assert diff.rules_live == set()
    assert diff.rules_changed == set()  # rules.toml itself is the same


def test_diff_added_removed_and_rule_sets(config_dir: Path) -> None:
    old = load_config(config_dir)
    settings = SETTINGS.replace("customers.acme.pipelines.leads", "customers.beta.pipelines.leads")
    rules = RULES + '\n[orders]\na_to_b = ["create"]\n[orders.mappings]\nid = "id"\n'
    new = reload_with(config_dir, settings, rules)
    diff = diff_configs(old, new)
    assert diff.added == {"beta/leads"}
    assert diff.removed == {"acme/leads"}
    assert diff.changed == set()
    assert diff.rules_changed == {"orders"}
    assert diff.summary() == {
        "added": ["beta/leads"],
        "removed": ["acme/leads"],
        "rules_changed": ["orders"],
    }
    back = diff_configs(new, old)
    assert back.added == {"acme/leads"} and back.removed == {"beta/leads"}
