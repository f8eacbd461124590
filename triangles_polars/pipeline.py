"""The backfill, as stages: plan → lock → run tasks (source → hygiene + detect → sink) → export.

:func:`backfill` is the whole job; the CLI's ``triangles backfill`` is a thin layer over it. The
driver (this process) plans the tasks, takes one lock per key, and hands the tasks to an engine;
each task reads its bars once (reader thread), runs hygiene once and detection once per strength
(its own thread), and hands complete chunks to the sink (writer thread), one transaction each.
See ``docs/contract.md#many-symbols-strengths-and-workers``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from triangles_polars.chunks import Chunk, MultiChunker
from triangles_polars.db import SessionPool
from triangles_polars.embedded import database_url
from triangles_polars.errors import BadInput, TrianglesError
from triangles_polars.hygiene import reason_codes
from triangles_polars.inventory import bars_hint
from triangles_polars.masking import mask_text, mask_url
from triangles_polars.planning import Plan, plan_run
from triangles_polars.settings import BackfillSettings, RunConfig, Task
from triangles_polars.source import READER_NAME, BarSource
from triangles_polars.stream import StreamingDetector, merge_counts
from triangles_polars.summary import Progress, RunSummary, TaskResult
from triangles_polars.threads import BatchReader, WriterThread
from triangles_polars.window_checks import WindowFacts, window_warnings
from triangles_polars.writer import WRITER_NAME, ChunkWriter

ChunkCallback = Callable[[Chunk, bool], None]
_EARLIEST = datetime(1, 1, 2, tzinfo=UTC)


class EmptyWindow(Exception):
    """A known symbol whose window holds no bars: not a failure (status ``empty``)."""


def backfill(
    settings: BackfillSettings, progress: Progress | None = None, on_chunk: ChunkCallback | None = None
) -> RunSummary:
    """Run the whole job (``docs/contract.md#triangle-events``, ``#writing-idempotency-and-faults``).

    One task fails alone: a run of several tasks returns every task's result (see
    ``RunSummary.tasks`` and ``exit_code``); a run of one task raises its error (:class:`BadInput`
    exit 2, :class:`DatabaseUnavailable` / :class:`RetriesExhausted` exit 3, ``Locked`` exit 4).
    Committed chunks stay committed on any failure; the same call resumes after them.
    """
    from triangles_polars.engines import run_tasks
    from triangles_polars.locks import hold_locks

    started = time.perf_counter()
    progress = progress or Progress()
    url, _source = database_url(settings.database_url)
    plan = plan_run(url, settings)
    with hold_locks(url, settings, plan) as config:
        results = run_tasks(url, settings, config, plan.to_run, progress, on_chunk)
    summary = summarise(settings, url, plan, results)
    if settings.export_dir is not None:
        from triangles_polars.export import export_stored

        tick = time.perf_counter()
        export_stored(url, settings, settings.export_dir)
        summary.export = str(settings.export_dir)
        summary.stage_seconds["export"] = round(time.perf_counter() - tick, 3)
    summary.duration_s = round(time.perf_counter() - started, 3)
    return summary


# ---------------------------------------------------------------------------- one task (any worker)


def execute_task(
    url: str,
    config: RunConfig,
    task: Task,
    sessions: SessionPool,
    progress: Progress | None = None,
    on_chunk: ChunkCallback | None = None,
    worker: str = "main",
    opener: Callable[[], OpenSource] | None = None,
) -> TaskResult:
    """Run one task and report it; its failure is its result, never the caller's exception.

    KeyboardInterrupt is the one exception that passes (the chunk in flight committed or rolled
    back whole). ``TaskResult.error`` is one masked line. ``opener`` hands over the task's
    source when it was opened ahead (:class:`Prefetch`).
    """
    started = time.perf_counter()
    result = TaskResult.of(task, worker=worker)
    try:
        run_task(url, config, task, sessions, progress or Progress(), result, on_chunk, opener)
    except EmptyWindow as empty:
        result.status = "empty"
        result.warnings.append(str(empty))
    except TrianglesError as exc:
        result.status, result.exit_code, result.error = "failed", exc.exit_code, mask_text(str(exc))
        result.exception = exc
    except Exception as exc:  # unexpected: exit 1 for this task, the others go on
        result.status, result.exit_code = "failed", 1
        result.error = mask_text(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        result.exception = exc
    result.duration_s = round(time.perf_counter() - started, 3)
    return result


def run_task(
    url: str,
    config: RunConfig,
    task: Task,
    sessions: SessionPool,
    progress: Progress,
    result: TaskResult,
    on_chunk: ChunkCallback | None = None,
    opener: Callable[[], OpenSource] | None = None,
) -> None:
    """One task: inspect the source, then stream it through detection into the sink."""
    span = task.time_range
    result.triangles_by_strength = dict.fromkeys(task.strengths, 0)
    opened = opener() if opener is not None else open_source(url, config, task, sessions, progress)
    source, batches, read_retries = opened.source, opened.batches, opened.read_retries
    reader = sessions.get(READER_NAME, config.retry, progress.retry)
    retries_before = reader.retries - opened.inspect_retries
    writer = ChunkWriter(sessions.get(WRITER_NAME, config.retry, progress.retry), config, task)
    writer_retries_before = writer.session.retries
    sink = WriterThread(writer, on_chunk, config.read.prefetch)
    detect_seconds = 0.0
    facts = WindowFacts()
    try:
        chunker, detect_seconds, newest = detect_stage(
            batches, sink, config, task, progress, result, first_bar=opened.first_bar, facts=facts
        )
        check_detected(
            result,
            task,
            lambda: reader.run("reading bars", source.has_bars),
            lambda: reader.run("listing the symbols", lambda cur: bars_hint(cur, config.tables)),
        )
        data_goes_on = opened.data_goes_on
        if data_goes_on:
            newest = span.end_exclusive  # the data goes on past the window: no bar can still arrive in it
        writer.newest_close = newest
        result.warnings.extend(
            window_warnings(
                task,
                config.read.interval,
                facts,
                data_goes_on=data_goes_on,
                bars_before_anchor=lambda: reader.run(
                    "looking before the anchor",
                    lambda cur: source.first_bar(cur, _EARLIEST, span.anchor) is not None,
                ),
            )
        )
        if facts.last_bar is not None and facts.last_bar < span.start:
            result.status = "empty"  # bars before START only: a holiday, or the data ends before it
        sink.submit_together(chunker.finish())  # each strength's last chunk, in one transaction
        sink.finish()
    except BaseException:
        sink.stop()
        raise
    finally:
        batches.close()
        result.retries = (
            reader.retries
            - retries_before
            + len(read_retries)
            + writer.session.retries
            - writer_retries_before
        )
        result.add_writes(writer.stats)
        result.stage_seconds = {"read": batches.busy_s, "detect": detect_seconds, "write": sink.busy_s}


@dataclass
class OpenSource:
    """A task's bars table inspected, and its reader thread started."""

    source: BarSource
    batches: BatchReader
    read_retries: list[BaseException]
    inspect_retries: int
    first_bar: datetime | None = None  # open time of the window's first bar (None: no bars)
    # A bar opens at or after the window's end: none can still arrive in the window. Asked before
    # the read, so every bar of the window that existed then is read.
    data_goes_on: bool = False


def open_source(
    url: str,
    config: RunConfig,
    task: Task,
    sessions: SessionPool,
    progress: Progress,
    after: BatchReader | None = None,
) -> OpenSource:
    """Inspect the task's bars (a clear error for a wrong table) and start reading them (once
    ``after`` has read everything: the run reads through one connection at a time)."""
    span = task.time_range
    reader = sessions.get(READER_NAME, config.retry, progress.retry)
    before = reader.retries
    unchecked = BarSource(task.symbol, config.tables, config.read)

    def inspect(cur: Any) -> tuple[BarSource, datetime | None, bool]:
        # One transaction (a round trip per query, one commit) for everything known before reading.
        checked = unchecked.inspect(cur, span.anchor, span.end_exclusive)
        return checked, *checked.probe(cur, span.anchor, span.end_exclusive)

    source, first, data_goes_on = reader.run("inspecting the bars table", inspect)
    read_retries: list[BaseException] = []

    def on_read_retry(exc: BaseException) -> None:
        read_retries.append(exc)
        progress.retry(exc)

    # Read from the first bar: years before the symbol's history are not scanned slice by slice.
    lo = first if first is not None else span.end_exclusive
    stream = source.stream(url, lo, span.end_exclusive, config.retry, on_read_retry)
    return OpenSource(
        source,
        BatchReader(stream, config.read.prefetch, after),
        read_retries,
        reader.retries - before,
        first,
        data_goes_on,
    )


class Prefetch:
    """The next task's source, opened while the current task runs (reading overlaps the rest).

    A failure to open is the next task's failure: :meth:`open` raises it when that task runs.
    """

    def __init__(
        self,
        url: str,
        config: RunConfig,
        task: Task,
        sessions: SessionPool,
        progress: Progress,
        after: Prefetch | None = None,
    ) -> None:
        self.opened: OpenSource | None = None
        self.error: Exception | None = None
        previous = after.opened.batches if after is not None and after.opened is not None else None
        try:
            self.opened = open_source(url, config, task, sessions, progress, after=previous)
        except Exception as exc:
            self.error = exc

    def open(self) -> OpenSource:
        if self.error is not None:
            raise self.error
        assert self.opened is not None
        opened, self.opened = self.opened, None
        return opened

    def close(self) -> None:
        """Stop reading (the task will not run)."""
        if self.opened is not None:
            self.opened.batches.close()
            self.opened = None


def detect_stage(
    batches: BatchReader,
    sink: WriterThread,
    config: RunConfig,
    task: Task,
    progress: Progress,
    result: TaskResult,
    first_bar: datetime | None = None,
    facts: WindowFacts | None = None,
) -> tuple[MultiChunker, float, datetime | None]:
    """Hygiene + detection of each batch as it arrives; complete chunks go to the sink.

    ``first_bar`` (the window's first bar, if known) is where the progress bar starts. Returns the chunker (holding each strength's last chunk), the seconds spent detecting, and
    the close of the newest bar read.
    """
    span, hygiene = task.time_range, task.hygiene
    detector = StreamingDetector(
        task.symbol,
        task.strengths,
        config.read.interval,
        hygiene.profile,
        hygiene.thresholds,
        span.start,
        span.end_exclusive,
        count_from=task.count_from,
    )
    chunker = MultiChunker(task.strengths, span.start, span.end_exclusive, config.write.chunk_events)
    progress.task_started(task, first_bar)
    busy, newest = 0.0, None
    for bars in batches:
        tick = time.perf_counter()
        detected = detector.push(bars)
        busy += time.perf_counter() - tick
        if facts is not None:
            facts.observe(bars)
        result.bars_processed += detected.bars
        result.bad_bars_skipped += detected.bad_bars
        merge_counts(result.bad_bars_by_rule, detected.bad_by_rule)
        for k, n in detected.events.group_by("strength").len().iter_rows():
            result.triangles_by_strength[k] += n
        newest = bars["ts"][-1] + config.read.interval
        # Shown before the batch's chunks are queued: the bar never lags the commits.
        progress.advance(
            (bars["ts"][-1] - span.anchor).total_seconds(),
            bars=result.bars_processed,
            events=result.triangles,
            chunks=sink.chunks_done,
        )
        sink.submit(chunker.add(detected.events))
    if facts is not None:
        facts.pivots_before_start = dict(detector.pivots_before_start)
    return chunker, busy, newest


def check_detected(
    result: TaskResult,
    task: Task,
    symbol_has_bars: Callable[[], bool],
    symbols_held: Callable[[], str] = lambda: "",
) -> None:
    """Bad input that only the whole window reveals (checked before the last chunk is written).

    ``symbols_held`` says what the bars table holds instead (docs/contract.md#empty-results-speak).
    """
    if result.bars_processed == 0:
        if not symbol_has_bars():
            raise BadInput(f"no bars for symbol {task.symbol!r}{symbols_held()}")
        raise EmptyWindow(
            f"{task.symbol}: no bars between {task.time_range.anchor.isoformat()} and "
            f"{task.time_range.end_exclusive.isoformat()} (a holiday or a quiet window?)"
        )
    if result.bad_bars_skipped == result.bars_processed:
        codes = ", ".join(f"{k} {v:,}" for k, v in result.bad_bars_by_rule.items())
        raise BadInput(f"all {result.bars_processed:,} bars of {task.symbol!r} failed hygiene ({codes})")


# ---------------------------------------------------------------------------- the run's summary


def summarise(settings: BackfillSettings, url: str, plan: Plan, results: list[TaskResult]) -> RunSummary:
    """Totals over every task, the per-task list, warnings and the run's exit code.

    A run of exactly one task raises that task's error instead (one line, its exit code).
    """
    everything = plan.skipped + plan.locked + results
    if len(everything) == 1 and everything[0].status == "failed":
        raise getattr(everything[0], "exception", None) or TrianglesError(
            everything[0].error or "task failed"
        )
    span = settings.time_range
    summary = RunSummary(
        symbol=settings.symbol,
        strength=settings.strengths[0],
        start=span.start.isoformat(),
        end_exclusive=span.end_exclusive.isoformat(),
        anchor=span.anchor.isoformat(),
        hygiene=settings.hygiene_settings.profile,
        mode=settings.write.mode,
        events_table=settings.tables.events,
        database=mask_url(url),
        strengths=list(settings.strengths),
        warnings=list(plan.warnings),
    )
    order = list(reason_codes(settings.hygiene_settings.thresholds).values())
    for task in sorted(everything, key=lambda t: (t.symbol, t.start)):
        summary.add(task)
        summary.warnings.extend(task.warnings)
    summary.bad_bars_by_rule = {
        c: summary.bad_bars_by_rule[c] for c in order if c in summary.bad_bars_by_rule
    } | (summary.bad_bars_by_rule)
    summary.many_tasks = len(everything) > 1
    return summary


__all__ = ["EmptyWindow", "backfill", "execute_task", "run_task", "summarise"]
