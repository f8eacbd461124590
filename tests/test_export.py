"""Parquet export (docs/contract.md#triangles-export): hive layout, zstd, the event columns, three readers, idempotent re-export.

Every expectation is derived from the events table in PostgreSQL (or from the range given),
never from the exporter's own output.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from polars.testing import assert_frame_equal

from tests.helpers import NQ, Db, assert_one_line_error, run_cli
from triangles_polars import backfill
from triangles_polars.synthetic import generate_bars

START, END = "2025-11-03", "2025-11-14"  # two weeks inside the six weeks of ``nq_bars``
FIRST_END, SECOND_START = "2025-11-07", "2025-11-08"  # START..FIRST_END, SECOND_START..END

# docs/contract.md#the-events-table, written out here rather than imported from the product.
EVENT_COLUMNS = [
    "symbol",
    "strength",
    "confirmed_at",
    "pattern",
    "a_ts",
    "b_ts",
    "c_ts",
    "a_kind",
    "b_kind",
    "c_kind",
    "a_price",
    "b_price",
    "c_price",
    "leg_ab",
    "leg_bc",
    "bars_ab",
    "bars_bc",
]
FILE_COLUMNS = [c for c in EVENT_COLUMNS if c != "symbol"]  # symbol lives in the partition path
SORT_KEY = ["symbol", "strength", "c_ts", "c_kind"]
TIME_COLUMNS = ["confirmed_at", "a_ts", "b_ts", "c_ts"]


def _utc(day: str) -> datetime:
    return datetime.fromisoformat(day).replace(tzinfo=UTC)


def normalise(frame: pl.DataFrame) -> pl.DataFrame:
    """Event columns only, in one schema (UTC microseconds, wide ints), sorted by the primary key."""
    out = frame.select(EVENT_COLUMNS)
    exprs = []
    for name in TIME_COLUMNS:
        dtype = out.schema[name]
        assert isinstance(dtype, pl.Datetime), f"{name} is {dtype}, not a timestamp"
        col = pl.col(name)
        col = col.dt.replace_time_zone("UTC") if dtype.time_zone is None else col.dt.convert_time_zone("UTC")
        exprs.append(col.dt.cast_time_unit("us"))
    out = out.with_columns(exprs).cast(
        {"symbol": pl.String, "strength": pl.Int64, "bars_ab": pl.Int64, "bars_bc": pl.Int64}
    )
    return out.sort(SORT_KEY)


def db_events(db: Db, symbol: str = NQ, start: str | None = None, end: str | None = None) -> pl.DataFrame:
    """Rows of the events table, optionally those confirmed in START..END (UTC days, inclusive)."""
    where = f"symbol = '{symbol}'"
    if start is not None:
        where += f" AND confirmed_at >= '{start}T00:00:00Z'"
    if end is not None:
        where += f" AND confirmed_at < ('{end}T00:00:00Z'::timestamptz + interval '1 day')"
    return normalise(db.events(where))


def read_duckdb(out: Path) -> pl.DataFrame:
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        pattern = str(out / "**" / "*.parquet").replace("'", "''")
        table = con.sql(f"SELECT * FROM read_parquet('{pattern}', hive_partitioning = true)").to_arrow_table()
    finally:
        con.close()
    return normalise(pl.from_arrow(table))


def read_pyarrow(out: Path) -> pl.DataFrame:
    return normalise(pl.from_arrow(ds.dataset(out, format="parquet", partitioning="hive").to_table()))


def read_polars(out: Path) -> pl.DataFrame:
    return normalise(pl.scan_parquet(out, hive_partitioning=True).collect())


def parquet_files(out: Path) -> list[Path]:
    return sorted(out.rglob("*.parquet"))


def cli_export(db: Db, out: Path, start: str, end: str, symbol: str = NQ) -> None:
    result = run_cli(
        "export",
        symbol,
        start,
        end,
        "--out",
        str(out),
        "--database-url",
        db.url,
        "--events-table",
        db.events_table,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_cli_export_layout_compression_columns_and_readers(db: Db, nq_bars: pl.DataFrame, tmp_path: Path):
    db.load(nq_bars)
    backfill(db.settings(start=START, end=END))
    expected = db_events(db)
    assert expected.height > 100  # a real amount of data to compare
    # the database holds exactly the backfilled range, so the whole table is what export must write
    assert expected["confirmed_at"].min() >= _utc(START)
    assert expected["confirmed_at"].max() < _utc("2025-11-15")

    out = tmp_path / "events"
    cli_export(db, out, START, END)

    # hive layout: out/symbol=…/year=…/*.parquet, one symbol, the years of the rows
    assert sorted(p.name for p in out.iterdir()) == [f"symbol={NQ}"]
    expected_years = sorted(set(expected["confirmed_at"].dt.year().to_list()))
    year_dirs = sorted((out / f"symbol={NQ}").iterdir())
    assert [p.name for p in year_dirs] == [f"year={y}" for y in expected_years]
    files = parquet_files(out)
    assert files and all(f.parent.parent.parent == out for f in files)
    assert not [p for p in out.rglob("*") if p.is_file() and p.suffix != ".parquet"]  # no temp leftovers

    for path in files:
        meta = pq.ParquetFile(path).metadata
        assert meta.num_rows > 0
        codecs = {
            meta.row_group(g).column(c).compression
            for g in range(meta.num_row_groups)
            for c in range(meta.num_columns)
        }
        assert codecs == {"ZSTD"}, f"{path}: {codecs}"
        names = pq.read_schema(path).names
        assert set(FILE_COLUMNS) <= set(names), f"missing {set(FILE_COLUMNS) - set(names)}"
        # each partition holds only rows confirmed in its year
        year = int(path.parent.name.removeprefix("year="))
        years = pl.read_parquet(path, hive_partitioning=False)["confirmed_at"].dt.year().unique().to_list()
        assert years == [year]

    for reader in (read_duckdb, read_pyarrow, read_polars):
        assert_frame_equal(reader(out), expected, check_exact=True)


def test_rerunning_an_export_does_not_duplicate(db: Db, nq_bars: pl.DataFrame, tmp_path: Path):
    db.load(nq_bars)
    backfill(db.settings(start=START, end=END))
    expected = db_events(db)
    out = tmp_path / "events"
    cli_export(db, out, START, END)
    files_first = parquet_files(out)
    cli_export(db, out, START, END)
    assert parquet_files(out) == files_first
    got = read_polars(out)
    assert got.height == expected.height
    assert got.select(SORT_KEY).is_duplicated().sum() == 0
    assert_frame_equal(got, expected)


def test_adjacent_ranges_then_reexport_of_the_first_keeps_the_second(
    db: Db, nq_bars: pl.DataFrame, tmp_path: Path
):
    db.load(nq_bars)
    backfill(db.settings(start=START, end=END))
    first = db_events(db, start=START, end=FIRST_END)
    second = db_events(db, start=SECOND_START, end=END)
    assert first.height > 0 and second.height > 0
    assert first.height + second.height == db_events(db).height  # the two ranges tile the table

    out = tmp_path / "events"
    cli_export(db, out, START, FIRST_END)
    assert_frame_equal(read_duckdb(out), first)
    cli_export(db, out, SECOND_START, END)
    assert_frame_equal(read_duckdb(out), pl.concat([first, second]).sort(SORT_KEY))

    # Change the first range in the database (drop one of its days), then re-export only it:
    # the Parquet copy must follow the database for the first range and keep the second as is.
    db.execute(
        f"DELETE FROM {db.events_table} WHERE confirmed_at >= '2025-11-05T00:00:00Z' "
        "AND confirmed_at < '2025-11-06T00:00:00Z'"
    )
    first_now = db_events(db, start=START, end=FIRST_END)
    assert 0 < first_now.height < first.height
    cli_export(db, out, START, FIRST_END)
    got = read_pyarrow(out)
    assert_frame_equal(got, pl.concat([first_now, second]).sort(SORT_KEY))
    assert_frame_equal(got.filter(pl.col("confirmed_at") >= _utc(SECOND_START)), second)


def test_backfill_export_dir_writes_what_the_database_holds(db: Db, nq_bars: pl.DataFrame, tmp_path: Path):
    db.load(nq_bars)
    out = tmp_path / "from_backfill"
    summary = backfill(db.settings(start=START, end=END, export_dir=out))
    expected = db_events(db)
    assert expected.height == summary.triangles > 0
    assert [p.name for p in out.iterdir()] == [f"symbol={NQ}"]
    for path in parquet_files(out):
        meta = pq.ParquetFile(path).metadata
        assert {meta.row_group(0).column(c).compression for c in range(meta.num_columns)} == {"ZSTD"}
    for reader in (read_duckdb, read_pyarrow, read_polars):
        assert_frame_equal(reader(out), expected)

    # a second identical backfill rewrites the same partitions: still no duplicates
    backfill(db.settings(start=START, end=END, export_dir=out))
    assert_frame_equal(read_polars(out), db_events(db))


def test_range_across_new_year_writes_two_year_partitions(db: Db, tmp_path: Path):
    symbol = "TEST:NY"
    db.load(generate_bars("2024-12-20", "2025-01-10", symbol=symbol, seed=5))
    start, end = "2024-12-27", "2025-01-06"
    backfill(db.settings(symbol=symbol, start=start, end=end))
    expected = db_events(db, symbol=symbol)
    assert sorted(set(expected["confirmed_at"].dt.year().to_list())) == [2024, 2025]

    out = tmp_path / "events"
    cli_export(db, out, start, end, symbol=symbol)
    base = out / f"symbol={symbol}"
    assert sorted(p.name for p in base.iterdir()) == ["year=2024", "year=2025"]
    for year in (2024, 2025):
        part = pl.read_parquet(base / f"year={year}", hive_partitioning=False)
        want = expected.filter(pl.col("confirmed_at").dt.year() == year)
        assert part.height == want.height > 0
        assert part["confirmed_at"].dt.year().unique().to_list() == [year]
    for reader in (read_duckdb, read_pyarrow, read_polars):
        assert_frame_equal(reader(out), expected)


def test_export_says_how_many_with_thousands_separators(db: Db, nq_bars: pl.DataFrame, tmp_path: Path):
    db.load(nq_bars)
    backfill(db.settings(start=START, end=END))
    stored = db_events(db, start=START, end=END).height
    assert stored >= 1000  # enough for a separator
    result = run_cli(
        "export", NQ, START, END, "--out", str(tmp_path / "o"), "--database-url", db.url,
        "--events-table", db.events_table,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"exported {stored:,} events" in result.stdout and result.stderr == ""


def test_export_of_a_holiday_warns_and_exits_0(db: Db, nq_bars: pl.DataFrame, tmp_path: Path):
    """A known symbol and strength whose range holds no events (a Saturday) is not an error."""
    db.load(nq_bars)
    backfill(db.settings(start=START, end=END))
    saturday = "2025-11-08"
    assert db_events(db, start=saturday, end=saturday).height == 0
    out = tmp_path / "o"
    result = run_cli(
        "export", NQ, saturday, saturday, "--out", str(out), "--json", "--database-url", db.url,
        "--events-table", db.events_table,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["events"] == 0
    (warning,) = summary["warnings"]
    assert "no events" in warning and saturday in warning and NQ in warning
    assert "warning:" in result.stderr and "no events" in result.stderr


def test_export_of_an_unknown_symbol_or_strength_exits_2_and_writes_nothing(
    db: Db, nq_bars: pl.DataFrame, tmp_path: Path
):
    db.load(nq_bars)
    backfill(db.settings(start=START, end=END))
    first = db_events(db)["confirmed_at"].min().date().isoformat()
    out = tmp_path / "o"
    for symbol, k in (("GLBX.MDP3:NW", "5"), (NQ, "6")):
        result = run_cli(
            "export", symbol, START, END, "-k", k, "--out", str(out), "--database-url", db.url,
            "--events-table", db.events_table,
        )  # fmt: skip
        assert_one_line_error(result, 2, f"no events for {symbol} k={k}", f"{NQ} (k=5, {first} →")
    assert not out.exists()
