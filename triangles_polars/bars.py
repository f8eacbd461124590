"""Bar files: CSV and Parquet files (or frames) read in batches and shaped into the bars-table shape.

What a file may hold is described in ``docs/contract.md#bar-files-triangles-bars-load``. A file
is opened (:func:`open_bar_file`) with its header or schema checked at once, before any row is
read: a 0-byte file, a CSV without a header, missing columns, or a Parquet column of the wrong
type is :class:`~triangles_polars.errors.BadInput` naming the file. Its rows are then read in
batches of ``batch_rows`` (Polars' streaming ``scan_csv``/``scan_parquet``), each shaped by
:func:`shape_bars`, so memory holds one batch whatever the file's size. Loading them into the
bars table is :mod:`triangles_polars.loading`'s job.

Choices where the contract is silent:

* CSV prices are read as numbers (float64) and ``ts`` and ``symbol`` as text, whatever the first
  rows look like, so a file whose first rows happen to hold whole numbers reads the same as one
  with decimals; ``volume`` is inferred (whole numbers, or floats cast to whole numbers).
* Parquet prices and volume must have a numeric type: a text column of prices is a wrong schema,
  even if its strings look like numbers.
* A text ``ts`` column must use one form (with or without an offset) in every batch, as in one.
"""

from __future__ import annotations

import gzip
import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import polars as pl

from triangles_polars.errors import BadInput
from triangles_polars.schema import BAR_COLUMNS, BAR_SCHEMA, OHLC, to_utc
from triangles_polars.settings import DEFAULT_BARS_TABLE, DEFAULT_MAX_RETRIES

DEFAULT_BATCH_ROWS = 100_000
CSV_SUFFIXES = (".csv", ".txt", ".gz")
PARQUET_SUFFIXES = (".parquet", ".pq")
REQUIRED = ("ts", *OHLC)  # symbol too, unless --symbol names the rows
_OFFSET = re.compile(r"(?:Z|[+-]\d\d(?::?\d\d)?)$", re.IGNORECASE)


def is_tabular_path(path: str | Path) -> bool:
    """Whether a path names a CSV or Parquet file by its suffix."""
    return Path(path).suffix.lower() in (*CSV_SUFFIXES, *PARQUET_SUFFIXES)


@dataclass
class BarFile:
    """One CSV or Parquet file of bars, checked and ready to be read in shaped batches.

    ``batches()`` yields frames in the bars-table shape (``symbol, ts, open, high, low, close,
    volume``; ts the UTC open time), each free of duplicate ``(symbol, ts)`` keys. Duplicates
    across batches are the caller's to find (the loader does). ``progress(done)`` is called
    after each batch, in :attr:`unit` (bytes of a CSV file, rows of a Parquet file) out of
    :meth:`total`.

    Memory holds one batch: a Parquet file is read as ``scan_parquet(…).slice(offset, n)``
    (Polars reads only the row groups a slice needs); a CSV file is cut at line ends into
    blocks of about ``batch_rows`` lines, each parsed with the file's header (Polars' own
    streaming CSV reader runs ahead of its consumer, and its memory grows with the file).
    """

    path: Path
    kind: str  # "csv" or "parquet"
    mapping: dict[str, str]
    symbol: str | None = None
    ts_convention: str = "open"
    bar_interval: timedelta = timedelta(minutes=1)
    batch_rows: int = DEFAULT_BATCH_ROWS
    _ts_offset: list[bool] = field(default_factory=list, repr=False)

    @property
    def name(self) -> str:
        return str(self.path)

    @property
    def unit(self) -> str:
        """What :meth:`total` and progress count: ``bytes`` (CSV) or ``rows`` (Parquet)."""
        return "bytes" if self.kind == "csv" else "rows"

    def total(self) -> int:
        """The file's size (CSV) or its rows (Parquet, from its metadata)."""
        if self.kind == "csv":
            return self.path.stat().st_size
        try:
            return int(pl.scan_parquet(self.path).select(pl.len()).collect().item())
        except Exception as exc:
            raise _unreadable(self.path, exc) from None

    def batches(self, progress: Callable[[int], None] | None = None) -> Iterator[pl.DataFrame]:
        """The file's bars, shaped, about ``batch_rows`` at a time."""
        self._ts_offset.clear()
        raws = self._csv_frames() if self.kind == "csv" else self._parquet_frames()
        while True:
            try:
                raw, done = next(raws)
            except StopIteration:
                return
            except BadInput:
                raise
            except Exception as exc:
                raise _unreadable(self.path, exc) from None
            if raw.height == 0:
                continue
            shaped = shape_bars(
                raw,
                symbol=self.symbol,
                columns=self.mapping,
                ts_convention=self.ts_convention,
                bar_interval=self.bar_interval,
                source=self.name,
            )
            self._check_ts_form(raw)  # after parsing: an unparsable value is reported as such
            if progress is not None:
                progress(done)
            yield shaped

    def _parquet_frames(self) -> Iterator[tuple[pl.DataFrame, int]]:
        scan = pl.scan_parquet(self.path)
        rows = self.total()
        for offset in range(0, rows, self.batch_rows):
            frame = scan.slice(offset, self.batch_rows).collect()
            yield frame, offset + frame.height

    def _csv_frames(self) -> Iterator[tuple[pl.DataFrame, int]]:
        header = _csv_header(self.path)
        wanted = [v for v in self.mapping.values() if v in header]
        types = {self.mapping[c]: pl.Float64 for c in OHLC} | {
            self.mapping["ts"]: pl.String,
            self.mapping["symbol"]: pl.String,
        }
        overrides = {k: v for k, v in types.items() if k in wanted}
        block = max(1 << 12, self.batch_rows * 80)  # bytes: about batch_rows lines of bars
        with self.path.open("rb") as raw:
            stream = gzip.GzipFile(fileobj=raw) if _is_gzip(self.path) else raw
            first = stream.readline().removeprefix(b"\xef\xbb\xbf")
            rest = b""
            while True:
                data = stream.read(block)
                if data:
                    data = rest + data
                    cut = data.rfind(b"\n") + 1
                    if cut == 0:  # a line longer than a block: read on
                        rest = data
                        continue
                    data, rest = data[:cut], data[cut:]
                elif rest.strip():
                    data, rest = rest, b""
                else:
                    return
                frame = pl.read_csv(
                    io.BytesIO(first + data),
                    columns=wanted,
                    schema_overrides=overrides,
                    infer_schema_length=10_000,
                    try_parse_dates=False,
                )
                yield frame, raw.tell()

    def _check_ts_form(self, raw: pl.DataFrame) -> None:
        """Every batch of a text ts column uses the form of the first (with or without an offset)."""
        column = self.mapping["ts"]
        if column not in raw.columns or raw.schema[column] != pl.String:
            return
        first = raw[column].drop_nulls().head(1).to_list()
        if not first:
            return
        offset = bool(_OFFSET.search(first[0].strip()))
        if not self._ts_offset:
            self._ts_offset.append(offset)
        elif self._ts_offset[0] != offset:
            forms = ("with", "without") if self._ts_offset[0] else ("without", "with")
            raise BadInput(
                f"{self.name}: column {column!r} mixes timestamps {forms[0]} a UTC offset and "
                f"{forms[1]} one (first {first[0]!r}): use one form for the whole column"
            )


def open_bar_file(
    path: str | Path,
    *,
    symbol: str | None = None,
    columns: dict[str, str] | None = None,
    ts_convention: str = "open",
    bar_interval: timedelta = timedelta(minutes=1),
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> BarFile:
    """Check a CSV or Parquet file's header or schema and prepare to read it in batches."""
    path = Path(path)
    if not path.exists():
        raise BadInput(f"bars file {str(path)!r} not found")
    if not path.is_file():
        raise BadInput(f"bars file {str(path)!r} is not a file")
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        kind = "parquet"
    elif suffix in CSV_SUFFIXES:
        kind = "csv"
    else:
        raise BadInput(
            f"bars file {str(path)!r}: unknown format {suffix!r}; use .csv, .parquet, .dbn or .dbn.zst"
        )
    if path.stat().st_size == 0:
        raise BadInput(f"bars file {str(path)!r} is empty (0 bytes)")
    mapping = {c: c for c in BAR_COLUMNS} | (columns or {})
    bar_file = BarFile(
        path=path,
        kind=kind,
        mapping=mapping,
        symbol=symbol,
        ts_convention=ts_convention,
        bar_interval=bar_interval,
        batch_rows=batch_rows,
    )
    if kind == "csv":
        _check_csv_header(path, mapping, symbol)
    else:
        _check_parquet_schema(path, mapping, symbol)
    return bar_file


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _csv_header(path: Path) -> list[str]:
    try:
        return list(pl.scan_csv(path, infer_schema=False).collect_schema())
    except Exception as exc:
        raise _unreadable(path, exc) from None


def _required(mapping: dict[str, str], symbol: str | None) -> list[str]:
    return [mapping[c] for c in (REQUIRED if symbol is not None else ("symbol", *REQUIRED))]


def _check_csv_header(path: Path, mapping: dict[str, str], symbol: str | None) -> None:
    header = _csv_header(path)
    required = _required(mapping, symbol)
    missing = [c for c in required if c not in header]
    if missing and len(missing) == len(required):
        shown = ", ".join(repr(h) for h in header[:4]) + (", …" if len(header) > 4 else "")
        raise BadInput(
            f"bars file {str(path)!r} has no header naming its columns (first line: {shown}): "
            f"a CSV file needs a header row with {', '.join(required)} (or map names with --columns)"
        )
    if missing:
        raise BadInput(f"{path}: missing column(s) {', '.join(missing)}{_symbol_hint(mapping, missing)}")


def _check_parquet_schema(path: Path, mapping: dict[str, str], symbol: str | None) -> None:
    try:
        schema = pl.scan_parquet(path).collect_schema()
    except Exception as exc:
        raise _unreadable(path, exc) from None
    missing = [c for c in _required(mapping, symbol) if c not in schema]
    if missing:
        raise BadInput(f"{path}: missing column(s) {', '.join(missing)}{_symbol_hint(mapping, missing)}")
    for logical in (*OHLC, "volume"):
        column = mapping[logical]
        dtype = schema.get(column)
        if dtype is not None and not (dtype.is_numeric() or dtype == pl.Null):
            raise BadInput(
                f"{path}: column {column!r} has type {dtype}; {logical} must be a number "
                "(a Parquet column of the wrong type is a wrong schema)"
            )
    ts = schema[mapping["ts"]]
    if not (isinstance(ts, pl.Datetime) or ts == pl.String):
        raise BadInput(f"{path}: column {mapping['ts']!r} has type {ts}; expected timestamps")


def _symbol_hint(mapping: dict[str, str], missing: list[str]) -> str:
    return " (or give --symbol)" if mapping["symbol"] in missing else ""


def _unreadable(path: Path, exc: BaseException) -> BadInput:
    if isinstance(exc, BadInput):
        return exc
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return BadInput(f"bars file {str(path)!r} unreadable: {line}")


def read_bar_file(
    path: str | Path,
    *,
    symbol: str | None = None,
    columns: dict[str, str] | None = None,
    ts_convention: str = "open",
    bar_interval: timedelta = timedelta(minutes=1),
) -> pl.DataFrame:
    """A whole CSV or Parquet file of bars in the bars-table shape (small files and tests)."""
    bar_file = open_bar_file(
        path, symbol=symbol, columns=columns, ts_convention=ts_convention, bar_interval=bar_interval
    )
    frames = list(bar_file.batches())
    frame = pl.concat(frames) if frames else pl.DataFrame(schema=BAR_SCHEMA)
    _check_unique(frame, str(path))
    return frame.sort("symbol", "ts")


def shape_bars(
    frame: pl.DataFrame,
    *,
    symbol: str | None = None,
    columns: dict[str, str] | None = None,
    ts_convention: str = "open",
    bar_interval: timedelta = timedelta(minutes=1),
    source: str = "frame",
) -> pl.DataFrame:
    """Rename, parse and type a frame of bars; ts becomes the UTC open time; no duplicate keys."""
    mapping = {c: c for c in BAR_COLUMNS} | (columns or {})
    renamed = frame.rename({v: k for k, v in mapping.items() if v in frame.columns and v != k})
    if symbol is not None:
        renamed = renamed.with_columns(pl.lit(symbol).alias("symbol"))
    if "volume" not in renamed.columns:
        renamed = renamed.with_columns(pl.lit(None, pl.Int64).alias("volume"))
    missing = [mapping[c] for c in BAR_COLUMNS if c not in renamed.columns]
    if missing:
        raise BadInput(f"{source}: missing column(s) {', '.join(missing)}{_symbol_hint(mapping, missing)}")
    ts = renamed["ts"]
    try:
        if ts.dtype == pl.String:
            ts = ts.str.to_datetime(time_unit="us", time_zone="UTC", strict=True)
        elif isinstance(ts.dtype, pl.Datetime):
            ts = ts.to_frame().select(to_utc(pl.col(ts.name), ts.dtype)).to_series()
        else:
            raise BadInput(f"{source}: column {mapping['ts']!r} has type {ts.dtype}; expected timestamps")
    except BadInput:
        raise
    except Exception as exc:
        raise BadInput(
            f"{source}: unparsable timestamps in {mapping['ts']!r}: {str(exc).splitlines()[0]}"
        ) from None
    if ts.null_count():
        raise BadInput(f"{source}: {ts.null_count():,} empty timestamp(s) in {mapping['ts']!r}")
    if ts_convention == "close":
        ts = ts - bar_interval
    try:
        shaped = renamed.with_columns(ts.dt.cast_time_unit("us").alias("ts")).select(
            pl.col(c).cast(t, strict=True) for c, t in BAR_SCHEMA.items()
        )
    except Exception as exc:
        raise BadInput(
            f"{source}: a column has values of the wrong type: {str(exc).splitlines()[0]}"
        ) from None
    if shaped["symbol"].null_count():
        raise BadInput(
            f"{source}: {shaped['symbol'].null_count():,} row(s) without a symbol (or give --symbol)"
        )
    _check_unique(shaped, source)
    return shaped


def _check_unique(frame: pl.DataFrame, source: str) -> None:
    dupes = frame.filter(pl.struct("symbol", "ts").is_duplicated())
    if dupes.height:
        row = dupes.sort("symbol", "ts").row(0, named=True)
        raise BadInput(
            f"{source}: {dupes.height:,} rows share a (symbol, ts) key, first {row['symbol']} {row['ts'].isoformat()}"
        )


def ingest_bars(
    url: str, bars: pl.DataFrame, bars_table: str = DEFAULT_BARS_TABLE, max_retries: int = DEFAULT_MAX_RETRIES
) -> int:
    """Upsert a frame of bars (bars-table shape) in one transaction; returns the rows written.

    The frame's own ``(symbol, ts)`` keys must be unique; keys the table already holds are
    updated (:func:`triangles_polars.loading.load_frames`).
    """
    from triangles_polars.loading import load_frames

    return load_frames(url, bars, bars_table=bars_table, max_retries=max_retries).bars_loaded


__all__ = [
    "DEFAULT_BATCH_ROWS",
    "BarFile",
    "ingest_bars",
    "is_tabular_path",
    "open_bar_file",
    "read_bar_file",
    "shape_bars",
]
