"""Parquet export: hive-partitioned ``symbol=…/year=…/``, zstd, the event columns (``docs/contract.md#the-events-table``).

Re-exporting a range rewrites the partitions it touches: rows of the same symbol and strength
confirmed inside the range are replaced, rows outside it are kept, so nothing is duplicated.
Each partition is written to a temporary file and renamed into place (never half-written).
"""

from __future__ import annotations

import os
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import polars as pl

from triangles_polars.db import RetryPolicy, Session, qualified, table_exists
from triangles_polars.errors import BadInput
from triangles_polars.schema import EVENT_COLUMNS, EVENT_SCHEMA
from triangles_polars.settings import (
    DEFAULT_EVENTS_TABLE,
    DEFAULT_STRENGTH,
    BackfillSettings,
    Window,
    parse_strengths,
    split_table_name,
)

EXPORT_NAME = "triangles_export"

PARTITION_FILE = "events.parquet"
_EPSILON = timedelta(microseconds=1)


def partition_dir(out_dir: Path, symbol: str, year: int) -> Path:
    """``out_dir/symbol=…/year=…``; characters unsafe in a path segment are percent-encoded."""
    return out_dir / f"symbol={quote(symbol, safe=' :.,-_+=@')}" / f"year={year}"


def _read_partition(path: Path) -> pl.DataFrame:
    files = sorted(path.glob("*.parquet"))
    if not files:
        return pl.DataFrame(schema={k: v for k, v in EVENT_SCHEMA.items() if k != "symbol"})
    return pl.concat([pl.read_parquet(f, hive_partitioning=False) for f in files])


def export_events(
    events: pl.DataFrame,
    out_dir: str | Path,
    *,
    symbol: str | None = None,
    strength: int | None = None,
    range_start: datetime | None = None,
    range_end: datetime | None = None,
) -> list[Path]:
    """Write ``events`` into hive partitions under ``out_dir``; returns the partition files written.

    With ``range_start``/``range_end`` (and ``symbol``, ``strength``), existing rows of that
    symbol and strength confirmed in the range are replaced even where the range now has none.
    """
    out_dir = Path(out_dir)
    events = events.select(EVENT_COLUMNS).cast(EVENT_SCHEMA)
    if range_start is None or range_end is None:
        if events.height == 0:
            return []
        range_start = events["confirmed_at"].min()
        range_end = events["confirmed_at"].max() + _EPSILON
    keys = events.select("symbol", pl.col("confirmed_at").dt.year().alias("year")).unique()
    if symbol is not None:
        years = range(range_start.year, (range_end - _EPSILON).year + 1)
        keys = pl.concat(
            [keys, pl.DataFrame({"symbol": [symbol] * len(years), "year": list(years)}, schema=keys.schema)]
        ).unique()
    strengths = events["strength"].unique().to_list() if strength is None else [strength]
    written = []
    for sym, year in keys.sort("symbol", "year").iter_rows():
        target = partition_dir(out_dir, sym, year)
        existing = _read_partition(target)
        replaced = (
            (pl.col("strength").is_in(strengths))
            & (pl.col("confirmed_at") >= range_start)
            & (pl.col("confirmed_at") < range_end)
        )
        fresh = events.filter((pl.col("symbol") == sym) & (pl.col("confirmed_at").dt.year() == year)).drop(
            "symbol"
        )
        merged = pl.concat([existing.filter(~replaced), fresh]).sort(
            "strength", "confirmed_at", "c_ts", "c_kind"
        )
        if merged.height == 0:
            for old in target.glob("*.parquet"):
                old.unlink()
            continue
        target.mkdir(parents=True, exist_ok=True)
        tmp = target / f".{uuid.uuid4().hex}.tmp"
        merged.write_parquet(tmp, compression="zstd", statistics=True)
        os.replace(tmp, target / PARTITION_FILE)
        for old in target.glob("*.parquet"):
            if old.name != PARTITION_FILE:
                old.unlink()
        written.append(target / PARTITION_FILE)
    return written


def read_events(
    session: Session, events_table: str, symbol: str, strengths: tuple[int, ...], window: Window
) -> pl.DataFrame:
    """Events of a symbol and strengths confirmed in the window, as stored in PostgreSQL."""
    schema, table = split_table_name(events_table, "events table name")

    def fetch(cur: Any) -> pl.DataFrame:
        if not table_exists(cur, schema, table):
            raise BadInput(f"events table {events_table!r} does not exist: run a backfill first")
        cur.execute(
            f"SELECT * FROM {qualified(schema, table)} WHERE symbol = $1 AND strength = ANY($2) "
            "AND confirmed_at >= $3 AND confirmed_at < $4",
            parameters=(symbol, list(strengths), window.start, window.end_exclusive),
        )
        return pl.from_arrow(cur.fetch_arrow_table())  # type: ignore[return-value]

    return session.run("reading events", fetch)


def export_stored(url: str, settings: BackfillSettings, out_dir: str | Path) -> dict[str, object]:
    """Export what a backfill wrote: its symbol, strengths and range (``backfill --export``)."""
    window = Window(settings.time_range.start, settings.time_range.end_exclusive)
    with Session(url, EXPORT_NAME, settings.retry) as session:
        return _export(session, settings.tables.events, settings.symbol, settings.strengths, window, out_dir)


def export_range(
    symbol: str,
    start: str,
    end: str,
    out_dir: str | Path,
    *,
    strength: int = DEFAULT_STRENGTH,
    database_url: str | None = None,
    events_table: str = DEFAULT_EVENTS_TABLE,
    retry: RetryPolicy | None = None,
) -> dict[str, object]:
    """Read the events of SYMBOL confirmed in START..END from PostgreSQL and export them."""
    from triangles_polars.embedded import database_url as resolve

    window = Window.parse(start, end)
    split_table_name(events_table, "events table name")
    url, _ = resolve(database_url)
    with Session(url, EXPORT_NAME, retry) as session:
        return _export(session, events_table, symbol, parse_strengths(strength), window, out_dir, speak=True)


def _why_empty(cur: Any, events_table: str, symbol: str, strengths: tuple[int, ...], window: Window) -> str:
    """Why a range holds no events: bad input when the symbol and strength have none at all
    (naming what the table holds), else the warning for a quiet range (a holiday)."""
    from triangles_polars.inventory import event_series, events_hint

    held = [s for s in event_series(cur, events_table, symbol, count=False) if s.strength in strengths]
    keys = f"{symbol} k={','.join(map(str, strengths))}"
    if not held:
        raise BadInput(f"no events for {keys} in {events_table!r}{events_hint(cur, events_table)}")
    spans = "; ".join(
        f"k={s.strength} from {s.first_confirmed_at.isoformat()} to {s.last_confirmed_at.isoformat()}"
        for s in held
    )
    return (
        f"no events of {keys} confirmed between {window.start.isoformat()} and "
        f"{window.end_exclusive.isoformat()} (a holiday or a quiet window?); its events run {spans}"
    )


def _export(
    session: Session,
    events_table: str,
    symbol: str,
    strengths: tuple[int, ...],
    window: Window,
    out_dir: str | Path,
    *,
    speak: bool = False,
) -> dict[str, object]:
    """Read and write the range; with ``speak``, an empty range is explained before anything is written."""
    events = read_events(session, events_table, symbol, strengths, window)
    warnings = []
    if speak and events.height == 0:  # docs/contract.md#empty-results-speak
        warnings.append(
            session.run(
                "looking for events", lambda cur: _why_empty(cur, events_table, symbol, strengths, window)
            )
        )
    files = export_events(
        events,
        out_dir,
        symbol=symbol,
        strength=strengths[0] if len(strengths) == 1 else None,
        range_start=window.start,
        range_end=window.end_exclusive,
    )
    return {
        "events": events.height,
        "files": [str(f) for f in files],
        "out": str(out_dir),
        "warnings": warnings,
    }
