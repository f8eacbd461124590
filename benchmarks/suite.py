"""The benchmark suite: ``python -m benchmarks [--years 1 4 16] [--quick] ...``.

For each size of history it makes sure the bars table exists (created once, reused), then runs
each contender in a process of its own (``python -m benchmarks.run_one``) on the same bars and
server: the product (default settings), the product with ``reader="adbc"`` (``product_adbc``),
the floor (binary COPY out and in) and the field report's baseline. It checks that the baseline
and both product contenders wrote identical events, runs the field report's 1-day
incremental command through the real ``triangles`` CLI (timed from outside, process start
included), and writes a JSON file, a chart and the README table. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.common import (
    DAILY_ANCHOR,
    DAILY_DAY,
    DATA_DIR,
    EVENT_COLUMNS,
    README,
    RESULTS_DIR,
    STRENGTH,
    SYMBOL,
    URL_ENV,
    Size,
    add_server_arguments,
    add_years_argument,
    last_json_line,
    machine_info,
    pg_execute,
    resolve_server,
    run_child,
    table,
)
from benchmarks.results import PRODUCTS, Check, DailyResult, DailyRun, RunResult, SizeResult, SuiteResult

ALL_CONTENDERS = ("product", "product_adbc", "floor", "baseline", "daily")
QUICK_SIZES = (Size.of_days(14), Size.of_days(42))
WORKER_TIMEOUT_S = 4 * 3600.0
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,40}$")


def say(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------------- arguments


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark triangles_polars against the field report's row-by-row script and "
        "against the COPY floor, on synthetic NQ 1-minute history.",
    )
    add_years_argument(parser)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes (14 and 42 days), one repetition, two 1-day runs: a smoke test in seconds",
    )
    add_server_arguments(parser, schema="bench", schema_help="schema of the bars and events tables")
    parser.add_argument(
        "--contenders",
        nargs="+",
        choices=ALL_CONTENDERS,
        default=list(ALL_CONTENDERS),
        help="what to run (default: all); 'daily' is the 1-day incremental CLI run",
    )
    parser.add_argument(
        "--baseline-max-years",
        type=float,
        default=4.0,
        metavar="N",
        help="run the (slow) baseline only on sizes of at most N years (default: 4)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        metavar="N",
        help="runs of each product contender and of the floor per size; the median is reported "
        "(default: 3, 1 with --quick; the baseline runs once)",
    )
    parser.add_argument(
        "--daily-runs",
        type=int,
        default=None,
        metavar="N",
        help="timed 1-day CLI runs after one warm-up run (default: 5, 2 with --quick)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for the results JSON and the chart "
        "(default: benchmarks/results, benchmarks/.data/quick with --quick)",
    )
    parser.add_argument(
        "--readme",
        type=Path,
        default=None,
        help="README whose results section is regenerated (default: benchmarks/README.md; "
        "not touched with --quick unless given)",
    )
    parser.add_argument("--no-readme", action="store_true", help="do not regenerate any README")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS.json",
        help="only regenerate the chart and README from an existing results file",
    )
    parser.add_argument("--stop-server", action="store_true", help="stop the embedded server at the end")
    args = parser.parse_args(argv)
    if not _IDENT.match(args.schema):
        parser.error(f"bad --schema {args.schema!r}: letters, digits and underscores")
    if any(y < 1 or y > 16 for y in args.years):
        parser.error("--years must be between 1 and 16 (the synthetic history starts in 2010)")
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.daily_runs = args.daily_runs or (2 if args.quick else 5)
    if args.out is None:
        args.out = DATA_DIR / "quick" if args.quick else RESULTS_DIR
    if args.no_readme:
        args.readme = None
    elif args.readme is None and not args.quick:
        args.readme = README
    return args


# ---------------------------------------------------------------------------- server


def checkpoint(url: str) -> None:
    """Flush dirty buffers before a timed run, so no run pays for the previous one's writes."""
    with contextlib.suppress(Exception):  # not a superuser: fine, just noisier
        pg_execute(url, "CHECKPOINT")


def create_events_table(url: str, name: str) -> None:
    """(Re)create an empty events table with the product's DDL."""
    from triangles_polars.schema import events_table_ddl
    from triangles_polars.settings import split_table_name

    pg_execute(url, f"DROP TABLE IF EXISTS {name}")
    schema, bare = split_table_name(name, "events table")
    for sql in events_table_ddl(schema, bare):
        pg_execute(url, sql)


# ---------------------------------------------------------------------------- one contender


def run_worker(
    url: str, contender: str, size: Size, bars_table: str, events_table: str, **extra: str
) -> RunResult:
    """One run of a contender in a process of its own, measured from outside too."""
    cmd = [sys.executable, "-m", "benchmarks.run_one", contender, "--bars-table", bars_table]
    cmd += ["--events-table", events_table, "--first-day", size.first_day.isoformat()]
    cmd += ["--last-day", size.last_day.isoformat()]
    for key, value in extra.items():
        cmd += [f"--{key.replace('_', '-')}", value]
    child = run_child(cmd, env={URL_ENV: url}, timeout=WORKER_TIMEOUT_S)
    if child.returncode != 0:
        raise RuntimeError(
            f"{contender} on {size.label} failed (exit {child.returncode}):\n{child.stderr[-3000:]}"
        )
    run = RunResult.from_json(last_json_line(child.stdout))
    return run.measured_from_outside(child.wall_s, child.maxrss_kb)


def repeat(times: int, prepare: Callable[[], None], run: Callable[[], RunResult]) -> RunResult:
    """``times`` runs, each after ``prepare`` (a fresh table, a CHECKPOINT); the median one, holding all."""
    runs = []
    for i in range(times):
        prepare()
        run_i = run()
        stages = ", ".join(f"{k} {v:.2f}" for k, v in run_i.stage_seconds.items())
        say(
            f"    {run_i.contender:<12} #{i + 1}: {run_i.e2e_s:8.2f} s  {run_i.events:,} events  "
            f"{run_i.peak_rss_mb} MB  ({stages})"
        )
        runs.append(run_i)
    return RunResult.median(runs)


# ---------------------------------------------------------------------------- checks


def compare_events(
    url: str, left: str, right: str, where: str = "TRUE", params: tuple[Any, ...] = ()
) -> Check:
    """Row-for-row comparison with SQL ``EXCEPT`` both ways (plus the row counts)."""
    cols = ", ".join(EVENT_COLUMNS)
    rows = pg_execute(
        url,
        f"""SELECT (SELECT count(*) FROM {left} WHERE {where}),
                   (SELECT count(*) FROM {right} WHERE {where}),
                   (SELECT count(*) FROM (SELECT {cols} FROM {left} WHERE {where}
                                          EXCEPT SELECT {cols} FROM {right} WHERE {where}) x),
                   (SELECT count(*) FROM (SELECT {cols} FROM {right} WHERE {where}
                                          EXCEPT SELECT {cols} FROM {left} WHERE {where}) y)""",
        params * 6,
    )
    n_left, n_right, only_left, only_right = (int(v) for v in rows[0])
    return Check(
        n_left == n_right and only_left == 0 and only_right == 0,
        {left: n_left, right: n_right},
        {left: only_left, right: only_right},
    )


# ---------------------------------------------------------------------------- one size


def run_size(url: str, args: argparse.Namespace, size: Size, workload: dict[str, Any]) -> SizeResult:
    bars_table = workload["bars_table"]
    tables = {
        name: table(args.schema, f"ev_{name}_{size.label}") for name in (*PRODUCTS, "baseline", "floor")
    }
    result = SizeResult(
        size=size.label,
        years=size.years,
        first_day=size.first_day.isoformat(),
        last_day=size.last_day.isoformat(),
        start=size.start.isoformat(),
        end=size.end.isoformat(),
        bars_table=bars_table,
        bars_in_table=workload["rows"],
        events_tables=tables,
    )
    # Warm-up read (not timed): every contender finds the bars in the same caches.
    anchor, _start, end_exclusive = size.range_bounds()
    pg_execute(
        url,
        f"SELECT count(*), sum(close) FROM {bars_table} WHERE symbol = %s AND ts >= %s AND ts < %s",
        (SYMBOL, anchor, end_exclusive),
    )
    contenders, runs = set(args.contenders), result.runs

    def fresh(name: str, create: bool) -> Callable[[], None]:
        def prepare() -> None:
            if create:
                create_events_table(url, tables[name])
            else:  # the product creates its own table, as on a first run
                pg_execute(url, f"DROP TABLE IF EXISTS {tables[name]}")
            checkpoint(url)

        return prepare

    for name in PRODUCTS:
        if name in contenders:
            runs[name] = repeat(
                args.repeat,
                fresh(name, False),
                lambda n=name: run_worker(url, n, size, bars_table, tables[n]),
            )
    if "floor" in contenders:
        # The write floor re-loads the product's events (the default product's, else product_adbc's).
        source = next((name for name in PRODUCTS if name in runs), None)
        extra = {"source_events_table": tables[source]} if source else {}
        floor = repeat(
            args.repeat,
            fresh("floor", True),
            lambda: run_worker(url, "floor", size, bars_table, tables["floor"], **extra),
        )
        note = "write floor not measured: it re-loads the product's events (run the product too)"
        runs["floor"] = floor if source else replace(floor, note=note)
    if "baseline" in contenders:
        if size.years <= args.baseline_max_years:
            runs["baseline"] = repeat(
                1,
                fresh("baseline", True),
                lambda: run_worker(url, "baseline", size, bars_table, tables["baseline"]),
            )
        else:
            result.skipped["baseline"] = (
                f"not run: {size.label} is over --baseline-max-years {args.baseline_max_years:g}"
            )

    # Events: each product contender against the baseline, product_adbc against the product too,
    # and the floor's (a copy of the product's) against its source.
    pairs = [("baseline", "product"), ("baseline", "product_adbc"), ("product_adbc", "product")]
    source = next((name for name in PRODUCTS if name in runs), None)
    if "floor" in runs and runs["floor"].events and source:
        pairs.append(("floor", source))
    for left, right in pairs:
        if left in runs and right in runs:
            result.checks[f"{left}_vs_{right}"] = compare_events(url, tables[left], tables[right])
    return result


# ---------------------------------------------------------------------------- the 1-day run


def triangles_command() -> list[str]:
    """The installed ``triangles`` console script (as a user runs it)."""
    script = Path(sys.executable).with_name("triangles")
    if script.exists():
        return [str(script)]
    found = shutil.which("triangles")
    return [found] if found else [sys.executable, "-m", "triangles_polars.cli"]


def run_daily(url: str, args: argparse.Namespace, size: Size, bars_table: str) -> DailyResult:
    """The field report's small-range test, through the real CLI, timed from outside."""
    events_table = table(args.schema, "ev_daily")
    day = DAILY_DAY.isoformat()
    cli = triangles_command()
    command = [*cli, "backfill", SYMBOL, day, day, str(STRENGTH), DAILY_ANCHOR]
    command += ["--bars-table", bars_table, "--events-table", events_table, "--quiet", "--json"]
    # As in the report: PURGE=1 and the database from the environment.
    env = {"TRIANGLES_DATABASE_URL": url, "PURGE": "1"}
    pg_execute(url, f"DROP TABLE IF EXISTS {events_table}")
    runs = []
    for i in range(args.daily_runs + 1):
        child = run_child(command, env=env, timeout=600)
        if child.returncode != 0:
            raise RuntimeError(f"1-day run failed (exit {child.returncode}):\n{child.stderr[-3000:]}")
        summary = last_json_line(child.stdout)
        runs.append(
            DailyRun(
                wall_s=round(child.wall_s, 4),
                duration_s=summary["duration_s"],
                peak_rss_mb=round(child.maxrss_kb / 1024, 1),
                bars_processed=summary["bars_processed"],
                triangles=summary["triangles"],
                stage_seconds=summary.get("stage_seconds", {}),
                commits=summary["commits"],
            )
        )
        label = "warm-up" if i == 0 else f"#{i}"
        say(f"    1-day {label:>7}: {child.wall_s:6.3f} s wall, {summary['triangles']} events")
    result = DailyResult(
        command=" ".join(["PURGE=1", "triangles", *command[len(cli) :]]),
        bars_table=bars_table,
        events_table=events_table,
        all_runs=runs,
    )
    # The incremental run must give the same events as the full-history run for that day.
    source = next((name for name in PRODUCTS if name in args.contenders), None)
    if source:
        full = table(args.schema, f"ev_{source}_{size.label}")
        lo = datetime(DAILY_DAY.year, DAILY_DAY.month, DAILY_DAY.day, tzinfo=UTC)
        where, bounds = "confirmed_at >= %s AND confirmed_at < %s", (lo, lo + timedelta(days=1))
        result.check = compare_events(url, events_table, full, where, bounds)
    return result


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from benchmarks import report

    if args.render:
        suite = SuiteResult.from_json(json.loads(args.render.read_text()))
        outputs = report.write_outputs(suite, args.out, args.readme, json_path=args.render)
        say("\n".join(f"wrote {p}" for p in outputs))
        return

    from triangles_polars.schema import EVENT_COLUMNS as PRODUCT_COLUMNS

    if tuple(PRODUCT_COLUMNS) != EVENT_COLUMNS:
        raise SystemExit(f"benchmarks.common.EVENT_COLUMNS is out of date: product has {PRODUCT_COLUMNS}")

    began = time.perf_counter()
    url, server = resolve_server(args)
    say(f"server: {server.get('url') or server['kind'] + ' (' + server['pgdata'] + ')'}")
    sizes = list(QUICK_SIZES) if args.quick else [Size.of_years(y) for y in sorted(set(args.years))]
    suite = SuiteResult(
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        quick=args.quick,
        machine=machine_info(url),
        server=server,
        config={
            "symbol": SYMBOL,
            "strength": STRENGTH,
            "sizes": [s.label for s in sizes],
            "contenders": list(args.contenders),
            "baseline_max_years": args.baseline_max_years,
            "repeat": args.repeat,
            "daily_runs": args.daily_runs,
            "schema": args.schema,
            "command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
        },
    )
    from benchmarks.workloads import ensure_schema, ensure_workload

    say("workloads:")
    ensure_schema(url, args.schema)
    for size in sizes:
        suite.workloads[size.label] = ensure_workload(url, args.schema, size, say=say)

    for size in sizes:
        workload = suite.workloads[size.label]
        say(f"{size.label} ({workload['rows']:,} bars, {size.start} .. {size.end}):")
        suite.sizes.append(run_size(url, args, size, workload))

    skipped = [s.label for s in sizes if s.years > args.baseline_max_years]
    if "baseline" in args.contenders and skipped:
        suite.notes.append(
            f"baseline not run on {', '.join(skipped)} (over --baseline-max-years "
            f"{args.baseline_max_years:g}); ratios against it are computed where it was measured"
        )

    if "daily" in args.contenders:
        largest = sizes[-1]
        bars_table = suite.workloads[largest.label]["bars_table"]
        say(f"1-day incremental run on {bars_table}:")
        suite.daily = run_daily(url, args, largest, bars_table)

    suite.machine["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    suite.finished_at = datetime.now(UTC).isoformat(timespec="seconds")
    suite.suite_wall_s = round(time.perf_counter() - began, 1)
    outputs = report.write_outputs(suite, args.out, args.readme)
    say("")
    say(report.markdown(suite, chart=None))
    say("\n".join(f"wrote {p}" for p in outputs))

    if args.stop_server and server["kind"] == "embedded":
        from triangles_polars.embedded import stop_server

        stop_server(args.pgdata)
        say("embedded server stopped")
