"""Passwords out of everything a user sees: one masker for URLs, DSNs and free text.

Whatever form a database URL takes (well formed, malformed, a libpq ``key=value`` string, a
password in the query string), the password is replaced by ``***`` before any text reaches the
user. See ``docs/contract.md#command-line``.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

MASK = "***"

# ``password=secret`` in a libpq DSN (bare or quoted) or in a query string.
_KEY_VALUE = re.compile(r"""(?i)(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&'"]+)""")
# ``scheme:[//]user:secret@host`` even when the URL is malformed: the password runs to the last
# ``@`` of the token, so a password holding ``@`` is masked whole.
_USERINFO = re.compile(r"""(?i)\b([a-z][a-z0-9+.-]*:/{0,3}[^\s:/@'"]*):([^\s'"]*)@""")
# ``user:secret@host`` or ``//user:secret@host`` with no scheme at all.
_BARE_USERINFO = re.compile(r"""(^|[\s'"(=]|//)([^\s:/@'"()=]+):([^\s'"/]*)@(?=[^\s@'"]+)""")


def url_password(url: str) -> str | None:
    """The password in a URL (userinfo or ``password=`` query parameter) or a ``key=value`` DSN.

    >>> url_password("postgresql://u:s3cret@db/market")
    's3cret'
    >>> url_password("host=db password='a b' user=u")
    'a b'
    >>> url_password("postgresql://db/market") is None
    True
    """
    match = _KEY_VALUE.search(url)
    if match:
        value = match.group(2)
        return value[1:-1].replace("\\'", "'") if value.startswith("'") else unquote(value)
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        password = None
    if password:
        return unquote(password)
    match = _USERINFO.search(url)
    return unquote(match.group(2)) if match and match.group(2) else None


def mask_url(url: str) -> str:
    """The URL (or DSN) with its password replaced by ``***``: safe to print and log.

    >>> mask_url("postgresql://trader:s3cret@db.internal:5432/market")
    'postgresql://trader:***@db.internal:5432/market'
    >>> mask_url("postgresql://db/market?password=s3cret&sslmode=require")
    'postgresql://db/market?password=***&sslmode=require'
    >>> mask_url("postgres:/u:s3cret@localhost:1/db")
    'postgres:/u:***@localhost:1/db'
    """
    try:
        parts = urlsplit(url)
        if parts.scheme and parts.netloc and parts.password is not None:
            user, _, host = parts.netloc.rpartition("@")
            url = urlunsplit(parts._replace(netloc=f"{user.split(':', 1)[0]}:{MASK}@{host}"))
        if parts.scheme and "password=" in parts.query.lower():
            query = urlencode(
                [(k, MASK if k.lower() == "password" else v) for k, v in parse_qsl(urlsplit(url).query)],
                safe="/*",
            )
            url = urlunsplit(urlsplit(url)._replace(query=query))
    except ValueError:
        pass
    return mask_text(url)


def mask_text(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Free text with every password-looking part, and every known secret, replaced by ``***``.

    ``secrets`` are passwords known to be in play (from the URLs the user gave); their raw and
    percent-encoded forms are replaced wherever they appear, e.g. in a driver's error message.

    >>> mask_text('invalid connection option "postgresql:/u:s3cret@h/db"')
    'invalid connection option "postgresql:/u:***@h/db"'
    >>> mask_text("could not translate host name 'ss@db' to address", ("p@ss",))
    "could not translate host name '***@db' to address"
    >>> mask_text("user=u password=s3cret host=db")
    'user=u password=*** host=db'
    >>> mask_text("//trader:s3cret@localhost:5432/db and trader:s3cret@localhost")
    '//trader:***@localhost:5432/db and trader:***@localhost'
    """
    text = _KEY_VALUE.sub(lambda m: m.group(1) + MASK, text)
    text = _USERINFO.sub(lambda m: f"{m.group(1)}:{MASK}@", text)
    text = _BARE_USERINFO.sub(
        lambda m: m.group(0) if MASK in m.group(3) else f"{m.group(1)}{m.group(2)}:{MASK}@", text
    )
    for secret in secrets:
        for form in {secret, unquote(secret), quote(secret, safe=""), quote(secret)}:
            if len(form) >= 2:
                text = text.replace(form, MASK)
        # A parser that splits "user:p@ss@host" at the first "@" shows the password's tail as
        # part of a host name ("ss@host"): mask each tail where it stands before an "@".
        for i in range(1, secret.count("@") + 1):
            tail = secret.split("@", i)[-1]
            if tail:
                text = text.replace(tail + "@", MASK + "@")
        text = _mask_pieces(text, secret)
    return text


# Where URL parsers cut a password they misread (libpq takes "u:ab/cd@h" for host u, port ab,
# and "u:@:cd@h" for host "", port "cd@h").
_AUTHORITY_ENDS = re.compile(r"[/?#@:]")


def _mask_pieces(text: str, secret: str) -> str:
    """Mask the pieces of a password that holds ``/``, ``?``, ``#``, ``@`` or ``:``: a parser that
    cuts the password there shows a piece on its own (as a port, a path, a host, a query).

    >>> _mask_pieces('invalid integer value "s3" for connection option "port"', "s3/cret")
    'invalid integer value "***" for connection option "port"'
    """
    for piece in _AUTHORITY_ENDS.split(secret):
        if len(piece) >= 2 and piece != secret:
            # only where the piece stands alone, so that "ab" does not mask "table"
            text = re.sub(rf"(?<![\w%]){re.escape(piece)}(?!\w)", MASK, text)
    return text


def url_passwords(url: str) -> tuple[str, ...]:
    """Every reading of the password in ``url``: :func:`url_password`'s, and the span from the
    user's ``:`` to the last ``@``, which a malformed URL's user meant and drivers cut differently.

    >>> url_passwords("postgresql://u::@/s3cret%@db/market")
    (':', ':@/s3cret%')
    """
    found = [url_password(url)]
    userinfo = _USERINFO.search(url)
    if userinfo and userinfo.group(2):
        found += [userinfo.group(2), unquote(userinfo.group(2))]
    return tuple(dict.fromkeys(p for p in found if p))


def redact(text: str, url: str | None) -> str:
    """``text`` masked, including every reading of the password of ``url`` wherever it appears."""
    return mask_text(text, url_passwords(url) if url else ())
