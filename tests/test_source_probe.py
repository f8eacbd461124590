"""What a task asks before reading, in one round trip: its window's first bar and whether the
data goes on past the window (``BarSource.probe``), against the bars themselves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from tests.helpers import NQ, Db
from triangles_polars.db import close_quietly, connect
from triangles_polars.settings import ReadSettings, Tables
from triangles_polars.source import BarSource

MINUTE = timedelta(minutes=1)


def _probe(db: Db, read: ReadSettings, lo: datetime, hi: datetime) -> tuple[datetime | None, bool]:
    source = BarSource(NQ, Tables(bars=db.bars_table), read)
    conn = connect(db.url)
    try:
        with conn.cursor() as cur:
            return source.inspect(cur, lo, hi).probe(cur, lo, hi)
    finally:
        close_quietly(conn)


@pytest.mark.parametrize("convention", ["open", "close"])
def test_probe_finds_first_bar_and_bars_past_the_window(
    db: Db, nq_bars: pl.DataFrame, convention: str
) -> None:
    stored = nq_bars.filter(pl.col("ts") < datetime(2025, 11, 5, tzinfo=UTC))
    db.load(stored)
    read = ReadSettings(ts_convention=convention)  # type: ignore[arg-type]
    shift = MINUTE if convention == "close" else timedelta(0)  # a stored ts is the bar's close
    opens = stored["ts"] - shift
    lo, hi = datetime(2025, 11, 1, tzinfo=UTC), datetime(2025, 11, 4, tzinfo=UTC)  # a weekend first

    first, goes_on = _probe(db, read, lo, hi)
    assert first == opens.filter((opens >= lo) & (opens < hi)).min()
    assert first is not None and first > lo  # Saturday and Sunday morning hold no bars
    assert goes_on

    last_open = opens.max()
    assert isinstance(last_open, datetime)
    assert _probe(db, read, lo, last_open) == (first, True)  # the last bar opens at the window's end
    assert _probe(db, read, lo, last_open + MINUTE) == (first, False)  # ... or inside it
    assert _probe(db, read, datetime(2025, 11, 1, tzinfo=UTC), datetime(2025, 11, 2, tzinfo=UTC)) == (
        None,
        True,
    )
    far = last_open + timedelta(days=1)
    assert _probe(db, read, far, far + timedelta(days=1)) == (None, False)
