"""Where connector secrets come from: the config, an environment variable, or a systemd
credential file (``LoadCredential=`` puts them in ``$CREDENTIALS_DIRECTORY``)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def resolve_secret(value: str, env_name: str, file_name: str) -> str:
    """``value`` when set, else ``$env_name``, else ``$CREDENTIALS_DIRECTORY/file_name``,
    else "". Never logs anything."""
    if value:
        return value
    if env_name and os.environ.get(env_name):
        return os.environ[env_name]
    folder = os.environ.get("CREDENTIALS_DIRECTORY")
    if folder and file_name:
        with contextlib.suppress(OSError):
            return (Path(folder) / file_name).read_text("utf-8").strip()
    return ""
