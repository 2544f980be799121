"""Adding new records to a CSV file recsync wrote last, without reading its old lines.

The file connector replaces a file to change it (temp file + rename). When every record
of a batch is new to the file, it appends the rows to the file in place instead: neither
the old bytes nor the rows already there cost anything, however big the file grows (a
rewrite per batch copied and synced the whole file: 275 MB for a 5.5 MB file of 100,000
rows in batches of 1,000).

Crash safety of an append (:class:`AppendJournal`): before the rows are written, a small
journal beside the file (``.<name>.recsync-append``) records the file's inode, its size
before and its size after the append, and is synced; then the rows are written and the
file is synced, and only then does the write report success (so the state records the
records as synced only once they are durable). A process killed mid-append (or a machine
that lost power) leaves the file somewhere between the two sizes: the next open finds the
journal and cuts the file back to its size before, so no half row stays in the file. The
records of an append that was cut back, or that completed but was not reported, are sent
again; the first write after a start is the general rewrite, which updates rows already
in the file in place: nothing is duplicated.

Limits: a reader of the file during an append can see a last row that is not complete
yet (a rewrite swaps whole versions); a program that appends to the file right after a
crash of recsync mid-append, before recsync starts again, has its rows cut with ours.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any

from recsync.messages import Record, WriteOp

log = logging.getLogger(__name__)

_TAIL = 1 << 16  # how far back from the end to look for the last line break


@dataclass(frozen=True)
class CsvLayout:
    """The header and line ending of the CSV version with signature ``sig`` (one we wrote)."""

    sig: str
    header: tuple[str, ...]
    columns: frozenset[str]
    key_index: int
    eol: str

    @classmethod
    def of(cls, sig: str, header: Sequence[str], key: str, eol: str) -> CsvLayout | None:
        """The layout, or None when rows cannot simply be added (a repeated column name)."""
        if len(set(header)) != len(header) or key not in header:
            return None
        return cls(sig, tuple(header), frozenset(header), list(header).index(key), eol)


_KIND = attrgetter("kind")
_KEY = attrgetter("key")

# values the csv module writes as recsync does (None as "", numbers with str()); any
# other type (bool, bytes, lists, ...) goes through the connector's own cell conversion
_PLAIN = frozenset({str, int, float, type(None)})


def new_columns(
    ops: Sequence[WriteOp], layout: CsvLayout, cell: Callable[[Any], str]
) -> tuple[list[str], list[list[Any]]] | None:
    """Keys and column values of ``ops`` when they are plain additions for ``layout``: all
    upserts, distinct keys, a key value in each, no field outside the header. Else None.
    The key column holds each record's key (its text form: 303.0 is the record "303")."""
    header, columns, kidx = layout.header, layout.columns, layout.key_index
    records: list[Record] = [op.fields for op in ops if op.fields]
    if not records or len(records) != len(ops) or set(map(_KIND, ops)) != {"upsert"}:
        return None
    keys: list[str] = list(map(_KEY, ops))
    if len(set(keys)) != len(keys) or "" in keys:
        return None
    if set(map(tuple, records)) == {header}:  # the usual case: the header's fields, in order
        cols = [list(map(itemgetter(h), records)) for h in header]
    elif all(r.keys() <= columns for r in records):
        cols = [[r.get(h) for r in records] for h in header]
    else:
        return None
    if None in cols[kidx] or "" in cols[kidx]:
        return None
    cols[kidx] = keys
    if not set(map(type, chain.from_iterable(cols))) <= _PLAIN:
        cols = [[cell(v) for v in col] for col in cols]
    return keys, cols


def rows_bytes(columns: list[list[Any]], eol: str, encoding: str) -> bytes | None:
    """Rows of ``columns`` (values of the plain types, or text) as CSV lines in
    ``encoding``, exactly as the csv module writes them; None if some text cannot be
    stored in the encoding."""
    text = _joined(columns, eol)
    if text is None:  # some cell needs quoting: let the csv module do it
        buf = io.StringIO()
        csv.writer(buf, lineterminator=eol).writerows(zip(*columns, strict=True))
        text = buf.getvalue()
    try:
        return text.encode(encoding)
    except UnicodeEncodeError:
        return None


def _joined(columns: list[list[Any]], eol: str) -> str | None:
    """The rows joined with commas when no cell needs quoting (the usual case, and about
    twice as fast as the csv module); else None."""
    if len(columns) < 2 or not columns[0]:  # a lone empty cell is quoted: leave it to csv
        return None
    texts: list[Sequence[Any]] = []
    for column in columns:
        kinds = set(map(type, column))
        if kinds != {str}:
            if not kinds <= _PLAIN:
                return None
            column = ["" if v is None else v if v.__class__ is str else str(v)
                      for v in column]
        texts.append(column)
    text = eol.join(map(",".join, zip(*texts, strict=True))) + eol
    n, width = len(columns[0]), len(columns)
    # every comma and line break is one the join put there, and nothing is quoted
    if ('"' in text or text.count(",") != n * (width - 1) or text.count("\n") != n
            or text.count("\r") != (n if eol == "\r\n" else 0)):
        return None
    return text


def last_line_break(fd: int, size: int) -> bytes | None:
    """What to write before rows added at the end of file ``fd`` (``size`` bytes): nothing
    when it ends with a line break, else the break its last complete line ends with (as
    the rewrite does). None when that line is too far back to look for."""
    if size == 0:
        return b""
    tail = os.pread(fd, min(size, _TAIL), size - min(size, _TAIL))
    if tail.endswith(b"\n"):
        return b""
    cut = tail.rfind(b"\n")
    if cut < 0:
        return None if size > _TAIL else b"\n"
    return b"\r\n" if tail[cut - 1 : cut] == b"\r" else b"\n"


def write_at(fd: int, data: bytes, offset: int) -> None:
    """All of ``data`` into ``fd`` at ``offset``."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


_JOURNAL_BYTES = 128  # one fixed-size record, overwritten in place


class AppendJournal:
    """The journal of the appends to one file (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.file = path
        self.path = path.with_name(f".{path.name}.recsync-append")
        self._fd: int | None = None
        self.pending = False  # an append began and did not end (cut back or complete)

    def recover(self) -> bool:
        """Undo an append that a crash interrupted (cut the file back to its size before);
        True if one was undone. The journal is removed."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return False
        cut = False
        try:
            entry = json.loads(raw)
            ino, before, after = int(entry["ino"]), int(entry["before"]), int(entry["after"])
        except (ValueError, KeyError, TypeError):  # torn while written: no append began
            entry = None
        if entry is not None:
            try:
                fd = os.open(self.file, os.O_RDWR)
            except FileNotFoundError:
                fd = -1
            if fd >= 0:
                try:
                    st = os.fstat(fd)
                    if st.st_ino == ino and before < st.st_size < after:
                        os.ftruncate(fd, before)
                        os.fsync(fd)
                        cut = True
                finally:
                    os.close(fd)
        if cut:
            log.warning("An append to %s was interrupted (recsync stopped mid-write): the "
                        "file was cut back to %d bytes; those records are written again",
                        self.file, before)
        self.path.unlink(missing_ok=True)
        return cut

    def begin(self, ino: int, before: int, after: int) -> None:
        """Record (durably) that the file (inode ``ino``) is about to grow from ``before``
        to ``after`` bytes."""
        entry = json.dumps({"ino": ino, "before": before, "after": after}).encode()
        fresh = self._fd is None
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        write_at(self._fd, entry.ljust(_JOURNAL_BYTES - 1) + b"\n", 0)
        os.fdatasync(self._fd)
        self.pending = True
        if fresh:  # the journal's own name must survive a power loss too
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def end(self) -> None:
        """The append is complete and synced (or was cut back and synced)."""
        self.pending = False

    def close(self) -> None:
        """The journal is removed unless an append in it did not end (the next open
        recovers the file then)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            if not self.pending:
                self.path.unlink(missing_ok=True)
