"""Terminal output of a run: a rich progress bar on stderr and the human summary on stdout."""

from __future__ import annotations

from collections import Counter
from typing import Any

from triangles_polars.summary import Progress, RunSummary


class BarProgress(Progress):
    """A progress bar for the read, detect and write stages (a no-op when ``enabled`` is False)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.retries = 0
        self.tasks = self.done_tasks = self.failures = self.events = self.task_events = 0
        self.total = self.offset = 0.0
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
                console=Console(stderr=True),
                transient=False,
            )
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def tasks_planned(self, tasks: int, total: float) -> None:
        self.tasks, self.done_tasks, self.failures = tasks, 0, 0
        self.total, self.offset, self.events = total, 0.0, 0
        if self._bar is not None and tasks:
            self._task = self._bar.add_task("backfill", total=max(total, 1.0), info=self._counts())

    def task_started(self, task: Any) -> None:
        self.task_events = 0

    def advance(self, done: float, *, bars: int, events: int, chunks: int) -> None:
        if self._bar is None or self._task is None:
            return
        elapsed = self._bar.tasks[-1].elapsed or 0
        rate = f"  {bars / elapsed:,.0f} bars/s" if elapsed > 0 else ""
        info = f"{bars:,} bars  {self.events + events:,} events  {chunks} chunks{rate}  {self._counts()}"
        self._bar.update(self._task, completed=self.offset + done, info=info)

    def task_done(self, result: Any, span_s: float) -> None:
        self.done_tasks += 1
        self.failures += result.status in ("failed", "locked")
        self.offset += span_s
        self.events += result.triangles
        if self._bar is not None and self._task is not None:
            info = f"{self.events:,} events  {self._counts()}"
            self._bar.update(self._task, completed=self.offset, info=info)

    def _counts(self) -> str:
        failures = f"  {self.failures} failed" if self.failures else ""
        retries = f"  retries {self.retries}" if self.retries else ""
        return f"tasks {self.done_tasks}/{self.tasks}{failures}{retries}"

    def retry(self, error: BaseException) -> None:
        self.retries += 1
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, info=f"retrying after a connection error ({self.retries})")


def print_summary(summary: RunSummary) -> None:
    """The human summary, in the field report's shape; a run of several tasks also gets a table."""
    from rich.console import Console

    out = Console(highlight=False, soft_wrap=True)
    if summary.many_tasks:
        # Piped output has no width to fit: never cut a symbol or a status.
        print_task_table(summary, out if out.is_terminal else Console(highlight=False, width=240))
    bad = summary.bad_bars_by_rule
    by_code = ", ".join(f"{code} {n:,}" for code, n in bad.items()) if bad else "none"
    rows = [
        (
            "Symbol",
            f"{summary.symbol}  (strength {','.join(map(str, summary.strengths or [summary.strength]))}, hygiene {summary.hygiene})",
        ),
        ("Range", f"{summary.start} → {summary.end_exclusive} (exclusive), bars from {summary.anchor}"),
        ("Bars processed", f"{summary.bars_processed:,}"),
        ("Bad bars skipped", f"{summary.bad_bars_skipped:,}  ({by_code})"),
        (
            "Triangles",
            f"{summary.triangles:,}{_by_strength(summary)}  → {summary.events_table} ({summary.mode})",
        ),
        (
            "Chunks",
            f"{summary.chunks:,}"
            + (f"  ({summary.chunks_skipped} already committed, skipped)" if summary.chunks_skipped else ""),
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
        rows.insert(2, ("Tasks", ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))))
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
        "symbol": f"{len(summary.tasks)} tasks",
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
