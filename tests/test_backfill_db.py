"""End-to-end backfills against real PostgreSQL: correctness, invariance, idempotency."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from tests.helpers import NQ, Db
from tests.reference import reference_events, reference_hygiene
from triangles_polars import backfill
from triangles_polars.detect import EVENT_COLUMNS
from triangles_polars.schema import BAR_SCHEMA as BAR_TABLE_SCHEMA
from triangles_polars.settings import NQ_THRESHOLDS

MINUTE = timedelta(minutes=1)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def reference_for(
    bars: pl.DataFrame, start: str, end: str, profile: str, anchor: datetime | None = None
) -> pl.DataFrame:
    """Events of the plain-Python reference for START..END (whole days), bars from ANCHOR."""
    range_start, range_end = utc(start), utc(end) + timedelta(days=1)
    anchor = anchor or range_start - timedelta(days=7)
    window = bars.filter((pl.col("ts") >= anchor) & (pl.col("ts") < range_end)).to_dicts()
    rows = reference_events(window, NQ, 5, MINUTE, profile, NQ_THRESHOLDS.__dict__, range_start, range_end)
    return pl.DataFrame(rows, schema=None).sort("confirmed_at", "c_ts", "c_kind") if rows else pl.DataFrame()


def stored(db: Db, table: str) -> pl.DataFrame:
    return db.events(table=table)


def test_one_day_matches_reference_and_field_report_shape(db: Db, nq_bars: pl.DataFrame) -> None:
    db.load(nq_bars)
    summary = backfill(
        db.settings(start="2025-11-25", end="2025-11-25", strength=5, anchor="2025-11-23T23:00:00Z")
    )
    expected = reference_for(nq_bars, "2025-11-25", "2025-11-25", "basic", anchor=utc("2025-11-23T23:00:00"))
    got = db.events()
    assert got.height == expected.height > 50
    assert got.select(EVENT_COLUMNS).equals(expected.select(EVENT_COLUMNS).cast(got.schema))
    loaded = nq_bars.filter((pl.col("ts") >= utc("2025-11-23T23:00:00")) & (pl.col("ts") < utc("2025-11-26")))
    assert summary.bars_processed == loaded.height
    assert summary.triangles == got.height
    assert summary.bad_bars_skipped == 0 and summary.bad_bars_by_rule == {}
    assert summary.chunks == summary.commits == 1 and summary.retries == 0


def test_legacy_close_convention_full_hygiene_matches_reference(db: Db, legacy_bars: pl.DataFrame) -> None:
    # A legacy table stores the bar's close time; the product must shift it back by one bar.
    db.load(legacy_bars.with_columns(pl.col("ts") + MINUTE))
    summary = backfill(db.settings(start="2025-11-10", end="2025-11-21", ts_convention="close"))
    assert summary.hygiene == "full"
    expected = reference_for(legacy_bars, "2025-11-10", "2025-11-21", "full")
    got = db.events()
    assert got.height == expected.height > 1000
    assert got.select(EVENT_COLUMNS).equals(expected.select(EVENT_COLUMNS).cast(got.schema))
    # bad bars by code, over every bar read (anchor .. END + 1 day)
    window = legacy_bars.filter((pl.col("ts") >= utc("2025-11-03")) & (pl.col("ts") < utc("2025-11-22")))
    codes = reference_hygiene(window.to_dicts(), "full", NQ_THRESHOLDS.__dict__)
    by_code: dict[str, int] = {}
    for bar_codes in codes:
        for code in bar_codes:
            by_code[code] = by_code.get(code, 0) + 1
    assert summary.bars_processed == window.height
    assert summary.bad_bars_by_rule == by_code
    assert summary.bad_bars_skipped == sum(1 for c in codes if c) > 0
    assert set(by_code) >= {"OHLC_INTEGRITY", "PRICE_LT_1000", "DISCONTINUITY_500"}


def test_results_do_not_depend_on_chunk_size(db: Db, nq_bars: pl.DataFrame) -> None:
    db.load(nq_bars)
    tables = {}
    for chunk_events in (1, 7, 250, 50_000):
        table = f"events_chunk_{chunk_events}"
        summary = backfill(
            db.settings(
                start="2025-11-24",
                end="2025-11-25",
                chunk_events=chunk_events,
                events_table=f"{db.schema}.{table}",
            )
        )
        assert summary.chunks == summary.commits
        assert summary.chunks >= min(summary.triangles // chunk_events, 1)
        tables[chunk_events] = stored(db, table)
    first = tables[1]
    assert first.height > 200
    for frame in tables.values():
        assert frame.equals(first)


def test_day_by_day_runs_equal_one_run(db: Db, nq_bars: pl.DataFrame) -> None:
    db.load(nq_bars)
    backfill(db.settings(start="2025-11-10", end="2025-11-16", events_table=f"{db.schema}.one_run"))
    day = datetime(2025, 11, 10).date()
    total = 0
    while day <= datetime(2025, 11, 16).date():
        total += backfill(
            db.settings(start=day.isoformat(), end=day.isoformat(), events_table=f"{db.schema}.daily")
        ).triangles
        day += timedelta(days=1)
    one, daily = stored(db, "one_run"), stored(db, "daily")
    assert daily.height == total == one.height > 500
    assert daily.equals(one)


@pytest.mark.parametrize("anchor", ["2025-11-12", "2025-10-21T00:00:00Z"])
def test_anchor_far_enough_back_does_not_change_results(db: Db, nq_bars: pl.DataFrame, anchor: str) -> None:
    db.load(nq_bars)
    backfill(db.settings(start="2025-11-17", end="2025-11-18", events_table=f"{db.schema}.default_anchor"))
    backfill(
        db.settings(
            start="2025-11-17", end="2025-11-18", anchor=anchor, events_table=f"{db.schema}.other_anchor"
        )
    )
    assert stored(db, "other_anchor").equals(stored(db, "default_anchor"))


def test_replace_rerun_restores_exactly_a_clean_run(db: Db, nq_bars: pl.DataFrame) -> None:
    db.load(nq_bars)
    settings = db.settings(start="2025-11-18", end="2025-11-19", chunk_events=100)
    backfill(settings)
    clean = db.events()
    # Tamper: drop some events, change one, add a stray one inside the range; keep one outside.
    db.execute(f"DELETE FROM {db.events_table} WHERE c_ts < '2025-11-18T12:00:00Z'")
    db.execute(
        f"UPDATE {db.events_table} SET c_price = -1 WHERE c_ts = (SELECT max(c_ts) FROM {db.events_table})"
    )
    outside = clean.head(1).with_columns(
        pl.lit(datetime(2025, 11, 25, 12, tzinfo=UTC)).alias("confirmed_at"),
        pl.lit(datetime(2025, 11, 25, 11, tzinfo=UTC)).alias("c_ts"),
    )
    stray = clean.head(1).with_columns(pl.col("c_ts") - timedelta(seconds=30))
    import adbc_driver_postgresql.dbapi as adbc

    with adbc.connect(db.url) as conn, conn.cursor() as cur:
        cur.adbc_ingest(
            "triangle_events", pl.concat([outside, stray]).to_arrow(), mode="append", db_schema_name=db.schema
        )
        conn.commit()
    # The range is covered, so the same command skips it; --restart (resume=False) rewrites it.
    assert backfill(settings).tasks[0].status == "skipped"
    summary = backfill(replace(settings, resume=False))
    after = db.events()
    assert after.filter(pl.col("confirmed_at") < utc("2025-11-20")).equals(clean)
    assert after.height == clean.height + 1  # the event outside the range is untouched
    assert summary.retries == 0 and summary.chunks == summary.commits > 1
    # and once more: same table
    backfill(settings)
    assert db.events().equals(after)


def test_append_rerun_adds_nothing_and_keeps_existing_rows(db: Db, nq_bars: pl.DataFrame) -> None:
    db.load(nq_bars)
    settings = db.settings(start="2025-11-18", end="2025-11-18", mode="append")
    first = backfill(settings)
    before = db.events()
    assert first.rows_inserted == before.height == first.triangles > 0
    db.execute(
        f"UPDATE {db.events_table} SET pattern = 'XXX' WHERE c_ts = (SELECT min(c_ts) FROM {db.events_table})"
    )
    second = backfill(settings)
    assert second.rows_inserted == 0
    after = db.events()
    assert after.height == before.height
    assert after.filter(pl.col("pattern") == "XXX").height == 1  # append keeps existing rows as they are


def test_purge_empties_the_range_first(db: Db, nq_bars: pl.DataFrame) -> None:
    db.load(nq_bars)
    backfill(db.settings(start="2025-11-17", end="2025-11-19"))
    all_before = db.events()
    db.execute(
        f"UPDATE {db.events_table} SET pattern = 'XXX' WHERE confirmed_at >= '2025-11-18' AND confirmed_at < '2025-11-19'"
    )
    summary = backfill(db.settings(start="2025-11-18", end="2025-11-18", mode="append", purge=True))
    assert (
        summary.purged
        == all_before.filter(
            (pl.col("confirmed_at") >= utc("2025-11-18")) & (pl.col("confirmed_at") < utc("2025-11-19"))
        ).height
    )
    after = db.events()
    assert after.filter(pl.col("pattern") == "XXX").height == 0
    assert after.equals(all_before)


def test_changed_hygiene_replaces_rows_with_the_same_key(db: Db, legacy_bars: pl.DataFrame) -> None:
    """Same (symbol, strength, c_ts, c_kind) but another confirmed_at must not collide on rerun."""
    db.load(legacy_bars)
    backfill(db.settings(start="2025-11-10", end="2025-11-12", hygiene="basic"))
    backfill(db.settings(start="2025-11-10", end="2025-11-12", hygiene="full"))
    backfill(
        db.settings(start="2025-11-10", end="2025-11-12", hygiene="full", events_table=f"{db.schema}.clean")
    )
    assert db.events().equals(stored(db, "clean"))


def test_bars_table_with_numeric_and_naive_timestamps(db: Db, nq_bars: pl.DataFrame) -> None:
    """The bars table may hold numeric prices (docs/contract.md#bars); a naive timestamp column is read as UTC."""
    db.execute(
        f"CREATE TABLE {db.schema}.legacy (sym text, t timestamp, o float8, h float8, l float8, c float8, v bigint)"
    )
    window = nq_bars.filter(pl.col("ts") < utc("2025-10-30")).cast(BAR_TABLE_SCHEMA)
    import adbc_driver_postgresql.dbapi as adbc

    renamed = window.rename(
        {"symbol": "sym", "ts": "t", "open": "o", "high": "h", "low": "l", "close": "c", "volume": "v"}
    )
    with adbc.connect(db.url) as conn, conn.cursor() as cur:
        cur.adbc_ingest(
            "legacy",
            renamed.with_columns(pl.col("t").dt.replace_time_zone(None)).to_arrow(),
            mode="append",
            db_schema_name=db.schema,
        )
        conn.commit()
    for col in "ohlc":
        db.execute(f"ALTER TABLE {db.schema}.legacy ALTER COLUMN {col} TYPE numeric(12, 2)")
    summary = backfill(
        db.settings(
            start="2025-10-28",
            end="2025-10-29",
            bars_table=f"{db.schema}.legacy",
            columns={"symbol": "sym", "ts": "t", "open": "o", "high": "h", "low": "l", "close": "c"},
        )
    )
    expected = reference_for(nq_bars, "2025-10-28", "2025-10-29", "basic")
    assert summary.triangles == expected.height > 0
    assert db.events().select(EVENT_COLUMNS).equals(expected.select(EVENT_COLUMNS).cast(db.events().schema))


def test_readers_and_slice_sizes_give_identical_tables(db: Db, legacy_bars: pl.DataFrame) -> None:
    """connectorx in slices of any size and the ADBC stream read the same bars in the same order."""
    db.load(legacy_bars)
    tables = {}
    for name, options in {
        "cx_default": {},
        "cx_one_day": {"slice_days": 1},
        "cx_three_days": {"slice_days": 3},
        "adbc": {"reader": "adbc"},
    }.items():
        summary = backfill(
            db.settings(
                start="2025-11-05",
                end="2025-11-20",
                hygiene="full",
                events_table=f"{db.schema}.{name}",
                **options,
            )
        )
        tables[name] = (db.events(table=name), summary.bars_processed, summary.bad_bars_by_rule)
    first = tables["cx_default"]
    assert first[0].height > 1000 and first[2]
    for frame, bars, bad in tables.values():
        assert frame.equals(first[0]) and bars == first[1] and bad == first[2]
