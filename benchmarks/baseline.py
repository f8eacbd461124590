"""The contender to beat: the field report's row-by-row psycopg2 backfill, rebuilt faithfully.

What the report's backfill script did (after its patch; see ``docs/baseline.md``), step by step:

1. **read** - one psycopg2 query of the bars, ``ORDER BY ts``, ``fetchall()`` into Python rows;
2. **hygiene + detect** - plain Python loops over those rows: the report's clean-table hygiene
   (:func:`clean_bars`: OHLC integrity, every price >= 1000; ``docs/contract.md#hygiene``), then
   swing pivots (:func:`swing_pivots`) and one triangle per pivot with two pivots before it
   (:func:`triangle_events`), as ``docs/contract.md#triangle-events`` defines them;
3. **write** - ``PURGE=1`` delete of the range, then ``psycopg2.extras.execute_values`` with
   ``page_size=500`` and ``INSERT ... ON CONFLICT DO NOTHING``, one commit per batch of 500
   events, and the patch's reconnect-and-retry-once on ``OperationalError``.

The suite checks that the events it writes are the product's, row for row. The events table is
created beforehand by the suite with the product's DDL, so this module needs no Polars (nor
anything of the product): its peak RSS is the script's own. Run it alone with
``python -m benchmarks.run_one baseline ...``.
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timedelta
from typing import Any

from benchmarks.common import EVENT_COLUMNS, pg_connect
from benchmarks.results import RunResult

BATCH = 500  # events per execute_values call and per commit, as in the field report
MIN_PRICE = 1000.0  # the report's clean-table check: "if o < 1000 or h < 1000 ..."
BAR_INTERVAL = timedelta(minutes=1)

Bar = tuple[datetime, float, float, float, float]  # ts, open, high, low, close
Pivot = tuple[int, str, float]  # position among the good bars, "H" or "L", price


def clean_bars(rows: list[Bar]) -> tuple[list[Bar], int]:
    """The report's clean-table hygiene: (good bars, number of bad bars).

    A bar is bad when a price is missing or not finite, when its high and low do not hold its
    open and close (OHLC integrity), or else when any price is below 1000.
    """
    good = []
    for bar in rows:
        _ts, o, h, lo, c = bar
        if o is None or h is None or lo is None or c is None:
            continue
        if not (math.isfinite(o) and math.isfinite(h) and math.isfinite(lo) and math.isfinite(c)):
            continue
        if h < max(o, c) or lo > min(o, c) or h < lo:
            continue
        if o < MIN_PRICE or h < MIN_PRICE or lo < MIN_PRICE or c < MIN_PRICE:
            continue
        good.append(bar)
    return good, len(rows) - len(good)


def swing_pivots(bars: list[Bar], k: int) -> list[Pivot]:
    """Swing highs and lows of strength ``k`` in sequence order (position, then order in the bar).

    A swing high at i: its high is above every high of the k bars before it and at least every
    high of the k bars after it (a swing low: the same with lows, below); both windows complete.
    A bar that is both gives two pivots: the low first if it closed at or above its open.
    """
    highs = [bar[2] for bar in bars]
    lows = [bar[3] for bar in bars]
    pivots: list[Pivot] = []
    for i in range(k, len(bars) - k):
        high = highs[i] > max(highs[i - k : i]) and highs[i] >= max(highs[i + 1 : i + k + 1])
        low = lows[i] < min(lows[i - k : i]) and lows[i] <= min(lows[i + 1 : i + k + 1])
        if high and low:
            if bars[i][4] >= bars[i][1]:
                pivots += [(i, "L", lows[i]), (i, "H", highs[i])]
            else:
                pivots += [(i, "H", highs[i]), (i, "L", lows[i])]
        elif high:
            pivots.append((i, "H", highs[i]))
        elif low:
            pivots.append((i, "L", lows[i]))
    return pivots


def triangle_events(
    bars: list[Bar],
    pivots: list[Pivot],
    symbol: str,
    k: int,
    start: datetime,
    end_exclusive: datetime,
) -> list[tuple[Any, ...]]:
    """One event per pivot C with two pivots A, B before it, confirmed at the close of the bar
    k positions after C's, kept when ``start <= confirmed_at < end_exclusive``; rows in the
    order of ``EVENT_COLUMNS``."""
    events = []
    for j in range(2, len(pivots)):
        (pa, ka, xa), (pb, kb, xb), (pc, kc, xc) = pivots[j - 2], pivots[j - 1], pivots[j]
        confirmed_at = bars[pc + k][0] + BAR_INTERVAL
        if start <= confirmed_at < end_exclusive:
            a_ts, b_ts, c_ts = bars[pa][0], bars[pb][0], bars[pc][0]
            pattern, legs, spans = ka + kb + kc, (xb - xa, xc - xb), (pb - pa, pc - pb)
            events.append(
                (symbol, k, confirmed_at, pattern, a_ts, b_ts, c_ts, ka, kb, kc, xa, xb, xc, *legs, *spans)
            )
    return events


def run_baseline(
    url: str,
    *,
    symbol: str,
    strength: int,
    bars_table: str,
    events_table: str,
    anchor: datetime,
    start: datetime,
    end_exclusive: datetime,
    purge: bool = True,
) -> RunResult:
    """Run the field report's method once: its stage seconds and counts."""
    import psycopg2
    from psycopg2.extras import execute_values

    stages: dict[str, float] = {}
    began = time.perf_counter()

    # --- read: fetch every bar of the range, in time order, into Python objects.
    tick = time.perf_counter()
    conn = pg_connect(url)
    cursor = conn.cursor()
    cursor.execute(
        f"SELECT ts, open, high, low, close FROM {bars_table} "
        "WHERE symbol = %s AND ts >= %s AND ts < %s ORDER BY ts",
        (symbol, anchor, end_exclusive),
    )
    rows = cursor.fetchall()
    conn.commit()
    stages["read"] = time.perf_counter() - tick

    # --- hygiene + detect: the row-by-row loops.
    tick = time.perf_counter()
    bars, bad_bars = clean_bars(rows)
    n_bars = len(rows)
    del rows
    triangles = triangle_events(bars, swing_pivots(bars, strength), symbol, strength, start, end_exclusive)
    del bars
    stages["detect"] = time.perf_counter() - tick

    # --- write: PURGE=1, then execute_values batches of 500 with a commit each.
    tick = time.perf_counter()
    purged = 0
    if purge:
        cursor.execute(
            f"DELETE FROM {events_table} WHERE symbol = %s AND strength = %s "
            "AND confirmed_at >= %s AND confirmed_at < %s",
            (symbol, strength, start, end_exclusive),
        )
        purged = cursor.rowcount
        conn.commit()
    sql = f"INSERT INTO {events_table} ({', '.join(EVENT_COLUMNS)}) VALUES %s ON CONFLICT DO NOTHING"
    inserted = batches = retries = 0
    for batch_start in range(0, len(triangles), BATCH):
        batch = triangles[batch_start : batch_start + BATCH]
        try:
            execute_values(cursor, sql, batch, page_size=BATCH)
            conn.commit()
        except psycopg2.OperationalError:
            # The patch: reconnect and retry the batch once.
            retries += 1
            try:
                cursor.close()
                conn.close()
            except psycopg2.Error:
                pass
            conn = pg_connect(url)
            cursor = conn.cursor()
            execute_values(cursor, sql, batch, page_size=BATCH)
            conn.commit()
        inserted += max(cursor.rowcount, 0)
        batches += 1
    cursor.close()
    conn.close()
    stages["write"] = time.perf_counter() - tick

    return RunResult(
        contender="baseline",
        e2e_s=time.perf_counter() - began,
        stage_seconds=stages,
        bars=n_bars,
        events=len(triangles),
        counts={
            "bad_bars": bad_bars,
            "rows_inserted": inserted,
            "purged": purged,
            "batches": batches,
            "commits": batches + (1 if purge else 0),
            "retries": retries,
        },
    )
