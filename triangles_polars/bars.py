"""Bringing bars in: CSV or Parquet files (or frames) into the bars table through ADBC bulk ingest.

The table is created if missing with primary key ``(symbol, ts)``. A load is one transaction:
a bad file, or a key that already exists, leaves the table as it was.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl

from triangles_polars.db import RetryPolicy, Session, qualified, quote_ident, table_columns
from triangles_polars.errors import BadInput
from triangles_polars.schema import BAR_COLUMNS, BAR_SCHEMA, bars_table_ddl, to_utc
from triangles_polars.settings import DEFAULT_BARS_TABLE, DEFAULT_MAX_RETRIES, split_table_name

LOADER_NAME = "triangles_loader"


def read_bar_file(
    path: str | Path,
    *,
    symbol: str | None = None,
    columns: dict[str, str] | None = None,
    ts_convention: str = "open",
    bar_interval: timedelta = timedelta(minutes=1),
) -> pl.DataFrame:
    """Read a CSV or Parquet file of bars into the bars-table shape (``docs/contract.md#bars``)."""
    path = Path(path)
    if not path.exists():
        raise BadInput(f"bars file {str(path)!r} not found")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            frame = pl.read_parquet(path)
        elif suffix in (".csv", ".txt", ".gz"):
            frame = pl.read_csv(path, infer_schema_length=10_000, try_parse_dates=False)
        else:
            raise BadInput(f"bars file {str(path)!r}: unknown format {suffix!r}; use .csv or .parquet")
    except BadInput:
        raise
    except Exception as exc:
        raise BadInput(f"bars file {str(path)!r} unreadable: {str(exc).splitlines()[0]}") from None
    return shape_bars(
        frame,
        symbol=symbol,
        columns=columns,
        ts_convention=ts_convention,
        bar_interval=bar_interval,
        source=str(path),
    )


def shape_bars(
    frame: pl.DataFrame,
    *,
    symbol: str | None = None,
    columns: dict[str, str] | None = None,
    ts_convention: str = "open",
    bar_interval: timedelta = timedelta(minutes=1),
    source: str = "frame",
) -> pl.DataFrame:
    """Rename, parse and type a frame of bars; ts becomes the UTC open time."""
    mapping = {c: c for c in BAR_COLUMNS} | (columns or {})
    renamed = frame.rename({v: k for k, v in mapping.items() if v in frame.columns and v != k})
    if symbol is not None:
        renamed = renamed.with_columns(pl.lit(symbol).alias("symbol"))
    if "volume" not in renamed.columns:
        renamed = renamed.with_columns(pl.lit(None, pl.Int64).alias("volume"))
    missing = [mapping[c] for c in BAR_COLUMNS if c not in renamed.columns]
    if missing:
        hint = " (or give --symbol)" if "symbol" in [k for k, v in mapping.items() if v in missing] else ""
        raise BadInput(f"{source}: missing column(s) {', '.join(missing)}{hint}")
    ts = renamed["ts"]
    try:
        if ts.dtype == pl.String:
            ts = ts.str.to_datetime(time_unit="us", time_zone="UTC", strict=True)
        elif isinstance(ts.dtype, pl.Datetime):
            ts = ts.to_frame().select(to_utc(pl.col(ts.name), ts.dtype)).to_series()
        else:
            raise BadInput(f"{source}: column {mapping['ts']!r} has type {ts.dtype}; expected timestamps")
    except BadInput:
        raise
    except Exception as exc:
        raise BadInput(
            f"{source}: unparsable timestamps in {mapping['ts']!r}: {str(exc).splitlines()[0]}"
        ) from None
    if ts.null_count():
        raise BadInput(f"{source}: {ts.null_count()} empty timestamp(s) in {mapping['ts']!r}")
    if ts_convention == "close":
        ts = ts - bar_interval
    try:
        shaped = renamed.with_columns(ts.dt.cast_time_unit("us").alias("ts")).select(
            pl.col(c).cast(t, strict=True) for c, t in BAR_SCHEMA.items()
        )
    except Exception as exc:
        raise BadInput(
            f"{source}: a column has values of the wrong type: {str(exc).splitlines()[0]}"
        ) from None
    if shaped["symbol"].null_count():
        raise BadInput(
            f"{source}: {shaped['symbol'].null_count()} row(s) without a symbol (or give --symbol)"
        )
    dupes = shaped.filter(pl.struct("symbol", "ts").is_duplicated())
    if dupes.height:
        row = dupes.row(0, named=True)
        raise BadInput(
            f"{source}: {dupes.height} rows share a (symbol, ts) key, first {row['symbol']} {row['ts'].isoformat()}"
        )
    return shaped.sort("symbol", "ts")


def ingest_bars(
    url: str, bars: pl.DataFrame, bars_table: str = DEFAULT_BARS_TABLE, max_retries: int = DEFAULT_MAX_RETRIES
) -> int:
    """Insert bars (bars-table shape) in one transaction; a duplicate key aborts the whole load."""
    schema, table = split_table_name(bars_table, "bars table name")

    def load(cur: Any) -> int:
        existing = table_columns(cur, schema, table)
        if existing is None:
            cur.execute(bars_table_ddl(schema, table))
        elif missing := [c for c in BAR_COLUMNS if c not in existing]:
            raise BadInput(f"bars table {bars_table!r} exists without column(s) {', '.join(missing)}")
        clash = _existing_keys(cur, schema, table, bars) if existing is not None and bars.height else 0
        if clash:
            raise BadInput(
                f"{clash} bar(s) already exist in {bars_table!r} with the same (symbol, ts); nothing loaded"
            )
        if bars.height:
            cur.adbc_ingest(table, bars.to_arrow(), mode="append", db_schema_name=schema)
        return bars.height

    with Session(url, LOADER_NAME, RetryPolicy(max_retries=max_retries)) as session:
        return session.run("loading bars", load)


def _existing_keys(cur: Any, schema: str | None, table: str, bars: pl.DataFrame) -> int:
    """How many of the frame's (symbol, ts) keys the table already holds."""
    span = bars.group_by("symbol").agg(pl.col("ts").min().alias("lo"), pl.col("ts").max().alias("hi"))
    total = 0
    for symbol, lo, hi in span.iter_rows():
        cur.execute(
            f"SELECT ts FROM {qualified(schema, table)} WHERE {quote_ident('symbol')} = $1 "
            "AND ts >= $2 AND ts <= $3",
            parameters=(symbol, lo, hi),
        )
        have = pl.from_arrow(cur.fetch_arrow_table())
        if have.height:
            mine = bars.filter(pl.col("symbol") == symbol).select("ts")
            total += mine.join(have.cast({"ts": pl.Datetime("us", "UTC")}), on="ts", how="inner").height
    return total
