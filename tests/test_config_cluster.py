"""``[cluster]``: parsed, validated, and its password never shown."""

from __future__ import annotations

import pytest

from recsync.config import ClusterConfig
from recsync.errors import ConfigError, StateUnavailable
from recsync.state.access import StateAccess
from tests.test_config import SETTINGS, load, settings_error


def test_without_a_cluster_table_the_state_is_in_files() -> None:
    assert load().cluster is None


def test_cluster_table_parsed_with_defaults() -> None:
    config = load('[cluster]\nstate = "postgresql://recsync:s3cret@db:5432/recsync"\n'
                  + SETTINGS)
    assert config.cluster == ClusterConfig(state="postgresql://recsync:s3cret@db:5432/recsync")
    assert config.cluster.lease_ttl == 15.0 and config.cluster.redis == ""
    assert config.cluster.nodes_hint == 1 and config.cluster.metrics_port == 0
    assert config.cluster.schema == "recsync"
    assert config.cluster.state_url() == "postgresql://recsync:s3cret@db:5432/recsync"
    # shown (logs, status, repr) with the password masked
    assert "s3cret" not in config.cluster.shown() and "s3cret" not in repr(config)
    assert config.cluster.shown() == "postgresql://recsync:***@db:5432/recsync"


def test_state_env_is_read_when_used(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load('[cluster]\nstate_env = "RS_STATE"\nredis = "redis://127.0.0.1:6379/0"\n'
                  'lease_ttl = 4.5\n' + SETTINGS)
    assert config.cluster is not None and config.cluster.lease_ttl == 4.5
    monkeypatch.delenv("RS_STATE", raising=False)
    with pytest.raises(ConfigError, match=r"RS_STATE.*not set"):
        config.cluster.state_url()
    monkeypatch.setenv("RS_STATE", "postgresql://x@db/y")
    assert config.cluster.state_url() == "postgresql://x@db/y"


@pytest.mark.parametrize(("table", "expected"), [
    ("lease_ttl = 3", "line 1: cluster: set one of 'state'"),
    ('state = "postgresql://a@b/c"\nstate_env = "X"', "line 2: cluster: set one of 'state' "
                                                     "(a PostgreSQL URL) or 'state_env'"),
    ('state = "mysql://u:hunter2@db/x"', "line 2: cluster.state: must be a PostgreSQL URL"),
    ('state_env = "X"\nlease_ttl = 0', "line 3: cluster.lease_ttl: must be greater than 0"),
    ('state_env = "X"\nredis = "http://u:hunter2@r"', "line 3: cluster.redis: must be a Redis"),
    ('state_env = "X"\nnodes_hint = 0', "line 3: cluster.nodes_hint: must be at least 1, got 0"),
    ('state_env = "X"\nmetrics_port = 70000',
     "line 3: cluster.metrics_port: must be at most 65535"),
    ('state_env = "X"\nleasettl = 3', "unknown key 'cluster.leasettl'; did you mean "
                                      "'lease_ttl'?"),
])
def test_bad_cluster_tables_are_named(table: str, expected: str) -> None:
    text = settings_error(f"[cluster]\n{table}\n" + SETTINGS)
    assert expected in text
    assert "hunter2" not in text


def test_the_redis_password_is_masked() -> None:
    config = load('[cluster]\nstate_env = "X"\nredis = "redis://:hunter2@r:6379/0"\n'
                  'nodes_hint = 3\nmetrics_port = 9464\n' + SETTINGS)
    assert config.cluster is not None and config.cluster.nodes_hint == 3
    assert config.cluster.metrics_port == 9464
    assert "hunter2" not in repr(config.cluster)


def test_an_unreachable_state_server_is_transient_and_masked(tmp_path: object) -> None:
    from pathlib import Path

    url = "postgresql://recsync:hunter2@127.0.0.1:1/recsync"
    access = StateAccess(Path(str(tmp_path)), ClusterConfig(state=url))
    from recsync.clock import FakeClock

    with pytest.raises(StateUnavailable) as err:
        access.open_store("c/p", FakeClock())
    assert "hunter2" not in str(err.value) and "c/p" in str(err.value)
    with pytest.raises(StateUnavailable):
        access.reader("c/p")


def test_recsync_cluster_against_an_unreachable_state_says_so_in_cli_terms(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    from pathlib import Path

    from recsync.cli import main

    folder = Path(str(tmp_path))
    (folder / "customer_settings.toml").write_text(
        '[cluster]\nstate = "postgresql://recsync:hunter2@127.0.0.1:1/recsync"\n\n'
        '[customers.c.pipelines.p]\nrules = "r"\n'
        'a = { connector = "sqlite", path = "a.sqlite", table = "t", key = "id" }\n'
        'b = { connector = "sqlite", path = "b.sqlite", table = "t", key = "id" }\n')
    (folder / "rules.toml").write_text('[r]\na_to_b = ["create"]\n[r.mappings]\nid = "id"\n')
    assert main(["cluster", "--config-dir", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "cannot read the cluster from its state database" in err
    assert "the pipeline waits" not in err and "hunter2" not in err
