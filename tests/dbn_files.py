"""Write real DBN files with databento-dbn's own encoder, shaped as Databento ships them.

A file is the library's ``Metadata(...).encode()`` followed by ``bytes(record)`` of each record,
zstd-compressed for ``.dbn.zst`` (one frame, as Databento delivers). Helpers cover raw-symbol,
continuous and parent (``NQ.FUT``) bar files, and ``definition`` files.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import databento_dbn as dbn
import zstandard

GLBX = "GLBX.MDP3"
NS = 1_000_000_000
_RTYPES = {
    "ohlcv-1s": dbn.RType.OHLCV_1S,
    "ohlcv-1m": dbn.RType.OHLCV_1M,
    "ohlcv-1h": dbn.RType.OHLCV_1H,
    "ohlcv-1d": dbn.RType.OHLCV_1D,
}


def px(price: float) -> int:
    """A decimal price as DBN's int64 fixed-point (1e-9)."""
    return round(price * NS)


def ns(ts: datetime) -> int:
    """A UTC datetime as UNIX nanoseconds."""
    return int(ts.timestamp()) * NS + ts.microsecond * 1000


def utc(*args: int) -> datetime:
    """``utc(2025, 3, 9, 22, 0)`` → an aware UTC datetime."""
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


@dataclass(frozen=True)
class Interval:
    """One symbology mapping interval, ``[start_date, end_date)`` in UTC dates."""

    start_date: date
    end_date: date
    symbol: str


@dataclass(frozen=True)
class Mapping:
    """The symbology of one requested symbol (the library reads these attributes)."""

    raw_symbol: str
    intervals: list[Interval] = field(default_factory=list)


@dataclass(frozen=True)
class Bar:
    """One OHLCV record, prices as DBN int64 fixed-point."""

    instrument_id: int
    ts: datetime
    open: int
    high: int
    low: int
    close: int
    volume: int

    def record(self, schema: str, ts_out: bool = False) -> dbn.OHLCVMsg:
        extra = {"ts_out": ns(self.ts) + 1} if ts_out else {}
        return dbn.OHLCVMsg(
            _RTYPES[schema],
            1,
            self.instrument_id,
            ns(self.ts),
            self.open,
            self.high,
            self.low,
            self.close,
            self.volume,
            **extra,
        )


def bar(instrument_id: int, ts: datetime, o: float, h: float, l: float, c: float, v: int = 1) -> Bar:  # noqa: E741
    """A bar with decimal prices."""
    return Bar(instrument_id, ts, px(o), px(h), px(l), px(c), v)


def metadata(
    *,
    schema: str | None,
    stype_in: str,
    mappings: Sequence[Mapping] = (),
    dataset: str = GLBX,
    start: datetime | None = None,
    end: datetime | None = None,
    ts_out: bool = False,
    version: int | None = None,
    stype_out: str = "instrument_id",
) -> bytes:
    """An encoded DBN metadata header."""
    start = start or utc(2020, 1, 1)
    end = end or utc(2030, 1, 1)
    return dbn.Metadata(
        dataset=dataset,
        start=ns(start),
        stype_in=dbn.SType.from_str(stype_in),
        stype_out=dbn.SType.from_str(stype_out),
        schema=None if schema is None else dbn.Schema.from_str(schema),
        symbols=[m.raw_symbol for m in mappings],
        mappings=list(mappings),
        end=ns(end),
        ts_out=ts_out,
        version=version or dbn.DBN_VERSION,
    ).encode()


def write(path: Path, header: bytes, records: Iterable[object]) -> Path:
    """Header + records to ``path``; zstd-compressed when the name ends in ``.zst``."""
    data = header + b"".join(bytes(r) for r in records)  # type: ignore[call-overload]
    if path.name.endswith(".zst"):
        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path


def write_bars(
    path: Path,
    bars: Sequence[Bar],
    *,
    stype_in: str,
    mappings: Sequence[Mapping],
    schema: str = "ohlcv-1m",
    dataset: str = GLBX,
    ts_out: bool = False,
    version: int | None = None,
    stype_out: str = "instrument_id",
) -> Path:
    """A bar file of any symbology; records in ts order, as the vendor sorts them."""
    ordered = sorted(bars, key=lambda b: (b.ts, b.instrument_id))
    header = metadata(
        schema=schema,
        stype_in=stype_in,
        mappings=mappings,
        dataset=dataset,
        ts_out=ts_out,
        version=version,
        stype_out=stype_out,
    )
    return write(path, header, (b.record(schema, ts_out) for b in ordered))


def span(bars: Sequence[Bar], instrument_id: int) -> tuple[date, date]:
    """The UTC dates ``[first, last + 1 day)`` of an instrument's bars."""
    days = [b.ts.date() for b in bars if b.instrument_id == instrument_id]
    return min(days), max(days) + timedelta(days=1)


def raw_symbol_file(path: Path, bars: Sequence[Bar], symbols: dict[int, str], **kw: object) -> Path:
    """A ``raw_symbol`` file: each raw symbol maps to its instrument over the bars' dates."""
    mappings = [
        Mapping(raw, [Interval(*span(bars, iid), str(iid))])
        for iid, raw in symbols.items()
        if any(b.instrument_id == iid for b in bars)
    ]
    return write_bars(path, bars, stype_in="raw_symbol", mappings=mappings, **kw)  # type: ignore[arg-type]


def continuous_file(
    path: Path, bars: Sequence[Bar], symbol: str, intervals: Sequence[tuple[date, date, int]], **kw: object
) -> Path:
    """A ``continuous`` file (``NQ.c.0``): the symbol maps to different instruments over time."""
    mapping = Mapping(symbol, [Interval(d0, d1, str(iid)) for d0, d1, iid in intervals])
    return write_bars(path, bars, stype_in="continuous", mappings=[mapping], **kw)  # type: ignore[arg-type]


def parent_file(path: Path, bars: Sequence[Bar], parent: str = "NQ.FUT", **kw: object) -> Path:
    """A ``parent`` file: the parent maps to every instrument (contracts and spreads) it holds."""
    ids = sorted({b.instrument_id for b in bars})
    mapping = Mapping(parent, [Interval(*span(bars, iid), str(iid)) for iid in ids])
    return write_bars(path, bars, stype_in="parent", mappings=[mapping], **kw)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Definition:
    """What a definition record says about an instrument."""

    instrument_id: int
    raw_symbol: str
    instrument_class: str  # "F" future, "S" spread, …
    expiration: datetime | None
    ts_recv: datetime = field(default_factory=lambda: utc(2020, 1, 1))
    activation: datetime | None = None

    def record(self, version: int = dbn.DBN_VERSION) -> object:
        cls = dbn.InstrumentClass(self.instrument_class)
        action = dbn.SecurityUpdateAction.ADD
        activation = ns(self.activation) if self.activation else dbn.UNDEF_TIMESTAMP
        expiration = ns(self.expiration) if self.expiration else dbn.UNDEF_TIMESTAMP
        if version == dbn.DBN_VERSION:
            return dbn.InstrumentDefMsg(
                1,
                self.instrument_id,
                ns(self.ts_recv),
                ns(self.ts_recv),
                px(0.25),
                NS,
                self.raw_symbol,
                instrument_root_of(self.raw_symbol),
                "FUT" if self.instrument_class == "F" else "MLEG",
                cls,
                action,
                expiration=expiration,
                activation=activation,
            )
        if version == 2:
            ints = dict.fromkeys(_V2_INTS, 0)
            strs = dict.fromkeys(_V2_STRS, "")
            return dbn.v2.InstrumentDefMsg(
                **ints,
                **strs,
                publisher_id=1,
                instrument_id=self.instrument_id,
                ts_event=ns(self.ts_recv),
                ts_recv=ns(self.ts_recv),
                expiration=expiration,
                activation=activation,
                raw_symbol=self.raw_symbol,
                instrument_class=cls,
                match_algorithm=dbn.MatchAlgorithm.FIFO,
                security_update_action=action,
                user_defined_instrument=dbn.UserDefinedInstrument.NO,
            )
        raise ValueError(f"no helper for definitions of DBN version {version}")


_V2_INTS = [
    "min_price_increment",
    "display_factor",
    "high_limit_price",
    "low_limit_price",
    "max_price_variation",
    "trading_reference_price",
    "unit_of_measure_qty",
    "min_price_increment_amount",
    "price_ratio",
    "strike_price",
    "inst_attrib_value",
    "underlying_id",
    "raw_instrument_id",
    "market_depth_implied",
    "market_depth",
    "market_segment_id",
    "max_trade_vol",
    "min_lot_size",
    "min_lot_size_block",
    "min_lot_size_round_lot",
    "min_trade_vol",
    "contract_multiplier",
    "decay_quantity",
    "original_contract_size",
    "trading_reference_date",
    "appl_id",
    "maturity_year",
    "decay_start_date",
    "channel_id",
    "md_security_trading_status",
    "main_fraction",
    "price_display_format",
    "settl_price_type",
    "sub_fraction",
    "underlying_product",
    "maturity_month",
    "maturity_day",
    "maturity_week",
    "contract_multiplier_unit",
    "flow_schedule_type",
    "tick_rule",
]
_V2_STRS = [
    "currency",
    "settl_currency",
    "secsubtype",
    "group",
    "exchange",
    "asset",
    "cfi",
    "security_type",
    "unit_of_measure",
    "underlying",
    "strike_price_currency",
]


def instrument_root_of(raw: str) -> str:
    """The asset field Databento fills: the leading letters of the raw symbol."""
    return raw[:2]


def definition_file(
    path: Path, definitions: Sequence[Definition], *, parent: str = "NQ.FUT", version: int | None = None
) -> Path:
    """A ``definition``-schema file, as a parent-symbology request for definitions delivers it."""
    ids = sorted({d.instrument_id for d in definitions})
    mapping = Mapping(parent, [Interval(date(2020, 1, 1), date(2030, 1, 1), str(i)) for i in ids])
    header = metadata(schema="definition", stype_in="parent", mappings=[mapping], version=version)
    records = [d.record(version or dbn.DBN_VERSION) for d in sorted(definitions, key=lambda d: d.ts_recv)]
    return write(path, header, records)
