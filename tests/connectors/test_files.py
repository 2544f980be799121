"""FileConnector against real CSV and JSON Lines files."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from recsync.connectors.csvappend import AppendJournal, rows_bytes
from recsync.connectors.files import FileConfig, FileConnector
from recsync.connectors.registry import get_connector_class
from recsync.errors import ConnectorConfigError, ConnectorError
from recsync.messages import ChangePage, WriteOp

CSV = "id,name,email\n1,Ann,ann@x.org\n2,Bob,bob@x.org\n3,Cid,cid@x.org\n"


def make(tmp_path: Path, name: str = "people.csv", **kw: Any) -> FileConnector:
    c = FileConnector(FileConfig(path=name, key="id", **kw), tmp_path)
    c.open()
    return c


def drain(c: FileConnector, cursor: str | None, limit: int = 1000) -> tuple[list[ChangePage], str]:
    pages = []
    while True:
        page = c.read_changes(cursor, limit)
        pages.append(page)
        assert page.cursor is not None
        cursor = page.cursor
        if not page.more:
            return pages, cursor


def records(pages: list[ChangePage]) -> dict[str, Any]:
    return {ch.key: ch.fields for p in pages for ch in p.changes}


def touch_ns(path: Path, ns: int) -> None:
    os.utime(path, ns=(ns, ns))


def sig(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"


# ---------------------------------------------------------------- open


def test_registered_under_entry_point() -> None:
    assert get_connector_class("file") is FileConnector


def test_missing_folder_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(
        ConnectorConfigError, match=r"Folder .*/nope of file .people.csv. does not exist"
    ):
        make(tmp_path, "nope/people.csv")


def test_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(ConnectorConfigError, match=r"name it \.csv, \.jsonl"):
        make(tmp_path, "people.txt")
    assert make(tmp_path, "people.txt", format="jsonl").format == "jsonl"


def test_csv_header_without_key_column(tmp_path: Path) -> None:
    (tmp_path / "people.csv").write_text("uid,name\n1,a\n")
    with pytest.raises(ConnectorConfigError, match="has no key column 'id' in its header"):
        make(tmp_path)


def test_system_id(tmp_path: Path) -> None:
    c = FileConnector(FileConfig(path="people.csv", key="id"), tmp_path)
    assert c.system_id == f"file:{tmp_path / 'people.csv'}"


def test_missing_file_is_an_empty_side(tmp_path: Path) -> None:
    c = make(tmp_path)
    page = c.read_changes(None, 10)
    assert page.changes == [] and page.listing_start and page.listing_done
    assert page.cursor == "absent"
    assert c.read_changes("absent", 10) == ChangePage([], "absent")
    assert c.fetch(["1"]) == {}


# ---------------------------------------------------------------- listing


def test_csv_listing_in_pages_then_no_changes(tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    path.write_text(CSV + "4,Dee,\n5,Eve,eve@x.org\n")
    c = make(tmp_path)
    pages, cursor = drain(c, None, 2)
    assert [len(p.changes) for p in pages] == [2, 2, 1]
    assert [p.listing_start for p in pages] == [True, False, False]
    assert [p.listing_done for p in pages] == [False, False, True]
    assert all(p.listing for p in pages)
    assert cursor == sig(path)
    assert all(p.cursor != sig(path) for p in pages[:-1])
    got = records(pages)
    assert got["1"] == {"id": "1", "name": "Ann", "email": "ann@x.org"}
    assert got["4"]["email"] == ""
    assert all(ch.op == "upsert" for p in pages for ch in p.changes)
    mtime = os.stat(path).st_mtime_ns / 1e9
    assert {ch.modified_at for p in pages for ch in p.changes} == {mtime}
    assert c.read_changes(cursor, 2) == ChangePage([], cursor)


def test_jsonl_listing_and_malformed_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "people.jsonl"
    path.write_text(
        '{"id": 1, "name": "Ann", "tags": ["a"]}\n'
        "{not json\n"
        "\n"
        '{"name": "no key"}\n'
        "[1, 2]\n"
        '{"id": "2", "name": "Bob"}\n'
    )
    c = make(tmp_path, "people.jsonl")
    with caplog.at_level(logging.WARNING, logger="recsync.connectors.files"):
        pages, cursor = drain(c, None, 1)
    assert [len(p.changes) for p in pages] == [1, 1]
    assert records(pages) == {
        "1": {"id": 1, "name": "Ann", "tags": ["a"]},
        "2": {"id": "2", "name": "Bob"},
    }
    messages = [r.getMessage() for r in caplog.records]
    assert any("line 2 of" in m and "people.jsonl" in m and "not valid JSON" in m for m in messages)
    assert any("line 4 of" in m for m in messages)
    assert any("line 5 of" in m and "not a JSON object" in m for m in messages)
    assert c.counts["malformed_lines"] == 3
    assert cursor == sig(path)


def test_csv_row_without_key_and_duplicates(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "people.csv").write_text("id,name\n1,a\n,nokey\n2,b\n1,a2\n")
    c = make(tmp_path)
    with caplog.at_level(logging.WARNING, logger="recsync.connectors.files"):
        pages, _ = drain(c, None, 10)
    assert records(pages) == {"1": {"id": "1", "name": "a2"}, "2": {"id": "2", "name": "b"}}
    assert [ch.key for ch in pages[0].changes] == ["2", "1"]
    text = caplog.text
    assert "line 3 of" in text and "no value in key column 'id'" in text
    assert "'1' appears more than once" in text
    assert c.counts == {"malformed_lines": 1, "duplicate_keys": 1}


def test_duplicate_across_pages_later_wins_in_order(tmp_path: Path) -> None:
    (tmp_path / "people.csv").write_text("id,name\n1,a\n2,b\n1,a2\n")
    pages, _ = drain(make(tmp_path), None, 2)
    assert [[ch.key for ch in p.changes] for p in pages] == [["1", "2"], ["1"]]
    assert pages[-1].changes[0].fields == {"id": "1", "name": "a2"}


def test_external_edit_is_listed(tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    path.write_text(CSV)
    c = make(tmp_path)
    _, cursor = drain(c, None)
    ino = os.stat(path).st_ino
    # same size, same inode: only the mtime tells
    with open(path, "r+") as fh:
        fh.write(CSV.replace("Ann", "Amy"))
    touch_ns(path, os.stat(path).st_mtime_ns + 1_000_000_123)
    assert os.stat(path).st_ino == ino
    pages, cursor2 = drain(c, cursor)
    assert pages[0].listing_start and pages[-1].listing_done
    assert records(pages)["1"]["name"] == "Amy"
    assert cursor2 == sig(path) != cursor


def test_listing_reads_the_version_it_opened(tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    path.write_text(CSV)
    c = make(tmp_path)
    first = c.read_changes(None, 2)
    listed_sig = sig(path)
    replacement = tmp_path / "new.csv"
    replacement.write_text("id,name\n9,Zed\n")
    os.replace(replacement, path)
    last = c.read_changes(first.cursor, 2)
    assert last.listing_done and [ch.key for ch in last.changes] == ["3"]
    assert last.cursor == listed_sig
    pages, _ = drain(c, last.cursor)
    assert pages[0].listing_start and list(records(pages)) == ["9"]


def test_interrupted_listing_starts_over(tmp_path: Path) -> None:
    (tmp_path / "people.csv").write_text(CSV)
    c = make(tmp_path)
    first = c.read_changes(None, 2)
    assert first.more
    c.close()
    c2 = make(tmp_path)  # re-created after a crash, given the committed mid-listing cursor
    page = c2.read_changes(first.cursor, 2)
    assert page.listing_start and [ch.key for ch in page.changes] == ["1", "2"]
    # the engine retrying with an older cursor also restarts instead of skipping a page
    page2 = c2.read_changes(None, 2)
    assert page2.listing_start and [ch.key for ch in page2.changes] == ["1", "2"]


def test_relist_cursor(tmp_path: Path) -> None:
    (tmp_path / "people.csv").write_text(CSV)
    c = make(tmp_path)
    _, cursor = drain(c, None)
    pages, again = drain(c, FileConnector.relist_cursor(cursor))
    assert pages[0].listing_start and len(records(pages)) == 3 and again == cursor


# ---------------------------------------------------------------- writing


def test_own_write_then_read_returns_nothing(tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    path.write_text(CSV)
    c = make(tmp_path)
    _, cursor = drain(c, None)
    c.write([WriteOp("2", "upsert", {"id": "2", "name": "Bobby"})])
    c.write([WriteOp("7", "upsert", {"id": "7", "name": "New"})])
    page = c.read_changes(cursor, 10)
    assert page == ChangePage([], sig(path))
    # an external edit after our writes is listed
    with open(path, "a") as fh:
        fh.write("8,Ext,ext@x.org\n")
    pages, _ = drain(c, page.cursor)
    assert pages[0].listing_start
    assert set(records(pages)) == {"1", "2", "3", "7", "8"}


def test_external_edit_between_cursor_and_our_write_is_listed(tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    path.write_text(CSV)
    c = make(tmp_path)
    _, cursor = drain(c, None)
    with open(path, "a") as fh:
        fh.write("8,Ext,\n")
    c.write([WriteOp("2", "upsert", {"id": "2", "name": "Bobby"})])
    pages, _ = drain(c, cursor)
    assert pages[0].listing_start and records(pages)["8"]["name"] == "Ext"


def test_write_during_listing_forces_a_new_listing(tmp_path: Path) -> None:
    (tmp_path / "people.csv").write_text(CSV)
    c = make(tmp_path)
    first = c.read_changes(None, 2)
    c.write([WriteOp("7", "upsert", {"id": "7", "name": "New"})])
    last = c.read_changes(first.cursor, 2)
    assert last.listing_done and "7" not in {ch.key for ch in last.changes}
    pages, _ = drain(c, last.cursor)
    assert pages[0].listing_start and "7" in records(pages)


def test_atomic_replace_and_no_temp_left(tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    path.write_text(CSV)
    os.chmod(path, 0o640)
    c = make(tmp_path)
    ino = os.stat(path).st_ino
    with open(path) as reader:  # a reader that opened the old version keeps seeing all of it
        c.write([WriteOp("1", "delete", None)])
        assert reader.read() == CSV
    assert os.stat(path).st_ino != ino
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["people.csv"]


def test_csv_upsert_preserves_columns_order_and_deletes(tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    path.write_bytes(b'id,name,email\r\n1,Ann,ann@x.org\r\n2,"Bob, Jr",bob@x.org\r\n3,Cid,c\r\n')
    c = make(tmp_path)
    res = c.write(
        [
            WriteOp("2", "upsert", {"id": "2", "name": "Robert"}),
            WriteOp("9", "upsert", {"id": 9, "email": "n@x.org"}),
            WriteOp("3", "delete", None),
            WriteOp("404", "delete", None),
        ]
    )
    assert [r.error for r in res] == [None] * 4
    assert path.read_bytes() == (
        b"id,name,email\r\n1,Ann,ann@x.org\r\n2,Robert,bob@x.org\r\n9,,n@x.org\r\n"
    )
    assert c.fetch(["2", "9", "3"]) == {
        "2": {"id": "2", "name": "Robert", "email": "bob@x.org"},
        "9": {"id": "9", "name": "", "email": "n@x.org"},
    }


def test_csv_header_extension(tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    path.write_text("id,name\n1,Ann\n2,Bob\n")
    c = make(tmp_path)
    c.write([WriteOp("2", "upsert", {"id": "2", "phone": "555", "vip": True, "n": None})])
    assert path.read_text() == "id,name,phone,vip,n\n1,Ann,,,\n2,Bob,555,true,\n"


def test_csv_new_file_uses_configured_then_record_order(tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    c = make(tmp_path, fields=["id", "email"])
    c.write(
        [
            WriteOp("1", "upsert", {"name": "A", "id": 1, "email": "a@x"}),
            WriteOp("2", "upsert", {"id": 2, "extra": "e"}),
        ]
    )
    assert path.read_text() == "id,email,name,extra\n1,a@x,A,\n2,,,e\n"
    c2 = make(tmp_path, "other.csv")
    c2.write([WriteOp("1", "upsert", {"name": "A", "id": 1})])
    assert (tmp_path / "other.csv").read_text() == "name,id\nA,1\n"


def test_file_without_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    path.write_text("id,name\n1,Ann")
    make(tmp_path).write([WriteOp("2", "upsert", {"id": "2", "name": "Bob"})])
    assert path.read_text() == "id,name\n1,Ann\n2,Bob\n"


def test_jsonl_upsert_preserves_keys_and_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "people.jsonl"
    path.write_text('{"id": 1, "name": "Ann", "keep": {"x": 1}}\nbroken line\n{"id": 2}\n')
    c = make(tmp_path, "people.jsonl")
    res = c.write(
        [
            WriteOp("1", "upsert", {"id": 1, "name": "Anna"}),
            WriteOp("2", "delete", None),
            WriteOp("3", "upsert", {"id": 3, "name": "Cid"}),
            WriteOp("4", "upsert", {"name": "no key"}),
        ]
    )
    assert [r.error is None for r in res] == [True, True, True, False]
    assert "no value for key field 'id'" in (res[3].error or "") and not res[3].retryable
    lines = path.read_text().splitlines()
    assert lines[1] == "broken line"
    assert [json.loads(line) for line in (lines[0], lines[2])] == [
        {"id": 1, "name": "Anna", "keep": {"x": 1}},
        {"id": 3, "name": "Cid"},
    ]
    assert len(lines) == 3


def test_delete_then_upsert_in_one_batch_replaces(tmp_path: Path) -> None:
    path = tmp_path / "people.jsonl"
    path.write_text('{"id": 1, "old": true}\n')
    make(tmp_path, "people.jsonl").write(
        [WriteOp("1", "delete", None), WriteOp("1", "upsert", {"id": 1, "new": True})]
    )
    assert [json.loads(x) for x in path.read_text().splitlines()] == [{"id": 1, "new": True}]


def test_concurrent_edit_during_rewrite_is_redone(tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    path.write_text(CSV)

    class EditedMeanwhile(FileConnector):
        edits = 1

        def _rewrite_csv(self, src: Any, out: Any, plan: Any) -> tuple[list[str], str]:
            written = super()._rewrite_csv(src, out, plan)
            if self.edits:
                self.edits -= 1
                with open(path, "a") as fh:  # another program appends meanwhile
                    fh.write("8,Ext,\n")
            return written

    c = EditedMeanwhile(FileConfig(path="people.csv", key="id"), tmp_path)
    c.open()
    c.write([WriteOp("1", "delete", None)])
    assert path.read_text() == "id,name,email\n2,Bob,bob@x.org\n3,Cid,cid@x.org\n8,Ext,\n"


def test_unwritable_folder_is_connector_error(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    c = make(folder)
    folder.rmdir()  # the folder disappears after open
    with pytest.raises(ConnectorError, match="Cannot write"):
        c.write([WriteOp("1", "upsert", {"id": 1})])


def test_round_trip_large_jsonl(tmp_path: Path) -> None:
    c = make(tmp_path, "big.jsonl")
    n = 3000
    c.write([WriteOp(str(i), "upsert", {"id": i, "v": "x" * 10}) for i in range(n)])
    _, cursor = drain(c, None, 1000)
    c.write([WriteOp(str(i), "upsert", {"id": i, "v": "y"}) for i in range(0, n, 2)])
    assert c.read_changes(cursor, 1000).changes == []
    pages, _ = drain(c, "relist", 1000)
    got = records(pages)
    assert len(got) == n and got["0"]["v"] == "y" and got["1"]["v"] == "x" * 10


def test_csv_rewrite_across_blocks_with_multiline_cells(tmp_path: Path) -> None:
    import csv

    path = tmp_path / "people.csv"
    rows = [["id", "name", "note"]]
    for i in range(40_000):  # ~2 MB: several read blocks
        note = f'line one\nline "two" of {i}' if i % 997 == 0 else f"plain {i}"
        rows.append([str(i), f"n{i}", note])
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    c = make(tmp_path)
    touched = [0, 997, 20_000, 39_883, 39_999]
    ops = [WriteOp(str(i), "upsert", {"id": str(i), "name": f"new{i}"}) for i in touched]
    ops += [WriteOp("5", "delete", None), WriteOp("x1", "upsert", {"id": "x1", "note": "a\nb"})]
    assert all(r.error is None for r in c.write(ops))
    expected = [r for r in rows if r[0] != "5"]
    for r in expected[1:]:
        if int(r[0]) in touched:
            r[1] = f"new{r[0]}"
    expected.append(["x1", "", "a\nb"])
    with open(path, newline="") as fh:
        assert list(csv.reader(fh)) == expected
    _, cursor = drain(c, None, 5000)
    assert cursor == sig(path)


def test_jsonl_rewrite_across_blocks_keeps_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "people.jsonl"
    lines = [json.dumps({"id": i, "pad": "x" * 40}) for i in range(40_000)]
    lines[25_000] = "{broken"
    lines[30_000] = ""
    path.write_text("\n".join(lines) + "\n")
    c = make(tmp_path, "people.jsonl")
    c.write([WriteOp("39999", "upsert", {"id": 39999, "pad": "y"}), WriteOp("7", "delete", None)])
    out = path.read_text().split("\n")
    assert out[-1] == "" and len(out) == 40_000
    assert out[24_999] == "{broken" and out[29_999] == ""
    assert json.loads(out[-2]) == {"id": 39999, "pad": "y"}
    assert json.loads(out[7]) == {"id": 8, "pad": "x" * 40}
    pages, _ = drain(c, None, 10_000)
    assert len(records(pages)) == 40_000 - 3
    assert c.counts["malformed_lines"] == 1
    c.fetch(["1"])
    assert c.counts["malformed_lines"] == 1  # fetch does not count again


def test_bom_and_undecodable_bytes_are_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "people.csv"
    path.write_bytes(b"\xef\xbb\xbfid,name\r\n1,Ann\r\n2,B\xffb\r\n")
    c = make(tmp_path)
    with caplog.at_level(logging.WARNING, logger="recsync.connectors.files"):
        pages, _ = drain(c, None)
    assert records(pages) == {"1": {"id": "1", "name": "Ann"}}
    assert "line 3 of" in caplog.text and "not valid utf-8" in caplog.text
    c.write([WriteOp("3", "upsert", {"id": "3", "name": "Çé"})])
    assert (
        path.read_bytes() == b"\xef\xbb\xbfid,name\r\n1,Ann\r\n2,B\xffb\r\n3,\xc3\x87\xc3\xa9\r\n"
    )
    c.write([WriteOp("3", "upsert", {"id": "3", "email": "e"})])  # header re-written
    assert path.read_bytes() == (
        b"\xef\xbb\xbfid,name,email\r\n1,Ann,\r\n2,B\xffb\r\n3,\xc3\x87\xc3\xa9,e\r\n"
    )


def test_latin1_file_rejects_text_it_cannot_store(tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    path.write_bytes("id,name\n1,Zoë\n".encode("latin-1"))
    c = make(tmp_path, encoding="latin-1")
    assert records(drain(c, None)[0]) == {"1": {"id": "1", "name": "Zoë"}}
    res = c.write(
        [
            WriteOp("2", "upsert", {"id": "2", "name": "Ærø"}),
            WriteOp("3", "upsert", {"id": "3", "name": "€uro"}),
            WriteOp("€", "delete", None),
        ]
    )
    assert [r.error is None for r in res] == [True, False, True]
    assert "latin-1" in (res[1].error or "") or "iso8859-1" in (res[1].error or "")
    assert path.read_bytes() == "id,name\n1,Zoë\n2,Ærø\n".encode("latin-1")
    j = make(tmp_path, "people.jsonl", encoding="latin-1")
    j.write([WriteOp("1", "upsert", {"id": 1, "name": "€ and é"})])
    assert records(drain(j, None)[0]) == {"1": {"id": 1, "name": "€ and é"}}


# ---------------------------------------------------------------- new records added unscanned

def _rows(c: FileConnector, first: int, count: int) -> list[WriteOp]:
    return [WriteOp(str(i), "upsert", {"id": i, "name": f"N{i}", "email": f"{i}@x"})
            for i in range(first, first + count)]


def test_batches_of_new_records_are_added_once_each_in_order(tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    c = make(tmp_path, fields=["id", "name", "email"])
    for start in range(1, 3001, 500):
        c.write(_rows(c, start, 500))
    lines = path.read_text().splitlines()
    assert lines[0] == "id,name,email"
    assert lines[1:] == [f"{i},N{i},{i}@x" for i in range(1, 3001)]
    # an update of a record already there is made in place, not added again
    c.write([WriteOp("7", "upsert", {"id": "7", "name": "Seven"}), *_rows(c, 3001, 2)])
    rows = path.read_text().splitlines()
    assert rows[7] == "7,Seven,7@x" and len(rows) == 3003
    assert sum(r.startswith("7,") for r in rows) == 1


def test_a_row_added_by_someone_else_is_updated_not_duplicated(tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    c = make(tmp_path, fields=["id", "name", "email"])
    c.write(_rows(c, 1, 10))
    with path.open("a") as fh:  # the user adds record 11 by hand before we write it
        fh.write("11,By hand,hand@x\n")
    c.write(_rows(c, 11, 5))
    rows = path.read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == [str(i) for i in range(1, 16)]
    assert rows[11] == "11,N11,11@x"


def test_new_records_keep_the_files_bom_and_line_endings(tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    path.write_bytes(b"\xef\xbb\xbfid,name\r\n1,Ann")  # someone else's file, no final break
    c = make(tmp_path)
    c.write([WriteOp("2", "upsert", {"id": 2, "name": "Bob"})])
    c.write([WriteOp("3", "upsert", {"id": 3, "name": "Çé, \"quoted\""}),
             WriteOp("4", "upsert", {"id": 4})])
    assert path.read_bytes() == (
        b"\xef\xbb\xbfid,name\r\n1,Ann\r\n2,Bob\r\n3,\"\xc3\x87\xc3\xa9, \"\"quoted\"\"\"\r\n4,\r\n"
    )
    assert records(drain(c, None)[0])["3"] == {"id": "3", "name": 'Çé, "quoted"'}


def test_added_record_with_a_quoted_key_is_later_updated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    c = make(tmp_path, fields=["id", "name"])
    c.write([WriteOp("1", "upsert", {"id": 1, "name": "Ann"})])
    c.write([WriteOp("a,b", "upsert", {"id": "a,b", "name": "Comma"})])
    c.write([WriteOp("a,b", "upsert", {"id": "a,b", "name": "Changed"}),
             WriteOp("5", "upsert", {"id": 5, "name": "Eve"})])
    assert path.read_text() == 'id,name\n1,Ann\n"a,b",Changed\n5,Eve\n'


@pytest.mark.parametrize("fast", [True, False])
def test_a_key_is_written_in_its_text_form_so_the_record_stays_one_line(
    tmp_path: Path, fast: bool
) -> None:
    # a REAL key column gives 303.0 for the record "303": the file must say 303, or the
    # next write of the record finds no line for it and adds a second one
    path = tmp_path / "people.csv"
    c = make(tmp_path, fields=["id", "name"])
    c.write([WriteOp("1", "upsert", {"id": 1.0, "name": "Ann"})])
    first = [WriteOp("303", "upsert", {"id": 303.0, "name": "a"})]
    if not fast:  # a delete in the batch takes the rewriting path
        first.append(WriteOp("1", "delete", None))
    c.write(first)
    c.write([WriteOp("303", "upsert", {"id": 303.0, "name": "b"})])
    assert path.read_text() == ("id,name\n1,Ann\n303,b\n" if fast else "id,name\n303,b\n")


def test_text_the_encoding_cannot_store_is_refused_when_adding(tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    path.write_bytes(b"id,name\n1,Ann\n")
    c = make(tmp_path, encoding="latin-1")
    c.write([WriteOp("2", "upsert", {"id": "2", "name": "Bob"})])
    res = c.write([WriteOp("3", "upsert", {"id": "3", "name": "€"}),
                   WriteOp("4", "upsert", {"id": "4", "name": "Dan"})])
    assert [r.error is None for r in res] == [False, True]
    assert path.read_bytes() == b"id,name\n1,Ann\n2,Bob\n4,Dan\n"


def test_a_header_with_a_repeated_column_still_gets_new_records(tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    path.write_text("id,name,name\n1,Ann,A\n")
    c = make(tmp_path)
    c.write([WriteOp("2", "upsert", {"id": "2", "name": "Bob"})])
    c.write([WriteOp("3", "upsert", {"id": "3", "name": "Cid"})])
    assert path.read_text() == "id,name,name\n1,Ann,A\n2,Bob,\n3,Cid,\n"


def test_new_records_are_appended_in_place_and_the_journal_goes_at_close(
    tmp_path: Path,
) -> None:
    path = tmp_path / "people.csv"
    c = make(tmp_path, fields=["id", "name", "email"])
    c.write(_rows(c, 1, 3))  # the first write after open: the rewrite
    ino = os.stat(path).st_ino
    c.write(_rows(c, 4, 3))
    assert os.stat(path).st_ino == ino  # appended, not replaced
    assert (tmp_path / ".people.csv.recsync-append").exists()
    c.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["people.csv"]
    assert path.read_text().splitlines()[1:] == [f"{i},N{i},{i}@x" for i in range(1, 7)]


_CRASHING_APPEND = """
import os, resource, signal, sys
from pathlib import Path
from recsync.connectors.files import FileConfig, FileConnector
from recsync.messages import WriteOp
folder = Path(sys.argv[1])
c = FileConnector(FileConfig(path="people.csv", key="id", fields=["id", "name"]), folder)
c.open()
c.write([WriteOp(str(i), "upsert", {"id": i, "name": "x" * 100}) for i in range(1, 11)])
size = os.stat(folder / "people.csv").st_size
# the process dies as soon as the file grows past half of the next append (SIGXFSZ, whose
# default action ends it, as SIGKILL would)
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 5_000, resource.RLIM_INFINITY))
c.write([WriteOp(str(i), "upsert", {"id": i, "name": "y" * 100}) for i in range(11, 111)])
print("not killed")
"""


def test_an_append_cut_short_by_a_crash_is_undone_at_the_next_open(tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    proc = subprocess.run([sys.executable, "-c", _CRASHING_APPEND, str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGXFSZ, proc.stdout + proc.stderr
    whole = "id,name\n" + "".join(f"{i},{'x' * 100}\n" for i in range(1, 11))
    assert len(whole) < path.stat().st_size < len(whole) + 100 * 105  # half a batch in
    assert path.read_text().startswith(whole)
    assert (tmp_path / ".people.csv.recsync-append").exists()
    c = make(tmp_path)  # the next start: the unfinished row is cut off, whole rows stay
    text = path.read_text()
    assert text.startswith(whole) and text.endswith("\n")
    added = text[len(whole):].splitlines()
    assert 0 < len(added) < 100
    assert added == [f"{i},{'y' * 100}" for i in range(11, 11 + len(added))]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["people.csv"]
    # the batch is sent again: the first write after a start is the rewrite
    c.write([WriteOp(str(i), "upsert", {"id": i, "name": "y"}) for i in range(5, 111)])
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert [r["id"] for r in rows] == [str(i) for i in range(1, 111)]


_KILLED_APPEND = """
import sys
from pathlib import Path
from recsync.connectors.files import FileConfig, FileConnector
from recsync.messages import WriteOp
c = FileConnector(FileConfig(path="people.csv", key="id", fields=["id", "name"]),
                  Path(sys.argv[1]))
c.open()
c.write([WriteOp("1", "upsert", {"id": 1, "name": "first"})])
ops = [WriteOp(str(i), "upsert", {"id": i, "name": 'a "b"\\n' + "x" * 1000})
       for i in range(2, 40_002)]
print("appending", flush=True)
c.write(ops)  # about 40 MB in one append
print("done", flush=True)
"""


def test_kill_9_mid_append_leaves_whole_rows_after_the_next_open(tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_APPEND, str(tmp_path)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "appending\n"
    first = path.stat().st_size
    while proc.poll() is None and path.stat().st_size == first:
        pass  # the append has begun: kill it now, most likely mid-write
    proc.kill()
    proc.wait()
    size = path.stat().st_size
    make(tmp_path)  # the next start
    text = path.read_text()
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[:2] == [["id", "name"], ["1", "first"]] and text.endswith("\n")
    assert rows[2:] == [[str(i), 'a "b"\n' + "x" * 1000] for i in range(2, len(rows))]
    assert len(text.encode()) <= size  # only an unfinished row was cut


def test_the_journal_cuts_only_an_unfinished_last_row_of_ours(tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    ours = 'id,note\n1,"a\nb"\n2,x\n'  # a cell with a line break in it
    path.write_text(ours)
    start, ino = len("id,note\n"), os.stat(path).st_ino
    journal = AppendJournal(path)
    for entry in ({"ino": ino + 1, "from": start}, "torn {"):  # another file; a torn journal
        journal.path.write_text(json.dumps(entry) if isinstance(entry, dict) else entry)
        path.write_text(ours + '3,"c\n')
        assert journal.recover() is False
        assert path.read_text() == ours + '3,"c\n' and not journal.path.exists()
    before = b"id,note\n".hex()  # the bytes before ours: the same version of the file
    for tail in ("", '3,"c\n', "3,c", '3,"c\nd"'):  # whole rows stay, a half row goes
        path.write_text(ours + tail)
        journal.path.write_text(json.dumps({"ino": ino, "from": start, "before": before}))
        assert journal.recover() is (tail != "")
        assert path.read_text() == ours


def test_a_journal_left_by_a_crash_cuts_nothing_from_another_version_of_the_file(
    tmp_path: Path,
) -> None:
    """The same inode number, other contents (an editor saving in place, or a later
    version that got the number back): the bytes before the journaled offset differ."""
    path = tmp_path / "people.csv"
    c = make(tmp_path, fields=["id", "name"])
    c.write([WriteOp("1", "upsert", {"id": 1, "name": "plain"})])
    c.write([WriteOp("2", "upsert", {"id": 2, "name": "Smith, John"})])  # appended
    assert (tmp_path / ".people.csv.recsync-append").exists()  # a kill -9 here leaves it
    edited = b'id,name\n1,"Doe, Jane, and a longer name"\n2,"Smith, John"\n3,Kim\n'
    with path.open("r+b") as f:  # saved in place: same inode, more bytes than before
        f.write(edited)
        f.truncate()
    make(tmp_path)  # the next start
    assert path.read_bytes() == edited
    assert not (tmp_path / ".people.csv.recsync-append").exists()


def test_a_rewrite_retires_the_append_journal(tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    c = make(tmp_path, fields=["id", "name"])
    c.write([WriteOp("1", "upsert", {"id": 1, "name": "A"})])
    c.write([WriteOp("2", "upsert", {"id": 2, "name": "B"})])  # appended, journaled
    assert (tmp_path / ".people.csv.recsync-append").exists()
    c.write([WriteOp("1", "upsert", {"id": 1, "name": "A, changed"})])  # a rewrite
    assert not (tmp_path / ".people.csv.recsync-append").exists()
    c.write([WriteOp("3", "upsert", {"id": 3, "name": "C"})])  # appends journal anew
    assert (tmp_path / ".people.csv.recsync-append").exists()
    assert path.read_text() == 'id,name\n1,"A, changed"\n2,B\n3,C\n'


def test_a_failed_append_is_cut_back_at_once(tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    c = make(tmp_path, fields=["id", "name"])
    c.write([WriteOp("1", "upsert", {"id": 1, "name": "A"})])
    before = path.read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) + 20, hard))
    try:  # Python ignores SIGXFSZ: the write fails with EFBIG half way through
        with pytest.raises(ConnectorError, match="Cannot write"):
            c.write([WriteOp(str(i), "upsert", {"id": i, "name": "B" * 10})
                     for i in range(2, 12)])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert path.read_bytes() == before
    c.write([WriteOp(str(i), "upsert", {"id": i, "name": "B"}) for i in range(2, 4)])
    assert path.read_text() == "id,name\n1,A\n2,B\n3,B\n"
    c.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["people.csv"]


def test_added_values_are_written_as_the_rewrite_writes_them(tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    c = make(tmp_path, fields=["id", "vip", "score", "note", "tags"])
    c.write([WriteOp("1", "upsert", {"id": 1, "vip": False, "score": 0.5, "note": None})])
    c.write([WriteOp("2", "upsert", {"id": 2, "vip": True, "score": 2.25, "note": "n",
                                     "tags": ["a", "b"]}),
             WriteOp("3", "upsert", {"id": 3, "score": 7})])
    assert path.read_text() == (
        "id,vip,score,note,tags\n1,false,0.5,,\n2,true,2.25,n,\"[\"\"a\"\", \"\"b\"\"]\"\n"
        "3,,7,,\n"
    )


_CELL = st.one_of(
    st.none(), st.integers(), st.floats(allow_nan=False),
    st.text(alphabet=st.sampled_from(list('ab ,"\r\n\tx1é')), max_size=6),
)


@given(rows=st.integers(1, 4).flatmap(
    lambda w: st.lists(st.lists(_CELL, min_size=w, max_size=w), min_size=1, max_size=5)),
       eol=st.sampled_from(["\n", "\r\n"]))
def test_added_rows_are_the_bytes_the_csv_module_writes(rows: list[list[Any]], eol: str) -> None:
    buf = io.StringIO()
    csv.writer(buf, lineterminator=eol).writerows(rows)
    columns = [list(column) for column in zip(*rows, strict=True)]
    assert rows_bytes(columns, eol, "utf-8") == buf.getvalue().encode()


def test_a_record_added_after_a_last_line_without_break_gets_that_lines_break(
    tmp_path: Path,
) -> None:
    path = tmp_path / "people.csv"
    path.write_bytes(b"id,name\r\n1,A\n2,B\n4,D")  # CRLF header, LF rows, no final break
    c = make(tmp_path)
    c.write([WriteOp("1", "upsert", {"id": "1", "name": "A2"})])  # updated in place
    c.write([WriteOp("3", "upsert", {"id": "3", "name": "C"})])  # added at the end
    assert path.read_bytes() == b"id,name\r\n1,A2\r\n2,B\n4,D\n3,C\r\n"


def test_lines_that_cannot_be_read_are_reported_with_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "people.csv").write_bytes(b"id,name\n1,Ann\n2,B\xffb\n3,Cid\n")
    pages, _ = drain(make(tmp_path), None, 1)
    assert set(records(pages)) == {"1", "3"}
    bad = [u for p in pages for u in p.unreadable]
    assert [u.where for u in bad] == ["people.csv:3"]
    assert "Line 3 of" in bad[0].reason and "not valid utf-8" in bad[0].reason
    assert bad[0].hides_key
    (tmp_path / "people.jsonl").write_text('{"id": 1}\n{not json\n\n{"id": 2}\n')
    pages, _ = drain(make(tmp_path, "people.jsonl"), None, 10)
    assert [(u.where, "not valid JSON" in u.reason) for p in pages for u in p.unreadable] == [
        ("people.jsonl:2", True)]
    # a line without a key is no record whose key was lost: deletes are still found
    (tmp_path / "people.csv").write_text("id,name\n1,Ann\n,Nobody\n")
    pages, _ = drain(make(tmp_path), None, 10)
    assert [(u.where, u.hides_key) for p in pages for u in p.unreadable] == [
        ("people.csv:3", False)]
