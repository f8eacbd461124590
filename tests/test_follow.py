"""``triangles update --follow``: a real process follows bars that a writer inserts in real time.

Whatever happens on the way (a killed backend, a restarted server, SIGTERM mid-stream), the
events table ends up exactly as one backfill of the same bars: every event once.
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import psycopg

from tests.helpers import NQ, Db
from triangles_polars import backfill

README = Path(__file__).resolve().parent.parent / "README.md"
MINUTE = timedelta(minutes=1)
HISTORY_END = datetime(2025, 11, 12, 14, 0, tzinfo=UTC)  # bars before it are there at the start


class Following:
    """A ``triangles update --follow --json`` process and the JSON Lines it printed so far."""

    def __init__(self, db: Db, *extra: str, command: list[str] | None = None) -> None:
        tables = ("--bars-table", db.bars_table, "--events-table", db.events_table)
        if command is None:
            command = ["update", NQ, "--follow", "--json", "--database-url", db.url, "--backoff", "0.05"]
        args = [sys.executable, "-m", "triangles_polars.cli", *command, *tables, *extra]
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "TERM": "dumb", "TRIANGLES_DATABASE_URL": db.url},
        )
        self.lines: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()  # type: ignore[arg-type]

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.append(json.loads(line))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line["type"] == kind]

    def wait_for(self, condition: Callable[[], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.proc.poll() is None, (self.proc.returncode, self.lines[-3:], "".join(self.stderr))
            assert time.monotonic() < deadline, ("timed out", self.lines[-3:], "".join(self.stderr))
            time.sleep(0.02)

    def terminate(self) -> float:
        """SIGTERM; the seconds it took to exit."""
        sent = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        time.sleep(0.1)  # the reader threads catch the last lines
        return time.monotonic() - sent


def covered_to(db: Db) -> datetime | None:
    try:
        return db.execute(f"SELECT max(span_end) FROM {db.schema}.triangles_coverage")[0][0]
    except Exception:
        return None


def clean(db: Db) -> pl.DataFrame:
    backfill(
        db.settings(
            start="2025-11-03", end="2025-11-13", anchor="2025-11-03", events_table=f"{db.schema}.clean"
        )
    )
    return db.events(table="clean")


def history_and_stream(nq_bars: pl.DataFrame, minutes: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    window = nq_bars.filter(pl.col("ts") >= datetime(2025, 11, 3, tzinfo=UTC))
    history = window.filter(pl.col("ts") < HISTORY_END)
    return history, window.filter(pl.col("ts") >= HISTORY_END).head(minutes)


def stream(
    db: Db, bars: pl.DataFrame, pause_s: float, seed: int = 1, after: Callable[[], None] | None = None
) -> None:
    """Insert the bars in batches of 1 to 4, one transaction each, ``pause_s`` apart."""
    rng = random.Random(seed)
    at = 0
    while at < bars.height:
        size = rng.randint(1, 4)
        db.load(bars.slice(at, size))
        at += size
        if after is not None:
            after()
        time.sleep(pause_s)


def newest_close(bars: pl.DataFrame) -> datetime:
    return bars["ts"].max() + MINUTE


def test_follow_writes_every_event_once_as_bars_arrive(db: Db, nq_bars: pl.DataFrame) -> None:
    history, new = history_and_stream(nq_bars, 150)
    db.load(history)
    follow = Following(db, "--poll", "0.2", "--heartbeat", "1")
    follow.wait_for(lambda: bool(follow.of("catch_up")), timeout=120)
    assert follow.of("catch_up")[0]["triangles"] == db.events().height > 500
    caught_up = db.events().height
    stream(db, new, pause_s=0.1)
    follow.wait_for(lambda: covered_to(db) == newest_close(new))
    follow.wait_for(lambda: bool(follow.of("heartbeat")))  # nothing new for a second: a heartbeat

    assert follow.terminate() < 3
    assert follow.proc.returncode == 0, follow.stderr
    cycles = follow.of("cycle")
    assert len(cycles) >= 10
    assert cycles[-1]["newest_close"] == newest_close(new).isoformat().replace("+00:00", "Z")
    assert sum(c["new_events"] for c in cycles) == db.events().height - caught_up > 0
    assert all(set(c) >= {"events", "newest_bar", "lag_s", "duration_s"} for c in cycles)
    heartbeat = follow.of("heartbeat")[0]
    assert heartbeat["quiet_s"] >= 1 and heartbeat["newest_close"] == cycles[-1]["newest_close"]
    assert follow.lines[-1]["type"] == "stopped" and follow.lines[-1]["signal"] == "SIGTERM"
    assert db.events().equals(clean(db))


def readme_trigger_sql() -> str:
    """The NOTIFY trigger of the README, as a bars writer installs it."""
    text = README.read_text()
    match = re.search(
        r"<!-- notify-trigger:begin -->\s*```sql\n(.*?)```\s*<!-- notify-trigger:end -->", text, re.S
    )
    assert match, "the README lost its NOTIFY trigger"
    return match.group(1)


def test_notify_wakes_the_follower_long_before_the_poll(db: Db, nq_bars: pl.DataFrame) -> None:
    history, new = history_and_stream(nq_bars, 120)
    db.load(history)
    with psycopg.connect(db.url, autocommit=True) as conn:  # the README's trigger, installed for real
        conn.execute(f"SET search_path TO {db.schema}")
        conn.execute(readme_trigger_sql())
    follow = Following(db, "--poll", "30", "--notify", "bars_1m")
    follow.wait_for(lambda: bool(follow.of("catch_up")), timeout=120)
    follow.wait_for(lambda: bool(follow.of("cycle")) or covered_to(db) == newest_close(history))
    waits = []
    for i in range(0, 60, 10):  # six batches of ten bars, each a transaction that fires NOTIFY
        batch = new.slice(i, 10)
        committed = time.monotonic()
        db.load(batch)
        follow.wait_for(lambda batch=batch: covered_to(db) == newest_close(batch), timeout=25)
        waits.append(time.monotonic() - committed)
    assert max(waits) < 10, waits  # a poll would have waited 30 s
    assert follow.terminate() < 3 and follow.proc.returncode == 0
    assert db.events().equals(clean(db))


def test_follow_survives_killed_backends(db: Db, nq_bars: pl.DataFrame) -> None:
    history, new = history_and_stream(nq_bars, 90)
    db.load(history)
    follow = Following(db, "--poll", "0.1", "--notify", "bars_1m")
    follow.wait_for(lambda: bool(follow.of("catch_up")), timeout=120)
    kills = []

    def kill_now_and_then() -> None:
        if random.random() < 0.3:
            kills.append(
                db.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name IN ('triangles_follow', 'triangles_listen', 'triangles_reader')"
                )[0][0]
            )

    stream(db, new, pause_s=0.1, after=kill_now_and_then)
    follow.wait_for(lambda: covered_to(db) == newest_close(new))
    assert sum(kills) > 0
    assert follow.of("retry"), "no cycle ever met a killed connection"
    assert follow.terminate() < 3 and follow.proc.returncode == 0
    assert db.events().equals(clean(db))


def test_follow_survives_a_server_restart(own_db: Db, nq_bars: pl.DataFrame) -> None:
    db = own_db
    history, new = history_and_stream(nq_bars, 60)
    db.load(history)
    follow = Following(db, "--poll", "0.2")
    follow.wait_for(lambda: bool(follow.of("catch_up")), timeout=120)
    stream(db, new.head(20), pause_s=0.1)
    follow.wait_for(lambda: covered_to(db) == newest_close(new.head(20)))

    db.server.stop()
    time.sleep(1.5)  # the follower retries, with its backoff
    db.server.start()
    stream(db, new.slice(20), pause_s=0.1)
    follow.wait_for(lambda: covered_to(db) == newest_close(new), timeout=90)
    assert follow.of("retry"), "the follower never saw the server go"
    assert follow.terminate() < 3 and follow.proc.returncode == 0
    assert db.events().equals(clean(db))


def test_sigterm_mid_stream_exits_0_with_nothing_half_written(db: Db, nq_bars: pl.DataFrame) -> None:
    history, new = history_and_stream(nq_bars, 200)
    db.load(history)
    follow = Following(db, "--poll", "0.05")
    follow.wait_for(lambda: bool(follow.of("catch_up")), timeout=120)
    writer = threading.Thread(target=stream, args=(db, new, 0.02), daemon=True)
    writer.start()
    follow.wait_for(lambda: len(follow.of("cycle")) >= 5)
    assert follow.terminate() < 3
    assert follow.proc.returncode == 0, follow.stderr
    writer.join(timeout=120)
    end = covered_to(db)
    assert end is not None and HISTORY_END < end < newest_close(new)  # it stopped mid-stream
    assert db.events().equals(clean(db).filter(pl.col("confirmed_at") <= end))


def readme_systemd_unit() -> dict[str, str]:
    """The README's systemd unit, as ``Key`` → value (the last one wins, as in systemd)."""
    text = README.read_text()
    match = re.search(
        r"<!-- systemd-unit:begin -->\s*```ini\n(.*?)```\s*<!-- systemd-unit:end -->", text, re.S
    )
    assert match, "the README lost its systemd unit"
    lines = [line for line in match.group(1).splitlines() if "=" in line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def test_the_readme_systemd_unit_runs_and_stops_as_written(db: Db, nq_bars: pl.DataFrame) -> None:
    """Its ExecStart follows; its KillSignal stops it within TimeoutStopSec, with an exit that
    ``Restart=on-failure`` does not take for a failure."""
    unit = readme_systemd_unit()
    assert unit["Environment"].startswith("TRIANGLES_DATABASE_URL=")
    script, *command = shlex.split(unit["ExecStart"])  # systemd quotes words as the shell does here
    assert script.startswith("/") and script.endswith("/triangles")
    assert unit["Restart"] == "on-failure" and unit["KillSignal"] == "SIGTERM"
    history, new = history_and_stream(nq_bars, 20)
    db.load(history)
    follow = Following(db, command=command)  # the database from the environment, as the unit sets it
    follow.wait_for(lambda: bool(follow.of("catch_up")), timeout=120)
    stream(db, new, pause_s=0.05)
    follow.wait_for(lambda: covered_to(db) == newest_close(new), timeout=60)  # --poll 5 at the most
    follow.proc.send_signal(getattr(signal, unit["KillSignal"]))
    follow.proc.wait(timeout=float(unit["TimeoutStopSec"]))
    assert follow.proc.returncode == 0, follow.stderr
    assert set(db.events()["strength"].unique()) == {3, 5, 8}
    assert db.events("strength = 5").equals(clean(db).filter(pl.col("confirmed_at") <= newest_close(new)))


def test_sigint_stops_the_follower_with_130(db: Db, nq_bars: pl.DataFrame) -> None:
    history, _new = history_and_stream(nq_bars, 0)
    db.load(history.filter(pl.col("ts") >= datetime(2025, 11, 11, tzinfo=UTC)))
    follow = Following(db, "--poll", "0.2")
    follow.wait_for(lambda: bool(follow.of("catch_up")), timeout=120)
    follow.proc.send_signal(signal.SIGINT)
    follow.proc.wait(timeout=30)
    time.sleep(0.1)  # the reader threads catch the last lines
    assert follow.proc.returncode == 130, follow.stderr
    assert follow.lines[-1]["type"] == "stopped" and follow.lines[-1]["signal"] == "SIGINT"
