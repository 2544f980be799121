"""Connection strings shown to users: the password masked (``mask_dsn``), scrubbed from
messages (``scrub``), and URLs whose password has unencoded characters made ones libpq
parses as meant (``normalize_url``).

The userinfo of a URL is everything between ``://`` and the LAST ``@`` (a password may
hold an unencoded ``/``, ``@`` or space: libpq would read part of it as the host, port or
database, and quote it back in its messages).
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

# user ":" then the password up to the last "@" of the URL (the host part after it has no
# "@" and ends at whitespace or the end)
_PASSWORD_IN_URL = re.compile(
    r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^\n]*?@(?=[^\s@]*(?:\s|$))", re.I)
# password= and sslpassword=; a quoted value may hold \' (libpq's escape); a quote never
# closed takes the rest of the line
_PASSWORD_PAIR = re.compile(
    r"(?P<head>\b\w*password\s*=\s*)('(?:[^'\\\n]|\\.)*'|'[^\n]*|\S+)", re.I)
_URL = re.compile(r"^\s*(?P<scheme>postgres(?:ql)?://)(?P<rest>.*?)\s*$", re.I | re.S)
# the characters libpq splits a password on, or stops its userinfo at
_SEPARATORS = re.compile(r"[\s/@:?#]+")
_MIN_FRAGMENT = 3  # pieces of a password shorter than this are not hunted in messages


def mask_dsn(text: str) -> str:
    """``text`` with any password of a connection URL or key=value DSN replaced."""
    return _PASSWORD_PAIR.sub(lambda m: m.group("head") + "***", mask_urls(text))


def mask_urls(text: str) -> str:
    """``text`` with the password of any URL in it (``scheme://user:password@host``)
    replaced."""
    return _PASSWORD_IN_URL.sub(lambda m: m.group("head") + "***@", text)


def _url_split(dsn: str) -> tuple[str, str | None, str] | None:
    """A PostgreSQL URL -> (scheme, its userinfo or None, the host part after it)."""
    m = _URL.match(dsn)
    if m is None:
        return None
    rest = m.group("rest")
    at = rest.rfind("@")
    if at < 0:
        return m.group("scheme"), None, rest
    return m.group("scheme"), rest[:at], rest[at + 1:]


def without_userinfo(dsn: str) -> str:
    """A URL without its user and password (other DSNs as they are)."""
    parts = _url_split(dsn)
    return dsn if parts is None else parts[0] + parts[2]


def normalize_url(dsn: str) -> str:
    """A URL whose user or password holds characters libpq would misread ('/', '@',
    spaces, ...) with those percent-encoded (a '%' is left as it is: already encoded);
    anything else as it is."""
    parts = _url_split(dsn)
    if parts is None:
        return dsn
    scheme, userinfo, host = parts
    if userinfo is None:
        return dsn
    user, colon, password = userinfo.partition(":")
    safe = "%!$&'()*+,;=-._~"
    userinfo = quote(user, safe=safe) + (colon and ":" + quote(password, safe=safe))
    return f"{scheme}{userinfo}@{host}"


def password_of(dsn: str) -> str | None:
    """The password a DSN holds (a URL's, or a key=value ``password``), or None."""
    parts = _url_split(dsn)
    if parts is not None:
        userinfo = parts[1]
        if userinfo is None or ":" not in userinfo:
            return None
        return userinfo.partition(":")[2] or None
    m = _PASSWORD_PAIR.search(dsn)
    if m is None:
        return None
    value = m.group(2)
    return (value[1:-1] if value.startswith("'") and value.endswith("'") else value) or None


def scrub(text: str, dsn: str) -> str:
    """``text`` (a driver's message) masked, and without the password of ``dsn``: the
    password itself, its percent-decoded form, and each piece of it between characters
    libpq splits on (a misparsed URL's host or database, which libpq quotes)."""
    text = mask_dsn(text)
    password = password_of(dsn)
    if not password:
        return text
    secrets = {password, unquote(password)}
    for whole in list(secrets):
        secrets.update(p for p in _SEPARATORS.split(whole) if len(p) >= _MIN_FRAGMENT)
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return text
