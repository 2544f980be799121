"""KeyIndex: the keys of a file version, as runs of numbers and hashes, against a set."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsync.connectors.keyindex import KeyIndex, runs_of, subtract


@pytest.fixture
def index() -> Iterator[KeyIndex]:
    ki = KeyIndex()
    yield ki
    ki.close()


def ids(lo: int, hi: int) -> list[bytes]:
    return [str(n).encode() for n in range(lo, hi + 1)]


def test_consecutive_ids_are_added_once_and_then_held(index: KeyIndex) -> None:
    assert index.add_new(ids(1, 2000))
    assert index.add_new(ids(2001, 4000))
    assert index.add_new(ids(4001, 6000))
    assert not index.add_new(ids(1500, 1500))  # inside a run


@pytest.mark.parametrize("refused", [ids(3999, 6000), [b"5000", b"1"], [b"x", b"2"]])
def test_a_refused_batch_empties_the_index_for_a_rebuild(index: KeyIndex,
                                                         refused: list[bytes]) -> None:
    index.add([b"x"])
    assert index.add_new(ids(1, 4000))
    index.version = "v1"
    assert not index.add_new(refused)  # one held key is enough
    assert index.version is None
    assert index.add_new([*ids(1, 4000), b"x"])


@pytest.mark.parametrize("key", [b"007", b"+7", b"7.0", b"-7", b"", b"9" * 30])
def test_numbers_in_other_spellings_are_other_keys(index: KeyIndex, key: bytes) -> None:
    # "007", "+7" and "7.0" are not the key "7"; 30 digits go beyond SQLite's integers
    assert index.add_new(ids(1, 100))
    assert index.add_new([key])
    assert not index.add_new([key])
    assert index.add_new([*ids(1, 100), key])
    assert not index.add_new([b"7"])


def test_a_key_named_twice_is_refused(index: KeyIndex) -> None:
    assert not index.add_new([b"1", b"2", b"1"])
    assert not index.add_new([b"a", b"b", b"a"])
    assert not index.add_new([b"7", b"a", b"300", b"a"])
    assert index.add_new([b"1", b"2", b"a"])


def test_scattered_then_consecutive_numbers_are_both_checked(index: KeyIndex) -> None:
    assert index.add_new([b"500", b"3", b"90000", b"41"])  # scattered: kept hashed
    assert index.add_new(ids(600, 1000))
    assert not index.add_new(ids(1, 100))  # consecutive, but 3 and 41 are held
    assert index.add_new([b"500", b"3", b"90000", b"41", *ids(600, 1000)])
    assert not index.add_new([b"700", b"12"])  # scattered, 700 is inside a run


def test_add_takes_keys_already_held_and_clear_forgets_all(index: KeyIndex) -> None:
    index.add(ids(1, 50))
    index.add(ids(25, 75))  # overlaps: only the new part is stored
    index.add([b"x", b"x", b"10"])
    assert index.add_new(ids(76, 80))
    assert not index.add_new([b"x"])
    index.add([*ids(1, 80), b"x"])
    assert not index.add_new([b"60"])
    index.add(ids(1, 80))
    index.clear()
    assert index.add_new([*ids(1, 80), b"x"])


def test_runs_and_subtract() -> None:
    assert runs_of({5, 1, 2, 3, 9, 10}) == [(1, 3), (5, 5), (9, 10)]
    assert runs_of(set()) == []
    assert subtract((1, 10), [(3, 4), (8, 20)]) == [(1, 2), (5, 7)]
    assert subtract((1, 10), [(0, 10)]) == []
    assert subtract((5, 6), [(1, 2)]) == [(5, 6)]


_number = st.integers(min_value=0, max_value=300)
_batch = st.one_of(
    # consecutive ids, as a table read in id order gives them
    st.tuples(_number, st.integers(min_value=1, max_value=40)).map(
        lambda t: ids(t[0], t[0] + t[1] - 1)),
    # anything: scattered numbers, other spellings, text, repeats
    st.lists(st.one_of(_number.map(lambda n: str(n).encode()),
                       st.sampled_from([b"007", b"00", b"a", b"b,c", b"", b"-1", b"1e3"])),
             max_size=30),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "add_new", "add_new", "clear"]), _batch),
                max_size=25))
def test_it_says_what_a_set_of_the_keys_says(steps: list[tuple[str, list[bytes]]]) -> None:
    index, held = KeyIndex(), set[bytes]()
    try:
        for verb, keys in steps:
            if verb == "clear":
                index.clear()
                held.clear()
            elif verb == "add":
                index.add(keys)
                held.update(keys)
            else:
                fresh = len(set(keys)) == len(keys) and held.isdisjoint(keys)
                assert index.add_new(keys) == fresh, (keys, sorted(held))
                if fresh:
                    held.update(keys)
                else:
                    held.clear()  # refused: emptied, for the caller to rebuild
    finally:
        index.close()
