"""Signals, for every command: SIGINT stops within a second (exit 130), SIGTERM too (exit 143).

Real processes get real signals. Whatever the settings, the command is gone within a second (the
tests allow three): the chunk in flight commits or rolls back whole, no new chunk starts, the
line on stderr says how many chunks were committed, and the same command again resumes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import psutil

from tests.helpers import NQ, Db, db_command, start_cli
from triangles_polars import backfill
from triangles_polars.db import connect

OTHER = "GLBX.MDP3:NQZ5"
STOP_WITHIN_S = 3.0  # the contract says 1 s; the margin is for a busy test machine
SMALL = ("--slice-days", "1", "--chunk-events", "10")


def committed_chunks(db: Db) -> int:
    try:
        return int(db.execute(f"SELECT count(*) FROM {db.schema}.triangles_progress")[0][0])
    except Exception:  # not created yet
        return 0


def wait_for_chunks(db: Db, proc: subprocess.Popen[str], n: int) -> None:
    deadline = time.monotonic() + 120
    while committed_chunks(db) < n and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended before it could be stopped: {proc.communicate()}"


def stop(proc: subprocess.Popen[str], signum: int) -> tuple[float, str, str]:
    """Send the signal; seconds until the process is gone, and what it printed."""
    sent = time.monotonic()
    proc.send_signal(signum)
    proc.wait(timeout=60)
    elapsed = time.monotonic() - sent
    out, err = proc.communicate()
    return elapsed, out, err


def wait_for_events(db: Db, proc: subprocess.Popen[str], n: int) -> None:
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if db.execute(f"SELECT count(*) FROM {db.events_table}")[0][0] >= n:
                return
        except Exception:  # not created yet
            pass
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended before it could be stopped: {proc.communicate()}"


def assert_consistent(db: Db) -> None:
    """Every chunk recorded as committed is there whole, and nothing after the last one."""
    done = db.execute(
        f"SELECT span_start, span_end, events FROM {db.schema}.triangles_progress ORDER BY span_end"
    )
    assert done
    last_end = done[-1][1]
    assert db.events(f"confirmed_at < '{last_end.isoformat()}'").height == sum(r[2] for r in done)
    assert db.events(f"confirmed_at >= '{last_end.isoformat()}'").height == 0
    assert db.events().select("symbol", "strength", "c_ts", "c_kind").is_duplicated().sum() == 0


def assert_resumes(db: Db, args: list[str], symbols: str = NQ) -> None:
    rerun = subprocess.run(db_command(db, *args, "--json"), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["chunks_skipped"] > 0 or any(t["status"] == "skipped" for t in summary.get("tasks", []))
    backfill(db.settings(symbol=symbols, start=args[2], end=args[3], events_table=f"{db.schema}.clean"))
    assert db.events().equals(db.events(table="clean"))


def test_ctrl_c_with_small_slices_exits_130_within_a_second_and_the_rerun_resumes(
    db: Db, nq_bars: pl.DataFrame
) -> None:
    db.load(nq_bars)
    args = ["backfill", NQ, "2025-10-27", "2025-11-28", *SMALL]
    proc = start_cli(db, *args)
    wait_for_chunks(db, proc, 5)
    elapsed, out, err = stop(proc, signal.SIGINT)
    assert proc.returncode == 130, err
    assert elapsed < STOP_WITHIN_S, elapsed
    assert out == "" and "Traceback" not in err
    [line] = err.strip().splitlines()
    assert line.startswith("interrupted: stopping… ") and " chunks committed" in line, line
    assert int(line.split("stopping… ")[1].split()[0]) >= 5
    assert_consistent(db)
    assert_resumes(db, args)


def test_ctrl_c_stops_worker_processes_within_a_second(db: Db, nq_bars: pl.DataFrame) -> None:
    # Three symbols, --jobs 3: this process and two workers, each on a task; the driver also
    # collects their results, where a signal used to go unseen until a task ended.
    symbols = [NQ, OTHER, "GLBX.MDP3:NQH6"]
    db.load(pl.concat([nq_bars.with_columns(pl.lit(s).alias("symbol")) for s in symbols]))
    args = ["backfill", ",".join(symbols), "2025-10-27", "2025-11-28", *SMALL, "--jobs", "3"]
    proc = start_cli(db, *args)
    wait_for_workers_writing(db, proc, symbols)
    workers = psutil.Process(proc.pid).children()
    assert len([w for w in workers if "spawn_main" in " ".join(w.cmdline())]) == 2
    elapsed, out, err = stop(proc, signal.SIGINT)
    assert proc.returncode == 130, err
    assert elapsed < STOP_WITHIN_S, elapsed
    assert out == "" and "stopping…" in err and "Traceback" not in err
    _gone(workers)
    assert db.events().select("symbol", "strength", "c_ts", "c_kind").is_duplicated().sum() == 0
    assert_resumes(db, args, symbols=",".join(symbols))


def wait_for_workers_writing(db: Db, proc: subprocess.Popen[str], symbols: list[str]) -> None:
    """Until every symbol's task has committed a chunk: the workers are up and writing."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            rows = db.execute(f"SELECT count(DISTINCT symbol) FROM {db.events_table}")
        except Exception:  # not created yet
            rows = [(0,)]
        if rows[0][0] == len(symbols):
            return
        time.sleep(0.02)
    raise AssertionError(f"the tasks never all wrote: {proc.poll()}")


def test_sigterm_stops_the_same_way_with_exit_143(db: Db, nq_bars: pl.DataFrame) -> None:
    db.load(nq_bars)
    args = ["update", NQ, *SMALL]
    proc = start_cli(db, *args)
    wait_for_events(db, proc, 50)  # five chunks of ten (an update keeps no ledger: coverage says it)
    elapsed, _out, err = stop(proc, signal.SIGTERM)
    assert proc.returncode == 143, err
    assert elapsed < STOP_WITHIN_S, elapsed
    [line] = err.strip().splitlines()
    assert line.startswith("terminated: stopping… "), line
    assert int(line.split("stopping… ")[1].split()[0]) >= 5
    # Every chunk commits with its coverage: the events are exactly those before the coverage end.
    [(covered_end,)] = db.execute(f"SELECT max(span_end) FROM {db.schema}.triangles_coverage")
    stopped_with = db.events()
    assert stopped_with.height >= 50
    rerun = subprocess.run(db_command(db, *args, "--json"), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    backfill(
        db.settings(
            start="2025-10-20", end="2025-11-30", anchor="2025-10-20", events_table=f"{db.schema}.clean"
        )
    )
    assert db.events().equals(db.events(table="clean"))
    assert stopped_with.equals(db.events(f"confirmed_at < '{covered_end.isoformat()}'", table="clean"))


def test_a_chunk_that_cannot_finish_is_rolled_back_and_the_command_still_stops_in_a_second(
    db: Db, nq_bars: pl.DataFrame
) -> None:
    db.load(nq_bars)
    args = ["backfill", NQ, "2025-10-27", "2025-11-28", *SMALL]
    proc = start_cli(db, *args)
    wait_for_chunks(db, proc, 3)
    blocker = connect(db.url)  # holds the events table: the next chunk's delete waits for it
    try:
        with blocker.cursor() as cur:
            cur.execute(f"LOCK TABLE {db.events_table} IN ACCESS EXCLUSIVE MODE")
        _wait_until_blocked(db)
        elapsed, _out, err = stop(proc, signal.SIGINT)
    finally:
        blocker.rollback()
        blocker.close()
    assert proc.returncode == 130, err
    assert elapsed < STOP_WITHIN_S, elapsed
    assert "stopping…" in err and "rolled back" in err, err
    time.sleep(0.5)  # the abandoned backend notices its client is gone once it has the lock
    assert_consistent(db)
    assert_resumes(db, args)


def test_a_second_ctrl_c_exits_at_once(db: Db, nq_bars: pl.DataFrame) -> None:
    db.load(nq_bars)
    proc = start_cli(db, "backfill", NQ, "2025-10-27", "2025-11-28", *SMALL)
    wait_for_chunks(db, proc, 3)
    blocker = connect(db.url)
    try:
        with blocker.cursor() as cur:
            cur.execute(f"LOCK TABLE {db.events_table} IN ACCESS EXCLUSIVE MODE")
        _wait_until_blocked(db)
        proc.send_signal(signal.SIGINT)  # the first: the chunk in flight cannot end (it waits)
        time.sleep(0.2)
        assert proc.poll() is None
        elapsed, _out, err = stop(proc, signal.SIGINT)
    finally:
        blocker.rollback()
        blocker.close()
    assert proc.returncode == 130, err
    assert elapsed < 1.0, elapsed  # the first stop alone would have ended ~0.6 s later, saying so
    assert "interrupted again: exiting at once" in err and "rolled back" not in err


def test_ctrl_c_during_a_bars_load_leaves_the_table_as_it_was(
    db: Db, nq_bars: pl.DataFrame, tmp_path: Path
) -> None:
    many = pl.concat([nq_bars.with_columns(pl.lit(f"SYN:S{i:02d}").alias("symbol")) for i in range(12)])
    path = tmp_path / "bars.csv"
    many.write_csv(path)
    db.load(nq_bars.head(10))
    before = db.execute(f"SELECT count(*) FROM {db.bars_table}")[0][0]
    env = {**os.environ, "TERM": "dumb"}
    load = [sys.executable, "-m", "triangles_polars.cli", "bars", "load", str(path)]
    load += ["--bars-table", db.bars_table, "--database-url", db.url]
    proc = subprocess.Popen(load, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and not _loading(db):
        time.sleep(0.01)
    elapsed, out, err = stop(proc, signal.SIGINT)
    assert proc.returncode == 130, (out, err)
    assert elapsed < STOP_WITHIN_S, elapsed
    assert "interrupted" in err and "Traceback" not in err
    assert db.execute(f"SELECT count(*) FROM {db.bars_table}")[0][0] == before


def _loading(db: Db) -> bool:
    rows = db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'triangles_loader' AND xact_start IS NOT NULL"
    )
    return rows[0][0] > 0


def _wait_until_blocked(db: Db) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = db.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'triangles_writer' "
            "AND wait_event_type = 'Lock'"
        )
        if rows[0][0]:
            return
        time.sleep(0.01)
    raise AssertionError("the writer never waited for the table lock")


def _gone(processes: list[psutil.Process]) -> None:
    """The worker processes end by themselves (their chunk in flight ended)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(p.is_running() and p.status() != "zombie" for p in processes):
        time.sleep(0.05)
    assert not any(p.is_running() and p.status() != "zombie" for p in processes)
