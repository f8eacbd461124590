"""Property tests: the vectorized hygiene + detection equal the plain-Python reference of the contract.

Random bars have ties (prices on a coarse tick grid), outside bars, time gaps, and planted
corruption: spikes, short bad runs, flat bars, small-range gaps, NaN/None/inf, low prices and
high < low; both hygiene profiles; strengths 1–5; random reference windows and thresholds.

Why several series per example: a Polars run over a few hundred bars costs the same as over a
few dozen (its price is per query, not per row), while the reference costs per bar. So every
example draws ``SERIES_PER_EXAMPLE`` independent bar series, each with its own corruption mix,
starting again at 2000 after a gap in time, and the vectorized code runs once over all of them
glued end to end; ``MAX_EXAMPLES × SERIES_PER_EXAMPLE`` series per test are checked against
the reference in a fraction of the time (the glue points are one more thing checked: a series
is judged against the tail of the one before it). A series is drawn as one byte string, four
bytes a bar (:func:`decode_bars`): hypothesis draws a byte string as one choice, where a list of
integers is one choice per integer and cost more than the code under test. It still shrinks to
a small counterexample: fewer bars, each with the smallest bytes that still fail.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reference import reference_events, reference_hygiene
from triangles_polars.chunks import plan_chunks
from triangles_polars.hygiene import flag_bars, reason_codes
from triangles_polars.settings import Thresholds
from triangles_polars.stream import StreamingDetector, compute_events, merge_counts

T0 = datetime(2025, 1, 6, tzinfo=UTC)
INTERVAL = timedelta(minutes=1)
CORRUPTIONS = ("spike", "run", "flat", "small_gap", "nan", "none", "inf", "low", "inverted")

# How many independent series one example glues together, and how many examples a test runs:
# MAX_EXAMPLES × SERIES_PER_EXAMPLE = 250 series per test (docs/guarantees.md).
SERIES_PER_EXAMPLE = 5
MAX_EXAMPLES = 50
# Slice boundaries per example: 0..12, uniform (~300 per test, as many as 250 single series had).
STREAM_CUTS = 12
SERIES_GAPS = (timedelta(minutes=1), timedelta(hours=1), timedelta(days=1))  # before the next series

# One bar is four bytes: two little-endian 16-bit integers, a move code and a corruption code
# (each taken modulo its number of codes), split into mixed-radix digits (least significant
# first). Digit 0 of every field is the plainest bar (no move, the next minute, no wick, no
# corruption), so shrinking the bytes towards 0 simplifies the bar. Random bytes make every digit
# about uniform, the corruption roll (the lowest digit of its code) included.
STEPS = (0, 1, -1, 2, -2, 3, -3, 4, -4, 5, -5, 6, -6)  # close − open, in ticks
GAPS = (1, 1, 1, 1, 2, 3, 17, 60)  # minutes since the bar before
WICKS = 4  # ticks of wick above and below the body: 0..3
OPEN_GAPS = (0, 1, -1, 2, -2)  # open − previous close, in ticks
MOVE_DIGITS = (len(STEPS), len(GAPS), WICKS, WICKS, len(OPEN_GAPS))
ROLLS = 20  # a bar is corrupt when its roll is in the top `share` of 0..ROLLS-1
SIZES = tuple(range(2, 41))  # the corruption's size (× 25 points)
CORRUPTION_DIGITS = (ROLLS, len(CORRUPTIONS), len(SIZES))
MOVE_CODES, CORRUPTION_CODES = math.prod(MOVE_DIGITS), math.prod(CORRUPTION_DIGITS)
BYTES_PER_BAR = 4
# Share of a series' bars that are corrupt. The former generator drew a float per bar and
# compared it with 0.05 or 0.2; hypothesis' floats favour 0, so ~30-40 % of those series' bars
# were corrupt in fact: these shares keep that much corruption, and a sparse mix too.
CORRUPT_SHARES = (0.0, 0.1, 0.3, 0.5)
TICK = 0.25


@dataclass(frozen=True)
class BarDraw:
    """What one bar's code says: its move, its time gap, its wicks, and how it may be corrupted."""

    step: int
    gap: int
    wick_up: int
    wick_down: int
    open_gap: int
    kind: str
    size: int
    roll: int


def digits(code: int, radices: tuple[int, ...]) -> list[int]:
    """Mixed-radix digits of ``code``, least significant first."""
    out = []
    for radix in radices:
        code, digit = divmod(code, radix)
        out.append(digit)
    return out


@functools.cache
def decode_bar(move: int, corruption: int) -> BarDraw:
    """A bar's fields from its two codes (``0, 0`` → a flat, clean bar one minute after the one before)."""
    step, gap, up, down, open_gap = digits(move, MOVE_DIGITS)
    roll, kind, size = digits(corruption, CORRUPTION_DIGITS)
    return BarDraw(
        STEPS[step], GAPS[gap], up, down, OPEN_GAPS[open_gap], CORRUPTIONS[kind], SIZES[size], roll
    )


def build_series(draws: list[BarDraw], corrupt_share: float, after: datetime) -> list[dict]:
    """Bars on a 0.25 grid from 2000 with small moves (many ties), gaps in time and planted corruption."""
    n = len(draws)
    bars = []
    close = 2000.0
    ts = after
    for d in draws:
        ts = ts + d.gap * INTERVAL
        o = close + d.open_gap * TICK
        c = o + d.step * TICK
        h = max(o, c) + d.wick_up * TICK
        lo = min(o, c) - d.wick_down * TICK
        close = c
        bars.append({"ts": ts, "open": o, "high": h, "low": lo, "close": c})
    corrupt_from = ROLLS * (1 - corrupt_share)
    i = 0
    while i < n:
        d = draws[i]
        if d.roll >= corrupt_from:
            bar, kind, size = bars[i], d.kind, d.size * 25.0
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
                bar[("open", "high", "low", "close")[d.size % 4]] = {
                    "nan": math.nan,
                    "none": None,
                    "inf": math.inf,
                }[kind]
            elif kind == "low":
                for key in ("open", "high", "low", "close"):
                    bar[key] = bar[key] / 10
            else:
                bar["high"], bar["low"] = bar["low"] - TICK, bar["high"] + TICK
        i += 1
    return bars


def decode_bars(data: bytes) -> list[BarDraw]:
    """One bar per four bytes (``bytes(4)`` → a flat, clean bar one minute after the one before)."""
    bars = []
    for at in range(0, len(data) - BYTES_PER_BAR + 1, BYTES_PER_BAR):
        move = int.from_bytes(data[at : at + 2], "little") % MOVE_CODES
        corruption = int.from_bytes(data[at + 2 : at + 4], "little") % CORRUPTION_CODES
        bars.append(decode_bar(move, corruption))
    return bars


@st.composite
def one_series(draw: st.DrawFn, after: datetime, min_size: int, max_size: int) -> list[dict]:
    """One independent series: its own length (uniform, as a market day would be) and corruption mix."""
    n = draw(st.integers(min_size, max_size))
    # A byte string of a fixed size, of which the series takes its first n bars: hypothesis fills a
    # byte string whose size changed from one example to the next mostly with zeros.
    data = draw(st.binary(min_size=max_size * BYTES_PER_BAR, max_size=max_size * BYTES_PER_BAR))
    data = data[: n * BYTES_PER_BAR]
    share = draw(st.sampled_from(CORRUPT_SHARES))
    return build_series(decode_bars(data), share, after)


@st.composite
def bar_series(
    draw: st.DrawFn, min_size: int = 8, max_size: int = 90, series: int = SERIES_PER_EXAMPLE
) -> list[dict]:
    """``series`` independent series glued end to end in time, each restarting at 2000.

    The first has ``min_size``..``max_size`` bars, the others 0..``max_size`` (so a failure
    can shrink to the first series alone).
    """
    bars: list[dict] = []
    after = T0
    for index in range(series):
        bars += draw(one_series(after, min_size if index == 0 else 0, max_size))
        after = bars[-1]["ts"] + draw(st.sampled_from(SERIES_GAPS)) if bars else after
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


def bad_counts(codes: list[list[str]]) -> dict[str, int]:
    """Bars per reason code, from the reference's codes."""
    counts: dict[str, int] = {}
    for bar_codes in codes:
        for code in bar_codes:
            counts[code] = counts.get(code, 0) + 1
    return counts


PROPERTY_SETTINGS = settings(
    max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
# Hygiene alone is one small query per example: one series per example, 250 examples.
HYGIENE_SETTINGS = settings(PROPERTY_SETTINGS, max_examples=MAX_EXAMPLES * SERIES_PER_EXAMPLE)


@HYGIENE_SETTINGS
@given(
    bars=bar_series(series=1),
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
    window=st.tuples(st.integers(0, 1000), st.integers(0, 1000)),
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
    assert result.bad_by_rule == bad_counts(codes)


@PROPERTY_SETTINGS
@given(
    bars=bar_series(min_size=30),
    strength=st.integers(1, 3),
    split=st.integers(1, 3000),
)
def test_consecutive_ranges_partition_events(bars: list[dict], strength: int, split: int) -> None:
    """Events of [a, b) followed by those of [b, c) are exactly the events of [a, c): none lost or repeated.

    The whole range is the reference's (its filter on ``confirmed_at`` partitions by construction):
    two Polars runs per example instead of three.
    """
    kwargs = dict(
        symbol="SYM",
        strength=strength,
        bar_interval=INTERVAL,
        profile="basic",
        thresholds=Thresholds(),
    )
    a, c = T0, T0 + timedelta(days=30)
    b = T0 + split * INTERVAL
    whole = reference_events(bars, "SYM", strength, INTERVAL, "basic", Thresholds().__dict__, a, c)
    left = compute_events(to_frame(bars), start=a, end_exclusive=b, **kwargs).events
    right = compute_events(to_frame(bars), start=b, end_exclusive=c, **kwargs).events
    assert as_rows(pl.concat([left, right])) == whole


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
    cuts=st.integers(0, STREAM_CUTS).flatmap(
        lambda n: st.lists(st.integers(0, 1000), min_size=n, max_size=n)
    ),
)
def test_streaming_slices_equal_a_single_pass(
    bars: list[dict], profile: str, thresholds: Thresholds, strength: int, cuts: list[int]
) -> None:
    """Any split of the bars into time slices gives the reference's events and counts."""
    start, end = T0, T0 + timedelta(days=30)
    expected = reference_events(bars, "SYM", strength, INTERVAL, profile, thresholds.__dict__, start, end)
    frame = to_frame(bars)
    detector = StreamingDetector("SYM", strength, INTERVAL, profile, thresholds, start, end)  # type: ignore[arg-type]
    bounds = [0, *sorted(c * frame.height // 1000 for c in cuts), frame.height]  # cuts in ‰ of the bars
    parts, bad, by_rule = [], 0, {}
    for lo, hi in itertools.pairwise(bounds):
        result = detector.push(frame.slice(lo, hi - lo))
        parts.append(result.events)
        bad += result.bad_bars
        merge_counts(by_rule, result.bad_by_rule)
    assert as_rows(pl.concat(parts)) == expected
    codes = reference_hygiene(bars, profile, thresholds.__dict__)
    assert bad == sum(1 for c in codes if c)
    assert by_rule == bad_counts(codes)
