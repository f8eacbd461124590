"""``triangles demo``: the whole job on the embedded default, in well under a minute.

Seeds a year of synthetic NQ-like bars (once), backfills the year, exports Parquet and renders
one session's chart. Running it again reuses the bars and rewrites the same events (replace
mode), so it is safe to repeat.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from triangles_polars.db import Session, fetch_all, quote_ident, table_exists
from triangles_polars.embedded import database_url as resolve_url
from triangles_polars.pipeline import backfill
from triangles_polars.settings import BackfillSettings
from triangles_polars.summary import Progress

DEMO_SYMBOL = "SYNTH:NQ"
DEMO_BARS_TABLE = "bars_1m"
DEMO_FIRST_DAY = date(2024, 12, 1)
DEMO_LAST_DAY = date(2025, 11, 30)
DEMO_CHART_DAY = date(2025, 11, 25)  # a Tuesday
# The US cash session (09:30-16:00 New York = 14:30-21:00 UTC in November): ~390 readable candles.
DEMO_CHART_WINDOW = ("2025-11-25T14:30:00Z", "2025-11-25T21:00:00Z")


def _has_bars(url: str, symbol: str, table: str) -> bool:
    def probe(cur: Any) -> bool:
        if not table_exists(cur, None, table):
            return False
        sql = f"SELECT EXISTS (SELECT 1 FROM {quote_ident(table)} WHERE symbol = $1)"
        return bool(fetch_all(cur, sql, (symbol,))[0][0])

    with Session(url, "triangles_demo") as session:
        return session.run("looking for the demo bars", probe)


def run_demo(
    out_dir: str | Path = "triangles_out",
    *,
    database_url: str | None = None,
    progress: Progress | None = None,
    say: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """Seed, backfill, export, chart; returns where everything is."""
    from triangles_polars.bars import ingest_bars
    from triangles_polars.synthetic import generate_bars

    quiet = say is None
    out_dir = Path(out_dir)
    url, source = resolve_url(database_url)
    seeded = 0
    if not _has_bars(url, DEMO_SYMBOL, DEMO_BARS_TABLE):
        if not quiet:
            say(
                f"seeding a year of synthetic NQ bars ({DEMO_FIRST_DAY} → {DEMO_LAST_DAY}) as {DEMO_SYMBOL} …"
            )
        bars = generate_bars(DEMO_FIRST_DAY, DEMO_LAST_DAY, symbol=DEMO_SYMBOL, seed=2025)
        seeded = ingest_bars(url, bars, DEMO_BARS_TABLE)
    settings = BackfillSettings(
        symbol=DEMO_SYMBOL,
        start=DEMO_FIRST_DAY + timedelta(days=7),
        end=DEMO_LAST_DAY,
        database_url=url,
        bars_table=DEMO_BARS_TABLE,
        export_dir=out_dir / "parquet",
        resume=False,  # the demo rewrites its year every time (safe to repeat), even when it is covered
    )
    summary = backfill(settings, progress=progress)
    chart: str | None = None
    chart_note = ""
    try:
        from triangles_polars.plot import plot_window

        chart = str(
            plot_window(
                DEMO_SYMBOL,
                *DEMO_CHART_WINDOW,
                out_dir / f"chart_{DEMO_CHART_DAY}.png",
                database_url=url,
            )
        )
    except Exception as exc:
        chart_note = str(exc).splitlines()[0]
    if not quiet:
        from triangles_polars.progress import print_summary

        print_summary(summary)
        say("")
        say(f"events table : {summary.events_table} in {summary.database} ({source})")
        say(f"parquet      : {out_dir / 'parquet'}  (hive: symbol=…/year=…/, zstd)")
        say(f"chart        : {chart}" if chart else f"chart        : skipped ({chart_note})")
        say("next         : triangles backfill --help   ·   triangles plot --help")
    return {
        "summary": summary.to_json(),
        "bars_seeded": seeded,
        "database": summary.database,
        "parquet": str(out_dir / "parquet"),
        "chart": chart,
    }
