"""``triangles bars load`` of Databento DBN files into a real PostgreSQL, and continuous series.

Rules: ``docs/contract.md#vendor-files-and-continuous-futures`` and
``docs/contract.md#bar-files-triangles-bars-load``. Every file is written with databento-dbn's own
encoder (``tests/dbn_files.py``); the table is read back with SQL and compared with what the
records say, price for price; continuous series are compared with the plain-Python reference
(``tests/continuous_reference.py``). Bad files must exit 2 with one line and leave the bars table
as it was, row for row.
"""

from __future__ import annotations

import bz2
import gzip
import json
import os
import pty
import random
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import databento_dbn as dbn
import polars as pl
import pytest
import zstandard
from polars.testing import assert_frame_equal

from tests import continuous_reference as ref
from tests.dbn_files import (
    GLBX,
    Bar,
    Definition,
    Interval,
    Mapping,
    bar,
    continuous_file,
    definition_file,
    metadata,
    ns,
    parent_file,
    px,
    raw_symbol_file,
    utc,
    write,
    write_bars,
)
from tests.helpers import Db, run_cli
from triangles_polars.db import connect
from triangles_polars.loading import series_version

NQ = f"{GLBX}:NQ"
NQH5, NQM5, SPREAD = 11, 12, 21
NAMES = {NQH5: "NQH5", NQM5: "NQM5", SPREAD: "NQH5-NQM5"}
DEFINITIONS = [
    Definition(NQH5, "NQH5", "F", utc(2025, 3, 21, 13, 30)),
    Definition(NQM5, "NQM5", "F", utc(2025, 6, 20, 13, 30)),
    Definition(SPREAD, "NQH5-NQM5", "S", utc(2025, 3, 21, 13, 30)),
]
SESSIONS = [
    date(2025, 3, 3) + timedelta(days=i)
    for i in range(12)
    if (date(2025, 3, 3) + timedelta(days=i)).weekday() < 5
]
LAST_FRONT_SESSION = date(2025, 3, 11)  # NQH5 trades more up to here, NQM5 from the next day
ROLL_SESSION = date(2025, 3, 13)  # chosen from the volumes of the session before (03-12)
CARRY = 150.25  # NQM5 over NQH5: the roll's gap


# --------------------------------------------------------------------------- a market


def nq_market(minutes: int = 30, sessions: list[date] = SESSIONS) -> list[Bar]:
    """NQH5, NQM5 and their calendar spread: 1-minute bars 14:30-15:00 UTC of each session.

    The outrights move together (NQM5 = NQH5 + 150.25); the spread trades every third minute at
    about -150.25, a price no NQ outright hygiene threshold lets through. Volume moves from NQH5 to
    NQM5 after 03-11, so the front-month series rolls on 03-13.
    """
    rnd = random.Random(5)
    bars: list[Bar] = []
    price = 20000.0
    for day in sessions:
        front, back = (100, 10) if day <= LAST_FRONT_SESSION else (10, 100)
        for minute in range(minutes):
            ts = datetime(day.year, day.month, day.day, 14, 30, tzinfo=UTC) + timedelta(minutes=minute)
            o = price
            price += rnd.choice([-1.5, -0.75, -0.25, 0.25, 0.75, 1.5])
            hi, lo = max(o, price) + 0.5, min(o, price) - 0.5
            bars.append(bar(NQH5, ts, o, hi, lo, price, front + minute))
            bars.append(bar(NQM5, ts, o + CARRY, hi + CARRY, lo + CARRY, price + CARRY, back + minute))
            if minute % 3 == 0:
                bars.append(bar(SPREAD, ts, -150.25, -150.0, -150.5, -150.25, 3))
    return bars


def record_row(b: Bar, name: str) -> dict[str, Any]:
    """What one record says, in plain Python (``int64 / 1e9``, ``UNDEF_PRICE`` → None)."""

    def price(v: int) -> float | None:
        return None if v == dbn.UNDEF_PRICE else v / 1e9

    return {
        "symbol": name,
        "ts": b.ts,
        "open": price(b.open),
        "high": price(b.high),
        "low": price(b.low),
        "close": price(b.close),
        "volume": b.volume,
    }


def records(bars: list[Bar], names: dict[int, str] | None = None, symbol: str | None = None) -> pl.DataFrame:
    """The bars the records say, sorted as the table is read back."""
    return frame_of([record_row(b, symbol or f"{GLBX}:{(names or NAMES)[b.instrument_id]}") for b in bars])


def frame_of(rows: list[dict[str, Any]]) -> pl.DataFrame:
    schema = {
        "symbol": pl.String,
        "ts": pl.Datetime("us", "UTC"),
        "open": pl.Float64,
        "high": pl.Float64,
        "low": pl.Float64,
        "close": pl.Float64,
        "volume": pl.Int64,
    }
    return pl.DataFrame(rows, schema=schema, orient="row").sort("symbol", "ts")


def reference_series(bars: list[Bar], adjust: str) -> tuple[pl.DataFrame, list[ref.Roll]]:
    """The front-month series by the plain-Python reference."""
    defs = {d.instrument_id: d for d in DEFINITIONS}
    rows = [
        record_row(b, f"{GLBX}:{NAMES[b.instrument_id]}")
        | {
            "instrument_class": defs[b.instrument_id].instrument_class,
            "expiration": defs[b.instrument_id].expiration,
        }
        for b in bars
    ]
    series, rolls = ref.continuous(rows, "NQ", adjust)
    return frame_of(series), rolls


@pytest.fixture()
def parent(tmp_path: Path) -> tuple[Path, Path]:
    """A parent-symbology file (NQ.FUT) of the market, zstd, and its definitions."""
    return (
        parent_file(tmp_path / "nq.dbn.zst", nq_market()),
        definition_file(tmp_path / "nq_defs.dbn", DEFINITIONS),
    )


# --------------------------------------------------------------------------- helpers


def load(db: Db, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli("bars", "load", *args, "--bars-table", db.bars_table, "--database-url", db.url, env=env)


def rows(db: Db, table: str | None = None, where: str = "TRUE") -> pl.DataFrame:
    name = table or db.bars_table
    conn = connect(db.url)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT * FROM {name} WHERE {where} ORDER BY 1, 2")
            frame = pl.from_arrow(cur.fetch_arrow_table())
    finally:
        conn.close()
    assert isinstance(frame, pl.DataFrame)
    if "ts" in frame.columns:
        frame = frame.with_columns(pl.col("ts").dt.convert_time_zone("UTC").dt.cast_time_unit("us"))
    return frame


def exists(db: Db, table: str) -> bool:
    return bool(db.execute("SELECT to_regclass($1) IS NOT NULL", (f"{db.schema}.{table}",))[0][0])


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result


def rejected(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit 2, one line on stderr naming each of ``words``, nothing on stdout."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and result.stdout == ""
    message = result.stderr.strip()
    assert message and "\n" not in message, repr(result.stderr)
    for word in words:
        assert word.lower() in message.lower(), f"{word!r} not in {message!r}"
    return message


def version_of(db: Db, symbol: str = NQ) -> tuple[int, str] | None:
    got = db.execute(f"SELECT version, adjust FROM {db.schema}.bars_series WHERE symbol = $1", (symbol,))
    return (got[0][0], got[0][1]) if got else None


# --------------------------------------------------------------------------- bars, price for price


@pytest.mark.parametrize("name", ["nq.dbn", "nq.dbn.zst"])
def test_raw_symbol_file_loads_price_for_price(db: Db, tmp_path: Path, name: str) -> None:
    bars = nq_market()
    bars.append(Bar(NQH5, utc(2025, 3, 14, 16, 0), dbn.UNDEF_PRICE, px(20010), px(20000), px(20005.5), 1))
    bars.append(
        Bar(NQM5, utc(2025, 3, 14, 16, 0), 3702750000000, 3702750000000, 3702750000000, 3702750000000, 0)
    )
    path = raw_symbol_file(tmp_path / name, bars, NAMES)
    result = ok(load(db, str(path), "--json"))
    out = json.loads(result.stdout)
    assert out["bars_loaded"] == len(bars)
    assert out["symbols"] == [f"{GLBX}:NQH5", f"{GLBX}:NQH5-NQM5", f"{GLBX}:NQM5"]
    assert out["rolls"] == [] and out["series_version"] is None and out["warnings"] == []
    assert_frame_equal(rows(db), records(bars), check_exact=True)
    # int64 / 1e9 by division: 3702750000000 is exactly 3702.75; UNDEF_PRICE is null.
    last = rows(db, where="ts = '2025-03-14 16:00+00'")
    assert last["open"].to_list() == [None, 3702.75]
    assert result.stderr == ""  # no progress bar when stderr is not a terminal


def test_continuous_symbology_file(db: Db, tmp_path: Path) -> None:
    bars = [b for b in nq_market(minutes=5) if b.instrument_id != SPREAD]
    front = [b for b in bars if (b.instrument_id == NQH5) == (b.ts.date() < ROLL_SESSION)]
    intervals = [(SESSIONS[0], ROLL_SESSION, NQH5), (ROLL_SESSION, SESSIONS[-1] + timedelta(days=1), NQM5)]
    path = continuous_file(tmp_path / "nq_c0.dbn.zst", front, "NQ.c.0", intervals)
    out = json.loads(ok(load(db, str(path), "--json")).stdout)
    assert out["symbols"] == [f"{GLBX}:NQ.c.0"]
    assert_frame_equal(rows(db), records(front, symbol=f"{GLBX}:NQ.c.0"), check_exact=True)


def test_parent_file_with_definitions_stores_raw_symbols(db: Db, parent: tuple[Path, Path]) -> None:
    path, defs = parent
    ok(load(db, str(path), "--definitions", str(defs)))
    assert_frame_equal(rows(db), records(nq_market()), check_exact=True)
    spread = rows(db, where=f"symbol = '{GLBX}:NQH5-NQM5'")
    assert spread.height == 10 * 10 and spread["close"].max() == -150.25


def test_a_mapping_change_mid_file(db: Db, tmp_path: Path) -> None:
    # Instrument 7 is ESH5 until 03-04, then the exchange gives it to NQH5; ESH5 moves to 8.
    bars = [
        bar(7, utc(2025, 3, 3, 15), 5000, 5001, 4999, 5000.5, 1),
        bar(7, utc(2025, 3, 4, 15), 20000, 20001, 19999, 20000.5, 2),
        bar(8, utc(2025, 3, 4, 15), 5002, 5003, 5001, 5002.5, 3),
    ]
    mappings = [
        Mapping(
            "ESH5",
            [
                Interval(date(2025, 3, 3), date(2025, 3, 4), "7"),
                Interval(date(2025, 3, 4), date(2025, 3, 5), "8"),
            ],
        ),
        Mapping("NQH5", [Interval(date(2025, 3, 4), date(2025, 3, 5), "7")]),
    ]
    path = write_bars(tmp_path / "m.dbn", bars, stype_in="raw_symbol", mappings=mappings)
    ok(load(db, str(path)))
    got = {(r["symbol"], r["ts"]): r["close"] for r in rows(db).to_dicts()}
    assert got == {
        (f"{GLBX}:ESH5", utc(2025, 3, 3, 15)): 5000.5,
        (f"{GLBX}:NQH5", utc(2025, 3, 4, 15)): 20000.5,
        (f"{GLBX}:ESH5", utc(2025, 3, 4, 15)): 5002.5,
    }


def test_reload_is_idempotent(db: Db, parent: tuple[Path, Path]) -> None:
    path, defs = parent
    first = ok(load(db, str(path), "--definitions", str(defs), "--quiet"))
    assert first.stdout == "" and first.stderr == ""
    before = rows(db)
    again = json.loads(ok(load(db, str(path), "--definitions", str(defs), "--json")).stdout)
    assert again["bars_loaded"] == before.height
    assert_frame_equal(rows(db), before, check_exact=True)


def test_a_corrected_file_updates_the_stored_bars(db: Db, tmp_path: Path) -> None:
    bars = nq_market(minutes=5)
    ok(load(db, str(raw_symbol_file(tmp_path / "a.dbn", bars, NAMES))))
    fixed = [
        Bar(b.instrument_id, b.ts, b.open, b.high + px(1), b.low, b.close, b.volume + 1) for b in bars[:7]
    ]
    ok(load(db, str(raw_symbol_file(tmp_path / "fix.dbn", fixed, NAMES))))
    assert_frame_equal(rows(db), records(fixed + bars[7:]), check_exact=True)


def test_a_file_of_stored_and_new_symbols(db: Db, tmp_path: Path) -> None:
    """Batches that mix a symbol the table holds (upserted) with new ones (inserted straight)."""
    bars = nq_market(minutes=5)
    stale = [Bar(b.instrument_id, b.ts, b.open, b.high, b.low, b.close + px(0.25), 1) for b in bars]
    ok(
        load(
            db, str(raw_symbol_file(tmp_path / "h.dbn", [b for b in stale if b.instrument_id == NQH5], NAMES))
        )
    )
    ok(load(db, str(raw_symbol_file(tmp_path / "all.dbn", bars, NAMES))))
    assert_frame_equal(rows(db), records(bars), check_exact=True)


def test_several_files_and_a_quoted_glob(db: Db, tmp_path: Path) -> None:
    bars = nq_market(minutes=5)
    early = [b for b in bars if b.ts.date() < date(2025, 3, 10)]
    late = [b for b in bars if b.ts.date() >= date(2025, 3, 10)]
    raw_symbol_file(tmp_path / "nq_1.dbn.zst", early, NAMES)
    raw_symbol_file(tmp_path / "nq_2.dbn", late, NAMES)
    out = json.loads(ok(load(db, str(tmp_path / "nq_*.dbn*"), "--json")).stdout)
    assert [Path(f).name for f in out["files"]] == ["nq_1.dbn.zst", "nq_2.dbn"]
    assert_frame_equal(rows(db), records(bars), check_exact=True)


def test_overlapping_files_are_bad_input(db: Db, tmp_path: Path) -> None:
    bars = nq_market(minutes=5)
    a = raw_symbol_file(tmp_path / "a.dbn", bars[:60], NAMES)
    b = raw_symbol_file(tmp_path / "b.dbn", bars[50:], NAMES)
    rejected(load(db, str(a), str(b)), "(symbol, ts)", "more than once")
    assert not exists(db, "bars_1m")


# --------------------------------------------------------------------------- bad files


def good_bytes(tmp_path: Path) -> bytes:
    return raw_symbol_file(tmp_path / "good.dbn", nq_market(minutes=3), NAMES).read_bytes()


def trades(path: Path, good: bytes) -> None:
    trade = dbn.TradeMsg(
        1, 1, ns(utc(2025, 3, 12)), px(10), 1, dbn.Action.TRADE, dbn.Side.BID, 0, ns(utc(2025, 3, 12))
    )
    write(path, metadata(schema="trades", stype_in="raw_symbol"), [trade])


def mbo(path: Path, good: bytes) -> None:
    write(path, metadata(schema="mbo", stype_in="raw_symbol"), [])


def parent_without_definitions(path: Path, good: bytes) -> None:
    parent_file(path, nq_market(minutes=3))


BAD_FILES = {
    # case: (file name, how to write it, words of the message ("{name}": the file's name))
    "not DBN": (
        "bars.dbn",
        lambda p, g: p.write_text("symbol,ts,open\nNQ,2025-01-01,1\n"),
        ["not a DBN file", "{name}"],
    ),
    "truncated record": ("cut.dbn", lambda p, g: p.write_bytes(g[:-10]), ["truncated", "{name}"]),
    "truncated zstd": (
        "cut.dbn.zst",
        lambda p, g: p.write_bytes(zstandard.ZstdCompressor().compress(g)[:-20]),
        ["truncated", "{name}"],
    ),
    "mbo file": ("book.dbn", mbo, ["schema 'mbo'", "not OHLCV"]),
    "trades file": ("trades.dbn", trades, ["schema 'trades'", "not OHLCV"]),
    "gzip named zst": (
        "nq.dbn.zst",
        lambda p, g: p.write_bytes(gzip.compress(g)),
        ["compressed with gzip", "{name}"],
    ),
    "bzip2": ("nq.dbn.bz2", lambda p, g: p.write_bytes(bz2.compress(g)), ["compressed with bzip2", "{name}"]),
    "0-byte file": ("empty.dbn", lambda p, g: p.write_bytes(b""), ["empty", "0 bytes", "{name}"]),
    "parent without definitions": (
        "nq.dbn",
        parent_without_definitions,
        ["parent symbology", "--definitions"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_exit_2_and_leave_the_table_as_it_was(db: Db, tmp_path: Path, case: str) -> None:
    name, make, words = BAD_FILES[case]
    good = good_bytes(tmp_path)
    kept = raw_symbol_file(tmp_path / "kept.dbn", nq_market(minutes=2, sessions=[date(2025, 2, 3)]), NAMES)
    ok(load(db, str(kept)))
    before = rows(db)
    path = tmp_path / name
    make(path, good)
    rejected(load(db, str(path)), *(w.replace("{name}", name) for w in words))
    # A good file first: staged in full, then the bad one fails and the transaction drops it all.
    rejected(load(db, str(tmp_path / "good.dbn"), str(path)), *(w.replace("{name}", name) for w in words))
    assert_frame_equal(rows(db), before, check_exact=True)


def test_a_wrong_definitions_file_and_wrong_options(
    db: Db, parent: tuple[Path, Path], tmp_path: Path
) -> None:
    path, defs = parent
    rejected(load(db, str(path), "--definitions", str(path)), "not instrument definitions")
    rejected(load(db, str(path), "--definitions", str(defs), "--adjust", "difference"), "--continuous")
    rejected(load(db, str(path), "--continuous", "NQ"), "--definitions")
    rejected(
        load(db, str(path), "--definitions", str(defs), "--continuous", "NQ", "--symbol", "X"), "--symbol"
    )
    rejected(
        load(db, str(path), "--definitions", str(defs), "--continuous", "ES"), "no outright future of root ES"
    )
    rejected(
        load(db, str(path), "--definitions", str(defs), "--adjust", "ratio", "--continuous", "NQ"), "ratio"
    )
    csv = tmp_path / "x.csv"
    csv.write_text("symbol,ts,open,high,low,close\nX,2025-01-01T00:00:00Z,1,1,1,1\n")
    rejected(load(db, str(csv), "--definitions", str(defs), "--continuous", "NQ"), "not a DBN file")
    rejected(load(db, str(path), "--definitions", str(defs), "--columns", "ts=time"), "--columns")
    # One name for a file of contracts and spreads is refused: they are different series.
    rejected(load(db, str(path), "--definitions", str(defs), "--symbol", NQ), "several series")
    assert not exists(db, "bars_1m")


def test_metadata_only_file_loads_nothing_with_a_warning(db: Db, tmp_path: Path) -> None:
    path = write(tmp_path / "empty.dbn.zst", metadata(schema="ohlcv-1m", stype_in="raw_symbol"), [])
    result = ok(load(db, str(path), "--json"))
    out = json.loads(result.stdout)
    assert out["bars_loaded"] == 0 and out["symbols"] == []
    assert len(out["warnings"]) == 1 and "empty.dbn.zst" in out["warnings"][0]
    assert "warning" in result.stderr and "metadata only" in result.stderr
    assert not exists(db, "bars_1m")


# --------------------------------------------------------------------------- continuous series


def test_continuous_series_and_rolls(db: Db, parent: tuple[Path, Path]) -> None:
    path, defs = parent
    out = json.loads(
        ok(load(db, str(path), "--definitions", str(defs), "--continuous", "NQ", "--json")).stdout
    )
    expected, rolls = reference_series(nq_market(), "none")
    assert out["symbols"] == [NQ] and out["bars_loaded"] == expected.height == 10 * 30
    assert_frame_equal(rows(db), expected, check_exact=True)
    assert [r.session for r in rolls] == [ROLL_SESSION]
    assert out["rolls"] == [
        {
            "symbol": NQ,
            "session": ROLL_SESSION.isoformat(),
            "from_contract": f"{GLBX}:NQH5",
            "to_contract": f"{GLBX}:NQM5",
            "gap": CARRY,
        }
    ]
    stored = rows(db, f"{db.schema}.bars_rolls")
    assert stored.to_dicts() == [
        {
            "symbol": NQ,
            "session": ROLL_SESSION,
            "from_contract": f"{GLBX}:NQH5",
            "to_contract": f"{GLBX}:NQM5",
            "gap": CARRY,
        }
    ]
    assert out["series_version"] == 1 and version_of(db) == (1, "none")
    human = ok(load(db, str(path), "--definitions", str(defs), "--continuous", "NQ")).stdout
    assert f"{ROLL_SESSION}  {GLBX}:NQH5 → {GLBX}:NQM5  gap +150.25" in human
    assert "version 1, adjust none" in human  # a traded-price reload keeps the version
    assert_frame_equal(rows(db), expected, check_exact=True)


def test_adjust_difference_replaces_the_series_and_bumps_its_version(
    db: Db, parent: tuple[Path, Path]
) -> None:
    path, defs = parent
    args = (str(path), "--definitions", str(defs), "--continuous", "GLBX.MDP3:NQ")
    out = json.loads(ok(load(db, *args, "--adjust", "difference", "--json")).stdout)
    adjusted, _ = reference_series(nq_market(), "difference")
    assert_frame_equal(rows(db), adjusted, check_exact=True)
    assert (
        out["series_version"] == 1 and out["adjust"] == "difference" and version_of(db) == (1, "difference")
    )
    # Every bar before the roll is shifted up by the gap; from the roll on, traded prices.
    traded, _ = reference_series(nq_market(), "none")
    shift = adjusted.join(traded, on=["symbol", "ts"]).select(
        pl.col("ts"), (pl.col("close") - pl.col("close_right")).alias("shift")
    )
    before_roll = shift.filter(pl.col("ts") < datetime(2025, 3, 13, tzinfo=UTC))["shift"].unique().to_list()
    assert before_roll == [CARRY]
    assert shift.filter(pl.col("ts") >= datetime(2025, 3, 13, tzinfo=UTC))["shift"].unique().to_list() == [
        0.0
    ]

    # A stray bar of the series (not in the file) goes: the series is replaced whole.
    db.execute(f"INSERT INTO {db.bars_table} VALUES ($1, '2025-01-02 15:00+00', 1, 2, 0.5, 1.5, 9)", (NQ,))
    again = json.loads(ok(load(db, *args, "--adjust", "difference", "--json")).stdout)
    assert again["series_version"] == 2 and again["bars_replaced"] == adjusted.height + 1
    assert_frame_equal(rows(db), adjusted, check_exact=True)
    # Back to traded prices: replaced whole again (the past was adjusted), a new version.
    ok(load(db, *args))
    assert version_of(db) == (3, "none")
    assert_frame_equal(rows(db), traded, check_exact=True)
    ok(load(db, *args))
    assert version_of(db) == (3, "none")

    conn = connect(db.url)
    try:
        with conn.cursor() as cur:
            assert series_version(cur, db.bars_table, NQ) == 3
            assert series_version(cur, db.bars_table, f"{GLBX}:ES") == 0
            assert series_version(cur, "public.no_such_bars", NQ) == 0
    finally:
        conn.close()


def test_a_traded_price_series_extends_and_keeps_its_older_rolls(db: Db, tmp_path: Path) -> None:
    defs = definition_file(tmp_path / "defs.dbn", DEFINITIONS)
    bars = nq_market(minutes=5)
    whole = parent_file(tmp_path / "whole.dbn", bars)
    tail = parent_file(tmp_path / "tail.dbn", [b for b in bars if b.ts.date() >= ROLL_SESSION])
    ok(load(db, str(whole), "--definitions", str(defs), "--continuous", "NQ"))
    expected = rows(db)
    out = json.loads(
        ok(load(db, str(tail), "--definitions", str(defs), "--continuous", "NQ", "--json")).stdout
    )
    assert out["rolls"] == [] and out["series_version"] == 1
    assert_frame_equal(rows(db), expected, check_exact=True)
    assert rows(db, f"{db.schema}.bars_rolls")["session"].to_list() == [ROLL_SESSION]


def test_a_continuous_series_has_no_spread_prices_for_hygiene(db: Db, parent: tuple[Path, Path]) -> None:
    """A spread's prices (about -150) would trip the price rule; the front-month series has none.

    With a floor of 1000 for both runs: the backfill of GLBX.MDP3:NQ built with --continuous flags
    no bar PRICE_LT_…; the same parent file loaded as it comes stores the spread as its own
    symbol, and every one of its bars is flagged (so the threshold does bite).
    """
    path, defs = parent
    window = ("2025-03-04", "2025-03-14", "--events-table", db.events_table, "--database-url", db.url)
    for adjust in ("none", "difference"):
        ok(load(db, str(path), "--definitions", str(defs), "--continuous", "NQ", "--adjust", adjust))
        result = ok(
            run_cli("backfill", NQ, *window, "--bars-table", db.bars_table, "--min-price", "1000", "--json")
        )
        summary = json.loads(result.stdout)
        assert summary["bars_processed"] > 0
        assert not [code for code in summary["bad_bars_by_rule"] if code.startswith("PRICE_LT")], summary
        assert summary["bad_bars_skipped"] == 0

    raw = f"{db.schema}.raw_bars"
    ok(
        run_cli(
            "bars",
            "load",
            str(path),
            "--definitions",
            str(defs),
            "--bars-table",
            raw,
            "--database-url",
            db.url,
        )
    )
    spread = f"{GLBX}:NQH5-NQM5"
    result = run_cli("backfill", spread, *window, "--bars-table", raw, "--min-price", "1000", "--json")
    rejected(result, "PRICE_LT_1000 100", spread)


def test_progress_bar_on_a_terminal(db: Db, parent: tuple[Path, Path]) -> None:
    path, defs = parent
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "120"}
    args = ["bars", "load", str(path), "--definitions", str(defs), "--continuous", "NQ"]
    args += ["--bars-table", db.bars_table, "--database-url", db.url]
    with subprocess.Popen(
        [sys.executable, "-m", "triangles_polars.cli", *args],
        stdout=subprocess.PIPE,
        stderr=slave,
        env=env,
        text=True,
    ) as proc:
        os.close(slave)
        drawn = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            drawn += chunk
        stdout = proc.stdout.read() if proc.stdout else ""
    os.close(master)
    assert proc.returncode == 0, drawn
    assert b"nq.dbn.zst: pass 1" in drawn and b"MB" in drawn
    assert "loaded 300 bars" in stdout
    quiet = ok(load(db, str(path), "--definitions", str(defs), "--continuous", "NQ", "--quiet"))
    assert quiet.stdout == "" and quiet.stderr == ""


def test_the_load_benchmark_runs(db: Db) -> None:
    """``python -m benchmarks.load --quick``: every format loads the same rows as the floor copies
    (timings are recorded by the benchmark, never asserted)."""
    pytest.importorskip("psycopg2", reason="the benchmarks need the bench extra (psycopg2-binary)")
    from benchmarks.load import main

    results = main(["--quick", "--database-url", db.url, "--schema", db.schema, "--no-readme"])
    size = results["sizes"][0]
    assert set(size["loads"]) == {"dbn", "parquet", "csv"}
    assert {run["rows"] for run in size["loads"].values()} == {size["floor"]["rows"]}
    assert size["reload_dbn"]["rows"] == size["floor"]["rows"]
    assert results["memory"]["ratio"] > 0
