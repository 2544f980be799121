"""Adding new records to a CSV file recsync wrote last, without reading its old lines.

The file connector replaces a file to change it (temp file + rename). When every record
of a batch is new to the file, the new version is the old bytes with rows added at the
end: the old bytes are copied by the kernel (``copy_file_range``), so neither the copy
nor the rows already there cost Python time, however big the file grows.
"""

from __future__ import annotations

import csv
import errno
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter, itemgetter
from typing import IO, Any

from recsync.messages import Record, WriteOp

# copy_file_range cannot be used here (another file system, an old kernel): copy by hand
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM}
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


def last_line_break(src: IO[bytes], size: int) -> bytes | None:
    """What to write before rows added at the end of ``src`` (``size`` bytes): nothing
    when it ends with a line break, else the break its last complete line ends with (as
    the rewrite does). None when that line is too far back to look for."""
    if size == 0:
        return b""
    tail = os.pread(src.fileno(), min(size, _TAIL), size - min(size, _TAIL))
    if tail.endswith(b"\n"):
        return b""
    cut = tail.rfind(b"\n")
    if cut < 0:
        return None if size > _TAIL else b"\n"
    return b"\r\n" if tail[cut - 1 : cut] == b"\r" else b"\n"


def copy_bytes(src: IO[bytes], dst_fd: int, count: int) -> None:
    """Write the first ``count`` bytes of ``src`` at ``dst_fd``'s position, in the kernel
    where it can (no GIL held, no buffer in Python)."""
    done = 0
    try:
        while done < count:
            n = os.copy_file_range(src.fileno(), dst_fd, count - done, done)
            if n == 0:  # the file shrank: the caller's signature check notices
                return
            done += n
        return
    except OSError as exc:
        if exc.errno not in _NO_KERNEL_COPY:
            raise
    src.seek(done)
    while done < count:
        chunk = src.read(min(1 << 20, count - done))
        if not chunk:
            return
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst_fd, view):]
        done += len(chunk)
