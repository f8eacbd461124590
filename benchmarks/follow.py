"""Benchmark of keeping current: a daily ``triangles update`` of 24 symbols, and ``--follow`` latency.

    python -m benchmarks.follow                  # both; the results section of benchmarks/README.md
    python -m benchmarks.follow --quick          # a smoke test in seconds (no README, no result file)
    python -m benchmarks.follow --events 500     # more events per latency run

What is measured:

* **daily update**: 24 symbols (``SYN:S00`` … ``SYN:S23``, three weeks of synthetic 1-minute bars
  each) whose events are current; then one new CME session per symbol is loaded (the bars of
  2025-12-02, 17:00 CT the day before to 16:00 CT), and ``triangles update 'SYN:*' --quiet --json``
  runs as a real process, timed from outside (process start, imports, connecting and exit
  included). Before each run the coverage is put back as it was, so every run does the same
  work. Median of ``--repeat`` runs, with the default ``--jobs`` (the CPU cores) and ``--jobs 1``;
* **follow latency**: ``triangles update GLBX.MDP3:NQ --follow`` runs on two weeks of history
  while this process inserts the next bars one per transaction, ``--pace-ms`` apart, like a live
  feed. A row trigger on the events table notifies each event when its transaction commits; the
  latency of an event is the time from the commit of the bar that confirms it (the bar whose
  close is its ``confirmed_at``) to that notification. Once polling (``--poll 1``), once with
  ``--notify bars_1m`` (and ``--poll 30``), the README's trigger installed on the bars table.

Results go to ``benchmarks/results/follow-<UTC timestamp>.json``; the "Following new bars"
section of ``benchmarks/README.md`` (between its markers) is rewritten.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.common import (
    README,
    REPO_ROOT,
    RESULTS_DIR,
    add_server_arguments,
    machine_info,
    pg_execute,
    replace_marked_section,
    resolve_server,
    run_child,
)

DEFAULT_SCHEMA = "bench_follow"
SYMBOLS = 24
HISTORY_FIRST = "2025-11-10"
SESSION_OPEN = datetime(2025, 12, 1, 23, 0, tzinfo=UTC)  # 17:00 CT: the 2025-12-02 session opens
SESSION_CLOSE = datetime(2025, 12, 2, 22, 0, tzinfo=UTC)
FOLLOW_SYMBOL = "GLBX.MDP3:NQ"
FOLLOW_HISTORY = ("2025-11-17", "2025-12-03")
FOLLOW_START = datetime(2025, 12, 1, 14, 0, tzinfo=UTC)  # bars from here on arrive live
TARGET_UPDATE_S = 2.0
BEGIN = "<!-- follow-results:begin -->"
END = "<!-- follow-results:end -->"
INTRO = """## Following new bars

`python -m benchmarks.follow` (module docstring: what exactly is measured) times what keeping
current costs: the daily `triangles update` of 24 symbols with one new session each, and how
long after a bar's commit the event it confirms is in the table under `update --follow`, polling
and with `NOTIFY`. Without `--jobs` this update may use as many processes as CPU cores, but its
worker processes are started only once the run has more work queued than a worker takes to start
(about a second): a run this short ends in the calling process, like `--jobs 1`. The per-run cost
was cut by profiling: one query for
every key's coverage and newest bar, one ADBC database object per process (creating one reads
the server's type catalogue: 60-200 ms a connection before), no TLS attempt by connectorx on a
unix socket (10 ms a read), the writer's connection kept across tasks, no DDL when the tables
exist, the next task's bars read while the current one is detected and written, and no
interpreter teardown after the command (0.15 s of Polars and PyArrow finalisers).
"""


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "triangles_polars.cli", *args]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


# ---------------------------------------------------------------------------- the daily update


def prepare_update(url: str, schema: str, quick: bool) -> dict[str, Any]:
    """24 symbols, current up to the session's open; the session's bars loaded; coverage saved."""
    import polars as pl

    from triangles_polars.bars import ingest_bars
    from triangles_polars.synthetic import generate_bars

    symbols = 4 if quick else SYMBOLS
    pg_execute(url, f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    pg_execute(url, f"CREATE SCHEMA {schema}")
    first = "2025-11-26" if quick else HISTORY_FIRST
    bars = pl.concat(
        [generate_bars(first, "2025-12-02", symbol=f"SYN:S{i:02d}", seed=100 + i) for i in range(symbols)]
    ).filter(pl.col("ts") < SESSION_CLOSE)
    ingest_bars(url, bars.filter(pl.col("ts") < SESSION_OPEN), f"{schema}.bars_daily")
    current = run_child(cli("update", "SYN:*", *_daily_tables(schema), "--quiet", "--json"), env=_env(url))
    if current.returncode != 0:
        raise RuntimeError(f"the first update failed: {current.stderr[-2000:]}")
    pg_execute(url, f"CREATE TABLE {schema}.coverage_before AS SELECT * FROM {schema}.triangles_coverage")
    session = bars.filter(pl.col("ts") >= SESSION_OPEN)
    ingest_bars(url, session, f"{schema}.bars_daily")
    say(f"  daily update: {symbols} symbols, {bars.height:,} bars, {session.height:,} in the new session")
    return {"symbols": symbols, "history_bars": bars.height - session.height, "session_bars": session.height}


def _daily_tables(schema: str) -> tuple[str, ...]:
    return ("--bars-table", f"{schema}.bars_daily", "--events-table", f"{schema}.events_daily")


def _env(url: str) -> dict[str, str]:
    return {"TRIANGLES_DATABASE_URL": url}


def daily_update(url: str, schema: str, jobs: str | None, repeat: int) -> dict[str, Any]:
    runs = []
    summary: dict[str, Any] = {}
    for i in range(repeat + 1):  # the first run warms the server's caches: not counted
        pg_execute(url, f"DELETE FROM {schema}.triangles_coverage")
        pg_execute(url, f"INSERT INTO {schema}.triangles_coverage SELECT * FROM {schema}.coverage_before")
        extra = ("--jobs", jobs) if jobs else ()
        child = run_child(
            cli("update", "SYN:*", *_daily_tables(schema), *extra, "--quiet", "--json"), env=_env(url)
        )
        if child.returncode != 0:
            raise RuntimeError(f"update failed ({child.returncode}): {child.stderr[-2000:]}")
        summary = json.loads(child.stdout)
        if i:
            runs.append(round(child.wall_s, 3))
    return {
        "jobs": jobs or "default",
        "wall_s": statistics.median(runs),
        "runs": runs,
        "inner_s": summary["duration_s"],
        "triangles": summary["triangles"],
        "bars_processed": summary["bars_processed"],
        "tasks": len(summary.get("tasks", [])),
    }


# ---------------------------------------------------------------------------- follow latency


class Events(threading.Thread):
    """Listens to the events table's notifications: (c_ts, c_kind) → (first seen, confirmed_at)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True)
        self.conn.execute("LISTEN bench_events")
        self.seen: dict[str, tuple[float, str]] = {}
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            for note in self.conn.notifies(timeout=0.2):
                key, confirmed = note.payload.rsplit("|", 1)
                self.seen.setdefault(key, (time.monotonic(), confirmed))


def readme_trigger_sql() -> str:
    text = (REPO_ROOT / "README.md").read_text()
    match = re.search(
        r"<!-- notify-trigger:begin -->\s*```sql\n(.*?)```\s*<!-- notify-trigger:end -->", text, re.S
    )
    if not match:
        raise RuntimeError("README.md has no NOTIFY trigger between its markers")
    return match.group(1)


def prepare_follow(url: str, schema: str) -> Any:
    import polars as pl

    from triangles_polars.bars import ingest_bars
    from triangles_polars.synthetic import generate_bars

    bars = generate_bars(*FOLLOW_HISTORY, symbol=FOLLOW_SYMBOL, seed=7)
    ingest_bars(url, bars.filter(pl.col("ts") < FOLLOW_START), f"{schema}.bars_1m")
    return bars.filter(pl.col("ts") >= FOLLOW_START)


def follow_latency(url: str, schema: str, live: Any, mode: str, events: int, pace_s: float) -> dict[str, Any]:
    import psycopg

    pg_execute(url, f"DROP TABLE IF EXISTS {schema}.events_follow")
    pg_execute(url, f"DELETE FROM {schema}.bars_1m WHERE ts >= %s", (FOLLOW_START,))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"SET search_path TO {schema}")
        if mode == "notify":
            conn.execute(readme_trigger_sql())
        else:
            conn.execute("DROP TRIGGER IF EXISTS triangles_notify_bars ON bars_1m")
        coverage = conn.execute("SELECT to_regclass('triangles_coverage') IS NOT NULL").fetchone()[0]
        if coverage:
            conn.execute(
                "DELETE FROM triangles_coverage WHERE events_table = %s", (f"{schema}.events_follow",)
            )
    extra = ["--notify", "bars_1m", "--poll", "30"] if mode == "notify" else ["--poll", "1"]
    args = cli("update", FOLLOW_SYMBOL, "--follow", "--json", "--bars-table", f"{schema}.bars_1m")
    args += ["--events-table", f"{schema}.events_follow", *extra]
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **_env(url)},
        cwd=REPO_ROOT,
    )
    lines: list[dict[str, Any]] = []
    threading.Thread(target=lambda: lines.extend(json.loads(x) for x in proc.stdout), daemon=True).start()  # type: ignore[union-attr]
    deadline = time.monotonic() + 120
    while not any(x["type"] == "catch_up" for x in lines):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the follower did not catch up: {proc.stderr.read()[-2000:]}")  # type: ignore[union-attr]
        time.sleep(0.05)
    with psycopg.connect(url, autocommit=True) as conn:  # events from now on are notified at commit
        conn.execute(f"SET search_path TO {schema}")
        conn.execute(
            """CREATE OR REPLACE FUNCTION bench_event_notify() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN PERFORM pg_notify('bench_events', NEW.c_ts::text || ' ' || NEW.c_kind || '|'
                 || to_char(NEW.confirmed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS'));
               RETURN NULL; END $$"""
        )
        conn.execute(
            "CREATE TRIGGER bench_event_notify AFTER INSERT ON events_follow "
            "FOR EACH ROW EXECUTE FUNCTION bench_event_notify()"
        )
    listener = Events(url)
    listener.start()
    committed: dict[str, float] = {}
    writer = psycopg.connect(url)
    insert = (
        f"INSERT INTO {schema}.bars_1m (symbol, ts, open, high, low, close, volume) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s)"
    )
    say(f"  follow ({mode}): inserting bars {pace_s * 1000:.0f} ms apart until {events} events …")
    try:
        for row in live.iter_rows(named=True):
            writer.execute(
                insert, tuple(row[c] for c in ("symbol", "ts", "open", "high", "low", "close", "volume"))
            )
            writer.commit()
            close = (row["ts"] + timedelta(minutes=1)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
            committed[close] = time.monotonic()
            if len(listener.seen) >= events:
                break
            time.sleep(pace_s)
        time.sleep(3 if mode == "notify" else 4)  # the last events
    finally:
        writer.close()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        listener.stopped.set()
    latencies = [
        seen - committed[confirmed] for seen, confirmed in listener.seen.values() if confirmed in committed
    ]
    cycles = [x["duration_s"] for x in lines if x["type"] == "cycle"]
    return {
        "mode": mode,
        "flags": " ".join(extra),
        "exit_code": code,
        "events": len(latencies),
        "p50_s": round(statistics.median(latencies), 3),
        "p90_s": round(percentile(latencies, 90), 3),
        "p99_s": round(percentile(latencies, 99), 3),
        "max_s": round(max(latencies), 3),
        "cycles": len(cycles),
        "cycle_p50_s": round(statistics.median(cycles), 4) if cycles else None,
        "pace_s": pace_s,
    }


# ---------------------------------------------------------------------------- report


def render(results: dict[str, Any]) -> str:
    lines = [
        BEGIN,
        "",
        f"Run {results['when']} (commit {results.get('commit') or 'n/a'}) on {results['machine']}.",
        "",
    ]
    daily = results.get("daily")
    if daily:
        setup = daily["setup"]
        lines += [
            f"**Daily update**: {setup['symbols']} symbols, one new session each ({setup['session_bars']:,} "
            f"bars in all), `triangles update 'SYN:*'` as a process (start and exit included), median of "
            f"{len(daily['runs'][0]['runs'])} runs:",
            "",
            "| `--jobs` | wall (s) | runs (s) | events written | bars processed |",
            "|---|---:|---|---:|---:|",
        ]
        for run in daily["runs"]:
            lines.append(
                f"| {run['jobs']} | **{run['wall_s']:.2f}** | {', '.join(f'{r:.2f}' for r in run['runs'])} | "
                f"{run['triangles']:,} | {run['bars_processed']:,} |"
            )
        default = daily["runs"][0]["wall_s"]  # the command as a cron job runs it
        lines += [
            "",
            f"Target ≤ {TARGET_UPDATE_S:g} s for the default command: "
            f"{'met' if default <= TARGET_UPDATE_S else 'missed'} ({default:.2f} s).",
            "",
        ]
    follow = results.get("follow") or []
    if follow:
        lines += [
            "**Follow latency**: from the commit of the bar that confirms an event to the commit of the "
            "event (a row trigger on the events table notifies it), one bar per transaction:",
            "",
            "| follower | events | p50 (s) | p90 (s) | p99 (s) | max (s) | cycles | cycle p50 (s) | bound |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for run in follow:
            bound = 30.5 if run["mode"] == "notify" else 1.5
            bound_text = "0.5 s (notify)" if run["mode"] == "notify" else "poll + 0.5 = 1.5 s"
            met = run["max_s"] <= (0.5 if run["mode"] == "notify" else bound)
            lines.append(
                f"| `{run['flags']}` | {run['events']} | {run['p50_s']:.3f} | {run['p90_s']:.3f} | "
                f"{run['p99_s']:.3f} | {run['max_s']:.3f} | {run['cycles']} | {run['cycle_p50_s'] or 0:.4f} | "
                f"{bound_text}: {'met' if met else 'missed'} |"
            )
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def update_readme(text: str, path: Path = README) -> None:
    """Replace the results section (``text`` holds its markers) in the benchmarks README."""
    replace_marked_section(path, BEGIN, END, text, INTRO)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.follow", description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed daily updates per setting (default 5)")
    parser.add_argument("--events", type=int, default=300, help="events per latency run (default 300)")
    parser.add_argument("--pace-ms", type=float, default=40.0, help="ms between two bars (default 40)")
    parser.add_argument("--parts", nargs="+", choices=("daily", "follow"), default=["daily", "follow"])
    parser.add_argument("--quick", action="store_true", help="a smoke test: small, no README, no result file")
    add_server_arguments(parser, schema=DEFAULT_SCHEMA, schema_help="schema of the tables")
    parser.add_argument("--readme", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    url, _server = resolve_server(args)
    repeat, events = (1, 20) if args.quick else (args.repeat, args.events)
    tick = time.perf_counter()
    results: dict[str, Any] = {
        "format": 1,
        "kind": "follow",
        "when": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if "daily" in args.parts:
        say("daily update …")
        setup = prepare_update(url, args.schema, args.quick)
        runs = [daily_update(url, args.schema, jobs, repeat) for jobs in (None, "1")]
        for run in runs:
            say(f"  jobs {run['jobs']}: {run['wall_s']:.2f} s (runs {run['runs']})")
        results["daily"] = {"setup": setup, "runs": runs}
    if "follow" in args.parts:
        say("follow latency …")
        pg_execute(url, f"CREATE SCHEMA IF NOT EXISTS {args.schema}")
        pg_execute(url, f"DROP TABLE IF EXISTS {args.schema}.bars_1m")
        live = prepare_follow(url, args.schema)
        results["follow"] = []
        for mode in ("poll", "notify"):
            run = follow_latency(url, args.schema, live, mode, events, args.pace_ms / 1000)
            say(f"  {mode}: p50 {run['p50_s']} s, p99 {run['p99_s']} s over {run['events']} events")
            results["follow"].append(run)
    info = machine_info(url)
    results["commit"] = ((info.get("git") or {}).get("commit") or "")[:7] or None
    server = (info.get("postgresql") or {}).get("version", "?")
    results["machine"] = (
        f"{info.get('cpu_count')} cores ({info.get('cpu_model') or '?'}), PostgreSQL {server}"
    )
    results["elapsed_s"] = round(time.perf_counter() - tick, 1)
    results["info"] = info
    text = render(results)
    print(text)
    if not args.quick:
        args.out.mkdir(parents=True, exist_ok=True)
        out = args.out / f"follow-{results['when'].replace(':', '')}.json"
        out.write_text(json.dumps(results, indent=2, default=str))
        say(f"wrote {out} in {results['elapsed_s']:.0f} s")
        if args.readme:
            update_readme(text)
    return results


if __name__ == "__main__":
    main()
