"""Chaos: backends of the product terminated at random moments, and Ctrl-C mid-run.

A killer thread terminates the product's reader and writer backends (found by their
``application_name``) while they are busy, at random moments, during multi-chunk backfills.
Every run must end with the events table identical, row for row, to a clean run's, and the
summary's retry count must account for every kill: a kill of the writer inside an open
transaction always costs one retry (the writer always uses its connection again, if only to close
the run); any other kill costs one unless it lands after the last byte the product needed from
that connection (a reader between its final result and closing, a statement already answered):
then there is nothing to redo. No retry happens without a kill. CI makes at least 20 kills; the opt-in
soak (``TRIANGLES_SOAK=1``, ``TRIANGLES_SOAK_KILLS=N``, default 200) makes N.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import polars as pl

from tests.helpers import NQ, Db, Server
from triangles_polars import backfill
from triangles_polars.source import READER_NAME
from triangles_polars.writer import WRITER_NAME

SOAK = os.environ.get("TRIANGLES_SOAK") == "1"
TARGET_KILLS = int(os.environ.get("TRIANGLES_SOAK_KILLS", "200")) if SOAK else 20


class Killer(threading.Thread):
    """Terminates busy product backends at random moments until stopped."""

    def __init__(self, server: Server, seed: int) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.random = random.Random(seed)
        self.kills = {READER_NAME: 0, WRITER_NAME: 0}
        # Writer kills that certainly broke an open transaction. A reader found idle in a
        # transaction may already hold its whole result, so its kill may rightly go unnoticed.
        self.in_transaction = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            time.sleep(self.random.uniform(0.002, 0.03))
            # Only backends in the middle of a statement or transaction, so that a kill hits work.
            rows = self.server.execute(
                "SELECT application_name, state, pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = ANY($1) AND pid <> pg_backend_pid() "
                "AND state IN ('active', 'idle in transaction') "
                "AND query NOT ILIKE 'COMMIT%'",
                ([READER_NAME, WRITER_NAME],),
            )
            for name, state, killed in rows:
                if killed:
                    self.kills[name] += 1
                    self.in_transaction += name == WRITER_NAME and state == "idle in transaction"

    def stop(self) -> int:
        self._stop_event.set()
        self.join(timeout=10)
        return sum(self.kills.values())


def test_random_kills_leave_the_table_identical_to_a_clean_run(db: Db, nq_bars: pl.DataFrame) -> None:
    db.load(nq_bars)
    range_ = dict(start="2025-11-10", end="2025-11-14", chunk_events=40)
    backfill(db.settings(**range_, events_table=f"{db.schema}.clean"))
    expected = db.events(table="clean")
    total = {READER_NAME: 0, WRITER_NAME: 0}
    runs = noticed = 0
    while sum(total.values()) < TARGET_KILLS and runs < 20 * (TARGET_KILLS // 20 + 1):
        runs += 1
        killer = Killer(db.server, seed=runs)
        killer.start()
        try:
            # --restart: every run rewrites the (covered) range, so that there is work to kill
            summary = backfill(db.settings(**range_, max_retries=1000, backoff_s=0.001, resume=False))
        finally:
            kills = killer.stop()
        for name, n in killer.kills.items():
            total[name] += n
        assert killer.in_transaction <= summary.retries <= kills, (summary.retries, killer.kills)
        noticed += summary.retries
        after = db.events()
        assert after.equals(expected)
        assert after.select("symbol", "strength", "c_ts", "c_kind").is_duplicated().sum() == 0
    assert sum(total.values()) >= TARGET_KILLS, total
    assert total[WRITER_NAME] > 0
    print(
        f"\nchaos: {runs} runs, {sum(total.values())} kills ({total}), {noticed} retries, "
        "every table identical to a clean run"
    )


def test_ctrl_c_mid_run_stops_cleanly_and_the_rerun_resumes(db: Db, nq_bars: pl.DataFrame) -> None:
    db.load(nq_bars)
    args = [
        sys.executable, "-m", "triangles_polars.cli", "backfill", NQ, "2025-10-27", "2025-11-28",
        "--database-url", db.url, "--bars-table", db.bars_table, "--events-table", db.events_table,
        "--chunk-events", "2", "--json",
    ]  # fmt: skip
    progress = f"{db.schema}.triangles_progress"
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    committed = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            committed = db.execute(f"SELECT count(*) FROM {progress}")[0][0]
        except Exception:  # the table does not exist yet
            committed = 0
        if committed >= 5:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (proc.returncode, err)
    assert out == ""
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "interrupted" in err
    done = db.execute(f"SELECT chunk_no, span_end, events FROM {progress} ORDER BY chunk_no")
    assert len(done) >= 5
    # every recorded chunk is fully there, and nothing after the last recorded chunk
    last_end = done[-1][1]
    assert db.events(f"confirmed_at < '{last_end.isoformat()}'").height == sum(r[2] for r in done)
    assert db.events(f"confirmed_at >= '{last_end.isoformat()}'").height == 0

    rerun = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["chunks_skipped"] == len(done)
    backfill(db.settings(start="2025-10-27", end="2025-11-28", events_table=f"{db.schema}.clean"))
    assert db.events().equals(db.events(table="clean"))
