"""Tuning runs: the product on one benchmark workload with some settings changed, a few times.

    python -m benchmarks.tune                                  # defaults, 3 runs on bench.bars_16y
    python -m benchmarks.tune --settings '{"reader": "adbc"}'  # any BackfillSettings fields
    python -m benchmarks.tune --connectorx-protocol binary     # connectorx's other protocol
    POLARS_MAX_THREADS=1 python -m benchmarks.tune             # environment knobs work as usual

Run ``python -m benchmarks`` once first: it creates the workload tables. Each run writes into a
fresh events table (dropped before each run, then a ``CHECKPOINT``), like the suite's product
contender, and prints one line: wall seconds, this process's CPU seconds, the machine's busy
core-seconds, and the stage seconds. This is what the "Tuning: what was tried" table in
``benchmarks/README.md`` was measured with; the suite proper stays the reference for results.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.common import DATA_DIR, STRENGTH, SYMBOL, CpuMeter, Size, pg_execute


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tune", description=__doc__)
    parser.add_argument("--years", type=int, default=16, help="workload <schema>.bars_<N>y (default 16)")
    parser.add_argument("--bars-table", help="another bars table (default: the workload's)")
    parser.add_argument("--settings", default="{}", help="JSON object of BackfillSettings fields")
    parser.add_argument("--connectorx-protocol", choices=("cursor", "binary"), help="override the reader's")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--database-url", help="default: the embedded server of benchmarks/.data")
    parser.add_argument("--schema", default="bench", help="of the workload and of the scratch events table")
    args = parser.parse_args(argv)

    from triangles_polars import BackfillSettings, backfill, source
    from triangles_polars.embedded import start_server

    if args.connectorx_protocol:
        source.CONNECTORX_PROTOCOL = args.connectorx_protocol
    url = args.database_url or start_server(Path(DATA_DIR / "pgdata"))
    size = Size.of_years(args.years)
    events_table = f"{args.schema}.tune_events"
    settings = BackfillSettings(
        symbol=SYMBOL,
        start=size.start,
        end=size.end,
        strength=STRENGTH,
        database_url=url,
        bars_table=args.bars_table or f"{args.schema}.bars_{args.years}y",
        events_table=events_table,
        **json.loads(args.settings),
    )
    for run in range(1, args.runs + 1):
        pg_execute(url, f"DROP TABLE IF EXISTS {events_table}")
        pg_execute(url, "CHECKPOINT")
        with CpuMeter() as meter:
            summary = backfill(settings)
        stages = ", ".join(f"{k} {v:.2f}" for k, v in summary.stage_seconds.items())
        print(
            f"run {run}: {meter.wall_s:.2f} s wall, {meter.cpu.process_s:.2f} s process CPU, "
            f"{meter.cpu.machine_busy_core_s:.2f} busy core-s (machine); stages: {stages}; "
            f"{summary.triangles:,} events",
            flush=True,
        )
    pg_execute(url, f"DROP TABLE IF EXISTS {events_table}")


if __name__ == "__main__":
    main()
