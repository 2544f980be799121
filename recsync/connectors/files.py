"""File connector: one CSV or JSON Lines file, one record per row/line, keyed by ``key``.

Reading. The cursor is the file's signature ``"<st_ino>:<st_mtime_ns>:<st_size>"`` (or
``"absent"`` when there is no file, an empty side). An unchanged signature means no
changes; otherwise the file is listed in pages (``listing`` pages, every record an
upsert; the engine finds deletes from the listing). The open handle is kept between
pages, so a listing reads the one version it opened even if the file is replaced.
Intermediate listing pages carry ``"<old cursor>|<listing id>.<page>"``: the old
signature (so a restart lists again from scratch) plus a tag that lets a later call be
matched to the page it follows. The last page carries the listed version's signature.

Own writes. ``write`` rewrites the file into a temp file in the same folder and
``os.replace``-s it into place, remembering which version it replaced with which; a CSV
batch of records that are all new to the version we wrote last is appended to it in place
instead, journaled so that a crash mid-append is undone at the next open (see
``recsync.connectors.csvappend``). A
cursor from which a chain of only our own rewrites leads to the current file means no
changes. A rewrite made while a listing is open does not count as "own" for the listed
version (the listing cannot contain its records), so the file is listed again after.

Limits: an in-place edit that keeps the inode, size and mtime (within the filesystem's
timestamp granularity) is not seen; the check that nobody replaced the file right before
our ``os.replace`` leaves a tiny window; the encoding must be ASCII-compatible (utf-8,
latin-1, cp1252, ...; a leading BOM is kept). A crash mid-write can leave a
``.<name>.*.tmp`` file behind.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import csv
import dataclasses
import io
import itertools
import json
import logging
import operator
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar, Literal

import msgspec

from recsync.connectors.base import Connector, ConnectorConfig
from recsync.connectors.csvappend import (
    AppendJournal,
    CsvLayout,
    last_line_break,
    new_columns,
    rows_bytes,
    write_at,
)
from recsync.connectors.filelines import BOM, LINE, LineBlocks, OutFile, cell_text
from recsync.connectors.keyindex import KeyIndex
from recsync.connectors.probes import file_probe
from recsync.errors import ConnectorConfigError, ConnectorError
from recsync.messages import (
    Change,
    ChangePage,
    Record,
    Unreadable,
    WriteOp,
    WriteResult,
    key_text,
)

log = logging.getLogger(__name__)

ABSENT = "absent"
_MAX_WARNINGS = 20
_MAX_ATTEMPTS = 5
_OWN_WRITES_KEPT = 1024
_listing_ids = itertools.count(1)


class FileConfig(ConnectorConfig, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A CSV or JSON Lines file (``path`` is relative to the config folder)."""

    path: str
    format: Literal["auto", "csv", "jsonl"] = "auto"
    encoding: str = "utf-8"
    fields: list[str] = []


def _sig(st: os.stat_result) -> str:
    return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"


@dataclass
class _Bad:
    """A JSON line that could not be decoded (``why`` is empty for a blank line)."""

    why: str


@dataclass
class _Listing:
    fh: IO[bytes]
    records: Iterator[tuple[str, Record]]
    sig: str
    mtime: float
    base: str
    tag: int
    page: int = 0
    last_cursor: str | None = None
    pending: tuple[str, Record] | None = None
    seen: set[str] = field(default_factory=set)


@dataclass
class _Action:
    fields: Record | None  # None: delete
    replace: bool = False  # upsert after delete in one batch: drop the old columns


class FileConnector(Connector):
    """Reads and writes one CSV or JSON Lines file."""

    name: ClassVar[str] = "file"
    Config: ClassVar[type[ConnectorConfig]] = FileConfig
    local: ClassVar[bool] = True

    def __init__(self, config: Any, base_dir: Path) -> None:
        super().__init__(config, base_dir)
        config = self.config
        self.cfg: FileConfig = config
        self.path = Path(os.path.abspath(Path(base_dir) / config.path))
        self.key = config.key
        self.format = self._detect_format()
        self.encoding = config.encoding
        self.counts: collections.Counter[str] = collections.Counter()
        self._listing: _Listing | None = None
        self._verify_listing: _Listing | None = None  # list_records' own handle
        # the keys of the version we last wrote: new records are added without a scan
        self._keys = KeyIndex()
        self._layout: CsvLayout | None = None  # of the version we last wrote, if plain
        self._journal = AppendJournal(self.path)
        self._own: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._warned = 0
        self._bad: list[Unreadable] = []  # lines of the listing that could not be read
        self._new_bom = False
        key_only = msgspec.defstruct(
            "_KeyOnly", [("k", int | float | str | bool | None, None)], rename={"k": config.key}
        )
        self._key_decoder = msgspec.json.Decoder(key_only)
        self._keys_decoder = msgspec.json.Decoder(list[key_only])  # type: ignore[valid-type]

    def _detect_format(self) -> Literal["csv", "jsonl"]:
        if self.cfg.format != "auto":
            return self.cfg.format
        suffix = self.path.suffix.lower()
        if suffix == ".csv":
            return "csv"
        if suffix in (".jsonl", ".ndjson"):
            return "jsonl"
        raise ConnectorConfigError(
            f"Cannot tell the format of {self.path} from its suffix; name it .csv, .jsonl or "
            '.ndjson, or set format = "csv" or "jsonl".'
        )

    @property
    def system_id(self) -> str:
        return f"file:{self.path}"

    def change_probe(self) -> Callable[[], object] | None:
        return file_probe(self.path)

    # ------------------------------------------------------------------ open / close

    def open(self) -> None:
        try:
            codec = codecs.lookup(self.cfg.encoding)
        except LookupError as exc:
            raise ConnectorConfigError(
                f"Unknown encoding {self.cfg.encoding!r} for {self.path}."
            ) from exc
        self.encoding = "utf-8" if codec.name == "utf-8-sig" else codec.name
        self._new_bom = codec.name == "utf-8-sig"
        if '\n,a{}"'.encode(self.encoding, "replace") != b'\n,a{}"':
            raise ConnectorConfigError(
                f"Encoding {self.cfg.encoding!r} for {self.path} is not supported; use an "
                "ASCII-compatible encoding such as utf-8, latin-1 or cp1252."
            )
        folder = self.path.parent
        if not folder.is_dir():
            raise ConnectorConfigError(
                f"Folder {folder} of file {self.path.name!r} does not exist; create it or fix "
                "'path' of the file connector."
            )
        if self.path.is_dir():
            raise ConnectorConfigError(f"{self.path} is a folder, not a file; fix 'path'.")
        if self.format == "csv":
            self._journal.recover()
            header = self._csv_header()
            if header is not None and self.key not in header:
                raise ConnectorConfigError(self._no_key_column(header))

    def unknown_fields(self, names: list[str], *, read: bool = True) -> list[str]:
        """A CSV file the rules read: the names its header lacks (every record would
        carry them empty). Written to only, a file takes any name as a new column; a JSON
        Lines record may leave out any field, so no line tells what the file lacks."""
        if not read or self.format != "csv":
            return []
        header = self._csv_header()
        return [n for n in names if n not in header] if header else []

    def _csv_header(self) -> list[str] | None:
        try:
            with open(self.path, "rb") as fh:
                return next(csv.reader(LineBlocks(fh, self.encoding).lines()), None)
        except FileNotFoundError:
            return None
        except (OSError, csv.Error) as exc:
            raise ConnectorError(f"Cannot read {self.path}: {exc}.") from exc

    def _no_key_column(self, header: list[str]) -> str:
        return (
            f"CSV file {self.path} has no key column {self.key!r} in its header "
            f"(columns: {', '.join(header)}); fix the file or 'key'."
        )

    def close(self) -> None:
        self._end_listing()
        self._end_verify_listing()
        self._keys.clear()
        self._layout = None
        with contextlib.suppress(OSError):
            self._journal.close()

    # ------------------------------------------------------------------ reading

    @staticmethod
    def relist_cursor(cursor: str | None) -> str:
        """A cursor that makes the next ``read_changes`` list the whole file."""
        return "relist"

    def _current_sig(self) -> str:
        try:
            return _sig(os.stat(self.path))
        except FileNotFoundError:
            return ABSENT
        except OSError as exc:
            raise ConnectorError(f"Cannot stat {self.path}: {exc}.") from exc

    def read_changes(self, cursor: str | None, limit: int) -> ChangePage:
        limit = max(1, limit)
        lst = self._listing
        if lst is not None and cursor is not None and cursor == lst.last_cursor:
            return self._next_page(lst, limit)
        self._end_listing()
        base, mid_listing, _ = (cursor or "").partition("|")
        current = self._current_sig()
        if cursor is not None and not mid_listing:
            seen = base
            for _ in range(len(self._own) + 1):
                if seen == current:
                    return ChangePage([], current)
                nxt = self._own.get(seen)
                if nxt is None:
                    break
                seen = nxt
        return self._start_listing(base, limit)

    def _start_listing(self, base: str, limit: int) -> ChangePage:
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 - kept open across pages
        except FileNotFoundError:
            return ChangePage([], ABSENT, listing=True, listing_start=True, listing_done=True)
        except OSError as exc:
            raise ConnectorError(f"Cannot open {self.path}: {exc}.") from exc
        st = os.fstat(fh.fileno())
        self._warned = 0
        self._bad = []
        lst = _Listing(
            fh, self._records(fh), _sig(st), st.st_mtime_ns / 1e9, base, next(_listing_ids)
        )
        self._listing = lst
        return self._next_page(lst, limit)

    def _end_listing(self) -> None:
        if self._listing is not None:
            with contextlib.suppress(OSError):
                self._listing.fh.close()
            self._listing = None

    def _next_page(self, lst: _Listing, limit: int) -> ChangePage:
        page: dict[str, Change] = {}
        done = False
        try:
            for _ in range(limit):
                item = lst.pending or next(lst.records, None)
                lst.pending = None
                if item is None:
                    done = True
                    break
                k, rec = item
                if k in lst.seen:
                    self._duplicate(k)
                    page.pop(k, None)
                else:
                    lst.seen.add(k)
                page[k] = Change(k, "upsert", rec, lst.mtime)
            if not done:
                lst.pending = next(lst.records, None)
                done = lst.pending is None
        except OSError as exc:
            self._end_listing()
            raise ConnectorError(f"Cannot read {self.path}: {exc}.") from exc
        except BaseException:
            self._end_listing()
            raise
        start = lst.page == 0
        lst.page += 1
        if done:
            self._end_listing()
            if self._warned > _MAX_WARNINGS:
                log.warning(
                    "%d lines of %s were skipped or duplicates (only %d logged)",
                    self._warned,
                    self.path,
                    _MAX_WARNINGS,
                )
            cursor = lst.sig
        else:
            cursor = f"{lst.base}|{lst.tag}.{lst.page}"
            lst.last_cursor = cursor
        bad, self._bad = self._bad, []
        return ChangePage(
            list(page.values()),
            cursor,
            more=not done,
            listing=True,
            listing_start=start,
            listing_done=done,
            unreadable=bad,
        )

    def _malformed(self, lineno: int, why: str, report: bool, hides_key: bool = True) -> None:
        """Count, log and report a line that is no record; ``hides_key``: it may hold a
        linked record whose key could not be read (no listing delete while it is bad)."""
        if not report:
            return
        self.counts["malformed_lines"] += 1
        self._bad.append(Unreadable(
            f"{self.cfg.path}:{lineno}",
            f"Line {lineno} of {self.path} cannot be read: {why}; fix the line (it is not "
            "synced until then).", hides_key))
        self._warned += 1
        if self._warned <= _MAX_WARNINGS:
            log.warning("Skipping line %d of %s: %s", lineno, self.path, why)

    def _duplicate(self, key: str) -> None:
        self.counts["duplicate_keys"] += 1
        self._warned += 1
        if self._warned <= _MAX_WARNINGS:
            log.warning("Key %r appears more than once in %s; the later line wins", key, self.path)

    def _records(self, fh: IO[bytes], report: bool = True) -> Iterator[tuple[str, Record]]:
        """(key, record) of every usable line; ``report``: count and log the others."""
        if self.format == "csv":
            return self._csv_records(fh, report)
        return self._jsonl_records(fh, report)

    def _csv_records(self, fh: IO[bytes], report: bool) -> Iterator[tuple[str, Record]]:
        blocks = LineBlocks(fh, self.encoding)
        reader = csv.reader(blocks.lines())
        try:
            header = next(reader, None)
        except csv.Error as exc:
            raise ConnectorError(f"Cannot read the header of {self.path}: {exc}.") from exc
        if header is None:
            return
        if self.key not in header:
            raise ConnectorError(self._no_key_column(header))
        kidx, width = header.index(self.key), len(header)
        while True:
            start = blocks.lineno + 1
            blocks.bad = False
            blocks.raw.clear()
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                self._malformed(start, f"CSV error: {exc}", report)
                continue
            if not row:
                continue
            if blocks.bad:
                self._malformed(start, f"bytes that are not valid {self.encoding}", report)
                continue
            if len(row) < width:
                row += [""] * (width - len(row))
            k = row[kidx]
            if not k:
                self._malformed(start, f"no value in key column {self.key!r}", report, False)
                continue
            yield k, dict(zip(header, row, strict=False))

    def _jsonl_records(self, fh: IO[bytes], report: bool) -> Iterator[tuple[str, Record]]:
        blocks = LineBlocks(fh, self.encoding)
        utf8 = self.encoding == "utf-8"
        decode = msgspec.json.decode
        key = self.key
        lineno = 0
        while True:
            block = blocks.block()
            if not block:
                return
            lines = LINE.findall(block)
            objs: list[Any] | None = None
            if utf8:  # fast path: the whole block in one call
                with contextlib.suppress(msgspec.DecodeError):
                    objs = decode(b"[" + b",".join(lines) + b"]")
            if objs is None or len(objs) != len(lines):
                objs = []
                for raw in lines:
                    try:
                        objs.append(decode(raw if utf8 else raw.decode(self.encoding)))
                    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                        objs.append(_Bad(f"not valid JSON ({exc})" if raw.strip() else ""))
            for obj in objs:
                lineno += 1
                if type(obj) is not dict:
                    if type(obj) is not _Bad:
                        self._malformed(lineno, "not a JSON object", report)
                    elif obj.why:
                        self._malformed(lineno, obj.why, report)
                    continue
                kv = obj.get(key)
                if kv is None or kv == "" or isinstance(kv, dict | list):
                    self._malformed(lineno, f"no usable value for key {key!r}", report,
                                    isinstance(kv, dict | list))
                    continue
                yield key_text(kv), obj

    def fetch(self, keys: list[str]) -> dict[str, Record]:
        wanted = set(keys)
        out: dict[str, Record] = {}
        try:
            with open(self.path, "rb") as fh:
                for k, rec in self._records(fh, report=False):
                    if k in wanted:
                        out[k] = rec
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ConnectorError(f"Cannot read {self.path}: {exc}.") from exc
        return out

    def list_records(self, position: str | None, limit: int) -> tuple[list[Change], str | None]:
        """The file in pages, from a handle of its own (a poll's listing is not disturbed).
        A page's position is only good for the next call: anything else starts over."""
        lst = self._verify_listing
        if position is None:
            self._end_verify_listing()
            try:
                fh = open(self.path, "rb")  # noqa: SIM115 - kept open across pages
            except FileNotFoundError:
                return [], None
            except OSError as exc:
                raise ConnectorError(f"Cannot open {self.path}: {exc}.") from exc
            st = os.fstat(fh.fileno())
            lst = self._verify_listing = _Listing(
                fh, self._records(fh, report=False), _sig(st), st.st_mtime_ns / 1e9, "",
                next(_listing_ids))
        elif lst is None or position != lst.last_cursor:
            raise ConnectorError(f"The listing of {self.path} for verify was interrupted; "
                                 "run verify again.")
        changes: list[Change] = []
        try:
            for k, rec in itertools.islice(lst.records, max(1, limit)):
                changes.append(Change(k, "upsert", rec, lst.mtime))
            lst.pending = next(lst.records, None)
        except OSError as exc:
            self._end_verify_listing()
            raise ConnectorError(f"Cannot read {self.path}: {exc}.") from exc
        except BaseException:
            self._end_verify_listing()
            raise
        if lst.pending is None:
            self._end_verify_listing()
            return changes, None
        lst.records = itertools.chain([lst.pending], lst.records)
        lst.pending = None
        lst.page += 1
        lst.last_cursor = f"verify|{lst.tag}.{lst.page}"
        return changes, lst.last_cursor

    def _end_verify_listing(self) -> None:
        if self._verify_listing is not None:
            with contextlib.suppress(OSError):
                self._verify_listing.fh.close()
            self._verify_listing = None

    # ------------------------------------------------------------------ writing

    def write(self, ops: list[WriteOp]) -> list[WriteResult]:
        if self.format == "csv":
            added = self._append_new(ops)
            if added is not None:
                return added
        results: list[WriteResult] = []
        plan: dict[str, _Action] = {}
        for op in ops:
            if op.kind == "delete":
                plan[op.key] = _Action(None)
                results.append(WriteResult(op.key))
                continue
            # CSV cells are text: convert once, for the checks and the rows alike
            fields = (dict(op.fields or {}) if self.format == "jsonl"
                      else {k: cell_text(v) for k, v in (op.fields or {}).items()})
            if self.format == "csv" and fields.get(self.key):
                fields[self.key] = op.key  # the key's text form: 303.0 is the record "303"
            error = self._check(op.key, fields)
            if error is not None:
                results.append(WriteResult(op.key, error, retryable=False))
                continue
            prev = plan.get(op.key)
            if prev is None or prev.fields is None:
                plan[op.key] = _Action(fields, replace=prev is not None)
            else:
                prev.fields.update(fields)
            results.append(WriteResult(op.key))
        if plan:
            self._write_plan(plan)
        return results

    def _check(self, key: str, fields: Record) -> str | None:
        kv = fields.get(self.key)
        if kv is None or kv == "":
            return f"Record {key!r} has no value for key field {self.key!r} of {self.path}."
        try:
            if self.format == "jsonl":
                msgspec.json.encode(fields)
            else:
                try:  # one encode for the whole record (its values are text by now) ...
                    "\0".join([*fields, *fields.values()]).encode(self.encoding)
                except UnicodeEncodeError:  # ... and field by field to say which failed
                    for name, value in fields.items():
                        name.encode(self.encoding)
                        cell_text(value).encode(self.encoding)
                    raise
        except UnicodeEncodeError as exc:
            return (
                f"Record {key!r} has text that {self.encoding} cannot store in {self.path}: {exc}."
            )
        except (TypeError, msgspec.EncodeError) as exc:
            return f"Record {key!r} cannot be written as JSON to {self.path}: {exc}."
        return None

    def _write_plan(self, plan: dict[str, _Action]) -> None:
        for _ in range(_MAX_ATTEMPTS):
            try:
                outcome = self._rewrite_once(plan)
            except OSError as exc:
                raise ConnectorError(f"Cannot write {self.path}: {exc}.") from exc
            if outcome is not None:
                self._remember_own(*outcome)
                return
            log.info("%s changed while recsync rewrote it; rewriting again", self.path)
        raise ConnectorError(
            f"{self.path} kept changing while recsync rewrote it ({_MAX_ATTEMPTS} attempts); "
            "will retry."
        )

    def _remember_own(self, before: str, after: str) -> None:
        lst = self._listing
        if lst is None or lst.sig != before:
            self._own[before] = after
            while len(self._own) > _OWN_WRITES_KEPT:
                self._own.popitem(last=False)

    def _rewrite_once(self, plan: dict[str, _Action]) -> tuple[str, str] | None:
        """Rewrite the file with ``plan`` applied; None if it changed meanwhile."""

        written: tuple[list[str], str] | None = None  # the CSV's header and line break

        def fill(src: IO[bytes] | None, before: str, out: IO[bytes]) -> bool:
            nonlocal written
            if self.format == "csv":
                written = self._rewrite_csv(src, out, plan)
            else:
                self._rewrite_jsonl(src, out, plan)
            return True

        self._layout = None
        outcome = self._replace(fill)
        if outcome is not None and written is not None:
            self._keys.version = outcome[1]
            header, eol = written
            self._layout = CsvLayout.of(outcome[1], header, self.key, eol)
        return outcome

    def _replace(
        self, fill: Callable[[IO[bytes] | None, str, IO[bytes]], bool]
    ) -> tuple[str, str] | None:
        """Write a new version of the file with ``fill(old file or None, its signature,
        temp file)`` and move it into place: (old signature, new signature). None when
        ``fill`` declined (False) or the file changed meanwhile."""
        try:
            src: IO[bytes] | None = open(self.path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            src = None
        try:
            st = os.fstat(src.fileno()) if src else None
            before = _sig(st) if st else ABSENT
            fd, tmp = tempfile.mkstemp(
                prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
            )
            try:
                with open(fd, "wb", buffering=1 << 20) as out:
                    filled = fill(src, before, out)
                    if filled:
                        out.flush()
                        os.fchmod(fd, stat.S_IMODE(st.st_mode) if st else 0o644)
                        os.fsync(fd)
                        after = _sig(os.fstat(fd))
                if not filled or self._current_sig() != before:
                    os.unlink(tmp)
                    return None
                os.replace(tmp, self.path)
                self._journal.retire()
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        finally:
            if src is not None:
                src.close()
        with contextlib.suppress(OSError):
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        return before, after

    def _append_new(self, ops: list[WriteOp]) -> list[WriteResult] | None:
        """Add records that are all new to the CSV version we last wrote at its end, in
        place, leaving its old lines unread (see ``recsync.connectors.csvappend``); None
        when the batch or the file does not allow it, and the general rewrite must run.
        While a listing is open the rewrite runs too: a listing reads the version it
        opened."""
        layout = self._layout
        if (layout is None or self._keys.version != layout.sig or self._listing is not None
                or self._verify_listing is not None):
            return None
        plain = new_columns(ops, layout, cell_text)
        if plain is None:
            return None
        keys, columns = plain
        data = rows_bytes(columns, layout.eol, self.encoding)
        if data is None:
            return None  # the general path says which record cannot be stored
        try:
            key_bytes = [k.encode(self.encoding, "surrogateescape") for k in keys]
        except UnicodeEncodeError:
            return None
        try:
            outcome = self._append(layout.sig, data, key_bytes)
        except OSError as exc:
            self._layout = None  # the index may hold keys the file does not: rebuild it
            raise ConnectorError(f"Cannot write {self.path}: {exc}.") from exc
        if outcome is None:
            return None
        self._keys.version = outcome[1]
        self._layout = dataclasses.replace(layout, sig=outcome[1])
        self._remember_own(*outcome)
        return [WriteResult(k) for k in keys]

    def _append(self, expect: str, data: bytes, key_bytes: list[bytes]) -> tuple[str, str] | None:
        """Append ``data`` (rows with the keys ``key_bytes``) to the file when it is still
        the version ``expect``, journaled (see ``AppendJournal``): (old signature, new
        signature), or None when the file changed (or its last line is too long to look
        for its line break) and the general rewrite must run."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(fd)
            before, size = _sig(st), st.st_size
            end = last_line_break(fd, size) if before == expect else None
            if end is None:
                return None
            if not self._keys.add_new(key_bytes):
                self._layout = None  # the index holds keys the file does not: rebuild it
                return None
            self._keys.version = None  # until the rows are in place
            self._journal.begin(fd, st.st_ino, size)
            try:
                write_at(fd, end + data, size)
                os.fdatasync(fd)
            except BaseException:
                # cut back what was written (the journal does it at the next open if this
                # fails too); the index holds keys the file does not: rebuild it
                self._layout = None
                self._journal.dirty = True
                os.ftruncate(fd, size)
                os.fsync(fd)
                self._journal.dirty = False
                raise
            st_after = os.fstat(fd)
            self._journal.appended(st_after.st_ino, st_after.st_size)
            after = _sig(st_after)
        finally:
            os.close(fd)
        if os.stat(self.path).st_ino != st.st_ino:
            # replaced meanwhile: the rows went into the old file, the rewrite adds them
            self._layout = None
            return None
        return before, after

    def _rewrite_csv(
        self, src: IO[bytes] | None, fh: IO[bytes], plan: dict[str, _Action]
    ) -> tuple[list[str], str]:
        """Stream the CSV with ``plan`` applied; untouched lines are copied byte for byte.

        The key index is left holding the keys of the new version. Returns the header
        and the line break new rows were written with.
        """
        enc, out = self.encoding, OutFile(fh)
        blocks = LineBlocks(src, enc) if src else None
        reader = csv.reader(blocks.lines()) if blocks else None
        try:
            old_header = next(reader, None) if reader else None
        except csv.Error as exc:
            raise ConnectorError(f"Cannot read the header of {self.path}: {exc}.") from exc
        if old_header is not None and self.key not in old_header:
            raise ConnectorConfigError(self._no_key_column(old_header))
        header = list(old_header) if old_header is not None else list(self.cfg.fields)
        known = set(header)
        for act in plan.values():
            for f in act.fields or ():
                if f not in known:
                    known.add(f)
                    header.append(f)
        rewrite_all = old_header is None or len(header) != len(old_header)
        width, kidx = len(header), header.index(self.key)
        col: dict[str, int] = {}
        for i, c in enumerate(header):
            col.setdefault(c, i)
        crlf = blocks is not None and bool(blocks.raw) and blocks.raw[0].endswith(b"\r\n")
        eol = "\r\n" if crlf else "\n"
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator=eol)

        def row_bytes(cells: list[str]) -> bytes:
            buf.seek(0)
            buf.truncate()
            writer.writerow(cells)
            return buf.getvalue().encode(enc, "surrogateescape")

        def apply(row: list[str], act: _Action) -> bytes:
            cells = [""] * width if act.replace else row + [""] * (width - len(row))
            for f, v in (act.fields or {}).items():
                cells[col[f]] = cell_text(v)
            return row_bytes(cells)

        if blocks.bom if blocks is not None else self._new_bom:
            out.fh.write(BOM.encode(enc))
        if rewrite_all or blocks is None:
            out.line(row_bytes(header))
        else:
            out.write(b"".join(blocks.raw))
        done: set[str] = set()
        by_bytes: dict[bytes, str] = {}
        for k in plan:
            with contextlib.suppress(UnicodeEncodeError):  # such a key cannot be in the file
                by_bytes[k.encode(enc, "surrogateescape")] = k
        index = self._keys
        index.clear()  # until the new version is in place
        index.add(list(by_bytes))
        key_re = re.compile(rb"^(?:(?:[^,\n]*,){%d}([^,\r\n]*))?" % kidx, re.MULTILINE)
        while blocks is not None and reader is not None:
            block = blocks.block()
            if not block:
                break
            if not rewrite_all and b'"' not in block:
                # fast path: no quoting, so every line is one row and the key cell is found
                # by a regex; only lines with a key of the batch are touched in Python
                keys = key_re.findall(block)
                if block.endswith(b"\n"):
                    keys.pop()  # the empty match after the last line break: no line
                index.add(keys)
                hits = by_bytes.keys() & keys
                if not hits:
                    out.write(block)
                    continue
                lines = LINE.findall(block)
                for i in [i for i, k in enumerate(keys[: len(lines)]) if k in hits]:
                    k = by_bytes[keys[i]]
                    done.add(k)
                    act = plan[k]
                    row = lines[i].rstrip(b"\r\n").decode(enc, "surrogateescape").split(",")
                    lines[i] = b"" if act.fields is None else apply(row, act)
                out.write(b"".join(lines))
                continue
            blocks.queue.extend(LINE.findall(block))
            slow_keys: list[bytes] = []
            while blocks.queue:  # quoted cells may span lines: let the csv module parse
                blocks.raw.clear()
                blocks.bad = False
                try:
                    row = next(reader)
                except StopIteration:
                    break
                except csv.Error:
                    row = []
                k = row[kidx] if kidx < len(row) and not blocks.bad else ""
                if kidx < len(row):
                    slow_keys.append(row[kidx].encode(enc, "surrogateescape"))
                found = plan.get(k) if k else None
                if found is None:
                    if rewrite_all and row and not blocks.bad:
                        out.line(row_bytes(row + [""] * (width - len(row))))
                    else:
                        out.write(b"".join(blocks.raw))
                    continue
                done.add(k)
                if found.fields is not None:
                    out.line(apply(row, found))
            index.add(slow_keys)
        new_rows = []
        unique_header = len(col) == width
        for k, act in plan.items():
            if k not in done and act.fields is not None:
                fields = act.fields
                if unique_header:  # the usual case: one pass over the header
                    new_rows.append([fields.get(h, "") for h in header])
                    continue
                cells = [""] * width
                for f, v in fields.items():
                    cells[col[f]] = cell_text(v)
                new_rows.append(cells)
        if new_rows:  # one csv pass and one encode for all of them
            buf.seek(0)
            buf.truncate()
            writer.writerows(new_rows)
            out.line(buf.getvalue().encode(enc, "surrogateescape"))
        return header, eol

    def _rewrite_jsonl(
        self, src: IO[bytes] | None, fh: IO[bytes], plan: dict[str, _Action]
    ) -> None:
        """Stream the JSON Lines with ``plan`` applied; untouched lines are copied as they are."""
        enc, out = self.encoding, OutFile(fh)
        utf8 = enc == "utf-8"
        done: set[str] = set()
        lookup: set[Any] = set()
        for k in plan:
            lookup.add(k)
            for conv in (int, float):
                with contextlib.suppress(ValueError):
                    v = conv(k)
                    if key_text(v) == k:
                        lookup.add(v)
        get_k = operator.attrgetter("k")

        def encode(obj: Record) -> bytes:
            data = msgspec.json.encode(obj)
            if not utf8:  # \u-escape what the encoding lacks
                data = json.dumps(json.loads(data), separators=(",", ":")).encode(enc)
            return data + b"\n"

        def apply(raw: bytes, k: str) -> bytes:
            act = plan[k]
            done.add(k)
            if act.fields is None:
                return b""
            if act.replace:
                return encode(act.fields)
            obj = msgspec.json.decode(raw if utf8 else raw.decode(enc))
            obj.update(act.fields)
            return encode(obj)

        def key_of(raw: bytes) -> str | None:
            try:
                kv = get_k(self._key_decoder.decode(raw if utf8 else raw.decode(enc)))
            except (msgspec.DecodeError, UnicodeDecodeError):
                return None
            return None if kv is None else key_text(kv)

        blocks = LineBlocks(src, enc) if src else None
        if blocks is None and self._new_bom:
            out.fh.write(BOM.encode(enc))
        first = True
        while blocks is not None:
            block = blocks.block()
            if not block:
                break
            if first and blocks.bom:
                out.fh.write(BOM.encode(enc))
            first = False
            lines = LINE.findall(block)
            objs = None
            if utf8:
                with contextlib.suppress(msgspec.DecodeError):
                    objs = self._keys_decoder.decode(b"[" + b",".join(lines) + b"]")
            if objs is not None and len(objs) == len(lines):
                # fast path: the keys of a whole block decoded at once
                idx = [i for i, o in enumerate(objs) if get_k(o) in lookup]
                if not idx:
                    out.write(block)
                    continue
            else:
                idx = [i for i, raw in enumerate(lines) if raw.strip()]
            for i in idx:
                rk = key_of(lines[i])  # each candidate line checked on its own
                if rk is not None and rk in plan:
                    lines[i] = apply(lines[i], rk)
            out.write(b"".join(lines))
        for k, act in plan.items():
            if k not in done and act.fields is not None:
                out.line(encode(act.fields))
