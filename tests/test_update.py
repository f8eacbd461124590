"""``triangles update``: continuing every key from its coverage up to and including the newest bar.

Every history built here by updates (after a backfill, after another update, with ``--until``,
``--lookback``, from nothing, in random batches) is compared row for row with one backfill of the
same bars.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import NQ, Db, assert_one_line_error, make_db, run_cli, run_cli_in_process
from triangles_polars import backfill
from triangles_polars.errors import BadInput
from triangles_polars.update import UpdateSettings, update

MINUTE = timedelta(minutes=1)
FIRST_DAY, LAST_DAY = "2025-10-20", "2025-11-30"  # the nq_bars fixture's days
README = Path(__file__).resolve().parent.parent / "README.md"


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def up(db: Db, **kwargs: object) -> UpdateSettings:
    base = {
        "symbol": NQ,
        "database_url": db.url,
        "bars_table": db.bars_table,
        "events_table": db.events_table,
        "backoff_s": 0.05,
        "jobs": 1,
    }
    return UpdateSettings(**(base | kwargs))  # type: ignore[arg-type]


def one_backfill(db: Db, table: str = "clean", strength: object = 5) -> pl.DataFrame:
    """The events of one backfill of every bar the table holds, into ``table`` of the schema."""
    backfill(
        db.settings(
            start=FIRST_DAY,
            end=LAST_DAY,
            anchor=FIRST_DAY,
            strength=strength,
            events_table=f"{db.schema}.{table}",
        )
    )
    return db.events(table=table)


def coverage_end(db: Db, strength: int = 5) -> datetime:
    rows = db.execute(
        f"SELECT max(span_end) FROM {db.schema}.triangles_coverage WHERE events_table = $1 AND strength = $2",
        (db.events_table, strength),
    )
    return rows[0][0]


def test_update_after_a_backfill_writes_exactly_what_one_backfill_would(
    db: Db, nq_bars: pl.DataFrame
) -> None:
    cut = utc("2025-11-18T15:37:00")
    db.load(nq_bars.filter(pl.col("ts") < cut))
    newest_close = nq_bars.filter(pl.col("ts") < cut)["ts"].max() + MINUTE
    backfill(db.settings(start=FIRST_DAY, end="2025-11-10", anchor=FIRST_DAY))
    assert coverage_end(db) == utc("2025-11-11")  # the data goes on: covered to END + 1 day

    first = update(up(db))  # 2025-11-11 up to and including the close of the newest bar
    assert first.start == "2025-11-11T00:00:00+00:00"
    assert first.end_exclusive == (newest_close + timedelta(microseconds=1)).isoformat()
    assert coverage_end(db) == newest_close
    assert first.triangles == db.events(f"confirmed_at >= '{utc('2025-11-11').isoformat()}'").height > 100

    db.load(nq_bars.filter(pl.col("ts") >= cut))
    second = update(up(db))
    assert second.start == newest_close.isoformat() and second.triangles > 0
    assert second.bars_processed == nq_bars.filter(pl.col("ts") >= cut).height  # lookback bars uncounted
    assert db.events().equals(one_backfill(db))


def test_the_event_the_newest_bar_confirms_is_written_at_once(db: Db, nq_bars: pl.DataFrame) -> None:
    db.load(nq_bars)
    reference = one_backfill(db)
    # An event confirmed by a bar in the middle of a session: load the bars up to that very bar.
    event = reference.filter(pl.col("confirmed_at") > utc("2025-11-12T15:00:00")).row(0, named=True)
    newest_close = event["confirmed_at"]
    db.execute(f"DELETE FROM {db.bars_table} WHERE ts >= $1", (newest_close,))
    backfill(db.settings(start=FIRST_DAY, end="2025-11-05", anchor=FIRST_DAY))

    summary = update(up(db))
    stored = db.events()
    assert stored["confirmed_at"].max() == newest_close
    assert stored.filter(pl.col("confirmed_at") == newest_close).select("c_ts", "c_kind").row(0) == (
        event["c_ts"],
        event["c_kind"],
    )
    assert coverage_end(db) == newest_close
    assert summary.end_exclusive == (newest_close + timedelta(microseconds=1)).isoformat()
    assert stored.equals(reference.filter(pl.col("confirmed_at") <= newest_close))


def test_update_after_update_and_with_no_new_bars_writes_nothing(db: Db, nq_bars: pl.DataFrame) -> None:
    db.load(nq_bars.filter(pl.col("ts") < utc("2025-11-20T10:00:00")))
    args = ["update", NQ, "--database-url", db.url, "--bars-table", db.bars_table]
    args += ["--events-table", db.events_table, "--json", "--jobs", "1"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["triangles"] > 1000
    before = db.events()

    again = run_cli(*args)  # nothing new: nothing written, no warning, exit 0
    assert again.returncode == 0, again.stderr
    assert again.stderr == ""
    summary = json.loads(again.stdout)
    assert summary["triangles"] == summary["commits"] == summary["bars_processed"] == 0
    assert db.events().equals(before)

    db.load(nq_bars.filter(pl.col("ts") >= utc("2025-11-20T10:00:00")))
    third = run_cli(*args)
    assert third.returncode == 0, third.stderr
    assert json.loads(third.stdout)["triangles"] > 0
    # Updates go on from coverage alone: the run ledger does not grow with every update.
    assert ledger_rows(db) == (0, 0)
    assert db.events().equals(one_backfill(db))


def ledger_rows(db: Db) -> tuple[int, int]:
    """Rows of the run ledger: (runs, committed chunks)."""
    runs = db.execute(f"SELECT count(*) FROM {db.schema}.triangles_runs")[0][0]
    return runs, db.execute(f"SELECT count(*) FROM {db.schema}.triangles_progress")[0][0]


def test_until_stops_there_and_the_next_update_goes_on(db: Db, nq_bars: pl.DataFrame) -> None:
    db.load(nq_bars)
    until = utc("2025-11-14T18:42:00")
    summary = update(up(db, until=until.isoformat()))
    assert summary.end_exclusive == (until + timedelta(microseconds=1)).isoformat()
    assert db.events()["confirmed_at"].max() <= until
    assert coverage_end(db) == until + timedelta(microseconds=1)  # the data goes on past --until

    update(up(db, until="2025-11-20"))  # a day: up to the end of that day
    assert coverage_end(db) == utc("2025-11-21")
    update(up(db))
    assert db.events().equals(one_backfill(db))


def test_a_key_never_processed_is_backfilled_from_its_first_bar(db: Db, nq_bars: pl.DataFrame) -> None:
    db.load(nq_bars)
    summary = update(up(db, strength="3,5"))
    first_open = nq_bars["ts"].min()
    assert summary.start == summary.anchor == first_open.isoformat()
    assert summary.bars_processed == nq_bars.height
    assert set(summary.triangles_by_strength) == {3, 5}
    assert db.events().equals(one_backfill(db, strength="3,5"))


def test_lookback_rewrites_the_end_of_the_coverage_for_corrected_bars(db: Db, nq_bars: pl.DataFrame) -> None:
    db.load(nq_bars)
    update(up(db))
    # A late correction of a bar 40 minutes before the end: its events change.
    last = nq_bars["ts"].max()
    corrected = nq_bars.filter(pl.col("ts") == last - 40 * MINUTE).with_columns(
        pl.col("high") + 25.0, pl.col("close") + 20.0
    )
    db.load(corrected)
    expected = one_backfill(db)
    assert update(up(db)).triangles == 0  # no new bar: a plain update leaves it
    assert not db.events().equals(expected)
    rewritten = update(up(db, lookback="2h"))
    assert rewritten.start == (last + MINUTE - timedelta(hours=2)).isoformat()
    assert rewritten.rows_deleted > 0
    assert db.events().equals(expected)


def test_many_symbols_and_strengths_in_one_update(db: Db, nq_bars: pl.DataFrame) -> None:
    es = nq_bars.with_columns(pl.lit("GLBX.MDP3:NQZ5").alias("symbol"))
    db.load(pl.concat([nq_bars, es]).filter(pl.col("ts") < utc("2025-11-27")))
    newest_close = nq_bars.filter(pl.col("ts") < utc("2025-11-27"))["ts"].max() + MINUTE
    args = ["update", "GLBX.MDP3:*", "3,5", "--database-url", db.url, "--bars-table", db.bars_table]
    args += ["--events-table", db.events_table, "--json", "--jobs", "2"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    tasks = json.loads(first.stdout)["tasks"]
    assert sorted(t["symbol"] for t in tasks) == [NQ, "GLBX.MDP3:NQZ5"]
    assert {t["status"] for t in tasks} == {"done"}

    db.load(pl.concat([nq_bars, es]).filter(pl.col("ts") >= utc("2025-11-27")))
    second = json.loads(run_cli(*args[:-1], "1").stdout)  # in this process this time
    assert {t["status"] for t in second["tasks"]} == {"done"}
    assert [t["start"] for t in second["tasks"]] == [newest_close.isoformat()] * 2
    assert set(second["triangles_by_strength"]) == {"3", "5"}
    backfill(
        db.settings(
            symbol="GLBX.MDP3:*",
            start=FIRST_DAY,
            end=LAST_DAY,
            anchor=FIRST_DAY,
            strength="3,5",
            events_table=f"{db.schema}.clean",
        )
    )
    assert db.events().equals(db.events(table="clean"))


def test_bad_input_is_one_line_and_exit_2(db: Db, nq_bars: pl.DataFrame) -> None:
    db.load(nq_bars.head(100))
    common = ["--database-url", db.url, "--bars-table", db.bars_table, "--events-table", db.events_table]
    assert_one_line_error(run_cli("update", "GLBX.MDP3:ES", *common), 2, "GLBX.MDP3:ES", NQ)
    # update continues each key in one task (its coverage stays one span): no --task-days
    assert_one_line_error(run_cli("update", NQ, "--task-days", "2", *common), 2, "--task-days")
    with pytest.raises(BadInput, match="--task-days"):
        up(db, task_days=2)
    for args, needle in (
        (["--lookback", "soon"], "--lookback"),
        (["--until", "2025-13-01"], "--until"),
        (["--follow", "--until", "2025-11-01"], "--follow"),
        (["--notify", "bars"], "--notify"),
        (["--lookback", "2h", "--mode", "append"], "--lookback"),
    ):
        assert_one_line_error(run_cli_in_process("update", NQ, *args, *common), 2, needle)
    assert db.execute("SELECT to_regclass($1) IS NULL", (db.events_table,))[0][0]  # nothing written


# ---------------------------------------------------------------------------- property


@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    batches=st.lists(st.integers(min_value=1, max_value=900), min_size=2, max_size=6),
    strength=st.sampled_from([2, 5]),
)
def test_updates_between_batches_of_any_size_equal_one_backfill(
    pg: object, nq_bars: pl.DataFrame, batches: list[int], strength: int
) -> None:
    db = make_db(pg)  # type: ignore[arg-type]
    try:
        bars = nq_bars.filter((pl.col("ts") >= utc("2025-11-10")) & (pl.col("ts") < utc("2025-11-13")))
        db.load(bars.head(1500))
        update(up(db, strength=strength))
        at = 1500
        for size in batches:
            size = min(size, bars.height - at)
            if size == 0:
                break
            db.load(bars.slice(at, size))
            at += size
            update(up(db, strength=strength))
        got = db.events()
        backfill(
            db.settings(
                start="2025-11-10",
                end="2025-11-12",
                anchor="2025-11-10",
                strength=strength,
                events_table=f"{db.schema}.clean",
            )
        )
        assert got.equals(
            db.events(table="clean").filter(pl.col("confirmed_at") <= bars["ts"][at - 1] + MINUTE)
        )
    finally:
        db.execute(f"DROP SCHEMA {db.schema} CASCADE")


def test_append_mode_updates_equal_one_backfill(db: Db, nq_bars: pl.DataFrame) -> None:
    db.load(nq_bars.filter(pl.col("ts") < utc("2025-11-25T12:00:00")))
    update(up(db, mode="append"))
    db.load(nq_bars.filter(pl.col("ts") >= utc("2025-11-25T12:00:00")))
    assert update(up(db, mode="append")).rows_inserted > 0
    assert db.events().equals(one_backfill(db))


# ---------------------------------------------------------------------------- the README's cron entry


def readme_cron_entry() -> tuple[dict[str, str], str]:
    """The crontab of the README: its variables, and its one job's command (schedule cut off)."""
    text = README.read_text()
    match = re.search(
        r"<!-- cron-example:begin -->\s*```cron\n(.*?)```\s*<!-- cron-example:end -->", text, re.S
    )
    assert match, "the README lost its cron example"
    lines = [line for line in match.group(1).splitlines() if line.strip() and not line.startswith("#")]
    variables = dict(line.split("=", 1) for line in lines if re.match(r"^[A-Z_]+=", line))
    [job] = [line for line in lines if not re.match(r"^[A-Z_]+=", line)]  # a crontab entry is one line
    fields = job.split(None, 5)
    assert all(re.fullmatch(r"[\d*/,-]+", f) for f in fields[:5]), fields  # minute hour day month weekday
    return variables, fields[5]


def test_the_readme_cron_entry_runs_as_written(db: Db, nq_bars: pl.DataFrame, tmp_path: Path) -> None:
    """Its command, run by a shell as cron runs it, into its log files (flushed whole at exit)."""
    variables, command = readme_cron_entry()
    assert set(variables) == {"TRIANGLES_DATABASE_URL"}
    script, rest = command.split(" ", 1)
    assert script.startswith("/") and script.endswith("/triangles")  # cron's PATH is short: a full path
    args, redirections = rest.split(" >> ", 1)
    out, err = tmp_path / "triangles.jsonl", tmp_path / "triangles.err"
    redirections = re.sub(r"/var/log/triangles\.jsonl", str(out), redirections)
    redirections = re.sub(r"/var/log/triangles\.err", str(err), redirections)
    tables = f"--bars-table {db.bars_table} --events-table {db.events_table}"
    line = f"{shlex.quote(sys.executable)} -m triangles_polars.cli {args} {tables} >> {redirections}"
    bars = nq_bars.filter(pl.col("ts") < utc("2025-11-10"))
    db.load(pl.concat([bars, bars.with_columns(pl.lit("GLBX.MDP3:NQZ5").alias("symbol"))]))  # NQ*: two
    env = {**os.environ, "TRIANGLES_DATABASE_URL": db.url, "PATH": "/usr/bin:/bin"}
    for _ in range(2):  # the first run writes every key, the next finds them current
        done = subprocess.run(["/bin/sh", "-c", line], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (done.stderr, err.read_text() if err.exists() else "")
    first, second = (json.loads(x) for x in out.read_text().splitlines())  # one JSON summary a line
    assert err.read_text() == ""
    assert [t["status"] for t in first["tasks"]] == ["done", "done"]
    assert set(first["triangles_by_strength"]) == {"3", "5", "8"}
    assert [t["status"] for t in second["tasks"]] == ["skipped", "skipped"] and second["triangles"] == 0
    assert db.events().height == first["triangles"] > 0
