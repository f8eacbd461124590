"""Databento DBN files (``.dbn``, ``.dbn.zst``) of OHLCV bars into bars-table frames, in batches.

What a file means is described in ``docs/contract.md#vendor-files-and-continuous-futures``. In
short: schemas ``ohlcv-1s``, ``ohlcv-1m``, ``ohlcv-1h`` and ``ohlcv-1d``; ``ts_event`` is the bar's
open time; the bar interval comes from the schema; a price is ``int64 / 1e9`` (a division, so
``3702750000000`` is exactly ``3702.75``) and ``UNDEF_PRICE`` is null; a bar is named
``DATASET:SYMBOL`` from the file's symbology (the record's instrument on the record's UTC date),
or from instrument definitions for parent-symbology files (``NQ.FUT``).

How. ``databento-dbn`` decodes the metadata header (dataset, schema, symbology, DBN version) and
documents each record's layout as a numpy structured dtype (``OHLCVMsg._dtypes``); the records of
a single-schema file all have that one fixed size. So records are read in blocks of
``batch_rows`` and viewed as a numpy structured array with that dtype (zero-copy), and each
column becomes a Polars column in one vectorised step: no Python object per record, which is
what the library's ``DBNDecoder`` would build. Memory is one block of raw records plus its
frame, whatever the file's size; ``.dbn.zst`` is decompressed as a stream (``zstandard``).

Every problem with a file is a :class:`~triangles_polars.errors.BadInput` with a one-line message
naming the file: not DBN, empty, truncated (header, last record, or zstd stream), another
compression, undecodable metadata, another schema (named), files that mix schemas, a foreign
record type inside the file, bars outside the file's symbology.

Choices where the contract is silent:

* Symbology dates are UTC dates of ``ts_event``, intervals ``[start_date, end_date)``, as
  databento-dbn's own symbol maps read them. A record that two requested symbols map on the same
  day (``NQ.c.0`` and ``NQ.v.0``) is a bar of each series; a record no mapping covers is an error.
* ``symbol=`` is used as given (no dataset prefix added). It is refused for a file whose
  symbology holds several series, and for a file without symbology that holds several
  instruments. A parent file needs its definitions even with ``symbol=``.
* Definitions name the bars of parent files only; for other files they just add
  ``instrument_class`` and ``expiration``.
* ``UNDEF_PRICE`` in any of open/high/low/close becomes null in that column only (hygiene then
  flags the bar); a volume beyond int64 becomes null.
* Records keep file order; sorting is the caller's (the bars loader sorts by symbol and ts).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO

import databento_dbn as dbn
import numpy as np
import polars as pl

from triangles_polars.errors import BadInput
from triangles_polars.schema import BAR_SCHEMA, UTC_TS

OHLCV_SCHEMAS = ("ohlcv-1s", "ohlcv-1m", "ohlcv-1h", "ohlcv-1d")
DEFINITION_SCHEMA = "definition"
DEFAULT_BATCH_ROWS = 100_000

# Extra columns (``extra_columns=True``) that the continuous builder needs.
EXTRA_SCHEMA: dict[str, pl.DataType] = {
    "instrument_id": pl.Int64(),
    "instrument_class": pl.String(),
    "expiration": UTC_TS,
}
DEFINITIONS_SCHEMA: dict[str, pl.DataType] = {
    "instrument_id": pl.Int64(),
    "raw_symbol": pl.String(),
    "instrument_class": pl.String(),
    "expiration": UTC_TS,
    "valid_from": UTC_TS,
    "valid_to": UTC_TS,
}

_DBN_MAGIC = b"DBN"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Signatures of other compressions, so that a wrong file gets a message that says what it is.
_OTHER_COMPRESSIONS = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x04\x22\x4d\x18", "lz4"),
    (b"PK\x03\x04", "zip"),
    (b"7z\xbc\xaf\x27\x1c", "7z"),
)
_READ_BLOCK = 1 << 20
_UNDEF_PRICE = dbn.UNDEF_PRICE
_UNDEF_TIMESTAMP = dbn.UNDEF_TIMESTAMP
_PRICE_SCALE = float(dbn.FIXED_PRICE_SCALE)  # 1e9
_PRICES = ("open", "high", "low", "close")


# --------------------------------------------------------------------------- file headers


@dataclass(frozen=True)
class DbnFile:
    """One DBN file's header: what the library decoded from its metadata, and where records start."""

    path: Path
    metadata: Any  # databento_dbn.Metadata
    version: int
    schema: str | None
    dataset: str
    stype_in: str | None
    stype_out: str
    ts_out: bool
    zstd: bool
    header_bytes: int
    size: int

    @property
    def interval(self) -> timedelta | None:
        """The bar interval of an OHLCV schema, from the library's own schema table."""
        if self.schema is None:
            return None
        return dbn.Schema.from_str(self.schema).interval()


def is_dbn_path(path: str | Path) -> bool:
    """Whether a path names a DBN file by its suffix (``.dbn``, ``.dbn.zst``)."""
    name = Path(path).name.lower()
    return name.endswith((".dbn", ".dbn.zst", ".dbn.zstd"))


def read_header(path: str | Path) -> DbnFile:
    """Open a DBN file and decode its metadata; raises BadInput for anything that is not DBN."""
    path = Path(path)
    with _open_stream(path) as stream:
        return stream.file


# --------------------------------------------------------------------------- byte streams


class _Stream:
    """Decompressed bytes of one file with exact-size reads, and the DBN header already parsed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._fh: BinaryIO = path.open("rb")
        except FileNotFoundError:
            raise BadInput(f"DBN file {str(path)!r} not found") from None
        except OSError as exc:
            raise BadInput(f"DBN file {str(path)!r} unreadable: {exc.strerror or exc}") from None
        self._rest = b""
        self._eof = False
        try:
            self.size = path.stat().st_size
            self._chunks, zstd = self._open_chunks()
            self.file = self._read_header(zstd)
        except BaseException:
            self._fh.close()
            raise

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()

    @property
    def disk_bytes_read(self) -> int:
        """Bytes of the file on disk consumed so far (for progress)."""
        return self._fh.tell()

    def _open_chunks(self) -> tuple[Iterator[bytes], bool]:
        name = repr(str(self.path))
        if self.size == 0:
            raise BadInput(f"DBN file {name} is empty (0 bytes)")
        head = self._fh.read(8)
        self._fh.seek(0)
        if head.startswith(_ZSTD_MAGIC):
            return self._zstd_chunks(), True
        if head.startswith(_DBN_MAGIC):
            return self._plain_chunks(), False
        for magic, kind in _OTHER_COMPRESSIONS:
            if head.startswith(magic):
                raise BadInput(
                    f"DBN file {name} is compressed with {kind}, which DBN does not use: "
                    "give the plain .dbn or the zstd .dbn.zst file"
                )
        raise BadInput(f"{name} is not a DBN file (it does not start with the DBN signature)")

    def _plain_chunks(self) -> Iterator[bytes]:
        while block := self._fh.read(_READ_BLOCK):
            yield block

    def _zstd_chunks(self) -> Iterator[bytes]:
        # A decompression object (not zstandard's stream_reader) because it tells whether the
        # frame really ended: a cut-off .zst must be "truncated", not silently shorter.
        import zstandard

        decompressor = zstandard.ZstdDecompressor()
        obj = decompressor.decompressobj()
        fed = False
        try:
            while block := self._fh.read(_READ_BLOCK):
                while block:
                    out = obj.decompress(block)
                    fed = True
                    if out:
                        yield out
                    block = b""
                    if obj.eof and obj.unused_data:
                        # Concatenated frames: the rest belongs to the next one.
                        block = obj.unused_data
                        obj = decompressor.decompressobj()
        except zstandard.ZstdError as exc:
            raise BadInput(f"DBN file {str(self.path)!r}: corrupt zstd data ({exc})") from None
        if fed and not obj.eof:
            raise BadInput(f"DBN file {str(self.path)!r} is truncated (the zstd stream ends early)")

    def read(self, size: int) -> memoryview:
        """Up to ``size`` bytes (fewer only at the end of the data), as a read-only view.

        Chunks are joined once and the block is handed out as a view of that join, so a block
        of records costs one copy of its bytes; only the tail beyond ``size`` is copied again.
        """
        parts = [self._rest] if self._rest else []
        have = len(self._rest)
        while have < size and not self._eof:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                self._eof = True
                break
            parts.append(chunk)
            have += len(chunk)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        view = memoryview(data)
        self._rest = bytes(view[size:])
        return view[:size]

    def _read_header(self, zstd: bool) -> DbnFile:
        name = repr(str(self.path))
        prelude = bytes(self.read(8))
        if not prelude.startswith(_DBN_MAGIC):
            what = "zstd-compressed data that is not DBN" if zstd else "not a DBN file"
            raise BadInput(f"DBN file {name}: {what}")
        if len(prelude) < 8:
            raise BadInput(f"DBN file {name} is truncated (its metadata header is cut short)")
        (length,) = struct.unpack("<I", prelude[4:8])
        body = bytes(self.read(length))
        if len(body) < length:
            raise BadInput(f"DBN file {name} is truncated (its metadata header is cut short)")
        try:
            # AS_IS: the file's own version decides the record layout read below.
            meta = dbn.Metadata.decode(prelude + body, upgrade_policy=dbn.VersionUpgradePolicy.AS_IS)
        except Exception as exc:
            raise BadInput(f"DBN file {name}: undecodable metadata ({_first_line(exc)})") from None
        schema = meta.schema
        stype_in = meta.stype_in
        return DbnFile(
            path=self.path,
            metadata=meta,
            version=int(meta.version),
            schema=None if schema is None else str(getattr(schema, "value", schema)),
            dataset=str(meta.dataset),
            stype_in=None if stype_in is None else str(stype_in.value),
            stype_out=str(meta.stype_out.value),
            ts_out=bool(meta.ts_out),
            zstd=zstd,
            header_bytes=8 + length,
            size=self.size,
        )


def _open_stream(path: Path) -> _Stream:
    return _Stream(path)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --------------------------------------------------------------------------- record layouts


def _record_module(version: int, path: Path) -> ModuleType | Any:
    """The library's record classes for a DBN version (``databento_dbn.v1`` …)."""
    if version == dbn.DBN_VERSION:
        return dbn
    module = getattr(dbn, f"v{version}", None)
    if module is None:
        raise BadInput(
            f"DBN file {str(path)!r} is DBN version {version}, which this databento-dbn "
            f"(up to version {dbn.DBN_VERSION}) cannot read"
        )
    return module


def _record_dtype(record_class: Any, ts_out: bool) -> np.dtype:
    fields = list(record_class._dtypes)
    if ts_out:
        # Live data with send timestamps appends ts_out to every record.
        fields.append(("ts_out", "u8"))
    return np.dtype(fields)


def _iter_records(
    stream: _Stream,
    dtype: np.dtype,
    rtypes: Sequence[int],
    rows: int,
    what: str,
) -> Iterator[np.ndarray]:
    """Blocks of records as structured arrays, checked to be the one expected record type."""
    name = repr(str(stream.path))
    size = dtype.itemsize
    while True:
        raw = stream.read(rows * size)
        if not raw:
            return
        whole = len(raw) - len(raw) % size
        records = np.frombuffer(raw, dtype=dtype, count=whole // size)
        # Record type and length first: a foreign record also misaligns the rest of the block.
        bad = (records["length"].astype(np.int64) * 4 != size) | ~np.isin(records["rtype"], rtypes)
        if bad.any():
            first = int(np.argmax(bad))
            raise BadInput(
                f"DBN file {name}: record of type {int(records['rtype'][first])} among the {what} "
                "records (files that mix record types, such as live captures, are not supported)"
            )
        if whole != len(raw):
            raise BadInput(
                f"DBN file {name} is truncated: its last record is cut short "
                f"({len(raw) % size} of {size} bytes)"
            )
        yield records


# --------------------------------------------------------------------------- definitions


def read_definitions(paths: str | Path | Iterable[str | Path]) -> pl.DataFrame:
    """Instrument definitions (DBN files of schema ``definition``) as one row per instrument life.

    Columns: ``instrument_id, raw_symbol, instrument_class, expiration, valid_from, valid_to``.
    Databento sends a definition per instrument and day (and on every change); the last one of
    an (instrument_id, raw_symbol) wins. Exchanges may reuse an instrument_id years later for
    another contract, so each (instrument_id, raw_symbol) is valid from its activation (or its
    first definition, if the activation is undefined) until the next one of the same id starts:
    ``valid_from`` is null for an id's first life, ``valid_to`` null for its last.
    """
    frames = []
    for path in _as_paths(paths):
        with _open_stream(path) as stream:
            info = stream.file
            if info.schema != DEFINITION_SCHEMA:
                raise BadInput(
                    f"definitions file {str(path)!r} holds {info.schema or 'mixed'} records, not "
                    "instrument definitions: give a DBN file of schema 'definition'"
                )
            record_class = _record_module(info.version, path).InstrumentDefMsg
            dtype = _record_dtype(record_class, info.ts_out)
            rtype = int(dbn.RType.INSTRUMENT_DEF.value)
            for records in _iter_records(stream, dtype, [rtype], DEFAULT_BATCH_ROWS, "definition"):
                frames.append(_definition_frame(records))
    if not frames:
        return pl.DataFrame(schema=DEFINITIONS_SCHEMA)
    # The latest definition of each life wins (a stable sort keeps file order among equals).
    raw = pl.concat(frames).sort("ts_recv", maintain_order=True)
    lives = (
        raw.group_by("instrument_id", "raw_symbol")
        .agg(
            pl.col("instrument_class").last(),
            pl.col("expiration").last(),
            pl.coalesce("activation", "ts_recv").min().alias("start"),
        )
        .sort("instrument_id", "start")
    )
    later = pl.col("start").shift(-1).over("instrument_id", order_by="start")
    first = pl.col("start").rank("ordinal").over("instrument_id") == 1
    return lives.select(
        "instrument_id",
        "raw_symbol",
        "instrument_class",
        "expiration",
        pl.when(first).then(None).otherwise(pl.col("start")).alias("valid_from"),
        later.alias("valid_to"),
    ).cast(DEFINITIONS_SCHEMA)  # type: ignore[arg-type]


def _definition_frame(records: np.ndarray) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "instrument_id": records["instrument_id"].astype(np.int64),
            "raw_symbol": pl.Series(records["raw_symbol"]).cast(pl.String),
            "instrument_class": pl.Series(records["instrument_class"]).cast(pl.String),
            "expiration": _timestamps(records["expiration"]),
            "activation": _timestamps(records["activation"]),
            "ts_recv": _timestamps(records["ts_recv"]),
        }
    ).with_columns(pl.col("instrument_class").replace("", None))


def _timestamps(values: np.ndarray) -> pl.Series:
    """UNIX nanoseconds (u64; UNDEF_TIMESTAMP is null) → Datetime(us, UTC)."""
    ns = pl.Series("ns", values.astype(np.uint64))
    return (
        pl.DataFrame([ns])
        .select(
            pl.when(pl.col("ns") == _UNDEF_TIMESTAMP)
            .then(None)
            .otherwise(pl.col("ns"))
            .cast(pl.Int64)
            .cast(pl.Datetime("ns", "UTC"))
            .dt.cast_time_unit("us")
        )
        .to_series()
    )


# --------------------------------------------------------------------------- bars


@dataclass(frozen=True)
class _Resolver:
    """How one file's records get their symbol.

    ``names``: ``"mapping"`` (the file's symbology), ``"definitions"`` (parent files: the
    definitions' raw_symbol), ``"override"`` (``symbol=``) or ``"unnamed"`` (no symbology and no
    override: an error as soon as the file has a bar). ``check``: what must stay single
    across the file for an override to name one series (``"symbol"``, ``"instrument"`` or
    ``None`` when the metadata already showed one series).
    """

    names: str
    mapping: pl.DataFrame | None = None
    check: str | None = None


@dataclass
class DbnBars:
    """DBN files of one OHLCV schema, readable in batches (and as many times as needed).

    ``batches()`` yields frames in the bars-table shape (``symbol, ts, open, high, low, close,
    volume``), plus ``instrument_id, instrument_class, expiration`` with ``extra_columns`` (class
    and expiration need ``definitions``; they are null without). It reads the files again on
    each call, so a caller that needs two passes (the continuous builder) makes two calls rather
    than holding the bars.
    """

    files: tuple[DbnFile, ...]
    schema: str
    interval: timedelta
    definitions: pl.DataFrame | None = None
    symbol: str | None = None
    extra_columns: bool = False
    batch_rows: int = DEFAULT_BATCH_ROWS
    _resolvers: dict[Path, _Resolver] = field(default_factory=dict, repr=False)

    @property
    def total_bytes(self) -> int:
        """Size of the files on disk (the progress total of ``batches``)."""
        return sum(f.size for f in self.files)

    @property
    def columns(self) -> dict[str, pl.DataType]:
        """The schema of every batch."""
        return BAR_SCHEMA | (EXTRA_SCHEMA if self.extra_columns else {})

    def batches(self, progress: Callable[[int, int], None] | None = None) -> Iterator[pl.DataFrame]:
        """Frames of at most ``batch_rows`` records' bars, file by file, in file order.

        ``progress(done_bytes, total_bytes)`` is called after each batch with the bytes of the
        files on disk consumed so far. A file with metadata only yields nothing.
        """
        done = 0
        total = self.total_bytes
        rtypes = [
            int(dbn.RType.from_schema(dbn.Schema.from_str(self.schema)).value),
            # Early DBN files tagged every bar with the one generic OHLCV record type.
            int(dbn.RType.OHLCV_DEPRECATED.value),
        ]
        for info in self.files:
            resolver = self._resolvers[info.path]
            dtype = _record_dtype(_record_module(info.version, info.path).OHLCVMsg, info.ts_out)
            seen: list[Any] = []  # the one series (or instrument) an override names
            with _open_stream(info.path) as stream:
                for records in _iter_records(stream, dtype, rtypes, self.batch_rows, self.schema):
                    frame = self._frame(info, resolver, records, seen)
                    if progress is not None:
                        progress(done + stream.disk_bytes_read, total)
                    if frame.height:
                        yield frame
            done += info.size
        if progress is not None:
            progress(total, total)

    def collect(self) -> pl.DataFrame:
        """All bars in one frame (small files and tests; loading should stream ``batches``)."""
        frames = list(self.batches())
        return pl.concat(frames) if frames else pl.DataFrame(schema=self.columns)

    def _frame(
        self, info: DbnFile, resolver: _Resolver, records: np.ndarray, seen: list[Any]
    ) -> pl.DataFrame:
        columns: dict[str, Any] = {
            "instrument_id": records["instrument_id"].astype(np.int64),
            "ts_ns": records["ts_event"].astype(np.int64),
        }
        for price in _PRICES:
            columns[price] = _prices(records[price])
        columns["volume"] = records["volume"]
        frame = pl.DataFrame(columns).with_columns(
            pl.from_epoch("ts_ns", time_unit="ns")
            .dt.replace_time_zone("UTC")
            .dt.cast_time_unit("us")
            .alias("ts"),
            pl.col("volume").cast(pl.Int64, strict=False),
        )
        if resolver.names == "unnamed" and len(records):
            raise BadInput(
                f"DBN file {str(info.path)!r} has no symbology mappings to name its bars: give "
                "--symbol if it holds one series"
            )
        if resolver.names == "mapping":
            assert resolver.mapping is not None
            frame = _map_symbols(frame, resolver.mapping, info)
        if self.definitions is not None:
            # Parent files are named by their definitions (also to check a single-series override).
            frame = _with_definitions(frame, self.definitions, info, name=info.stype_in == "parent")
        if resolver.check is not None:
            key = "symbol" if resolver.check == "symbol" else "instrument_id"
            _check_one_series(frame[key], seen, info, key)
        if resolver.names == "override":
            frame = frame.with_columns(pl.lit(self.symbol, pl.String).alias("symbol"))
        if "instrument_class" not in frame.columns:
            frame = frame.with_columns(
                pl.lit(None, pl.String).alias("instrument_class"),
                pl.lit(None, UTC_TS).alias("expiration"),
            )
        return frame.select(list(self.columns)).cast(self.columns)  # type: ignore[arg-type]


def _prices(fixed: np.ndarray) -> pl.Series:
    """int64 fixed-point (1e-9) → float64 by true division; ``UNDEF_PRICE`` → null.

    numpy's ``/`` is IEEE division, correctly rounded: 3702750000000 / 1e9 is exactly 3702.75.
    Polars divides a column by a scalar by multiplying with its reciprocal, which gives
    3702.7500000000005, so the division must not be a Polars expression.
    """
    values = fixed / _PRICE_SCALE
    values[fixed == _UNDEF_PRICE] = np.nan
    return pl.Series(values, nan_to_null=True)


def _map_symbols(frame: pl.DataFrame, mapping: pl.DataFrame, info: DbnFile) -> pl.DataFrame:
    """Name each bar by the file's symbology for its instrument on its UTC date."""
    keyed = frame.with_columns(pl.col("ts").dt.date().alias("date"))
    # An equi-join on (instrument, UTC date): a mapping interval can switch a symbol's
    # instrument mid-file, and one record can belong to two requested symbols (NQ.c.0 and NQ.v.0
    # on the same day), in which case it is a bar of each series.
    named = keyed.join(mapping, on=["instrument_id", "date"], how="left")
    missing = named.filter(pl.col("symbol").is_null())
    if missing.height:
        row = missing.row(0, named=True)
        raise BadInput(
            f"DBN file {str(info.path)!r}: {missing.height:,} bar(s) have no symbol in the file's "
            f"symbology, first instrument_id {row['instrument_id']} on {row['date'].isoformat()} "
            "(give --symbol if the file holds one series)"
        )
    return named.with_columns((pl.lit(info.dataset + ":") + pl.col("symbol")).alias("symbol")).drop("date")


def _with_definitions(
    frame: pl.DataFrame, definitions: pl.DataFrame, info: DbnFile, *, name: bool
) -> pl.DataFrame:
    """Add ``instrument_class`` and ``expiration`` (and, with ``name``, the symbol) per bar."""
    keyed = frame.with_row_index("_row")
    # One life of an instrument_id matches a bar at most: lives are half-open and do not overlap.
    matched = (
        keyed.select("_row", "instrument_id", "ts")
        .join(definitions, on="instrument_id", how="inner")
        .filter(
            (pl.col("valid_from").is_null() | (pl.col("ts") >= pl.col("valid_from")))
            & (pl.col("valid_to").is_null() | (pl.col("ts") < pl.col("valid_to")))
        )
        .select("_row", "raw_symbol", "instrument_class", "expiration")
    )
    out = keyed.join(matched, on="_row", how="left")
    if name:
        lost = out.filter(pl.col("raw_symbol").is_null())["instrument_id"].unique().sort()
        if lost.len():
            shown = ", ".join(str(i) for i in lost.head(5).to_list())
            raise BadInput(
                f"DBN file {str(info.path)!r}: the definitions lack {lost.len():,} instrument(s) of its "
                f"bars (instrument_id {shown}{', …' if lost.len() > 5 else ''}): give the definition "
                "file of the same request"
            )
        out = out.with_columns((pl.lit(info.dataset + ":") + pl.col("raw_symbol")).alias("symbol"))
    return out.drop("_row", "raw_symbol")


def _check_one_series(values: pl.Series, seen: list[Any], info: DbnFile, key: str) -> None:
    """``symbol=`` names one series; make sure the file holds no more than one."""
    distinct = values.unique().sort().to_list()
    if not seen and distinct:
        seen.append(distinct[0])
    others = [v for v in distinct if v != seen[0]] if seen else []
    if others:
        kind = "series" if key == "symbol" else "instruments, and no symbology to tell their series,"
        raise BadInput(
            f"DBN file {str(info.path)!r} holds several {kind} ({seen[0]}, {others[0]}, …), so one "
            "--symbol cannot name them; load it without --symbol"
        )


def open_dbn(
    paths: str | Path | Iterable[str | Path],
    *,
    definitions: str | Path | Iterable[str | Path] | pl.DataFrame | None = None,
    symbol: str | None = None,
    extra_columns: bool = False,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> DbnBars:
    """Check the headers of DBN bar files and prepare to read them in batches.

    Every header is read and checked before any bar is: a bad file, another schema or a mix of
    schemas fails at once, with nothing read. ``definitions`` (DBN ``definition`` file(s), or a
    frame from :func:`read_definitions`) is required for parent-symbology files and adds
    ``instrument_class``/``expiration`` for any file. ``symbol`` names the series of a file that
    holds one (it is used as given). See ``docs/contract.md#vendor-files-and-continuous-futures``.
    """
    files = [read_header(p) for p in _as_paths(paths)]
    if not files:
        raise BadInput("no DBN file given")
    if batch_rows < 1:
        raise BadInput(f"bad batch size {batch_rows}: it must be >= 1")
    for info in files:
        if info.schema not in OHLCV_SCHEMAS:
            what = f"schema {info.schema!r}" if info.schema else "no single schema (a mixed-schema file)"
            raise BadInput(
                f"DBN file {str(info.path)!r} has {what}, not OHLCV bars: load a file of schema "
                f"{', '.join(OHLCV_SCHEMAS)}"
            )
    schemas = sorted({info.schema for info in files if info.schema})
    if len(schemas) > 1:
        detail = ", ".join(f"{info.path.name} is {info.schema}" for info in files)
        raise BadInput(f"DBN files mix schemas ({detail}): load one bar interval at a time")
    schema = schemas[0]
    interval = dbn.Schema.from_str(schema).interval()
    defs: pl.DataFrame | None
    if definitions is None:
        defs = None
    elif isinstance(definitions, pl.DataFrame):
        defs = definitions.cast(DEFINITIONS_SCHEMA)  # type: ignore[arg-type]
    else:
        defs = read_definitions(definitions)
    bars = DbnBars(
        files=tuple(files),
        schema=schema,
        interval=interval,
        definitions=defs,
        symbol=symbol,
        extra_columns=extra_columns,
        batch_rows=batch_rows,
    )
    for info in files:
        bars._resolvers[info.path] = _resolver(info, defs, symbol)
    return bars


def read_dbn(
    paths: str | Path | Iterable[str | Path],
    **options: Any,
) -> tuple[pl.DataFrame, timedelta]:
    """All bars of DBN files in one frame, and the bar interval (options as :func:`open_dbn`)."""
    bars = open_dbn(paths, **options)
    return bars.collect(), bars.interval


def _resolver(info: DbnFile, defs: pl.DataFrame | None, symbol: str | None) -> _Resolver:
    name = repr(str(info.path))
    if info.stype_in == "parent":
        if defs is None:
            parents = ", ".join(sorted(info.metadata.mappings)) or "a parent symbol"
            raise BadInput(
                f"DBN file {name} uses parent symbology ({parents}): every contract and spread maps "
                "to the parent, so it needs the instrument definitions of the same request "
                "(--definitions FILE, a DBN file of schema 'definition')"
            )
        if symbol is not None:
            return _Resolver("override", check="symbol")
        return _Resolver("definitions")
    mapping = _mapping_frame(info)
    has_mapping = mapping is not None and mapping.height > 0
    if symbol is not None:
        if not has_mapping:
            return _Resolver("override", check="instrument")
        assert mapping is not None
        series = mapping["symbol"].unique().sort().to_list()
        if len(series) > 1:
            shown = ", ".join(series[:3]) + (", …" if len(series) > 3 else "")
            raise BadInput(
                f"DBN file {name} holds {len(series)} series ({shown}), so one --symbol cannot "
                "name them; load it without --symbol"
            )
        return _Resolver("override")
    if not has_mapping:
        # Not an error yet: a file with metadata only (no bars) loads nothing, and says so.
        return _Resolver("unnamed")
    return _Resolver("mapping", mapping=mapping)


def _mapping_frame(info: DbnFile) -> pl.DataFrame | None:
    """The metadata's symbology as one row per (instrument_id, UTC date, symbol).

    Intervals are ``[start_date, end_date)`` in UTC dates, as the library's own symbol maps read
    them. Expanding to days keeps the per-record lookup an equi-join (vectorised, and exact
    when an instrument changes mid-file); the frame is small (symbols × days).
    """
    meta = info.metadata
    if info.stype_out == "instrument_id":
        inverse = False
    elif info.stype_in == "instrument_id":
        inverse = True
    else:
        return None
    rows: dict[str, list[Any]] = {"instrument_id": [], "start": [], "end": [], "symbol": []}
    # A loop over the metadata's mapping intervals (not over records): a handful per symbol.
    for key, intervals in meta.mappings.items():
        for interval in intervals:
            value = str(interval["symbol"])
            if not value:  # the old symbology format's unresolved days
                continue
            iid, sym = (key, value) if inverse else (value, key)
            try:
                rows["instrument_id"].append(int(iid))
            except ValueError:
                raise BadInput(
                    f"DBN file {str(info.path)!r}: symbology maps {key!r} to {value!r}, "
                    "which is not an instrument_id"
                ) from None
            rows["start"].append(interval["start_date"])
            rows["end"].append(interval["end_date"])
            rows["symbol"].append(sym)
    intervals_frame = pl.DataFrame(
        rows,
        schema={"instrument_id": pl.Int64, "start": pl.Date, "end": pl.Date, "symbol": pl.String},
    ).filter(pl.col("end") > pl.col("start"))
    return (
        intervals_frame.select(
            "instrument_id",
            pl.date_ranges("start", pl.col("end") - timedelta(days=1), interval="1d").alias("date"),
            "symbol",
        )
        .explode("date")
        .unique()
        .sort("instrument_id", "date", "symbol")
    )


def _as_paths(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    if isinstance(paths, str | Path):
        return [Path(paths)]
    return [Path(p) for p in paths]


__all__ = [
    "BAR_SCHEMA",
    "DEFAULT_BATCH_ROWS",
    "DEFINITIONS_SCHEMA",
    "EXTRA_SCHEMA",
    "OHLCV_SCHEMAS",
    "DbnBars",
    "DbnFile",
    "is_dbn_path",
    "open_dbn",
    "read_dbn",
    "read_definitions",
    "read_header",
]
