"""``triangles bars load`` (docs/contract.md#bars): CSV/Parquet round trips, options, and bad files.

Files are written from ``generate_bars`` frames; the table is read back with SQL and compared
with the frame the file was written from. Bad files must exit 2 with one clear line on stderr
and load nothing.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from tests.conftest import Db, run_cli
from triangles_polars.db import connect
from triangles_polars.synthetic import generate_bars

BAR_COLUMNS = ["symbol", "ts", "open", "high", "low", "close", "volume"]
SYMBOL = "TEST:LD"


@pytest.fixture(scope="module")
def bars() -> pl.DataFrame:
    """Two days of 1-minute bars (a few thousand rows)."""
    frame = generate_bars("2025-11-04", "2025-11-05", symbol=SYMBOL, seed=3)
    assert frame.height > 2000
    return frame


def load(db: Db, path: Path, *extra: str):
    return run_cli("bars", "load", str(path), "--bars-table", db.bars_table, "--database-url", db.url, *extra)


def table_rows(db: Db) -> pl.DataFrame:
    conn = connect(db.url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                f"SELECT symbol, ts, open, high, low, close, volume FROM {db.bars_table} ORDER BY symbol, ts"
            )
            frame = pl.from_arrow(cur.fetch_arrow_table())
    finally:
        conn.close()
    return frame.with_columns(pl.col("ts").dt.convert_time_zone("UTC").dt.cast_time_unit("us"))


def table_exists(db: Db) -> bool:
    return db.execute("SELECT to_regclass($1) IS NOT NULL", (db.bars_table,))[0][0]


def row_count(db: Db) -> int:
    return db.execute(f"SELECT count(*) FROM {db.bars_table}")[0][0]


def assert_ok(result) -> None:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def assert_rejected(result, *words: str) -> str:
    """Exit 2, no traceback, a single line on stderr that mentions each of ``words``."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    message = result.stderr.strip()
    assert message and "\n" not in message, repr(result.stderr)
    for word in words:
        assert word.lower() in message.lower(), f"{word!r} not in {message!r}"
    return message


# ----------------------------------------------------------------------------- round trips


def test_csv_round_trip(db: Db, bars: pl.DataFrame, tmp_path: Path):
    path = tmp_path / "bars.csv"
    bars.write_csv(path)
    result = load(db, path)
    assert_ok(result)
    assert f"{bars.height:,}" in result.stdout or str(bars.height) in result.stdout
    assert_frame_equal(table_rows(db), bars.sort("symbol", "ts"), check_exact=True)


def test_parquet_round_trip_and_primary_key(db: Db, bars: pl.DataFrame, tmp_path: Path):
    path = tmp_path / "bars.parquet"
    bars.write_parquet(path)
    assert not table_exists(db)
    assert_ok(load(db, path))
    assert_frame_equal(table_rows(db), bars.sort("symbol", "ts"), check_exact=True)

    schema, table = db.bars_table.split(".")
    pk = db.execute(
        "SELECT k.column_name FROM information_schema.table_constraints c "
        "JOIN information_schema.key_column_usage k ON k.constraint_schema = c.constraint_schema "
        "AND k.constraint_name = c.constraint_name "
        "WHERE c.table_schema = $1 AND c.table_name = $2 AND c.constraint_type = 'PRIMARY KEY' "
        "ORDER BY k.ordinal_position",
        (schema, table),
    )
    assert [r[0] for r in pk] == ["symbol", "ts"]
    # the types of docs/contract.md#bars
    types = dict(
        db.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = $1 AND table_name = $2",
            (schema, table),
        )
    )
    assert types["ts"] == "timestamp with time zone"
    assert types["symbol"] == "text"
    assert types["volume"] == "bigint"


def test_naive_parquet_timestamps_are_utc_and_a_second_symbol_appends(
    db: Db, bars: pl.DataFrame, tmp_path: Path
):
    db.load(bars)
    other = bars.with_columns(pl.lit("TEST:OTHER").alias("symbol"))
    naive = tmp_path / "naive.parquet"
    other.with_columns(pl.col("ts").dt.replace_time_zone(None)).write_parquet(naive)
    assert_ok(load(db, naive))
    assert row_count(db) == 2 * bars.height
    assert_frame_equal(table_rows(db), pl.concat([bars, other]).sort("symbol", "ts"), check_exact=True)


def test_csv_without_symbol_column_takes_symbol_option(db: Db, bars: pl.DataFrame, tmp_path: Path):
    path = tmp_path / "nosymbol.csv"
    bars.drop("symbol").write_csv(path)
    assert_ok(load(db, path, "--symbol", "TEST:GIVEN"))
    expected = bars.with_columns(pl.lit("TEST:GIVEN").alias("symbol")).sort("symbol", "ts")
    assert_frame_equal(table_rows(db), expected, check_exact=True)


def test_columns_mapping(db: Db, bars: pl.DataFrame, tmp_path: Path):
    path = tmp_path / "mapped.csv"
    bars.rename({"ts": "time", "open": "o", "volume": "vol"}).write_csv(path)
    assert_ok(load(db, path, "--columns", "ts=time,open=o,volume=vol"))
    assert_frame_equal(table_rows(db), bars.sort("symbol", "ts"), check_exact=True)


def test_ts_convention_close_shifts_back_by_the_interval(db: Db, tmp_path: Path):
    five = generate_bars("2025-11-04", "2025-11-05", symbol=SYMBOL, seed=4, bar_interval_minutes=5)
    path = tmp_path / "close5m.csv"
    # the file holds close times: open time + 5 minutes
    five.with_columns(pl.col("ts") + timedelta(minutes=5)).write_csv(path)
    assert_ok(load(db, path, "--ts-convention", "close", "--bar-interval", "5m"))
    assert_frame_equal(table_rows(db), five.sort("symbol", "ts"), check_exact=True)


def test_csv_timestamps_with_offsets_are_converted_to_utc(db: Db, tmp_path: Path):
    path = tmp_path / "offsets.csv"
    path.write_text(
        "symbol,ts,open,high,low,close,volume\n"
        "TEST:TZ,2025-11-04T09:30:00-05:00,100,101,99,100.5,7\n"
        "TEST:TZ,2025-11-04T14:31:00Z,100.5,102,100,101,8\n"
    )
    assert_ok(load(db, path))
    got = db.execute(
        f"SELECT to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') FROM {db.bars_table} ORDER BY ts"
    )
    assert [r[0] for r in got] == ["2025-11-04 14:30", "2025-11-04 14:31"]


# ----------------------------------------------------------------------------- bad files


def _write_missing_column(path: Path, bars: pl.DataFrame) -> Path:
    path = path.with_suffix(".csv")
    bars.drop("high").write_csv(path)
    return path


def _write_bad_timestamps(path: Path, bars: pl.DataFrame) -> Path:
    path = path.with_suffix(".csv")
    frame = bars.head(50).with_columns(pl.col("ts").dt.to_string("%Y-%m-%dT%H:%M:%SZ"))
    frame = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 25).then(pl.lit("not a time")).otherwise(pl.col("ts")).alias("ts")
    )
    frame.write_csv(path)
    return path


def _write_duplicate_keys(path: Path, bars: pl.DataFrame) -> Path:
    path = path.with_suffix(".parquet")
    pl.concat([bars.head(100), bars.slice(40, 1)]).write_parquet(path)
    return path


def _write_bad_number(path: Path, bars: pl.DataFrame) -> Path:
    path = path.with_suffix(".csv")
    frame = bars.head(50).with_columns(pl.col("open").cast(pl.String))
    frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 10).then(pl.lit("abc")).otherwise(pl.col("open")).alias("open")
    ).write_csv(path)
    return path


def _write_unknown_extension(path: Path, bars: pl.DataFrame) -> Path:
    path = path.with_suffix(".json")
    bars.head(10).write_json(path)
    return path


def _no_file(path: Path, bars: pl.DataFrame) -> Path:
    return path.with_name("does_not_exist.csv")


BAD_FILES = {
    # case: (writer, words the message must contain ("{name}": the file's name), table loaded before)
    "missing column": (_write_missing_column, ["missing", "high"], False),
    "unparsable timestamps": (_write_bad_timestamps, ["timestamp", "ts"], True),
    "duplicate keys in file": (_write_duplicate_keys, ["(symbol, ts)"], False),
    "non-numeric price": (_write_bad_number, ["{name}"], True),
    "unknown extension": (_write_unknown_extension, [".json", "{name}"], False),
    "file not found": (_no_file, ["not found", "{name}"], True),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_exits_2_and_loads_nothing(db: Db, bars: pl.DataFrame, tmp_path: Path, case: str):
    writer, words, preload = BAD_FILES[case]
    path = writer(tmp_path / "bad", bars)
    before = bars.tail(30)  # bars of the same symbol, none of them in the bad files
    if preload:
        db.load(before)
    assert_rejected(load(db, path), *(w.replace("{name}", path.name) for w in words))
    if preload:
        assert_frame_equal(table_rows(db), before, check_exact=True)
    else:
        assert not table_exists(db), "a failed first load must not leave a table behind"


def test_loading_the_same_file_twice_fails_and_keeps_the_count(db: Db, bars: pl.DataFrame, tmp_path: Path):
    path = tmp_path / "bars.csv"
    bars.write_csv(path)
    assert_ok(load(db, path))
    assert row_count(db) == bars.height
    assert_rejected(load(db, path), "already")
    assert row_count(db) == bars.height


def test_a_file_overlapping_the_table_by_one_key_loads_nothing(db: Db, bars: pl.DataFrame, tmp_path: Path):
    half = bars.height // 2
    first, rest = tmp_path / "first.parquet", tmp_path / "rest.parquet"
    bars.head(half).write_parquet(first)
    bars.slice(half - 1).write_parquet(rest)  # the rest plus the last bar already loaded
    assert_ok(load(db, first))
    assert_rejected(load(db, rest), "already")
    assert row_count(db) == half
    assert_frame_equal(table_rows(db), bars.head(half), check_exact=True)
