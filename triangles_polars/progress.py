"""Terminal output of a run: a rich progress bar on stderr and the human summary on stdout."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from triangles_polars.summary import Progress, RunSummary


@dataclass(frozen=True)
class ProgressView:
    """What the bar shows at one moment: bar time covered (from the first bar) and the counts so far."""

    done_s: float
    total_s: float
    bars: int
    events: int
    chunks: int
    tasks_done: int
    tasks: int
    failures: int = 0
    retries: int = 0
    elapsed_s: float = 0.0

    def info(self) -> str:
        """The counts beside the bar, in the summary's words and number format."""
        rate = f"  {self.bars / self.elapsed_s:,.0f} bars/s" if self.elapsed_s > 0 and self.bars else ""
        failures = f"  {self.failures} failed" if self.failures else ""
        retries = f"  retries {self.retries}" if self.retries else ""
        return (
            f"{self.bars:,} bars  {self.events:,} events  {self.chunks:,} chunks{rate}  "
            f"tasks {self.tasks_done}/{self.tasks}{failures}{retries}"
        )


class BarProgress(Progress):
    """A progress bar for the read, detect and write stages (nothing drawn when ``enabled`` is False).

    The bar covers the bar time of the run's tasks from each task's first bar (a history that
    starts years after ANCHOR does not sit at 0 %), shows its counts from the start, and ends on
    the summary's totals: bars, events and chunks of every task, its last chunk included.
    ``console`` draws it somewhere else than stderr (a recording console in tests).
    """

    def __init__(self, enabled: bool, console: Any = None) -> None:
        self.enabled = enabled
        self.console = console
        self.retries = 0
        self.tasks = self.done_tasks = self.failures = 0
        self.bars = self.events = self.chunks = 0  # of the tasks done
        self.total = self.offset = 0.0
        # Per task started here (symbol, start): the bar time before its first bar, off the bar.
        self.skips: dict[tuple[str, str], float] = {}
        # The task running here (tasks of workers only report when done): its key, and its bar
        # time done (from its first bar), bars, events and chunks so far.
        self.running: tuple[str, str] | None = None
        self.current: tuple[float, int, int, int] = (0.0, 0, 0, 0)
        self.started = time.monotonic()
        self.view: ProgressView | None = None
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> BarProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                SpinnerColumn,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
            )
            from rich.progress import (
                Progress as RichProgress,
            )

            self._bar = RichProgress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                console=self.console or Console(stderr=True),
                transient=False,
            )
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def tasks_planned(self, tasks: int, total: float) -> None:
        self.tasks, self.done_tasks, self.failures = tasks, 0, 0
        self.total, self.offset, self.skips, self.running = total, 0.0, {}, None
        self.bars = self.events = self.chunks = 0
        self.current = (0.0, 0, 0, 0)
        self.started = time.monotonic()
        if tasks:
            if self._bar is not None:
                self._task = self._bar.add_task("backfill", total=max(total, 1.0), info="")
            self._show()

    def task_started(self, task: Any, first_bar: datetime | None = None) -> None:
        span = task.time_range
        span_s = (span.end_exclusive - span.anchor).total_seconds()
        before = span_s if first_bar is None else (first_bar - span.anchor).total_seconds()
        # The bar time before the first bar holds nothing to do: off the bar, not a wait at 0 %.
        skip = min(max(before, 0.0), span_s)
        self.running = (task.symbol, span.start.isoformat())
        self.skips[self.running] = skip
        self.total -= skip
        self.current = (0.0, 0, 0, 0)
        self._show()

    def advance(self, done: float, *, bars: int, events: int, chunks: int) -> None:
        skip = self.skips.get(self.running, 0.0) if self.running else 0.0
        self.current = (max(done - skip, 0.0), bars, events, chunks)
        self._show()

    def task_done(self, result: Any, span_s: float) -> None:
        self.done_tasks += 1
        self.failures += result.status in ("failed", "locked")
        key = (result.symbol, result.start)
        self.offset += span_s - self.skips.pop(key, 0.0)
        self.bars += result.bars_processed
        self.events += result.triangles
        self.chunks += result.chunks
        if key == self.running:  # its counts are in the totals now
            self.running, self.current = None, (0.0, 0, 0, 0)
        self._show()

    def retry(self, error: BaseException) -> None:
        self.retries += 1
        self._show()

    def _show(self) -> None:
        """Recompute the view and draw it (the one place the bar changes)."""
        done, bars, events, chunks = self.current
        self.view = ProgressView(
            done_s=min(self.offset + done, self.total),
            total_s=self.total,
            bars=self.bars + bars,
            events=self.events + events,
            chunks=self.chunks + chunks,
            tasks_done=self.done_tasks,
            tasks=self.tasks,
            failures=self.failures,
            retries=self.retries,
            elapsed_s=time.monotonic() - self.started,
        )
        if self._bar is not None and self._task is not None:
            self._bar.update(
                self._task, total=max(self.total, 1.0), completed=self.view.done_s, info=self.view.info()
            )


def print_summary(summary: RunSummary) -> None:
    """The human summary, in the field report's shape; a run of several tasks also gets a table."""
    from rich.console import Console

    out = Console(highlight=False, soft_wrap=True)
    if summary.many_tasks:
        # Piped output has no width to fit: never cut a symbol or a status.
        print_task_table(summary, out if out.is_terminal else Console(highlight=False, width=240))
    rows = [
        (
            "Symbol",
            f"{summary.symbol}  (strength {','.join(map(str, summary.strengths or [summary.strength]))}, hygiene {summary.hygiene})",
        ),
        ("Range", f"{summary.start} → {summary.end_exclusive} (exclusive), bars from {summary.anchor}"),
        ("Bars processed", f"{summary.bars_processed:,}"),
        ("Bad bars skipped", summary.bad_bars()),
        (
            "Triangles",
            f"{summary.triangles:,}{_by_strength(summary)}  → {summary.events_table} ({summary.written()})",
        ),
        (
            "Chunks",
            f"{summary.chunks:,}"
            + (
                f"  ({summary.chunks_skipped:,} already committed, skipped)" if summary.chunks_skipped else ""
            ),
        ),
        ("Commits", f"{summary.commits:,}"),
        ("Retries", f"{summary.retries:,}"),
        (
            "Duration",
            f"{summary.duration_s:.2f} s  "
            + "  ".join(f"{k} {v:.2f}s" for k, v in summary.stage_seconds.items()),
        ),
        ("Database", summary.database),
    ]
    if summary.purged:
        rows.insert(5, ("Purged first", f"{summary.purged:,}"))
    statuses = Counter(task.status for task in summary.tasks)
    if summary.many_tasks or set(statuses) - {"done"}:
        rows.insert(2, ("Tasks", ", ".join(f"{n:,} {status}" for status, n in sorted(statuses.items()))))
    if summary.export:
        rows.append(("Parquet", summary.export))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        out.print(f"[green]✓[/] {key + ':':<{width + 1}} {value}", markup=True)


def _by_strength(summary: RunSummary) -> str:
    if len(summary.triangles_by_strength) < 2:
        return ""
    return "  (" + ", ".join(f"k={k} {n:,}" for k, n in sorted(summary.triangles_by_strength.items())) + ")"


def print_task_table(summary: RunSummary, out: Any) -> None:
    """One row per task and a totals row."""
    from rich.table import Table

    table = Table(title="Tasks", show_footer=True, box=None, pad_edge=False)
    columns = (
        "symbol",
        "strengths",
        "bars",
        "bad",
        "triangles",
        "chunks",
        "retries",
        "s",
        "status",
        "worker",
    )
    totals = {
        "symbol": f"{len(summary.tasks):,} tasks",
        "bars": f"{summary.bars_processed:,}",
        "bad": f"{summary.bad_bars_skipped:,}",
        "triangles": f"{summary.triangles:,}",
        "chunks": f"{summary.chunks:,}",
        "retries": f"{summary.retries:,}",
        "s": f"{summary.duration_s:.1f}",
    }
    for name in columns:
        table.add_column(
            name,
            footer=totals.get(name, ""),
            justify="left" if name in ("symbol", "status", "worker") else "right",
        )
    for task in summary.tasks:
        status = task.status + (f": {task.error}" if task.error else "")
        table.add_row(
            f"{task.symbol} [{task.start[:10]}, {task.end_exclusive[:10]})",
            ",".join(map(str, task.strengths)),
            f"{task.bars_processed:,}",
            f"{task.bad_bars_skipped:,}",
            f"{task.triangles:,}",
            f"{task.chunks:,}",
            f"{task.retries:,}",
            f"{task.duration_s:.1f}",
            status,
            task.worker,
        )
    out.print(table)
