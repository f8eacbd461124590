"""The pure helpers, one by one: masking, error classification, parsers, the resume key.

No database: the driver errors below are real ones (a connection to a closed port, a malformed
URL handed to libpq) or server messages in the shape the ADBC driver reports them. Expected
values are written from the contract (docs/contract.md), never taken from the code under test.
"""

from __future__ import annotations

import hashlib
import json
import socket
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from urllib.parse import quote

import adbc_driver_manager
import pytest

from tests.helpers import NQ
from triangles_polars.db import classify, is_transient
from triangles_polars.errors import BadInput, DatabaseUnavailable, TrianglesError
from triangles_polars.ledger import legacy_run_key, run_key, run_key_fields
from triangles_polars.masking import mask_text, mask_url, redact, url_password
from triangles_polars.settings import (
    BackfillSettings,
    HygieneSettings,
    Task,
    Thresholds,
    TimeRange,
    Window,
    parse_duration,
    parse_instant,
    parse_strengths,
)

# ---------------------------------------------------------------------------- masking

SECRET = "Zq7-secret"


def forms(password: str) -> set[str]:
    """The ways a password can show up in text: raw and percent-encoded."""
    return {password, quote(password, safe=""), quote(password)}


def assert_hidden(text: str, password: str) -> None:
    for form in forms(password):
        assert form not in text, (form, text)


# (url, its password, the URL as a user may see it)
MASKED_URLS = {
    "well formed": (
        "postgresql://trader:s3cret@db.internal:5432/market",
        "s3cret",
        "postgresql://trader:***@db.internal:5432/market",
    ),
    "percent-encoded password": (
        "postgresql://trader:p%40ss%3Aw%2Frd@db/market",
        "p@ss:w/rd",
        "postgresql://trader:***@db/market",
    ),
    "raw @ in the password": (
        "postgresql://trader:p@ss@db/market",
        "p@ss",
        "postgresql://trader:***@db/market",
    ),
    "password in the query string": (
        "postgresql://db/market?user=trader&password=s3cret&sslmode=require",
        "s3cret",
        "postgresql://db/market?user=trader&password=***&sslmode=require",
    ),
    "percent-encoded password in the query string": (
        "postgresql://db/market?password=p%40ss%26x",
        "p@ss&x",
        "postgresql://db/market?password=***",
    ),
    "libpq key=value": (
        "host=db user=trader password=s3cret dbname=market",
        "s3cret",
        "host=db user=trader password=*** dbname=market",
    ),
    "libpq key=value, quoted with a space and an escaped quote": (
        "host=db user=trader password='se cr\\'et' dbname=market",
        "se cr'et",
        "host=db user=trader password=*** dbname=market",
    ),
    "libpq key = value with spaces": ("host=db password = s3cret", "s3cret", "host=db password = ***"),
    "one slash after the scheme": (
        "postgres:/trader:s3cret@localhost:5432/db",
        "s3cret",
        "postgres:/trader:***@localhost:5432/db",
    ),
    "no slash after the scheme": (
        "postgresql:trader:s3cret@localhost:5432/db",
        "s3cret",
        "postgresql:trader:***@localhost:5432/db",
    ),
    "no scheme, two slashes": (
        "//trader:s3cret@localhost:5432/db",
        "s3cret",
        "//trader:***@localhost:5432/db",
    ),
    "no scheme at all": (
        "trader:s3cret@localhost:5432/db",
        "s3cret",
        "trader:***@localhost:5432/db",
    ),
    "unclosed IPv6 bracket": (
        "postgresql://trader:s3cret@[::1:5432/db",
        "s3cret",
        "postgresql://trader:***@[::1:5432/db",
    ),
    "port that is not a number": (
        "postgresql://trader:s3cret@db:notaport/market",
        "s3cret",
        "postgresql://trader:***@db:notaport/market",
    ),
}


@pytest.mark.parametrize(("url", "password", "shown"), MASKED_URLS.values(), ids=MASKED_URLS.keys())
def test_mask_url_hides_the_password_in_every_form(url: str, password: str, shown: str) -> None:
    masked = mask_url(url)
    assert_hidden(masked, password)
    assert masked == shown
    # the same URL inside a message (quoted, as drivers and the CLI write it)
    for message in (f"bad database URL {url!r}: expected postgresql://…", f'invalid option "{url}"'):
        assert_hidden(mask_text(message), password)
        assert_hidden(redact(message, url), password)


@pytest.mark.parametrize(
    ("url", "password"),
    [
        ("postgresql://u:s3cret@db/market", "s3cret"),
        ("postgresql://u:p%40ss%3Aw%2Frd@db/market", "p@ss:w/rd"),
        ("postgresql://u:p@ss@db/market", "p@ss"),
        ("postgresql://db/market?sslmode=require&password=p%40ss%26x", "p@ss&x"),
        ("host=db password='a b' user=u", "a b"),
        ("host=db password='it\\'s' user=u", "it's"),
        ("host=db password=s3cret user=u", "s3cret"),
        ("postgres:/u:s3cret@localhost:1/db", "s3cret"),
    ],
)
def test_url_password_finds_the_decoded_password(url: str, password: str) -> None:
    assert url_password(url) == password


@pytest.mark.parametrize(
    "url", ["postgresql://db/market", "postgresql://trader@db/market", "host=db user=u dbname=market", ""]
)
def test_url_password_is_none_without_a_password(url: str) -> None:
    assert url_password(url) is None


def test_mask_text_replaces_known_secrets_in_every_encoding() -> None:
    secret = "p@ss:w/rd"
    text = f"FATAL: bad value {secret} or {quote(secret, safe='')} or {quote(secret)}"
    masked = mask_text(text, (secret,))
    assert_hidden(masked, secret)
    assert masked.startswith("FATAL: bad value ***")


def test_redact_masks_the_tail_a_first_at_parser_shows() -> None:
    # libpq splits "trader:p@ss@db" at the first "@": the password's tail appears in a host name.
    url = "postgresql://trader:p@ss@db/market"
    message = 'could not translate host name "ss@db" to address: Name or service not known'
    redacted = redact(message, url)
    assert "ss@db" not in redacted
    assert "***@db" in redacted
    assert redact("no secret here", url) == "no secret here"
    assert redact("no secret here", None) == "no secret here"


def _closed_port() -> int:
    """A local TCP port that nothing listens on (bound, read, released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _driver_error(url: str) -> adbc_driver_manager.Error:
    """The real error the ADBC PostgreSQL driver raises when connecting to ``url``."""
    import adbc_driver_postgresql.dbapi as adbc

    with pytest.raises(adbc_driver_manager.Error) as caught:
        adbc.connect(url).close()
    return caught.value


def test_a_real_libpq_error_that_quotes_the_password_is_redacted() -> None:
    # libpq reads a URL with one slash as a key=value string and quotes it whole in its error.
    url = f"postgres:/trader:{SECRET}@127.0.0.1:{_closed_port()}/market"
    error = _driver_error(url)
    assert SECRET in str(error)  # the driver does leak it ...
    assert_hidden(redact(str(error), url), SECRET)  # ... the product does not
    assert_hidden(mask_text(str(error)), SECRET)
    assert_hidden(str(classify(error, "connecting", url)), SECRET)
    assert not is_transient(error)  # a malformed URL needs a fix, not a retry


# ---------------------------------------------------------------------------- error classification


def test_connection_refused_is_transient_and_exit_3() -> None:
    for url in (
        f"postgresql://trader:{SECRET}@127.0.0.1:{_closed_port()}/market",
        f"host=127.0.0.1 port={_closed_port()} user=trader password='{SECRET} x' dbname=market",
    ):
        error = _driver_error(url)
        assert "refused" in str(error).lower()
        assert is_transient(error)
        translated = classify(error, "connecting", url)
        assert type(translated) is DatabaseUnavailable and translated.exit_code == 3
        assert "unreachable" in str(translated) and "refused" in str(translated).lower()
        assert str(translated).startswith("connecting: ")
        assert "\n" not in str(translated)
        assert_hidden(str(translated), SECRET)


def _server_error(message: str, sqlstate: str | None = None) -> adbc_driver_manager.Error:
    """A driver error carrying a server message, as the ADBC driver raises it."""
    return adbc_driver_manager.OperationalError(
        message, status_code=adbc_driver_manager.AdbcStatusCode.IO, sqlstate=sqlstate
    )


URL = f"postgresql://trader:{SECRET}@db.internal/market"

# (error, transient?, class it becomes, words its message keeps)
SERVER_ERRORS = {
    "backend terminated": (
        _server_error(
            "IO: [libpq] Failed to execute query: FATAL:  terminating connection due to administrator command\n"
            "server closed the connection unexpectedly\n\tThis probably means the server terminated abnormally\n",
            "57P01",
        ),
        True,
        DatabaseUnavailable,
        ["unreachable", "terminating connection"],
    ),
    "server closed the connection": (
        _server_error(
            "IO: [libpq] Failed to execute query: server closed the connection unexpectedly\n"
            "\tThis probably means the server terminated abnormally\n"
        ),
        True,
        DatabaseUnavailable,
        ["unreachable", "server closed the connection"],
    ),
    "server starting up": (
        _server_error(
            'IO: [libpq] Failed to connect: connection to server at "10.0.0.5", port 5432 failed: '
            "FATAL:  the database system is starting up\n",
            "57P03",
        ),
        True,
        DatabaseUnavailable,
        ["unreachable", "starting up"],
    ),
    "server shutting down": (
        _server_error("IO: [libpq] Failed to connect: FATAL:  the database system is shutting down\n"),
        True,
        DatabaseUnavailable,
        ["unreachable", "shutting down"],
    ),
    "connectorx pool gave up": (
        RuntimeError(
            "timed out waiting for connection: error connecting to server: Connection refused (os error 111)"
        ),
        True,
        DatabaseUnavailable,
        ["unreachable", "refused"],
    ),
    "wrong password (on a connection-to-server line)": (
        _server_error(
            'IO: [libpq] Failed to connect: connection to server at "10.0.0.5", port 5432 failed: '
            'FATAL:  password authentication failed for user "trader"\n',
            "28P01",
        ),
        False,
        DatabaseUnavailable,
        ["authentication failed", "trader:***@db.internal"],
    ),
    "missing database": (
        _server_error(
            'IO: [libpq] Failed to connect: connection to server on socket "/tmp/.s.PGSQL.5432" failed: '
            'FATAL:  database "nope" does not exist\n',
            "3D000",
        ),
        False,
        DatabaseUnavailable,
        ['database "nope" does not exist'],
    ),
    "no privilege on the schema": (
        _server_error(
            "INTERNAL: [libpq] Failed to execute query: ERROR:  permission denied for schema analytics\n"
            'Query was: CREATE TABLE IF NOT EXISTS "analytics"."triangle_events" (…)',
            "42501",
        ),
        False,
        BadInput,
        ["lacks a privilege", "permission denied for schema analytics"],
    ),
    "read-only transaction": (
        _server_error(
            "INTERNAL: [libpq] Failed to execute query: ERROR:  cannot execute DELETE in a read-only transaction\n",
            "25006",
        ),
        False,
        BadInput,
        ["lacks a privilege", "read-only transaction"],
    ),
    "missing table": (
        _server_error(
            'INTERNAL: [libpq] Failed to execute query: ERROR:  relation "market.bars_1m" does not exist\n'
            "LINE 1: SELECT * FROM market.bars_1m\n",
            "42P01",
        ),
        False,
        BadInput,
        ['relation "market.bars_1m" does not exist'],
    ),
    "cancelled by Ctrl-C": (
        _server_error(
            "INTERNAL: [libpq] Failed to execute query: ERROR:  canceling statement due to user request\n",
            "57014",
        ),
        False,
        TrianglesError,
        ["canceling statement"],
    ),
    "anything else": (
        _server_error("INTERNAL: [libpq] Failed to execute query: ERROR:  division by zero\n", "22012"),
        False,
        TrianglesError,
        ["division by zero"],
    ),
}


@pytest.mark.parametrize(
    ("error", "transient", "kind", "words"), SERVER_ERRORS.values(), ids=SERVER_ERRORS.keys()
)
def test_classify_server_messages(
    error: BaseException, transient: bool, kind: type[TrianglesError], words: list[str]
) -> None:
    assert is_transient(error) is transient
    translated = classify(error, "reading bars", URL)
    assert type(translated) is kind
    assert translated.exit_code == {DatabaseUnavailable: 3, BadInput: 2, TrianglesError: 1}[kind]
    message = str(translated)
    assert message.startswith("reading bars: ") and "\n" not in message
    for word in words:
        assert word in message, message
    assert_hidden(message, SECRET)


def test_a_statement_cancelled_by_ctrl_c_is_not_retried() -> None:
    # ADBC turns SIGINT into a cancel: the driver error's cause is the KeyboardInterrupt.
    error = _server_error("IO: [libpq] Failed to execute query: server closed the connection unexpectedly\n")
    assert is_transient(error)
    error.__cause__ = KeyboardInterrupt()
    assert not is_transient(error)


# ---------------------------------------------------------------------------- parsers


@pytest.mark.parametrize(
    ("text", "instant", "whole_day"),
    [
        ("2025-12-02", datetime(2025, 12, 2, tzinfo=UTC), True),
        (" 2025-12-02 ", datetime(2025, 12, 2, tzinfo=UTC), True),
        ("2024-02-29", datetime(2024, 2, 29, tzinfo=UTC), True),
        ("2025-11-30T23:00:00Z", datetime(2025, 11, 30, 23, tzinfo=UTC), False),
        ("2025-11-30T23:00:00z", datetime(2025, 11, 30, 23, tzinfo=UTC), False),
        ("2025-11-30T23:00", datetime(2025, 11, 30, 23, tzinfo=UTC), False),  # naive: UTC
        ("2025-11-30T18:00:00-05:00", datetime(2025, 11, 30, 23, tzinfo=UTC), False),
        ("2025-12-01T01:30:00+02:30", datetime(2025, 11, 30, 23, tzinfo=UTC), False),
        ("2025-11-30 23:00:00.250000+00:00", datetime(2025, 11, 30, 23, 0, 0, 250000, tzinfo=UTC), False),
        (date(2025, 12, 2), datetime(2025, 12, 2, tzinfo=UTC), True),
        (datetime(2025, 12, 2, 14, 30), datetime(2025, 12, 2, 14, 30, tzinfo=UTC), False),
        (
            datetime(2025, 12, 2, 9, 30, tzinfo=timezone(-timedelta(hours=5))),
            datetime(2025, 12, 2, 14, 30, tzinfo=UTC),
            False,
        ),
    ],
)
def test_parse_instant(text: object, instant: datetime, whole_day: bool) -> None:
    value, is_day = parse_instant(text, "START")  # type: ignore[arg-type]
    assert value == instant and value.utcoffset() == timedelta(0)
    assert value.tzinfo is not None
    assert is_day is whole_day


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("2025-13-01", ["malformed ANCHOR", "2025-13-01", "not a real date"]),
        ("2025-02-30", ["malformed ANCHOR", "not a real date"]),
        ("yesterday", ["malformed ANCHOR", "yesterday", "YYYY-MM-DD"]),
        ("2025-11-01T25:00:00Z", ["malformed ANCHOR", "2025-11-01T25:00:00Z"]),
        ("12/02/2025", ["malformed ANCHOR"]),
        ("", ["malformed ANCHOR"]),
    ],
)
def test_parse_instant_rejects_malformed_text(text: str, needles: list[str]) -> None:
    with pytest.raises(BadInput) as caught:
        parse_instant(text, "ANCHOR")
    for needle in needles:
        assert needle in str(caught.value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1m", 60),
        ("5m", 300),
        ("5min", 300),
        ("30s", 30),
        ("30sec", 30),
        ("1h", 3600),
        ("1d", 86400),
        (" 15 m ", 900),
        (timedelta(minutes=2), 120),
    ],
)
def test_parse_duration(text: str | timedelta, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("fortnight", "bar interval"),
        ("1.5m", "bar interval"),
        ("m", "bar interval"),
        ("-1m", "bar interval"),
        ("1w", "bar interval"),
        ("0m", "positive"),
        (timedelta(0), "positive"),
        (timedelta(minutes=-1), "positive"),
    ],
)
def test_parse_duration_rejects(text: str | timedelta, needle: str) -> None:
    with pytest.raises(BadInput, match=needle):
        parse_duration(text)


@pytest.mark.parametrize(
    ("value", "strengths"),
    [
        ("5", (5,)),
        (5, (5,)),
        ("3,5,8", (3, 5, 8)),
        (" 3 , 5 ", (3, 5)),
        ([8, 3], (8, 3)),
        ("10000", (10000,)),
    ],
)
def test_parse_strengths(value: object, strengths: tuple[int, ...]) -> None:
    assert parse_strengths(value) == strengths  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("0", "between 1"),
        (0, "between 1"),
        (-2, "between 1"),
        ("10001", "between 1"),
        ("3,3", "once"),
        ("five", "whole number"),
        ("3,", "whole number"),
        ("", "whole number"),
        ("2.5", "whole number"),
        (True, "whole number"),
        ([], "once"),
        ([3, 2.5], "whole number"),
    ],
)
def test_parse_strengths_rejects(value: object, needle: str) -> None:
    with pytest.raises(BadInput, match=needle):
        parse_strengths(value)  # type: ignore[arg-type]


def test_window_days_are_inclusive_and_timestamps_exclusive() -> None:
    day = Window.parse("2025-12-02", "2025-12-02")
    assert (day.start, day.end_exclusive) == (
        datetime(2025, 12, 2, tzinfo=UTC),
        datetime(2025, 12, 3, tzinfo=UTC),
    )
    week = Window.parse(date(2025, 12, 1), "2025-12-07")
    assert week.end_exclusive == datetime(2025, 12, 8, tzinfo=UTC)
    session = Window.parse("2025-12-02T14:30Z", "2025-12-02T21:00:00+00:00")
    assert session.end_exclusive == datetime(2025, 12, 2, 21, tzinfo=UTC)
    # [a, b) then [b, c) tile time
    first, second = (
        Window.parse("2025-12-02", "2025-12-02T12:00Z"),
        Window.parse("2025-12-02T12:00Z", "2025-12-02"),
    )
    assert first.end_exclusive == second.start and second.end_exclusive == day.end_exclusive


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2025-12-03", "2025-12-02"),
        ("2025-12-02T10:00:00Z", "2025-12-02T10:00:00+00:00"),  # empty
        ("2025-12-02T10:00:00Z", "2025-12-02T09:59:59Z"),
    ],
)
def test_window_end_not_after_start_is_bad_input(start: str, end: str) -> None:
    with pytest.raises(BadInput, match="before START"):
        Window.parse(start, end)


def test_time_range_anchor() -> None:
    default = TimeRange.parse("2025-12-02", "2025-12-02")
    assert default.anchor == datetime(2025, 11, 25, tzinfo=UTC)  # START − 7 days
    assert default.end_exclusive == datetime(2025, 12, 3, tzinfo=UTC)
    given = TimeRange.parse("2025-12-02", "2025-12-02", "2025-11-30T23:00:00Z")
    assert given.anchor == datetime(2025, 11, 30, 23, tzinfo=UTC)
    assert TimeRange.parse("2025-12-02", "2025-12-02", "2025-12-02").anchor == given.start  # may equal START
    with pytest.raises(BadInput, match=r"ANCHOR .* after START"):
        TimeRange.parse("2025-12-02", "2025-12-02", "2025-12-02T00:01:00Z")
    with pytest.raises(BadInput, match="malformed ANCHOR"):
        TimeRange.parse("2025-12-02", "2025-12-02", "last-tuesday")


# ---------------------------------------------------------------------------- the resume key


def settings_and_task(**kwargs: object) -> tuple[BackfillSettings, Task]:
    settings = BackfillSettings(**({"symbol": NQ, "start": "2025-12-02", "end": "2025-12-02"} | kwargs))  # type: ignore[arg-type]
    task = Task(settings.symbol, settings.strengths, settings.time_range, settings.hygiene_settings)
    return settings, task


def key_of(**kwargs: object) -> str:
    settings, task = settings_and_task(**kwargs)
    return run_key(run_key_fields(settings, task, task.strengths[0]))


def test_run_key_is_a_stable_32_hex_digest() -> None:
    key = key_of()
    assert len(key) == 32 and int(key, 16) >= 0
    assert key_of() == key  # deterministic


def test_run_key_ignores_what_does_not_decide_the_events() -> None:
    key = key_of()
    for unrelated in (
        {"max_retries": 0},
        {"backoff_s": 3.0},
        {"slice_days": 7},
        {"prefetch": 4},
        {"reader": "adbc"},
        {"database_url": "postgresql://elsewhere/db"},
    ):
        assert key_of(**unrelated) == key, unrelated


def test_run_key_survives_a_new_field_in_the_settings_and_the_thresholds() -> None:
    """The first release hashed the thresholds' repr: a new field orphaned every recorded run."""

    @dataclass(frozen=True)
    class NewerSettings(BackfillSettings):
        colour: str = "blue"

    @dataclass(frozen=True)
    class NewerThresholds(Thresholds):
        spike: float = 9.0

    settings, task = settings_and_task()
    fields = run_key_fields(settings, task, 5)
    newer = NewerSettings(symbol=NQ, start="2025-12-02", end="2025-12-02", colour="red")
    assert run_key_fields(newer, task, 5) == fields
    hygiene = task.hygiene
    richer = HygieneSettings(hygiene.profile, NewerThresholds(**asdict(hygiene.thresholds), spike=3.0))
    richer_task = Task(task.symbol, task.strengths, task.time_range, richer)
    assert repr(richer.thresholds) != repr(hygiene.thresholds)
    assert run_key(run_key_fields(settings, richer_task, 5)) == run_key(fields)


def test_run_key_changes_with_everything_that_decides_the_events() -> None:
    variants = [
        {},
        {"discontinuity": 400, "hygiene": "full"},
        {"discontinuity": 400.5, "hygiene": "full"},
        {"hygiene": "full"},
        {"min_price": 999},
        {"reference_window": 9},
        {"strength": 6},
        {"end": "2025-12-03"},
        {"anchor": "2025-11-30"},
        {"events_table": "analytics.triangle_events"},
        {"bars_table": "md.bars_1m"},
        {"columns": {"ts": "time"}},
        {"ts_convention": "close"},
        {"bar_interval": "5m"},
        {"mode": "append"},
        {"purge": True},
        {"chunk_events": 1000},
        {"symbol": "GLBX.MDP3:NQH6"},
    ]
    keys = [key_of(**variant) for variant in variants]
    assert len(set(keys)) == len(variants)


# The first release's key, exactly as it computed it (with the thresholds dataclass's repr).
def first_release_key(parts: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


DEFAULT_COLUMNS = {c: c for c in ("symbol", "ts", "open", "high", "low", "close", "volume")}


def test_legacy_run_key_reproduces_the_first_release_for_nq() -> None:
    settings, task = settings_and_task(
        strength=5,
        anchor="2025-11-30T23:00:00Z",
        bars_table="md.ohlcv_1m",
        columns={"ts": "time"},
        ts_convention="close",  # full hygiene by default
        events_table="analytics.triangle_events",
        purge=True,
        chunk_events=1000,
    )
    parts = {
        "symbol": "GLBX.MDP3:NQ",
        "strength": 5,
        "range": ["2025-12-02T00:00:00+00:00", "2025-12-03T00:00:00+00:00"],
        "anchor": "2025-11-30T23:00:00+00:00",
        "bars": ["md.ohlcv_1m", sorted((DEFAULT_COLUMNS | {"ts": "time"}).items())],
        "ts": ["close", 60.0],
        "hygiene": [
            "full",
            "Thresholds(min_price=1000.0, discontinuity=500.0, small_range=5.0, big_gap=150.0, "
            "flat_gap=50.0, reference_window=7)",
        ],
        "events": "analytics.triangle_events",
        "write": ["replace", True, 1000],
    }
    fields = run_key_fields(settings, task, 5)
    assert legacy_run_key(fields) == first_release_key(parts)
    assert run_key(fields) != legacy_run_key(fields)  # the current key is versioned


def test_legacy_run_key_reproduces_the_first_release_without_a_profile() -> None:
    settings, task = settings_and_task(
        symbol="GLBX.MDP3:ES",
        start="2025-01-01",
        end="2025-01-31",
        strength=3,
        bar_interval="5m",
        mode="append",
    )
    parts = {
        "symbol": "GLBX.MDP3:ES",
        "strength": 3,
        "range": ["2025-01-01T00:00:00+00:00", "2025-02-01T00:00:00+00:00"],
        "anchor": "2024-12-25T00:00:00+00:00",
        "bars": ["bars_1m", sorted(DEFAULT_COLUMNS.items())],
        "ts": ["open", 300.0],
        "hygiene": [
            "basic",
            "Thresholds(min_price=0.0, discontinuity=None, small_range=None, big_gap=None, "
            "flat_gap=None, reference_window=7)",
        ],
        "events": "triangle_events",
        "write": ["append", False, 50000],
    }
    assert legacy_run_key(run_key_fields(settings, task, 3)) == first_release_key(parts)
