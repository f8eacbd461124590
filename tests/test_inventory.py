"""What the tables hold (docs/contract.md#triangles-bars-list-and-triangles-events-list), and the
"no bars" / "no events" errors that name it (docs/contract.md#empty-results-speak).

Expected figures come from SQL over the test's own tables (count, min, max), never from the
product's inventory functions.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.helpers import NQ, Db, assert_one_line_error, run_cli
from triangles_polars import backfill
from triangles_polars.catalog import loose_index_scan
from triangles_polars.db import connect, qualified
from triangles_polars.synthetic import generate_bars

ES = "GLBX.MDP3:ES"
START, END = "2025-11-03", "2025-11-07"


@pytest.fixture()
def stocked(db: Db) -> Db:
    """Two symbols of bars (NQ over two weeks, ES over one), events of NQ at k=5 and k=8, ES at k=5."""
    db.load(generate_bars("2025-10-27", "2025-11-09", symbol=NQ, seed=3))
    db.load(generate_bars("2025-10-27", "2025-11-02", symbol=ES, seed=4))
    backfill(db.settings(symbol=NQ, start=START, end=END, strength="5,8"))
    backfill(db.settings(symbol=ES, start="2025-10-29", end="2025-11-02"))
    return db


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def sql_bars(db: Db, symbol: str) -> tuple[datetime, datetime, int]:
    first, last, n = db.execute(
        f"SELECT min(ts), max(ts), count(*) FROM {db.bars_table} WHERE symbol = $1", (symbol,)
    )[0]
    return _utc(first), _utc(last), int(n)


def sql_events(db: Db, symbol: str, k: int) -> tuple[datetime, datetime, int]:
    first, last, n = db.execute(
        f"SELECT min(confirmed_at), max(confirmed_at), count(*) FROM {db.events_table} "
        "WHERE symbol = $1 AND strength = $2",
        (symbol, k),
    )[0]
    return _utc(first), _utc(last), int(n)


def _day(value: datetime) -> str:
    return value.date().isoformat()


# ---------------------------------------------------------------------------- the list commands


def test_bars_list_json_matches_the_table(stocked: Db) -> None:
    result = run_cli(
        "bars", "list", "--json", "--database-url", stocked.url, "--bars-table", stocked.bars_table
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["bars_table"] == stocked.bars_table
    assert [s["symbol"] for s in out["symbols"]] == sorted([ES, NQ])
    for row in out["symbols"]:
        first, last, n = sql_bars(stocked, row["symbol"])
        assert datetime.fromisoformat(row["first_bar"]) == first
        assert datetime.fromisoformat(row["last_bar"]) == last
        assert row["bars"] == n > 0


def test_bars_list_human_table_with_a_pattern(stocked: Db) -> None:
    result = run_cli(
        "bars", "list", "*:NQ", "--database-url", stocked.url, "--bars-table", stocked.bars_table
    )
    assert result.returncode == 0, result.stderr
    first, last, n = sql_bars(stocked, NQ)
    assert ES not in result.stdout
    row = next(line for line in result.stdout.splitlines() if line.startswith(NQ))
    assert first.strftime("%Y-%m-%d %H:%M") in row and last.strftime("%Y-%m-%d %H:%M") in row
    assert f"{n:,}" in row and "," in f"{n:,}"  # thousands separators
    none = run_cli(
        "bars", "list", "CL*", "--json", "--database-url", stocked.url, "--bars-table", stocked.bars_table
    )
    assert none.returncode == 0 and json.loads(none.stdout)["symbols"] == []


def test_events_list_json_and_human(stocked: Db) -> None:
    args = ["--database-url", stocked.url, "--events-table", stocked.events_table]
    result = run_cli("events", "list", "--json", *args)
    assert result.returncode == 0, result.stderr
    series = json.loads(result.stdout)["series"]
    assert [(s["symbol"], s["strength"]) for s in series] == [(ES, 5), (NQ, 5), (NQ, 8)]
    for row in series:
        first, last, n = sql_events(stocked, row["symbol"], row["strength"])
        assert datetime.fromisoformat(row["first_confirmed_at"]) == first
        assert datetime.fromisoformat(row["last_confirmed_at"]) == last
        assert row["events"] == n > 0
    human = run_cli("events", "list", NQ, *args)
    assert human.returncode == 0, human.stderr
    rows = [line.split() for line in human.stdout.splitlines() if line.startswith(NQ)]
    assert [(r[0], r[1]) for r in rows] == [(NQ, "5"), (NQ, "8")]
    assert rows[1][-1] == f"{sql_events(stocked, NQ, 8)[2]:,}"


def test_list_commands_on_a_missing_table_exit_2(db: Db) -> None:
    assert_one_line_error(
        run_cli("bars", "list", "--database-url", db.url, "--bars-table", db.bars_table), 2, "does not exist"
    )
    assert_one_line_error(
        run_cli("events", "list", "--database-url", db.url, "--events-table", db.events_table),
        2,
        "does not exist",
        "backfill",
    )


def test_loose_index_scan_finds_every_distinct_value(stocked: Db) -> None:
    """The walk of the index returns what SELECT DISTINCT would (symbols, and strengths per symbol)."""
    conn = connect(stocked.url)
    try:
        with conn.cursor() as cur:
            table = qualified(stocked.schema, "triangle_events")
            symbols = loose_index_scan(cur, table, "symbol")
            strengths = loose_index_scan(cur, table, "strength", "symbol = $1", (NQ,))
    finally:
        conn.close()
    expected = stocked.execute(f"SELECT DISTINCT symbol FROM {stocked.events_table} ORDER BY 1")
    assert symbols == [r[0] for r in expected] == [ES, NQ]
    assert strengths == [5, 8]


# ---------------------------------------------------------------------------- errors that name what exists


def test_plot_of_an_unknown_symbol_or_strength_exits_2(stocked: Db, tmp_path: Path) -> None:
    args = [
        "--database-url", stocked.url, "--bars-table", stocked.bars_table,
        "--events-table", stocked.events_table,
    ]  # fmt: skip
    first, last, _ = sql_bars(stocked, ES)
    chart = tmp_path / "c.png"
    unknown = run_cli("plot", "GLBX.MDP3:NW", START, START, "--out", str(chart), *args)
    assert_one_line_error(unknown, 2, "no bars for symbol", f"{ES} ({_day(first)} → {_day(last)})")
    no_events = run_cli("plot", NQ, START, START, "-k", "9", "--out", str(chart), *args)
    assert_one_line_error(no_events, 2, f"no events for {NQ} k=9", "backfill", "symbols with events")
    assert not chart.exists()


def test_backfill_of_an_unknown_symbol_names_the_symbols_with_bars(stocked: Db) -> None:
    first, last, _ = sql_bars(stocked, NQ)
    args = [
        "--database-url",
        stocked.url,
        "--bars-table",
        stocked.bars_table,
        "--events-table",
        stocked.events_table,
    ]
    result = run_cli("backfill", "GLBX.MDP3:NW", START, END, *args)
    assert_one_line_error(result, 2, "no bars for symbol", f"{NQ} ({_day(first)} → {_day(last)})")


def test_plot_of_a_holiday_draws_and_warns(stocked: Db, tmp_path: Path) -> None:
    chart = tmp_path / "saturday.png"
    saturday = "2025-11-01"  # the Globex calendar has no bars on a Saturday
    assert (
        stocked.execute(
            f"SELECT count(*) FROM {stocked.bars_table} WHERE symbol = $1 AND ts >= '{saturday}' "
            f"AND ts < '{saturday}'::timestamptz + interval '1 day'",
            (NQ,),
        )[0][0]
        == 0
    )
    result = run_cli(
        "plot", NQ, saturday, saturday, "--out", str(chart), "--database-url", stocked.url,
        "--bars-table", stocked.bars_table, "--events-table", stocked.events_table,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "warning" in result.stderr and "no bars between" in result.stderr
    assert chart.stat().st_size > 0


def test_inventory_reads_a_naive_timestamp_column_as_utc(db: Db) -> None:
    db.execute(
        f"CREATE TABLE {db.bars_table} (symbol text, ts timestamp, open float8, high float8, low float8, "
        "close float8, volume bigint, PRIMARY KEY (symbol, ts))"
    )
    db.execute(f"INSERT INTO {db.bars_table} VALUES ('X', '2025-01-02 14:30', 1, 2, 0.5, 1.5, 1)")
    from triangles_polars.inventory import list_bars

    (only,) = list_bars(database_url=db.url, bars_table=db.bars_table)
    assert only.first_bar == only.last_bar == datetime(2025, 1, 2, 14, 30, tzinfo=UTC) and only.bars == 1
