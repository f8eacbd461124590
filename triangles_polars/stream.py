"""Streaming detection: bars arrive in time slices; results equal a single pass over all of them.

Between slices the detector carries exactly the state that the next slice's bars can depend on:

* hygiene: the last ``reference_window`` bars that passed rules 1–2 (the ``ref`` median's inputs);
* detection: the last ``2k`` good bars with their global positions (a pivot confirmed by a new
  bar at ``i+k`` looks back to ``i−k``), and the last two pivots (A and B of the next events).

Each event is emitted by the slice holding the bar that confirms its C pivot, so no event is
emitted twice or lost; memory is bounded by the slice size, not the history length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

import polars as pl

from triangles_polars.detect import find_pivots, triangles_from_pivots
from triangles_polars.hygiene import count_bad_bars, flag_bars
from triangles_polars.schema import DETECT_COLUMNS, DETECT_SCHEMA, EVENT_SCHEMA, OHLC, UTC_TS, to_utc
from triangles_polars.settings import DEFAULT_STRENGTH, HygieneProfile, Thresholds, resolve_thresholds

BAR_COLUMNS = list(DETECT_COLUMNS)  # what hygiene and detection read of a bar
_EARLIEST = datetime(1, 1, 2, tzinfo=UTC)
_LATEST = datetime(9999, 12, 30, tzinfo=UTC)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Up to this many bars a push runs on Polars' in-memory engine: for a slice of a few thousand
# bars the default engine spends more on setting up than on the work (push of 8 days of
# 1-minute bars, strengths 3,5,8: 29 ms → 15 ms), and even a year's slice (333k bars) is faster
# in memory (94 → 59 ms). Above it (a slice_days far beyond the default) the default engine
# chooses, which can stream. The results are the same on either engine (tests/test_properties.py).
IN_MEMORY_PUSH_BARS = 1_000_000


def utc_literal(instant: datetime) -> pl.Expr:
    """An instant as a UTC-microsecond literal, built from its integer (``pl.lit`` of an aware
    datetime goes through a one-element Series: ~0.3 ms, several per push)."""
    aware = instant if instant.tzinfo is not None else instant.replace(tzinfo=UTC)  # naive: UTC
    return pl.lit((aware - _EPOCH) // timedelta(microseconds=1), pl.Int64).cast(UTC_TS)


def engine_for(bars: int) -> Literal["in-memory", "auto"]:
    """The Polars engine for a push of ``bars`` bars (see ``IN_MEMORY_PUSH_BARS``)."""
    return "in-memory" if bars <= IN_MEMORY_PUSH_BARS else "auto"


@dataclass
class DetectionResult:
    """Events confirmed by a slice's bars (inside the run's range) and the slice's bad-bar counts.

    ``events`` holds every requested strength, sorted by strength then ``confirmed_at``.
    """

    events: pl.DataFrame
    bars: int
    bad_bars: int
    bad_by_rule: dict[str, int]


@dataclass
class StreamingDetector:
    """Hygiene (once) + detection (once per strength) over consecutive time slices of one symbol's bars."""

    symbol: str
    strength: int | Sequence[int]
    bar_interval: timedelta
    profile: HygieneProfile
    thresholds: Thresholds
    start: datetime
    end_exclusive: datetime
    count_from: datetime | None = None  # bars before it are context only: not counted
    # Carried state (empty at the start of the data).
    hygiene_tail: pl.DataFrame = field(init=False)
    good_tail: pl.DataFrame = field(init=False)
    pivot_tails: dict[int, pl.DataFrame] = field(default_factory=dict, init=False)
    next_pos: int = field(default=0, init=False)
    # Per strength, pivots confirmed before ``start``, counted up to 2: fewer means the bars
    # loaded before START were too few for the first events (docs/contract.md#warnings).
    pivots_before_start: dict[int, int] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.strengths = (self.strength,) if isinstance(self.strength, int) else tuple(self.strength)
        self.hygiene_tail = pl.DataFrame(schema=DETECT_SCHEMA)
        self.good_tail = pl.DataFrame(schema={"pos": pl.Int64, **DETECT_SCHEMA})
        # confirmed_at in [start, end): built once (a datetime literal costs Polars a Series each time).
        self._in_range = (pl.col("confirmed_at") >= utc_literal(self.start)) & (
            pl.col("confirmed_at") < utc_literal(self.end_exclusive)
        )
        self._before_start = pl.col("confirmed_at") < utc_literal(self.start)
        self._counted = None if self.count_from is None else pl.col("ts") >= utc_literal(self.count_from)

    def push(self, bars: pl.DataFrame) -> DetectionResult:
        """Process the next slice (sorted by ts, unique, later than every earlier slice).

        Three small collects (hygiene, pivots, events) rather than one: a slice of a short task
        holds a few thousand bars, and one plan of every output for every strength costs Polars
        more to optimise than the work itself.
        """
        engine = engine_for(bars.height)
        context = self.hygiene_tail.height
        combined = pl.concat([self.hygiene_tail, bars.select(BAR_COLUMNS)]).lazy()
        flagged = flag_bars(combined, self.profile, self.thresholds).slice(context).collect(engine=engine)
        counted = flagged if self._counted is None else flagged.filter(self._counted)
        passed_early = ~(pl.col("bad_ohlc_integrity") | pl.col("bad_price"))
        keep = self.thresholds.reference_window if self.profile == "full" else 0
        self.hygiene_tail = pl.concat(
            [self.hygiene_tail, flagged.filter(passed_early).select(BAR_COLUMNS)]
        ).tail(keep)
        first_new = self.next_pos
        good = flagged.filter(~pl.col("is_bad")).select(BAR_COLUMNS)
        self.next_pos += good.height
        good = good.with_columns((pl.int_range(pl.len(), dtype=pl.Int64) + first_new).alias("pos"))
        # The good-bar sequence is the same for every strength: it is built once.
        sequence = pl.concat([self.good_tail, good.select(self.good_tail.columns)]).lazy()
        self.good_tail = sequence.tail(2 * max(self.strengths)).collect(engine=engine)
        new_pivots = pl.collect_all(
            [
                find_pivots(sequence, k, self.bar_interval).filter(pl.col("pos") + k >= first_new)
                for k in self.strengths
            ],
            engine=engine,
        )
        events = []
        for k, found in zip(self.strengths, new_pivots, strict=True):
            if self.pivots_before_start.get(k, 0) < 2:  # each pivot is new in exactly one slice
                early = found.filter(self._before_start).height
                self.pivots_before_start[k] = min(2, self.pivots_before_start.get(k, 0) + early)
            pivots = pl.concat([self.pivot_tails[k], found]) if k in self.pivot_tails else found
            self.pivot_tails[k] = pivots.tail(2)
            events.append(triangles_from_pivots(pivots.lazy(), self.symbol, k).filter(self._in_range))
        events_df, counts_df = pl.collect_all(
            [pl.concat(events), count_bad_bars(counted.lazy(), self.thresholds)], engine=engine
        )
        counts = counts_df.row(0, named=True)
        bars_n = int(counts.pop("bars"))
        bad = int(counts.pop("bad_bars") or 0)
        return DetectionResult(
            events=events_df.cast(EVENT_SCHEMA),
            bars=bars_n,
            bad_bars=bad,
            bad_by_rule={code: int(n) for code, n in counts.items() if n},
        )


def compute_events(
    bars: pl.DataFrame,
    *,
    symbol: str | None = None,
    strength: int | Sequence[int] = DEFAULT_STRENGTH,
    bar_interval: timedelta = timedelta(minutes=1),
    profile: HygieneProfile = "basic",
    thresholds: Thresholds | None = None,
    start: datetime | None = None,
    end_exclusive: datetime | None = None,
) -> DetectionResult:
    """Hygiene + detection on bars of one symbol (``ts`` = open time, sorted, unique): no database.

    Returns the events confirmed in ``[start, end_exclusive)`` (default: all of them) sorted by
    strength and ``confirmed_at``, and the bad-bar counts over all the bars given. ``symbol``
    defaults to the frame's ``symbol`` column; ``thresholds`` to the symbol's built-in profile.

    >>> from datetime import datetime, UTC
    >>> closes = [10, 11, 12, 11, 10, 11, 12, 13, 12, 11, 10, 11, 12]
    >>> bars = pl.DataFrame({
    ...     "ts": [datetime(2025, 1, 2, 14, m, tzinfo=UTC) for m in range(len(closes))],
    ...     "open": closes, "high": [c + 0.5 for c in closes],
    ...     "low": [c - 0.5 for c in closes], "close": closes,
    ... })
    >>> result = compute_events(bars, symbol="DEMO", strength=1)
    >>> result.events.select("pattern", "c_price").rows()
    [('HLH', 13.5), ('LHL', 9.5)]
    >>> result.bad_bars
    0
    """
    if symbol is None:
        symbol = str(bars["symbol"][0]) if "symbol" in bars.columns and bars.height else ""
    if thresholds is None:
        thresholds = resolve_thresholds(symbol, None, {})[0]
    detector = StreamingDetector(
        symbol, strength, bar_interval, profile, thresholds, start or _EARLIEST, end_exclusive or _LATEST
    )
    typed = bars.select(to_utc(pl.col("ts"), bars.schema["ts"]), *(pl.col(c).cast(pl.Float64) for c in OHLC))
    return detector.push(typed)


def merge_counts(total: dict[str, int], part: dict[str, int]) -> dict[str, int]:
    """Add per-code counts (keeps the rule order of first appearance)."""
    for code, n in part.items():
        total[code] = total.get(code, 0) + n
    return total


__all__ = ["DetectionResult", "StreamingDetector", "compute_events", "merge_counts"]
