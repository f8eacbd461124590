"""Terminal output of a run: a rich progress bar on stderr and the human summary on stdout."""

from __future__ import annotations

from typing import Any

from triangles_polars.summary import Progress, RunSummary


class BarProgress(Progress):
    """A progress bar for the read, detect and write stages (a no-op when ``enabled`` is False)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.retries = 0
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

    def start(self, total: float) -> None:
        if self._bar is not None:
            self._task = self._bar.add_task("backfill", total=total, info="")

    def advance(self, done: float, *, bars: int, events: int, chunks: int) -> None:
        if self._bar is None or self._task is None:
            return
        elapsed = self._bar.tasks[-1].elapsed or 0
        rate = f"  {bars / elapsed:,.0f} bars/s" if elapsed > 0 else ""
        retries = f"  retries {self.retries}" if self.retries else ""
        info = f"{bars:,} bars  {events:,} events  {chunks} chunks{retries}{rate}"
        self._bar.update(self._task, completed=done, info=info)

    def retry(self, error: BaseException) -> None:
        self.retries += 1
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, info=f"retrying after a connection error ({self.retries})")


def print_summary(summary: RunSummary) -> None:
    """The human summary, in the field report's shape."""
    from rich.console import Console

    out = Console(highlight=False, soft_wrap=True)
    bad = summary.bad_bars_by_rule
    by_code = ", ".join(f"{code} {n:,}" for code, n in bad.items()) if bad else "none"
    rows = [
        ("Symbol", f"{summary.symbol}  (strength {summary.strength}, hygiene {summary.hygiene})"),
        ("Range", f"{summary.start} → {summary.end_exclusive} (exclusive), bars from {summary.anchor}"),
        ("Bars processed", f"{summary.bars_processed:,}"),
        ("Bad bars skipped", f"{summary.bad_bars_skipped:,}  ({by_code})"),
        ("Triangles", f"{summary.triangles:,}  → {summary.events_table} ({summary.mode})"),
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
    if summary.export:
        rows.append(("Parquet", summary.export))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        out.print(f"[green]✓[/] {key + ':':<{width + 1}} {value}", markup=True)
