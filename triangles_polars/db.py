"""PostgreSQL plumbing: URLs, masking, connections, error classification, retries, introspection.

Reads go through connectorx (Arrow straight into Polars); everything else — DDL, deletes, bulk
ingest — through ADBC (``adbc-driver-postgresql``). Connection errors are retried with
exponential backoff (tenacity); anything else is classified once into the product's exceptions.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import tenacity

from triangles_polars.errors import BadInput, DatabaseUnavailable, RetriesExhausted, TrianglesError
from triangles_polars.masking import mask_url, redact

T = TypeVar("T")

# ---------------------------------------------------------------------------- URLs


def resolve_database_url(
    explicit: str | None, env: Mapping[str, str] | None = None
) -> tuple[str | None, str]:
    """``--database-url`` → ``TRIANGLES_DATABASE_URL`` → ``DATABASE_URL``; ``(None, "embedded")`` if none.

    Resolution starts nothing: the command or API entry starts the embedded server when it is
    the one chosen (:func:`triangles_polars.embedded.database_url`).
    """
    env = os.environ if env is None else env
    for source, value in (
        ("--database-url", explicit),
        ("TRIANGLES_DATABASE_URL", env.get("TRIANGLES_DATABASE_URL")),
        ("DATABASE_URL", env.get("DATABASE_URL")),
    ):
        if value:
            return normalise_url(value), source
    return None, "embedded"


def normalise_url(url: str) -> str:
    """Accept ``postgres://`` and ``postgresql+driver://`` spellings; reject anything else."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        parts = None
    scheme = parts.scheme.split("+", 1)[0] if parts else ""
    if (
        parts is None
        or scheme not in ("postgresql", "postgres")
        or not url.strip().split(":", 1)[1].startswith("//")
    ):
        raise BadInput(
            f"bad database URL ({_what_is_wrong(url.strip())}): expected postgresql://user@host:port/dbname "
            "(a password goes after the user and a colon, percent-encoded)"
        )
    return urlunsplit(parts._replace(scheme="postgresql"))


def _what_is_wrong(url: str) -> str:
    """What makes ``url`` no PostgreSQL URL, without quoting it: a malformed URL has no reliable
    place for its password, so none of it is shown (``docs/guarantees.md``)."""
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", url)
    if scheme is None:
        return "a key=value connection string" if "=" in url else "no scheme"
    name = scheme.group(1).split("+", 1)[0].lower()
    if name not in ("postgresql", "postgres"):
        # user:password@host without a scheme reads as the scheme "user"
        return "no scheme" if "@" in url.split("/", 1)[0] else f"scheme {name!r}, not postgresql"
    if not url[scheme.end() :].startswith("//"):
        return f"no // after {name}:"
    return "not a URL"


def with_application_name(url: str, name: str) -> str:
    """Tag connections (``application_name``) so operators can see, and tests can kill, each role."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    if any(k == "application_name" for k, _ in query):
        return url
    return urlunsplit(parts._replace(query=urlencode([*query, ("application_name", name)], safe="/")))


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
# libpq (and connectorx) refusing the URL itself, before any connection is tried: a user mistake.
_BAD_CONNINFO = re.compile(
    "|".join(
        (
            r"invalid connection option",
            r"invalid integer value .* for connection option",
            r'invalid \w+ value: "',
            r"invalid port",
            r"invalid URI",
            r"invalid percent-encoded",
            r"forbidden value %00",
            r"key/value separator",
            r'missing "=" after',
            r"unterminated quoted string",
            r"unexpected character .* in URI",
            r"IPv6 host address",
            r"could not match \d+ (port numbers|host names)",
            r"could not parse network address",
            r"invalid connection string",
            r"invalid configuration",
            r"invalid SSL protocol",
        )
    ),
    re.I,
)
# A host name that does not resolve. With an "@" in it, the password held an unencoded "@".
_UNKNOWN_HOST = re.compile(r'could not translate host name "([^"]*)"', re.I)
# Any other failure to open a connection (TLS refused, …): the database refuses us.
_CONNECT_FAILED = re.compile(r"failed to connect|could not connect|connection to server", re.I)


def was_interrupted(exc: BaseException) -> bool:
    """True when Ctrl-C cancelled a running statement (ADBC turns SIGINT into a cancel)."""
    return isinstance(exc.__cause__, KeyboardInterrupt) or "canceling statement due to user request" in str(
        exc
    )


class TransientError(Exception):
    """A condition of ours that waiting cures (retried like a dropped connection)."""


def is_transient(exc: BaseException) -> bool:
    """True for errors that a reconnect can cure: dropped connections, killed backends, restarts."""
    if isinstance(exc, TransientError):
        return True
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
    return _connection_error(text, what, message) or TrianglesError(f"{what}: {message}")


def _connection_error(text: str, what: str, message: str) -> TrianglesError | None:
    """A failure to connect as exit 2 (the URL is wrong) or 3 (the server is not there or refuses)."""
    host = _UNKNOWN_HOST.search(text)
    message = re.sub(r"^\[libpq\] Failed to connect: ", "", message)
    if (host and "@" in host.group(1)) or _BAD_CONNINFO.search(text):
        hint = "; percent-encode @ in a password as %40" if host else ""
        return BadInput(f"{what}: bad database URL ({message}){hint}")
    if host or _CONNECT_FAILED.search(text):
        return DatabaseUnavailable(f"{what}: database unreachable ({message})")
    return None


# ---------------------------------------------------------------------------- retries


#: Environment variable that sets how many times a connection error is retried when no
#: ``--max-retries`` is given (every command; ``0`` gives up at once on an unreachable server).
MAX_RETRIES_ENV = "TRIANGLES_MAX_RETRIES"
DEFAULT_RETRIES = 5


def default_max_retries() -> int:
    """``$TRIANGLES_MAX_RETRIES`` if set, else 5."""
    raw = os.environ.get(MAX_RETRIES_ENV, "").strip()
    if not raw:
        return DEFAULT_RETRIES
    if not raw.isdigit():
        raise BadInput(f"bad ${MAX_RETRIES_ENV} {raw!r}: use a whole number >= 0")
    return int(raw)


@dataclass(frozen=True)
class RetryNotice:
    """A retry about to happen, as a user is told of it: why, which one, and how long until."""

    reason: str
    retry: int
    max_retries: int
    delay_s: float

    def __str__(self) -> str:
        delay = f"{self.delay_s:.1f}".removesuffix(".0")
        return f"{self.reason}; retry {self.retry}/{self.max_retries} in {delay} s"


# Why a connection failed, in the words a user knows; fixed phrases, so never a password.
_RETRY_REASONS = (
    "connection refused",
    "connection reset",
    "timed out",
    "server closed the connection",
    "terminating connection",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery",
    "broken pipe",
    "no connection to the server",
)


def retry_reason(exc: BaseException) -> str:
    """A short, password-free reason for a transient error (``connection refused``, …)."""
    text = str(exc).lower()
    return next((reason for reason in _RETRY_REASONS if reason in text), "connection lost")


# Who hears of each retry (the command line prints them on a terminal): process-wide, because
# retries happen deep inside reads and writes that know nothing of the terminal.
_RETRY_LISTENERS: list[Callable[[RetryNotice], None]] = []


@contextlib.contextmanager
def retries_reported_to(listener: Callable[[RetryNotice], None]) -> Iterator[None]:
    """Call ``listener`` before every retry's wait while the block runs."""
    _RETRY_LISTENERS.append(listener)
    try:
        yield
    finally:
        _RETRY_LISTENERS.remove(listener)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: ``backoff_s``, 2×, 4× … capped at ``max_backoff_s``; ``max_retries`` tries more.

    ``max_retries`` defaults to ``$TRIANGLES_MAX_RETRIES``, else 5.
    """

    max_retries: int = field(default_factory=default_max_retries)
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0

    def retrying(self, on_retry: Callable[[BaseException], None] | None = None) -> tenacity.Retrying:
        """A tenacity controller that retries transient errors (driver errors only) per this policy."""

        def before_sleep(state: tenacity.RetryCallState) -> None:
            if state.outcome is None:
                return
            error = state.outcome.exception()
            if on_retry is not None:
                on_retry(error)
            delay = state.next_action.sleep if state.next_action is not None else 0.0
            notice = RetryNotice(retry_reason(error), state.attempt_number, self.max_retries, delay)
            for listener in list(_RETRY_LISTENERS):
                listener(notice)

        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.max_retries + 1),
            wait=tenacity.wait_exponential(multiplier=self.backoff_s, max=self.max_backoff_s),
            retry=tenacity.retry_if_exception(
                lambda e: not isinstance(e, TrianglesError) and is_transient(e)
            ),
            before_sleep=before_sleep,
            reraise=True,
        )


@contextlib.contextmanager
def translated(what: str, policy: RetryPolicy, url: str | None) -> Iterator[None]:
    """The one boundary where driver errors become the product's exceptions (masked, one line)."""
    try:
        yield
    except (TrianglesError, KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:
        raise give_up(exc, what, policy, url) from None


def with_retries(
    fn: Callable[[], T],
    what: str,
    policy: RetryPolicy,
    url: str | None,
    on_retry: Callable[[BaseException], None] | None = None,
) -> T:
    """Run ``fn``, retrying transient errors; anything else is raised at once, translated.

    When retries run out, :class:`RetriesExhausted` (exit 3) is raised.
    """
    with translated(what, policy, url):
        return policy.retrying(on_retry)(fn)


def give_up(exc: BaseException, what: str, policy: RetryPolicy, url: str | None) -> BaseException:
    """The exception to raise for a failure that will not be retried (any more)."""
    if was_interrupted(exc):
        return KeyboardInterrupt()
    if is_transient(exc):
        return RetriesExhausted(
            f"{what}: database unreachable after {policy.max_retries} "
            f"{'retry' if policy.max_retries == 1 else 'retries'} "
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
    """An ADBC DB-API connection (errors are raised raw, for :func:`with_retries` to classify).

    Every connection carries the product's keepalives and idle-in-transaction timeout
    (:func:`with_session_options`).
    """
    import adbc_driver_manager
    import adbc_driver_manager.dbapi as dbapi

    base, application_name = _split_application_name(with_session_options(url))
    shared = _database(base)
    if shared is None:  # an ADBC without a shareable database: one per connection, as it offers
        import adbc_driver_postgresql.dbapi as adbc

        return adbc.connect(with_session_options(url), autocommit=autocommit)
    conn = adbc_driver_manager.AdbcConnection(shared._db)
    try:
        connection = dbapi.Connection(shared, conn, autocommit=autocommit)
    except BaseException:
        conn.close()
        raise
    if application_name is not None:  # the shared database has one URL: the name is set per connection
        try:
            with connection.cursor() as cur:
                cur.execute(
                    "SELECT set_config('application_name', $1, false)", parameters=(application_name,)
                )
                cur.fetchall()
            if not autocommit:
                connection.commit()
        except BaseException:
            close_quietly(connection)
            raise
    return connection


def _split_application_name(url: str) -> tuple[str, str | None]:
    """``(url without application_name, the name)``."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    names = [v for k, v in query if k == "application_name"]
    if not names:
        return url, None
    rest = [(k, v) for k, v in query if k != "application_name"]
    return urlunsplit(parts._replace(query=urlencode(rest, safe="/", quote_via=quote))), names[-1]


# One ADBC database object per URL for the whole process. Creating one is what makes an ADBC
# connection slow (the PostgreSQL driver reads the server's type catalogue: 60-200 ms); every
# connection then shares it, as ``Connection.adbc_clone`` does, and costs only the connect.
_DATABASES: dict[str, Any] = {}
_DATABASES_LOCK = threading.Lock()


def _database(url: str) -> Any:
    import adbc_driver_manager.dbapi as dbapi
    import adbc_driver_postgresql

    holder = getattr(dbapi, "_SharedDatabase", None)
    if holder is None:
        return None
    with _DATABASES_LOCK:
        shared = _DATABASES.get(url)
        if shared is None:  # kept (its reference never released) until the process ends
            shared = _DATABASES[url] = holder(adbc_driver_postgresql.connect(url))
        return shared


# Connections that a dead worker or node leaves behind must not hold locks or transactions for
# long (docs/contract.md#keepalives). The client's TCP keepalives notice a dead server; the
# server's (set per session) notice a dead client, in about idle + interval × count = 60 s; a
# live client stuck inside a transaction is cut off after the idle-in-transaction timeout (the
# product never leaves a transaction idle for more than a batch's decoding).
KEEPALIVE_IDLE_S = 30
KEEPALIVE_INTERVAL_S = 10
KEEPALIVE_COUNT = 3
IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000
_SERVER_SETTINGS = {
    "idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_TIMEOUT_MS),
    "tcp_keepalives_idle": str(KEEPALIVE_IDLE_S),
    "tcp_keepalives_interval": str(KEEPALIVE_INTERVAL_S),
    "tcp_keepalives_count": str(KEEPALIVE_COUNT),
}


def with_session_options(url: str, driver: str = "libpq") -> str:
    """``url`` with TCP keepalives and ``idle_in_transaction_session_timeout`` (what it sets itself wins).

    ``driver`` is ``libpq`` (ADBC, psycopg) or ``connectorx`` (rust-postgres, which spells the
    keepalive count ``keepalives_retries``). The server-side settings travel in ``options``
    (``-c name=value``), appended to any the URL already has.

    >>> url = with_session_options("postgresql://u@h/db?options=-c%20search_path%3Dx")
    >>> query = dict(parse_qsl(urlsplit(url).query))
    >>> query["keepalives"], query["keepalives_idle"], query["options"].split(" -c ")[:2]
    ('1', '30', ['-c search_path=x', 'idle_in_transaction_session_timeout=60000'])
    """
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    count = "keepalives_retries" if driver == "connectorx" else "keepalives_count"
    client = {
        "keepalives": "1",
        "keepalives_idle": str(KEEPALIVE_IDLE_S),
        "keepalives_interval": str(KEEPALIVE_INTERVAL_S),
        count: str(KEEPALIVE_COUNT),
    }
    for key, value in client.items():
        query.setdefault(key, value)
    if driver == "connectorx" and query.get("host", "").startswith("/"):
        # A unix socket has no TLS; told so, connectorx skips loading certificates (10 ms a read).
        query.setdefault("sslmode", "disable")
    options = query.get("options", "")
    extra = [f"-c {k}={v}" for k, v in _SERVER_SETTINGS.items() if k not in options]
    if extra:
        query["options"] = " ".join([options, *extra]).strip()
    return urlunsplit(parts._replace(query=urlencode(query, safe="/", quote_via=quote)))


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


# ---------------------------------------------------------------------------- the boundary


class Session:
    """One connection, kept across transactions: every read and write of the product goes through one.

    :meth:`run` is a transaction: ``body(cursor)`` then commit, retried with backoff on
    connection errors (a new connection each time), driver errors translated at one place.
    """

    def __init__(
        self,
        url: str,
        application_name: str,
        policy: RetryPolicy | None = None,
        on_retry: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.url = url
        self.conn_url = with_application_name(url, application_name)
        self.policy = policy or RetryPolicy()
        self.on_retry = on_retry
        self.retries = 0
        self._conn: Any = None

    def run(self, what: str, body: Callable[[Any], T]) -> T:
        """Run ``body(cursor)`` in one transaction and commit; retried as a whole."""

        def attempt() -> T:
            if self._conn is None:
                self._conn = connect(self.conn_url)
            try:
                with self._conn.cursor() as cur:
                    result = body(cur)
                self._conn.commit()
                return result
            except BaseException:
                # Whatever failed, this connection's transaction is unusable: start afresh.
                self.close()
                raise

        return with_retries(attempt, what, self.policy, self.url, self._retried)

    def query(self, what: str, sql: str, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
        """Rows of one query (a transaction of its own)."""
        return self.run(what, lambda cur: fetch_all(cur, sql, params))

    def _retried(self, exc: BaseException) -> None:
        self.retries += 1
        if self.on_retry is not None:
            self.on_retry(exc)

    def close(self) -> None:
        """Close the connection (a later :meth:`run` opens another)."""
        close_quietly(self._conn)
        self._conn = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SessionPool:
    """Sessions kept open across the tasks of a worker, one per role (application name).

    A worker that runs many tasks pays the connection cost once; ``close`` ends them all.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._sessions: dict[str, Session] = {}

    def get(
        self,
        application_name: str,
        policy: RetryPolicy,
        on_retry: Callable[[BaseException], None] | None = None,
    ) -> Session:
        """The role's session, with this task's retry policy and observer."""
        session = self._sessions.get(application_name)
        if session is None:
            session = self._sessions[application_name] = Session(self.url, application_name, policy, on_retry)
        session.policy, session.on_retry = policy, on_retry
        return session

    def close(self) -> None:
        for session in self._sessions.values():
            session.close()
        self._sessions.clear()
