"""Tests for the synthetic NQ-like bar generator."""

from __future__ import annotations

from datetime import date

import polars as pl
import pytest

from triangles_polars.synthetic import TICK, calendar_minutes, generate_bars

NY = "America/New_York"
SCHEMA = {
    "symbol": pl.String,
    "ts": pl.Datetime("us", "UTC"),
    "open": pl.Float64,
    "high": pl.Float64,
    "low": pl.Float64,
    "close": pl.Float64,
    "volume": pl.Int64,
}

INTEGRITY_BROKEN = (
    (pl.col("low") > pl.min_horizontal("open", "close"))
    | (pl.col("high") < pl.max_horizontal("open", "close"))
    | (pl.col("low") > pl.col("high"))
)


def _local(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(pl.col("ts").dt.convert_time_zone(NY).alias("local"))


@pytest.fixture(scope="module")
def month_2024() -> pl.DataFrame:
    return generate_bars("2024-03-01", "2024-03-31", seed=7)


def test_schema_dtypes_sorted_unique(month_2024: pl.DataFrame) -> None:
    df = month_2024
    assert df.schema == pl.Schema(SCHEMA)
    assert df.height > 25_000
    assert df["ts"].is_sorted()
    assert df["ts"].n_unique() == df.height
    assert df["symbol"].unique().to_list() == ["GLBX.MDP3:NQ"]
    assert df["ts"].dt.date().min() >= date(2024, 3, 1)
    assert df["ts"].dt.date().max() <= date(2024, 3, 31)
    assert df.null_count().sum_horizontal().item() == 0


def test_custom_symbol_and_empty_range() -> None:
    df = generate_bars("2024-01-06", "2024-01-06", symbol="X")  # a Saturday (UTC)
    # Saturday 00:00-05:00 UTC is Friday evening in New York: closed too.
    assert df.height == 0
    assert df.schema == pl.Schema(SCHEMA)
    df = generate_bars("2024-01-08", "2024-01-08", symbol="X")
    assert df["symbol"].unique().to_list() == ["X"]


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2024-03-03", "2024-03-16"),  # US DST starts Sunday 2024-03-10
        ("2024-10-27", "2024-11-09"),  # US DST ends Sunday 2024-11-03
        ("2010-03-07", "2010-03-20"),  # DST start 2010-03-14
    ],
)
def test_calendar_in_new_york_time_across_dst(start: str, end: str) -> None:
    ts = calendar_minutes(start, end)
    assert ts.dtype == pl.Datetime("us", "UTC")
    loc = ts.dt.convert_time_zone(NY)
    wd, hour = loc.dt.weekday(), loc.dt.hour()  # Monday = 1 ... Sunday = 7
    assert not (wd == 6).any(), "bars on Saturday"
    assert not (hour == 17).any(), "bars in the 17:00-18:00 break"
    assert not ((wd == 7) & (hour < 18)).any(), "Sunday bars before 18:00"
    assert not ((wd == 5) & (hour >= 17)).any(), "Friday bars after 17:00"
    # Every local trading day (trade date = the next calendar day after 18:00) is complete:
    # 23 hours = 1380 minutes, including the days around the DST switch.
    trade_date = pl.select((loc + pl.duration(hours=6)).dt.date().alias("d")).to_series()
    counts = trade_date.value_counts().sort("d")
    assert counts["count"].to_list() == [1380] * 10
    # Sunday sessions open at 18:00 New York, i.e. 22:00 UTC in summer, 23:00 in winter.
    sunday_open = pl.DataFrame({"ts": ts, "loc": loc}).filter(
        (pl.col("loc").dt.weekday() == 7) & (pl.col("loc").dt.hour() == 18) & (pl.col("loc").dt.minute() == 0)
    )
    assert sunday_open.height == 2
    utc_hours = set(sunday_open["ts"].dt.hour().to_list())
    assert utc_hours <= {22, 23}


def test_dst_shifts_utc_session_open() -> None:
    loc = calendar_minutes("2024-03-03", "2024-03-16").dt.convert_time_zone(NY)
    df = pl.DataFrame({"loc": loc}).with_columns(pl.col("loc").dt.convert_time_zone("UTC").alias("utc"))
    opens = (
        df.filter(pl.col("loc").dt.weekday() == 7)
        .group_by(pl.col("loc").dt.date())
        .agg(
            pl.col("loc").min().dt.hour().alias("local_hour"),
            pl.col("utc").min().dt.hour().alias("utc_hour"),
        )
    )
    assert opens["local_hour"].to_list() == [18, 18]
    assert sorted(opens["utc_hour"].to_list()) == [22, 23]


def test_generated_bars_respect_calendar(month_2024: pl.DataFrame) -> None:
    loc = _local(month_2024)["local"]
    wd, hour = loc.dt.weekday(), loc.dt.hour()
    assert not (wd == 6).any()
    assert not (hour == 17).any()
    assert not ((wd == 7) & (hour < 18)).any()
    first = _local(generate_bars("2024-11-03", "2024-11-04", missing_share=0.0))["local"][0]
    assert (first.weekday(), first.hour, first.minute) == (6, 18, 0)  # Sunday 18:00


@pytest.mark.parametrize("interval", [1, 5, 60])
def test_ohlc_integrity_and_tick(interval: int) -> None:
    for start, end in [("2010-05-01", "2010-05-20"), ("2025-05-01", "2025-05-20")]:
        df = generate_bars(start, end, seed=3, bar_interval_minutes=interval)
        assert df.height > 0
        prices = df.select("open", "high", "low", "close")
        for name in prices.columns:
            col = prices[name]
            assert col.is_finite().all()
            assert (col > 0).all()
            assert ((col / TICK).round() * TICK == col).all(), f"{name} off the tick grid"
        assert df.filter(INTEGRITY_BROKEN).height == 0
        assert (df["volume"] >= 1).all()
        if interval > 1:
            minutes = df["ts"].dt.minute()
            assert (minutes % interval == 0).all()


def test_prices_are_continuous_and_realistic(month_2024: pl.DataFrame) -> None:
    df = _local(month_2024).with_columns(
        (pl.col("open") - pl.col("close").shift()).abs().alias("gap"),
        (pl.col("high") - pl.col("low")).alias("range"),
    )
    assert df["gap"].median() == 0.0  # open is (usually exactly) the previous close
    assert df["gap"].quantile(0.99) <= 10.0
    assert 2.0 <= df["range"].median() <= 20.0  # a few points per bar
    by_hour = df.group_by(pl.col("local").dt.hour().alias("h")).agg(
        pl.col("range").mean(), pl.col("volume").mean()
    )
    h = {r["h"]: r for r in by_hour.iter_rows(named=True)}
    assert h[9]["range"] > 1.5 * h[1]["range"]  # cash open busier than overnight
    assert h[15]["range"] > h[1]["range"]
    assert h[10]["volume"] > 5 * h[1]["volume"]  # US hours trade more


def test_reproducible_and_seed_dependent() -> None:
    a = generate_bars("2024-06-02", "2024-06-08", seed=11, corruption_share=0.01)
    b = generate_bars(date(2024, 6, 2), date(2024, 6, 8), seed=11, corruption_share=0.01)
    assert a.equals(b)
    c = generate_bars("2024-06-02", "2024-06-08", seed=12, corruption_share=0.01)
    assert not a.equals(c)
    assert not a["close"].equals(c["close"])


@pytest.mark.parametrize("share", [0.0, 0.05, 0.2])
def test_missing_share(share: float) -> None:
    cal = calendar_minutes("2024-01-01", "2024-01-31")
    df = generate_bars("2024-01-01", "2024-01-31", missing_share=share)
    assert df.height == pytest.approx(len(cal) * (1 - share), abs=2)
    assert df["ts"].is_in(cal.implode()).all()
    if share == 0.0:
        assert df["ts"].equals(cal)


def test_price_level_anchors() -> None:
    y2010 = generate_bars("2010-06-01", "2010-07-31")
    assert 1_600 <= y2010["close"].median() <= 2_100
    assert y2010["close"].min() > 1_400
    for seed in range(3):
        y2025 = generate_bars("2025-01-01", "2025-12-31", seed=seed, missing_share=0.5)
        assert y2025["low"].min() > 20_000


def test_long_range_levels_and_no_big_clean_jumps() -> None:
    df = generate_bars("2010-01-01", "2025-12-31", bar_interval_minutes=60, seed=1)
    yearly = df.group_by(pl.col("ts").dt.year().alias("y")).agg(pl.col("close").median())
    med = dict(yearly.iter_rows())
    assert 1_600 <= med[2010] <= 2_200
    assert med[2025] > 20_000
    assert df.filter(INTEGRITY_BROKEN).height == 0
    assert (df["low"] >= 1_000).all()


def _hygiene_counts(df: pl.DataFrame) -> dict[str, int]:
    prev_close = pl.col("close").shift()
    ref = pl.col("close").rolling_median(window_size=15, center=True, min_samples=1)
    flags = df.select(
        high_below_low=(pl.col("high") < pl.col("low")).sum(),
        low_price=(pl.min_horizontal("open", "high", "low", "close") < 1_000).sum(),
        big_jump=((pl.col("close") - prev_close).abs() > 500).sum(),
        flat_far=(
            (pl.col("open") == pl.col("high"))
            & (pl.col("high") == pl.col("low"))
            & (pl.col("low") == pl.col("close"))
            & ((pl.col("close") - ref).abs() > 50)
        ).sum(),
        small_far=((pl.col("high") - pl.col("low") <= 5) & ((pl.col("open") - prev_close).abs() > 150)).sum(),
    )
    return flags.row(0, named=True)


def test_corruption_planted() -> None:
    clean = generate_bars("2024-06-01", "2024-06-30", seed=5)
    dirty = generate_bars("2024-06-01", "2024-06-30", seed=5, corruption_share=0.01)
    assert dirty.schema == clean.schema
    assert dirty["ts"].equals(clean["ts"])
    assert dirty["volume"].equals(clean["volume"])
    # Only prices of the corrupted bars change, and about 1% of bars are corrupted.
    price_cols = ["open", "high", "low", "close"]
    diff = pl.any_horizontal(pl.col(c) != pl.col(f"{c}_d") for c in price_cols)
    both = clean.select(price_cols).hstack(dirty.select(pl.col(c).alias(f"{c}_d") for c in price_cols))
    n_changed = both.filter(diff).height
    assert n_changed == pytest.approx(0.01 * clean.height, rel=0.05)

    counts = _hygiene_counts(dirty)
    assert all(v > 0 for v in counts.values()), counts
    assert dirty.filter(INTEGRITY_BROKEN).height > 0
    assert (dirty.select(price_cols).min_horizontal() > 0).all()
    for c in price_cols:
        assert ((dirty[c] / TICK).round() * TICK == dirty[c]).all()
    assert all(v == 0 for v in _hygiene_counts(clean).values()), _hygiene_counts(clean)


def test_corruption_in_2010() -> None:
    dirty = generate_bars("2010-06-01", "2010-06-30", corruption_share=0.02)
    counts = _hygiene_counts(dirty)
    assert counts["high_below_low"] > 0 and counts["low_price"] > 0 and counts["big_jump"] > 0
    assert (dirty.select("open", "high", "low", "close").min_horizontal() > 0).all()


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        generate_bars("2024-01-02", "2024-01-01")
    with pytest.raises(ValueError):
        generate_bars("2024-01-01", "2024-01-02", bar_interval_minutes=7)
    with pytest.raises(ValueError):
        generate_bars("2024-01-01", "2024-01-02", missing_share=1.0)
    with pytest.raises(ValueError):
        generate_bars("2024-01-01", "2024-01-02", corruption_share=0.9)
    with pytest.raises(TypeError):
        generate_bars(20240101, "2024-01-02")  # type: ignore[arg-type]
