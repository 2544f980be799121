"""The SQL recsync runs in a PostgreSQL database it syncs: names and the setup script.

Everything recsync adds to a user database for a synced table ``<schema>.<t>`` (trigger
tracking) is named here:

* the table ``<schema>.recsync_changelog_<t>`` (seq, xid, op, key, origin, changed_at)
  with an index on (xid, seq);
* the function ``<schema>.recsync_<t>_capture()`` and the row trigger
  ``recsync_<t>_capture`` (AFTER INSERT, UPDATE, DELETE): one log row per changed key; an
  update that changes the key logs a delete of the old key;
* the function ``<schema>.recsync_<t>_truncate()`` and the statement trigger
  ``recsync_<t>_truncate`` (BEFORE TRUNCATE): a delete row for every key in the table;
* the function ``<schema>.recsync_<t>_notify()`` and the statement trigger
  ``recsync_<t>_notify`` (AFTER each of those): ``pg_notify`` on the channel
  ``recsync_<hash>`` so a listening connector wakes at once.

Each log row carries ``pg_current_xact_id()`` (the writing transaction) and the setting
``recsync.origin`` (set by recsync's own write transactions, so a pipeline can skip its
own echoes). The functions are SECURITY DEFINER (owned by whoever ran the script), so the
application's roles need no grant on the log table.
"""

from __future__ import annotations

import hashlib
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
    def trigger_names(self) -> tuple[str, str, str]:
        return (self._ours("capture"), self._ours("truncate"), self._ours("notify"))

    def function(self, suffix: str) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self._ours(suffix))}"

    @property
    def channel(self) -> str:
        digest = hashlib.blake2b(f"{self.schema}.{self.table}".encode(), digest_size=8)
        return f"recsync_{digest.hexdigest()}"


def setup_sql(names: TableNames, key: str) -> str:
    """The script that installs trigger tracking (idempotent; a DBA may run it by hand)."""
    t, log, k = names.qualified, names.log, quote_ident(key)
    capture, truncate, notify = names.trigger_names
    return f"""\
BEGIN;
CREATE TABLE IF NOT EXISTS {log} (
    seq bigserial PRIMARY KEY,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    op text NOT NULL,
    key text,
    origin text DEFAULT current_setting('recsync.origin', true),
    changed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS {quote_ident(names.log_name + "_xid")} ON {log} (xid, seq);
CREATE OR REPLACE FUNCTION {names.function("capture")}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $recsync$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO {log} (op, key) VALUES ('delete', OLD.{k}::text);
        RETURN OLD;
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.{k} IS DISTINCT FROM NEW.{k} THEN
        INSERT INTO {log} (op, key) VALUES ('delete', OLD.{k}::text);
    END IF;
    INSERT INTO {log} (op, key) VALUES ('upsert', NEW.{k}::text);
    RETURN NEW;
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
    PERFORM pg_notify({quote_literal(names.channel)}, '');
    RETURN NULL;
END
$recsync$;
DROP TRIGGER IF EXISTS {quote_ident(capture)} ON {t};
CREATE TRIGGER {quote_ident(capture)} AFTER INSERT OR UPDATE OR DELETE ON {t}
    FOR EACH ROW EXECUTE FUNCTION {names.function("capture")}();
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
    drops = [f"DROP TRIGGER IF EXISTS {quote_ident(n)} ON {t};" for n in names.trigger_names]
    funcs = [f"DROP FUNCTION IF EXISTS {names.function(s)}();"
             for s in ("capture", "truncate", "notify")]
    return "\n".join([*drops, *funcs, f"DROP TABLE IF EXISTS {names.log};"]) + "\n"


# what the reader checks on every poll: the three triggers and the log table are there
CHECK_SQL = """
SELECT to_regclass(%(log)s) IS NOT NULL,
       (SELECT count(*) FROM pg_trigger
         WHERE tgrelid = to_regclass(%(table)s) AND tgname = ANY(%(triggers)s)
           AND tgenabled <> 'D')
"""
