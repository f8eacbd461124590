"""``triangles bars load``: bar files into the bars table, streamed, in one idempotent transaction.

The rules are in ``docs/contract.md#bar-files-triangles-bars-load`` and
``docs/contract.md#vendor-files-and-continuous-futures``. The way:

1. **Sources.** The files (globs expanded here too, for quoted patterns) are opened and checked
   before anything is written: DBN headers (:mod:`triangles_polars.dbn`), CSV headers and Parquet
   schemas (:mod:`triangles_polars.bars`). With ``continuous=ROOT`` the DBN files become one
   front-month series (:func:`triangles_polars.continuous.build_continuous`, which reads them in
   passes, also before anything is written).
2. **Batches.** Each source yields frames in the bars-table shape, read ahead in a thread
   (:class:`~triangles_polars.threads.BatchReader`), so decoding the next batch overlaps the
   server's work on the current one. Memory holds a few batches, whatever the files' size.
3. **One transaction** (:class:`~triangles_polars.db.Session`): the batches go through ADBC bulk
   ingest into a temporary staging table, then ``INSERT … SELECT … ON CONFLICT (symbol, ts) DO
   UPDATE`` moves them into the bars table — an upsert, so loading the same files again leaves
   the same rows (and rewrites none that are equal). Rows of symbols the table holds nothing of
   go in by a plain ``INSERT … SELECT`` (nothing to conflict with; about half the cost of the
   speculative insertion ``ON CONFLICT`` does per row), under an advisory lock that makes loads
   into one table take turns. A bad file anywhere (found while reading, in the middle of the
   stream) rolls everything back: the bars table is left as it was, and a table created by this
   load is not left behind.
4. **Continuous series** also replace their rows in ``bars_rolls`` and record their version in
   ``bars_series`` (both in the bars table's schema). A back-adjusted series (or one that was
   back-adjusted before) replaces its bars whole (deleted first, in the same transaction) and
   bumps its version; :func:`series_version` reads it.

Duplicate ``(symbol, ts)`` keys in the input are bad input, never silently merged: a batch is
checked on its own, and batches are checked against each other by their time span per symbol;
only when two spans of one symbol overlap (unsorted or overlapping files) does the server
look for duplicates in the staging table.

Choices where the contract is silent (also in ``docs/contract.md#choices-where-the-contract-is-silent``):

* Nothing to load (every file valid but without records) touches no table, not even to create it.
* A load with ``adjust="none"`` of a series that was never back-adjusted upserts (so a file of
  the latest month extends the series) and replaces the rolls of the sessions it covers (after
  its first session, whose roll a file cannot see); one that was back-adjusted before replaces
  the series whole, like ``adjust="difference"``.
* CSV/Parquet and DBN files may be mixed in one load; ``--columns`` and ``--ts-convention``
  apply to the CSV and Parquet files (DBN files carry open times).
"""

from __future__ import annotations

import glob
import itertools
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl

from triangles_polars.bars import DEFAULT_BATCH_ROWS, BarFile, is_tabular_path, open_bar_file
from triangles_polars.db import (
    RetryPolicy,
    Session,
    fetch_all,
    qualified,
    quote_ident,
    table_columns,
    table_exists,
)
from triangles_polars.errors import BadInput
from triangles_polars.schema import BAR_COLUMNS, BAR_SCHEMA, bars_table_ddl
from triangles_polars.settings import (
    DEFAULT_BARS_TABLE,
    DEFAULT_MAX_RETRIES,
    parse_duration,
    split_table_name,
)

LOADER_NAME = "triangles_loader"
ROLLS_TABLE = "bars_rolls"
SERIES_TABLE = "bars_series"
STAGING_TABLE = "triangles_load_staging"
ADJUSTS = ("none", "difference")
READ_AHEAD = 1  # batches decoded ahead of the one being ingested
_GLOB_CHARS = frozenset("*?[")
_DBN_MAGICS = (b"DBN", b"\x28\xb5\x2f\xfd")


# --------------------------------------------------------------------------- results and progress


@dataclass
class LoadResult:
    """What a load did. ``to_json()`` is the ``--json`` object (``docs/contract.md#bars-load``).

    ``rolls`` (continuous series only) are ``{symbol, session, from_contract, to_contract, gap}``
    with ``session`` an ISO date; ``series_version`` and ``adjust`` are None unless a continuous
    series was loaded; ``bars_replaced`` counts the series' bars deleted before a whole-series
    replacement.
    """

    bars_loaded: int = 0
    bars_table: str = DEFAULT_BARS_TABLE
    symbols: list[str] = field(default_factory=list)
    rolls: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    series_version: int | None = None
    adjust: str | None = None
    bars_replaced: int = 0
    files: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def exit_code(self) -> int:
        """A finished load exits 0 (failures raise)."""
        return 0

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        out = asdict(self)
        out["duration_s"] = round(self.duration_s, 3)
        return out


class LoadProgress:
    """Observer of a load; the default does nothing. :class:`TerminalLoadProgress` draws a bar."""

    def phase(self, description: str, total: int | None, unit: str) -> None:
        """A file (or a pass over files) starts; ``total`` in ``unit`` (``bytes`` or ``rows``)."""

    def update(self, done: int, rows: int) -> None:
        """``done`` units of the phase are read; ``rows`` bars of the load so far."""

    def retry(self, error: BaseException) -> None:
        """A connection error is being retried (the load starts over)."""

    def note(self, text: str) -> None:
        """A step without a measurable total (writing into the table, …)."""


class TerminalLoadProgress(LoadProgress):
    """A rich progress bar on stderr (a no-op when ``enabled`` is False)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None
        self._task: Any = None
        self._unit = "rows"
        self._retries = 0

    def __enter__(self) -> TerminalLoadProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
            )
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def phase(self, description: str, total: int | None, unit: str) -> None:
        if self._bar is None:
            return
        if self._task is not None:
            self._bar.update(self._task, completed=self._bar.tasks[-1].total or 0)
        self._unit = unit
        self._task = self._bar.add_task(description, total=total, info="")

    def update(self, done: int, rows: int) -> None:
        if self._bar is None or self._task is None:
            return
        elapsed = self._bar.tasks[-1].elapsed or 0
        rate = f"  {rows / elapsed:,.0f} bars/s" if elapsed > 0 and rows else ""
        amount = f"{done / 1e6:,.1f} MB" if self._unit == "bytes" else f"{done:,} rows"
        retries = f"  retries {self._retries}" if self._retries else ""
        bars = f"  {rows:,} bars" if rows else ""
        self._bar.update(self._task, completed=done, info=f"{amount}{bars}{rate}{retries}")

    def retry(self, error: BaseException) -> None:
        self._retries += 1
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, info=f"retrying after a connection error ({self._retries})")

    def note(self, text: str) -> None:
        self.phase(text, None, "rows")


def print_load_summary(result: LoadResult, echo: Callable[[str], Any] = print) -> None:
    """The human summary of a load."""
    files = f"{len(result.files)} file{'s' if len(result.files) != 1 else ''}"
    shown = ", ".join(result.symbols[:5]) + (
        f", … ({len(result.symbols):,} symbols)" if len(result.symbols) > 5 else ""
    )
    echo(
        f"loaded {result.bars_loaded:,} bars into {result.bars_table} from {files} "
        f"in {result.duration_s:.2f} s" + (f": {shown}" if shown else "")
    )
    if result.series_version is None:
        return
    series = result.symbols[0] if result.symbols else "the series"
    replaced = f", replaced whole ({result.bars_replaced:,} bars before)" if result.bars_replaced else ""
    count = len(result.rolls)
    echo(
        f"series {series}: version {result.series_version}, adjust {result.adjust}{replaced}; "
        f"{count} roll{'s' if count != 1 else ''}{':' if count else ''}"
    )
    for roll in result.rolls:
        gap = "n/a" if roll["gap"] is None else f"{roll['gap']:+g}"
        echo(f"  {roll['session']}  {roll['from_contract']} → {roll['to_contract']}  gap {gap}")


# --------------------------------------------------------------------------- files


def expand_paths(patterns: Iterable[str | Path]) -> list[Path]:
    """Files named or matched by glob patterns (``*``, ``?``, ``[…]``, ``**``), in order, once each.

    The shell expands unquoted patterns; quoted ones arrive here. A pattern that matches no file
    is bad input, as is a name that does not exist.
    """
    out: list[Path] = []
    seen: set[Path] = set()
    for pattern in patterns:
        text = str(pattern)
        if Path(text).exists() or not (_GLOB_CHARS & set(text)):
            matches = [Path(text)]
        else:
            matches = [Path(m) for m in sorted(glob.glob(text, recursive=True)) if Path(m).is_file()]
            if not matches:
                raise BadInput(f"no file matches {text!r}")
        for path in matches:
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                out.append(path)
    if not out:
        raise BadInput("no bars file given")
    return out


def _is_dbn(path: Path) -> bool:
    """DBN by name (``.dbn``, ``.dbn.zst``, or any ``.dbn.*``, so a wrongly compressed one says so),
    or, for a name that is neither DBN nor CSV/Parquet, by its first bytes."""
    from triangles_polars.dbn import is_dbn_path

    name = path.name.lower()
    if is_dbn_path(path) or ".dbn." in name:
        return True
    if is_tabular_path(path) or not path.is_file():
        return False
    with path.open("rb") as fh:
        return fh.read(4).startswith(_DBN_MAGICS)


@dataclass
class _Source:
    """Something that yields bars-shaped batches: a file, or a continuous series of files."""

    name: str
    unit: str  # "bytes" or "rows"
    total: Callable[[], int | None]
    batches: Callable[[Callable[[int], None]], Iterator[pl.DataFrame]]
    empty_warning: str


def _tabular_source(bar_file: BarFile) -> _Source:
    return _Source(
        name=bar_file.name,
        unit=bar_file.unit,
        total=bar_file.total,
        batches=lambda tick: bar_file.batches(tick),
        empty_warning=f"{bar_file.name} holds no bars (a header or schema only): nothing loaded from it",
    )


def _dbn_source(bars: Any) -> _Source:
    info = bars.files[0]
    return _Source(
        name=str(info.path),
        unit="bytes",
        total=lambda: bars.total_bytes,
        batches=lambda tick: bars.batches(lambda done, total: tick(done)),
        empty_warning=f"{info.path} holds no bars (DBN metadata only): nothing loaded from it",
    )


# --------------------------------------------------------------------------- the load


def load_bars(
    files: str | Path | Sequence[str | Path],
    *,
    symbol: str | None = None,
    definitions: str | Path | Sequence[str | Path] | None = None,
    continuous: str | None = None,
    adjust: str = "none",
    bars_table: str = DEFAULT_BARS_TABLE,
    columns: dict[str, str] | None = None,
    ts_convention: str = "open",
    bar_interval: str | timedelta = "1m",
    database_url: str | None = None,
    progress: LoadProgress | None = None,
    max_retries: int = DEFAULT_MAX_RETRIES,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> LoadResult:
    """Load CSV, Parquet or DBN files into the bars table, all or nothing, idempotently.

    ``files``: paths or glob patterns. ``symbol`` names the rows (CSV/Parquet) or the one series
    of a DBN file. ``definitions``: DBN ``definition`` file(s) for parent-symbology files.
    ``continuous``: a root (``NQ`` or ``GLBX.MDP3:NQ``) to build and load the front-month series
    ``DATASET:ROOT`` from parent files instead of their contracts, with ``adjust`` ``none`` or
    ``difference``. ``columns``, ``ts_convention`` and ``bar_interval`` describe CSV/Parquet
    files. ``database_url`` as for every command (the embedded server when none is set).
    Raises :class:`~triangles_polars.errors.BadInput` (nothing written) for a bad file or option.
    """
    tick = time.perf_counter()
    progress = progress or LoadProgress()
    paths = expand_paths([files] if isinstance(files, str | Path) else files)
    plan = _plan(
        paths,
        symbol=symbol,
        definitions=definitions,
        continuous=continuous,
        adjust=adjust,
        bars_table=bars_table,
        columns=columns,
        ts_convention=ts_convention,
        bar_interval=bar_interval,
        progress=progress,
        batch_rows=batch_rows,
    )
    from triangles_polars.embedded import database_url as resolve_url

    url, _ = resolve_url(database_url)
    result = _run(url, plan, progress, max_retries)
    result.files = [str(p) for p in paths]
    result.duration_s = time.perf_counter() - tick
    return result


def load_frames(
    url: str,
    frames: pl.DataFrame | Iterable[pl.DataFrame],
    *,
    bars_table: str = DEFAULT_BARS_TABLE,
    max_retries: int = DEFAULT_MAX_RETRIES,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> LoadResult:
    """Upsert frames of bars (bars-table shape, unique keys) in one transaction, as a file load does."""
    tick = time.perf_counter()
    split_table_name(bars_table, "bars table name")
    if isinstance(frames, pl.DataFrame):
        frame = frames
        chunks: Callable[[], Iterable[pl.DataFrame]] = lambda: (  # noqa: E731
            frame.slice(i, batch_rows) for i in range(0, frame.height, batch_rows)
        )
    else:
        held = list(frames)
        chunks = lambda: held  # noqa: E731

    def batches(_: Callable[[int], None]) -> Iterator[pl.DataFrame]:
        for chunk in chunks():
            yield _as_bars(chunk)

    source = _Source("frame", "rows", lambda: None, batches, "no bars given: nothing loaded")
    plan = _Plan(sources=[source], bars_table=bars_table, series=None, adjust=None)
    result = _run(url, plan, LoadProgress(), max_retries)
    result.duration_s = time.perf_counter() - tick
    return result


def _as_bars(frame: pl.DataFrame) -> pl.DataFrame:
    missing = [c for c in BAR_COLUMNS if c not in frame.columns]
    if missing:
        raise BadInput(f"bars frame lacks column(s) {', '.join(missing)}")
    return frame.select(list(BAR_COLUMNS)).cast(BAR_SCHEMA)  # type: ignore[arg-type]


@dataclass
class _Plan:
    sources: list[_Source]
    bars_table: str
    series: Any  # ContinuousSeries | None
    adjust: str | None


def _plan(
    paths: list[Path],
    *,
    symbol: str | None,
    definitions: str | Path | Sequence[str | Path] | None,
    continuous: str | None,
    adjust: str,
    bars_table: str,
    columns: dict[str, str] | None,
    ts_convention: str,
    bar_interval: str | timedelta,
    progress: LoadProgress,
    batch_rows: int,
) -> _Plan:
    """Check the options and every file's header; build the continuous series if asked."""
    split_table_name(bars_table, "bars table name")
    if ts_convention not in ("open", "close"):
        raise BadInput(f"unknown ts convention {ts_convention!r}: use open or close")
    if adjust not in ADJUSTS:
        raise BadInput(f"unknown adjustment {adjust!r}: use none or difference")
    if adjust != "none" and not continuous:
        raise BadInput("--adjust applies to a continuous series: give --continuous ROOT")
    if continuous and symbol:
        raise BadInput("--continuous names its series DATASET:ROOT; leave out --symbol")
    interval = parse_duration(bar_interval)
    dbn_paths = [p for p in paths if _is_dbn(p)]
    tabular = [p for p in paths if p not in dbn_paths]
    if not tabular and (columns or ts_convention != "open"):
        raise BadInput(
            "DBN files carry bar open times and their own field names: --columns and "
            "--ts-convention apply to CSV and Parquet files"
        )
    def_paths = (
        expand_paths([definitions] if isinstance(definitions, str | Path) else definitions)
        if definitions
        else []
    )
    if continuous and tabular:
        raise BadInput(f"--continuous builds a series from DBN parent files; {tabular[0]} is not a DBN file")
    if def_paths and not dbn_paths:
        raise BadInput("--definitions applies to DBN files, and none is given")
    if continuous and not def_paths:
        raise BadInput(
            "--continuous needs the instrument definitions of the parent files "
            "(--definitions FILE, a DBN file of schema 'definition')"
        )

    sources: list[_Source] = []
    series = None
    # Every header is checked (in the order given) before any bar is read.
    bar_files = {
        p: open_bar_file(
            p,
            symbol=symbol,
            columns=columns,
            ts_convention=ts_convention,
            bar_interval=interval,
            batch_rows=batch_rows,
        )
        for p in tabular
    }
    dbn_bars = None
    if dbn_paths:
        from triangles_polars.dbn import open_dbn, read_definitions

        defs = read_definitions(def_paths) if def_paths else None
        dbn_bars = open_dbn(
            dbn_paths,
            definitions=defs,
            symbol=symbol,
            extra_columns=bool(continuous),
            batch_rows=batch_rows,
        )
    if continuous:
        assert dbn_bars is not None
        series = _build_series(dbn_bars, continuous, adjust, progress)
        sources.append(_series_source(series, dbn_bars, progress))
    else:
        for path in paths:
            if path in bar_files:
                sources.append(_tabular_source(bar_files[path]))
            else:
                assert dbn_bars is not None
                one = next(f for f in dbn_bars.files if f.path == path)
                sources.append(_dbn_source(replace(dbn_bars, files=(one,))))
    return _Plan(sources=sources, bars_table=bars_table, series=series, adjust=adjust if continuous else None)


def _build_series(dbn_bars: Any, root: str, adjust: str, progress: LoadProgress) -> Any:
    from triangles_polars.continuous import build_continuous

    passes = itertools.count(1)
    names = ", ".join(f.path.name for f in dbn_bars.files)

    def source() -> Iterator[pl.DataFrame]:
        progress.phase(f"{names}: pass {next(passes)}", dbn_bars.total_bytes, "bytes")
        return dbn_bars.batches(lambda done, total: progress.update(done, 0))

    datasets = sorted({f.dataset for f in dbn_bars.files})
    dataset = datasets[0] if len(datasets) == 1 and ":" not in root else None
    return build_continuous(source, root, adjust=adjust, dataset=dataset)


def _series_source(series: Any, dbn_bars: Any, progress: LoadProgress) -> _Source:
    names = ", ".join(str(f.path) for f in dbn_bars.files)
    return _Source(
        name=series.symbol,
        unit="bytes",
        total=lambda: None,  # the series' source reports its own passes
        batches=lambda tick: series.batches(),
        empty_warning=f"{names}: no bars of {series.root} to build {series.symbol} from: nothing loaded",
    )


# --------------------------------------------------------------------------- the transaction


@dataclass
class _Keys:
    """Duplicate keys: within a batch at once; across batches by each symbol's time spans."""

    spans: dict[str, list[tuple[Any, Any]]] = field(default_factory=dict)
    overlap: bool = False

    def add(self, batch: pl.DataFrame, source: str) -> None:
        per_symbol = batch.group_by("symbol").agg(
            pl.col("ts").min().alias("lo"),
            pl.col("ts").max().alias("hi"),
            pl.len().alias("n"),
            pl.col("ts").n_unique().alias("unique"),
        )
        if (per_symbol["n"] != per_symbol["unique"]).any():
            dupes = batch.filter(pl.struct("symbol", "ts").is_duplicated()).sort("symbol", "ts")
            row = dupes.row(0, named=True)
            raise BadInput(
                f"{source}: {dupes.height:,} rows share a (symbol, ts) key, first {row['symbol']} "
                f"{row['ts'].isoformat()}"
            )
        for symbol, lo, hi, _, _ in per_symbol.iter_rows():
            spans = self.spans.setdefault(symbol, [])
            if not self.overlap and any(lo <= b and hi >= a for a, b in spans):
                self.overlap = True
            spans.append((lo, hi))
            if len(spans) > 64:  # merge, to keep the check cheap on long unsorted files
                spans[:] = [(min(a for a, _ in spans), max(b for _, b in spans))]


@dataclass
class _Written:
    rows: int = 0
    symbols: set[str] = field(default_factory=set)
    empty: list[str] = field(default_factory=list)


def _batches(plan: _Plan, progress: LoadProgress, written: _Written) -> Iterator[tuple[str, pl.DataFrame]]:
    """Every source's batches, with progress and the duplicate check (runs in the read-ahead thread)."""
    keys = _Keys()
    for source in plan.sources:
        if plan.series is None:
            progress.phase(source.name, source.total(), source.unit)
        rows = 0

        def tick(done: int) -> None:
            progress.update(done, written.rows)

        for batch in source.batches(tick):
            if batch.height == 0:
                continue
            keys.add(batch, source.name)
            rows += batch.height
            written.rows += batch.height
            written.symbols.update(batch["symbol"].unique().to_list())
            yield source.name, batch
        if rows == 0:
            written.empty.append(source.empty_warning)
    if keys.overlap:
        yield "", pl.DataFrame()  # the consumer checks the staging table for duplicates


def _run(url: str, plan: _Plan, progress: LoadProgress, max_retries: int) -> LoadResult:
    schema, table = split_table_name(plan.bars_table, "bars table name")
    outcome: dict[str, Any] = {}

    def body(cur: Any) -> _Written:
        from triangles_polars.threads import BatchReader

        outcome.clear()
        written = _Written()
        reader = BatchReader(_batches(plan, progress, written), depth=READ_AHEAD)
        try:
            batches = iter(reader)
            first = next(batches, None)
            if first is None:  # nothing at all: no table is touched
                return written
            target = _Target(cur, schema, table)
            if plan.series is not None:
                outcome.update(_record_series(cur, schema, plan.series, plan.adjust or "none"))
                if outcome["replace"]:
                    outcome["deleted"] = target.delete(plan.series.symbol)
            check_duplicates = False
            for _, batch in itertools.chain([first], batches):
                if batch.height == 0:  # two batches of a symbol overlap in time
                    check_duplicates = True
                else:
                    target.write(batch)
        finally:
            reader.close()
        progress.note(f"writing {written.rows:,} bars into {plan.bars_table}")
        target.finish(check_duplicates)
        if plan.series is not None:
            _write_rolls(cur, schema, plan.series, replace_all=outcome["replace"])
        return written

    with Session(url, LOADER_NAME, RetryPolicy(max_retries=max_retries), on_retry=progress.retry) as session:
        written = session.run("loading bars", body)

    result = LoadResult(bars_loaded=written.rows, bars_table=plan.bars_table, symbols=sorted(written.symbols))
    result.warnings = list(written.empty)
    if written.rows == 0 and len(plan.sources) > 1:
        result.warnings.append("no bars in any of the files: nothing loaded")
    if plan.series is not None and written.rows:
        result.series_version = outcome.get("version")
        result.adjust = plan.adjust
        result.bars_replaced = outcome.get("deleted", 0)
        result.rolls = [
            {**row, "session": row["session"].isoformat()} for row in plan.series.rolls.to_dicts()
        ]
    return result


_STAGING_TYPES = {
    "symbol": "text",
    "ts": "timestamp with time zone",
    "open": "double precision",
    "high": "double precision",
    "low": "double precision",
    "close": "double precision",
    "volume": "bigint",
}
_DUPLICATE_KEY = re.compile(r"Key \(symbol, ts\)=\((.*?)\) already exists")


class _Target:
    """The bars table inside one load's transaction: where each batch goes, and the final upsert.

    On creation: the table is created if missing (or checked: the bar columns, and a primary key
    or unique index on ``(symbol, ts)`` for the upsert), then loads into it are serialised with
    a transaction-level advisory lock, so what this load finds in the table stays so until it
    commits.

    A batch's rows go through the temporary staging table, and at the end ``INSERT … SELECT …
    ON CONFLICT (symbol, ts) DO UPDATE`` upserts them (a row equal to the stored one is not
    rewritten). Rows of a symbol the table holds no row of cannot conflict with anything but
    each other, so when the table has exactly the product's column types they skip both the
    staging table and the upsert and are bulk-ingested straight into the table: the same rows,
    for half the work (the staging copy, and the speculative insertion ``ON CONFLICT`` does per
    row). A key the files repeat then fails the primary key, which is reported as bad input.
    """

    def __init__(self, cur: Any, schema: str | None, table: str) -> None:
        self.cur, self.schema, self.table = cur, schema, table
        self.name = qualified(schema, table)
        self.shown = f"{schema}.{table}" if schema else table
        self.ts_type, self.direct = self._prepare()
        self.fresh: dict[str, bool] = {}
        self.staged: set[str] = set()
        cur.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            parameters=(f"triangles bars load {self.name}",),
        )

    def _prepare(self) -> tuple[str, bool]:
        existing = table_columns(self.cur, self.schema, self.table)
        if existing is None:
            self.cur.execute(bars_table_ddl(self.schema, self.table))
            return _STAGING_TYPES["ts"], True
        if missing := [c for c in BAR_COLUMNS if c not in existing]:
            raise BadInput(f"bars table {self.shown!r} exists without column(s) {', '.join(missing)}")
        keyed = fetch_all(
            self.cur,
            """
            SELECT count(*) FROM pg_index i
            WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indnkeyatts = 2
              AND (SELECT array_agg(a.attname::text ORDER BY a.attname::text) FROM pg_attribute a
                   WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[])) = ARRAY['symbol', 'ts']
            """,
            (self.name,),
        )[0][0]
        if not keyed:
            raise BadInput(
                f"bars table {self.shown!r} has no primary key or unique index on (symbol, ts), which "
                "loading upserts on: add one (ALTER TABLE … ADD PRIMARY KEY (symbol, ts))"
            )
        return existing["ts"], existing == _STAGING_TYPES

    def delete(self, symbol: str) -> int:
        """Delete a symbol's bars (a series replaced whole); returns how many."""
        return int(
            fetch_all(
                self.cur,
                f"WITH gone AS (DELETE FROM {self.name} WHERE symbol = $1 RETURNING 1) SELECT count(*) FROM gone",
                (symbol,),
            )[0][0]
        )

    def write(self, batch: pl.DataFrame) -> None:
        symbols = batch["symbol"].unique().to_list()
        for symbol in symbols:
            if symbol not in self.fresh:
                self.fresh[symbol] = self.direct and not self._has_rows(symbol)
        direct = [s for s in symbols if self.fresh[s]]
        if len(direct) == len(symbols):
            self._ingest(batch)
        elif not direct:
            self._stage(batch, symbols)
        else:
            mine = pl.col("symbol").is_in(direct)
            self._ingest(batch.filter(mine))
            self._stage(batch.filter(~mine), [s for s in symbols if not self.fresh[s]])

    def _has_rows(self, symbol: str) -> bool:
        return bool(
            fetch_all(self.cur, f"SELECT EXISTS (SELECT 1 FROM {self.name} WHERE symbol = $1)", (symbol,))[0][
                0
            ]
        )

    def _ingest(self, batch: pl.DataFrame) -> None:
        try:
            self.cur.adbc_ingest(self.table, batch.to_arrow(), mode="append", db_schema_name=self.schema)
        except Exception as exc:
            if duplicate := _DUPLICATE_KEY.search(str(exc)):
                raise BadInput(
                    f"the files hold the (symbol, ts) key ({duplicate.group(1)}) more than once "
                    "(or another session wrote it meanwhile): nothing loaded"
                ) from None
            raise

    def _stage(self, batch: pl.DataFrame, symbols: list[str]) -> None:
        if not self.staged:
            self.cur.execute(
                f"CREATE TEMPORARY TABLE IF NOT EXISTS {quote_ident(STAGING_TABLE)} ("
                + ", ".join(f"{quote_ident(c)} {t}" for c, t in _STAGING_TYPES.items())
                + ") ON COMMIT DROP"
            )
        self.staged.update(symbols)
        self.cur.adbc_ingest(STAGING_TABLE, batch.to_arrow(), mode="append", temporary=True)

    def finish(self, check_duplicates: bool) -> None:
        """Staging → bars table: a plain insert for symbols without rows (a table of other column
        types), an upsert for the rest."""
        if not self.staged:
            return
        if check_duplicates:
            _find_duplicates(self.cur)
        symbols = sorted(self.staged)
        fresh = [s for s in symbols if not self._has_rows(s)]
        known = [s for s in symbols if s not in set(fresh)]
        columns = ", ".join(quote_ident(c) for c in BAR_COLUMNS)
        ts = "ts AT TIME ZONE 'UTC'" if self.ts_type == "timestamp without time zone" else "ts"
        select = ", ".join(ts if c == "ts" else quote_ident(c) for c in BAR_COLUMNS)
        source = f"SELECT {select} FROM {quote_ident(STAGING_TABLE)}"
        if fresh:
            where, params = (" WHERE symbol = ANY($1)", (fresh,)) if known else ("", None)
            try:
                self.cur.execute(f"INSERT INTO {self.name} ({columns}) {source}{where}", parameters=params)
            except Exception as exc:
                if duplicate := _DUPLICATE_KEY.search(str(exc)):
                    raise BadInput(
                        f"the files hold the (symbol, ts) key ({duplicate.group(1)}) more than once: nothing loaded"
                    ) from None
                raise
        if known:
            prices = BAR_COLUMNS[2:]
            updates = ", ".join(f"{quote_ident(c)} = EXCLUDED.{quote_ident(c)}" for c in prices)
            stored = ", ".join(f"b.{quote_ident(c)}" for c in prices)
            given = ", ".join(f"EXCLUDED.{quote_ident(c)}" for c in prices)
            where, params = (" WHERE symbol = ANY($1)", (known,)) if fresh else ("", None)
            self.cur.execute(
                f"INSERT INTO {self.name} AS b ({columns}) {source}{where} ON CONFLICT (symbol, ts) "
                f"DO UPDATE SET {updates} WHERE ({stored}) IS DISTINCT FROM ({given})",
                parameters=params,
            )


def _find_duplicates(cur: Any) -> None:
    rows = fetch_all(
        cur,
        f"SELECT symbol, ts, count(*) OVER () FROM {quote_ident(STAGING_TABLE)} "
        "GROUP BY symbol, ts HAVING count(*) > 1 ORDER BY symbol, ts LIMIT 1",
    )
    if rows:
        symbol, ts, n = rows[0]
        raise BadInput(
            f"the files hold {n} (symbol, ts) key(s) more than once, first {symbol} {ts.isoformat()}: "
            "overlapping files or repeated rows; nothing loaded"
        )


# --------------------------------------------------------------------------- series and rolls


def _series_tables_ddl(schema: str | None) -> list[str]:
    return [
        f"CREATE TABLE IF NOT EXISTS {qualified(schema, ROLLS_TABLE)} ("
        "symbol text NOT NULL, session date NOT NULL, from_contract text NOT NULL, "
        "to_contract text NOT NULL, gap double precision, PRIMARY KEY (symbol, session))",
        f"CREATE TABLE IF NOT EXISTS {qualified(schema, SERIES_TABLE)} ("
        "symbol text PRIMARY KEY, version integer NOT NULL, adjust text NOT NULL, "
        "loaded_at timestamptz NOT NULL DEFAULT now())",
    ]


def _record_series(cur: Any, schema: str | None, series: Any, adjust: str) -> dict[str, Any]:
    """Bump (or start) the series' version; say whether its bars are replaced whole."""
    for ddl in _series_tables_ddl(schema):
        cur.execute(ddl)
    name = qualified(schema, SERIES_TABLE)
    before = fetch_all(
        cur, f"SELECT version, adjust FROM {name} WHERE symbol = $1 FOR UPDATE", (series.symbol,)
    )
    replace_all = adjust == "difference" or bool(before and before[0][1] == "difference")
    version = 1 if not before else int(before[0][0]) + (1 if replace_all else 0)
    cur.execute(
        f"INSERT INTO {name} (symbol, version, adjust, loaded_at) VALUES ($1, $2, $3, now()) "
        "ON CONFLICT (symbol) DO UPDATE SET version = EXCLUDED.version, adjust = EXCLUDED.adjust, "
        "loaded_at = EXCLUDED.loaded_at",
        parameters=(series.symbol, version, adjust),
    )
    return {"version": version, "replace": replace_all, "deleted": 0}


def _write_rolls(cur: Any, schema: str | None, series: Any, *, replace_all: bool) -> None:
    """The series' rolls replace its rows in ``bars_rolls`` (only the covered sessions' when extending)."""
    name = qualified(schema, ROLLS_TABLE)
    if replace_all or series.schedule.height == 0:
        cur.execute(f"DELETE FROM {name} WHERE symbol = $1", parameters=(series.symbol,))
    else:
        first, last = series.schedule["session"].min(), series.schedule["session"].max()
        cur.execute(
            f"DELETE FROM {name} WHERE symbol = $1 AND session > $2 AND session <= $3",
            parameters=(series.symbol, first, last),
        )
    if series.rolls.height:
        cur.adbc_ingest(ROLLS_TABLE, series.rolls.to_arrow(), mode="append", db_schema_name=schema)


def series_version(cur: Any, bars_table: str, symbol: str) -> int:
    """The version of a loaded series (``bars_series`` in the bars table's schema); 0 when unknown.

    A back-adjusted continuous series changes its whole past at every load, and its version goes
    up each time (``docs/contract.md#continuous-front-month-series``): event coverage recorded for
    an older version is void. Reads through ``cur`` (any open transaction); creates nothing.
    """
    schema, _ = split_table_name(bars_table, "bars table name")
    if not table_exists(cur, schema, SERIES_TABLE):
        return 0
    rows = fetch_all(
        cur, f"SELECT version FROM {qualified(schema, SERIES_TABLE)} WHERE symbol = $1", (symbol,)
    )
    return int(rows[0][0]) if rows else 0


__all__ = [
    "ROLLS_TABLE",
    "SERIES_TABLE",
    "LoadProgress",
    "LoadResult",
    "TerminalLoadProgress",
    "expand_paths",
    "load_bars",
    "load_frames",
    "print_load_summary",
    "series_version",
]
