"""Triangle detection as lazy Polars expressions (``docs/contract.md#triangle-events``).

Input: the bars that passed hygiene, one symbol, in time order. "Position" is the row index in
that sequence. A swing high at ``i`` needs ``high[i] > max(high[i-k..i-1])`` and
``high[i] >= max(high[i+1..i+k])`` (mirror for lows); it is confirmed at the close of bar
``i+k``. Every pivot with two pivots before it makes one event.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl

from triangles_polars.schema import EVENT_COLUMNS, EVENT_SCHEMA, UTC_TS

__all__ = ["EVENT_COLUMNS", "EVENT_SCHEMA", "confirmed_between", "find_pivots", "triangles_from_pivots"]


def find_pivots(good_bars: pl.LazyFrame, strength: int, bar_interval: timedelta) -> pl.LazyFrame:
    """Swing pivots in sequence order: ``pos, ts, kind, price, order_in_bar, confirmed_at``.

    A bar that is both a swing high and a swing low yields two pivots: low first when
    ``close >= open``, else high first. ``pos`` is the row index, or the frame's own ``pos``
    column when it has one (a slice of a longer sequence, see ``stream.py``).

    Seven bars at strength 1: a swing high at 1; an outside bar at 3 that is both a swing low
    and a swing high (it closes above its open, so the low comes first); a swing low at 5. Bars
    0 and 6 lack a complete window. Each pivot is confirmed at the close of the next bar:

    >>> from datetime import UTC, datetime
    >>> bars = pl.DataFrame({
    ...     "ts": [datetime(2025, 1, 2, 14, m, tzinfo=UTC) for m in range(7)],
    ...     "open": [9.5, 10.5, 11.0, 8.0, 11.0, 10.0, 10.5],
    ...     "high": [10.0, 12.0, 11.0, 13.0, 12.0, 11.5, 12.5],
    ...     "low": [9.0, 10.0, 8.0, 7.0, 9.0, 6.0, 10.0],
    ...     "close": [9.5, 11.5, 9.0, 12.0, 10.0, 7.0, 12.0],
    ... })
    >>> pivots = find_pivots(bars.lazy(), strength=1, bar_interval=timedelta(minutes=1)).collect()
    >>> pivots.select("pos", "kind", "price", pl.col("confirmed_at").dt.strftime("%H:%M")).rows()
    [(1, 'H', 12.0, '14:03'), (3, 'L', 7.0, '14:05'), (3, 'H', 13.0, '14:05'), (5, 'L', 6.0, '14:07')]
    """
    k = strength
    if "pos" not in good_bars.collect_schema().names():
        good_bars = good_bars.with_row_index("pos")
    # Both windows of bar i are one trailing k-bar window read at another row: the window ending
    # at i-1 is max(high[i-k .. i-1]), the one ending at i+k is max(high[i+1 .. i+k]); each is null
    # unless all k bars exist (no look past the loaded bars). One rolling pass per column serves both.
    high_max = pl.col("high").rolling_max(window_size=k).alias("_high_max")
    low_min = pl.col("low").rolling_min(window_size=k).alias("_low_min")
    marked = (
        good_bars.with_columns(high_max, low_min)
        .with_columns(
            (
                (pl.col("high") > pl.col("_high_max").shift(1))
                & (pl.col("high") >= pl.col("_high_max").shift(-k))
            )
            .fill_null(False)
            .alias("is_swing_high"),
            ((pl.col("low") < pl.col("_low_min").shift(1)) & (pl.col("low") <= pl.col("_low_min").shift(-k)))
            .fill_null(False)
            .alias("is_swing_low"),
            (pl.col("ts").shift(-k) + bar_interval).alias("confirmed_at"),
        )
        .drop("_high_max", "_low_min")
    )
    both = pl.col("is_swing_high") & pl.col("is_swing_low")
    up_bar = pl.col("close") >= pl.col("open")
    common = [pl.col("pos").cast(pl.Int64), pl.col("ts"), pl.col("confirmed_at")]
    highs = marked.filter("is_swing_high").select(
        *common,
        pl.lit("H").alias("kind"),
        pl.col("high").alias("price"),
        (both & up_bar).cast(pl.Int8).alias("order_in_bar"),
    )
    lows = marked.filter("is_swing_low").select(
        *common,
        pl.lit("L").alias("kind"),
        pl.col("low").alias("price"),
        (both & ~up_bar).cast(pl.Int8).alias("order_in_bar"),
    )
    return pl.concat([highs, lows]).sort("pos", "order_in_bar")


def triangles_from_pivots(pivots: pl.LazyFrame, symbol: str, strength: int) -> pl.LazyFrame:
    """Every pivot C with two pivots A, B before it in the sequence → one event (EVENT_SCHEMA).

    Four pivots (two of them in the outside bar at position 3) make two events: the first two
    pivots have no two pivots before them.

    >>> from datetime import UTC, datetime
    >>> pivots = pl.DataFrame({
    ...     "pos": [1, 3, 3, 5],
    ...     "ts": [datetime(2025, 1, 2, 14, m, tzinfo=UTC) for m in (1, 3, 3, 5)],
    ...     "kind": ["H", "L", "H", "L"],
    ...     "price": [12.0, 7.0, 13.0, 6.0],
    ...     "confirmed_at": [datetime(2025, 1, 2, 14, m, tzinfo=UTC) for m in (3, 5, 5, 7)],
    ... })
    >>> events = triangles_from_pivots(pivots.lazy(), "DEMO", 1).collect()
    >>> events.select("pattern", "a_price", "b_price", "c_price", "leg_ab", "leg_bc").rows()
    [('HLH', 12.0, 7.0, 13.0, -5.0, 6.0), ('LHL', 7.0, 13.0, 6.0, 6.0, -7.0)]
    >>> events.select("bars_ab", "bars_bc", pl.col("confirmed_at").dt.strftime("%H:%M")).rows()
    [(2, 0, '14:05'), (0, 2, '14:07')]
    """
    prev = {
        f"{name}_{field}": pl.col(field).shift(lag)
        for name, lag in (("a", 2), ("b", 1))
        for field in ("pos", "ts", "kind", "price")
    }
    return (
        pivots.with_columns(**prev)
        .filter(pl.col("a_pos").is_not_null())
        .select(
            pl.lit(symbol, pl.String).alias("symbol"),
            pl.lit(strength, pl.Int16).alias("strength"),
            pl.col("confirmed_at"),
            pl.concat_str("a_kind", "b_kind", "kind").alias("pattern"),
            pl.col("a_ts"),
            pl.col("b_ts"),
            pl.col("ts").alias("c_ts"),
            pl.col("a_kind"),
            pl.col("b_kind"),
            pl.col("kind").alias("c_kind"),
            pl.col("a_price"),
            pl.col("b_price"),
            pl.col("price").alias("c_price"),
            (pl.col("b_price") - pl.col("a_price")).alias("leg_ab"),
            (pl.col("price") - pl.col("b_price")).alias("leg_bc"),
            (pl.col("b_pos") - pl.col("a_pos")).cast(pl.Int32).alias("bars_ab"),
            (pl.col("pos") - pl.col("b_pos")).cast(pl.Int32).alias("bars_bc"),
        )
    )


def confirmed_between(events: pl.LazyFrame, start: datetime, end: datetime) -> pl.LazyFrame:
    """Events with ``start <= confirmed_at < end`` (each event belongs to exactly one span)."""
    return events.filter(
        (pl.col("confirmed_at") >= pl.lit(start, UTC_TS)) & (pl.col("confirmed_at") < pl.lit(end, UTC_TS))
    )
