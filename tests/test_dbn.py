"""DBN files in: bars equal what the records say, symbols from the file's symbology, clear errors.

Every file here is written with databento-dbn's own encoder (``tests/dbn_files.py``); no database.
"""

from __future__ import annotations

import bz2
import doctest
import gzip
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import databento_dbn as dbn
import polars as pl
import pytest
import zstandard

import triangles_polars.symbols as symbols_module
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
from triangles_polars.dbn import BAR_SCHEMA, EXTRA_SCHEMA, is_dbn_path, open_dbn, read_dbn, read_definitions
from triangles_polars.errors import BadInput
from triangles_polars.symbols import instrument_root

# --------------------------------------------------------------------------- a market


def market() -> tuple[list[Bar], dict[int, str]]:
    """ESH5, ESM5 and their calendar spread over sessions around the March 2025 DST change.

    Sessions Thu 03-06 … Tue 03-11 with Wed 03-12 missing (a holiday), then Thu 03-13; both
    outrights have the same volume on 03-10 (a tie); one bar has an undefined open price.
    """
    bars: list[Bar] = []
    days = [date(2025, 3, 6), date(2025, 3, 7), date(2025, 3, 10), date(2025, 3, 11), date(2025, 3, 13)]
    for n, day in enumerate(days):
        # 23:00 UTC the evening before is 17:00 CST; after 03-09 17:00 CDT is 22:00 UTC.
        evening = datetime(day.year, day.month, day.day, tzinfo=UTC) - timedelta(
            hours=1 if day < date(2025, 3, 10) else 2
        )
        for minute in range(3):
            ts = evening + timedelta(minutes=minute)
            tie = 25 if day == date(2025, 3, 10) else None
            bars.append(bar(1, ts, 3702.75 + n, 3703.5 + n, 3702.0 + n, 3703.25 + n, tie or 40 - n))
            bars.append(bar(2, ts, 3752.5 + n, 3753.0 + n, 3751.75 + n, 3752.25 + n, tie or 10 + n))
            bars.append(bar(3, ts, -49.75, -49.5, -50.25, -49.0, 3))
    bars.append(Bar(1, utc(2025, 3, 13, 15, 0), dbn.UNDEF_PRICE, px(3710), px(3705), px(3708.5), 1))
    bars.append(
        Bar(2, utc(2025, 3, 13, 15, 0), 3702750000000, 3702750000000, 3702750000000, 3702750000000, 0)
    )
    return bars, {1: "ESH5", 2: "ESM5", 3: "ESH5-ESM5"}


def expected(bars: list[Bar], names: dict[int, str], prefix: str = f"{GLBX}:") -> list[dict[str, Any]]:
    """What the records say, in plain Python: int64 / 1e9 and UNDEF_PRICE → None."""

    def price(v: int) -> float | None:
        return None if v == dbn.UNDEF_PRICE else v / 1e9

    rows = [
        {
            "symbol": prefix + names[b.instrument_id],
            "ts": b.ts,
            "open": price(b.open),
            "high": price(b.high),
            "low": price(b.low),
            "close": price(b.close),
            "volume": b.volume,
        }
        for b in bars
    ]
    return sorted(rows, key=lambda r: (r["symbol"], r["ts"]))


def loaded(frame: pl.DataFrame) -> list[dict[str, Any]]:
    assert frame.schema == pl.Schema(BAR_SCHEMA)
    return frame.sort("symbol", "ts").to_dicts()


# --------------------------------------------------------------------------- bars


@pytest.mark.parametrize("name", ["es.dbn", "es.dbn.zst"])
def test_raw_symbol_file_equals_records(tmp_path: Path, name: str) -> None:
    bars, names = market()
    path = raw_symbol_file(tmp_path / name, bars, names)
    frame, interval = read_dbn(path)
    assert interval == timedelta(minutes=1)
    assert loaded(frame) == expected(bars, names)
    # The fixed-point price is divided, not multiplied: 3702750000000 → 3702.75 exactly.
    esm5 = frame.filter((pl.col("symbol") == "GLBX.MDP3:ESM5") & (pl.col("ts") == utc(2025, 3, 13, 15, 0)))
    assert esm5["open"].item() == 3702.75
    assert 3702750000000 * 1e-9 != 3702.75  # why division matters
    assert frame.filter(pl.col("ts") == utc(2025, 3, 13, 15, 0)).sort("symbol")["open"].to_list() == [
        None,
        3702.75,
    ]
    assert frame["open"].null_count() == 1


def test_zstd_and_plain_load_the_same(tmp_path: Path) -> None:
    bars, names = market()
    plain, _ = read_dbn(raw_symbol_file(tmp_path / "a.dbn", bars, names))
    packed, _ = read_dbn(raw_symbol_file(tmp_path / "a.dbn.zst", bars, names))
    assert plain.equals(packed)


def test_dst_change_keeps_utc_open_times(tmp_path: Path) -> None:
    bars, names = market()
    frame, _ = read_dbn(raw_symbol_file(tmp_path / "a.dbn", bars, names))
    # Each session opens at 17:00 Chicago: 23:00 UTC before the change on 2025-03-09, 22:00 after;
    # the loaded open times are the records' UTC times, untouched.
    evenings = sorted({(t.date(), t.hour) for t in frame["ts"].to_list() if t.hour >= 22})
    assert evenings == [
        (date(2025, 3, 5), 23),
        (date(2025, 3, 6), 23),
        (date(2025, 3, 9), 22),
        (date(2025, 3, 10), 22),
        (date(2025, 3, 12), 22),
    ]


@pytest.mark.parametrize(
    ("schema", "interval"),
    [
        ("ohlcv-1s", timedelta(seconds=1)),
        ("ohlcv-1m", timedelta(minutes=1)),
        ("ohlcv-1h", timedelta(hours=1)),
        ("ohlcv-1d", timedelta(days=1)),
    ],
)
def test_interval_comes_from_the_schema(tmp_path: Path, schema: str, interval: timedelta) -> None:
    bars = [
        bar(1, utc(2025, 1, 2), 10, 11, 9, 10.5, 5),
        bar(1, utc(2025, 1, 2) + interval, 10.5, 12, 10, 11, 6),
    ]
    path = raw_symbol_file(tmp_path / "x.dbn", bars, {1: "ESH5"}, schema=schema)
    frame, got = read_dbn(path)
    assert got == interval
    assert frame["ts"].to_list() == [utc(2025, 1, 2), utc(2025, 1, 2) + interval]


def test_batches_are_bounded_and_cover_the_file(tmp_path: Path) -> None:
    bars, names = market()
    path = raw_symbol_file(tmp_path / "a.dbn.zst", bars, names)
    source = open_dbn(path, batch_rows=4)
    seen: list[tuple[int, int]] = []
    batches = list(source.batches(progress=lambda done, total: seen.append((done, total))))
    assert len(batches) == -(-len(bars) // 4)
    assert all(b.height <= 4 for b in batches)
    assert loaded(pl.concat(batches)) == expected(bars, names)
    assert seen[-1] == (source.total_bytes, source.total_bytes)
    # It can be read again (the continuous builder reads a file more than once).
    assert pl.concat(list(source.batches())).equals(pl.concat(batches))


def test_several_files_in_one_load(tmp_path: Path) -> None:
    bars, names = market()
    first = [b for b in bars if b.ts < utc(2025, 3, 9)]
    second = [b for b in bars if b.ts >= utc(2025, 3, 9)]
    paths = [
        raw_symbol_file(tmp_path / "a.dbn", first, names),
        raw_symbol_file(tmp_path / "b.dbn.zst", second, names),
    ]
    frame, _ = read_dbn(paths)
    assert loaded(frame) == expected(bars, names)


def test_ts_out_records(tmp_path: Path) -> None:
    bars, names = market()
    frame, _ = read_dbn(raw_symbol_file(tmp_path / "a.dbn", bars, names, ts_out=True))
    assert loaded(frame) == expected(bars, names)


def test_dbn_version_1_file(tmp_path: Path) -> None:
    bars, names = market()
    frame, _ = read_dbn(raw_symbol_file(tmp_path / "a.dbn", bars, names, version=1))
    assert loaded(frame) == expected(bars, names)


# --------------------------------------------------------------------------- symbology


def test_mapping_change_mid_file_follows_instrument_and_date(tmp_path: Path) -> None:
    # Instrument 7 is ESH5 until 03-04, then the exchange reuses it for NQH5; ESH5 moves to 8.
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
    frame, _ = read_dbn(write_bars(tmp_path / "m.dbn", bars, stype_in="raw_symbol", mappings=mappings))
    got = {(r["symbol"], r["ts"]): r["close"] for r in frame.to_dicts()}
    assert got == {
        ("GLBX.MDP3:ESH5", utc(2025, 3, 3, 15)): 5000.5,
        ("GLBX.MDP3:NQH5", utc(2025, 3, 4, 15)): 20000.5,
        ("GLBX.MDP3:ESH5", utc(2025, 3, 4, 15)): 5002.5,
    }


def test_continuous_file_is_one_series_across_rolls(tmp_path: Path) -> None:
    bars = [
        bar(1, utc(2025, 3, 12, 15), 20000, 20001, 19999, 20000.25, 5),
        bar(2, utc(2025, 3, 13, 15), 20100, 20101, 20099, 20100.25, 6),
    ]
    intervals = [(date(2025, 3, 12), date(2025, 3, 13), 1), (date(2025, 3, 13), date(2025, 3, 14), 2)]
    for name in ("c.dbn", "c.dbn.zst"):
        frame, _ = read_dbn(continuous_file(tmp_path / name, bars, "NQ.c.0", intervals))
        assert frame["symbol"].to_list() == ["GLBX.MDP3:NQ.c.0"] * 2
        assert frame["close"].to_list() == [20000.25, 20100.25]


def test_a_record_of_two_continuous_symbols_is_a_bar_of_each(tmp_path: Path) -> None:
    bars = [bar(1, utc(2025, 3, 12, 15), 20000, 20001, 19999, 20000.25, 5)]
    day = [Interval(date(2025, 3, 12), date(2025, 3, 13), "1")]
    path = write_bars(
        tmp_path / "cv.dbn",
        bars,
        stype_in="continuous",
        mappings=[Mapping("NQ.c.0", day), Mapping("NQ.v.0", day)],
    )
    frame, _ = read_dbn(path)
    assert sorted(frame["symbol"]) == ["GLBX.MDP3:NQ.c.0", "GLBX.MDP3:NQ.v.0"]


def test_instrument_id_symbology_file(tmp_path: Path) -> None:
    bars = [bar(1, utc(2025, 3, 12, 15), 10, 11, 9, 10.5, 5)]
    mappings = [Mapping("1", [Interval(date(2025, 3, 12), date(2025, 3, 13), "ESH5")])]
    path = write_bars(
        tmp_path / "i.dbn", bars, stype_in="instrument_id", stype_out="raw_symbol", mappings=mappings
    )
    assert read_dbn(path)[0]["symbol"].to_list() == ["GLBX.MDP3:ESH5"]


def definitions_of(names: dict[int, str]) -> list[Definition]:
    return [
        Definition(
            iid,
            raw,
            "S" if "-" in raw else "F",
            utc(2025, 3, 21, 13, 30) if "H5" in raw[:4] else utc(2025, 6, 20, 13, 30),
        )
        for iid, raw in names.items()
    ]


@pytest.mark.parametrize("version", [None, 2])
def test_parent_file_with_definitions(tmp_path: Path, version: int | None) -> None:
    bars, names = market()
    path = parent_file(tmp_path / "es.dbn.zst", bars, "ES.FUT")
    defs = definition_file(tmp_path / "defs.dbn", definitions_of(names), parent="ES.FUT", version=version)
    source = open_dbn(path, definitions=defs, extra_columns=True)
    frame = source.collect()
    assert frame.schema == pl.Schema(BAR_SCHEMA | EXTRA_SCHEMA)
    assert loaded(frame.select(list(BAR_SCHEMA))) == expected(bars, names)
    classes = dict(frame.select("symbol", "instrument_class").unique().iter_rows())
    assert classes == {"GLBX.MDP3:ESH5": "F", "GLBX.MDP3:ESM5": "F", "GLBX.MDP3:ESH5-ESM5": "S"}
    expiry = dict(frame.select("instrument_id", "expiration").unique().iter_rows())
    assert expiry[2] == utc(2025, 6, 20, 13, 30)


def test_parent_file_without_definitions_is_bad_input(tmp_path: Path) -> None:
    bars, _ = market()
    path = parent_file(tmp_path / "es.dbn", bars, "ES.FUT")
    with pytest.raises(BadInput, match=r"parent symbology \(ES\.FUT\).*definitions"):
        open_dbn(path)


def test_definitions_missing_an_instrument(tmp_path: Path) -> None:
    bars, _ = market()
    path = parent_file(tmp_path / "es.dbn", bars, "ES.FUT")
    defs = definition_file(tmp_path / "defs.dbn", definitions_of({1: "ESH5", 2: "ESM5"}), parent="ES.FUT")
    with pytest.raises(BadInput, match=r"definitions lack 1 instrument\(s\).*instrument_id 3"):
        read_dbn(path, definitions=defs)


def test_reused_instrument_id_is_named_by_its_life(tmp_path: Path) -> None:
    # Id 5 was NQH4 (expired March 2024), then the exchange reused it for NQZ5.
    bars = [
        bar(5, utc(2024, 3, 1, 15), 18000, 18001, 17999, 18000.5, 1),
        bar(5, utc(2025, 9, 1, 15), 23000, 23001, 22999, 23000.5, 1),
    ]
    defs = [
        Definition(
            5, "NQH4", "F", utc(2024, 3, 15, 13, 30), ts_recv=utc(2023, 3, 1), activation=utc(2023, 3, 1)
        ),
        Definition(
            5, "NQZ5", "F", utc(2025, 12, 19, 13, 30), ts_recv=utc(2025, 8, 31), activation=utc(2024, 12, 1)
        ),
    ]
    path = parent_file(tmp_path / "nq.dbn", bars)
    frame, _ = read_dbn(path, definitions=definition_file(tmp_path / "d.dbn", defs))
    assert frame.sort("ts")["symbol"].to_list() == ["GLBX.MDP3:NQH4", "GLBX.MDP3:NQZ5"]
    table = read_definitions(tmp_path / "d.dbn")
    assert table.sort("valid_to", nulls_last=True)["raw_symbol"].to_list() == ["NQH4", "NQZ5"]


def test_symbol_override_names_a_single_series(tmp_path: Path) -> None:
    bars = [
        bar(1, utc(2025, 3, 12, 15), 10, 11, 9, 10.5, 5),
        bar(2, utc(2025, 3, 13, 15), 11, 12, 10, 11.5, 5),
    ]
    intervals = [(date(2025, 3, 12), date(2025, 3, 13), 1), (date(2025, 3, 13), date(2025, 3, 14), 2)]
    path = continuous_file(tmp_path / "c.dbn", bars, "NQ.c.0", intervals)
    assert read_dbn(path, symbol="NQ front")[0]["symbol"].to_list() == ["NQ front"] * 2
    several, names = market()
    with pytest.raises(BadInput, match="holds 3 series"):
        open_dbn(raw_symbol_file(tmp_path / "es.dbn", several, names), symbol="ES")


def test_bars_outside_the_symbology_are_bad_input(tmp_path: Path) -> None:
    bars = [
        bar(1, utc(2025, 3, 12, 15), 10, 11, 9, 10.5, 5),
        bar(9, utc(2025, 3, 12, 15), 10, 11, 9, 10.5, 5),
    ]
    mappings = [Mapping("ESH5", [Interval(date(2025, 3, 12), date(2025, 3, 13), "1")])]
    path = write_bars(tmp_path / "x.dbn", bars, stype_in="raw_symbol", mappings=mappings)
    with pytest.raises(BadInput, match=r"1 bar.*no symbol.*instrument_id 9 on 2025-03-12"):
        read_dbn(path)
    no_mapping = write_bars(tmp_path / "y.dbn", bars, stype_in="raw_symbol", mappings=[])
    with pytest.raises(BadInput, match="no symbology mappings"):
        read_dbn(no_mapping)
    with pytest.raises(BadInput, match="several instruments"):
        read_dbn(no_mapping, symbol="ES")


def test_metadata_only_file_has_zero_rows(tmp_path: Path) -> None:
    for name in ("empty.dbn", "empty.dbn.zst"):
        path = write(tmp_path / name, metadata(schema="ohlcv-1m", stype_in="raw_symbol"), [])
        for symbol in (None, "ES"):
            frame, interval = read_dbn(path, symbol=symbol)
            assert frame.height == 0 and frame.schema == pl.Schema(BAR_SCHEMA)
            assert interval == timedelta(minutes=1)
            assert list(open_dbn(path, symbol=symbol).batches()) == []


# --------------------------------------------------------------------------- bad files


def good_bytes(tmp_path: Path) -> bytes:
    bars, names = market()
    return raw_symbol_file(tmp_path / "good.dbn", bars, names).read_bytes()


def trades_file(path: Path) -> Path:
    trade = dbn.TradeMsg(
        1, 1, ns(utc(2025, 3, 12)), px(10), 1, dbn.Action.TRADE, dbn.Side.BID, 0, ns(utc(2025, 3, 12))
    )
    return write(path, metadata(schema="trades", stype_in="raw_symbol"), [trade])


BAD_FILES = {
    "empty": (lambda p, good: p.write_bytes(b""), "is empty"),
    "csv": (lambda p, good: p.write_text("symbol,ts,open\nES,2025-01-01,1\n"), "not a DBN file"),
    "cut record": (
        lambda p, good: p.write_bytes(good[:-10]),
        r"truncated: its last record is cut short \(46 of 56",
    ),
    "cut header": (lambda p, good: p.write_bytes(good[:40]), "truncated .*metadata"),
    "cut zstd": (
        lambda p, good: p.write_bytes(zstandard.ZstdCompressor().compress(good)[:-20]),
        r"truncated \(the zstd stream",
    ),
    "gzip": (lambda p, good: p.write_bytes(gzip.compress(good)), "compressed with gzip"),
    "bzip2": (lambda p, good: p.write_bytes(bz2.compress(good)), "compressed with bzip2"),
    "zstd not dbn": (
        lambda p, good: p.write_bytes(zstandard.ZstdCompressor().compress(b"a,b\n1,2\n" * 10)),
        "zstd-compressed data that is not DBN",
    ),
    "bad metadata": (
        lambda p, good: p.write_bytes(good[:8] + b"\xff" * 400),
        "undecodable metadata|truncated",
    ),
    "trades": (lambda p, good: trades_file(p), "schema 'trades', not OHLCV"),
    "mbo": (
        lambda p, good: write(p, metadata(schema="mbo", stype_in="raw_symbol"), []),
        "schema 'mbo', not OHLCV",
    ),
    "definition": (
        lambda p, good: definition_file(p, [Definition(1, "ESH5", "F", utc(2025, 3, 21))]),
        "schema 'definition', not OHLCV",
    ),
    "mixed live": (
        lambda p, good: write(p, metadata(schema=None, stype_in="raw_symbol"), []),
        "no single schema",
    ),
    "foreign record": (
        lambda p, good: p.write_bytes(
            good + bytes(dbn.TradeMsg(1, 1, 0, 1, 1, dbn.Action.TRADE, dbn.Side.BID, 0, 0))
        ),
        "record of type 0 among the ohlcv-1m records|truncated",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_are_bad_input(tmp_path: Path, case: str) -> None:
    make, message = BAD_FILES[case]
    path = tmp_path / "bad.dbn"
    make(path, good_bytes(tmp_path))
    with pytest.raises(BadInput, match=message) as info:
        source = open_dbn(path)
        list(source.batches())
    assert "\n" not in str(info.value)
    assert "bad.dbn" in str(info.value) or case in ("trades", "mbo")


def test_foreign_record_in_a_block(tmp_path: Path) -> None:
    bars, _ = market()
    header = metadata(
        schema="ohlcv-1m",
        stype_in="raw_symbol",
        mappings=[Mapping("ESH5", [Interval(date(2025, 3, 5), date(2025, 3, 14), "1")])],
    )
    trade = dbn.TradeMsg(1, 1, 0, 1, 1, dbn.Action.TRADE, dbn.Side.BID, 0, 0)
    records = [b.record("ohlcv-1m") for b in bars if b.instrument_id == 1][:3]
    path = write(tmp_path / "mixed.dbn", header, [records[0], trade, records[1], records[2]])
    with pytest.raises(BadInput, match="record of type 0 among the ohlcv-1m records"):
        read_dbn(path)


def test_mixed_schemas_across_files(tmp_path: Path) -> None:
    bars, names = market()
    a = raw_symbol_file(tmp_path / "a.dbn", bars, names, schema="ohlcv-1m")
    b = raw_symbol_file(tmp_path / "b.dbn", bars, names, schema="ohlcv-1h")
    with pytest.raises(BadInput, match=r"mix schemas \(a.dbn is ohlcv-1m, b.dbn is ohlcv-1h\)"):
        open_dbn([a, b])


def test_missing_file_and_wrong_definitions_file(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="not found"):
        open_dbn(tmp_path / "nope.dbn")
    bars, _ = market()
    path = parent_file(tmp_path / "es.dbn", bars, "ES.FUT")
    with pytest.raises(BadInput, match="holds ohlcv-1m records, not instrument definitions"):
        open_dbn(path, definitions=path)


def test_is_dbn_path() -> None:
    assert is_dbn_path("a/b/nq.dbn") and is_dbn_path("NQ.DBN.ZST") and not is_dbn_path("bars.csv")


# --------------------------------------------------------------------------- roots


@pytest.mark.parametrize(
    ("symbol", "root"),
    [
        ("GLBX.MDP3:NQ", "NQ"),
        ("GLBX.MDP3:NQH6", "NQ"),
        ("NQH6", "NQ"),
        ("NQZ25", "NQ"),
        ("ESH1", "ES"),
        ("NQ.c.0", "NQ"),
        ("NQ.v.1", "NQ"),
        ("NQ.n.2", "NQ"),
        ("GLBX.MDP3:NQ.c.0", "NQ"),
        ("NQ.FUT", "NQ"),
        ("ES.OPT", "ES"),
        ("MNQZ5", "MNQ"),
        ("6EH26", "6E"),
        ("SR3M5", "SR3"),
        ("J7", "J7"),
        ("Z5", "Z5"),
        ("GLBX.MDP3:NQH6-NQM6", "NQH6-NQM6"),
        ("NQ", "NQ"),
    ],
)
def test_instrument_root(symbol: str, root: str) -> None:
    assert instrument_root(symbol) == root


def test_symbols_doctests() -> None:
    result = doctest.testmod(symbols_module)
    assert result.attempted > 0 and result.failed == 0


def test_definitions_add_class_and_expiration_to_other_files(tmp_path: Path) -> None:
    bars, names = market()
    path = raw_symbol_file(tmp_path / "es.dbn", bars, names)
    defs = definition_file(tmp_path / "defs.dbn", definitions_of(names), parent="ES.FUT")
    frame = open_dbn(path, definitions=defs, extra_columns=True).collect()
    assert loaded(frame.select(list(BAR_SCHEMA))) == expected(bars, names)  # names from the symbology
    assert dict(frame.select("symbol", "instrument_class").unique().iter_rows())["GLBX.MDP3:ESH5-ESM5"] == "S"
    plain = open_dbn(path, extra_columns=True).collect()
    assert plain["instrument_class"].null_count() == plain.height
    assert plain["instrument_id"].unique().sort().to_list() == [1, 2, 3]


def test_latest_definition_of_an_instrument_wins(tmp_path: Path) -> None:
    defs = [
        Definition(4, "NQM5", "F", utc(2025, 6, 1), ts_recv=utc(2025, 3, 2)),
        Definition(4, "NQM5", "F", utc(2025, 6, 20, 13, 30), ts_recv=utc(2025, 3, 3)),  # a correction
    ]
    table = read_definitions(definition_file(tmp_path / "d.dbn.zst", list(reversed(defs))))
    assert table.select("instrument_id", "raw_symbol", "expiration").rows() == [
        (4, "NQM5", utc(2025, 6, 20, 13, 30))
    ]


def test_concatenated_zstd_frames(tmp_path: Path) -> None:
    bars, names = market()
    data = raw_symbol_file(tmp_path / "a.dbn", bars, names).read_bytes()
    cut = len(data) - 56 * 5 - 20  # frames need not end on a record boundary
    packer = zstandard.ZstdCompressor()
    path = tmp_path / "two.dbn.zst"
    path.write_bytes(packer.compress(data[:cut]) + packer.compress(data[cut:]))
    assert loaded(read_dbn(path)[0]) == expected(bars, names)


def test_symbol_override_on_a_parent_file(tmp_path: Path) -> None:
    bars, names = market()
    defs = definition_file(tmp_path / "defs.dbn", definitions_of(names), parent="ES.FUT")
    one = parent_file(tmp_path / "one.dbn", [b for b in bars if b.instrument_id == 2], "ES.FUT")
    frame, _ = read_dbn(one, definitions=defs, symbol="ES june")
    assert set(frame["symbol"]) == {"ES june"} and frame.height == 16
    several = parent_file(tmp_path / "all.dbn", bars, "ES.FUT")
    with pytest.raises(BadInput, match="holds several series"):
        read_dbn(several, definitions=defs, symbol="ES")
