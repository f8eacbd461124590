"""Hygiene rules as lazy Polars expressions (``docs/contract.md#hygiene``).

:func:`flag_bars` adds one boolean column per rule; a bar with any of them is a bad bar.
Rules apply in order: rule 2 only to bars that pass rule 1, rules 3–5 only to bars that pass
rules 1–2, and the reference price of rules 3–5 is the rolling median close of earlier bars
that pass rules 1–2.
"""

from __future__ import annotations

import polars as pl

from triangles_polars.schema import OHLC
from triangles_polars.settings import HygieneProfile, Thresholds

# Flag column → the rule's reason-code prefix (the threshold is appended to it).
RULE_COLUMNS = {
    "bad_ohlc_integrity": "OHLC_INTEGRITY",
    "bad_price": "PRICE_LT",
    "bad_discontinuity": "DISCONTINUITY",
    "bad_small_range_big_gap": "SMALL_RANGE_BIG_GAP",
    "bad_flat_discontinuity": "FLAT_DISCONTINUITY",
}


def code_suffix(value: float) -> str:
    """Threshold as it appears in a reason code: ``1000.0`` → ``"1000"``, ``0.5`` → ``"0.5"``."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def reason_codes(thresholds: Thresholds) -> dict[str, str]:
    """Flag column → reason code for these thresholds (``bad_price`` → ``"PRICE_LT_1000"``)."""
    values = {
        "bad_ohlc_integrity": None,
        "bad_price": thresholds.min_price,
        "bad_discontinuity": thresholds.discontinuity,
        "bad_small_range_big_gap": thresholds.big_gap,
        "bad_flat_discontinuity": thresholds.flat_gap,
    }
    return {
        col: prefix if values[col] is None else f"{prefix}_{code_suffix(values[col])}"
        for col, prefix in RULE_COLUMNS.items()
    }


def ohlc_integrity_violated() -> pl.Expr:
    """Rule 1: a price is null/NaN/±inf, or the high/low do not bound the open/close/each other."""
    o, h, lo, c = (pl.col(x) for x in OHLC)
    finite = pl.all_horizontal([pl.col(x).is_finite().fill_null(False) for x in OHLC])
    return (~finite | (h < pl.max_horizontal(o, c)) | (lo > pl.min_horizontal(o, c)) | (h < lo)).fill_null(
        True
    )


def price_below(min_price: float) -> pl.Expr:
    """Rule 2 (before the rule-order mask): some price below ``min_price``."""
    return pl.min_horizontal(*(pl.col(x) for x in OHLC)) < min_price


def reference_close(window: int) -> pl.Expr:
    """Median close of the ``window`` previous rows (fewer at the start; null for the first row).

    Must be evaluated on the bars that pass rules 1–2 only, so that "previous rows" are the
    previous such bars.
    """
    return pl.col("close").shift(1).rolling_median(window_size=window, min_samples=1)


def corruption_flags(thresholds: Thresholds) -> list[pl.Expr]:
    """Rules 3–5 given a ``ref`` column; false where ``ref`` is null (no earlier bar)."""
    o, h, lo, c, ref = (pl.col(x) for x in (*OHLC, "ref"))
    assert thresholds.discontinuity is not None and thresholds.small_range is not None
    assert thresholds.big_gap is not None and thresholds.flat_gap is not None
    furthest = pl.max_horizontal(*((x - ref).abs() for x in (o, h, lo, c)))
    flat = (o == h) & (h == lo) & (lo == c)
    return [
        (furthest > thresholds.discontinuity).fill_null(False).alias("bad_discontinuity"),
        ((h - lo <= thresholds.small_range) & ((o - ref).abs() > thresholds.big_gap))
        .fill_null(False)
        .alias("bad_small_range_big_gap"),
        (flat & ((c - ref).abs() > thresholds.flat_gap)).fill_null(False).alias("bad_flat_discontinuity"),
    ]


def flag_bars(bars: pl.LazyFrame, profile: HygieneProfile, thresholds: Thresholds) -> pl.LazyFrame:
    """Add the five ``bad_*`` rule columns and ``is_bad`` to bars of one symbol sorted by ``ts``.

    Six NQ bars: two good ones, one whose high is below its open (rule 1), one below
    ``min_price`` (rule 2), a flat print 992.5 points away from ``ref`` (the median close of the
    two earlier bars that pass rules 1–2: rules 3, 4 and 5 at once), and a good bar, whose ``ref``
    (the median of 20005, 20010 and 21000) the flat print cannot move:

    >>> from datetime import UTC, datetime
    >>> from triangles_polars.settings import NQ_THRESHOLDS
    >>> bars = pl.DataFrame({
    ...     "ts": [datetime(2025, 1, 2, 14, m, tzinfo=UTC) for m in range(6)],
    ...     "open": [20000.0, 20005.0, 20010.0, 950.0, 21000.0, 20010.0],
    ...     "high": [20010.0, 20015.0, 20008.0, 960.0, 21000.0, 20020.0],
    ...     "low": [19990.0, 20000.0, 20000.0, 940.0, 21000.0, 20005.0],
    ...     "close": [20005.0, 20010.0, 20005.0, 955.0, 21000.0, 20015.0],
    ... })
    >>> flagged = flag_bars(bars.lazy(), "full", NQ_THRESHOLDS).collect()
    >>> for row in flagged.iter_rows(named=True):
    ...     print([rule for rule in RULE_COLUMNS if row[rule]])
    []
    []
    ['bad_ohlc_integrity']
    ['bad_price']
    ['bad_discontinuity', 'bad_small_range_big_gap', 'bad_flat_discontinuity']
    []
    >>> flagged["is_bad"].to_list()
    [False, False, True, True, True, False]

    The ``basic`` profile checks rules 1–2 only, so the flat print is a good bar there:

    >>> flag_bars(bars.lazy(), "basic", NQ_THRESHOLDS).collect()["is_bad"].to_list()
    [False, False, True, True, False, False]
    """
    integrity = ohlc_integrity_violated()
    flagged = bars.with_columns(
        integrity.alias("bad_ohlc_integrity"),
        (~integrity & price_below(thresholds.min_price)).fill_null(False).alias("bad_price"),
    )
    late_rules = ["bad_discontinuity", "bad_small_range_big_gap", "bad_flat_discontinuity"]
    if profile == "basic":
        flagged = flagged.with_columns(pl.lit(False).alias(name) for name in late_rules)
    else:
        failed_early = pl.col("bad_ohlc_integrity") | pl.col("bad_price")
        passed = (
            flagged.filter(~failed_early)
            .with_columns(reference_close(thresholds.reference_window).alias("ref"))
            .with_columns(corruption_flags(thresholds))
            .drop("ref")
        )
        failed = flagged.filter(failed_early).with_columns(pl.lit(False).alias(name) for name in late_rules)
        # Both halves are sorted by ts: a merge keeps the order without a full sort.
        flagged = passed.merge_sorted(failed, key="ts")
    return flagged.with_columns(pl.any_horizontal(*RULE_COLUMNS).alias("is_bad"))


def count_bad_bars(flagged: pl.LazyFrame, thresholds: Thresholds) -> pl.LazyFrame:
    """One row: ``bars``, ``bad_bars`` and one count per reason code."""
    codes = reason_codes(thresholds)
    return flagged.select(
        pl.len().alias("bars"),
        pl.col("is_bad").sum().alias("bad_bars"),
        *(pl.col(col).sum().alias(code) for col, code in codes.items()),
    )
