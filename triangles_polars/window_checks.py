"""Facts about a task's bars that do not stop the run but change its result: warnings with the fix.

See ``docs/contract.md#warnings``. The task's stages record what they see (:class:`WindowFacts`:
first and last bar, their spacing, the pivots found before START); :func:`window_warnings` turns
the facts into one-line warnings, each saying what to do. Data flows one way: the stages fill
the facts, the run summary carries the warnings, the command prints them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import polars as pl

from triangles_polars.settings import Task

PIVOTS_NEEDED = 2  # the A and B pivots of the first event of a range
SPACING_SAMPLE = 20  # consecutive bars needed before their spacing is judged
# Bars of lookback to suggest per unit of strength: the first pivot's 2k+1 bars plus two pivots
# (swing pivots of strength k come about every 1.75k bars in NQ-like minute data) and a margin.
LOOKBACK_BARS_PER_K = 8


@dataclass
class WindowFacts:
    """What a task's bars showed (filled by the detect stage, batch by batch)."""

    first_bar: datetime | None = None  # open time of the first bar read
    last_bar: datetime | None = None  # open time of the last bar read
    bars: int = 0
    spacing: timedelta | None = None  # the most common gap between consecutive bars
    pivots_before_start: dict[int, int] = field(default_factory=dict)  # per strength, counted up to 2

    def observe(self, bars: pl.DataFrame) -> None:
        """Take in one batch of bars (``ts`` = open time, sorted)."""
        if bars.height == 0:
            return
        if self.first_bar is None:
            self.first_bar = bars["ts"][0]
        self.last_bar = bars["ts"][-1]
        self.bars += bars.height
        if self.spacing is None and bars.height > SPACING_SAMPLE:
            self.spacing = bar_spacing(bars["ts"])


def bar_spacing(ts: pl.Series) -> timedelta | None:
    """The most common gap between consecutive timestamps (session breaks and holidays are rare gaps).

    >>> from datetime import datetime, UTC
    >>> bar_spacing(pl.Series([datetime(2025, 1, 2, 14, m, tzinfo=UTC) for m in (0, 5, 10, 15, 30, 35)]))
    datetime.timedelta(seconds=300)
    """
    gaps = ts.diff().drop_nulls()
    if gaps.len() == 0:
        return None
    return gaps.mode().sort()[0]


def format_duration(value: timedelta) -> str:
    """``timedelta(minutes=5)`` → ``"5m"``, as ``--bar-interval`` takes it.

    >>> [format_duration(timedelta(seconds=s)) for s in (30, 60, 300, 3600, 86400, 90)]
    ['30s', '1m', '5m', '1h', '1d', '90s']
    """
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _at(value: datetime) -> str:
    return value.isoformat()


def window_warnings(
    task: Task,
    interval: timedelta,
    facts: WindowFacts,
    *,
    data_goes_on: bool,
    bars_before_anchor: Callable[[], bool],
) -> list[str]:
    """The warnings of one task whose window held bars.

    ``data_goes_on``: the symbol has a bar at or after the range's end. ``bars_before_anchor()``:
    it has bars before the anchor (so an earlier anchor would give the lookback more bars);
    asked only when a lookback looks short.
    """
    if facts.last_bar is None:
        return []
    span, symbol = task.time_range, task.symbol
    out = []
    last_close = facts.last_bar + interval
    if facts.last_bar < span.start:  # bars before START only
        if data_goes_on:
            out.append(
                f"{symbol}: no bars between {_at(span.start)} and {_at(span.end_exclusive)} "
                "(a holiday or a quiet window?): no events"
            )
        else:
            out.append(
                f"{symbol}: no bars from {_at(span.start)}: the last bar closes at {_at(last_close)}, so the "
                "range holds no events yet; run `triangles update` when newer bars are loaded"
            )
    elif not data_goes_on and last_close <= span.end_exclusive - timedelta(days=1):
        out.append(
            f"{symbol}: the range runs to {_at(span.end_exclusive)} but the last bar closes at "
            f"{_at(last_close)}: events after it come once newer bars are loaded (`triangles update`)"
        )
    if facts.spacing is not None and facts.spacing != interval:
        out.append(
            f"{symbol}: bars are {format_duration(facts.spacing)} apart but the bar interval is "
            f"{format_duration(interval)}, so confirmed_at is off: pass --bar-interval {format_duration(facts.spacing)}"
        )
    lookback = _lookback_warnings(task, facts) if facts.last_bar >= span.start else []
    if lookback and bars_before_anchor():
        out.extend(lookback)
    return out


def _lookback_warnings(task: Task, facts: WindowFacts) -> list[str]:
    """A lookback (ANCHOR..START) without the two pivots before the first event loses events near START."""
    span = task.time_range
    short = [k for k in task.strengths if facts.pivots_before_start.get(k, 0) < PIVOTS_NEEDED]
    if not short:
        return []
    days = _days_needed(max(short), facts)
    found = ", ".join(f"k={k}: {facts.pivots_before_start.get(k, 0)} found" for k in short)
    suggested = (span.start - timedelta(days=days)).date().isoformat()
    return [
        f"{task.symbol}: the bars from the anchor {_at(span.anchor)} to START {_at(span.start)} hold fewer "
        f"than the {PIVOTS_NEEDED} pivots that the first events need ({found}), so events near START may be "
        f"missing: load about {days} days before START (backfill --anchor {suggested})"
    ]


def _days_needed(strength: int, facts: WindowFacts) -> int:
    """Days of bars that hold about ``LOOKBACK_BARS_PER_K × k`` bars at the density of the bars read."""
    span_days = (
        (facts.last_bar - facts.first_bar).total_seconds() / 86400
        if facts.first_bar is not None and facts.last_bar is not None
        else 0.0
    )
    per_day = facts.bars / span_days if span_days >= 1 else facts.bars or 1
    return max(7, math.ceil(LOOKBACK_BARS_PER_K * strength / per_day))


__all__ = ["WindowFacts", "bar_spacing", "format_duration", "window_warnings"]
