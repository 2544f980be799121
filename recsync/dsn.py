"""Connection strings shown to users: the password masked (``mask_dsn``)."""

from __future__ import annotations

import re

_PASSWORD_IN_URL = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]*@", re.I)
_PASSWORD_PAIR = re.compile(r"(?P<head>\bpassword\s*=\s*)('[^']*'|\S+)", re.I)


def mask_dsn(text: str) -> str:
    """``text`` with any password of a connection URL or key=value DSN replaced."""
    text = _PASSWORD_IN_URL.sub(lambda m: m.group("head") + "***@", text)
    return _PASSWORD_PAIR.sub(lambda m: m.group("head") + "***", text)
