"""Byte-compile recsync before the suite runs, as installing the package does.

The development machines set PYTHONDONTWRITEBYTECODE, so without this every `recsyncd`
and `recsync` the tests start compiled each module it imports again: for one `recsyncd
--once` between two SQLite files, 589M of its 989M instructions (callgrind). The files are
checked-hash .pyc (the import reads the source and compares its hash), so an edited source is
never run from stale bytecode.
"""

from __future__ import annotations

import importlib.util
import py_compile
from pathlib import Path

CHECKED_HASH = (3).to_bytes(4, "little")  # PEP 552 flags: hash-based, check the source


def _current(source: bytes, pyc: Path) -> bool:
    try:
        with pyc.open("rb") as f:
            head = f.read(16)
    except OSError:
        return False
    return (head[:4] == importlib.util.MAGIC_NUMBER and head[4:8] == CHECKED_HASH
            and head[8:] == importlib.util.source_hash(source))


def compile_package(folder: Path) -> None:
    """Write a checked-hash .pyc for every module under ``folder`` lacking a current one."""
    for path in sorted(folder.rglob("*.py")):
        pyc = Path(importlib.util.cache_from_source(str(path)))
        if not _current(path.read_bytes(), pyc):
            py_compile.compile(str(path), cfile=str(pyc), quiet=1,
                               invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
