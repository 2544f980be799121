"""Suite-wide set-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bytecode import compile_package


def pytest_configure(config: pytest.Config) -> None:
    compile_package(Path(__file__).resolve().parent.parent / "recsync")
