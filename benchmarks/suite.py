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
import statistics
import sys
import time
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
    ChildResult,
    Size,
    last_json_line,
    machine_info,
    pg_execute,
    run_child,
    table,
)

ALL_CONTENDERS = ("product", "product_adbc", "floor", "baseline", "daily")
# The product's contenders, measured alike (``product`` = default settings, the headline).
PRODUCTS = ("product", "product_adbc")
QUICK_SIZES = (Size.of_days(14), Size.of_days(42))
DEFAULT_YEARS = (1, 4, 16)
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
    parser.add_argument(
        "--years",
        type=int,
        nargs="+",
        default=list(DEFAULT_YEARS),
        metavar="N",
        help="sizes of history, in years ending 2025-12-31 (default: 1 4 16)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes (14 and 42 days), one repetition, two 1-day runs: a smoke test in seconds",
    )
    parser.add_argument(
        "--database-url",
        help="PostgreSQL to benchmark on (default: an embedded server with its data in "
        "benchmarks/.data/pgdata, started if needed and left running)",
    )
    parser.add_argument(
        "--pgdata",
        type=Path,
        default=DATA_DIR / "pgdata",
        help="data folder of the embedded server (default: benchmarks/.data/pgdata)",
    )
    parser.add_argument(
        "--schema", default="bench", help="schema of the bars and events tables (default: bench)"
    )
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


def resolve_server(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    from triangles_polars.db import mask_url

    if args.database_url:
        return args.database_url, {"kind": "external", "url": mask_url(args.database_url)}
    from triangles_polars.embedded import start_server

    url = start_server(args.pgdata)
    return url, {"kind": "embedded", "pgdata": str(args.pgdata), "url": mask_url(url)}


def checkpoint(url: str) -> None:
    """Flush dirty buffers before a timed run, so no run pays for the previous one's writes."""
    with contextlib.suppress(Exception):  # not a superuser: fine, just noisier
        pg_execute(url, "CHECKPOINT")


def create_events_table(url: str, name: str) -> None:
    """(Re)create an empty events table with the product's DDL."""
    from triangles_polars.settings import split_table_name
    from triangles_polars.sink import events_table_ddl

    pg_execute(url, f"DROP TABLE IF EXISTS {name}")
    schema, bare = split_table_name(name, "events table")
    for sql in events_table_ddl(schema, bare):
        pg_execute(url, sql)


# ---------------------------------------------------------------------------- one contender


def run_worker(
    url: str, contender: str, size: Size, bars_table: str, events_table: str, **extra: str
) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.run_one",
        contender,
        "--bars-table",
        bars_table,
        "--events-table",
        events_table,
        "--first-day",
        size.first_day.isoformat(),
        "--last-day",
        size.last_day.isoformat(),
    ]
    for key, value in extra.items():
        cmd += [f"--{key.replace('_', '-')}", value]
    child = run_child(cmd, env={URL_ENV: url}, timeout=WORKER_TIMEOUT_S)
    if child.returncode != 0:
        raise RuntimeError(
            f"{contender} on {size.label} failed (exit {child.returncode}):\n{child.stderr[-3000:]}"
        )
    result = last_json_line(child.stdout)
    return finish_figures(result, child)


def finish_figures(result: dict[str, Any], child: ChildResult) -> dict[str, Any]:
    """Add the figures every contender reports: rates, per-bar time, peak RSS, process wall."""
    e2e = float(result["e2e_s"])
    bars = int(result.get("bars") or 0)
    events = int(result.get("events") or 0)
    result["e2e_s"] = round(e2e, 4)
    result["stage_seconds"] = {k: round(float(v), 4) for k, v in result.get("stage_seconds", {}).items()}
    result["bars_per_s"] = round(bars / e2e) if e2e > 0 else None
    result["events_per_s"] = round(events / e2e) if e2e > 0 else None
    result["us_per_bar"] = round(e2e / bars * 1e6, 4) if bars else None
    result["peak_rss_mb"] = round(child.maxrss_kb / 1024, 1)
    if result.get("vm_hwm_kb"):
        result["self_reported_peak_rss_mb"] = round(result["vm_hwm_kb"] / 1024, 1)
    result["process_wall_s"] = round(child.wall_s, 4)
    if "import_s" in result:
        result["import_s"] = round(float(result["import_s"]), 4)
    return result


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median end-to-end time (lower middle for an even count), plus all times."""
    ordered = sorted(runs, key=lambda r: r["e2e_s"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["runs_e2e_s"] = [r["e2e_s"] for r in runs]
    chosen["runs_peak_rss_mb"] = [r["peak_rss_mb"] for r in runs]
    chosen["repeats"] = len(runs)
    return chosen


def ratio_keys(name: str) -> dict[str, str]:
    """Keys of a product contender's ratios in ``entry["ratios"]`` (``product`` keeps the old ones)."""
    if name == "product":
        return {
            "over_floor": "product_over_floor",
            "read": "read_over_read_floor",
            "write": "write_over_write_floor",
            "baseline": "baseline_over_product",
        }
    return {
        "over_floor": f"{name}_over_floor",
        "read": f"{name}_read_over_read_floor",
        "write": f"{name}_write_over_write_floor",
        "baseline": f"baseline_over_{name}",
    }


# ---------------------------------------------------------------------------- checks


def compare_events(
    url: str, left: str, right: str, where: str = "TRUE", params: tuple[Any, ...] = ()
) -> dict[str, Any]:
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
    return {
        "identical": n_left == n_right and only_left == 0 and only_right == 0,
        "rows": {left: n_left, right: n_right},
        "only_in": {left: only_left, right: only_right},
    }


# ---------------------------------------------------------------------------- one size


def run_size(url: str, args: argparse.Namespace, size: Size, workload: dict[str, Any]) -> dict[str, Any]:
    schema = args.schema
    bars_table = workload["bars_table"]
    tables = {name: table(schema, f"ev_{name}_{size.label}") for name in (*PRODUCTS, "baseline", "floor")}
    entry: dict[str, Any] = {
        "size": size.label,
        "years": size.years,
        "first_day": size.first_day.isoformat(),
        "last_day": size.last_day.isoformat(),
        "start": size.start.isoformat(),
        "end": size.end.isoformat(),
        "bars_table": bars_table,
        "bars_in_table": workload["rows"],
        "events_tables": tables,
        "contenders": {},
        "checks": {},
        "ratios": {},
    }
    # Warm-up read (not timed): every contender finds the bars in the same caches.
    anchor, _start, end_exclusive = size.range_bounds()
    pg_execute(
        url,
        f"SELECT count(*), sum(close) FROM {bars_table} WHERE symbol = %s AND ts >= %s AND ts < %s",
        (SYMBOL, anchor, end_exclusive),
    )
    contenders = set(args.contenders)

    for name in PRODUCTS:
        if name not in contenders:
            continue
        runs = []
        for i in range(args.repeat):
            # The product creates its own table (as on a first run); each repeat starts empty.
            pg_execute(url, f"DROP TABLE IF EXISTS {tables[name]}")
            checkpoint(url)
            run = run_worker(url, name, size, bars_table, tables[name])
            say(
                f"    {name:<12} #{i + 1}: {run['e2e_s']:8.2f} s  {run['events']:,} events  "
                f"{run['peak_rss_mb']} MB"
            )
            runs.append(run)
        entry["contenders"][name] = median_run(runs)

    if "floor" in contenders:
        # The write floor re-loads the product's events (the default product's, else product_adbc's).
        source = next((tables[name] for name in PRODUCTS if name in contenders), None)
        runs = []
        for i in range(args.repeat):
            create_events_table(url, tables["floor"])
            checkpoint(url)
            extra = {"source_events_table": source} if source else {}
            run = run_worker(url, "floor", size, bars_table, tables["floor"], **extra)
            say(
                f"    floor        #{i + 1}: {run['e2e_s']:8.2f} s  "
                f"(read {run['stage_seconds'].get('read', 0):.2f}, write {run['stage_seconds'].get('write', 0):.2f})"
            )
            runs.append(run)
        floor = median_run(runs)
        if not source:
            floor["note"] = "write floor not measured: it re-loads the product's events (run the product too)"
        entry["contenders"]["floor"] = floor

    if "baseline" in contenders:
        if size.years <= args.baseline_max_years:
            create_events_table(url, tables["baseline"])
            checkpoint(url)
            run = run_worker(url, "baseline", size, bars_table, tables["baseline"])
            run.update(repeats=1, runs_e2e_s=[run["e2e_s"]], runs_peak_rss_mb=[run["peak_rss_mb"]])
            say(
                f"    baseline       : {run['e2e_s']:8.2f} s  {run['events']:,} events  {run['peak_rss_mb']} MB"
            )
            entry["contenders"]["baseline"] = run
        else:
            entry["contenders"]["baseline"] = {
                "skipped": f"not run: {size.label} is over --baseline-max-years {args.baseline_max_years:g}"
            }

    measured = {k: v for k, v in entry["contenders"].items() if "e2e_s" in v}
    # Events: each product contender against the baseline, product_adbc against the product too.
    if "baseline" in measured and "product" in measured:
        check = compare_events(url, tables["baseline"], tables["product"])
        entry["checks"]["baseline_vs_product"] = check
        entry["events_identical"] = check["identical"]
    else:
        entry["events_identical"] = None
    if "product_adbc" in measured:
        if "baseline" in measured:
            entry["checks"]["baseline_vs_product_adbc"] = compare_events(
                url, tables["baseline"], tables["product_adbc"]
            )
        if "product" in measured:
            entry["checks"]["product_adbc_vs_product"] = compare_events(
                url, tables["product_adbc"], tables["product"]
            )
    adbc_checks = [c["identical"] for k, c in entry["checks"].items() if "product_adbc" in k]
    entry["product_adbc_events_identical"] = all(adbc_checks) if adbc_checks else None
    if "floor" in measured and measured["floor"].get("events"):
        source = next((name for name in PRODUCTS if name in measured), None)
        if source:
            entry["checks"][f"floor_vs_{source}"] = compare_events(url, tables["floor"], tables[source])

    floor, baseline = measured.get("floor"), measured.get("baseline")
    for name in PRODUCTS:
        product, keys = measured.get(name), ratio_keys(name)
        if product and floor and "write" in floor["stage_seconds"]:
            entry["ratios"][keys["over_floor"]] = round(product["e2e_s"] / floor["e2e_s"], 3)
            entry["ratios"][keys["read"]] = round(
                product["stage_seconds"]["read"] / floor["stage_seconds"]["read"], 3
            )
            entry["ratios"][keys["write"]] = round(
                product["stage_seconds"]["write"] / floor["stage_seconds"]["write"], 3
            )
        if product and baseline:
            entry["ratios"][keys["baseline"]] = round(baseline["e2e_s"] / product["e2e_s"], 2)
    if "product" in measured and "product_adbc" in measured:
        entry["ratios"]["product_over_product_adbc"] = round(
            measured["product"]["e2e_s"] / measured["product_adbc"]["e2e_s"], 3
        )
    return entry


# ---------------------------------------------------------------------------- the 1-day run


def triangles_command() -> list[str]:
    """The installed ``triangles`` console script (as a user runs it)."""
    script = Path(sys.executable).with_name("triangles")
    if script.exists():
        return [str(script)]
    found = shutil.which("triangles")
    return [found] if found else [sys.executable, "-m", "triangles_polars.cli"]


def run_daily(url: str, args: argparse.Namespace, size: Size, bars_table: str) -> dict[str, Any]:
    """The field report's small-range test, through the real CLI, timed from outside."""
    events_table = table(args.schema, "ev_daily")
    day = DAILY_DAY.isoformat()
    command = [
        *triangles_command(),
        "backfill",
        SYMBOL,
        day,
        day,
        str(STRENGTH),
        DAILY_ANCHOR,
        "--bars-table",
        bars_table,
        "--events-table",
        events_table,
        "--quiet",
        "--json",
    ]
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
            {
                "wall_s": round(child.wall_s, 4),
                "duration_s": summary["duration_s"],
                "peak_rss_mb": round(child.maxrss_kb / 1024, 1),
                "bars_processed": summary["bars_processed"],
                "triangles": summary["triangles"],
                "stage_seconds": summary.get("stage_seconds", {}),
                "commits": summary["commits"],
            }
        )
        label = "warm-up" if i == 0 else f"#{i}"
        say(f"    1-day {label:>7}: {child.wall_s:6.3f} s wall, {summary['triangles']} events")
    warmup, timed = runs[0], runs[1:]
    walls = [r["wall_s"] for r in timed]
    typical = sorted(timed, key=lambda r: r["wall_s"])[(len(timed) - 1) // 2]
    result: dict[str, Any] = {
        "command": " ".join(["PURGE=1", "triangles", *command[len(triangles_command()) :]]),
        "bars_table": bars_table,
        "events_table": events_table,
        "runs": len(timed),
        "wall_s_median": round(statistics.median(walls), 4),
        "wall_s_min": round(min(walls), 4),
        "wall_s_max": round(max(walls), 4),
        "warmup_wall_s": warmup["wall_s"],
        "in_process_s_median": round(statistics.median(r["duration_s"] for r in timed), 4),
        "process_overhead_s_median": round(
            statistics.median(r["wall_s"] - r["duration_s"] for r in timed), 4
        ),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in timed),
        "bars_processed": typical["bars_processed"],
        "triangles": typical["triangles"],
        "stage_seconds": typical["stage_seconds"],
        "all_runs": runs,
    }
    # The incremental run must give the same events as the full-history run for that day.
    source = next((name for name in PRODUCTS if name in args.contenders), None)
    if source:
        full = table(args.schema, f"ev_{source}_{size.label}")
        lo = datetime(DAILY_DAY.year, DAILY_DAY.month, DAILY_DAY.day, tzinfo=UTC)
        check = compare_events(
            url, events_table, full, "confirmed_at >= %s AND confirmed_at < %s", (lo, lo + timedelta(days=1))
        )
        result["matches_full_history"] = check["identical"]
        result["check"] = check
    return result


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from benchmarks import report

    if args.render:
        result = json.loads(args.render.read_text())
        result["targets"] = report.evaluate_targets(result)  # with the current rules
        outputs = report.write_outputs(result, args.out, args.readme, json_path=args.render)
        say("\n".join(f"wrote {p}" for p in outputs))
        return

    from triangles_polars.detect import EVENT_COLUMNS as PRODUCT_COLUMNS

    if tuple(PRODUCT_COLUMNS) != EVENT_COLUMNS:
        raise SystemExit(f"benchmarks.common.EVENT_COLUMNS is out of date: product has {PRODUCT_COLUMNS}")

    began = time.perf_counter()
    url, server = resolve_server(args)
    say(f"server: {server['url']}")
    sizes = list(QUICK_SIZES) if args.quick else [Size.of_years(y) for y in sorted(set(args.years))]
    result: dict[str, Any] = {
        "suite": "triangles_polars benchmarks",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine_info(url),
        "server": server,
        "config": {
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
        "notes": [],
        "workloads": {},
        "sizes": [],
        "daily": None,
    }
    from benchmarks.workloads import ensure_schema, ensure_workload

    say("workloads:")
    ensure_schema(url, args.schema)
    for size in sizes:
        result["workloads"][size.label] = ensure_workload(url, args.schema, size, say=say)

    for size in sizes:
        say(f"{size.label} ({result['workloads'][size.label]['rows']:,} bars, {size.start} .. {size.end}):")
        result["sizes"].append(run_size(url, args, size, result["workloads"][size.label]))

    skipped = [s.label for s in sizes if s.years > args.baseline_max_years]
    if "baseline" in args.contenders and skipped:
        result["notes"].append(
            f"baseline not run on {', '.join(skipped)} (over --baseline-max-years "
            f"{args.baseline_max_years:g}); ratios against it are computed where it was measured"
        )

    if "daily" in args.contenders:
        largest = sizes[-1]
        say(f"1-day incremental run on {result['workloads'][largest.label]['bars_table']}:")
        result["daily"] = run_daily(url, args, largest, result["workloads"][largest.label]["bars_table"])

    result["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    result["suite_wall_s"] = round(time.perf_counter() - began, 1)
    result["targets"] = report.evaluate_targets(result)
    outputs = report.write_outputs(result, args.out, args.readme)
    say("")
    say(report.markdown(result, chart=None))
    say("\n".join(f"wrote {p}" for p in outputs))

    if args.stop_server and server["kind"] == "embedded":
        from triangles_polars.embedded import stop_server

        stop_server(args.pgdata)
        say("embedded server stopped")
