"""The contender to beat: the field report's row-by-row psycopg2 backfill, rebuilt faithfully.

What the report's ``scripts/phase_c_backfill_triangles.py`` did (after its patch), step by step:

1. **read** - one psycopg2 query of the bars, ``ORDER BY ts``, ``fetchall()`` into Python rows;
2. **hygiene + detect** - a plain Python loop over the rows. The loop here is the test oracle
   ``tests/reference.py`` (SPEC §3-4 row by row), imported rather than written a second time,
   with the clean-table hygiene of the report (``basic``: OHLC integrity, prices >= 1000);
3. **write** - ``PURGE=1`` delete of the range, then ``psycopg2.extras.execute_values`` with
   ``page_size=500`` and ``INSERT ... ON CONFLICT DO NOTHING``, one commit per batch of 500
   events, and the patch's reconnect-and-retry-once on ``OperationalError``.

The events table is created beforehand by the suite with the product's DDL
(``triangles_polars.sink.events_table_ddl``), so this module needs no Polars: its peak RSS is
the script's own. Run it alone with ``python -m benchmarks.run_one baseline ...``.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

from benchmarks.common import EVENT_COLUMNS, pg_connect

BATCH = 500  # events per execute_values call and per commit, as in the field report
MIN_PRICE = 1000.0  # the report's clean-table check: "if o < 1000 or h < 1000 ..."


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
) -> dict[str, Any]:
    """Run the field report's method once; returns its figures (stage seconds, counts)."""
    import psycopg2
    from psycopg2.extras import execute_values

    from tests.reference import reference_events

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
    bars = [{"ts": ts, "open": o, "high": h, "low": lo, "close": c} for ts, o, h, lo, c in rows]
    del rows
    conn.commit()
    stages["read"] = time.perf_counter() - tick

    # --- hygiene + detect: the row-by-row loop (SPEC §3-4, tests/reference.py).
    tick = time.perf_counter()
    events = reference_events(
        bars,
        symbol,
        strength,
        timedelta(minutes=1),
        "basic",
        {"min_price": MIN_PRICE},
        start,
        end_exclusive,
    )
    n_bars = len(bars)
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
    triangle_events = [tuple(event[c] for c in EVENT_COLUMNS) for event in events]
    del events
    inserted = commits = retries = 0
    for batch_start in range(0, len(triangle_events), BATCH):
        batch = triangle_events[batch_start : batch_start + BATCH]
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
        commits += 1
    cursor.close()
    conn.close()
    stages["write"] = time.perf_counter() - tick

    return {
        "e2e_s": time.perf_counter() - began,
        "stage_seconds": stages,
        "bars": n_bars,
        "events": len(triangle_events),
        "rows_inserted": inserted,
        "purged": purged,
        "batches": commits,
        "commits": commits + (1 if purge else 0),
        "retries": retries,
    }
