"""Property tests: the vectorized hygiene + detection equal the plain-Python reference of the contract.

Random bars have ties (prices on a coarse tick grid), outside bars, time gaps, and planted
corruption: spikes, short bad runs, flat bars, small-range gaps, NaN/None/inf, low prices and
high < low; both hygiene profiles; strengths 1–5; random reference windows and thresholds.
"""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime, timedelta

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reference import reference_events, reference_hygiene
from triangles_polars.chunks import plan_chunks
from triangles_polars.hygiene import flag_bars, reason_codes
from triangles_polars.settings import Thresholds
from triangles_polars.stream import compute_events

T0 = datetime(2025, 1, 6, tzinfo=UTC)
INTERVAL = timedelta(minutes=1)
CORRUPTIONS = ("spike", "run", "flat", "small_gap", "nan", "none", "inf", "low", "inverted")


@st.composite
def bar_series(draw: st.DrawFn, min_size: int = 8, max_size: int = 90) -> list[dict]:
    """Bars on a 0.25 grid with small moves (many ties), gaps in time and planted corruption."""
    n = draw(st.integers(min_size, max_size))
    steps = draw(st.lists(st.integers(-6, 6), min_size=n, max_size=n))
    gaps = draw(st.lists(st.sampled_from([1, 1, 1, 1, 2, 3, 17, 60]), min_size=n, max_size=n))
    wicks = draw(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=n, max_size=n))
    open_gaps = draw(st.lists(st.integers(-2, 2), min_size=n, max_size=n))
    corrupt_share = draw(st.sampled_from([0.0, 0.05, 0.2]))
    flags = draw(st.lists(st.floats(0, 1), min_size=n, max_size=n))
    kinds = draw(st.lists(st.sampled_from(CORRUPTIONS), min_size=n, max_size=n))
    sizes = draw(st.lists(st.integers(2, 40), min_size=n, max_size=n))
    bars = []
    close = 2000.0
    ts = T0
    for i in range(n):
        ts = ts + gaps[i] * INTERVAL
        o = close + open_gaps[i] * 0.25
        c = o + steps[i] * 0.25
        h = max(o, c) + wicks[i][0] * 0.25
        lo = min(o, c) - wicks[i][1] * 0.25
        close = c
        bars.append({"ts": ts, "open": o, "high": h, "low": lo, "close": c})
    i = 0
    while i < n:
        if flags[i] < corrupt_share:
            bar, kind, size = bars[i], kinds[i], sizes[i] * 25.0
            if kind in ("spike", "run"):
                for j in range(i, min(n, i + (3 if kind == "run" else 1))):
                    for key in ("open", "high", "low", "close"):
                        bars[j][key] += size * 3
                i += 2 if kind == "run" else 0
            elif kind == "flat":
                price = bar["close"] + size
                bar.update(open=price, high=price, low=price, close=price)
            elif kind == "small_gap":
                o = bar["close"] + size * 2
                bar.update(open=o, high=o + 1.0, low=o - 0.5, close=o + 0.25)
            elif kind in ("nan", "none", "inf"):
                bar[("open", "high", "low", "close")[sizes[i] % 4]] = {
                    "nan": math.nan,
                    "none": None,
                    "inf": math.inf,
                }[kind]
            elif kind == "low":
                for key in ("open", "high", "low", "close"):
                    bar[key] = bar[key] / 10
            else:
                bar["high"], bar["low"] = bar["low"] - 0.25, bar["high"] + 0.25
        i += 1
    return bars


thresholds_strategy = st.builds(
    Thresholds,
    min_price=st.sampled_from([0.0, 1000.0, 1999.5]),
    discontinuity=st.sampled_from([1.0, 3.0, 50.0, 500.0]),
    small_range=st.sampled_from([0.0, 0.5, 1.0, 5.0]),
    big_gap=st.sampled_from([0.25, 2.0, 150.0]),
    flat_gap=st.sampled_from([0.0, 0.5, 50.0]),
    reference_window=st.integers(1, 9),
)


def to_frame(bars: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(
        bars,
        schema={
            "ts": pl.Datetime("us", "UTC"),
            "open": pl.Float64,
            "high": pl.Float64,
            "low": pl.Float64,
            "close": pl.Float64,
        },
    )


def as_rows(frame: pl.DataFrame) -> list[dict]:
    return frame.to_dicts()


PROPERTY_SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(
    bars=bar_series(),
    profile=st.sampled_from(["basic", "full"]),
    thresholds=thresholds_strategy,
)
def test_hygiene_matches_reference(bars: list[dict], profile: str, thresholds: Thresholds) -> None:
    expected = reference_hygiene(bars, profile, thresholds.__dict__)
    codes = reason_codes(thresholds)
    flagged = flag_bars(to_frame(bars).lazy(), profile, thresholds).collect()  # type: ignore[arg-type]
    got = [[codes[col] for col in codes if row[col]] for row in flagged.iter_rows(named=True)]
    assert got == expected


@PROPERTY_SETTINGS
@given(
    bars=bar_series(),
    profile=st.sampled_from(["basic", "full"]),
    thresholds=thresholds_strategy,
    strength=st.integers(1, 5),
    window=st.tuples(st.integers(0, 100), st.integers(0, 100)),
)
def test_events_match_reference(
    bars: list[dict], profile: str, thresholds: Thresholds, strength: int, window: tuple[int, int]
) -> None:
    lo, hi = sorted(window)
    start = T0 + lo * 3 * INTERVAL
    end = T0 + (hi * 3 + 1) * INTERVAL
    expected = reference_events(bars, "SYM", strength, INTERVAL, profile, thresholds.__dict__, start, end)
    result = compute_events(
        to_frame(bars),
        symbol="SYM",
        strength=strength,
        bar_interval=INTERVAL,
        profile=profile,  # type: ignore[arg-type]
        thresholds=thresholds,
        start=start,
        end_exclusive=end,
    )
    assert as_rows(result.events) == expected
    codes = reference_hygiene(bars, profile, thresholds.__dict__)
    assert result.bars == len(bars)
    assert result.bad_bars == sum(1 for c in codes if c)
    counts: dict[str, int] = {}
    for bar_codes in codes:
        for code in bar_codes:
            counts[code] = counts.get(code, 0) + 1
    assert result.bad_by_rule == counts


@PROPERTY_SETTINGS
@given(
    bars=bar_series(min_size=30),
    strength=st.integers(1, 3),
    split=st.integers(1, 200),
)
def test_consecutive_ranges_partition_events(bars: list[dict], strength: int, split: int) -> None:
    """Events of [a, c) are exactly those of [a, b) followed by those of [b, c): none lost or repeated."""
    kwargs = dict(
        symbol="SYM",
        strength=strength,
        bar_interval=INTERVAL,
        profile="basic",
        thresholds=Thresholds(),
    )
    a, c = T0, T0 + timedelta(days=1)
    b = T0 + split * INTERVAL
    whole = compute_events(to_frame(bars), start=a, end_exclusive=c, **kwargs).events
    left = compute_events(to_frame(bars), start=a, end_exclusive=b, **kwargs).events
    right = compute_events(to_frame(bars), start=b, end_exclusive=c, **kwargs).events
    assert pl.concat([left, right]).equals(whole)


@settings(max_examples=200, deadline=None)
@given(
    confirmed=st.lists(st.integers(0, 60), min_size=0, max_size=80),
    chunk_events=st.integers(1, 12),
)
def test_chunk_plan_tiles_the_range(confirmed: list[int], chunk_events: int) -> None:
    """Chunks hold every event once, never split a confirmed_at, and their spans tile the range."""
    start, end = T0, T0 + timedelta(hours=2)
    events = pl.DataFrame(
        {"confirmed_at": sorted(T0 + timedelta(minutes=m) for m in confirmed)},
        schema={"confirmed_at": pl.Datetime("us", "UTC")},
    )
    chunks = plan_chunks(events, start, end, chunk_events)
    assert chunks[0].span_start == start and chunks[-1].span_end == end
    for before, after in itertools.pairwise(chunks):
        assert before.span_end == after.span_start
    assert sum(c.size for c in chunks) == events.height
    for chunk in chunks:
        times = chunk.events["confirmed_at"]
        if chunk.size:
            assert times.min() >= chunk.span_start and times.max() < chunk.span_end
            # a chunk is only larger than asked when equal confirmed_at values forced it
            assert chunk.size <= chunk_events or times.n_unique() < chunk.size


@PROPERTY_SETTINGS
@given(
    bars=bar_series(min_size=10, max_size=120),
    profile=st.sampled_from(["basic", "full"]),
    thresholds=thresholds_strategy,
    strength=st.integers(1, 5),
    cuts=st.lists(st.integers(0, 120), max_size=8),
)
def test_streaming_slices_equal_a_single_pass(
    bars: list[dict], profile: str, thresholds: Thresholds, strength: int, cuts: list[int]
) -> None:
    """Any split of the bars into time slices gives the reference's events and counts."""
    from triangles_polars.stream import StreamingDetector, merge_counts

    start, end = T0, T0 + timedelta(days=2)
    expected = reference_events(bars, "SYM", strength, INTERVAL, profile, thresholds.__dict__, start, end)
    frame = to_frame(bars)
    detector = StreamingDetector("SYM", strength, INTERVAL, profile, thresholds, start, end)  # type: ignore[arg-type]
    bounds = [0, *sorted(c for c in cuts if c < frame.height), frame.height]
    parts, bad, by_rule = [], 0, {}
    for lo, hi in itertools.pairwise(bounds):
        result = detector.push(frame.slice(lo, hi - lo))
        parts.append(result.events)
        bad += result.bad_bars
        merge_counts(by_rule, result.bad_by_rule)
    assert as_rows(pl.concat(parts)) == expected
    codes = reference_hygiene(bars, profile, thresholds.__dict__)
    assert bad == sum(1 for c in codes if c)
    assert by_rule == {code: sum(code in c for c in codes) for c in codes for code in c}
