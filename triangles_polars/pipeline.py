"""The backfill pipeline: source → hygiene → detect → sink, as stages.

:func:`backfill` is the whole job; the CLI's ``triangles backfill`` is a thin layer over it.
:func:`compute_events` is the pure part (Polars only), usable on any bars frame.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import polars as pl

from triangles_polars.db import (
    RetryPolicy,
    close_quietly,
    connect,
    mask_url,
    resolve_database_url,
    with_application_name,
    with_retries,
)
from triangles_polars.detect import EVENT_SCHEMA, confirmed_between, detect_events
from triangles_polars.errors import BadInput
from triangles_polars.hygiene import count_bad_bars, flag_bars
from triangles_polars.settings import BackfillSettings, HygieneProfile, Thresholds
from triangles_polars.sink import Chunk, EventWriter, plan_chunks
from triangles_polars.source import READER_NAME, check_bars_table, read_bars, symbol_has_bars


@dataclass
class RunSummary:
    """What a run did. ``to_json()`` is the ``--json`` object of SPEC §6."""

    bars_processed: int = 0
    bad_bars_skipped: int = 0
    bad_bars_by_rule: dict[str, int] = field(default_factory=dict)
    triangles: int = 0
    chunks: int = 0
    commits: int = 0
    retries: int = 0
    duration_s: float = 0.0
    symbol: str = ""
    strength: int = 0
    start: str = ""
    end_exclusive: str = ""
    anchor: str = ""
    hygiene: str = ""
    mode: str = ""
    chunks_skipped: int = 0
    rows_inserted: int = 0
    rows_deleted: int = 0
    purged: int = 0
    events_table: str = ""
    database: str = ""
    export: str | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return asdict(self)


@dataclass
class DetectionResult:
    """Output of the pure compute stage."""

    events: pl.DataFrame
    bars: int
    bad_bars: int
    bad_by_rule: dict[str, int]


class Progress:
    """Observer of a run; the default does nothing. The CLI subclasses it with a progress bar."""

    def stage(self, name: str, total: int | None = None) -> None:
        """A stage starts (``read``, ``detect``, ``write``)."""

    def advance(self, done: int, **info: Any) -> None:
        """Progress within the stage (``done`` out of the stage's ``total``)."""

    def retry(self, error: BaseException) -> None:
        """A connection error is being retried."""


def compute_events(
    bars: pl.DataFrame | pl.LazyFrame,
    *,
    symbol: str,
    strength: int,
    bar_interval: timedelta,
    profile: HygieneProfile,
    thresholds: Thresholds,
    start: datetime,
    end_exclusive: datetime,
) -> DetectionResult:
    """Hygiene + detection on bars of one symbol (``ts`` = open time, sorted, unique).

    Returns the events confirmed in ``[start, end_exclusive)`` sorted by ``confirmed_at`` and
    the bad-bar counts over all the bars given.
    """
    flagged = flag_bars(bars.lazy(), profile, thresholds)
    events = confirmed_between(
        detect_events(flagged.filter(~pl.col("is_bad")), symbol, strength, bar_interval),
        start,
        end_exclusive,
    )
    # One collect for both outputs: Polars shares the common hygiene sub-plan.
    events_df, counts_df = pl.collect_all([events, count_bad_bars(flagged, thresholds)])
    counts = counts_df.row(0, named=True)
    bars_n = int(counts.pop("bars"))
    bad = int(counts.pop("bad_bars") or 0)
    return DetectionResult(
        events=events_df.cast(EVENT_SCHEMA),
        bars=bars_n,
        bad_bars=bad,
        bad_by_rule={code: int(n or 0) for code, n in counts.items() if n},
    )


def backfill(
    settings: BackfillSettings,
    progress: Progress | None = None,
    on_chunk: Callable[[Chunk, bool], None] | None = None,
) -> RunSummary:
    """Run the whole job for one symbol and range; see SPEC §4–5.

    Raises :class:`BadInput` (exit 2), :class:`DatabaseUnavailable` /
    :class:`RetriesExhausted` (exit 3). Committed chunks stay committed on any failure, and the
    same call resumes after them.
    """
    started = time.perf_counter()
    progress = progress or Progress()
    policy = RetryPolicy(max_retries=settings.max_retries, backoff_s=settings.backoff_s)
    url, _source = resolve_database_url(settings.database_url)
    summary = RunSummary(
        symbol=settings.symbol,
        strength=settings.strength,
        start=settings.range_start.isoformat(),
        end_exclusive=settings.range_end.isoformat(),
        anchor=settings.anchor_ts.isoformat(),
        hygiene=settings.profile,
        mode=settings.mode,
        events_table=settings.events_table,
        database=mask_url(url),
    )

    read_retries = 0

    def count_read_retry(exc: BaseException) -> None:
        nonlocal read_retries
        read_retries += 1
        progress.retry(exc)

    # --- source
    progress.stage("read")
    tick = time.perf_counter()
    reader_url = with_application_name(url, READER_NAME)

    def inspect() -> str:
        # Catalog queries only: no lock on the bars table, so a writer elsewhere never blocks us here.
        conn = connect(reader_url)
        try:
            with conn.cursor() as cur:
                return check_bars_table(cur, settings)
        finally:
            close_quietly(conn)

    ts_type = with_retries(inspect, "inspecting the bars table", policy, url, count_read_retry)
    bars = read_bars(
        url,
        settings,
        ts_type,
        settings.anchor_ts,
        settings.range_end,
        policy,
        count_read_retry,
    )
    summary.stage_seconds["read"] = time.perf_counter() - tick
    if bars.height == 0:
        if not with_retries(lambda: symbol_has_bars(reader_url, settings), "reading bars", policy, url):
            raise BadInput(f"no bars for symbol {settings.symbol!r} in {settings.bars_table!r}")
        raise BadInput(
            f"no bars for {settings.symbol!r} between {settings.anchor_ts.isoformat()} "
            f"and {settings.range_end.isoformat()}: empty range"
        )
    progress.advance(bars.height, bars=bars.height)

    # --- hygiene + detect
    progress.stage("detect")
    tick = time.perf_counter()
    result = compute_events(
        bars,
        symbol=settings.symbol,
        strength=settings.strength,
        bar_interval=settings.interval,
        profile=settings.profile,
        thresholds=settings.thresholds,
        start=settings.range_start,
        end_exclusive=settings.range_end,
    )
    del bars
    if result.bad_bars == result.bars:
        codes = ", ".join(f"{k} {v}" for k, v in result.bad_by_rule.items())
        raise BadInput(f"all {result.bars} bars of {settings.symbol!r} failed hygiene ({codes})")
    summary.bars_processed = result.bars
    summary.bad_bars_skipped = result.bad_bars
    summary.bad_bars_by_rule = result.bad_by_rule
    summary.triangles = result.events.height
    summary.stage_seconds["detect"] = time.perf_counter() - tick

    # --- sink
    tick = time.perf_counter()
    chunks = plan_chunks(result.events, settings.range_start, settings.range_end, settings.chunk_events)
    progress.stage("write", total=result.events.height)
    written = 0

    def chunk_done(chunk: Chunk, skipped: bool) -> None:
        nonlocal written
        written += chunk.size
        progress.advance(written, chunk=chunk.chunk_no + 1, chunks=len(chunks), skipped=skipped)
        if on_chunk is not None:
            on_chunk(chunk, skipped)

    writer = EventWriter(url, settings, policy, on_retry=progress.retry)
    try:
        stats = writer.write_all(chunks, chunk_done)
    finally:
        summary.retries = read_retries + writer.stats.retries
        writer.close()
    summary.chunks = len(chunks)
    summary.chunks_skipped = stats.chunks_skipped
    summary.commits = stats.commits
    summary.rows_inserted = stats.rows_inserted
    summary.rows_deleted = stats.rows_deleted
    summary.purged = stats.purged
    summary.stage_seconds["write"] = time.perf_counter() - tick

    if settings.export_dir is not None:
        from triangles_polars.export import export_events

        tick = time.perf_counter()
        export_events(
            result.events,
            settings.export_dir,
            symbol=settings.symbol,
            strength=settings.strength,
            range_start=settings.range_start,
            range_end=settings.range_end,
        )
        summary.export = str(settings.export_dir)
        summary.stage_seconds["export"] = time.perf_counter() - tick
    summary.duration_s = round(time.perf_counter() - started, 3)
    summary.stage_seconds = {k: round(v, 3) for k, v in summary.stage_seconds.items()}
    return summary
