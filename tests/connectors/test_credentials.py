"""Connector secrets: config value, then environment variable, then systemd credential."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsync.connectors.credentials import resolve_secret


def test_config_value_then_environment_then_credential_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "SF_PASSWORD").write_text("from-file\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    monkeypatch.delenv("SF_PASSWORD", raising=False)
    assert resolve_secret("inline", "SF_PASSWORD", "SF_PASSWORD") == "inline"
    assert resolve_secret("", "SF_PASSWORD", "SF_PASSWORD") == "from-file"
    monkeypatch.setenv("SF_PASSWORD", "from-env")
    assert resolve_secret("", "SF_PASSWORD", "SF_PASSWORD") == "from-env"
    assert resolve_secret("", "", "missing") == ""
