"""``triangles bars load`` (docs/contract.md#bar-files-triangles-bars-load): CSV/Parquet round trips,
options, idempotent reloads, streaming in batches, and bad files.

Files are written from ``generate_bars`` frames; the table is read back with SQL and compared
with the frame the file was written from. Bad files must exit 2 with one clear line on stderr
and leave the bars table as it was (compared row for row before and after). DBN files are in
``tests/test_dbn_load.py``.
"""

from __future__ import annotations

import gzip
import json
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from tests.helpers import Db, run_cli
from triangles_polars.db import connect
from triangles_polars.errors import BadInput
from triangles_polars.loading import load_bars
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


def _write_no_header(path: Path, bars: pl.DataFrame) -> Path:
    path = path.with_suffix(".csv")
    bars.head(20).write_csv(path, include_header=False)
    return path


def _write_without_close(path: Path, bars: pl.DataFrame) -> Path:
    path = path.with_suffix(".csv")
    bars.drop("close").write_csv(path)
    return path


def _write_empty(path: Path, bars: pl.DataFrame) -> Path:
    path = path.with_suffix(".csv")
    path.write_bytes(b"")
    return path


def _write_text_prices(path: Path, bars: pl.DataFrame) -> Path:
    path = path.with_suffix(".parquet")
    bars.head(50).with_columns(pl.col("high").cast(pl.String)).write_parquet(path)
    return path


def _write_not_parquet(path: Path, bars: pl.DataFrame) -> Path:
    path = path.with_suffix(".parquet")
    path.write_text("symbol,ts\nTEST:LD,2025-11-04T00:00:00Z\n")
    return path


BAD_FILES = {
    # case: (writer, words the message must contain ("{name}": the file's name), table loaded before)
    "csv without a header": (_write_no_header, ["no header", "{name}"], True),
    "csv without close": (_write_without_close, ["missing", "close"], True),
    "0-byte file": (_write_empty, ["empty", "0 bytes", "{name}"], True),
    "parquet with text in high": (_write_text_prices, ["'high'", "number", "{name}"], True),
    "not parquet": (_write_not_parquet, ["unreadable", "{name}"], True),
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


# ----------------------------------------------------------------------------- idempotent, all or nothing


def test_loading_the_same_file_twice_leaves_the_same_rows(db: Db, bars: pl.DataFrame, tmp_path: Path):
    path = tmp_path / "bars.csv"
    bars.write_csv(path)
    assert_ok(load(db, path))
    first = table_rows(db)
    again = load(db, path, "--json")
    assert_ok(again)
    assert json.loads(again.stdout)["bars_loaded"] == bars.height
    assert_frame_equal(table_rows(db), first, check_exact=True)
    assert_frame_equal(first, bars.sort("symbol", "ts"), check_exact=True)


def test_an_overlapping_file_updates_the_keys_it_shares(db: Db, bars: pl.DataFrame, tmp_path: Path):
    half = bars.height // 2
    first, rest = tmp_path / "first.parquet", tmp_path / "rest.parquet"
    bars.head(half).write_parquet(first)
    # The rest, plus the last bar already loaded, corrected (a vendor's late fix).
    fixed = bars.slice(half - 1).with_columns(
        pl.when(pl.int_range(pl.len()) == 0)
        .then(pl.col("close") + 0.25)
        .otherwise(pl.col("close"))
        .alias("close"),
        pl.when(pl.int_range(pl.len()) == 0)
        .then(pl.col("high") + 0.25)
        .otherwise(pl.col("high"))
        .alias("high"),
    )
    fixed.write_parquet(rest)
    assert_ok(load(db, first))
    assert_ok(load(db, rest))
    assert row_count(db) == bars.height
    expected = pl.concat([bars.head(half - 1), fixed])
    assert_frame_equal(table_rows(db), expected, check_exact=True)


def test_a_bad_file_after_a_good_one_loads_nothing(db: Db, bars: pl.DataFrame, tmp_path: Path):
    """The good file is staged in full before the bad one fails: the transaction drops it all."""
    before = bars.tail(30)
    db.load(before)
    good = tmp_path / "good.csv"
    bars.head(1000).write_csv(good)
    bad = _write_bad_timestamps(tmp_path / "bad", bars.slice(1000))
    assert_rejected(load(db, good, str(bad)), "timestamp", bad.name)
    assert_frame_equal(table_rows(db), before, check_exact=True)


def test_header_only_csv_loads_nothing_with_a_warning(db: Db, bars: pl.DataFrame, tmp_path: Path):
    path = tmp_path / "header.csv"
    bars.head(0).write_csv(path)
    result = load(db, path, "--json")
    assert_ok(result)
    out = json.loads(result.stdout)
    assert out["bars_loaded"] == 0 and out["symbols"] == []
    assert (
        len(out["warnings"]) == 1 and "header.csv" in out["warnings"][0] and "no bars" in out["warnings"][0]
    )
    assert "warning" in result.stderr and "header.csv" in result.stderr
    assert not table_exists(db), "loading nothing creates nothing"
    human = load(db, path)
    assert_ok(human)
    assert "loaded 0 bars" in human.stdout and "no bars" in human.stderr


def test_gzip_csv_with_crlf_and_no_final_newline(db: Db, bars: pl.DataFrame, tmp_path: Path):
    path = tmp_path / "bars.csv.gz"
    text = bars.write_csv().replace("\n", "\r\n").rstrip("\r\n")
    path.write_bytes(gzip.compress(("\ufeff" + text).encode()))
    result = load_bars(path, bars_table=db.bars_table, database_url=db.url, batch_rows=500)
    assert result.bars_loaded == bars.height
    assert_frame_equal(table_rows(db), bars.sort("symbol", "ts"), check_exact=True)


def test_several_files_and_a_quoted_glob(db: Db, bars: pl.DataFrame, tmp_path: Path):
    parts = tmp_path / "parts"
    parts.mkdir()
    thirds = bars.height // 3
    bars.head(thirds).write_csv(parts / "a.csv")
    bars.slice(thirds, thirds).write_parquet(parts / "b.parquet")
    bars.slice(2 * thirds).write_csv(parts / "c.csv")
    result = run_cli(
        "bars", "load", str(parts / "*.csv"), str(parts / "b.parquet"),
        "--bars-table", db.bars_table, "--database-url", db.url, "--json",
    )  # fmt: skip
    assert_ok(result)
    out = json.loads(result.stdout)
    assert out["bars_loaded"] == bars.height and out["symbols"] == [SYMBOL]
    assert [Path(f).name for f in out["files"]] == ["a.csv", "c.csv", "b.parquet"]
    assert_frame_equal(table_rows(db), bars.sort("symbol", "ts"), check_exact=True)
    assert_rejected(load(db, tmp_path / "nothing*.csv"), "no file matches")


def test_the_same_key_in_two_files_is_bad_input(db: Db, bars: pl.DataFrame, tmp_path: Path):
    before = bars.tail(30)
    db.load(before)
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    bars.head(200).write_csv(a)
    bars.slice(150, 200).write_csv(b)
    result = run_cli("bars", "load", str(a), str(b), "--bars-table", db.bars_table, "--database-url", db.url)
    assert_rejected(result, "(symbol, ts)", "more than once")
    assert_frame_equal(table_rows(db), before, check_exact=True)


# ----------------------------------------------------------------------------- streaming in batches


def test_batches_of_a_large_file_load_as_one(db: Db, bars: pl.DataFrame, tmp_path: Path):
    path = tmp_path / "bars.csv"
    bars.sample(fraction=1.0, shuffle=True, seed=1).write_csv(path)  # unsorted: batch spans overlap
    result = load_bars(path, bars_table=db.bars_table, database_url=db.url, batch_rows=250)
    assert result.bars_loaded == bars.height and result.symbols == [SYMBOL]
    assert_frame_equal(table_rows(db), bars.sort("symbol", "ts"), check_exact=True)


@pytest.mark.parametrize("sort", [True, False])
def test_a_key_repeated_in_another_batch_is_found(db: Db, bars: pl.DataFrame, tmp_path: Path, sort: bool):
    repeated = pl.concat([bars.head(1000), bars.slice(10, 1)])
    repeated = repeated.sort("ts") if sort else repeated
    path = tmp_path / "repeated.parquet"
    repeated.write_parquet(path)
    with pytest.raises(BadInput, match=r"\(symbol, ts\).*more than once|share a \(symbol, ts\) key"):
        load_bars(path, bars_table=db.bars_table, database_url=db.url, batch_rows=100)
    assert not table_exists(db)


def test_a_bad_row_in_a_late_batch_loads_nothing(db: Db, bars: pl.DataFrame, tmp_path: Path):
    before = bars.tail(30)
    db.load(before)
    frame = bars.head(2000).with_columns(pl.col("ts").dt.to_string("%Y-%m-%dT%H:%M:%SZ"))
    frame = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 1900).then(pl.lit("soon")).otherwise(pl.col("ts")).alias("ts")
    )
    path = tmp_path / "late.csv"
    frame.write_csv(path)
    with pytest.raises(BadInput, match="unparsable timestamps"):
        load_bars(path, bars_table=db.bars_table, database_url=db.url, batch_rows=100)
    assert_frame_equal(table_rows(db), before, check_exact=True)


def test_mixed_timestamp_forms_across_batches_are_bad_input(db: Db, bars: pl.DataFrame, tmp_path: Path):
    head = bars.head(300).with_columns(pl.col("ts").dt.to_string("%Y-%m-%dT%H:%M:%SZ"))
    tail = bars.slice(300, 300).with_columns(pl.col("ts").dt.to_string("%Y-%m-%d %H:%M:%S"))
    path = tmp_path / "mixed.parquet"  # text timestamps; batches of 100 rows: the forms meet at one's edge
    pl.concat([head, tail]).write_parquet(path)
    with pytest.raises(BadInput, match="mixes timestamps with a UTC offset and without one"):
        load_bars(path, bars_table=db.bars_table, database_url=db.url, batch_rows=100)
    csv = tmp_path / "mixed.csv"  # in a CSV the forms may also meet inside a batch: unparsable there
    pl.concat([head, tail]).write_csv(csv)
    with pytest.raises(BadInput, match=r"mixes timestamps|unparsable timestamps"):
        load_bars(csv, bars_table=db.bars_table, database_url=db.url, batch_rows=100)
    assert not table_exists(db)


# ----------------------------------------------------------------------------- existing tables


def test_a_table_without_a_key_on_symbol_ts_is_bad_input(db: Db, bars: pl.DataFrame, tmp_path: Path):
    db.execute(
        f"CREATE TABLE {db.bars_table} (symbol text, ts timestamptz, open float8, high float8, "
        "low float8, close float8, volume bigint)"
    )
    path = tmp_path / "bars.csv"
    bars.head(10).write_csv(path)
    assert_rejected(load(db, path), "primary key", "(symbol, ts)")
    assert row_count(db) == 0


def test_a_legacy_table_with_naive_timestamps_gets_utc(db: Db, tmp_path: Path):
    db.execute(
        f"CREATE TABLE {db.bars_table} (symbol text, ts timestamp, open numeric, high numeric, "
        "low numeric, close numeric, volume bigint, extra text, PRIMARY KEY (symbol, ts))"
    )
    path = tmp_path / "offsets.csv"
    path.write_text(
        "symbol,ts,open,high,low,close,volume\nTEST:TZ,2025-11-04T09:30:00-05:00,100,101,99,100.5,7\n"
    )
    env = {"PGTZ": "America/New_York"}  # the session's zone must not matter
    for _ in range(2):
        result = run_cli(
            "bars", "load", str(path), "--bars-table", db.bars_table, "--database-url", db.url, env=env
        )
        assert_ok(result)
    got = db.execute(f"SELECT to_char(ts, 'YYYY-MM-DD HH24:MI'), close::float8 FROM {db.bars_table}")
    assert got == [("2025-11-04 14:30", 100.5)]
