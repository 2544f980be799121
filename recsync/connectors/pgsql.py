"""The SQL recsync runs in a PostgreSQL database it syncs: names and the setup script.

Everything recsync adds to a user database for a synced table ``<schema>.<t>`` (trigger
tracking) is named here:

* the table ``<schema>.recsync_changelog_<t>`` (seq, xid, op, key, origin, changed_at)
  whose primary key (xid, seq) is the order it is read in (its only index: a log written
  by earlier versions also has one on seq alone, measured: a second index made 100,000
  logged writes cost 7 MB more WAL and about a tenth more server time);
* the function ``<schema>.recsync_<t>_capture()`` and three statement triggers
  ``recsync_<t>_capture_ins``, ``_upd``, ``_del`` (AFTER INSERT, UPDATE, DELETE, with
  transition tables): one log row per changed key, written by one ``INSERT ... SELECT``
  per statement; an update that changes a key logs a delete of the old key;
* the function ``<schema>.recsync_<t>_truncate()`` and the statement trigger
  ``recsync_<t>_truncate`` (BEFORE TRUNCATE): a delete row for every key in the table;
* the function ``<schema>.recsync_<t>_notify()`` and the statement trigger
  ``recsync_<t>_notify`` (AFTER each of those): ``pg_notify`` on the channel
  ``recsync_<hash>`` so a listening connector wakes at once.

Each log row carries ``pg_current_xact_id()`` (the writing transaction) and the setting
``recsync.origin`` (set by recsync's own write transactions, so a pipeline can skip its
own echoes; the NOTIFY carries it too, so a pipeline is not woken by its own writes). The
functions are SECURITY DEFINER (owned by whoever ran the script), so the
application's roles need no grant on the log table.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from recsync.sqlident import quote_ident


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def split_table(table: str) -> tuple[str, str]:
    """``schema.table`` (quotes allowed) -> (schema, table); no schema means ``public``."""
    parts: list[str] = []
    current, quoted, i = "", False, 0
    while i < len(table):
        ch = table[i]
        if ch == '"':
            if quoted and table[i + 1 : i + 2] == '"':
                current += '"'
                i += 1
            else:
                quoted = not quoted
        elif ch == "." and not quoted:
            parts.append(current)
            current = ""
        else:
            current += ch
        i += 1
    parts.append(current)
    if len(parts) == 1:
        return "public", parts[0]
    if len(parts) == 2 and all(parts):
        return parts[0], parts[1]
    raise ValueError(f"{table!r} is not a table name or schema.table")


# a table's columns, in order (none when there is no such table)
COLUMNS_SQL = ("SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) "
               "AND attnum > 0 AND NOT attisdropped ORDER BY attnum")


def resolve_key(columns: Sequence[str], key: str) -> str | None:
    """The column ``key`` names: itself, else the one column equal to it ignoring case
    (``ID`` for ``id``); None when there is none, or several ("Id" and "ID" for "id")."""
    if key in columns:
        return key
    folded = [c for c in columns if c.lower() == key.lower()]
    return folded[0] if len(folded) == 1 else None


@dataclass(frozen=True)
class TableNames:
    """The quoted names of a synced table and of what recsync adds next to it."""

    schema: str
    table: str

    @property
    def qualified(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.table)}"

    def _ours(self, suffix: str) -> str:
        # identifiers are cut at 63 bytes: a long table name gets a hash instead of a tail
        name = f"recsync_{self.table}_{suffix}"
        if len(name.encode()) > 63:
            digest = hashlib.blake2b(self.table.encode(), digest_size=4).hexdigest()
            name = f"recsync_{self.table.encode()[:30].decode(errors='ignore')}_{digest}_{suffix}"
        return name

    @property
    def log_name(self) -> str:
        name = f"recsync_changelog_{self.table}"
        if len(name.encode()) > 63:
            name = self._ours("changelog")
        return name

    @property
    def log(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.log_name)}"

    @property
    def trigger_names(self) -> tuple[str, ...]:
        return (self._ours("capture_ins"), self._ours("capture_upd"), self._ours("capture_del"),
                self._ours("truncate"), self._ours("notify"))

    @property
    def row_trigger_name(self) -> str:
        """The row-level capture trigger of earlier versions (set-up replaces it)."""
        return self._ours("capture")

    def function(self, suffix: str) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self._ours(suffix))}"

    @property
    def channel(self) -> str:
        digest = hashlib.blake2b(f"{self.schema}.{self.table}".encode(), digest_size=8)
        return f"recsync_{digest.hexdigest()}"


def setup_sql(names: TableNames, key: str) -> str:
    """The script that installs trigger tracking (idempotent; a DBA may run it by hand).

    Capture is statement-level with transition tables: a 1000-row batch costs one
    ``INSERT ... SELECT`` into the log instead of 1000 PL/pgSQL calls each running an
    INSERT (measured: a 100,000-row COPY + upsert in batches of 1000 took 1.46 s of server
    CPU with row triggers, 0.84 s with these; 0.55 s with no capture at all)."""
    t, log, k = names.qualified, names.log, quote_ident(key)
    ins, upd, dele, truncate, notify = names.trigger_names
    capture = names.function("capture")
    # a key column the table lacks would make every later write to it fail in the triggers:
    # the script stops here instead, having installed nothing
    check = quote_literal(f"table {names.schema}.{names.table} has no column {key}")
    # triggers on a partitioned table miss writes made straight into a partition
    partitioned = quote_literal(
        f"table {names.schema}.{names.table} is partitioned: a write made straight into a "
        "partition would not be logged; use tracking = column for it")
    return f"""\
BEGIN;
DO $recsync$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = {quote_literal(t)}::regclass
                   AND attname = {quote_literal(key)} AND attnum > 0 AND NOT attisdropped) THEN
        RAISE EXCEPTION USING MESSAGE = {check};
    END IF;
    IF (SELECT relkind FROM pg_class WHERE oid = {quote_literal(t)}::regclass) = 'p' THEN
        RAISE EXCEPTION USING MESSAGE = {partitioned};
    END IF;
END
$recsync$;
CREATE TABLE IF NOT EXISTS {log} (
    seq bigserial,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    op text NOT NULL,
    key text,
    origin text DEFAULT current_setting('recsync.origin', true),
    changed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (xid, seq)
);
DROP TRIGGER IF EXISTS {quote_ident(names.row_trigger_name)} ON {t};
CREATE OR REPLACE FUNCTION {capture}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $recsync$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO {log} (op, key) SELECT 'upsert', {k}::text FROM recsync_new;
    ELSIF TG_OP = 'UPDATE' THEN
        -- keys an update moved away from: deleted
        INSERT INTO {log} (op, key) SELECT 'delete', gone.k FROM (
            SELECT {k}::text AS k FROM recsync_old
            EXCEPT SELECT {k}::text FROM recsync_new) AS gone;
        INSERT INTO {log} (op, key) SELECT 'upsert', {k}::text FROM recsync_new;
    ELSE
        INSERT INTO {log} (op, key) SELECT 'delete', {k}::text FROM recsync_old;
    END IF;
    RETURN NULL;
END
$recsync$;
CREATE OR REPLACE FUNCTION {names.function("truncate")}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $recsync$
BEGIN
    INSERT INTO {log} (op, key) SELECT 'delete', {k}::text FROM {t};
    RETURN NULL;
END
$recsync$;
CREATE OR REPLACE FUNCTION {names.function("notify")}() RETURNS trigger
LANGUAGE plpgsql AS $recsync$
BEGIN
    -- the payload is the writer's origin: a pipeline ignores the wake-ups of its own writes
    PERFORM pg_notify({quote_literal(names.channel)},
                      coalesce(current_setting('recsync.origin', true), ''));
    RETURN NULL;
END
$recsync$;
DROP TRIGGER IF EXISTS {quote_ident(ins)} ON {t};
CREATE TRIGGER {quote_ident(ins)} AFTER INSERT ON {t} REFERENCING NEW TABLE AS recsync_new
    FOR EACH STATEMENT EXECUTE FUNCTION {capture}();
DROP TRIGGER IF EXISTS {quote_ident(upd)} ON {t};
CREATE TRIGGER {quote_ident(upd)} AFTER UPDATE ON {t}
    REFERENCING OLD TABLE AS recsync_old NEW TABLE AS recsync_new
    FOR EACH STATEMENT EXECUTE FUNCTION {capture}();
DROP TRIGGER IF EXISTS {quote_ident(dele)} ON {t};
CREATE TRIGGER {quote_ident(dele)} AFTER DELETE ON {t} REFERENCING OLD TABLE AS recsync_old
    FOR EACH STATEMENT EXECUTE FUNCTION {capture}();
DROP TRIGGER IF EXISTS {quote_ident(truncate)} ON {t};
CREATE TRIGGER {quote_ident(truncate)} BEFORE TRUNCATE ON {t}
    FOR EACH STATEMENT EXECUTE FUNCTION {names.function("truncate")}();
DROP TRIGGER IF EXISTS {quote_ident(notify)} ON {t};
CREATE TRIGGER {quote_ident(notify)} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {t}
    FOR EACH STATEMENT EXECUTE FUNCTION {names.function("notify")}();
COMMIT;
"""


def uninstall_sql(names: TableNames) -> str:
    """What removes everything :func:`setup_sql` added."""
    t = names.qualified
    drops = [f"DROP TRIGGER IF EXISTS {quote_ident(n)} ON {t};"
             for n in (*names.trigger_names, names.row_trigger_name)]
    funcs = [f"DROP FUNCTION IF EXISTS {names.function(s)}();"
             for s in ("capture", "truncate", "notify")]
    return "\n".join([*drops, *funcs, f"DROP TABLE IF EXISTS {names.log};"]) + "\n"


# what the reader checks on every poll: the five triggers and the log table are there;
# and which ones they are (their oids: the capture a cursor was read under; installing
# again, by recsync or a DBA, or re-creating the table makes new ones)
CHECK_SQL = """
SELECT to_regclass(%(log)s) IS NOT NULL,
       (SELECT count(*) FROM pg_trigger
         WHERE tgrelid = to_regclass(%(table)s) AND tgname = ANY(%(triggers)s)
           AND tgenabled <> 'D'),
       (SELECT to_regclass(%(log)s)::oid::text || ':'
               || coalesce(string_agg(oid::text, ',' ORDER BY tgname), '')
          FROM pg_trigger
         WHERE tgrelid = to_regclass(%(table)s) AND tgname = ANY(%(triggers)s))
"""
