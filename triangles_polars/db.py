"""PostgreSQL plumbing: URLs, masking, connections, error classification, retries, introspection.

Reads go through connectorx (Arrow straight into Polars); everything else — DDL, deletes, bulk
ingest — through ADBC (``adbc-driver-postgresql``). Connection errors are retried with
exponential backoff (tenacity); anything else is classified once into the product's exceptions.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import tenacity

from triangles_polars.errors import BadInput, DatabaseUnavailable, RetriesExhausted, TrianglesError

T = TypeVar("T")

# ---------------------------------------------------------------------------- URLs and masking


def resolve_database_url(explicit: str | None, env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """``--database-url`` → ``TRIANGLES_DATABASE_URL`` → ``DATABASE_URL`` → embedded default.

    Returns ``(url, source)``; the embedded server is started if it is the one chosen.
    """
    env = os.environ if env is None else env
    for source, value in (
        ("--database-url", explicit),
        ("TRIANGLES_DATABASE_URL", env.get("TRIANGLES_DATABASE_URL")),
        ("DATABASE_URL", env.get("DATABASE_URL")),
    ):
        if value:
            return normalise_url(value), source
    from triangles_polars.embedded import start_server

    return start_server(), "embedded"


def normalise_url(url: str) -> str:
    """Accept ``postgres://`` and ``postgresql+driver://`` spellings; reject anything else."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in ("postgresql", "postgres"):
        raise BadInput(f"bad database URL {mask_url(url)!r}: expected postgresql://user:password@host/db")
    return urlunsplit(parts._replace(scheme="postgresql"))


def with_application_name(url: str, name: str) -> str:
    """Tag connections (``application_name``) so operators can see, and tests can kill, each role."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    if any(k == "application_name" for k, _ in query):
        return url
    return urlunsplit(parts._replace(query=urlencode([*query, ("application_name", name)], safe="/")))


def url_password(url: str) -> str | None:
    """The password in a URL (netloc or ``password=`` query parameter), if any."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.password:
        return parts.password
    for key, value in parse_qsl(parts.query):
        if key == "password" and value:
            return value
    return None


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (safe to print and log)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}:***@{host}"
    query = parts.query
    if "password=" in query:
        query = urlencode([(k, "***" if k == "password" else v) for k, v in parse_qsl(query)], safe="/")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def redact(text: str, url: str | None) -> str:
    """Remove the URL's password (raw and percent-encoded forms) from any text."""
    if not url:
        return text
    password = url_password(url)
    if password:
        from urllib.parse import quote, unquote

        for form in {password, unquote(password), quote(password, safe=""), quote(password)}:
            if form:
                text = text.replace(form, "***")
    return text


# ---------------------------------------------------------------------------- error classification

_TRANSIENT_PATTERNS = re.compile(
    "|".join(
        (
            r"connection (refused|reset|closed|timed out|to server)",
            r"server closed the connection",
            r"terminating connection",
            r"error communicating with the server",
            r"broken pipe",
            r"unexpected eof",
            r"could not receive data",
            r"could not send data",
            r"no connection to the server",
            r"the database system is (starting up|shutting down|in recovery)",
            r"timed out waiting for connection",
            r"connection is closed",
            r"connection not open",
            r"administrator command",
            r"57p0[123]",
            r"sqlstate: 08",
        )
    ),
    re.IGNORECASE,
)
_AUTH = re.compile(
    r"password authentication failed|no password supplied|role \"[^\"]*\" does not exist|"
    r"authentication failed|28P01|28000",
    re.I,
)
_NO_DATABASE = re.compile(r'database "[^"]*" does not exist|3D000', re.I)
_NO_TABLE = re.compile(r"relation .* does not exist|schema .* does not exist|42P01|3F000", re.I)
_PERMISSION = re.compile(r"permission denied|42501|must be owner", re.I)
_READ_ONLY = re.compile(r"read-only transaction|25006", re.I)


def was_interrupted(exc: BaseException) -> bool:
    """True when Ctrl-C cancelled a running statement (ADBC turns SIGINT into a cancel)."""
    return isinstance(exc.__cause__, KeyboardInterrupt) or "canceling statement due to user request" in str(
        exc
    )


def is_transient(exc: BaseException) -> bool:
    """True for errors that a reconnect can cure: dropped connections, killed backends, restarts."""
    if type(exc).__name__ == "PanicException":  # connectorx panics on a half-read stream
        return True
    text = str(exc)
    if _AUTH.search(text) or _NO_DATABASE.search(text) or was_interrupted(exc):  # no retry fixes these
        return False
    return bool(_TRANSIENT_PATTERNS.search(text))


def first_line(text: str) -> str:
    """The server's own message (``ERROR: …``/``FATAL: …``) if any, else the first line."""
    server = re.search(r"(?:ERROR|FATAL):\s+([^\n]+)", str(text))
    if server:
        return server.group(1).strip()
    for line in str(text).splitlines():
        line = line.strip()
        if line:
            return re.sub(r"^(IO|INVALID_ARGUMENT|NOT_FOUND|INTERNAL|UNKNOWN|UNAUTHORIZED): ", "", line)
    return str(text)


def classify(exc: BaseException, what: str, url: str | None) -> TrianglesError:
    """Turn a driver error into the product's exception, with a one-line, password-free message."""
    message = redact(first_line(str(exc)), url)
    text = str(exc)
    if _AUTH.search(text):
        return DatabaseUnavailable(f"{what}: authentication failed for {mask_url(url or '')}")
    if _NO_DATABASE.search(text):
        return DatabaseUnavailable(f"{what}: {message}")
    if is_transient(exc):
        return DatabaseUnavailable(f"{what}: database unreachable ({message})")
    if _PERMISSION.search(text) or _READ_ONLY.search(text):
        return BadInput(f"{what}: the database role lacks a privilege ({message})")
    if _NO_TABLE.search(text):
        return BadInput(f"{what}: {message}")
    return TrianglesError(f"{what}: {message}")


# ---------------------------------------------------------------------------- retries


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: ``backoff_s``, 2×, 4× … capped at ``max_backoff_s``; ``max_retries`` tries more."""

    max_retries: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0


def with_retries(
    fn: Callable[[], T],
    what: str,
    policy: RetryPolicy,
    url: str | None,
    on_retry: Callable[[BaseException], None] | None = None,
) -> T:
    """Run ``fn``; on a transient error call ``on_retry`` and try again after a backoff.

    Non-transient errors are raised at once, classified; when retries run out,
    :class:`RetriesExhausted` (exit 3) is raised.
    """

    def before_sleep(state: tenacity.RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None:
            on_retry(state.outcome.exception())

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(policy.max_retries + 1),
        wait=tenacity.wait_exponential(multiplier=policy.backoff_s, max=policy.max_backoff_s),
        retry=tenacity.retry_if_exception(lambda e: not isinstance(e, TrianglesError) and is_transient(e)),
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        return retrying(fn)
    except TrianglesError:
        raise
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        if isinstance(exc, SystemExit | GeneratorExit):
            raise
        raise give_up(exc, what, policy, url) from None


def give_up(exc: BaseException, what: str, policy: RetryPolicy, url: str | None) -> BaseException:
    """The exception to raise for a failure that will not be retried (any more)."""
    if was_interrupted(exc):
        return KeyboardInterrupt()
    if is_transient(exc):
        return RetriesExhausted(
            f"{what}: database unreachable after {policy.max_retries} retries "
            f"({redact(first_line(str(exc)), url)})"
        )
    return classify(exc, what, url)


# ---------------------------------------------------------------------------- connections


def quote_ident(name: str) -> str:
    """Quote one SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def qualified(schema: str | None, table: str) -> str:
    """``"schema"."table"`` or ``"table"``."""
    return f"{quote_ident(schema)}.{quote_ident(table)}" if schema else quote_ident(table)


def quote_literal(value: str) -> str:
    """A SQL string literal, for connectorx, which takes no bind parameters.

    Standard-conforming strings (the default since PostgreSQL 9.1) only need quote doubling.
    """
    if "\x00" in value:
        raise BadInput("text values must not contain NUL characters")
    return "'" + value.replace("'", "''") + "'"


def connect(url: str, autocommit: bool = False) -> Any:
    """An ADBC DB-API connection (errors are raised raw, for :func:`with_retries` to classify)."""
    import adbc_driver_postgresql.dbapi as adbc

    return adbc.connect(url, autocommit=autocommit)


def connect_checked(
    url: str, policy: RetryPolicy, on_retry: Callable[[BaseException], None] | None = None
) -> Any:
    """Connect with retries; a clear :class:`DatabaseUnavailable` if it cannot."""
    return with_retries(lambda: connect(url), "connecting to the database", policy, url, on_retry)


def close_quietly(conn: Any) -> None:
    """Close a connection that may already be dead."""
    if conn is None:
        return
    with contextlib.suppress(Exception):
        conn.close()


def fetch_all(cur: Any, sql: str, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
    """Run a query on a cursor and fetch every row."""
    cur.execute(sql, parameters=params)
    return cur.fetchall()


def table_exists(cur: Any, schema: str | None, table: str) -> bool:
    """Whether a table is visible (on the search path, or in ``schema``)."""
    return bool(fetch_all(cur, "SELECT to_regclass($1) IS NOT NULL", (qualified(schema, table),))[0][0])


def table_columns(cur: Any, schema: str | None, table: str) -> dict[str, str] | None:
    """``{column: data_type}`` of a table visible on the search path, or None if it does not exist."""
    rows = fetch_all(
        cur,
        """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod)
        FROM pg_attribute a
        WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum
        """,
        (qualified(schema, table),),
    )
    if not rows:
        return {} if table_exists(cur, schema, table) else None
    return {name: dtype for name, dtype in rows}
