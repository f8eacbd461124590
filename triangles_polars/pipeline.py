"""The backfill pipeline: source → hygiene → detect → sink, as stages.

:func:`backfill` is the whole job; the CLI's ``triangles backfill`` is a thin layer over it.
:func:`compute_events` is the pure part (Polars only), usable on any bars frame.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
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
from triangles_polars.errors import BadInput
from triangles_polars.hygiene import reason_codes
from triangles_polars.settings import BackfillSettings, HygieneProfile, Thresholds
from triangles_polars.sink import Chunk, Chunker, EventWriter
from triangles_polars.source import (
    READER_NAME,
    check_bars_table,
    first_duplicate,
    has_unique_key,
    stream_bars,
    symbol_has_bars,
)
from triangles_polars.stream import DetectionResult, StreamingDetector, merge_counts


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


class Progress:
    """Observer of a run; the default does nothing. The CLI subclasses it with a progress bar."""

    def start(self, total: float) -> None:
        """The run starts; ``total`` is the span of bar time to cover, in seconds."""

    def advance(self, done: float, *, bars: int, events: int, chunks: int) -> None:
        """Bars up to ``done`` seconds into the span were detected and their chunks queued."""

    def retry(self, error: BaseException) -> None:
        """A connection error is being retried."""


def compute_events(
    bars: pl.DataFrame,
    *,
    symbol: str,
    strength: int,
    bar_interval: timedelta,
    profile: HygieneProfile,
    thresholds: Thresholds,
    start: datetime,
    end_exclusive: datetime,
) -> DetectionResult:
    """Hygiene + detection on bars of one symbol (``ts`` = open time, sorted, unique), no database.

    Returns the events confirmed in ``[start, end_exclusive)`` sorted by ``confirmed_at`` and
    the bad-bar counts over all the bars given. (One slice of :class:`StreamingDetector`.)
    """
    detector = StreamingDetector(symbol, strength, bar_interval, profile, thresholds, start, end_exclusive)
    return detector.push(bars)


class BatchReader:
    """Pulls bar batches from a stream in a background thread, ``depth`` batches ahead.

    connectorx releases the GIL while it reads, so reading the next batch overlaps detecting and
    writing the current one; memory holds at most ``depth + 1`` batches.
    """

    _DONE = object()

    def __init__(self, batches: Iterator[pl.DataFrame], depth: int) -> None:
        self._batches = batches
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self.busy_s = 0.0
        self._thread = threading.Thread(target=self._run, name="triangles-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            tick = time.perf_counter()
            for bars in self._batches:
                self.busy_s += time.perf_counter() - tick
                if self._stop.is_set():
                    return
                self._put(bars)
                tick = time.perf_counter()
            self._put(self._DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)

    def _put(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator[pl.DataFrame]:
        while True:
            item = self._queue.get()
            if item is self._DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Stop reading ahead (the thread ends after its current read)."""
        self._stop.set()


class WriterThread:
    """Runs the sink in a thread of its own, ``depth`` chunks behind detection.

    Besides overlapping writing with detecting, this keeps every ADBC call off the main thread:
    there, ADBC turns Ctrl-C into a statement cancel that a finished statement silently
    swallows. Here Ctrl-C reaches the main thread, which lets the chunk in flight finish (it
    commits or rolls back whole) and starts no other.
    """

    _DONE = object()

    def __init__(
        self, writer: EventWriter, on_chunk: Callable[[Chunk, bool], None] | None, depth: int
    ) -> None:
        self._writer = writer
        self._on_chunk = on_chunk
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self.busy_s = 0.0
        self._thread = threading.Thread(target=self._run, name="triangles-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if self._stop.is_set():  # interrupted or failed: start nothing more
                    return
                if item is self._DONE:
                    tick = time.perf_counter()
                    self._writer.finish_run()
                    self.busy_s += time.perf_counter() - tick
                    return
                tick = time.perf_counter()
                written = self._writer.write(item)
                self.busy_s += time.perf_counter() - tick
                if self._on_chunk is not None:  # after the commit, before the next chunk starts
                    self._on_chunk(item, not written)
        except BaseException as exc:
            self._error = exc
        finally:
            self._writer.close()

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, chunks: list[Chunk]) -> None:
        """Queue chunks for writing (waits while ``depth`` chunks are pending)."""
        for chunk in chunks:
            while True:
                self._check()
                try:
                    self._queue.put(chunk, timeout=0.1)
                    break
                except queue.Full:
                    if not self._thread.is_alive():
                        self._check()
                        raise RuntimeError("the writer thread stopped") from None

    def finish(self) -> None:
        """Write everything queued, mark the run done, and wait."""
        self._queue.put(self._DONE)
        while self._thread.is_alive():
            self._thread.join(timeout=0.1)
        self._check()

    def stop(self) -> None:
        """Start no new chunk; wait (briefly) for the one in flight."""
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(self._DONE)
        self._thread.join(timeout=30)


def backfill(
    settings: BackfillSettings,
    progress: Progress | None = None,
    on_chunk: Callable[[Chunk, bool], None] | None = None,
) -> RunSummary:
    """Run the whole job for one symbol and range; see SPEC §4–5.

    Bars stream in batches (see :func:`stream_bars`) through hygiene and detection; events
    are cut into chunks and each chunk is written as one transaction as soon as it is complete.
    Raises :class:`BadInput` (exit 2), :class:`DatabaseUnavailable` / :class:`RetriesExhausted`
    (exit 3). Committed chunks stay committed on any failure; the same call resumes after them.
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

    # --- source: check the table (catalog only: no lock on the bars) before reading anything
    reader_url = with_application_name(url, READER_NAME)

    def inspect() -> tuple[str, Any]:
        conn = connect(reader_url)
        try:
            with conn.cursor() as cur:
                ts_type = check_bars_table(cur, settings)
                duplicate = None
                if not has_unique_key(cur, settings):
                    # Streaming could only find duplicates after writing: look for them first.
                    duplicate = first_duplicate(
                        cur, settings, ts_type, settings.anchor_ts, settings.range_end
                    )
                return ts_type, duplicate
        finally:
            close_quietly(conn)

    ts_type, duplicate = with_retries(inspect, "inspecting the bars table", policy, url, count_read_retry)
    if duplicate is not None:
        raise BadInput(
            f"bars of {settings.symbol!r} have duplicate timestamps, first at {duplicate.isoformat()}; "
            "fix the bars table (primary key (symbol, ts))"
        )

    detector = StreamingDetector(
        settings.symbol,
        settings.strength,
        settings.interval,
        settings.profile,
        settings.thresholds,
        settings.range_start,
        settings.range_end,
    )
    chunker = Chunker(settings.range_start, settings.range_end, settings.chunk_events)
    writer = EventWriter(url, settings, policy, on_retry=progress.retry)
    reader = BatchReader(
        stream_bars(
            url,
            settings,
            ts_type,
            settings.anchor_ts,
            settings.range_end,
            policy,
            count_read_retry,
        ),
        settings.prefetch,
    )
    sink = WriterThread(writer, on_chunk, settings.prefetch)
    bars_n = bad_n = events_n = 0
    by_rule: dict[str, int] = {}
    detect_s = 0.0

    span_s = (settings.range_end - settings.anchor_ts).total_seconds()
    progress.start(span_s)
    try:
        for bars in reader:
            tick = time.perf_counter()
            result = detector.push(bars)
            detect_s += time.perf_counter() - tick
            bars_n += result.bars
            bad_n += result.bad_bars
            events_n += result.events.height
            merge_counts(by_rule, result.bad_by_rule)
            sink.submit(chunker.add(result.events))
            done = (bars["ts"][-1] - settings.anchor_ts).total_seconds()
            progress.advance(done, bars=bars_n, events=events_n, chunks=writer.stats.chunks)
        # Bad input that only the whole window reveals; nothing was written in these cases.
        if bars_n == 0:
            if not with_retries(lambda: symbol_has_bars(reader_url, settings), "reading bars", policy, url):
                raise BadInput(f"no bars for symbol {settings.symbol!r} in {settings.bars_table!r}")
            raise BadInput(
                f"no bars for {settings.symbol!r} between {settings.anchor_ts.isoformat()} "
                f"and {settings.range_end.isoformat()}: empty range"
            )
        if bad_n == bars_n:
            codes = ", ".join(f"{k} {v}" for k, v in by_rule.items())
            raise BadInput(f"all {bars_n} bars of {settings.symbol!r} failed hygiene ({codes})")
        sink.submit(chunker.finish())
        sink.finish()
    except BaseException:
        sink.stop()
        raise
    finally:
        reader.close()
        summary.retries = read_retries + writer.stats.retries

    stats = writer.stats
    order = list(reason_codes(settings.thresholds).values())
    summary.bars_processed = bars_n
    summary.bad_bars_skipped = bad_n
    summary.bad_bars_by_rule = {code: by_rule[code] for code in order if code in by_rule}
    summary.triangles = events_n
    summary.chunks = stats.chunks + stats.chunks_skipped
    summary.chunks_skipped = stats.chunks_skipped
    summary.commits = stats.commits
    summary.rows_inserted = stats.rows_inserted
    summary.rows_deleted = stats.rows_deleted
    summary.purged = stats.purged
    summary.stage_seconds = {"read": reader.busy_s, "detect": detect_s, "write": sink.busy_s}

    if settings.export_dir is not None:
        from triangles_polars.export import export_range_from_db

        tick = time.perf_counter()
        export_range_from_db(url, settings, settings.export_dir)
        summary.export = str(settings.export_dir)
        summary.stage_seconds["export"] = time.perf_counter() - tick
    summary.duration_s = round(time.perf_counter() - started, 3)
    summary.stage_seconds = {k: round(v, 3) for k, v in summary.stage_seconds.items()}
    return summary
