"""Source stage: the bars of one symbol from PostgreSQL into Polars (``docs/contract.md#bars``).

The bars table is checked first (exists, has the columns, sensible types) so that a wrong table
gives one clear line instead of a driver error. connectorx reads whole time slices with no
``ORDER BY`` (sorting in Polars is cheaper than on the server); duplicate timestamps are
reported, not dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import polars as pl

from triangles_polars.db import (
    RetryPolicy,
    close_quietly,
    connect,
    fetch_all,
    qualified,
    quote_ident,
    quote_literal,
    table_columns,
    translated,
    with_application_name,
    with_session_options,
)
from triangles_polars.errors import BadInput
from triangles_polars.schema import DETECT_SCHEMA, instant_utc, to_utc
from triangles_polars.settings import ReadSettings, Tables

READER_NAME = "triangles_reader"
# connectorx's "cursor" protocol decodes these five columns in ~17 % less CPU than its default
# "binary" (COPY) protocol: 2.6 s against 3.1 s for 5.47 M bars (benchmarks/README.md, tuning).
CONNECTORX_PROTOCOL = "cursor"
ADBC_BATCH_BYTES = 8 * 1024 * 1024  # ~135k bars a batch: memory stays flat with history length

_NUMERIC_TYPES = ("double precision", "real", "numeric", "integer", "bigint", "smallint", "decimal")
_TS_TYPES = ("timestamp with time zone", "timestamp without time zone")


@dataclass(frozen=True)
class BarSource:
    """One symbol's bars in one table, read the way ``read`` says."""

    symbol: str
    tables: Tables
    read: ReadSettings
    ts_type: str = "timestamp with time zone"

    def query(
        self, lo: datetime, hi: datetime, *, after: datetime | None = None, ordered: bool = False
    ) -> str:
        """SQL for the bars with open time in ``[lo, hi)``, or in ``(after, hi)`` to resume a stream.

        The stored ts is shifted for the close convention; ``ordered`` adds ``ORDER BY ts``.
        """
        col = self.tables.columns
        shift = self.read.stored_shift
        ts = quote_ident(col["ts"])
        lower = f"{ts} > {self._literal(after + shift)}" if after else f"{ts} >= {self._literal(lo + shift)}"
        prices = ", ".join(f"{quote_ident(col[c])}::float8 AS {c}" for c in ("open", "high", "low", "close"))
        return (
            f"SELECT {ts} AS ts, {prices} FROM {qualified(*self.tables.bars_parts)} "
            f"WHERE {quote_ident(col['symbol'])} = {quote_literal(self.symbol)} "
            f"AND {lower} AND {ts} < {self._literal(hi + shift)}" + (f" ORDER BY {ts}" if ordered else "")
        )

    def _literal(self, value: datetime) -> str:
        if self.ts_type.startswith("timestamp with time zone"):
            return f"'{value.isoformat()}'::timestamptz"
        return f"'{value.replace(tzinfo=None).isoformat()}'::timestamp"  # a naive column holds UTC

    def normalise(self, raw: pl.DataFrame) -> pl.DataFrame:
        """UTC open times, float prices, sorted; duplicate timestamps are a clear error."""
        if raw.height == 0:
            return pl.DataFrame(schema=DETECT_SCHEMA)
        ts_utc = to_utc(pl.col("ts"), raw.schema["ts"])
        if shift := self.read.stored_shift:  # the close convention: open = close - interval
            ts_utc = ts_utc - shift
        bars = raw.with_columns(ts_utc.alias("ts")).cast(DETECT_SCHEMA)
        if not bars["ts"].is_sorted():  # an index scan already returns them in order: skip the sort
            bars = bars.sort("ts")
        repeated = bars.filter(pl.col("ts").diff() == pl.duration(microseconds=0))["ts"]
        if repeated.len():
            raise BadInput(
                f"bars of {self.symbol!r} have {repeated.n_unique():,} duplicate timestamp(s), "
                f"first at {repeated[0].isoformat()}; fix the bars table (primary key (symbol, ts))"
            )
        return bars

    # -- checks, on the catalog only (no lock on the bars)

    def inspect(self, cur: Any, lo: datetime, hi: datetime) -> BarSource:
        """Validate the table; a copy that knows the ts column's type. Duplicates are bad input."""
        source = BarSource(self.symbol, self.tables, self.read, check_bars_table(cur, self.tables))
        if not source.has_unique_key(cur):
            # Streaming could only find duplicates after writing: look for them first.
            inner = source.query(lo, hi)
            rows = fetch_all(
                cur, f"SELECT ts FROM ({inner}) b GROUP BY ts HAVING count(*) > 1 ORDER BY ts LIMIT 1"
            )
            if rows:
                raise BadInput(
                    f"bars of {self.symbol!r} have duplicate timestamps, first at {rows[0][0].isoformat()}; "
                    "fix the bars table (primary key (symbol, ts))"
                )
        return source

    def has_unique_key(self, cur: Any) -> bool:
        """Whether a unique index on exactly (symbol, ts) makes duplicate bars impossible."""
        rows = fetch_all(
            cur,
            """
            SELECT array_agg(a.attname::text ORDER BY a.attname)
            FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
            WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indpred IS NULL
            GROUP BY i.indexrelid
            """,
            (qualified(*self.tables.bars_parts),),
        )
        wanted = sorted([self.tables.columns["symbol"], self.tables.columns["ts"]])
        return any(sorted(r[0]) == wanted for r in rows)

    def has_bars(self, cur: Any) -> bool:
        """Whether the symbol has any bars at all (for a clearer 'no bars' message)."""
        sql = (
            f"SELECT EXISTS (SELECT 1 FROM {qualified(*self.tables.bars_parts)} "
            f"WHERE {quote_ident(self.tables.columns['symbol'])} = $1)"
        )
        return bool(fetch_all(cur, sql, (self.symbol,))[0][0])

    def _first_bar_sql(self, lo: datetime, hi: datetime) -> str:
        """SQL for the stored ts of the symbol's first bar opening in ``[lo, hi)`` (one index probe)."""
        shift = self.read.stored_shift
        ts, symbol = quote_ident(self.tables.columns["ts"]), quote_ident(self.tables.columns["symbol"])
        return (
            f"SELECT min({ts}) FROM {qualified(*self.tables.bars_parts)} WHERE {symbol} = $1 "
            f"AND {ts} >= {self._literal(lo + shift)} AND {ts} < {self._literal(hi + shift)}"
        )

    def first_bar(self, cur: Any, lo: datetime, hi: datetime) -> datetime | None:
        """Open time (UTC) of the symbol's first bar in ``[lo, hi)``, or None (one index probe).

        Reading starts there: years before a symbol's history are not scanned slice by slice.
        """
        return self._open_time(fetch_all(cur, self._first_bar_sql(lo, hi), (self.symbol,))[0][0])

    def probe(self, cur: Any, lo: datetime, hi: datetime) -> tuple[datetime | None, bool]:
        """:meth:`first_bar` in ``[lo, hi)`` and whether a bar opens at or after ``hi``, in one
        round trip (two index probes): what a task needs to know before it reads."""
        ts, symbol = quote_ident(self.tables.columns["ts"]), quote_ident(self.tables.columns["symbol"])
        goes_on = (
            f"EXISTS (SELECT 1 FROM {qualified(*self.tables.bars_parts)} WHERE {symbol} = $1 "
            f"AND {ts} >= {self._literal(hi + self.read.stored_shift)})"
        )
        sql = f"SELECT ({self._first_bar_sql(lo, hi)}), {goes_on}"
        first, goes_on_found = fetch_all(cur, sql, (self.symbol,))[0]
        return self._open_time(first), bool(goes_on_found)

    def _open_time(self, stored: datetime | None) -> datetime | None:
        """A stored ts as the bar's open time in UTC (a naive column holds UTC)."""
        if stored is None:
            return None
        return instant_utc(stored) - self.read.stored_shift

    # -- reading

    def stream(
        self,
        url: str,
        lo: datetime,
        hi: datetime,
        policy: RetryPolicy,
        on_retry: Callable[[BaseException], None] | None = None,
    ) -> Iterator[pl.DataFrame]:
        """Bars with open time in ``[lo, hi)`` as sorted batches in time order; memory holds a batch.

        ``connectorx`` (the default reader): one query per time slice of ``slice_days``, each
        read whole (connectorx releases the GIL only for whole reads). ``adbc``: one ``ORDER BY
        ts`` query streamed as record batches over PostgreSQL's binary COPY, with explicit sorts
        disabled so the server walks the (symbol, ts) index.

        A dropped connection resumes after the last bar received, with the same backoff and
        retry budget as every other call; the budget refills once bars flow again.
        """
        reader_url = with_application_name(url, READER_NAME)
        last: datetime | None = None
        with translated("reading bars", policy, url):
            for attempt in policy.retrying(on_retry):
                flowed = False
                with attempt:
                    for bars in self._batches(reader_url, lo, hi, last):
                        if bars.height:
                            last, flowed = bars["ts"][-1], True
                            yield bars
                    return
                if flowed:  # bars flowed since the last failure: the budget (and backoff) start afresh
                    attempt.retry_state.attempt_number = 1

    def _batches(
        self, url: str, lo: datetime, hi: datetime, after: datetime | None
    ) -> Iterator[pl.DataFrame]:
        if self.read.reader == "adbc":
            query = self.query(lo, hi, after=after, ordered=True)
            yield from (self.normalise(pl.from_arrow(b)) for b in _adbc_batches(url, query))  # type: ignore[arg-type]
            return
        import connectorx as cx

        step = timedelta(days=self.read.slice_days)
        start = lo
        while start < hi:
            stop = min(start + step, hi)
            if after is None or after < stop:
                query = self.query(start, stop, after=after if after and after >= start else None)
                raw = cx.read_sql(
                    with_session_options(url, "connectorx"),  # keepalives, idle-in-transaction timeout
                    query,
                    return_type="polars",
                    protocol=CONNECTORX_PROTOCOL,
                )
                yield self.normalise(raw)  # type: ignore[arg-type]
            start = stop


def check_bars_table(cur: Any, tables: Tables) -> str:
    """Validate the bars table's columns; return the ts column's type."""
    columns = table_columns(cur, *tables.bars_parts)
    if columns is None:
        raise BadInput(f"bars table {tables.bars!r} does not exist")
    wanted = tables.columns
    missing = [actual for logical, actual in wanted.items() if logical != "volume" and actual not in columns]
    if missing:
        raise BadInput(
            f"bars table {tables.bars!r} lacks column(s) {', '.join(missing)} "
            f"(has {', '.join(columns) or 'no columns'}); map names with --columns"
        )
    ts_type = columns[wanted["ts"]]
    if not ts_type.startswith(_TS_TYPES):
        raise BadInput(f"bars column {wanted['ts']!r} has type {ts_type}; expected timestamptz or timestamp")
    for logical in ("open", "high", "low", "close"):
        dtype = columns[wanted[logical]]
        if not dtype.startswith(_NUMERIC_TYPES):
            raise BadInput(
                f"bars column {wanted[logical]!r} has type {dtype}; expected double precision or numeric"
            )
    if not columns[wanted["symbol"]].startswith(("text", "character")):
        raise BadInput(
            f"bars column {wanted['symbol']!r} has type {columns[wanted['symbol']]}; expected text"
        )
    return ts_type


def _adbc_batches(url: str, query: str) -> Iterator[Any]:
    """Record batches of a query through ADBC (PostgreSQL's binary COPY)."""
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            cur.adbc_statement.set_options(**{"adbc.postgresql.batch_size_hint_bytes": str(ADBC_BATCH_BYTES)})
            cur.execute("SET enable_sort = off")
            cur.execute(query)
            yield from cur.fetch_record_batch()
    finally:
        close_quietly(conn)
