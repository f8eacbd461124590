"""Worker: run one contender once, in its own process, and print one JSON line.

    python -m benchmarks.run_one {product,product_adbc,baseline,floor} --bars-table T \
        --events-table T --first-day YYYY-MM-DD --last-day YYYY-MM-DD [--source-events-table T]

``product`` is ``backfill`` with its default settings (the connectorx reader, in time slices);
``product_adbc`` the same with ``reader="adbc"`` (one query streamed over binary COPY).

The database URL comes from the ``BENCH_DATABASE_URL`` environment variable (never argv, so a
password stays out of process listings). The full-history range is START = first day + 7 days,
END = last day, bars from the first day (the product's default anchor, START - 7 days).

The JSON line is a :class:`benchmarks.results.RunResult`: ``e2e_s`` (the job, timed inside the
process after imports), ``stage_seconds``, ``bars``, ``events``, ``import_s``, the CPU figures, the
contender's counts and ``self_reported_peak_rss_mb`` (``VmHWM``). The suite also times the process
from outside and reads its peak RSS with ``wait4`` through the ``benchmarks.spawn`` launcher.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from datetime import date
from typing import Any

from benchmarks.common import STRENGTH, SYMBOL, URL_ENV, CpuMeter, Size, peak_rss_kb
from benchmarks.results import RunResult

CONTENDERS = ("product", "product_adbc", "baseline", "floor")
# The product's contenders: settings that differ from the defaults.
PRODUCT_VARIANTS: dict[str, dict[str, Any]] = {"product": {}, "product_adbc": {"reader": "adbc"}}


def _product(url: str, size: Size, args: argparse.Namespace) -> RunResult:
    tick = time.perf_counter()
    from triangles_polars import BackfillSettings, backfill

    imported = time.perf_counter() - tick
    settings = BackfillSettings(
        symbol=args.symbol,
        start=size.start,
        end=size.end,
        strength=args.strength,
        database_url=url,
        bars_table=args.bars_table,
        events_table=args.events_table,
        **PRODUCT_VARIANTS[args.contender],
    )
    with CpuMeter() as meter:
        summary = backfill(settings)
    return RunResult(
        contender=args.contender,
        e2e_s=meter.wall_s,
        stage_seconds=dict(summary.stage_seconds),
        bars=summary.bars_processed,
        events=summary.triangles,
        import_s=imported,
        cpu=meter.cpu,
        counts={
            "bad_bars": summary.bad_bars_skipped,
            "chunks": summary.chunks,
            "commits": summary.commits,
            "retries": summary.retries,
            "rows_inserted": summary.rows_inserted,
        },
        settings={
            "reader": settings.reader,
            "slice_days": settings.slice_days,
            "prefetch": settings.prefetch,
            "chunk_events": settings.chunk_events,
        },
    )


def _baseline(url: str, size: Size, args: argparse.Namespace) -> RunResult:
    tick = time.perf_counter()
    import psycopg2.extras  # noqa: F401  (timed as an import, like the product's)

    from benchmarks.baseline import run_baseline

    imported = time.perf_counter() - tick
    anchor, start, end_exclusive = size.range_bounds()
    with CpuMeter() as meter:
        result = run_baseline(
            url,
            symbol=args.symbol,
            strength=args.strength,
            bars_table=args.bars_table,
            events_table=args.events_table,
            anchor=anchor,
            start=start,
            end_exclusive=end_exclusive,
        )
    return replace(result, import_s=imported, cpu=meter.cpu)


def _floor(url: str, size: Size, args: argparse.Namespace) -> RunResult:
    tick = time.perf_counter()
    from benchmarks.floor import run_floor

    imported = time.perf_counter() - tick
    anchor, _start, end_exclusive = size.range_bounds()
    result = run_floor(  # meters its two timed parts itself
        url,
        symbol=args.symbol,
        bars_table=args.bars_table,
        anchor=anchor,
        end_exclusive=end_exclusive,
        source_events_table=args.source_events_table,
        events_table=args.events_table if args.source_events_table else None,
    )
    return replace(result, import_s=imported)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_one", description=__doc__)
    parser.add_argument("contender", choices=CONTENDERS)
    parser.add_argument("--bars-table", required=True)
    parser.add_argument("--events-table", required=True)
    parser.add_argument("--first-day", required=True, type=date.fromisoformat)
    parser.add_argument("--last-day", required=True, type=date.fromisoformat)
    parser.add_argument("--symbol", default=SYMBOL)
    parser.add_argument("--strength", type=int, default=STRENGTH)
    parser.add_argument("--source-events-table", help="floor only: the events to COPY back in")
    args = parser.parse_args(argv)
    url = os.environ.get(URL_ENV)
    if not url:
        parser.error(f"set {URL_ENV} to the database URL")
    size = Size("run", args.first_day, args.last_day, 0.0)
    run = {"product": _product, "product_adbc": _product, "baseline": _baseline, "floor": _floor}[
        args.contender
    ]
    result = run(url, size, args)
    result = replace(  # rates are derived from these, so they are rounded once, here
        result,
        e2e_s=round(result.e2e_s, 4),
        stage_seconds={stage: round(s, 4) for stage, s in result.stage_seconds.items()},
        import_s=round(result.import_s or 0.0, 4),
        self_reported_peak_rss_mb=round(peak_rss_kb() / 1024, 1),
    )
    sys.stdout.write(json.dumps(result.to_json(), default=str) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
