"""Adding new records to a CSV file recsync wrote last, without reading its old lines.

The file connector replaces a file to change it (temp file + rename). When every record
of a batch is new to the file, it appends the rows to the file in place instead: neither
the old bytes nor the rows already there cost anything, however big the file grows (a
rewrite per batch copied and synced the whole file: 275 MB for a 5.5 MB file of 100,000
rows in batches of 1,000).

Crash safety of an append (:class:`AppendJournal`): a small journal beside the file
(``.<name>.recsync-append``) records, synced before the first append to a version of the
file (its inode), the size the file had then and the bytes just before it: every byte
after it is a row we appended. The journal counts only for that version: a rewrite
retires it, and the next open cuts nothing unless the file still has that inode and those
bytes (a later version can get a freed inode number back; cutting one would lose rows).
Each append writes its rows and syncs the file before the write reports success, so the
state records the records as synced only once they are durable. A process killed
mid-append (or a machine that lost power) can leave an unfinished row at the end; the
next open finds the journal and cuts the file back to the end of the last whole row after
that size, so no half row stays in the file. Records whose append was cut, or that were
written but not reported, are sent again; the first write after a start is the general
rewrite, which updates rows already in the file in place: nothing is duplicated. One
sync per batch, as for the rewrite (which synced the file and its folder), instead of
a copy of the whole file.

Limits: a reader of the file during an append can see a last row that is not complete
yet (a rewrite swaps whole versions); after a crash of recsync, a program that changed
the file in place since recsync's last append (before recsync started again) can have
an unfinished last row of its own cut off too.
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


_BEFORE_BYTES = 32  # kept in the journal (as hex) to recognise the file version
_JOURNAL_BYTES = 256  # one fixed-size record (within a sector), overwritten in place


def whole_rows_end(data: bytes) -> int:
    """Where the last whole CSV row in ``data`` (which starts at a row's start) ends: after
    its line break, outside quotes (a quoted cell may hold line breaks; the csv module
    doubles the quotes inside one, so a row's quotes are balanced only at its end)."""
    end = pos = quotes = 0
    for piece in data.split(b"\n")[:-1]:  # each piece was followed by a line break
        pos += len(piece) + 1
        quotes += piece.count(b'"')
        if quotes % 2 == 0:
            end = pos
    return end


class AppendJournal:
    """Where the rows recsync appends to one file begin (see the module docstring).

    It is written (and synced) once for a run of appends, each finding the file as the
    one before left it (same inode, same size): the file's size when the first of them
    began. Every byte after it is ours while we append, so after a crash the next open
    cuts off what follows the last whole row there: a row an append did not finish.
    Whole rows stay, whether or not their append was reported (those not reported are
    sent again, and the rewrite that runs first after a start updates them in place).
    """

    def __init__(self, path: Path) -> None:
        self.file = path
        self.path = path.with_name(f".{path.name}.recsync-append")
        self._fd: int | None = None
        # the file version (inode) the journal holds the start of, and where our last
        # append to it ended: a file that is not as we left it is journaled anew
        self._at: tuple[int, int] | None = None
        self.dirty = False  # an append failed and could not be cut back: keep the journal

    def recover(self) -> bool:
        """Cut off a row that a crash left unfinished at the end of the file; True if
        there was one. The journal is removed."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return False
        cut = None
        try:
            entry = json.loads(raw)
            ino, start = int(entry["ino"]), int(entry["from"])
            before = bytes.fromhex(entry["before"])
        except (ValueError, KeyError, TypeError):  # torn while written: no append began
            entry = None
        if entry is not None:
            try:
                fd = os.open(self.file, os.O_RDWR)
            except FileNotFoundError:
                fd = -1
            if fd >= 0:
                try:
                    size = os.fstat(fd).st_size
                    # the same version of the file, not another that got the inode number
                    # back (a rewrite, an editor's save): the bytes before ours are as the
                    # journal saw them
                    if (os.fstat(fd).st_ino == ino and size > start
                            and _bytes_before(fd, start) == before):
                        end = start + whole_rows_end(os.pread(fd, size - start, start))
                        if end < size:
                            os.ftruncate(fd, end)
                            os.fsync(fd)
                            cut = end
                finally:
                    os.close(fd)
        if cut is not None:
            log.warning("An append to %s was interrupted (recsync stopped mid-write): its "
                        "unfinished last row was cut off (the file is %d bytes); the records "
                        "of that append are written again", self.file, cut)
        self.path.unlink(missing_ok=True)
        return cut is not None

    def begin(self, fd: int, ino: int, size: int) -> None:
        """Before an append to the file (open as ``fd``, inode ``ino``, ``size`` bytes):
        unless it is where our last append to this version ended, record durably that our
        rows begin here, with the bytes just before (which identify this version)."""
        if self._at == (ino, size):
            return
        entry = json.dumps({"ino": ino, "from": size,
                            "before": _bytes_before(fd, size).hex()}).encode()
        fresh = self._fd is None
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        write_at(self._fd, entry.ljust(_JOURNAL_BYTES - 1) + b"\n", 0)
        os.fdatasync(self._fd)
        if fresh:  # the journal's own name must survive a power loss too
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        self._at = (ino, size)

    def appended(self, ino: int, size: int) -> None:
        """An append to the file (inode ``ino``) ended, synced, at ``size`` bytes."""
        self._at = (ino, size)

    def retire(self) -> None:
        """The file was replaced by a rewrite: the journal speaks of a version that is gone
        (whose inode number a later version may get back), so it goes."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._at = None
        self.dirty = False
        self.path.unlink(missing_ok=True)

    def close(self) -> None:
        """At a clean stop: the journal goes (unless an append could not be undone)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._at = None
            if not self.dirty:
                self.path.unlink(missing_ok=True)


def _bytes_before(fd: int, offset: int) -> bytes:
    """Up to the last _BEFORE_BYTES bytes of the file before ``offset``."""
    start = max(0, offset - _BEFORE_BYTES)
    return os.pread(fd, offset - start, start)
