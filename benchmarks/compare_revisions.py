"""Two revisions of the product on the same bars: are their events identical, row for row?

    python -m benchmarks.compare_revisions                       # a36722a vs HEAD at 1, 4 and 16 years
    python -m benchmarks.compare_revisions --before REV --after REV --years 1
    python -m benchmarks.compare_revisions --days 14 --before HEAD   # a smoke test in seconds
    python -m benchmarks.compare_revisions --years 4 --hygiene full  # rules 3-5 too

Each revision is extracted with ``git archive REV | tar -x`` into a temporary folder (no
worktree, no checkout: the working tree is left alone) and run from there through its own CLI,
``python -m triangles_polars.cli backfill SYMBOL START END STRENGTH --bars-table B --events-table
E --json --quiet``, with ``PYTHONPATH`` pointing at the folder and the current environment's
dependencies (nothing is installed). The child's ``triangles_polars`` is checked to come from
that folder. The CLI is the interface both revisions share; their Python APIs differ (the old
``BackfillSettings`` takes one strength, its summary has no tasks).

The bars are the benchmark suite's (``benchmarks.workloads``: synthetic NQ, one table per size,
created once and reused) on the suite's server (the embedded one in ``benchmarks/.data/pgdata``
unless ``--database-url``), and the range is the suite's full-history run (START = first day +
7 days, END = last day, strength 5). The two events tables are compared with ``EXCEPT ALL``
both ways plus their row counts (``ALL``: a duplicated row is a difference too); the first
differing rows, if any, are kept in the result, and so are both tables (they are dropped when
identical). Results go to
``benchmarks/results/compare-<UTC timestamp>.json`` (``--quick`` sizes: ``benchmarks/.data``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import (
    DATA_DIR,
    EVENT_COLUMNS,
    REPO_ROOT,
    RESULTS_DIR,
    STRENGTH,
    SYMBOL,
    Size,
    add_server_arguments,
    add_years_argument,
    last_json_line,
    machine_info,
    pg_execute,
    resolve_server,
    table,
)

DEFAULT_BEFORE = "a36722a"  # the last commit before the package was split into one module per concept
DEFAULT_AFTER = "HEAD"
SHOWN_DIFFERENCES = 20  # differing rows kept in the result, per side
RUN_TIMEOUT_S = 4 * 3600.0


def say(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------------- revisions


@dataclass(frozen=True)
class Revision:
    """A revision as given, its commit, and the folder it was extracted to."""

    name: str
    commit: str
    tree: Path


def resolve_commit(rev: str) -> str:
    """Full commit id of ``rev`` (a bad revision is one clear line, exit 2)."""
    done = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"error: {rev!r} is not a commit of this repository")
    return done.stdout.strip()


def extract(rev: str, into: Path) -> Revision:
    """``git archive COMMIT | tar -x -C into``: the revision's files, without touching the working tree."""
    commit = resolve_commit(rev)
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.Popen(["git", "-C", str(REPO_ROOT), "archive", commit], stdout=subprocess.PIPE)
    untar = subprocess.run(["tar", "-x", "-C", str(into)], stdin=archive.stdout, capture_output=True)
    assert archive.stdout is not None
    archive.stdout.close()
    if archive.wait() != 0 or untar.returncode != 0:
        raise SystemExit(f"error: could not extract {rev} ({untar.stderr.decode(errors='replace').strip()})")
    return Revision(rev, commit, into)


def child_env(revision: Revision, url: str) -> dict[str, str]:
    """The revision's folder first on ``sys.path``; the database from the environment (never argv)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DATABASE_URL")}
    env.update(PYTHONPATH=str(revision.tree), TRIANGLES_DATABASE_URL=url, TERM="dumb", PYTHONUNBUFFERED="1")
    return env


def check_imports_from(revision: Revision, url: str) -> None:
    """The child's ``triangles_polars`` must be the extracted one, not the installed working tree."""
    done = subprocess.run(
        [sys.executable, "-c", "import triangles_polars; print(triangles_polars.__file__)"],
        cwd=revision.tree,
        env=child_env(revision, url),
        capture_output=True,
        text=True,
    )
    where = Path(done.stdout.strip()).resolve()
    if done.returncode != 0 or not where.is_relative_to(revision.tree.resolve()):
        raise SystemExit(f"error: {revision.name} imports triangles_polars from {where}, not {revision.tree}")


# ---------------------------------------------------------------------------- one run


@dataclass
class Run:
    """One revision's backfill: its wall time, its own summary's counts, and the rows it wrote."""

    revision: str
    commit: str
    events_table: str
    wall_s: float
    triangles: int | None
    bars_processed: int | None
    rows_in_table: int


def backfill(
    revision: Revision, url: str, size: Size, bars_table: str, events_table: str, hygiene: str | None
) -> Run:
    """The revision's ``backfill`` through its CLI, into a table dropped first (a first run)."""
    pg_execute(url, f"DROP TABLE IF EXISTS {events_table}")
    command = [sys.executable, "-m", "triangles_polars.cli", "backfill", SYMBOL]
    command += [size.start.isoformat(), size.end.isoformat(), str(STRENGTH)]
    command += ["--bars-table", bars_table, "--events-table", events_table, "--json", "--quiet"]
    command += ["--hygiene", hygiene] if hygiene else []
    tick = time.perf_counter()
    done = subprocess.run(
        command,
        cwd=revision.tree,  # `python -m` puts the working folder first on sys.path
        env=child_env(revision, url),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    wall = time.perf_counter() - tick
    if done.returncode != 0:
        raise SystemExit(
            f"error: {revision.name} backfill on {size.label} exited {done.returncode}: "
            f"{done.stderr.strip()[-2000:]}"
        )
    summary = last_json_line(done.stdout)
    rows = int(pg_execute(url, f"SELECT count(*) FROM {events_table}")[0][0])
    return Run(
        revision=revision.name,
        commit=revision.commit,
        events_table=events_table,
        wall_s=round(wall, 2),
        triangles=summary.get("triangles"),
        bars_processed=summary.get("bars_processed"),
        rows_in_table=rows,
    )


# ---------------------------------------------------------------------------- comparison


@dataclass
class Comparison:
    """``EXCEPT ALL`` both ways plus counts; the first differing rows of each side."""

    identical: bool
    rows: dict[str, int]
    only_in: dict[str, int]
    duplicate_keys: dict[str, int]
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def compare_tables(url: str, before: str, after: str) -> Comparison:
    """Row for row: counts, ``before EXCEPT ALL after``, ``after EXCEPT ALL before``, duplicate keys."""
    cols = ", ".join(EVENT_COLUMNS)
    key = "symbol, strength, c_ts, c_kind"  # the events table's primary key

    def only(left: str, right: str) -> str:
        return f"SELECT {cols} FROM {left} EXCEPT ALL SELECT {cols} FROM {right}"

    def duplicates(name: str) -> str:
        return f"SELECT count(*) FROM (SELECT {key} FROM {name} GROUP BY {key} HAVING count(*) > 1) d"

    counts = pg_execute(
        url,
        f"""SELECT (SELECT count(*) FROM {before}), (SELECT count(*) FROM {after}),
                   (SELECT count(*) FROM ({only(before, after)}) x), (SELECT count(*) FROM ({only(after, before)}) y),
                   ({duplicates(before)}), ({duplicates(after)})""",
    )[0]
    n_before, n_after, only_before, only_after, dup_before, dup_after = (int(v) for v in counts)
    result = Comparison(
        identical=n_before == n_after and only_before == 0 and only_after == 0,
        rows={before: n_before, after: n_after},
        only_in={before: only_before, after: only_after},
        duplicate_keys={before: dup_before, after: dup_after},
    )
    for left, right, n in ((before, after, only_before), (after, before, only_after)):
        if n:
            rows = pg_execute(
                url, f"{only(left, right)} ORDER BY confirmed_at, c_ts LIMIT {SHOWN_DIFFERENCES}"
            )
            result.examples[left] = [
                {
                    c: (v.isoformat() if isinstance(v, datetime) else v)
                    for c, v in zip(EVENT_COLUMNS, row, strict=True)
                }
                for row in rows
            ]
    return result


# ---------------------------------------------------------------------------- one size


@dataclass
class SizeComparison:
    size: str
    start: str
    end: str
    bars_table: str
    bars_in_table: int
    before: Run
    after: Run
    comparison: Comparison


def compare_size(
    url: str,
    schema: str,
    size: Size,
    before: Revision,
    after: Revision,
    workload: dict[str, Any],
    hygiene: str | None = None,
) -> SizeComparison:
    bars_table = workload["bars_table"]
    runs = []
    for side, revision in (("before", before), ("after", after)):
        events_table = table(schema, f"cmp_{side}_{size.label}" + (f"_{hygiene}" if hygiene else ""))
        say(f"  {side:<6} {revision.name} ({revision.commit[:10]}) → {events_table} ...")
        run = backfill(revision, url, size, bars_table, events_table, hygiene)
        say(
            f"         {run.wall_s:8.1f} s, {run.rows_in_table:,} events ({run.bars_processed or 0:,} bars read)"
        )
        runs.append(run)
    comparison = compare_tables(url, runs[0].events_table, runs[1].events_table)
    if comparison.identical:  # a difference's tables stay, to be looked into
        for run in runs:
            pg_execute(url, f"DROP TABLE {run.events_table}")
    return SizeComparison(
        size=size.label,
        start=size.start.isoformat(),
        end=size.end.isoformat(),
        bars_table=bars_table,
        bars_in_table=int(workload["rows"]),
        before=runs[0],
        after=runs[1],
        comparison=comparison,
    )


def describe(result: SizeComparison) -> str:
    """One line per size: the counts both ways and the verdict."""
    c = result.comparison
    before, after = result.before.events_table, result.after.events_table
    verdict = "IDENTICAL" if c.identical else "DIFFERENT"
    return (
        f"{result.size}: {result.bars_in_table:,} bars; before {c.rows[before]:,} events, after "
        f"{c.rows[after]:,}; only before {c.only_in[before]}, only after {c.only_in[after]}; "
        f"duplicate keys {c.duplicate_keys[before]}/{c.duplicate_keys[after]} → {verdict}"
    )


# ---------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compare_revisions",
        description="Run two revisions' backfill on the same synthetic bars and compare their events row for row.",
    )
    parser.add_argument(
        "--before", default=DEFAULT_BEFORE, help=f"older revision (default: {DEFAULT_BEFORE})"
    )
    parser.add_argument("--after", default=DEFAULT_AFTER, help=f"newer revision (default: {DEFAULT_AFTER})")
    add_years_argument(parser)
    parser.add_argument(
        "--days",
        type=int,
        nargs="+",
        metavar="N",
        help="sizes in days ending 2025-12-31 instead (smoke tests)",
    )
    parser.add_argument(
        "--hygiene",
        choices=("basic", "full"),
        help="hygiene profile given to both revisions (default: none given, each uses its own default)",
    )
    add_server_arguments(parser, schema="bench", schema_help="schema of the bars and events tables")
    parser.add_argument(
        "--out", type=Path, default=None, help="folder of the result JSON (default: benchmarks/results)"
    )
    args = parser.parse_args(argv)
    if not args.schema.isidentifier():
        parser.error(f"bad --schema {args.schema!r}: letters, digits and underscores")
    if args.days and any(d < 9 for d in args.days):
        parser.error("--days must be at least 9 (START is the first day + 7 days)")
    if not args.days and any(y < 1 or y > 16 for y in args.years):
        parser.error("--years must be between 1 and 16 (the synthetic history starts in 2010)")
    if args.out is None:
        args.out = DATA_DIR / "compare" if args.days else RESULTS_DIR
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    from benchmarks.workloads import ensure_schema, ensure_workload

    url, server = resolve_server(args)
    sizes = (
        [Size.of_days(d) for d in args.days]
        if args.days
        else [Size.of_years(y) for y in sorted(set(args.years))]
    )
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="compare-revisions-") as tmp:
        before = extract(args.before, Path(tmp) / "before")
        check_imports_from(before, url)
        after = Revision(args.after, before.commit, before.tree)  # one commit twice: one tree
        if resolve_commit(args.after) != before.commit:
            after = extract(args.after, Path(tmp) / "after")
            check_imports_from(after, url)
        say(f"before: {before.name} = {before.commit[:10]}; after: {after.name} = {after.commit[:10]}")
        ensure_schema(url, args.schema)
        results = []
        for size in sizes:
            workload = ensure_workload(url, args.schema, size, say=say)
            say(f"{size.label} ({size.start} .. {size.end}, strength {STRENGTH}):")
            result = compare_size(url, args.schema, size, before, after, workload, args.hygiene)
            say("  " + describe(result))
            results.append(result)
    record = {
        "format": 1,
        "kind": "compare_revisions",
        "when": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "before": {"revision": args.before, "commit": before.commit},
        "after": {"revision": args.after, "commit": after.commit},
        "symbol": SYMBOL,
        "strength": STRENGTH,
        "hygiene": args.hygiene,
        "identical": all(r.comparison.identical for r in results),
        "sizes": [asdict(r) for r in results],
        "elapsed_s": round(time.perf_counter() - began, 1),
        "server": server,
        "machine": machine_info(url),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"compare-{record['when'].replace(':', '')}.json"
    out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    say(f"{'identical' if record['identical'] else 'NOT identical'}; wrote {out}")
    return record


if __name__ == "__main__":
    main()
