"""Runs that succeed but deserve a word (docs/contract.md#warnings): each warning is given when
its fact holds (checked against the bars and events tables), names the fix, and is absent otherwise.

The human summary's lines about writes and bad bars (docs/contract.md#what-a-command-prints) are
here too: they are what a user reads to tell a silent success from a real one.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, timedelta

import polars as pl
import pytest

from tests.helpers import NQ, Db, run_cli
from triangles_polars import backfill

START, END = "2025-11-04", "2025-11-06"  # inside the six weeks of ``nq_bars`` (2025-10-20 → 2025-11-30)


@pytest.fixture()
def loaded(db: Db, nq_bars: pl.DataFrame) -> Db:
    db.load(nq_bars)
    return db


def run(db: Db, **kwargs: object) -> object:
    return backfill(db.settings(**({"start": START, "end": END} | kwargs)))


def events_in(db: Db, start: str, end: str, k: int = 5) -> int:
    return int(
        db.execute(
            f"SELECT count(*) FROM {db.events_table} WHERE strength = $1 AND confirmed_at >= '{start}' "
            f"AND confirmed_at < '{end}'::timestamptz + interval '1 day'",
            (k,),
        )[0][0]
    )


def test_a_proper_run_warns_nothing(loaded: Db) -> None:
    summary = run(loaded)
    assert summary.warnings == [] and summary.triangles > 0


def test_anchor_at_start_warns_and_loses_events_a_proper_anchor_finds(loaded: Db) -> None:
    short = run(loaded, anchor=START, events_table=f"{loaded.schema}.short")
    proper = run(loaded)
    assert short.triangles < proper.triangles  # the fact the warning is about
    assert events_in(loaded, START, END) == proper.triangles
    (warning,) = short.warnings
    assert "pivots" in warning and "--anchor" in warning and "k=5" in warning


def test_a_strength_too_large_for_the_default_anchor_warns_with_an_anchor_that_works(loaded: Db) -> None:
    big = run(loaded, strength=2000)
    (warning,) = big.warnings
    assert "k=2000" in warning and "--anchor" in warning
    suggested = re.search(r"--anchor (\d{4}-\d{2}-\d{2})", warning).group(1)
    followed = run(loaded, strength=2000, anchor=suggested, events_table=f"{loaded.schema}.followed")
    assert followed.warnings == []


def test_no_lookback_warning_when_no_bars_precede_the_anchor(loaded: Db) -> None:
    # The anchor lies before the symbol's first bar: an earlier one would not change anything.
    first_day = "2025-10-20"
    summary = run(loaded, start=first_day, end="2025-10-21", anchor="2025-10-13")
    assert not any("pivots" in w for w in summary.warnings), summary.warnings


def test_a_bar_interval_that_does_not_match_the_bars_warns(loaded: Db) -> None:
    summary = run(loaded, bar_interval="5m")
    (warning,) = summary.warnings
    assert "1m apart" in warning and "--bar-interval 1m" in warning


def test_a_range_past_the_last_bar_warns(loaded: Db) -> None:
    last = loaded.execute(f"SELECT max(ts) FROM {loaded.bars_table}")[0][0]
    summary = run(loaded, start="2025-11-28", end="2025-12-10")
    (warning,) = summary.warnings
    last_close = (last + timedelta(minutes=1)).astimezone(UTC).isoformat()
    assert "last bar" in warning and "update" in warning and last_close in warning
    today_like = run(loaded, start="2025-11-28", end="2025-11-30")  # ends with the bars: no warning
    assert today_like.warnings == []


def test_a_holiday_with_bars_in_the_lookback_is_empty_and_warns(loaded: Db) -> None:
    saturday = "2025-11-01"
    summary = run(loaded, start=saturday, end=saturday)
    assert summary.exit_code == 0 and summary.triangles == 0 and summary.bars_processed > 0
    assert [t.status for t in summary.tasks] == ["empty"]
    (warning,) = summary.warnings
    assert "no bars between" in warning and "holiday" in warning


def test_cli_prints_warnings_on_stderr_and_in_json(loaded: Db) -> None:
    result = run_cli(
        "backfill", NQ, START, END, "--anchor", START, "--json", "--database-url", loaded.url,
        "--bars-table", loaded.bars_table, "--events-table", loaded.events_table,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    warnings = json.loads(result.stdout)["warnings"]
    assert len(warnings) == 1 and "pivots" in warnings[0]
    assert "warning:" in result.stderr and "pivots" in result.stderr


def test_append_after_replace_says_nothing_was_inserted(loaded: Db) -> None:
    args = [
        "backfill", NQ, START, END, "--database-url", loaded.url, "--bars-table", loaded.bars_table,
        "--events-table", loaded.events_table, "--restart",
    ]  # fmt: skip
    assert run_cli(*args).returncode == 0
    stored = events_in(loaded, START, END)
    again = run_cli(*args, "--mode", "append")
    assert again.returncode == 0, again.stderr
    line = next(line for line in again.stdout.splitlines() if "Triangles" in line)
    assert "0 inserted" in line and f"{stored:,} already present" in line
    replaced = run_cli(*args)
    line = next(line for line in replaced.stdout.splitlines() if "Triangles" in line)
    assert f"{stored:,} inserted" in line and f"{stored:,} replaced" in line
    as_json = json.loads(run_cli(*args, "--mode", "append", "--json").stdout)
    assert as_json["rows_inserted"] == 0 and as_json["rows_already_present"] == stored


def test_bad_bar_codes_that_add_up_to_more_than_the_bad_bars_are_explained(
    db: Db, legacy_bars: pl.DataFrame
) -> None:
    db.load(legacy_bars)
    args = [
        "backfill", NQ, "2025-11-03", "2025-11-21", "--hygiene", "full", "--json", "--database-url", db.url,
        "--bars-table", db.bars_table, "--events-table", db.events_table,
    ]  # fmt: skip
    summary = json.loads(run_cli(*args).stdout)
    codes_total = sum(summary["bad_bars_by_rule"].values())
    assert codes_total > summary["bad_bars_skipped"] > 0, summary  # the data has bars with several codes
    human = run_cli(*[a for a in args if a != "--json"], "--restart")
    line = next(line for line in human.stdout.splitlines() if "Bad bars skipped" in line)
    assert f"{summary['bad_bars_skipped']:,}" in line and "several codes" in line
    basic = [a if a != "full" else "basic" for a in args if a != "--json"]
    plain = run_cli(*basic, "--restart", "--json")
    assert (
        sum(json.loads(plain.stdout)["bad_bars_by_rule"].values())
        == json.loads(plain.stdout)["bad_bars_skipped"]
    )
    line = next(
        line for line in run_cli(*basic, "--restart").stdout.splitlines() if "Bad bars skipped" in line
    )
    assert "several codes" not in line  # rules 1-2: one code per bad bar
