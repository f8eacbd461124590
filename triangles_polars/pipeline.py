"""The backfill, as stages: source → hygiene + detect → sink (→ export).

:func:`backfill` is the whole job; the CLI's ``triangles backfill`` is a thin layer over it.
Each task reads its bars once (reader thread), runs hygiene once and detection once per strength
(this thread), and hands complete chunks to the sink (writer thread), one transaction each.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from triangles_polars.chunks import Chunk, MultiChunker
from triangles_polars.db import Session
from triangles_polars.embedded import database_url
from triangles_polars.errors import BadInput
from triangles_polars.hygiene import reason_codes
from triangles_polars.masking import mask_url
from triangles_polars.settings import BackfillSettings, Task
from triangles_polars.source import READER_NAME, BarSource
from triangles_polars.stream import StreamingDetector, merge_counts
from triangles_polars.summary import Progress, RunSummary
from triangles_polars.threads import BatchReader, WriterThread
from triangles_polars.writer import WRITER_NAME, ChunkWriter, WriteStats

ChunkCallback = Callable[[Chunk, bool], None]


def backfill(
    settings: BackfillSettings, progress: Progress | None = None, on_chunk: ChunkCallback | None = None
) -> RunSummary:
    """Run the whole job (``docs/contract.md#triangle-events``, ``#writing-idempotency-and-faults``).

    Raises :class:`BadInput` (exit 2), :class:`DatabaseUnavailable` / :class:`RetriesExhausted`
    (exit 3). Committed chunks stay committed on any failure; the same call resumes after them.
    """
    started = time.perf_counter()
    progress = progress or Progress()
    url, _source = database_url(settings.database_url)
    summary = new_summary(settings, url)
    for task in settings.tasks():
        add_task(summary, run_task(url, settings, task, progress, on_chunk), settings)
    if settings.export_dir is not None:
        from triangles_polars.export import export_stored

        tick = time.perf_counter()
        export_stored(url, settings, settings.export_dir)
        summary.export = str(settings.export_dir)
        summary.stage_seconds["export"] = time.perf_counter() - tick
    summary.duration_s = round(time.perf_counter() - started, 3)
    summary.stage_seconds = {k: round(v, 3) for k, v in summary.stage_seconds.items()}
    return summary


@dataclass
class TaskResult:
    """What one task did."""

    bars: int = 0
    bad_bars: int = 0
    bad_by_rule: dict[str, int] = field(default_factory=dict)
    triangles_by_strength: dict[int, int] = field(default_factory=dict)
    write: WriteStats = field(default_factory=WriteStats)
    retries: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)


def run_task(
    url: str,
    settings: BackfillSettings,
    task: Task,
    progress: Progress,
    on_chunk: ChunkCallback | None = None,
) -> TaskResult:
    """One task: inspect the source, then stream it through detection into the sink."""
    result = TaskResult(triangles_by_strength=dict.fromkeys(task.strengths, 0))
    span = task.time_range
    with Session(url, READER_NAME, settings.retry, progress.retry) as reader:
        source = BarSource(task.symbol, settings.tables, settings.read)
        source = reader.run(
            "inspecting the bars table", lambda cur: source.inspect(cur, span.anchor, span.end_exclusive)
        )
        read_retries = []
        on_read_retry = lambda exc: (read_retries.append(exc), progress.retry(exc))  # noqa: E731
        batches = BatchReader(
            source.stream(url, span.anchor, span.end_exclusive, settings.retry, on_read_retry),
            settings.read.prefetch,
        )
        writer = ChunkWriter(Session(url, WRITER_NAME, settings.retry, progress.retry), settings, task)
        sink = WriterThread(writer, on_chunk, settings.read.prefetch)
        try:
            chunker, detect_seconds = detect_stage(batches, sink, settings, task, progress, result)
            check_detected(result, task, lambda: reader.run("reading bars", source.has_bars))
            sink.submit(chunker.finish())  # the last chunk of each strength: nothing is written before it
            sink.finish()
        except BaseException:
            sink.stop()
            raise
        finally:
            batches.close()
            result.retries = reader.retries + len(read_retries) + writer.session.retries
    result.write = writer.stats
    result.stage_seconds = {"read": batches.busy_s, "detect": detect_seconds, "write": sink.busy_s}
    return result


def detect_stage(
    batches: BatchReader,
    sink: WriterThread,
    settings: BackfillSettings,
    task: Task,
    progress: Progress,
    result: TaskResult,
) -> tuple[MultiChunker, float]:
    """Hygiene + detection of each batch as it arrives; complete chunks go to the sink.

    Returns the chunker (holding each strength's last chunk) and the seconds spent detecting.
    """
    span, hygiene = task.time_range, task.hygiene
    detector = StreamingDetector(
        task.symbol,
        task.strengths,
        settings.read.interval,
        hygiene.profile,
        hygiene.thresholds,
        span.start,
        span.end_exclusive,
    )
    chunker = MultiChunker(task.strengths, span.start, span.end_exclusive, settings.write.chunk_events)
    progress.start((span.end_exclusive - span.anchor).total_seconds())
    busy = 0.0
    for bars in batches:
        tick = time.perf_counter()
        detected = detector.push(bars)
        busy += time.perf_counter() - tick
        result.bars += detected.bars
        result.bad_bars += detected.bad_bars
        merge_counts(result.bad_by_rule, detected.bad_by_rule)
        for k, n in detected.events.group_by("strength").len().iter_rows():
            result.triangles_by_strength[k] += n
        sink.submit(chunker.add(detected.events))
        done = (bars["ts"][-1] - span.anchor).total_seconds()
        events = sum(result.triangles_by_strength.values())
        progress.advance(done, bars=result.bars, events=events, chunks=sink.chunks_done)
    return chunker, busy


def check_detected(result: TaskResult, task: Task, symbol_has_bars: Callable[[], bool]) -> None:
    """Bad input that only the whole window reveals (checked before the last chunk is written)."""
    if result.bars == 0:
        if not symbol_has_bars():
            raise BadInput(f"no bars for symbol {task.symbol!r}")
        raise BadInput(
            f"no bars for {task.symbol!r} between {task.time_range.anchor.isoformat()} "
            f"and {task.time_range.end_exclusive.isoformat()}: empty range"
        )
    if result.bad_bars == result.bars:
        codes = ", ".join(f"{k} {v}" for k, v in result.bad_by_rule.items())
        raise BadInput(f"all {result.bars} bars of {task.symbol!r} failed hygiene ({codes})")


def new_summary(settings: BackfillSettings, url: str) -> RunSummary:
    """The summary of a run before any task ran."""
    span = settings.time_range
    return RunSummary(
        symbol=settings.symbol,
        strength=settings.strengths[0],
        start=span.start.isoformat(),
        end_exclusive=span.end_exclusive.isoformat(),
        anchor=span.anchor.isoformat(),
        hygiene=settings.hygiene_settings.profile,
        mode=settings.write.mode,
        events_table=settings.tables.events,
        database=mask_url(url),
    )


def add_task(summary: RunSummary, task: TaskResult, settings: BackfillSettings) -> None:
    """Add a task's figures to the run's totals."""
    summary.bars_processed += task.bars
    summary.bad_bars_skipped += task.bad_bars
    order = list(reason_codes(settings.hygiene_settings.thresholds).values())
    merged = merge_counts(dict(summary.bad_bars_by_rule), task.bad_by_rule)
    summary.bad_bars_by_rule = {c: merged[c] for c in order if c in merged} | merged
    for k, n in task.triangles_by_strength.items():
        summary.triangles_by_strength[k] = summary.triangles_by_strength.get(k, 0) + n
    summary.triangles = sum(summary.triangles_by_strength.values())
    stats = task.write
    summary.chunks += stats.chunks + stats.chunks_skipped
    summary.chunks_skipped += stats.chunks_skipped
    summary.commits += stats.commits
    summary.rows_inserted += stats.rows_inserted
    summary.rows_deleted += stats.rows_deleted
    summary.purged += stats.purged
    summary.retries += task.retries
    for stage, seconds in task.stage_seconds.items():
        summary.stage_seconds[stage] = summary.stage_seconds.get(stage, 0.0) + seconds
