"""Planning a run: which symbols, which tasks, what is already covered (``docs/contract.md#many-symbols-strengths-and-workers``).

One task per symbol (all its strengths), or per ``--task-days`` slice of a symbol's range. A
symbol's first task loads bars from the run's ANCHOR; each later one from its own START minus
the lookback (the default anchor's 7 days). A task whose range is already covered for a
strength (``docs/contract.md#coverage``) drops that strength; with none left it is skipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from triangles_polars.catalog import resolve_symbols
from triangles_polars.coverage import COVERAGE_TABLE, Coverage, CoverageKey, settings_key
from triangles_polars.db import Session, fetch_all, qualified, table_exists
from triangles_polars.errors import BadInput
from triangles_polars.settings import DEFAULT_ANCHOR_DAYS, BackfillSettings, RunConfig, Task, TimeRange
from triangles_polars.source import check_bars_table
from triangles_polars.summary import TaskResult

PLANNER_NAME = "triangles_planner"
SERIES_TABLE = "bars_series"


@dataclass
class Plan:
    """The run's tasks: those to run, those skipped (covered) and, once locks are taken, those locked."""

    symbols: list[str]
    to_run: list[Task] = field(default_factory=list)
    skipped: list[TaskResult] = field(default_factory=list)
    locked: list[TaskResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    jobs: int = 1

    @property
    def total_tasks(self) -> int:
        return len(self.to_run) + len(self.skipped) + len(self.locked)


def plan_run(url: str, settings: BackfillSettings) -> Plan:
    """Resolve the symbols, cut the tasks, drop what is covered, size the worker pool."""
    with Session(url, PLANNER_NAME, settings.retry) as session:
        return session.run("planning the run", lambda cur: _plan(cur, settings))


def _plan(cur: Any, settings: BackfillSettings) -> Plan:
    tables = settings.tables
    check_bars_table(cur, tables)
    symbols = resolve_symbols(cur, tables, settings.symbol)
    plan = Plan(symbols)
    versions = series_versions(cur, settings, symbols)
    tasks = [
        Task(
            symbol, settings.strengths, time_range, settings.hygiene_for(symbol), count_from, versions[symbol]
        )
        for symbol in symbols
        for time_range, count_from in split_range(settings.time_range, settings.task_days)
    ]
    covered = _covered(cur, _coverage_reader(cur, settings), settings.run_config, tasks)
    for i, task in enumerate(tasks):
        todo = tuple(k for k in task.strengths if (i, k) not in covered)
        if todo:
            plan.to_run.append(replace(task, strengths=todo))
        else:
            plan.skipped.append(skipped_result(task))
    plan.jobs = worker_count(settings.jobs, len(plan.to_run))
    check_connections(cur, settings, plan.jobs)
    return plan


def split_range(span: TimeRange, task_days: int | None) -> list[tuple[TimeRange, datetime]]:
    """The tasks' ranges: boundaries at START + i·N days, the last ending at END; with what each counts from.

    >>> from triangles_polars.settings import TimeRange
    >>> parts = split_range(TimeRange.parse("2025-01-01", "2025-01-05"), 2)
    >>> [(r.start.day, r.end_exclusive.day, r.anchor.day, c.day) for r, c in parts]
    [(1, 3, 25, 25), (3, 5, 27, 3), (5, 6, 29, 5)]
    """
    if not task_days:
        return [(span, span.anchor)]
    step, lookback = timedelta(days=task_days), timedelta(days=DEFAULT_ANCHOR_DAYS)
    out, start = [], span.start
    while start < span.end_exclusive:
        end = min(start + step, span.end_exclusive)
        first = start == span.start
        anchor = span.anchor if first else start - lookback
        out.append((TimeRange(start, end, anchor), anchor if first else start))
        start = end
    return out


def _coverage_reader(cur: Any, settings: BackfillSettings) -> Coverage | None:
    """Coverage to consult, or None when the run must redo everything (``--restart``, ``--purge``)."""
    schema, _ = settings.tables.events_parts
    if not settings.write.resume or settings.write.purge or not table_exists(cur, schema, COVERAGE_TABLE):
        return None
    return Coverage(schema)


def _covered(
    cur: Any, coverage: Coverage | None, config: RunConfig, tasks: list[Task]
) -> set[tuple[int, int]]:
    """The (task index, strength) pairs whose range is covered already, in one query."""
    if coverage is None:
        return set()
    pairs = [(i, k) for i, task in enumerate(tasks) for k in task.strengths]
    keys = [settings_key(config, task) for task in tasks]
    wanted = [
        (
            CoverageKey(config.tables.events, tasks[i].symbol, k, keys[i]),
            tasks[i].time_range.start,
            tasks[i].time_range.end_exclusive,
        )
        for i, k in pairs
    ]
    return {pair for pair, hit in zip(pairs, coverage.covered(cur, wanted), strict=True) if hit}


def skipped_result(task: Task) -> TaskResult:
    """The result of a task whose range is covered already."""
    return TaskResult.of(
        task,
        status="skipped",
        triangles_by_strength=dict.fromkeys(task.strengths, 0),
    )


def series_version(cur: Any, settings: BackfillSettings, symbol: str) -> int:
    """The version of a loaded series (bumped by every back-adjusted load), 0 when unversioned."""
    return series_versions(cur, settings, [symbol])[symbol]


def series_versions(cur: Any, settings: BackfillSettings, symbols: list[str]) -> dict[str, int]:
    """:func:`series_version` of each symbol, in one query."""
    schema, _ = settings.tables.bars_parts
    versions = dict.fromkeys(symbols, 0)
    if symbols and table_exists(cur, schema, SERIES_TABLE):
        sql = f"SELECT symbol, version FROM {qualified(schema, SERIES_TABLE)} WHERE symbol = ANY($1::text[])"
        versions |= {row[0]: int(row[1]) for row in fetch_all(cur, sql, (symbols,))}
    return versions


def worker_count(jobs: int | None, tasks: int) -> int:
    """``--jobs``, default the CPU cores; never more than the tasks (at least 1)."""
    wanted = jobs if jobs is not None else (os.cpu_count() or 1)
    return max(1, min(wanted, max(tasks, 1)))


def check_connections(cur: Any, settings: BackfillSettings, jobs: int) -> None:
    """A run opens at most ``jobs × 2 + 1`` connections: refuse at once if the server cannot take them."""
    need = jobs * 2 + 1
    rows = fetch_all(
        cur,
        "SELECT current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int"
        " - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')",
    )
    free = int(rows[0][0])
    if need > free + 1:  # +1: the planner's own connection is closed before the workers start
        raise BadInput(
            f"--jobs {jobs} needs {need} database connections but the server has {free + 1} free "
            "(max_connections); use a smaller --jobs"
        )
