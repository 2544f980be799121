"""recsync.verify: what differs between two listings, and which sync repairs it."""

from __future__ import annotations

from typing import Any

import msgspec

from recsync.rules import RuleSet, compile_rules
from recsync.verify import Fix, Link, Seen, compare

MAPPINGS = {"record_id": "id", "full_name": "name", "status": "status"}


def rules(**kw: Any) -> Any:
    base: dict[str, Any] = {"a_to_b": ["create", "update", "delete"],
                            "b_to_a": ["create", "update", "delete"], "mappings": MAPPINGS}
    base.update(kw)
    return compile_rules(msgspec.convert(base, RuleSet))


def a_rec(key: int, name: str, status: str = "active", when: float = 1.0) -> Seen:
    return Seen.of(rules(), "a", {"record_id": key, "full_name": name, "status": status}, when)


def b_rec(key: int, name: str, status: str = "active", when: float = 1.0) -> Seen:
    return Seen.of(rules(), "b", {"id": str(key), "name": name, "status": status}, when)


def test_the_same_content_in_each_side_s_names_and_types_agrees() -> None:
    a = {"1": a_rec(1, "Ann"), "2": a_rec(2, "Bob")}
    b = {"1": b_rec(1, "Ann"), "2": b_rec(2, "Bob")}
    result = compare(rules(), a, b, {})
    assert result.agree and not result.fixes and (result.a_records, result.b_records) == (2, 2)


def test_the_side_that_changed_since_the_last_sync_is_the_source() -> None:
    old = a_rec(1, "Ann").hash
    link = {"1": Link(old, old), "2": Link(old, old)}
    a = {"1": a_rec(1, "Ann edited"), "2": a_rec(1, "Ann")}
    b = {"1": b_rec(1, "Ann"), "2": b_rec(1, "Ann edited on b")}
    result = compare(rules(), a, b, link)
    assert result.fixes == [Fix("1", "different", "a_to_b", "upsert"),
                            Fix("2", "different", "b_to_a", "upsert")]
    assert result.keys["different"] == ["1", "2"] and not result.agree


def test_both_changed_goes_by_the_conflict_policy() -> None:
    a = {"1": a_rec(1, "A's", when=10.0)}
    b = {"1": b_rec(1, "B's", when=20.0)}
    assert compare(rules(), a, b, {}).fixes[0].direction == "b_to_a"  # B wrote last
    assert compare(rules(conflict="a_wins"), a, b, {}).fixes[0].direction == "a_to_b"
    tie = {"1": b_rec(1, "B's", when=10.0)}
    assert compare(rules(), a, tie, {}).fixes[0].direction == "a_to_b"  # ties go to A


def test_a_one_way_sync_overwrites_a_changed_target() -> None:
    old = a_rec(1, "Ann").hash
    one_way = rules(b_to_a=[])
    result = compare(one_way, {"1": a_rec(1, "Ann")}, {"1": b_rec(1, "Edited on B")},
                     {"1": Link(old, old)})
    assert result.fixes == [Fix("1", "different", "a_to_b", "upsert")]


def test_a_record_on_one_side_is_missing_when_linked_and_extra_when_not() -> None:
    a = {"1": a_rec(1, "Ann"), "3": a_rec(3, "Cy")}
    b = {"2": b_rec(2, "Bob")}
    h = a_rec(1, "Ann").hash
    result = compare(rules(), a, b, {"1": Link(h, h), "2": Link(h, h)})
    assert result.keys == {"missing_a": ["2"], "missing_b": ["1"], "extra_a": ["3"],
                           "extra_b": [], "different": []}
    assert {f.key: (f.direction, f.op) for f in result.fixes} == {
        "1": ("a_to_b", "upsert"), "2": ("b_to_a", "upsert"), "3": ("a_to_b", "upsert")}


def test_when_the_rules_do_not_create_that_way_the_holder_s_copy_is_deleted() -> None:
    one_way = rules(b_to_a=[])
    result = compare(one_way, {}, {"9": b_rec(9, "Only on B")}, {})
    assert result.fixes == [Fix("9", "extra_b", "a_to_b", "delete")]


def test_filters_and_directions_leave_some_differences_alone() -> None:
    filtered = rules(filters={"status": {"in": ["active"]}})
    only_a = {"1": Seen.of(filtered, "a", {"record_id": 1, "full_name": "In", "status": "gone"},
                           1.0)}
    result = compare(filtered, only_a, {}, {})
    assert result.ignored == 1 and not result.fixes and result.agree
    no_updates = rules(a_to_b=["create"], b_to_a=["create"])
    result = compare(no_updates, {"1": a_rec(1, "x")}, {"1": b_rec(1, "y")}, {})
    assert result.ignored == 1 and not result.fixes
    nothing_back = rules(a_to_b=["update"], b_to_a=[])
    result = compare(nothing_back, {}, {"2": b_rec(2, "y")}, {})
    assert result.ignored == 1 and not result.fixes


def test_records_being_synced_are_counted_not_compared() -> None:
    result = compare(rules(), {"1": a_rec(1, "Ann")}, {}, {}, pending={"1"})
    assert result.pending == 1 and not result.fixes and not result.agree


def test_the_first_keys_come_in_number_order_then_text() -> None:
    a = {k: a_rec(int(k), "x") for k in ("10", "9", "100", "2")}
    a["sf-b"] = a["sf-a"] = a_rec(1, "x")
    result = compare(rules(), a, {}, {})
    assert result.first("extra_a", 5) == ["2", "9", "10", "100", "sf-a"]
    assert result.count("extra_a") == 6
