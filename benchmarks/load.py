"""Benchmark of ``triangles bars load``: bar files into PostgreSQL, against ``COPY FROM`` of the same rows.

    python -m benchmarks.load                    # 16 years; RSS of 16 years against 1 year
    python -m benchmarks.load --years 4          # a smaller history
    python -m benchmarks.load --quick            # a few days: a smoke test in seconds

What is measured (each figure the median of ``--repeat`` runs, one process per run):

* **product**: ``triangles bars load FILE --symbol GLBX.MDP3:NQ --quiet --json`` of the same
  synthetic history (``triangles_polars.synthetic.generate_bars``) written as a DBN file
  (``ohlcv-1m``, zstd), as Parquet (zstd) and as CSV, each into a new, empty bars table. Wall time
  from outside (process start, imports and exit included) and peak RSS (``wait4``, through
  ``benchmarks.spawn``);
* **reload**: the same DBN load again, onto a table that holds every row (the upsert updates them);
* **floor**: psycopg2 ``copy_expert`` of ``COPY bars FROM STDIN (FORMAT binary)`` of the same rows
  into an empty table with the product's DDL (primary key included), then one commit: moving the
  rows with no decoding, no staging and no upsert. The binary data is dumped from a loaded table
  first (not timed);
* **memory**: peak RSS of the DBN load of the whole history against that of its last year
  (bounded memory: the ratio should stay near 1).

Files live in ``benchmarks/.data/load/`` (ignored by git) and are reused while their stamp
matches. Results go to ``benchmarks/results/load-<UTC timestamp>.json``; with ``--readme`` the
"Loading bar files" section of ``benchmarks/README.md`` (between its markers) is rewritten.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import (
    DATA_DIR,
    HISTORY_END,
    README,
    RESULTS_DIR,
    SEED,
    SYMBOL,
    CpuMeter,
    Size,
    add_server_arguments,
    machine_info,
    pg_connect,
    pg_execute,
    replace_marked_section,
    resolve_server,
    run_child,
)

DEFAULT_SCHEMA = "bench_load"
FILES_DIR = DATA_DIR / "load"
FORMATS = ("dbn", "parquet", "csv")
SUFFIX = {"dbn": ".dbn.zst", "parquet": ".parquet", "csv": ".csv"}
TARGET_FLOOR_RATIO = 2.0  # DBN and Parquet loads: at most this many times the COPY floor
TARGET_RSS_RATIO = 1.3  # peak RSS of the whole history: at most this many times a 1-year load
INTRO = """## Loading bar files

`python -m benchmarks.load` times `triangles bars load` (a real process: start, imports and exit
included; peak RSS from `wait4`) of 16 years of synthetic NQ 1-minute bars written as a DBN file
(`ohlcv-1m`, zstd), as Parquet and as CSV, each into an empty bars table, and a second load of the
DBN file onto its own rows (every row upserted). The floor is psycopg2's `COPY … FROM STDIN
(FORMAT binary)` of the same rows into an empty table with the product's DDL, then a commit.
Memory: the peak RSS of the 16-year DBN load against a 1-year one. Options: `--years N`,
`--rss-years N`, `--formats dbn parquet csv`, `--repeat N` (median), `--database-url`, `--quick`
(a smoke test). Each run writes `benchmarks/results/load-<UTC timestamp>.json` and rewrites the
part below. Targets: DBN and Parquet loads at most 2x the floor; peak RSS at most 1.3x a 1-year load.
"""
BEGIN = "<!-- load-results:begin -->"
END = "<!-- load-results:end -->"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- files


def write_dbn(path: Path, bars: Any) -> None:
    """Bars (one symbol) as a DBN ``ohlcv-1m`` file, zstd: the library's metadata header, then the
    records as one numpy structured array with the library's own record layout (no Python loop)."""
    import databento_dbn as dbn
    import numpy as np
    import zstandard

    dtype = np.dtype(list(dbn.OHLCVMsg._dtypes))
    records = np.zeros(bars.height, dtype=dtype)
    records["length"] = dtype.itemsize // 4
    records["rtype"] = int(dbn.RType.OHLCV_1M.value)
    records["publisher_id"] = 1
    records["instrument_id"] = 1
    records["ts_event"] = bars["ts"].dt.epoch("ns").to_numpy().astype(np.uint64)
    for price in ("open", "high", "low", "close"):
        records[price] = np.rint(bars[price].to_numpy() * 1e9).astype(np.int64)
    records["volume"] = bars["volume"].to_numpy().astype(np.uint64)
    first = bars["ts"].min()
    last = bars["ts"].max()
    start_ns = int(first.timestamp()) * 1_000_000_000
    end_ns = int(last.timestamp()) * 1_000_000_000 + 60_000_000_000
    interval = {
        "start_date": first.date(),
        "end_date": date.fromordinal(last.date().toordinal() + 1),
        "symbol": "1",
    }
    header = dbn.Metadata(
        dataset="GLBX.MDP3",
        start=start_ns,
        stype_in=dbn.SType.RAW_SYMBOL,
        stype_out=dbn.SType.INSTRUMENT_ID,
        schema=dbn.Schema.OHLCV_1M,
        symbols=["NQ"],
        mappings=[_Mapping("NQ", [_Interval(**interval)])],
        end=end_ns,
    ).encode()
    compressor = zstandard.ZstdCompressor(level=3, threads=-1)
    with path.open("wb") as out, compressor.stream_writer(out) as writer:
        writer.write(header)
        step = 1_000_000
        for i in range(0, len(records), step):
            writer.write(records[i : i + step].tobytes())


class _Interval:
    def __init__(self, start_date: date, end_date: date, symbol: str) -> None:
        self.start_date, self.end_date, self.symbol = start_date, end_date, symbol


class _Mapping:
    def __init__(self, raw_symbol: str, intervals: list[_Interval]) -> None:
        self.raw_symbol, self.intervals = raw_symbol, intervals


def prepare_files(size: Size, formats: tuple[str, ...]) -> dict[str, Path]:
    """The history of ``size`` in each format (reused when the stamp matches)."""
    FILES_DIR.mkdir(parents=True, exist_ok=True)
    stamp_path = FILES_DIR / f"nq_{size.label}.json"
    stamp = {"first_day": str(size.first_day), "last_day": str(size.last_day), "seed": SEED, "symbol": SYMBOL}
    paths = {f: FILES_DIR / f"nq_{size.label}{SUFFIX[f]}" for f in formats}
    fresh = stamp_path.exists() and json.loads(stamp_path.read_text()) == stamp
    if fresh and all(p.exists() for p in paths.values()):
        say(f"  {size.label}: reusing {', '.join(p.name for p in paths.values())}")
        return paths
    from triangles_polars.synthetic import generate_bars

    tick = time.perf_counter()
    bars = generate_bars(size.first_day, size.last_day, symbol=SYMBOL, seed=SEED)
    say(f"  {size.label}: {bars.height:,} bars generated in {time.perf_counter() - tick:.1f} s")
    for fmt, path in paths.items():
        tick = time.perf_counter()
        if fmt == "dbn":
            write_dbn(path, bars)
        elif fmt == "parquet":
            bars.write_parquet(path, compression="zstd")
        else:
            bars.write_csv(path)
        say(
            f"  {size.label}: wrote {path.name} ({path.stat().st_size / 1e6:,.0f} MB) in {time.perf_counter() - tick:.1f} s"
        )
    stamp_path.write_text(json.dumps(stamp))
    return paths


# ---------------------------------------------------------------------------- runs


def fresh_table(url: str, schema: str, name: str) -> None:
    from triangles_polars.schema import bars_table_ddl

    pg_execute(url, f"DROP TABLE IF EXISTS {schema}.{name}")
    pg_execute(url, bars_table_ddl(schema, name).replace(" IF NOT EXISTS", ""))


def checkpoint(url: str) -> None:
    with contextlib.suppress(Exception):  # not a superuser: fine, just noisier
        pg_execute(url, "CHECKPOINT")


def product_run(url: str, schema: str, path: Path, table: str, *, fresh: bool = True) -> dict[str, Any]:
    """One ``triangles bars load`` process; wall and peak RSS from outside."""
    if fresh:
        pg_execute(url, f"DROP TABLE IF EXISTS {schema}.{table}")
    checkpoint(url)
    cmd = [
        sys.executable,
        "-m",
        "triangles_polars.cli",
        "bars",
        "load",
        str(path),
        "--symbol",
        SYMBOL,
        "--bars-table",
        f"{schema}.{table}",
        "--quiet",
        "--json",
    ]
    child = run_child(cmd, env={"TRIANGLES_DATABASE_URL": url})
    if child.returncode != 0:
        raise RuntimeError(f"bars load of {path.name} failed ({child.returncode}): {child.stderr[-2000:]}")
    out = json.loads(child.stdout.strip().splitlines()[-1])
    return {
        "wall_s": round(child.wall_s, 3),
        "inner_s": out["duration_s"],
        "rows": out["bars_loaded"],
        "maxrss_mb": round(child.maxrss_kb / 1024, 1),
    }


def floor_run(url: str, schema: str, source_table: str, table: str) -> dict[str, Any]:
    """``COPY … FROM STDIN (FORMAT binary)`` of the loaded rows into an empty bars table, and commit."""
    conn = pg_connect(url)
    try:
        with conn.cursor() as cur:
            buffer = io.BytesIO()
            cur.copy_expert(
                f"COPY (SELECT symbol, ts, open, high, low, close, volume FROM {schema}.{source_table}) "
                "TO STDOUT (FORMAT binary)",
                buffer,
            )
            conn.commit()
        fresh_table(url, schema, table)
        checkpoint(url)
        buffer.seek(0)
        with conn.cursor() as cur, CpuMeter() as meter:
            cur.copy_expert(
                f"COPY {schema}.{table} (symbol, ts, open, high, low, close, volume) FROM STDIN (FORMAT binary)",
                buffer,
            )
            rows = cur.rowcount
            conn.commit()
    finally:
        conn.close()
    return {"wall_s": round(meter.wall_s, 3), "rows": rows, "bytes": buffer.getbuffer().nbytes}


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = dict(runs[len(runs) // 2])
    out["wall_s"] = round(statistics.median(r["wall_s"] for r in runs), 3)
    out["maxrss_mb"] = max(r.get("maxrss_mb", 0) for r in runs) if "maxrss_mb" in runs[0] else None
    out["runs"] = [r["wall_s"] for r in runs]
    return {k: v for k, v in out.items() if v is not None}


def run_size(url: str, schema: str, size: Size, formats: tuple[str, ...], repeat: int) -> dict[str, Any]:
    paths = prepare_files(size, formats)
    result: dict[str, Any] = {"size": size.label, "files": {f: p.stat().st_size for f, p in paths.items()}}
    loads: dict[str, Any] = {}
    for fmt in formats:
        runs = []
        for i in range(repeat):
            say(f"  {size.label}: bars load {paths[fmt].name} (run {i + 1}/{repeat}) …")
            runs.append(product_run(url, schema, paths[fmt], f"bars_{fmt}"))
        loads[fmt] = median_run(runs)
        say(
            f"    {loads[fmt]['rows']:,} rows in {loads[fmt]['wall_s']:.2f} s, peak RSS {loads[fmt]['maxrss_mb']} MB"
        )
    result["loads"] = loads
    if "dbn" in formats:
        runs = []
        for i in range(repeat):
            say(f"  {size.label}: reload of {paths['dbn'].name} onto its own rows (run {i + 1}/{repeat}) …")
            runs.append(product_run(url, schema, paths["dbn"], "bars_dbn", fresh=False))
        result["reload_dbn"] = median_run(runs)
    source = f"bars_{formats[0]}"
    runs = []
    for i in range(repeat):
        say(f"  {size.label}: COPY FROM floor (run {i + 1}/{repeat}) …")
        runs.append(floor_run(url, schema, source, "bars_floor"))
    result["floor"] = median_run(runs)
    floor = result["floor"]["wall_s"]
    result["ratio_to_floor"] = {f: round(loads[f]["wall_s"] / floor, 2) for f in formats}
    for table in ("bars_floor", *(f"bars_{f}" for f in formats)):
        pg_execute(url, f"DROP TABLE IF EXISTS {schema}.{table}")
    return result


def rss_run(url: str, schema: str, size: Size, repeat: int) -> dict[str, Any]:
    paths = prepare_files(size, ("dbn",))
    runs = [product_run(url, schema, paths["dbn"], "bars_rss") for _ in range(repeat)]
    pg_execute(url, f"DROP TABLE IF EXISTS {schema}.bars_rss")
    return median_run(runs)


# ---------------------------------------------------------------------------- report


def render(results: dict[str, Any]) -> str:
    main = results["sizes"][-1]
    loads = main["loads"]
    floor = main["floor"]
    lines = [
        BEGIN,
        "",
        f"Run {results['when']} (commit {results.get('commit') or 'n/a'}) on {results['machine']}; "
        f"history {main['size']} ({loads[next(iter(loads))]['rows']:,} bars), median of "
        f"{results['repeat']} run(s) each; load average at the start "
        f"{', '.join(str(x) for x in (results.get('info') or {}).get('load_avg_at_start') or ['n/a'])} "
        "(other work on the machine slows the product and the floor unequally).",
        "",
        "| what | file | wall (s) | × floor | peak RSS (MB) |",
        "|---|---|---:|---:|---:|",
    ]
    for fmt, run in loads.items():
        mb = main["files"][fmt] / 1e6
        lines.append(
            f"| `bars load` {fmt} | {mb:,.0f} MB | {run['wall_s']:.2f} | "
            f"{main['ratio_to_floor'][fmt]:.2f} | {run['maxrss_mb']:,.0f} |"
        )
    if "reload_dbn" in main:
        reload = main["reload_dbn"]
        lines.append(
            f"| `bars load` dbn again (every row exists: upsert) | | {reload['wall_s']:.2f} | "
            f"{reload['wall_s'] / floor['wall_s']:.2f} | {reload['maxrss_mb']:,.0f} |"
        )
    lines.append(
        f"| floor: `COPY FROM STDIN (FORMAT binary)` + commit | {floor['bytes'] / 1e6:,.0f} MB binary | "
        f"{floor['wall_s']:.2f} | 1.00 | |"
    )
    memory = results.get("memory")
    lines.append("")
    if memory:
        lines.append(
            f"Peak RSS of the DBN load: {memory['small']['maxrss_mb']:,.0f} MB for {memory['small_size']} "
            f"({memory['small']['rows']:,} bars), {memory['large']['maxrss_mb']:,.0f} MB for "
            f"{memory['large_size']} ({memory['large']['rows']:,} bars): ratio **{memory['ratio']:.2f}**."
        )
        lines.append("")
    verdicts = []
    for fmt in ("dbn", "parquet"):
        if fmt in main["ratio_to_floor"]:
            ratio = main["ratio_to_floor"][fmt]
            verdicts.append(
                f"{fmt} ≤ {TARGET_FLOOR_RATIO:g}× the floor: {'met' if ratio <= TARGET_FLOOR_RATIO else 'missed'} ({ratio:.2f}×)"
            )
    if memory:
        verdicts.append(
            f"peak RSS ≤ {TARGET_RSS_RATIO:g}× a 1-year load: "
            f"{'met' if memory['ratio'] <= TARGET_RSS_RATIO else 'missed'} ({memory['ratio']:.2f}×)"
        )
    lines.append("Targets: " + "; ".join(verdicts) + ".")
    lines += ["", END]
    return "\n".join(lines)


def update_readme(text: str, path: Path = README) -> None:
    """Replace the results section (``text`` holds its markers) in the benchmarks README."""
    replace_marked_section(path, BEGIN, END, text, INTRO)


# ---------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.splitlines()[0])
    parser.add_argument("--years", type=int, default=16, help="years of history (default 16)")
    parser.add_argument(
        "--rss-years", type=int, default=1, help="the small load of the memory ratio (default 1)"
    )
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
    parser.add_argument("--repeat", type=int, default=1, help="runs per figure, median reported (default 1)")
    parser.add_argument("--quick", action="store_true", help="a few days of history: a smoke test")
    add_server_arguments(parser, schema=DEFAULT_SCHEMA, schema_help="schema of the tables")
    parser.add_argument("--readme", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    url, _server = resolve_server(args)
    pg_execute(url, f"CREATE SCHEMA IF NOT EXISTS {args.schema}")
    if args.quick:
        large, small = Size.of_days(6), Size.of_days(3)
    else:
        large, small = Size.of_years(args.years), Size.of_years(args.rss_years)
    formats = tuple(args.formats)
    say(f"load benchmark: {large.label} ({large.first_day} .. {HISTORY_END}), formats {', '.join(formats)}")
    tick = time.perf_counter()
    sizes = [run_size(url, args.schema, large, formats, args.repeat)]
    memory = None
    if small != large:
        say(f"  memory: the DBN load of {small.label} against {large.label}")
        small_run = rss_run(url, args.schema, small, args.repeat)
        large_run = sizes[0]["loads"].get("dbn") or rss_run(url, args.schema, large, args.repeat)
        memory = {
            "small_size": small.label,
            "large_size": large.label,
            "small": small_run,
            "large": large_run,
            "ratio": round(large_run["maxrss_mb"] / small_run["maxrss_mb"], 3),
        }
    info = machine_info(url)
    results = {
        "format": 1,
        "kind": "load",
        "when": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": ((info.get("git") or {}).get("commit") or "")[:7] or None,
        "machine": _machine_line(info),
        "repeat": args.repeat,
        "sizes": sizes,
        "memory": memory,
        "elapsed_s": round(time.perf_counter() - tick, 1),
        "info": info,
    }
    out_dir = FILES_DIR if args.quick else args.out  # a smoke test leaves no result behind
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"load-{results['when'].replace(':', '')}.json"
    out.write_text(json.dumps(results, indent=2, default=str))
    text = render(results)
    print(text)
    if args.readme and not args.quick:
        update_readme(text)
    say(f"wrote {out} in {results['elapsed_s']:.0f} s")
    return results


def _machine_line(info: dict[str, Any]) -> str:
    server = (info.get("postgresql") or {}).get("version", "?")
    return f"{info.get('cpu_count')} cores ({info.get('cpu_model') or '?'}), PostgreSQL {server}"


if __name__ == "__main__":
    main()
