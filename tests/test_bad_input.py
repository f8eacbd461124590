"""Bad input catalogue: every case exits with its code (docs/contract.md#exit-codes) and one line naming the problem.

Each case asserts the exit code, exactly one line on stderr that names the problem, no traceback,
nothing on stdout, and that nothing was written (the test's events schema stays empty, or an
existing table keeps its rows; after SQL-injection attempts the bars table still holds all its
rows). The cases of ``tests/test_cli.py`` are not repeated here.

Most cases run the ``triangles`` command line in-process (:func:`invoke`: the console script's own
path, without the ~0.6 s start-up of a new interpreter), which keeps the catalogue fast.
The cases where the process matters (database URLs, passwords, connection failures) and the
backfill under a symbol full of SQL run the real console script (:func:`tests.helpers.run_cli`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import polars as pl
import pytest

from tests.helpers import NQ, Db, InProcessOutcome, Server, assert_one_line_error, run_cli, run_cli_in_process

DAY = "2025-11-03"


def invoke(*args: str) -> InProcessOutcome:
    """``triangles backfill ARGS`` in-process, through the console script's own path."""
    return run_cli_in_process("backfill", *args)


@pytest.fixture(scope="module")
def bars_db(pg: Server, nq_bars: pl.DataFrame) -> Iterator[Db]:
    """A schema of the module's own holding NQ bars around 2025-11-03 (read-only for the tests)."""
    schema = f"bars_{uuid.uuid4().hex[:10]}"
    pg.execute(f"CREATE SCHEMA {schema}")
    shared = Db(pg, schema)
    shared.load(
        nq_bars.filter(
            pl.col("ts").is_between(
                pl.datetime(2025, 10, 26, time_zone="UTC"),
                pl.datetime(2025, 11, 5, time_zone="UTC"),
                closed="left",
            )
        )
    )
    yield shared
    pg.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(scope="module")
def quiet_db(pg: Server) -> Iterator[Db]:
    """An events schema shared by the cases that fail before any connection: it must stay empty."""
    schema = f"quiet_{uuid.uuid4().hex[:10]}"
    pg.execute(f"CREATE SCHEMA {schema}")
    yield Db(pg, schema)
    pg.execute(f"DROP SCHEMA {schema} CASCADE")


def bar_count(db: Db) -> int:
    return db.execute(f"SELECT count(*) FROM {db.bars_table}")[0][0]


def tables_in(db: Db) -> set[str]:
    rows = db.execute("SELECT tablename FROM pg_tables WHERE schemaname = $1", (db.schema,))
    return {row[0] for row in rows}


def args_for(db: Db, bars: Db, *extra: str) -> list[str]:
    """Connection and table options: bars from ``bars``, events into ``db``'s schema."""
    return [
        "--database-url",
        db.url,
        "--bars-table",
        bars.bars_table,
        "--events-table",
        db.events_table,
        *extra,
    ]


# ---------------------------------------------------------------------------- arguments


ARGUMENT_CASES = {
    "malformed positional ANCHOR": (
        [NQ, DAY, DAY, "5", "last-tuesday"],
        ["malformed ANCHOR", "last-tuesday"],
    ),
    "malformed --anchor date": ([NQ, DAY, DAY, "--anchor", "2025-11-31"], ["malformed ANCHOR", "2025-11-31"]),
    "malformed --anchor timestamp": (
        [NQ, DAY, DAY, "--anchor", "2025-11-01T25:00:00Z"],
        ["malformed ANCHOR", "2025-11-01T25:00:00Z"],
    ),
    "strength absurdly large": ([NQ, DAY, DAY, "100000"], ["strength 100000", "between 1"]),
    "--strength absurdly large": ([NQ, DAY, DAY, "--strength", "1000000"], ["strength 1000000", "between 1"]),
    "empty SYMBOL": (["", DAY, DAY], ["SYMBOL", "non-empty"]),
    "blank SYMBOL": (["   ", DAY, DAY], ["SYMBOL", "non-empty"]),
    "END timestamp before START": (
        [NQ, DAY, "2025-11-02T12:00:00Z"],
        ["END 2025-11-02T12:00:00Z", "before START"],
    ),
    "END timestamp equal to START timestamp": (
        [NQ, "2025-11-03T10:00:00Z", "2025-11-03T10:00:00+00:00"],
        ["END", "START", "nothing to do"],
    ),
    "--columns unknown logical name": (
        [NQ, DAY, DAY, "--columns", "price=px"],
        ["unknown bar column", "price"],
    ),
    "--columns without logical=actual": (
        [NQ, DAY, DAY, "--columns", "ts"],
        ["bad --columns", "logical=actual"],
    ),
    "--columns SQL in a column name": (
        [NQ, DAY, DAY, "--columns", 'ts=ts"; DROP TABLE bars_1m; --'],
        ["bad column name for ts"],
    ),
    "--reference-window 0": ([NQ, DAY, DAY, "--reference-window", "0"], ["reference_window", ">= 1"]),
    "negative --min-price": ([NQ, DAY, DAY, "--min-price", "-1"], ["min_price", ">= 0"]),
    "negative --big-gap": ([NQ, DAY, DAY, "--hygiene", "full", "--big-gap", "-150"], ["big_gap", ">= 0"]),
    "NaN --flat-gap": ([NQ, DAY, DAY, "--hygiene", "full", "--flat-gap", "nan"], ["flat_gap", "finite"]),
    "negative --max-retries": ([NQ, DAY, DAY, "--max-retries", "-1"], ["max-retries", ">= 0"]),
    "negative --backoff": ([NQ, DAY, DAY, "--backoff", "-1"], ["backoff"]),
    "zero --bar-interval": ([NQ, DAY, DAY, "--bar-interval", "0m"], ["bar interval", "positive"]),
}


@pytest.mark.parametrize(("args", "needles"), ARGUMENT_CASES.values(), ids=ARGUMENT_CASES.keys())
def test_bad_arguments(quiet_db: Db, bars_db: Db, args: list[str], needles: list[str]) -> None:
    assert_one_line_error(invoke(*args, *args_for(quiet_db, bars_db)), 2, *needles)
    assert tables_in(quiet_db) == set()


USAGE_CASES = {
    "--strength not a number": ([NQ, DAY, DAY, "--strength", "five"], ["strength", "'five'", "3,5,8"]),
    "STRENGTH not a number": ([NQ, DAY, DAY, "five"], ["strength", "'five'", "3,5,8"]),
    "unknown option": ([NQ, DAY, DAY, "--bogus"], ["--bogus"]),
    "END missing": ([NQ, DAY], ["missing", "end"]),
}


@pytest.mark.parametrize(("args", "needles"), USAGE_CASES.values(), ids=USAGE_CASES.keys())
def test_usage_errors(quiet_db: Db, bars_db: Db, args: list[str], needles: list[str]) -> None:
    """Errors of the command-line parser itself (the real console script: its entry point may format them)."""
    assert_one_line_error(run_cli("backfill", *args, *args_for(quiet_db, bars_db)), 2, *needles)
    assert tables_in(quiet_db) == set()


# ---------------------------------------------------------------------------- table names


INJECTION_CASES = {
    # {bars} is the real bars table, which must survive every attempt
    "bars table with ; DROP TABLE": ("--bars-table", "{bars}; DROP TABLE {bars}", "bad bars table name"),
    "bars table with a comment": ("--bars-table", "{bars} --", "bad bars table name"),
    "bars table 3-part name": ("--bars-table", "postgres.{bars}", "bad bars table name"),
    "bars table empty": ("--bars-table", "", "bad bars table name"),
    "events table with quote": ("--events-table", 'e"; DROP', "bad events table name"),
    "events table with ; DROP TABLE": (
        "--events-table",
        'x"; DROP TABLE {bars}; --',
        "bad events table name",
    ),
    "events table 3-part name": ("--events-table", "a.{bars}", "bad events table name"),
    "events table name over 63 characters": ("--events-table", "e" * 64, "bad events table name"),
}


@pytest.mark.parametrize(("option", "value", "needle"), INJECTION_CASES.values(), ids=INJECTION_CASES.keys())
def test_table_names_that_try_to_inject_sql(
    quiet_db: Db, bars_db: Db, option: str, value: str, needle: str
) -> None:
    before = bar_count(bars_db)
    result = invoke(NQ, DAY, DAY, *args_for(quiet_db, bars_db), option, value.format(bars=bars_db.bars_table))
    assert_one_line_error(result, 2, needle)
    assert bar_count(bars_db) == before > 0
    assert tables_in(bars_db) == {"bars_1m"}
    assert tables_in(quiet_db) == set()


# ---------------------------------------------------------------------------- config files


CONFIG_CASES = {
    "key defined twice": ("[instruments.NQ]\nmin_price = 1000\nmin_price = 900\n", ["not valid TOML"]),
    "table defined twice": (
        "[instruments.NQ]\nmin_price = 1000\n[instruments.NQ]\ndiscontinuity = 500\n",
        ["not valid TOML"],
    ),
    "negative threshold": ("[instruments.NQ]\ndiscontinuity = -500\n", ["discontinuity", ">= 0"]),
    "reference_window 0": ("[instruments.NQ]\nreference_window = 0\n", ["reference_window", ">= 1"]),
    "reference_window fractional": (
        "[instruments.NQ]\nreference_window = 2.5\n",
        ["reference_window", "whole"],
    ),
    "threshold as a string": ('[instruments.NQ]\nmin_price = "1000"\n', ["min_price", "number"]),
    "infinite threshold": ("[instruments.NQ]\nbig_gap = inf\n", ["big_gap", "finite"]),
    "unknown section": ("[instrument.NQ]\nmin_price = 1000\n", ["unknown section", "instrument"]),
    "instruments not a table": ("instruments = 5\n", ["instruments", "must be a table"]),
}


@pytest.mark.parametrize(("text", "needles"), CONFIG_CASES.values(), ids=CONFIG_CASES.keys())
def test_bad_config_file(quiet_db: Db, bars_db: Db, tmp_path: Path, text: str, needles: list[str]) -> None:
    config = tmp_path / "thresholds.toml"
    config.write_text(text)
    result = invoke(NQ, DAY, DAY, "--config", str(config), *args_for(quiet_db, bars_db))
    assert_one_line_error(result, 2, str(config), *needles)
    assert tables_in(quiet_db) == set()


def test_config_file_not_found(quiet_db: Db, bars_db: Db, tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    result = invoke(NQ, DAY, DAY, "--config", str(missing), *args_for(quiet_db, bars_db))
    assert_one_line_error(result, 2, str(missing), "not found")
    assert tables_in(quiet_db) == set()


def test_config_path_is_a_directory(quiet_db: Db, bars_db: Db, tmp_path: Path) -> None:
    result = invoke(NQ, DAY, DAY, "--config", str(tmp_path), *args_for(quiet_db, bars_db))
    assert_one_line_error(result, 2, str(tmp_path), "unreadable")
    assert tables_in(quiet_db) == set()


# ---------------------------------------------------------------------------- bars tables


def copy_bars(db: Db, bars_db: Db, select: str = "*") -> None:
    """``db``'s bars table as ``SELECT select`` of the shared bars (no primary key)."""
    db.execute(f"CREATE TABLE {db.bars_table} AS SELECT {select} FROM {bars_db.bars_table}")


@pytest.mark.parametrize(
    ("select", "needles"),
    [
        ("symbol, ts::text AS ts, open, high, low, close, volume", ["'ts'", "type text", "timestamptz"]),
        ("symbol, ts, open::text AS open, high, low, close, volume", ["'open'", "type text"]),
        ("symbol, ts, open, high, low, close > 0 AS close, volume", ["'close'", "type boolean"]),
        ("1 AS symbol, ts, open, high, low, close, volume", ["'symbol'", "type integer"]),
    ],
    ids=["ts as text", "open as text", "close as boolean", "symbol as integer"],
)
def test_wrong_column_types(db: Db, bars_db: Db, select: str, needles: list[str]) -> None:
    copy_bars(db, bars_db, select)
    assert_one_line_error(invoke(NQ, DAY, DAY, *args_for(db, db)), 2, "bars column", *needles)
    assert tables_in(db) == {"bars_1m"}


def test_duplicate_timestamps_are_a_clear_error(db: Db, bars_db: Db) -> None:
    copy_bars(db, bars_db)  # no primary key: nothing stops a duplicated (symbol, ts)
    first_bar_of_the_us_session = f"SELECT min(ts) FROM {db.bars_table} WHERE ts >= '2025-11-03T14:30:00Z'"
    db.execute(
        f"INSERT INTO {db.bars_table} SELECT * FROM {db.bars_table} WHERE ts = ({first_bar_of_the_us_session})"
    )
    assert_one_line_error(invoke(NQ, DAY, DAY, *args_for(db, db)), 2, "duplicate timestamp", NQ, "14:30")
    assert tables_in(db) == {"bars_1m"}


def test_all_bars_bad(db: Db, bars_db: Db) -> None:
    # NQ prices divided by 100 all fall below the NQ profile's min_price 1000.
    copy_bars(
        db,
        bars_db,
        "symbol, ts, open / 100 AS open, high / 100 AS high, low / 100 AS low, close / 100 AS close, volume",
    )
    assert_one_line_error(invoke(NQ, DAY, DAY, *args_for(db, db)), 2, "failed hygiene", "PRICE_LT_1000", NQ)
    assert tables_in(db) == {"bars_1m"}


def test_nonexistent_schema_in_bars_table(db: Db, bars_db: Db) -> None:
    result = invoke(NQ, DAY, DAY, *args_for(db, bars_db), "--bars-table", "no_such_schema.bars_1m")
    assert_one_line_error(result, 2, "no_such_schema.bars_1m", "does not exist")
    assert tables_in(db) == set()


def test_nonexistent_schema_in_events_table(db: Db, bars_db: Db) -> None:
    result = invoke(NQ, DAY, DAY, *args_for(db, bars_db), "--events-table", "no_such_schema.triangle_events")
    assert_one_line_error(result, 2, "no_such_schema", "does not exist")
    assert db.execute("SELECT to_regnamespace('no_such_schema') IS NULL")[0][0]


# ---------------------------------------------------------------------------- events tables


def test_events_table_with_an_incompatible_schema(db: Db, bars_db: Db) -> None:
    db.execute(f"CREATE TABLE {db.events_table} (id integer PRIMARY KEY, note text)")
    db.execute(f"INSERT INTO {db.events_table} VALUES (1, 'keep me'), (2, 'me too')")
    assert_one_line_error(invoke(NQ, DAY, DAY, *args_for(db, bars_db)), 2, db.events_table, "incompatible")
    assert db.execute(f"SELECT id, note FROM {db.events_table} ORDER BY id") == [
        (1, "keep me"),
        (2, "me too"),
    ]
    assert tables_in(db) == {"triangle_events"}


def test_events_table_that_is_the_bars_table(db: Db, bars_db: Db) -> None:
    before = bar_count(bars_db)
    result = invoke(NQ, DAY, DAY, *args_for(db, bars_db), "--events-table", bars_db.bars_table)
    assert_one_line_error(result, 2, bars_db.bars_table, "incompatible")
    assert bar_count(bars_db) == before
    assert tables_in(bars_db) == {"bars_1m"}


# ---------------------------------------------------------------------------- symbols


def test_symbol_with_quotes_and_semicolons_finds_no_bars(db: Db, bars_db: Db) -> None:
    before = bar_count(bars_db)
    symbol = f"NQ'; DROP TABLE {bars_db.bars_table}; --"
    assert_one_line_error(
        invoke(symbol, DAY, DAY, *args_for(db, bars_db)), 2, "no bars for symbol", "DROP TABLE"
    )
    assert bar_count(bars_db) == before > 0
    assert tables_in(db) == set()


def test_symbol_with_quotes_and_semicolons_is_backfilled(db: Db, bars_db: Db, nq_bars: pl.DataFrame) -> None:
    symbol = "NQ'\"; DROP TABLE bars_1m; --\\"
    week = nq_bars.filter(
        pl.col("ts").is_between(
            pl.datetime(2025, 10, 27, time_zone="UTC"),
            pl.datetime(2025, 11, 4, time_zone="UTC"),
            closed="left",
        )
    )
    db.load(week.with_columns(symbol=pl.lit(symbol)))
    result = run_cli("backfill", symbol, DAY, DAY, "--json", *args_for(db, db))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["symbol"] == symbol and summary["triangles"] > 0
    stored = db.events()
    assert stored["symbol"].unique().to_list() == [symbol]
    assert stored.height == summary["triangles"]
    # the same bars under the plain symbol give the same events
    from triangles_polars.pipeline import backfill

    backfill(
        db.settings(start=DAY, end=DAY, bars_table=bars_db.bars_table, events_table=f"{db.schema}.plain")
    )
    plain = db.events(table="plain")
    assert stored.drop("symbol").equals(plain.drop("symbol"))
    assert bar_count(db) == week.height  # the bars table is untouched


def test_schema_qualified_names_in_two_schemas(db: Db, bars_db: Db) -> None:
    result = invoke(NQ, DAY, DAY, "--json", *args_for(db, bars_db))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["events_table"] == db.events_table
    assert db.events().height == summary["triangles"] > 0
    assert tables_in(db) == {
        "triangle_events",
        "triangles_runs",
        "triangles_progress",
        "triangles_meta",
        "triangles_coverage",
    }
    assert tables_in(bars_db) == {"bars_1m"}  # nothing written next to the bars


# ---------------------------------------------------------------------------- databases


def test_missing_database_exit_3(db: Db, bars_db: Db) -> None:
    url = urlunsplit(urlsplit(db.url)._replace(path="/no_such_db"))
    result = run_cli(
        "backfill", NQ, DAY, DAY, "--database-url", url, "--bars-table", bars_db.bars_table,
        "--events-table", db.events_table, "--max-retries", "1", "--backoff", "0.05",
    )  # fmt: skip
    assert_one_line_error(result, 3, "no_such_db", "does not exist")
    # a missing database is not a dropped connection: no retries, no "unreachable"
    assert "unreachable" not in result.stderr and "retries" not in result.stderr
    assert tables_in(db) == set()


def test_database_url_of_another_kind(db: Db, bars_db: Db) -> None:
    url = "mysql://trader:hunter2-pw@localhost/market"
    result = run_cli(
        "backfill", NQ, DAY, DAY, "--database-url", url, "--bars-table", bars_db.bars_table,
        "--events-table", db.events_table,
    )  # fmt: skip
    assert_one_line_error(result, 2, "bad database URL", "postgresql://")
    assert "hunter2-pw" not in result.stderr
    assert tables_in(db) == set()


# ---------------------------------------------------------------------------- database URLs libpq refuses
#
# URLs that libpq (or connectorx) refuses before connecting are a user mistake: exit 2, one line
# naming what is wrong, the password nowhere (tests/test_security.py proves the password part for
# every command over generated URLs). Nothing listens on port 1, so none of them reaches a server.

URL_CASES = {
    "port not a number": ("postgresql://u:pw-Secret1@127.0.0.1:abc/db", ["bad database URL", "port"]),
    "sslmode=bogus": (
        "postgresql://u:pw-Secret1@127.0.0.1:1/db?sslmode=bogus",
        ["bad database URL", "sslmode"],
    ),
    "unknown option": (
        "postgresql://u:pw-Secret1@127.0.0.1:1/db?frobnicate=1",
        ["bad database URL", "frobnicate"],
    ),
    "raw / in the password": ("postgresql://u:pw/Secret1@127.0.0.1:1/db", ["bad database URL", "port"]),
    "raw @ in the password": ("postgresql://u:pw@Secret1@127.0.0.1:1/db", ["bad database URL", "%40"]),
    "bad percent-encoding": ("postgresql://u:pw%zzSecret1@127.0.0.1:1/db", ["bad database URL", "percent"]),
    "one slash": ("postgres:/u:pw-Secret1@127.0.0.1:1/db", ["bad database URL", "no // after postgres:"]),
    "key=value string": ("host=127.0.0.1 password=pw-Secret1", ["bad database URL", "key=value"]),
}


@pytest.mark.parametrize(("url", "needles"), URL_CASES.values(), ids=URL_CASES.keys())
def test_urls_libpq_refuses_exit_2(url: str, needles: list[str]) -> None:
    result = run_cli_in_process("backfill", NQ, DAY, DAY, "--database-url", url)
    assert_one_line_error(result, 2, *needles)
    assert "Secret1" not in result.stderr


def test_demo_on_an_unreachable_server_exits_3(tmp_path: Path) -> None:
    url = "postgresql://u:pw-Secret1@127.0.0.1:1/db"
    result = run_cli_in_process(
        "demo", "--out", str(tmp_path / "demo"), "--database-url", url, env={"TRIANGLES_MAX_RETRIES": "0"}
    )
    assert_one_line_error(result, 3, "unreachable")
    assert "Secret1" not in result.stderr
    assert not (tmp_path / "demo").exists()


# ---------------------------------------------------------------------------- output paths


def test_output_paths_that_cannot_be_written_exit_2_naming_them(db: Db, bars_db: Db) -> None:
    from triangles_polars.pipeline import backfill

    backfill(db.settings(start=DAY, end=DAY, bars_table=bars_db.bars_table))
    assert db.events().height > 0  # so that export has something to write
    tables = ["--database-url", db.url, "--events-table", db.events_table]
    export = run_cli_in_process("export", NQ, DAY, DAY, "--out", "/proc/triangles-x", *tables)
    assert_one_line_error(export, 2, "/proc/triangles-x")
    assert "unexpected" not in export.stderr
    plot = run_cli_in_process(
        "plot",
        NQ,
        DAY,
        DAY,
        "--out",
        "/proc/triangles-x/chart.png",
        *tables,
        "--bars-table",
        bars_db.bars_table,
    )
    assert_one_line_error(plot, 2, "/proc/triangles-x")  # the folder it could not make
    assert "unexpected" not in plot.stderr
