"""The front-month continuous series against the plain-Python reference, and its properties.

No database: bars are frames, or real DBN files written with databento-dbn's encoder.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests import continuous_reference as ref
from tests.dbn_files import Definition, bar, definition_file, parent_file, utc
from triangles_polars.continuous import build_continuous, continuous_frames, session_date
from triangles_polars.dbn import open_dbn
from triangles_polars.errors import BadInput

NQ = "GLBX.MDP3:NQ"
# Contracts of the scenario: symbol → (instrument_id, class, expiration, price level).
CONTRACTS = {
    "GLBX.MDP3:NQH5": (11, "F", utc(2025, 3, 21, 13, 30), 20000.0),
    "GLBX.MDP3:NQM5": (12, "F", utc(2025, 6, 20, 13, 30), 20100.0),
    "GLBX.MDP3:NQU5": (13, "F", utc(2025, 9, 19, 13, 30), 20200.0),
    "GLBX.MDP3:NQZ5": (14, "F", None, 20300.0),  # no expiration: never blocks, never blocked
    "GLBX.MDP3:NQH5-NQM5": (21, "S", utc(2025, 3, 21, 13, 30), 100.0),
    "GLBX.MDP3:ESH5": (31, "F", utc(2025, 3, 21, 13, 30), 5800.0),
}
CHICAGO_SLOTS = (  # bar open times in Chicago wall-clock, relative to the session day D
    (-1, time(17, 0)),  # the first minute of the session (the evening before)
    (-1, time(20, 30)),
    (0, time(8, 30)),
    (0, time(16, 59)),  # the last minute of the session
)


def slot_ts(session: date, slot: int) -> datetime:
    days, clock = CHICAGO_SLOTS[slot]
    local = datetime.combine(session + timedelta(days=days), clock, tzinfo=ref.CHICAGO)
    return local.astimezone(UTC)


def frame_of(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={
            "symbol": pl.String,
            "ts": pl.Datetime("us", "UTC"),
            "open": pl.Float64,
            "high": pl.Float64,
            "low": pl.Float64,
            "close": pl.Float64,
            "volume": pl.Int64,
            "instrument_class": pl.String,
            "expiration": pl.Datetime("us", "UTC"),
        },
    )


def make_bar(symbol: str, ts: datetime, close: float, volume: int) -> dict[str, Any]:
    _, cls, expiration, _ = CONTRACTS[symbol]
    return {
        "symbol": symbol,
        "ts": ts,
        "open": close - 0.25,
        "high": close + 0.5,
        "low": close - 0.75,
        "close": close,
        "volume": volume,
        "instrument_class": cls,
        "expiration": expiration,
    }


def series_rows(frame: pl.DataFrame) -> list[dict[str, Any]]:
    return frame.select("symbol", "ts", "open", "high", "low", "close", "volume").to_dicts()


def rolls_rows(rolls: pl.DataFrame) -> list[tuple[Any, ...]]:
    return [(r["session"], r["from_contract"], r["to_contract"], r["gap"]) for r in rolls.to_dicts()]


def ref_rolls(rolls: list[ref.Roll]) -> list[tuple[Any, ...]]:
    return [(r.session, r.from_contract, r.to_contract, r.gap) for r in rolls]


def has_nq_outright(rows: list[dict[str, Any]]) -> bool:
    return any(ref.is_outright_of(r, "NQ") for r in rows)


def assert_without_nq_outright(rows: list[dict[str, Any]], adjust: str = "none", bars: Any = None) -> None:
    """Bars without an outright of the root: none at all give an empty series; rows of other
    instruments only are a wrong root, said so (``BadInput``), not an empty series."""
    bars = frame_of(rows) if bars is None else bars
    if not rows:
        series, rolls = continuous_frames(bars, NQ, adjust=adjust)
        assert series.height == 0 and rolls.height == 0
        return
    with pytest.raises(BadInput, match="no outright future of root NQ"):
        build_continuous(bars, NQ, adjust=adjust)


def check_against_reference(
    rows: list[dict[str, Any]], adjust: str, batch: int | None = None
) -> pl.DataFrame:
    frame = frame_of(rows)
    if batch:
        shuffled = frame.sample(fraction=1.0, shuffle=True, seed=7)
        parts = [shuffled.slice(i, batch) for i in range(0, shuffled.height, batch)]
        source: Any = lambda: iter(parts)  # noqa: E731
    else:
        source = frame
    if rows and not has_nq_outright(rows):
        assert_without_nq_outright(rows, adjust, source)
        return frame_of([])
    series, rolls = continuous_frames(source, NQ, adjust=adjust)
    want_series, want_rolls = ref.continuous(rows, "NQ", adjust)
    assert series_rows(series) == want_series
    assert rolls_rows(rolls) == ref_rolls(want_rolls)
    assert rolls["symbol"].to_list() == [NQ] * rolls.height
    return series


# --------------------------------------------------------------------------- scenario


def scenario() -> list[dict[str, Any]]:
    """NQH5 → NQM5 around the March 2025 roll, across the DST change, with a holiday and a tie.

    Sessions (CME days): Thu 2025-03-06, Fri 03-07, Mon 03-10 (DST began Sun 03-09), Tue 03-11,
    (no session Wed 03-12: a holiday), Thu 03-13, Fri 03-14, Mon 03-17.
    """
    rows = []
    volumes = {  # session → {contract: volume per bar}
        date(2025, 3, 6): {"NQH5": 50, "NQM5": 5, "NQH5-NQM5": 900, "ESH5": 999},
        date(2025, 3, 7): {"NQH5": 40, "NQM5": 20, "NQH5-NQM5": 900, "ESH5": 999},
        date(2025, 3, 10): {"NQH5": 30, "NQM5": 30, "NQH5-NQM5": 900},  # a tie: keep NQH5
        date(2025, 3, 11): {"NQH5": 20, "NQM5": 60, "NQH5-NQM5": 900},  # NQM5 leads → roll on 03-13
        date(2025, 3, 13): {"NQH5": 10, "NQM5": 80, "NQU5": 1},
        date(2025, 3, 14): {"NQH5": 90, "NQM5": 70, "NQU5": 1},  # NQH5 leads again…
        date(2025, 3, 17): {"NQH5": 5, "NQM5": 50},  # …but the series never rolls back to it
    }
    for n, (session, book) in enumerate(sorted(volumes.items())):
        for sym, vol in book.items():
            symbol = f"GLBX.MDP3:{sym}"
            level = CONTRACTS[symbol][3]
            for slot in range(len(CHICAGO_SLOTS)):
                if sym == "NQM5" and slot == 3 and session == date(2025, 3, 11):
                    continue  # the last minute before the roll has no NQM5 bar: use 8:30
                close = level + n + slot * 0.25 + (0.5 if sym == "NQM5" else 0.0)
                rows.append(make_bar(symbol, slot_ts(session, slot), close, vol))
    return rows


def test_scenario_equals_reference_and_rolls_as_expected() -> None:
    rows = scenario()
    series = check_against_reference(rows, "none")
    for batch in (1, 5):  # one row per batch: every boundary between two rows is a batch boundary
        check_against_reference(rows, "none", batch)
    _, rolls = continuous_frames(frame_of(rows), NQ)
    # The tie on 03-10 keeps NQH5; NQM5 leads on 03-11 so the roll is at the next session (03-13,
    # after the holiday); NQH5's lead on 03-14 never rolls back to an earlier expiration.
    # The gap is taken at 08:30 on 03-11 (NQM5 has no 16:59 bar): 20104.0 − 20003.5.
    assert rolls_rows(rolls) == [(date(2025, 3, 13), "GLBX.MDP3:NQH5", "GLBX.MDP3:NQM5", 100.5)]
    assert set(series["symbol"]) == {NQ}
    assert series.height == 7 * len(CHICAGO_SLOTS)  # one contract per session, every slot


def test_scenario_gap_uses_last_common_minute() -> None:
    rows = scenario()
    # Make the two contracts differ at 16:59 (only NQH5 trades then) and at 08:30 (both trade):
    # the gap must come from 08:30 of 03-11, the last minute in which both have a bar.
    for r in rows:
        if r["symbol"].endswith("NQM5") and r["ts"] == slot_ts(date(2025, 3, 11), 2):
            r["close"] += 7.0
    _, rolls = continuous_frames(frame_of(rows), NQ)
    assert rolls["gap"].to_list() == [107.5]
    check_against_reference(rows, "difference")
    check_against_reference(rows, "difference", batch=1)


def test_sessions_follow_chicago_17h_across_dst() -> None:
    # 17:00 Chicago is 23:00 UTC in winter and 22:00 UTC in summer; 16:59 is the day's last minute.
    ts = [utc(2025, 3, 6, 22, 59), utc(2025, 3, 6, 23, 0), utc(2025, 3, 10, 21, 59), utc(2025, 3, 10, 22, 0)]
    got = pl.DataFrame({"ts": ts}, schema={"ts": pl.Datetime("us", "UTC")}).select(session_date())
    assert got.to_series().to_list() == [
        date(2025, 3, 6),
        date(2025, 3, 7),
        date(2025, 3, 10),
        date(2025, 3, 11),
    ]
    assert [ref.session_of(t) for t in ts] == got.to_series().to_list()


def test_difference_back_adjusts_every_earlier_bar() -> None:
    rows = scenario()
    plain, _ = continuous_frames(frame_of(rows), NQ, adjust="none")
    adjusted, rolls = continuous_frames(frame_of(rows), NQ, adjust="difference")
    gap = rolls["gap"].item()
    roll_ts = slot_ts(date(2025, 3, 13), 0)
    diff = adjusted.with_columns(
        (adjusted["close"] - plain["close"]).alias("d"), (adjusted["volume"] == plain["volume"]).alias("v")
    )
    assert diff.filter(pl.col("ts") < roll_ts)["d"].unique().to_list() == [gap]
    assert diff.filter(pl.col("ts") >= roll_ts)["d"].unique().to_list() == [0.0]
    assert diff["v"].all()


def test_tie_keeps_current_contract() -> None:
    s1, s2, s3 = date(2025, 3, 6), date(2025, 3, 7), date(2025, 3, 10)
    rows = [
        make_bar("GLBX.MDP3:NQH5", slot_ts(s1, 2), 20000, 10),
        make_bar("GLBX.MDP3:NQM5", slot_ts(s1, 2), 20100, 3),
        make_bar("GLBX.MDP3:NQH5", slot_ts(s2, 2), 20001, 7),  # tie 7 = 7 in session 2
        make_bar("GLBX.MDP3:NQM5", slot_ts(s2, 2), 20101, 7),
        make_bar("GLBX.MDP3:NQH5", slot_ts(s3, 2), 20002, 1),
        make_bar("GLBX.MDP3:NQM5", slot_ts(s3, 2), 20102, 1),
    ]
    series = build_continuous(frame_of(rows), NQ)
    assert series.schedule["contract"].to_list() == ["GLBX.MDP3:NQH5"] * 3
    assert series.rolls.height == 0
    check_against_reference(rows, "none")


def test_tie_keeps_current_even_against_the_tie_break() -> None:
    # The current contract has no expiration, so the tie-break (earliest expiration) would pick
    # NQH5: the tie must still keep NQZ5.
    s1, s2, s3 = date(2025, 3, 6), date(2025, 3, 7), date(2025, 3, 10)
    rows = [
        make_bar("GLBX.MDP3:NQZ5", slot_ts(s1, 2), 20300, 10),
        make_bar("GLBX.MDP3:NQH5", slot_ts(s1, 2), 20000, 3),
        make_bar("GLBX.MDP3:NQZ5", slot_ts(s2, 2), 20301, 7),
        make_bar("GLBX.MDP3:NQH5", slot_ts(s2, 2), 20001, 7),
        make_bar("GLBX.MDP3:NQZ5", slot_ts(s3, 2), 20302, 1),
        make_bar("GLBX.MDP3:NQH5", slot_ts(s3, 2), 20002, 1),
    ]
    series = build_continuous(frame_of(rows), NQ)
    assert series.schedule["contract"].to_list() == ["GLBX.MDP3:NQZ5"] * 3
    check_against_reference(rows, "none")


def test_first_session_tie_goes_to_earliest_expiration() -> None:
    s1 = date(2025, 3, 6)
    rows = [
        make_bar("GLBX.MDP3:NQM5", slot_ts(s1, 2), 20100, 5),
        make_bar("GLBX.MDP3:NQH5", slot_ts(s1, 2), 20000, 5),
    ]
    assert build_continuous(frame_of(rows), NQ).schedule["contract"].to_list() == ["GLBX.MDP3:NQH5"]


def test_no_common_minute_gives_null_gap_and_no_shift() -> None:
    s1, s2, s3 = date(2025, 3, 6), date(2025, 3, 7), date(2025, 3, 10)
    rows = [
        make_bar("GLBX.MDP3:NQH5", slot_ts(s1, 1), 20000, 10),
        make_bar("GLBX.MDP3:NQH5", slot_ts(s2, 1), 20001, 1),
        make_bar("GLBX.MDP3:NQM5", slot_ts(s2, 2), 20101, 9),  # never in the same minute as NQH5
        make_bar("GLBX.MDP3:NQM5", slot_ts(s3, 2), 20102, 9),
    ]
    series, rolls = continuous_frames(frame_of(rows), NQ, adjust="difference")
    assert rolls_rows(rolls) == [(s3, "GLBX.MDP3:NQH5", "GLBX.MDP3:NQM5", None)]
    assert series["close"].to_list() == [20000, 20001, 20102]
    check_against_reference(rows, "difference")


def test_common_minute_older_than_the_search_window() -> None:
    # Both contracts trade in many sessions before the roll, but in the same minute only long
    # before it: the second gap pass must find it.
    sessions = [
        date(2025, 2, 3) + timedelta(days=i)
        for i in range(0, 12)
        if (date(2025, 2, 3) + timedelta(days=i)).weekday() < 5
    ]
    rows = []
    for n, s in enumerate(sessions):
        rows.append(make_bar("GLBX.MDP3:NQH5", slot_ts(s, 1), 20000 + n, 50))
        rows.append(make_bar("GLBX.MDP3:NQM5", slot_ts(s, 2), 20100 + n, 10 if n < len(sessions) - 2 else 90))
    rows.append(make_bar("GLBX.MDP3:NQM5", slot_ts(sessions[0], 1), 20150, 1))
    _, rolls = continuous_frames(frame_of(rows), NQ)
    assert rolls["gap"].to_list() == [150.0]
    check_against_reference(rows, "difference")


def bars_of(*specs: tuple[str, date, int, float, int]) -> list[dict[str, Any]]:
    """Bars from ``(contract, session, slot, close, volume)``."""
    return [make_bar(f"GLBX.MDP3:{sym}", slot_ts(s, slot), close, vol) for sym, s, slot, close, vol in specs]


def comes_back_rows(z_first_volume: int, z_on_03_10: bool) -> list[dict[str, Any]]:
    """NQZ5 has no expiration, so it never blocks a roll and is never blocked: the series goes
    U5 (or Z5) → Z5 → M5 → U5 → Z5, most contracts without a bar in the session they are chosen
    for, and the last roll's common minute (03-07) lies before the earlier rolls.
    """
    d = date(2025, 3, 1)
    return bars_of(
        ("NQU5", d.replace(day=7), 1, 20200.0, 0),
        ("NQZ5", d.replace(day=7), 1, 20300.0, z_first_volume),
        *([("NQZ5", d.replace(day=10), 3, 20300.0, 1)] if z_on_03_10 else []),
        ("NQM5", d.replace(day=11), 1, 20100.0, 1),
        ("NQU5", d.replace(day=12), 3, 20200.0, 1),
        ("NQZ5", d.replace(day=13), 3, 20300.0, 1),
        ("NQZ5", d.replace(day=14), 3, 20300.0, 0),
    )


def test_difference_when_the_series_comes_back_to_a_contract() -> None:
    rows = comes_back_rows(z_first_volume=0, z_on_03_10=True)
    built = build_continuous(frame_of(rows), NQ, adjust="difference")
    u, z, m = "GLBX.MDP3:NQU5", "GLBX.MDP3:NQZ5", "GLBX.MDP3:NQM5"
    assert built.schedule["contract"].to_list() == [u, u, z, m, u, z]
    # Both U5 → Z5 gaps are taken at 03-07 20:30 (the only minute U5 and Z5 share), the last one
    # across the three rolls since; Z5 ↔ M5 and M5 ↔ U5 share no minute: null, shifting nothing.
    assert rolls_rows(built.rolls) == [
        (date(2025, 3, 11), u, z, 100.0),
        (date(2025, 3, 12), z, m, None),
        (date(2025, 3, 13), m, u, None),
        (date(2025, 3, 14), u, z, 100.0),
    ]
    # U5's 03-07 bar is before all four rolls: shifted by both gaps (the rule, read literally).
    assert built.collect()["close"].to_list() == [20400.0, 20300.0]
    check_against_reference(rows, "difference")
    # Two stretches of Z5 (03-07 and 03-14), three rolls apart: shifted by 100 and by 0.
    rows = comes_back_rows(z_first_volume=1, z_on_03_10=False)
    built = build_continuous(frame_of(rows), NQ, adjust="difference")
    assert built.schedule["contract"].to_list() == [z, z, m, u, z]
    assert built.collect()["close"].to_list() == [20400.0, 20300.0]
    check_against_reference(rows, "difference")


def test_spreads_and_other_roots_are_never_used() -> None:
    rows = scenario()
    series = build_continuous(frame_of(rows), NQ)
    assert set(series.schedule["contract"]) <= {"GLBX.MDP3:NQH5", "GLBX.MDP3:NQM5", "GLBX.MDP3:NQU5"}
    assert series.collect()["close"].min() >= 20000  # spread (~100) and ES (~5800) prices never appear


def test_series_name_from_root_and_dataset() -> None:
    rows = scenario()
    assert build_continuous(frame_of(rows), "NQ").symbol == NQ
    assert build_continuous(frame_of(rows), "GLBX.MDP3:NQ").symbol == NQ


def test_empty_input_gives_empty_series() -> None:
    series, rolls = continuous_frames(frame_of([]), NQ)
    assert series.height == 0 and rolls.height == 0
    assert series.columns == ["symbol", "ts", "open", "high", "low", "close", "volume"]


def test_bad_inputs() -> None:
    rows = scenario()
    with pytest.raises(BadInput, match="no outright future of root YM"):
        build_continuous(frame_of(rows), "YM")
    with pytest.raises(BadInput, match="instrument_class"):
        build_continuous(frame_of(rows).drop("instrument_class"), "NQ")
    with pytest.raises(BadInput, match="definitions"):
        build_continuous(frame_of(rows).with_columns(pl.lit(None, pl.String).alias("instrument_class")), "NQ")
    with pytest.raises(BadInput, match="unknown adjustment"):
        build_continuous(frame_of(rows), "NQ", adjust="ratio")


def test_from_dbn_parent_file_with_definitions(tmp_path: Path) -> None:
    rows = scenario()
    records = [
        bar(CONTRACTS[r["symbol"]][0], r["ts"], r["open"], r["high"], r["low"], r["close"], r["volume"])
        for r in rows
    ]
    defs = [
        Definition(iid, sym.split(":")[1], cls, exp, ts_recv=utc(2025, 3, 1))
        for sym, (iid, cls, exp, _) in CONTRACTS.items()
    ]
    parent = parent_file(tmp_path / "nq.dbn.zst", records)
    definitions = definition_file(tmp_path / "nq_defs.dbn", defs)
    bars = open_dbn(parent, definitions=definitions, extra_columns=True, batch_rows=7)
    calls = []

    def batches() -> Any:
        calls.append(1)
        return bars.batches()

    series = build_continuous(batches, "NQ", adjust="difference")
    got = series.collect()
    want, want_rolls = ref.continuous(rows, "NQ", "difference")
    assert series_rows(got) == want
    assert rolls_rows(series.rolls) == ref_rolls(want_rolls)
    assert len(calls) == 3  # volumes, gaps, bars: three reads, no bars held between them


# --------------------------------------------------------------------------- properties

SYMS = list(CONTRACTS)
OUTRIGHTS = {"GLBX.MDP3:NQH5", "GLBX.MDP3:NQM5", "GLBX.MDP3:NQU5", "GLBX.MDP3:NQZ5"}


def zigzag(code: int) -> int:
    """0, 1, −1, 2, −2, … for codes 0, 1, 2, 3, 4, … (so shrinking a code towards 0 shrinks the value)."""
    return (code + 1) // 2 * (1 if code % 2 else -1)


@st.composite
def markets(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Random sessions (weekdays, some missing, across the DST change), contracts and volumes.

    Each possible bar (session, contract, slot) is two bytes of one byte string: whether it is
    there (three times in four) and its volume 0–4, then its price in ticks (−40..40) from the
    contract's level.
    Hypothesis draws a byte string as one choice, so a market costs one draw, not ~700; all-zero
    bytes are the empty market, and shrinking the bytes drops bars and flattens prices and volumes.
    """
    first = date(2025, 3, 3)
    days = [first + timedelta(days=i) for i in range(14) if (first + timedelta(days=i)).weekday() < 5]
    present = draw(st.lists(st.booleans(), min_size=len(days), max_size=len(days)))
    # One byte string of a fixed size (every possible bar of every day): hypothesis fills a byte
    # string whose size changed from one example to the next mostly with zeros.
    per_day = len(SYMS) * len(CHICAGO_SLOTS) * 2
    data = draw(st.binary(min_size=len(days) * per_day, max_size=len(days) * per_day))
    chosen = [i for i, keep in enumerate(present) if keep] or [0]
    rows = []
    for day in chosen:
        at = day * per_day
        for sym in SYMS:
            for slot in range(len(CHICAGO_SLOTS)):
                there_and_volume, tick_code = data[at], data[at + 1]
                at += 2
                if there_and_volume % 4 == 0:  # a bar in three of four slots
                    continue
                volume = (there_and_volume >> 2) % 5
                ticks = zigzag(tick_code % 81)
                rows.append(make_bar(sym, slot_ts(days[day], slot), CONTRACTS[sym][3] + ticks * 0.25, volume))
    return rows


FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
# Batches of shuffled rows, as few as 3 rows each (one row per batch, the most expensive case, is
# checked on the scenarios above).
@given(markets(), st.sampled_from(["none", "difference"]), st.sampled_from([None, 3, 5, 23]))
def test_property_equals_reference(rows: list[dict[str, Any]], adjust: str, batch: int | None) -> None:
    check_against_reference(rows, adjust, batch)


@FAST
@given(markets(), st.integers(1, 8), st.randoms(use_true_random=False))
def test_property_no_look_ahead(rows: list[dict[str, Any]], cut: int, rnd: random.Random) -> None:
    # Sessions of the root's outrights only (ES and spreads make no session), and never the first
    # one: the first session is chosen from its own volumes, by the rule.
    sessions = sorted({ref.session_of(r["ts"]) for r in rows if ref.is_outright_of(r, "NQ")})
    if len(sessions) < 2:
        return
    later = sessions[min(cut, len(sessions) - 1)]
    changed = [dict(r, volume=rnd.randint(0, 9)) if ref.session_of(r["ts"]) >= later else r for r in rows]
    before, rolls_before = continuous_frames(frame_of(rows), NQ)
    after, rolls_after = continuous_frames(frame_of(changed), NQ)
    upto = pl.col("ts").pipe(session_date) <= later
    keep = ["symbol", "ts", "open", "high", "low", "close"]
    assert before.filter(upto).select(keep).equals(after.filter(upto).select(keep))
    assert rolls_before.filter(pl.col("session") <= later).equals(
        rolls_after.filter(pl.col("session") <= later)
    )


def stretches(rows: list[dict[str, Any]]) -> dict[date, int]:
    """Session → number of its stretch (sessions between two rolls), from the reference's choices.

    A contract the series left and came back to (possible through a contract without an
    expiration) starts a new stretch.
    """
    sessions, chosen = ref.choose_contracts(rows, "NQ")
    out: dict[date, int] = {}
    for i, s in enumerate(sessions):
        out[s] = out[sessions[i - 1]] + (chosen[s] != chosen[sessions[i - 1]]) if i else 0
    return out


@FAST
@example(comes_back_rows(z_first_volume=0, z_on_03_10=True))
@example(comes_back_rows(z_first_volume=1, z_on_03_10=False))
@example([make_bar("GLBX.MDP3:ESH5", slot_ts(date(2025, 3, 3), 0), 5800.0, 0)])
@given(markets())
def test_property_difference_closes_gaps_and_keeps_returns(rows: list[dict[str, Any]]) -> None:
    if not has_nq_outright(rows):
        assert_without_nq_outright(rows, "difference")
        return
    plain_build = build_continuous(frame_of(rows), NQ, adjust="none")
    adj_build = build_continuous(frame_of(rows), NQ, adjust="difference")
    plain, adjusted = plain_build.collect(), adj_build.collect()
    assert plain["ts"].equals(adjusted["ts"]) and plain["volume"].equals(adjusted["volume"])
    # Within one stretch (no roll in between), bar-to-bar changes are unchanged; across rolls
    # they are not, even between two bars of one contract the series left and came back to.
    stretch_of = stretches(rows)
    stretch = pl.Series([stretch_of[ref.session_of(ts)] for ts in plain["ts"]], dtype=pl.Int64)
    same = stretch == stretch.shift(1)
    for p in ("open", "high", "low", "close"):
        assert (plain[p].diff() - adjusted[p].diff()).filter(same).abs().max() in (None, 0.0)
    assert ((plain["high"] - plain["low"]) == (adjusted["high"] - adjusted["low"])).all()
    # At each roll, the adjusted old contract at the common minute meets the new contract there
    # (shifted as the new contract's bars at the roll) when that minute lies in the stretch just
    # before the roll; a minute further back also carries the gaps of the rolls in between.
    shift = dict(adj_build.schedule.select("session", "shift").iter_rows())
    by_key = {(r["symbol"], r["ts"]): r["close"] for r in rows}
    closes = dict(adjusted.select("ts", "close").iter_rows())
    for roll in adj_build.rolls.to_dicts():
        if roll["gap"] is None:
            continue
        common = sorted(
            ts
            for (sym, ts), c in by_key.items()
            if sym == roll["from_contract"]
            and c is not None
            and by_key.get((roll["to_contract"], ts)) is not None
            and ref.session_of(ts) < roll["session"]
        )
        minute = common[-1]
        if stretch_of[ref.session_of(minute)] == stretch_of[roll["session"]] - 1:
            assert closes[minute] == by_key[(roll["to_contract"], minute)] + shift[roll["session"]]


@FAST
@given(markets())
def test_property_outrights_only_and_expirations_never_go_back(rows: list[dict[str, Any]]) -> None:
    if not has_nq_outright(rows):
        assert_without_nq_outright(rows)
        return
    series = build_continuous(frame_of(rows), NQ)
    assert set(series.schedule["contract"]) <= OUTRIGHTS
    for roll in series.rolls.to_dicts():
        old, new = CONTRACTS[roll["from_contract"]][2], CONTRACTS[roll["to_contract"]][2]
        assert old is None or new is None or new >= old
