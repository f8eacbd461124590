"""Streaming detection: bars arrive in time slices; results equal a single pass over all of them.

Between slices the detector carries exactly the state that the next slice's bars can depend on:

* hygiene: the last ``reference_window`` bars that passed rules 1–2 (the ``ref`` median's inputs);
* detection: the last ``2k`` good bars with their global positions (a pivot confirmed by a new
  bar at ``i+k`` looks back to ``i−k``), and the last two pivots (A and B of the next events).

Each event is emitted by the slice holding the bar that confirms its C pivot, so no event is
emitted twice or lost; memory is bounded by the slice size, not the history length.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import polars as pl

from triangles_polars.detect import (
    EVENT_SCHEMA,
    confirmed_between,
    find_pivots,
    triangles_from_pivots,
)
from triangles_polars.hygiene import OHLC, count_bad_bars, flag_bars
from triangles_polars.settings import HygieneProfile, Thresholds

BAR_COLUMNS = ["ts", *OHLC]  # what hygiene and detection read of a bar


@dataclass
class DetectionResult:
    """Events confirmed by a slice's bars (inside the run's range) and the slice's bad-bar counts."""

    events: pl.DataFrame
    bars: int
    bad_bars: int
    bad_by_rule: dict[str, int]


@dataclass
class StreamingDetector:
    """Hygiene + detection over consecutive time slices of one symbol's bars."""

    symbol: str
    strength: int
    bar_interval: timedelta
    profile: HygieneProfile
    thresholds: Thresholds
    start: datetime
    end_exclusive: datetime
    # Carried state (empty at the start of the data).
    hygiene_tail: pl.DataFrame = field(init=False)
    good_tail: pl.DataFrame = field(init=False)
    pivot_tail: pl.DataFrame | None = field(default=None, init=False)
    next_pos: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        schema = {"ts": pl.Datetime("us", "UTC"), **{c: pl.Float64 for c in BAR_COLUMNS[1:]}}
        self.hygiene_tail = pl.DataFrame(schema=schema)
        self.good_tail = pl.DataFrame(schema={"pos": pl.Int64, **schema})

    def push(self, bars: pl.DataFrame) -> DetectionResult:
        """Process the next slice (sorted by ts, unique, later than every earlier slice)."""
        k = self.strength
        context = self.hygiene_tail.height
        combined = pl.concat([self.hygiene_tail, bars.select(BAR_COLUMNS)]).lazy()
        flagged = flag_bars(combined, self.profile, self.thresholds).slice(context)

        passed_early = ~(pl.col("bad_ohlc_integrity") | pl.col("bad_price"))
        hygiene_tail = pl.concat(
            [self.hygiene_tail.lazy(), flagged.filter(passed_early).select(BAR_COLUMNS)]
        ).tail(self.thresholds.reference_window if self.profile == "full" else 0)
        first_new = self.next_pos
        good = (
            flagged.filter(~pl.col("is_bad"))
            .select(BAR_COLUMNS)
            .with_columns((pl.int_range(pl.len(), dtype=pl.Int64) + first_new).alias("pos"))
        )
        sequence = pl.concat([self.good_tail.lazy(), good.select(self.good_tail.columns)])
        pivots = find_pivots(sequence, k, self.bar_interval).filter(pl.col("pos") + k >= first_new)
        if self.pivot_tail is not None:
            pivots = pl.concat([self.pivot_tail.lazy(), pivots])
        events = confirmed_between(
            triangles_from_pivots(pivots, self.symbol, self.strength), self.start, self.end_exclusive
        )
        # One collect for everything: Polars computes the shared hygiene sub-plan once.
        events_df, counts_df, self.hygiene_tail, self.good_tail, self.pivot_tail, good_n = pl.collect_all(
            [
                events,
                count_bad_bars(flagged, self.thresholds),
                hygiene_tail,
                sequence.tail(2 * k),
                pivots.tail(2),
                good.select(pl.len()),
            ]
        )
        self.next_pos += int(good_n.item())
        counts = counts_df.row(0, named=True)
        bars_n = int(counts.pop("bars"))
        bad = int(counts.pop("bad_bars") or 0)
        return DetectionResult(
            events=events_df.cast(EVENT_SCHEMA),
            bars=bars_n,
            bad_bars=bad,
            bad_by_rule={code: int(n) for code, n in counts.items() if n},
        )


def merge_counts(total: dict[str, int], part: dict[str, int]) -> dict[str, int]:
    """Add per-code counts (keeps the rule order of first appearance)."""
    for code, n in part.items():
        total[code] = total.get(code, 0) + n
    return total


__all__ = ["DetectionResult", "StreamingDetector", "merge_counts"]
