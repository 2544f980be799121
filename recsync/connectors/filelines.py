"""Line-level pieces of the file connector: blocks of whole lines read from a file, the
temp file a new version is written to, and the text a value takes in a CSV cell."""

from __future__ import annotations

import collections
import json
import re
from collections.abc import Iterator
from typing import IO, Any

BOM = "\ufeff"
BOM_UTF8 = BOM.encode()
BLOCK = 1 << 20
LINE = re.compile(rb"[^\n]*\n|[^\n]+$")


def cell_text(value: Any) -> str:
    """A value as CSV cell text: None is empty, booleans are true/false, lists and dicts
    are JSON, anything else its str()."""
    if value.__class__ is str:
        return value  # type: ignore[no-any-return]
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


class OutFile:
    """The temp file being written; knows whether it ends with a complete line."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.eol = b"\n"
        self.at_line_start = True

    def write(self, data: bytes) -> None:
        if data:
            self.fh.write(data)
            self.at_line_start = data.endswith(b"\n")
            if self.at_line_start:
                self.eol = b"\r\n" if data.endswith(b"\r\n") else b"\n"

    def line(self, data: bytes) -> None:
        """Write one whole new line (``data`` ends with its line break)."""
        if not self.at_line_start:
            self.fh.write(self.eol)
        self.write(data)


class LineBlocks:
    """A binary file read as blocks of whole lines, with a queue of lines for csv.reader."""

    def __init__(self, fh: IO[bytes], encoding: str) -> None:
        self.fh = fh
        self.encoding = encoding
        self.rest = b""
        self.first = True
        self.bom = False
        self.bad = False
        self.lineno = 0
        self.queue: collections.deque[bytes] = collections.deque()
        self.unsplit = b""  # whole lines after the queue, not yet split
        self.raw: list[bytes] = []

    def block(self) -> bytes:
        """The next whole lines (the last one may lack its line break at EOF); b"" at EOF."""
        if self.queue or self.unsplit:
            data = b"".join(self.queue) + self.unsplit
            self.queue.clear()
            self.unsplit = b""
            return data
        while True:
            data = self.fh.read(BLOCK)
            if self.first:
                self.first = False
                if self.encoding == "utf-8" and data.startswith(BOM_UTF8):
                    self.bom = True
                    data = data[len(BOM_UTF8) :]
            if not data:
                data, self.rest = self.rest, b""
                return data
            data = self.rest + data
            cut = data.rfind(b"\n") + 1
            if cut:
                self.rest = data[cut:]
                return data[:cut]
            self.rest = data

    def raw_lines(self) -> Iterator[bytes]:
        """Lines from the queue, refilled block by block; counts ``lineno``."""
        while True:
            if not self.queue:
                data = self.block()
                if not data:
                    return
                if self.lineno == 0:
                    # the header alone: a caller that only needs it does not pay for
                    # splitting the rest of the block
                    cut = data.find(b"\n") + 1 or len(data)
                    self.queue.append(data[:cut])
                    self.unsplit = data[cut:]
                else:
                    self.queue.extend(LINE.findall(data))
            self.lineno += 1
            yield self.queue.popleft()

    def lines(self) -> Iterator[str]:
        """Decoded lines (for csv.reader); keeps their bytes in ``raw``, flags bad bytes."""
        for raw in self.raw_lines():
            self.raw.append(raw)
            try:
                yield raw.decode(self.encoding)
            except UnicodeDecodeError:
                self.bad = True
                yield raw.decode(self.encoding, "surrogateescape")
