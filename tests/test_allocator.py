"""A process that runs tasks allocates from few glibc malloc arenas, whatever threads it starts.

Each task starts a reader and a writer thread; glibc gave threads arenas of their own (up to 8
per core) and a process's memory grew with the tasks it ran. The console script caps the arenas
in the first lines of ``triangles_polars.cli``, before Polars starts threads; an environment that
chooses its own limit keeps it. Each run is a fresh interpreter running a real backfill through
the console script's path (``cli.run``) against the test server, then glibc's own ``malloc_info``
report counts the arenas.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import polars as pl
import pytest

from tests.helpers import Db
from triangles_polars.allocator import MALLOC_ARENAS

pytestmark = [
    pytest.mark.db,
    pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc arenas are glibc's"),
]

# Run in a child: a backfill of several tasks, then what glibc and the package report.
CHILD = """
import contextlib, ctypes, io, json, os, sys, tempfile
from triangles_polars import cli
from triangles_polars.engines import _worker_environment

url, bars, events, symbol = sys.argv[1:5]
out = io.StringIO()
with contextlib.redirect_stdout(out):
    code = cli.run([
        "backfill", symbol, "2025-11-03", "2025-11-07", "3,5", "--task-days", "1", "--jobs", "1",
        "--database-url", url, "--bars-table", bars, "--events-table", events, "--json", "--quiet",
    ])
summary = json.loads(out.getvalue())
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
path = os.path.join(tempfile.mkdtemp(), "malloc_info.xml")
report = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, report)
libc.fclose(report)
with _worker_environment(1):
    worker_arenas = os.environ.get("MALLOC_ARENA_MAX")
print(json.dumps({
    "code": code,
    "capped": cli.CAPPED_MALLOC_ARENAS,
    "done": sum(t["status"] == "done" for t in summary["tasks"]),
    "arenas": open(path).read().count("<heap nr="),
    "worker_arenas": worker_arenas,
}))
"""


def _run_child(db: Db, nq_bars: pl.DataFrame, **env: str) -> dict[str, object]:
    db.load(nq_bars)
    symbol = nq_bars["symbol"][0]
    child_env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES")}
    completed = subprocess.run(
        [sys.executable, "-c", CHILD, db.url, db.bars_table, db.events_table, symbol],
        capture_output=True,
        text=True,
        timeout=300,
        env=child_env | env,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_a_process_that_ran_tasks_allocates_from_two_malloc_arenas(db: Db, nq_bars: pl.DataFrame) -> None:
    report = _run_child(db, nq_bars)
    assert report["code"] == 0
    assert report["capped"] is True
    assert report["done"] == 5  # five daily tasks, each with its reader and writer threads
    assert 1 <= report["arenas"] <= MALLOC_ARENAS
    assert report["worker_arenas"] == str(MALLOC_ARENAS)  # the workers start capped too


def test_an_environment_that_chooses_its_arena_limit_keeps_it(db: Db, nq_bars: pl.DataFrame) -> None:
    report = _run_child(db, nq_bars, MALLOC_ARENA_MAX="3")
    assert report["capped"] is False
    assert report["done"] == 5
    assert report["worker_arenas"] == "3"  # handed to the workers unchanged
