"""State file names: one per pipeline, and files under the old names carried over."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from recsync.clock import FakeClock
from recsync.messages import Prepared
from recsync.rules import RuleSet, content_hash
from recsync.state.paths import legacy_state_file_name, migrate_state_files, state_file_name
from recsync.state.store import Store

RULES = RuleSet(name="t", a_to_b=["create"], b_to_a=[], mappings={"id": "id"})
CONFIG_NAME = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,8}", fullmatch=True)


def test_pipelines_that_shared_a_file_under_the_old_names_get_one_each() -> None:
    assert legacy_state_file_name("x/y__z") == legacy_state_file_name("x__y/z")
    assert state_file_name("x/y__z") != state_file_name("x__y/z")
    assert state_file_name("x_/_y") != state_file_name("x/__y")
    # names without the ambiguity keep the old name: existing files are found as they are
    for pid in ("test/p", "demo/users_sf", "customer1/p_1", "_a/b.c-d"):
        assert state_file_name(pid) == legacy_state_file_name(pid)


@settings(max_examples=50)
@given(st.lists(st.tuples(CONFIG_NAME, CONFIG_NAME), unique=True, max_size=30))
def test_no_two_configured_pipelines_share_a_name(pairs: list[tuple[str, str]]) -> None:
    names = {state_file_name(f"{c}/{n}") for c, n in pairs}
    assert len(names) == len(pairs)


@settings(max_examples=50)
@given(st.lists(st.tuples(st.text(max_size=6).filter(lambda t: "/" not in t),
                          st.text(max_size=6)), unique=True, max_size=30))
def test_any_names_get_distinct_safe_file_names(pairs: list[tuple[str, str]]) -> None:
    names = {state_file_name(f"{c}/{n}") for c, n in pairs}
    assert len(names) == len(pairs)
    assert all("/" not in n and "\0" not in n for n in names)


def keep_state(path: Path, cursor: str) -> None:
    store = Store(path, FakeClock(time=1.0))
    content = {"id": "1"}
    store.enqueue("a", [Prepared("1", "upsert", content, content_hash(content), True, 1.0)],
                  cursor, 1.0, RULES)
    store.close()


def cursor_of(path: Path) -> str | None:
    store = Store(path)
    try:
        return store.cursor("a")
    finally:
        store.close()


def test_an_old_named_file_is_renamed_for_the_one_pipeline_that_used_it(tmp_path: Path) -> None:
    old = tmp_path / "x__y__z.sqlite"
    keep_state(old, "c-old")
    notes = migrate_state_files(tmp_path, ["x__y/z", "other/p"])
    new = tmp_path / state_file_name("x__y/z")
    assert not old.exists() and cursor_of(new) == "c-old"
    assert notes == [f"state file {old} renamed to {new.name} (pipeline x__y/z)"]
    assert migrate_state_files(tmp_path, ["x__y/z", "other/p"]) == []  # once only


def test_a_shared_old_file_stays_with_the_pipeline_whose_name_it_has(tmp_path: Path) -> None:
    old = tmp_path / "x__y__z.sqlite"
    keep_state(old, "c-shared")
    (note,) = migrate_state_files(tmp_path, ["x/y__z", "x__y/z"])
    assert "shared by pipelines x/y__z, x__y/z" in note and "x/y__z keeps it" in note
    assert cursor_of(tmp_path / state_file_name("x/y__z")) == "c-shared"
    assert not (tmp_path / state_file_name("x__y/z")).exists()  # starts afresh


def test_a_new_named_file_wins_over_a_leftover_old_one(tmp_path: Path) -> None:
    keep_state(tmp_path / "x__y__z.sqlite", "c-old")
    keep_state(tmp_path / state_file_name("x__y/z"), "c-new")
    (note,) = migrate_state_files(tmp_path, ["x__y/z"])
    assert "both exist" in note
    assert cursor_of(tmp_path / state_file_name("x__y/z")) == "c-new"
    assert (tmp_path / "x__y__z.sqlite").exists()
