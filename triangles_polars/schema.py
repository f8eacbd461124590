"""The product's two tables, declared once: bars in, events out.

Polars dtypes are the source of truth; the SQL types of the tables the product creates are derived
from them, so the frames and the tables cannot drift apart. See ``docs/contract.md#bars`` and
``docs/contract.md#the-events-table``.
"""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl

from triangles_polars.db import qualified, quote_ident

UTC_TS = pl.Datetime("us", "UTC")

# The bars table (and the shape of a bars file once read).
BAR_SCHEMA: dict[str, pl.DataType] = {
    "symbol": pl.String(),
    "ts": UTC_TS,
    "open": pl.Float64(),
    "high": pl.Float64(),
    "low": pl.Float64(),
    "close": pl.Float64(),
    "volume": pl.Int64(),
}
BAR_COLUMNS = tuple(BAR_SCHEMA)
OHLC = ("open", "high", "low", "close")
# What hygiene and detection read of a bar (one symbol at a time, so no symbol column).
DETECT_COLUMNS = ("ts", *OHLC)
DETECT_SCHEMA: dict[str, pl.DataType] = {c: BAR_SCHEMA[c] for c in DETECT_COLUMNS}

EVENT_SCHEMA: dict[str, pl.DataType] = {
    "symbol": pl.String(),
    "strength": pl.Int16(),
    "confirmed_at": UTC_TS,
    "pattern": pl.String(),
    "a_ts": UTC_TS,
    "b_ts": UTC_TS,
    "c_ts": UTC_TS,
    "a_kind": pl.String(),
    "b_kind": pl.String(),
    "c_kind": pl.String(),
    "a_price": pl.Float64(),
    "b_price": pl.Float64(),
    "c_price": pl.Float64(),
    "leg_ab": pl.Float64(),
    "leg_bc": pl.Float64(),
    "bars_ab": pl.Int32(),
    "bars_bc": pl.Int32(),
}
EVENT_COLUMNS = tuple(EVENT_SCHEMA)
EVENT_KEY = ("symbol", "strength", "c_ts", "c_kind")

# PostgreSQL's own spelling (``format_type``), so that an existing table can be compared.
_SQL_TYPES: dict[type[pl.DataType], str] = {
    pl.String: "text",
    pl.Int16: "smallint",
    pl.Int32: "integer",
    pl.Int64: "bigint",
    pl.Float64: "double precision",
    pl.Datetime: "timestamp with time zone",
}


def sql_type(dtype: pl.DataType) -> str:
    """The PostgreSQL type of a column of this Polars dtype.

    >>> sql_type(pl.Int16())
    'smallint'
    >>> sql_type(pl.Datetime("us", "UTC"))
    'timestamp with time zone'
    """
    return _SQL_TYPES[dtype.base_type()]


EVENT_SQL_TYPES = {column: sql_type(dtype) for column, dtype in EVENT_SCHEMA.items()}
BAR_SQL_TYPES = {column: sql_type(dtype) for column, dtype in BAR_SCHEMA.items()}


def events_table_ddl(schema: str | None, table: str) -> list[str]:
    """CREATE statements for the events table and its ``(symbol, strength, confirmed_at)`` index."""
    name = qualified(schema, table)
    cols = ",\n  ".join(f"{quote_ident(c)} {t} NOT NULL" for c, t in EVENT_SQL_TYPES.items())
    index = quote_ident(f"{table[:40]}_confirmed_at_idx")
    return [
        f"CREATE TABLE IF NOT EXISTS {name} (\n  {cols},\n  PRIMARY KEY ({', '.join(EVENT_KEY)})\n)",
        f"CREATE INDEX IF NOT EXISTS {index} ON {name} (symbol, strength, confirmed_at)",
    ]


def bars_table_ddl(schema: str | None, table: str) -> str:
    """CREATE TABLE for the bars table, primary key ``(symbol, ts)``; prices may be null (bad bars)."""
    cols = ", ".join(
        f"{quote_ident(c)} {t}{' NOT NULL' if c in ('symbol', 'ts') else ''}"
        for c, t in BAR_SQL_TYPES.items()
    )
    return f"CREATE TABLE IF NOT EXISTS {qualified(schema, table)} ({cols}, PRIMARY KEY (symbol, ts))"


def instant_utc(value: datetime) -> datetime:
    """A timestamp in UTC; a naive one is taken to be UTC (the scalar twin of :func:`to_utc`).

    >>> instant_utc(datetime(2025, 1, 2, 3, 4)).isoformat()
    '2025-01-02T03:04:00+00:00'
    """
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def to_utc(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """A datetime column as ``Datetime("us", "UTC")``; naive values are taken to be UTC.

    >>> from datetime import datetime
    >>> naive = pl.DataFrame({"ts": [datetime(2025, 1, 2, 3, 4)]})
    >>> naive.select(to_utc(pl.col("ts"), naive.schema["ts"]))["ts"][0]
    datetime.datetime(2025, 1, 2, 3, 4, tzinfo=zoneinfo.ZoneInfo(key='UTC'))
    """
    if isinstance(dtype, pl.Datetime):
        expr = (
            expr.dt.replace_time_zone("UTC") if dtype.time_zone is None else expr.dt.convert_time_zone("UTC")
        )
    return expr.dt.cast_time_unit("us")


def empty_events() -> pl.DataFrame:
    """An empty frame of events."""
    return pl.DataFrame(schema=EVENT_SCHEMA)
