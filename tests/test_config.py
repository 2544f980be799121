"""Configuration loading: merging, connector options, and the error messages users see."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Literal

import pytest

from recsync.config import (
    RULES_FILE,
    SETTINGS_FILE,
    AppConfig,
    RateLimitSettings,
    Settings,
    load_config,
    load_rules,
    load_rules_text,
    load_settings_text,
    settings_with_overrides,
)
from recsync.connectors.base import ConnectorConfig
from recsync.errors import ConfigError
from recsync.rules import RuleSet

ROOT = Path(__file__).resolve().parent.parent


class SqliteTestConfig(ConnectorConfig, frozen=True, forbid_unknown_fields=True, kw_only=True):
    path: str
    table: str = "users"
    tracking: Literal["triggers", "column"] = "triggers"


class FileTestConfig(ConnectorConfig, frozen=True, forbid_unknown_fields=True, kw_only=True):
    path: str


class SqliteTest:
    Config = SqliteTestConfig


class FileTest:
    Config = FileTestConfig


def lookup(name: str) -> type[Any]:
    if name == "sqlite":
        return SqliteTest
    if name == "file":
        return FileTest
    raise ConfigError(
        f"Unknown connector {name!r}; registered connectors: file, sqlite. Did you mean 'sqlite'?"
    )


RULES = """\
[contacts]
a_to_b = ["create", "update", "delete"]
b_to_a = ["create", "update"]
conflict = "last_writer_wins"

[contacts.mappings]
record_id = "record_id"
full_name = "name"
email_address = "email"
status = "status"

[contacts.filters]
status = { in = ["active", "pending"] }
"""

SETTINGS = """\
[defaults]
batch_size = 1000
flush_interval = 1.0
poll_interval = 2.0
max_attempts = 8
[defaults.rate_limit]
max_requests = 100
window_seconds = 60
[defaults.circuit_breaker]
failure_threshold = 5
reset_timeout = 30.0

[customers.demo]
[customers.demo.pipelines.contacts]
rules = "contacts"
a = { connector = "sqlite", path = "data/demo.sqlite", table = "users", key = "record_id" }
b = { connector = "file", path = "data/contacts.csv", key = "record_id" }
"""


def write(folder: Path, settings: str = SETTINGS, rules: str = RULES) -> Path:
    (folder / SETTINGS_FILE).write_text(settings)
    (folder / RULES_FILE).write_text(rules)
    return folder


def load(settings: str = SETTINGS, rules: str = RULES) -> AppConfig:
    return load_settings_text(
        textwrap.dedent(settings),
        load_rules_text(rules),
        base_dir="/srv/recsync",
        connector_lookup=lookup,
    )


def settings_error(settings: str) -> str:
    with pytest.raises(ConfigError) as err:
        load(settings)
    return str(err.value)


def rules_error(rules: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_rules_text(rules)
    return str(err.value)


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


# --------------------------------------------------------------------------- happy path


def test_demo_config_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path), connector_lookup=lookup)
    assert list(config.pipelines) == ["demo/contacts"]
    pipe = config.pipelines["demo/contacts"]
    assert (pipe.customer, pipe.name, pipe.rules, pipe.id) == (
        "demo",
        "contacts",
        "contacts",
        "demo/contacts",
    )
    assert pipe.a.connector == "sqlite"
    assert pipe.a.options == SqliteTestConfig(
        key="record_id", path="data/demo.sqlite", table="users"
    )
    assert pipe.b.options == FileTestConfig(key="record_id", path="data/contacts.csv")
    assert pipe.a.key == pipe.b.key == "record_id"
    assert pipe.base_dir == str(tmp_path.resolve())
    assert pipe.settings == Settings()
    assert config.defaults == Settings()
    rules = config.rules["contacts"]
    assert rules.name == "contacts"
    assert rules.mappings["full_name"] == "name"
    assert rules.b_to_a == ["create", "update"]


def test_settings_defaults() -> None:
    s = Settings()
    assert (s.batch_size, s.page_size, s.flush_interval, s.poll_interval) == (1000, 1000, 1.0, 2.0)
    assert (s.max_attempts, s.retry_base_delay, s.retry_max_delay) == (8, 1.0, 300.0)
    assert (s.mass_delete_threshold, s.mass_delete_min, s.reconcile_interval) == (0.5, 10, 300.0)
    assert s.rate_limit == RateLimitSettings(max_requests=100, window_seconds=60.0)
    assert (s.circuit_breaker.failure_threshold, s.circuit_breaker.reset_timeout) == (5, 30.0)


def test_relative_config_dir_gives_absolute_base_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf").mkdir()
    write(tmp_path / "conf")
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("conf"), connector_lookup=lookup)
    base = config.pipelines["demo/contacts"].base_dir
    assert Path(base).is_absolute()
    assert base == str((tmp_path / "conf").resolve())


def test_overrides_merge_defaults_customer_pipeline() -> None:
    config = load(
        SETTINGS
        + """
[customers.big]
batch_size = 500
poll_interval = 5
[customers.big.rate_limit]
max_requests = 300
[customers.big.pipelines.contacts]
rules = "contacts"
page_size = 50
rate_limit = { window_seconds = 10 }
circuit_breaker = { reset_timeout = 1.5 }
a = { connector = "sqlite", path = "big.sqlite", key = "id" }
b = { connector = "file", path = "big.csv", key = "id" }
[customers.big.pipelines.other]
rules = "contacts"
a = { connector = "sqlite", path = "big.sqlite", key = "id", tracking = "column" }
b = { connector = "file", path = "other.jsonl", key = "id" }
"""
    )
    contacts = config.pipelines["big/contacts"].settings
    assert contacts.batch_size == 500  # customer
    assert contacts.poll_interval == 5.0  # customer, int accepted as float
    assert contacts.page_size == 50  # pipeline
    assert contacts.flush_interval == 1.0  # defaults
    # nested tables merge key by key across all three levels
    assert contacts.rate_limit == RateLimitSettings(max_requests=300, window_seconds=10.0)
    assert contacts.circuit_breaker.failure_threshold == 5
    assert contacts.circuit_breaker.reset_timeout == 1.5
    other = config.pipelines["big/other"].settings
    assert other.page_size == 1000
    assert other.rate_limit == RateLimitSettings(max_requests=300, window_seconds=60.0)
    assert config.pipelines["big/other"].a.options.tracking == "column"
    assert config.customers["big"].batch_size == 500
    assert config.pipelines["demo/contacts"].settings.batch_size == 1000


def test_defaults_apply_to_every_customer() -> None:
    config = load(SETTINGS.replace("batch_size = 1000", "batch_size = 42"))
    assert config.defaults.batch_size == 42
    assert config.pipelines["demo/contacts"].settings.batch_size == 42


def test_customer_without_pipelines_and_empty_files() -> None:
    config = load("[customers.idle]\nbatch_size = 3\n")
    assert config.pipelines == {}
    assert config.customers["idle"].batch_size == 3
    empty = load("", rules="")
    assert (empty.pipelines, empty.rules, empty.defaults) == ({}, {}, Settings())


def test_settings_with_overrides() -> None:
    base = Settings(batch_size=10)
    new = settings_with_overrides(base, page_size=5, rate_limit={"max_requests": 7})
    assert (new.batch_size, new.page_size) == (10, 5)
    assert new.rate_limit == RateLimitSettings(max_requests=7, window_seconds=60.0)
    replaced = settings_with_overrides(base, rate_limit=RateLimitSettings(max_requests=2))
    assert replaced.rate_limit == RateLimitSettings(max_requests=2)
    assert base.page_size == 1000  # the original is untouched
    with pytest.raises(
        ConfigError, match=r"^invalid settings override: batch_size: must be at least 1, got 0$"
    ):
        settings_with_overrides(base, batch_size=0)
    with pytest.raises(
        ConfigError, match=r"unknown key 'rate_limit\.max_request'; did you mean 'max_requests'\?"
    ):
        settings_with_overrides(base, rate_limit={"max_request": 1})


def test_load_rules_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(RULES)
    rules = load_rules(path)
    assert isinstance(rules["contacts"], RuleSet)
    assert rules["contacts"].filters["status"].in_ == ["active", "pending"]


# --------------------------------------------------------------------------- file errors


def test_missing_file(tmp_path: Path) -> None:
    (tmp_path / RULES_FILE).write_text(RULES)
    with pytest.raises(ConfigError, match=r"^customer_settings\.toml: file not found in "):
        load_config(tmp_path, connector_lookup=lookup)
    with pytest.raises(ConfigError, match=r"^rules\.toml: file not found in "):
        load_config(tmp_path / "nowhere", connector_lookup=lookup)


def test_settings_syntax_error_names_file_and_line() -> None:
    text = SETTINGS.replace("max_attempts = 8", "max_attempts = ")
    assert settings_error(text) == (
        f"customer_settings.toml, line {line_of(text, 'max_attempts')}: invalid value (column 16)"
    )


def test_rules_syntax_error_names_file_and_line() -> None:
    text = RULES.replace('status = "status"', 'status = "status')
    assert rules_error(text).startswith(f"rules.toml, line {line_of(text, 'status = ')}: ")


# --------------------------------------------------------------------------- settings errors


def test_unknown_connector_option_suggests_the_right_key() -> None:
    text = SETTINGS.replace('table = "users"', 'tabel = "users"')
    assert settings_error(text) == (
        f"customer_settings.toml, line {line_of(text, 'tabel')}: "
        "unknown key 'customers.demo.pipelines.contacts.a.tabel'; did you mean 'table'?"
    )


@pytest.mark.parametrize(
    ("old", "new", "key", "suggestion"),
    [
        ("[defaults]", "[default]", "default", "defaults"),
        ("flush_interval = 1.0", "flush_intervall = 1.0", "defaults.flush_intervall", None),
        ("max_requests = 100", "max_request = 100", "defaults.rate_limit.max_request", None),
        ("[customers.demo]", "[customers.demo]\npipeline = {}", "customers.demo.pipeline", None),
        ('rules = "contacts"', 'rules = "contacts"\nbatch_sise = 3', None, "batch_size"),
    ],
)
def test_unknown_keys_name_path_line_and_suggestion(
    old: str, new: str, key: str | None, suggestion: str | None
) -> None:
    text = SETTINGS.replace(old, new)
    msg = settings_error(text)
    assert msg.startswith("customer_settings.toml, line ")
    assert "unknown key '" in msg and "; did you mean '" in msg
    if key is not None:
        assert f"unknown key '{key}'" in msg
        assert msg.startswith(f"customer_settings.toml, line {line_of(text, key.split('.')[-1])}:")
    if suggestion is not None:
        assert msg.endswith(f"did you mean '{suggestion}'?")


def test_unknown_key_in_pipeline_table_suggests_pipeline_keys() -> None:
    text = SETTINGS.replace('rules = "contacts"', 'rule = "contacts"')
    assert "unknown key 'customers.demo.pipelines.contacts.rule'; did you mean 'rules'?" in (
        settings_error(text)
    )


A_TABLE = "customers.demo.pipelines.contacts.a.table"
RULES_KEY = "customers.demo.pipelines.contacts.rules"


@pytest.mark.parametrize(
    ("old", "new", "key", "expected"),
    [
        (
            "batch_size = 1000",
            'batch_size = "200"',
            "defaults.batch_size",
            "an integer, got a string",
        ),
        ("batch_size = 1000", "batch_size = 2.5", "defaults.batch_size", "an integer, got a float"),
        (
            "batch_size = 1000",
            "batch_size = true",
            "defaults.batch_size",
            "an integer, got a boolean",
        ),
        (
            "poll_interval = 2.0",
            'poll_interval = "2s"',
            "defaults.poll_interval",
            "a number, got a string",
        ),
        (
            "window_seconds = 60",
            "window_seconds = [60]",
            "defaults.rate_limit.window_seconds",
            "a number, got an array",
        ),
        ('table = "users"', "table = 3", A_TABLE, "a string, got an integer"),
        ('rules = "contacts"', "rules = 3", RULES_KEY, "a string, got an integer"),
        (
            "[customers.demo]",
            "[customers.demo]\nrate_limit = 5",
            "customers.demo.rate_limit",
            "a table, got an integer",
        ),
    ],
)
def test_wrong_types_are_named_in_toml_terms(old: str, new: str, key: str, expected: str) -> None:
    text = SETTINGS.replace(old, new, 1)
    line = line_of(text, new.splitlines()[-1])
    assert (
        settings_error(text) == f"customer_settings.toml, line {line}: {key}: expected {expected}"
    )


def test_missing_required_keys() -> None:
    no_rules = SETTINGS.replace('rules = "contacts"\n', "")
    assert settings_error(no_rules) == (
        f"customer_settings.toml, line {line_of(no_rules, 'pipelines.contacts')}: "
        "customers.demo.pipelines.contacts is missing required key 'rules'"
    )
    no_b = "\n".join(line for line in SETTINGS.splitlines() if not line.startswith("b ="))
    assert settings_error(no_b).endswith(
        "customers.demo.pipelines.contacts is missing required key 'b'"
    )
    no_connector = SETTINGS.replace('b = { connector = "file", ', "b = { ")
    assert settings_error(no_connector) == (
        f"customer_settings.toml, line {line_of(no_connector, 'b = ')}: "
        "customers.demo.pipelines.contacts.b is missing required key 'connector'"
    )
    no_key = SETTINGS.replace('path = "data/contacts.csv", key = "record_id"', 'path = "x.csv"')
    assert settings_error(no_key).endswith(
        "customers.demo.pipelines.contacts.b is missing required key 'key'"
    )


def test_unknown_rule_set_suggests_the_close_one() -> None:
    text = SETTINGS.replace('rules = "contacts"', 'rules = "contcts"')
    assert settings_error(text) == (
        f"customer_settings.toml, line {line_of(text, 'contcts')}: "
        "customers.demo.pipelines.contacts.rules names rule set 'contcts', "
        "which rules.toml does not define; did you mean 'contacts'?"
    )


def test_unknown_connector_is_reworded_with_the_key_path() -> None:
    text = SETTINGS.replace('connector = "sqlite"', 'connector = "sqllite"')
    assert settings_error(text) == (
        f"customer_settings.toml, line {line_of(text, 'sqllite')}: "
        "customers.demo.pipelines.contacts.a.connector: unknown connector 'sqllite'; "
        "registered connectors: file, sqlite; did you mean 'sqlite'?"
    )


def test_invalid_connector_option_value_lists_choices() -> None:
    text = SETTINGS.replace('table = "users"', 'table = "users", tracking = "trigger"')
    assert settings_error(text).endswith(
        "customers.demo.pipelines.contacts.a.tracking: invalid value 'trigger'; "
        "expected one of 'triggers', 'column'; did you mean 'triggers'?"
    )


AT_LEAST_1 = "must be at least 1"
ABOVE_0 = "must be greater than 0"


@pytest.mark.parametrize(
    ("old", "new", "key", "expected"),
    [
        ("batch_size = 1000", "batch_size = 0", "defaults.batch_size", f"{AT_LEAST_1}, got 0"),
        ("max_attempts = 8", "max_attempts = -1", "defaults.max_attempts", f"{AT_LEAST_1}, got -1"),
        (
            "flush_interval = 1.0",
            "flush_interval = 0",
            "defaults.flush_interval",
            f"{ABOVE_0}, got 0",
        ),
        (
            "poll_interval = 2.0",
            "poll_interval = -2.0",
            "defaults.poll_interval",
            f"{ABOVE_0}, got -2.0",
        ),
        (
            "reset_timeout = 30.0",
            "reset_timeout = 0.0",
            "defaults.circuit_breaker.reset_timeout",
            f"{ABOVE_0}, got 0.0",
        ),
        (
            "[customers.demo]",
            "[customers.demo]\npage_size = 0",
            "customers.demo.page_size",
            f"{AT_LEAST_1}, got 0",
        ),
        (
            "[customers.demo]",
            "[customers.demo]\nmass_delete_threshold = 1.5",
            "customers.demo.mass_delete_threshold",
            "must be at most 1, got 1.5",
        ),
        (
            'rules = "contacts"',
            'rules = "contacts"\nreconcile_interval = 0',
            "customers.demo.pipelines.contacts.reconcile_interval",
            f"{ABOVE_0}, got 0",
        ),
    ],
)
def test_value_checks(old: str, new: str, key: str, expected: str) -> None:
    text = SETTINGS.replace(old, new, 1)
    line = line_of(text, new.splitlines()[-1])
    assert settings_error(text) == f"customer_settings.toml, line {line}: {key}: {expected}"


def test_mass_delete_guard_can_be_disabled() -> None:
    config = load(
        SETTINGS.replace("[customers.demo]", "[customers.demo]\nmass_delete_threshold = 0")
    )
    assert config.pipelines["demo/contacts"].settings.mass_delete_threshold == 0.0


def test_structure_errors() -> None:
    assert settings_error("defaults = 3\n").endswith("defaults: expected a table, got an integer")
    assert settings_error("[customers.x]\npipelines = 3\n") == (
        "customer_settings.toml, line 2: customers.x.pipelines: expected a table, got an integer"
    )
    assert settings_error('[customers."a/b"]\n').startswith(
        'customer_settings.toml, line 1: customers."a/b": a customer name may only contain'
    )
    text = SETTINGS.replace('b = { connector = "file", path = "data/contacts.csv"', 'b = "file" #')
    assert settings_error(text).endswith(
        "customers.demo.pipelines.contacts.b: expected a table, got a string"
    )


def test_broken_connector_plugin_is_a_config_error() -> None:
    def broken(name: str) -> type[Any]:
        raise ImportError("No module named 'recsync.connectors.sqlite'")

    with pytest.raises(ConfigError, match=r"a\.connector: connector 'sqlite' cannot be loaded"):
        load_settings_text(SETTINGS, load_rules_text(RULES), base_dir=".", connector_lookup=broken)


# --------------------------------------------------------------------------- rules errors


@pytest.mark.parametrize(
    ("old", "new", "needle", "expected"),
    [
        (
            "status = { in",
            "statuz = { in",
            "statuz",
            "contacts.filters.statuz: 'statuz' is not a mapped side-A field; "
            "did you mean 'status'?",
        ),
        (
            "status = { in",
            "email = { in",
            "email = {",
            "contacts.filters.email: 'email' is not a mapped side-A field "
            "(it is the side-B name of 'email_address'; use side-A names)",
        ),
        (
            'status = { in = ["active", "pending"] }',
            "status = {}",
            "status = {}",
            "contacts.filters.status: a filter needs at least one of "
            "eq, ne, in, not_in, exists, regex",
        ),
        (
            "status = { in",
            "status = { inn",
            "inn",
            "unknown key 'contacts.filters.status.inn'; did you mean 'in'?",
        ),
        (
            'status = { in = ["active", "pending"] }',
            'status = { regex = "(" }',
            "regex",
            "contacts.filters.status.regex: invalid regular expression: "
            "missing ), unterminated subpattern at position 0",
        ),
        (
            '"pending"]',
            "{ a = 1 }]",
            "in = [",
            "contacts.filters.status.in[1]: expected a boolean, an integer, a number or a string, "
            "got a table",
        ),
        (
            '"update", "delete"]',
            '"upsert", "delete"]',
            "upsert",
            "contacts.a_to_b[1]: invalid value 'upsert'; "
            "expected one of 'create', 'update', 'delete'",
        ),
        (
            '"last_writer_wins"',
            '"last_writer_win"',
            "last_writer_win",
            "contacts.conflict: invalid value 'last_writer_win'; expected one of "
            "'last_writer_wins', 'a_wins', 'b_wins', 'field_owner'; "
            "did you mean 'last_writer_wins'?",
        ),
        (
            'full_name = "name"',
            "full_name = 1",
            "full_name",
            "contacts.mappings.full_name: expected a string, got an integer",
        ),
        (
            'status = "status"',
            'status = "name"',
            'status = "name"',
            "contacts.mappings.status: maps to side-B field 'name', "
            "which 'full_name' already maps to",
        ),
        (
            "[contacts.mappings]",
            "[contacts.mapping]",
            "[contacts.mapping]",
            "unknown key 'contacts.mapping'; did you mean 'mappings'?",
        ),
    ],
)
def test_rule_errors(old: str, new: str, needle: str, expected: str) -> None:
    text = RULES.replace(old, new)
    assert rules_error(text) == f"rules.toml, line {line_of(text, needle)}: {expected}"


def test_rule_transforms_and_owners_are_checked() -> None:
    text = RULES + '\n[contacts.transforms]\nemail_address = "lowr"\n'
    assert rules_error(text) == (
        f"rules.toml, line {line_of(text, 'lowr')}: contacts.transforms.email_address: invalid "
        "value 'lowr'; expected one of 'lower', 'upper', 'strip', 'title', 'digits'; "
        "did you mean 'lower'?"
    )
    text = RULES + '\n[contacts.field_owner]\nphone = "a"\n'
    assert rules_error(text).endswith(
        "contacts.field_owner.phone: 'phone' is not a mapped side-A field"
    )
    text = RULES + '\n[contacts.field_owner]\nstatus = "c"\n'
    assert rules_error(text).endswith(
        "contacts.field_owner.status: invalid value 'c'; expected one of 'a', 'b'"
    )


def test_rule_set_structure_errors() -> None:
    assert (
        rules_error("[x]\na_to_b = []\n")
        == "rules.toml, line 1: x is missing required key 'mappings'"
    )
    assert rules_error("[x]\n[x.mappings]\n") == (
        "rules.toml, line 2: x.mappings: must map at least one field"
    )
    assert rules_error("x = 3\n") == "rules.toml, line 1: x: expected a table, got an integer"
    assert rules_error('[x]\nname = "y"\nmappings = { a = "a" }\n') == (
        "rules.toml, line 2: x.name: must be 'x' (the table name) or left out"
    )


def test_rule_error_in_rules_file_is_reported_by_load_config(tmp_path: Path) -> None:
    write(tmp_path, rules=RULES.replace("status = { in", "statuz = { in"))
    with pytest.raises(ConfigError, match=r"^rules\.toml, line \d+: contacts\.filters\.statuz"):
        load_config(tmp_path, connector_lookup=lookup)


# --------------------------------------------------------------------------- repo files


def test_repository_config_files_load_with_real_connectors() -> None:
    config = load_config(ROOT)
    assert set(config.pipelines) == {"demo/contacts", "demo/prospects", "customer1/contacts",
                                     "surya/contacts"}
    c1 = config.pipelines["customer1/contacts"].settings
    assert c1.batch_size == 500
    assert c1.rate_limit == RateLimitSettings(max_requests=300, window_seconds=60.0)
    assert config.pipelines["surya/contacts"].settings == config.defaults == Settings()
    demo = config.pipelines["demo/contacts"]
    assert (demo.a.connector, demo.b.connector) == ("sqlite", "salesforce")
    assert demo.b.options.mock and demo.b.options.key == "Record_Id__c"
    assert config.pipelines["demo/prospects"].b.connector == "outreach"
    contacts = config.rules["contacts"]
    assert contacts.a_to_b == ["create", "update", "delete"]
    assert contacts.mappings == {
        "record_id": "record_id",
        "full_name": "name",
        "email_address": "email",
        "status": "status",
    }


def test_a_side_may_set_its_own_rate_limit() -> None:
    ok = SETTINGS.replace('key = "record_id" }\nb', 'key = "record_id", '
                          'rate_limit = { max_requests = 5, window_seconds = 2 } }\nb')
    config = load(ok)
    side = config.pipelines["demo/contacts"].a
    assert side.rate_limit is not None
    assert (side.rate_limit.max_requests, side.rate_limit.window_seconds) == (5, 2.0)
    assert config.pipelines["demo/contacts"].b.rate_limit is None
    bad = ok.replace("max_requests = 5", "max_requests = 0")
    assert settings_error(bad) == (
        f"customer_settings.toml, line {line_of(bad, 'max_requests = 0')}: "
        "customers.demo.pipelines.contacts.a.rate_limit.max_requests: must be at least 1, "
        "got 0"
    )
    typo = SETTINGS.replace('key = "record_id" }\nb', 'key = "record_id", rate_limt = {} }\nb')
    assert settings_error(typo).endswith(
        "unknown key 'customers.demo.pipelines.contacts.a.rate_limt'; did you mean 'rate_limit'?")


def test_a_path_may_name_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    text = SETTINGS.replace('path = "data/contacts.csv"',
                            'path = "${STATE_DIRECTORY}/data/contacts.csv"')
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/recsync")
    side = load(text).pipelines["demo/contacts"].b
    assert side.options.path == "/var/lib/recsync/data/contacts.csv"
    monkeypatch.delenv("STATE_DIRECTORY")
    assert settings_error(text) == (
        f"customer_settings.toml, line {line_of(text, 'STATE_DIRECTORY')}: "
        "customers.demo.pipelines.contacts.b.path uses ${STATE_DIRECTORY}, an environment "
        "variable that is not set")


def test_bulk_settings_are_validated_like_the_others() -> None:
    s = Settings()
    assert (s.bulk_threshold, s.bulk_batch_size) == (2000, 10000)
    assert settings_with_overrides(s, bulk_threshold=0).bulk_threshold == 0  # off
    with pytest.raises(ConfigError, match=r"^invalid settings override: bulk_threshold: must "
                       r"be at least 0, got -1$"):
        settings_with_overrides(s, bulk_threshold=-1)
    with pytest.raises(ConfigError, match=r"bulk_batch_size: must be at most 150000"):
        settings_with_overrides(s, bulk_batch_size=200000)
