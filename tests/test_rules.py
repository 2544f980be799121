"""Sync rules: mapping, filters, hashing, conflict policies, dry run."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsync import rules as r
from recsync.messages import Change
from recsync.rules import Filter, RuleError, RuleSet

MAPPINGS = {
    "record_id": "record_id",
    "full_name": "name",
    "email_address": "email",
    "status": "status",
}


def ruleset(**kw: Any) -> RuleSet:
    """A RuleSet built the way the loader builds it (msgspec.convert of TOML-like data)."""
    raw: dict[str, Any] = {"name": "contacts", "mappings": MAPPINGS, **kw}
    return msgspec.convert(raw, RuleSet)


def passes(flt: dict[str, Any], value: Any) -> bool:
    rules = ruleset(filters={"status": flt})
    return r.matches(rules, {"status": value})


# --------------------------------------------------------------------------- mappings


def test_to_a_space_from_b_renames_fields_and_drops_unmapped() -> None:
    rules = ruleset()
    b = {"record_id": "7", "name": "Ada", "email": "ada@x.io", "status": "active", "zip": "1"}
    assert r.to_a_space(rules, "b", b) == {
        "record_id": "7",
        "full_name": "Ada",
        "email_address": "ada@x.io",
        "status": "active",
    }


def test_to_a_space_missing_fields_become_none() -> None:
    assert r.to_a_space(ruleset(), "a", {"record_id": 1}) == {
        "record_id": 1,
        "full_name": None,
        "email_address": None,
        "status": None,
    }


def test_to_side_renames_both_ways() -> None:
    rules = ruleset()
    a = {"record_id": 1, "full_name": "Ada", "email_address": "a@x", "status": "active"}
    b = r.to_side(rules, "b", a)
    assert b == {"record_id": 1, "name": "Ada", "email": "a@x", "status": "active"}
    assert r.to_side(rules, "a", a) == a
    assert r.to_a_space(rules, "b", b) == a


def test_transforms_apply_to_strings_from_either_side() -> None:
    rules = ruleset(
        mappings={**MAPPINGS, "phone": "phone", "city": "city", "title": "title"},
        transforms={
            "email_address": "lower",
            "full_name": "strip",
            "status": "upper",
            "phone": "digits",
            "title": "title",
        },
    )
    b = {
        "record_id": 3,
        "name": "  Ada  ",
        "email": "Ada@X.IO",
        "status": "active",
        "phone": "+1 (555) 010-99",
        "title": "chief officer",
        "city": "Oslo",
    }
    a = r.to_a_space(rules, "b", b)
    assert a["email_address"] == "ada@x.io"
    assert a["full_name"] == "Ada"
    assert a["status"] == "ACTIVE"
    assert a["phone"] == "155501099"
    assert a["title"] == "Chief Officer"
    assert a["city"] == "Oslo"
    # non-strings and None pass through unchanged
    assert r.to_a_space(rules, "a", {"phone": 5550199, "email_address": None})["phone"] == 5550199


def test_bad_side_is_refused() -> None:
    with pytest.raises(ValueError, match="side"):
        r.to_a_space(ruleset(), "c", {})  # type: ignore[arg-type]


# --------------------------------------------------------------------------- filters


def test_no_filters_match_everything() -> None:
    assert r.matches(ruleset(), {"status": None})


@pytest.mark.parametrize(
    ("flt", "value", "expected"),
    [
        ({"eq": "active"}, "active", True),
        ({"eq": "active"}, "Active", False),
        ({"eq": 303}, "303", True),
        ({"eq": "303"}, 303, True),
        ({"eq": "303"}, 303.0, True),
        ({"eq": True}, "true", True),
        ({"eq": ""}, None, False),
        ({"eq": None}, None, True),
        ({"eq": None}, "", False),
        ({"ne": "deleted"}, "active", True),
        ({"ne": "deleted"}, "deleted", False),
        ({"ne": 1}, "1", False),
        ({"ne": "x"}, None, True),
        ({"in": ["active", "pending"]}, "pending", True),
        ({"in": ["active", "pending"]}, "gone", False),
        ({"in": ["active", "pending"]}, None, False),
        ({"in": [1, 2]}, "2", True),
        ({"in": ["2"]}, 2, True),
        ({"not_in": ["gone"]}, "active", True),
        ({"not_in": ["gone"]}, "gone", False),
        ({"not_in": [5]}, "5", False),
        ({"not_in": ["gone"]}, None, True),
        ({"exists": True}, "x", True),
        ({"exists": True}, 0, True),
        ({"exists": True}, "", False),
        ({"exists": True}, None, False),
        ({"exists": False}, None, True),
        ({"exists": False}, "", True),
        ({"exists": False}, "x", False),
        ({"regex": "^act"}, "active", True),
        ({"regex": "^act"}, "inactive", False),
        ({"regex": "ive$"}, "inactive", True),  # search, not match
        ({"regex": "^30"}, 303, True),  # text form of numbers
        ({"regex": ".*"}, None, False),  # None never matches
    ],
)
def test_filter_operators(flt: dict[str, Any], value: Any, expected: bool) -> None:
    assert passes(flt, value) is expected


def test_every_operator_of_a_filter_and_every_filter_must_pass() -> None:
    rules = ruleset(
        filters={
            "status": {"in": ["active", "pending"], "ne": "pending"},
            "email_address": {"regex": "@"},
        }
    )
    assert r.matches(rules, {"status": "active", "email_address": "a@x"})
    assert not r.matches(rules, {"status": "pending", "email_address": "a@x"})
    assert not r.matches(rules, {"status": "active", "email_address": "nope"})


def test_filter_needs_an_operator_and_a_valid_regex() -> None:
    with pytest.raises(RuleError, match="at least one"):
        Filter()
    with pytest.raises(RuleError, match="invalid regular expression") as err:
        Filter(regex="(")
    assert err.value.path == ("regex",)


def test_ruleset_checks_field_names() -> None:
    with pytest.raises(RuleError, match="must map at least one field"):
        RuleSet(mappings={})
    with pytest.raises(RuleError, match="'statuz' is not a mapped side-A field; did you mean"):
        RuleSet(mappings=MAPPINGS, filters={"statuz": Filter(eq="x")})
    with pytest.raises(RuleError, match="side-B name of 'email_address'") as err:
        RuleSet(mappings=MAPPINGS, transforms={"email": "lower"})
    assert err.value.path == ("transforms", "email")
    with pytest.raises(RuleError, match="already maps to"):
        RuleSet(mappings={"x": "same", "y": "same"})


# --------------------------------------------------------------------------- hashing


def test_hash_equal_across_int_str_none_and_empty() -> None:
    sqlite_row = {"id": 303, "n": None, "ok": True, "score": 2.0}
    csv_row = {"score": "2", "ok": "true", "n": "", "id": "303"}
    assert r.content_hash(sqlite_row) == r.content_hash(csv_row)


def test_hash_changes_with_content_and_is_stable() -> None:
    base = {"id": "1", "name": "Ada"}
    h = r.content_hash(base)
    assert len(h) == 32 and int(h, 16) >= 0
    assert r.content_hash(dict(base)) == h
    assert r.content_hash({**base, "name": "Ada "}) != h
    assert r.content_hash({"id": "1", "name": None}) != h
    assert r.content_hash({"id": 1.5}) != r.content_hash({"id": "1"})


def test_hash_format_is_unchanged() -> None:
    # Links on disk hold these hashes: a new format would make every record look changed.
    record = {"record_id": 303, "full_name": "Ada", "email_address": None, "status": "active",
              "score": 2.0, "ok": True}
    assert r.content_hash(record) == "1be55f88f874faff89cc4cfe7948b498"


def test_prepare_maps_hashes_and_filters_a_page() -> None:
    from recsync.messages import Change

    rules = r.compile_rules(ruleset(filters={"status": {"eq": "active"}}))
    changes = [
        Change("1", "upsert", {"record_id": "1", "name": "Ada", "status": "active"}, 10.0),
        Change("2", "upsert", {"record_id": "2", "name": "Bob", "status": "gone"}, 11.0),
        Change("3", "delete", None, 12.0),
    ]
    ada, bob, gone = rules.prepare("b", changes)
    assert ada.content == {"record_id": "1", "full_name": "Ada", "email_address": None,
                           "status": "active"}
    assert ada.hash == r.content_hash(ada.content) and ada.passes and ada.modified == 10.0
    assert not bob.passes
    assert (gone.op, gone.content, gone.hash, gone.passes) == ("delete", None, None, True)


def test_hash_is_not_fooled_by_separators_in_values() -> None:
    assert r.content_hash({"a": "x", "b": "y"}) != r.content_hash({"a": "x\x00b", "b": "y"})
    assert r.content_hash({"a": "b", "c": ""}) != r.content_hash({"a": "", "b": "c"})


def test_hash_of_a_space_content_matches_across_sides() -> None:
    rules = ruleset()
    from_a = r.to_a_space(rules, "a", {"record_id": 303, "full_name": "Ada", "status": None})
    from_b = r.to_a_space(rules, "b", {"record_id": "303", "name": "Ada", "email": ""})
    assert r.content_hash(from_a) == r.content_hash(from_b)


# --------------------------------------------------------------------------- ops


def test_op_allowed_per_direction() -> None:
    rules = ruleset(a_to_b=["create", "update", "delete"], b_to_a=["create", "update"])
    assert r.op_allowed(rules, "a_to_b", "delete")
    assert r.op_allowed(rules, "b_to_a", "update")
    assert not r.op_allowed(rules, "b_to_a", "delete")
    assert not r.op_allowed(ruleset(), "a_to_b", "create")  # nothing syncs by default


# --------------------------------------------------------------------------- conflicts

A = {"record_id": "1", "full_name": "Ada A", "email_address": "a@a", "status": "active"}
B = {"record_id": "1", "full_name": "Ada B", "email_address": "b@b", "status": "pending"}


def test_last_writer_wins() -> None:
    rules = ruleset()
    assert r.resolve_conflict(rules, A, 10.0, B, 20.0) == ("b", B)
    assert r.resolve_conflict(rules, A, 30.0, B, 20.0) == ("a", A)
    assert r.resolve_conflict(rules, A, 20.0, B, 20.0) == ("a", A)  # ties go to A


def test_a_wins_and_b_wins_ignore_time() -> None:
    assert r.resolve_conflict(ruleset(conflict="a_wins"), A, 1.0, B, 9.0) == ("a", A)
    assert r.resolve_conflict(ruleset(conflict="b_wins"), A, 9.0, B, 1.0) == ("b", B)


def test_deletes_in_conflicts() -> None:
    lww = ruleset()
    assert r.resolve_conflict(lww, None, 30.0, B, 20.0) == ("a", None)  # delete wins
    assert r.resolve_conflict(lww, None, 10.0, B, 20.0) == ("b", B)  # later edit wins
    assert r.resolve_conflict(ruleset(conflict="b_wins"), A, 30.0, None, 1.0) == ("b", None)
    assert r.resolve_conflict(ruleset(conflict="a_wins"), A, 1.0, None, 30.0) == ("a", A)


def test_field_owner_merges_fields_from_their_owners() -> None:
    rules = ruleset(conflict="field_owner", field_owner={"email_address": "a", "status": "b"})
    # B wrote last: unlisted fields (record_id, full_name) follow B
    winner, content = r.resolve_conflict(rules, A, 10.0, B, 20.0)
    assert winner == "merged"
    assert content == {
        "record_id": "1",
        "full_name": "Ada B",
        "email_address": "a@a",
        "status": "pending",
    }
    # A wrote last: the merge equals A except status, owned by B
    winner, content = r.resolve_conflict(rules, A, 30.0, B, 20.0)
    assert winner == "merged"
    assert content == {**A, "status": "pending"}


def test_field_owner_reports_a_side_when_the_merge_equals_it() -> None:
    rules = ruleset(conflict="field_owner", field_owner={"full_name": "a", "status": "a"})
    b_same_email = {**B, "email_address": "a@a"}
    winner, content = r.resolve_conflict(rules, A, 10.0, b_same_email, 20.0)
    assert winner == "a"
    assert content is not None and r.content_hash(content) == r.content_hash(A)
    rules_b = ruleset(conflict="field_owner", field_owner={"full_name": "b"})
    winner, content = r.resolve_conflict(rules_b, A, 10.0, B, 20.0)
    assert (winner, content) == ("b", B)


def test_field_owner_with_a_delete_falls_back_to_last_writer() -> None:
    rules = ruleset(conflict="field_owner", field_owner={"status": "b"})
    assert r.resolve_conflict(rules, None, 30.0, B, 20.0) == ("a", None)
    assert r.resolve_conflict(rules, None, 10.0, B, 20.0) == ("b", B)


# --------------------------------------------------------------------------- explain


def test_explain_shows_content_filters_and_other_side() -> None:
    rules = ruleset(
        a_to_b=["create"],
        b_to_a=["update"],
        filters={"status": {"in": ["active", "pending"]}},
        transforms={"email_address": "lower"},
    )
    out = r.explain(rules, "b", {"record_id": "9", "name": "Bo", "email": "BO@X", "zip": "0"})
    assert out["a_content"] == {
        "record_id": "9",
        "full_name": "Bo",
        "email_address": "bo@x",
        "status": None,
    }
    assert out["matches"] is False
    assert out["failed_filters"] == [
        {"field": "status", "operator": "in", "expected": ["active", "pending"], "value": None}
    ]
    assert out["other_side"] == "a"
    assert out["other_content"] == out["a_content"]
    assert out["ops"] == ["update"]
    assert out["unmapped_fields"] == ["zip"]
    assert out["content_hash"] == r.content_hash(out["a_content"])

    ok = r.explain(rules, "a", {"record_id": 9, "full_name": "Bo", "status": "active"})
    assert ok["matches"] is True and ok["failed_filters"] == []
    assert ok["other_content"] == {
        "record_id": 9,
        "name": "Bo",
        "email": None,
        "status": "active",
    }


def test_compiled_rules_are_cached_and_equivalent() -> None:
    rules = ruleset(filters={"status": {"eq": "active"}})
    compiled = r.compile_rules(rules)
    assert r.compile_rules(rules) is compiled
    assert r.compile_rules(compiled) is compiled
    assert r.matches(compiled, {"status": "active"}) == r.matches(rules, {"status": "active"})
    assert compiled.side_fields("b") == ("record_id", "name", "email", "status")


def test_to_side_with_the_same_names_gives_the_mapped_fields() -> None:
    same = RuleSet(mappings={"id": "id", "name": "name"})
    content = {"id": 1, "name": "Ada"}
    assert r.to_side(same, "b", content) == {"id": 1, "name": "Ada"}
    assert r.to_side(same, "b", {"id": 1}) == {"id": 1, "name": None}
    assert r.to_side(same, "b", {"id": 1, "name": "A", "x": 2}) == {"id": 1, "name": "A"}


# field names a rules.toml may hold: quotes, backslashes, line breaks, names that look
# like code; values of every type a connector hands over
_names = st.text(min_size=1, max_size=12).filter(lambda n: n.strip() != "")
_values = st.one_of(st.none(), st.text(max_size=8), st.integers(), st.booleans(),
                    st.floats(allow_nan=False), st.binary(max_size=4))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_names, _names, min_size=1, max_size=6)
       .filter(lambda m: len(set(m.values())) == len(m)),  # a rule set maps one-to-one
       st.sampled_from(["a", "b"]), st.data())
def test_prepare_maps_and_hashes_as_the_generic_functions_do(
    mappings: dict[str, str], side: str, data: st.DataObject
) -> None:
    rules = RuleSet(name="t", a_to_b=["create"], b_to_a=["create"], mappings=mappings)
    fields = list(mappings) if side == "a" else list(mappings.values())
    record = data.draw(st.fixed_dictionaries(
        {f: _values for f in fields}, optional={"unmapped": _values}))
    compiled = r.compile_rules(rules)
    (prepared,) = compiled.prepare(side, [Change("k", "upsert", record, 1.0)])  # type: ignore[arg-type]
    pairs = mappings.items()
    expected = ({a: record.get(a) for a in mappings} if side == "a"
                else {a: record.get(b) for a, b in pairs})
    assert prepared.content == expected
    assert list(prepared.content or {}) == list(mappings)
    assert prepared.hash == r.content_hash(expected)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_names, _names, min_size=1, max_size=6)
       .filter(lambda m: len(set(m.values())) == len(m)),
       st.sampled_from(["a", "b"]), st.booleans(), st.data())
def test_side_hasher_hashes_as_mapping_then_hashing_does(
    mappings: dict[str, str], side: str, transformed: bool, data: st.DataObject
) -> None:
    first = next(iter(mappings))
    rules = RuleSet(name="t", a_to_b=["create"], b_to_a=["create"], mappings=mappings,
                    transforms={first: "lower"} if transformed else {})
    fields = list(mappings) if side == "a" else list(mappings.values())
    # some fields missing (None when mapped), some unmapped ones present
    record = data.draw(st.fixed_dictionaries(
        {}, optional={**{f: _values for f in fields}, "unmapped": _values}))
    compiled = r.compile_rules(rules)
    expected = compiled.hash_mapped(compiled.to_a_space(side, record))  # type: ignore[arg-type]
    assert compiled.side_hasher(side)(record) == expected  # type: ignore[arg-type]
