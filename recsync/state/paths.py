"""State file names: one per pipeline, never shared, and the old names carried over.

The old name was ``customer__pipeline.sqlite``, so customer ``x`` pipeline ``y__z`` and
customer ``x__y`` pipeline ``z`` shared one file. Now the name is ``C__N.sqlite`` where
``C`` never contains ``__`` nor ends in ``_``: a customer name that would is written with
every ``_`` escaped (``+5f``), so the first ``__`` always ends the customer. Characters
outside ``A-Z a-z 0-9 . - _`` (which the configuration does not allow) are escaped as
``+`` and two hex digits per UTF-8 byte, so no two pipelines ever share a name. For every
customer name without ``__`` and not ending in ``_`` the name is the old one, so the
files of nearly every installation keep their names.
"""

from __future__ import annotations

import os
import re
import sqlite3
import string
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path

SUFFIX = ".sqlite"
_SAFE = frozenset(string.ascii_letters + string.digits + ".-")


def _escape(text: str, underscore: bool) -> str:
    out = []
    for ch in text:
        if ch in _SAFE or (ch == "_" and underscore):
            out.append(ch)
        else:
            out.extend(f"+{b:02x}" for b in ch.encode())
    return "".join(out)


def state_file_name(pipeline_id: str) -> str:
    """The state file name of ``customer/pipeline`` (unambiguous, see the module)."""
    customer, _, name = pipeline_id.partition("/")
    plain = "__" not in customer and not customer.endswith("_")
    return f"{_escape(customer, plain)}__{_escape(name, True)}{SUFFIX}"


def legacy_state_file_name(pipeline_id: str) -> str:
    """The name before the unambiguous one (shared by some pairs of pipelines)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", pipeline_id.replace("/", "__")) + SUFFIX


def migrate_state_files(state_dir: Path, pipeline_ids: Iterable[str]) -> list[str]:
    """Rename the old-named state files of ``pipeline_ids`` to their new names.

    An old file is renamed when exactly one configured pipeline can have used it. When
    several could (it was shared), it is left where it is: a pipeline whose new name is
    that file keeps it, the others start with a new state file (a full pass: creates and
    updates are upserts by key). Returns what was done, one sentence each, to log.
    """
    ids = sorted(set(pipeline_ids))
    owners = {state_file_name(pid): pid for pid in ids}
    claims: dict[str, list[str]] = {}
    for pid in ids:
        old = legacy_state_file_name(pid)
        if old != state_file_name(pid):
            claims.setdefault(old, []).append(pid)
    notes = []
    for old, pids in sorted(claims.items()):
        src = state_dir / old
        if not src.exists():
            continue
        keeper = owners.get(old)
        if keeper is not None or len(pids) > 1:
            users = ", ".join(sorted({*pids, *([keeper] if keeper else [])}))
            fresh = ", ".join(p for p in pids if p != keeper)
            notes.append(
                f"state file {src} was shared by pipelines {users} under the old naming; "
                + (f"{keeper} keeps it; " if keeper else "it is left in place; ")
                + f"{fresh} start(s) with a new state file (a full pass)")
            continue
        dst = state_dir / state_file_name(pids[0])
        if dst.exists():
            notes.append(f"state files {src} (old name) and {dst} both exist for pipeline "
                         f"{pids[0]}; {dst.name} is used, {src.name} is left in place")
            continue
        _move(src, dst)
        notes.append(f"state file {src} renamed to {dst.name} (pipeline {pids[0]})")
    return notes


def _move(src: Path, dst: Path) -> None:
    """Rename a WAL database: fold its WAL into it first, then move what is left."""
    with closing(sqlite3.connect(src)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for extra in ("-wal", "-shm"):
        side = src.with_name(src.name + extra)
        if side.exists():
            os.rename(side, dst.with_name(dst.name + extra))
    os.rename(src, dst)
