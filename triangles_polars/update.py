"""Keeping current: ``triangles update`` (``docs/contract.md#keeping-current``).

The planner looks up, for every key (symbol, strength) at once, where its coverage ends and where
the symbol's bars end, and turns the difference into ordinary :class:`~triangles_polars.settings.Task`
objects: from the coverage end (minus ``--lookback``) up to and including the close of the newest
bar (or ``--until``). The tasks then run exactly as a backfill's: under one lock per key
(:func:`~triangles_polars.locks.hold_locks`), on any engine
(:func:`~triangles_polars.engines.run_tasks`), summarised alike
(:func:`~triangles_polars.pipeline.summarise`).

A task's range is ``[start, end_exclusive)`` with ``end_exclusive = newest close + 1 µs``, so the
event that the newest bar confirms (``confirmed_at == newest close``) is written now; coverage
stops at the newest close, so the next update starts there (``covered_end <= confirmed_at``) and
the two never miss an event between them.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from triangles_polars.catalog import distinct_symbols, resolve_symbols
from triangles_polars.coverage import COVERAGE_TABLE, settings_key
from triangles_polars.db import Session, fetch_all, qualified, quote_ident, table_exists
from triangles_polars.errors import BadInput
from triangles_polars.planning import (
    PLANNER_NAME,
    SERIES_TABLE,
    Plan,
    check_connections,
    skipped_result,
    worker_count,
)
from triangles_polars.schema import instant_utc
from triangles_polars.settings import (
    DEFAULT_ANCHOR_DAYS,
    BackfillSettings,
    HygieneSettings,
    RunConfig,
    Task,
    TimeRange,
    parse_duration,
    parse_instant,
)
from triangles_polars.source import check_bars_table
from triangles_polars.summary import Progress, RunSummary

ONE_US = timedelta(microseconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DEFAULT_POLL_S = 5.0
HEARTBEAT_S = 60.0
_UNSET = "1970-01-01"  # BackfillSettings wants START and END; an update finds its own per key


@dataclass(frozen=True)
class UpdateSettings(BackfillSettings):
    """Everything one ``update`` needs: the backfill settings that apply, and its own.

    ``until``: write up to and including this instant (a UTC day means that whole day); default
    the newest bar's close. ``lookback``: first rewrite the last span of each key's coverage
    (``"2h"``, ``timedelta``; default 0). ``follow``, ``poll_s``, ``notify`` and ``heartbeat_s``
    are for :func:`triangles_polars.follow.follow`.
    """

    start: str | date | datetime = _UNSET
    end: str | date | datetime = _UNSET
    until: str | date | datetime | None = None
    lookback: str | timedelta = timedelta(0)
    follow: bool = False
    poll_s: float = DEFAULT_POLL_S
    notify: str | None = None
    heartbeat_s: float = HEARTBEAT_S

    # Parsed, set in __post_init__.
    until_exclusive: datetime | None = field(init=False)
    lookback_span: timedelta = field(init=False)

    def __post_init__(self) -> None:
        if (self.start, self.end) != (_UNSET, _UNSET) or self.anchor is not None:
            raise BadInput("update takes no START, END or ANCHOR: it continues each key from its coverage")
        if self.purge:
            raise BadInput("update does not purge: use backfill --purge for a range")
        if self.export_dir is not None:
            raise BadInput("update does not export: use triangles export for a range")
        if self.task_days is not None:
            raise BadInput("update does not take --task-days: it continues each key in one task")
        super().__post_init__()
        until = None
        if self.until is not None:
            instant, is_day = parse_instant(self.until, "--until")
            until = instant + (timedelta(days=1) if is_day else ONE_US)
        if self.follow and until is not None:
            raise BadInput("--until and --follow do not go together: following has no end")
        if self.notify is not None and not self.follow:
            raise BadInput("--notify needs --follow")
        if self.notify is not None and (not 0 < len(self.notify.encode()) <= 63 or "\x00" in self.notify):
            raise BadInput(
                f"bad --notify channel {self.notify!r}: use a PostgreSQL channel name (1 to 63 bytes)"
            )
        for name, value in (("--poll", self.poll_s), ("heartbeat", self.heartbeat_s)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 86_400:
                raise BadInput(f"bad {name} {value!r}: use a number of seconds above 0")
        object.__setattr__(self, "until_exclusive", until)
        object.__setattr__(self, "lookback_span", parse_lookback(self.lookback))
        if self.lookback_span and self.write.mode == "append":
            raise BadInput("--lookback rewrites events (replace), which --mode append never does")

    @property
    def run_config(self) -> RunConfig:
        """As backfill's, without the run ledger: an update goes on from coverage alone, so the
        ledger would only grow by a run per key and a row per chunk at every update."""
        return replace(super().run_config, ledger=False)


def parse_lookback(value: str | timedelta) -> timedelta:
    """``--lookback``: ``0`` or a duration like ``30m``, ``2h``, ``1d``.

    >>> parse_lookback("0"), parse_lookback("2h")
    (datetime.timedelta(0), datetime.timedelta(seconds=7200))
    """
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise BadInput(f"bad --lookback {value}: it must not be negative")
        return value
    if str(value).strip() in ("0", "0s", "0m", "0h", "0d"):
        return timedelta(0)
    try:
        return parse_duration(str(value))
    except BadInput:
        raise BadInput(f"bad --lookback {value!r}: use 0 or a duration like 30m, 2h or 1d") from None


# ---------------------------------------------------------------------------- the state of every key


@dataclass(frozen=True)
class Extent:
    """A symbol's bars: the first bar's open time and the newest bar's close (UTC)."""

    first_open: datetime
    newest_close: datetime


@dataclass(frozen=True)
class Covered:
    """A key's latest covered span of ``confirmed_at`` (``[start, end)``)."""

    start: datetime
    end: datetime


def bar_extents(cur: Any, settings: BackfillSettings, symbols: list[str]) -> dict[str, Extent]:
    """Every symbol's first bar and newest close, in one query (two index probes per symbol)."""
    tables, read = settings.tables, settings.read
    table = qualified(*tables.bars_parts)
    sym, ts = quote_ident(tables.columns["symbol"]), quote_ident(tables.columns["ts"])
    rows = fetch_all(
        cur,
        f"""SELECT s.name, (SELECT min({ts}) FROM {table} WHERE {sym} = s.name),
                   (SELECT max({ts}) FROM {table} WHERE {sym} = s.name)
            FROM unnest($1::text[]) AS s(name)""",
        (symbols,),
    )
    shift = read.stored_shift  # the close convention stores close times
    return {
        name: Extent(instant_utc(first) - shift, instant_utc(last) - shift + read.interval)
        for name, first, last in rows
        if first is not None
    }


def coverage_ends(
    cur: Any, settings: BackfillSettings, symbols: list[str]
) -> dict[tuple[str, int, str], Covered]:
    """The latest covered span of every key of these symbols, by (symbol, strength, settings key)."""
    schema, _ = settings.tables.events_parts
    if not table_exists(cur, schema, COVERAGE_TABLE):
        return {}
    rows = fetch_all(
        cur,
        f"""SELECT DISTINCT ON (symbol, strength, settings_key) symbol, strength, settings_key,
                   span_start, span_end
            FROM {qualified(schema, COVERAGE_TABLE)}
            WHERE events_table = $1 AND symbol = ANY($2::text[])
            ORDER BY symbol, strength, settings_key, span_end DESC""",
        (settings.tables.events, symbols),
    )
    return {(s, int(k), key): Covered(instant_utc(lo), instant_utc(hi)) for s, k, key, lo, hi in rows}


def series_versions(cur: Any, settings: BackfillSettings, symbols: list[str]) -> dict[str, int]:
    """The loaded series' versions (``bars_series``); 0 for a symbol that has none."""
    schema, _ = settings.tables.bars_parts
    if not table_exists(cur, schema, SERIES_TABLE):
        return {}
    rows = fetch_all(
        cur,
        f"SELECT symbol, version FROM {qualified(schema, SERIES_TABLE)} WHERE symbol = ANY($1::text[])",
        (symbols,),
    )
    return {s: int(v) for s, v in rows}


@dataclass(frozen=True)
class KeyState:
    """What the planner knows of one key: its bars, its coverage, and the task that continues it."""

    symbol: str
    strength: int
    hygiene: HygieneSettings
    series_version: int
    extent: Extent
    covered: Covered | None


def key_states(cur: Any, settings: BackfillSettings, symbols: list[str]) -> list[KeyState]:
    """Every key's state, in three queries whatever the number of symbols and strengths."""
    extents = bar_extents(cur, settings, symbols)
    missing = [s for s in symbols if s not in extents]
    if missing:
        existing = distinct_symbols(cur, settings.tables)
        shown = ", ".join(existing[:8]) + (f" … ({len(existing):,} in all)" if len(existing) > 8 else "")
        raise BadInput(
            f"no bars for symbol {missing[0]!r} in {settings.tables.bars!r}"
            + (f"; symbols with bars: {shown}" if existing else " (the table has no bars)")
        )
    versions = series_versions(cur, settings, symbols)
    covered = coverage_ends(cur, settings, symbols)
    config = settings.run_config
    states = []
    for symbol in symbols:
        hygiene = settings.hygiene_for(symbol)
        probe = Task(symbol, settings.strengths, TimeRange(_EPOCH, _EPOCH), hygiene)
        key = settings_key(config, replace(probe, series_version=versions.get(symbol, 0)))
        for k in settings.strengths:
            states.append(
                KeyState(
                    symbol,
                    k,
                    hygiene,
                    versions.get(symbol, 0),
                    extents[symbol],
                    covered.get((symbol, k, key)),
                )
            )
    return states


# ---------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Span:
    """What one key needs written now: events with ``start <= confirmed_at < end_exclusive``."""

    start: datetime
    end_exclusive: datetime
    anchor: datetime
    count_from: datetime | None


def key_span(
    state: KeyState, settings: UpdateSettings, interval: timedelta, rewrite_idle: bool = True
) -> Span | None:
    """The span a key needs now, or None when it is current (no bar closed after its coverage).

    ``--lookback`` rewrites the end of the coverage even without a new bar, unless
    ``rewrite_idle`` is False (``--follow``'s cycles run only when bars arrive).
    """
    end = state.extent.newest_close + ONE_US  # the event the newest bar confirms is included
    if settings.until_exclusive is not None:
        end = min(end, settings.until_exclusive)
    if state.covered is None:  # never processed: backfill from the first bar
        first = state.extent.first_open
        return Span(first, end, first, None) if end > first else None
    covered = state.covered
    if end - covered.end <= ONE_US and not (settings.lookback_span and rewrite_idle):
        return None
    start = max(covered.end - settings.lookback_span, covered.start)
    if end <= start:
        return None
    # Bars are counted once: those that close after the start (earlier ones are lookback context).
    count_from = start - interval + ONE_US
    return Span(start, end, start - timedelta(days=DEFAULT_ANCHOR_DAYS), count_from)


def plan_update(url: str, settings: UpdateSettings) -> Plan:
    """The update's tasks: one per symbol (and per distinct span among its strengths)."""
    with Session(url, PLANNER_NAME, settings.retry) as session:
        return session.run("planning the update", lambda cur: _plan(cur, settings))


def _plan(cur: Any, settings: UpdateSettings) -> Plan:
    check_bars_table(cur, settings.tables)
    symbols = resolve_symbols(cur, settings.tables, settings.symbol)
    plan = Plan(symbols)
    plan.to_run, plan.skipped = tasks_for(key_states(cur, settings, symbols), settings)
    plan.jobs = worker_count(settings.jobs, len(plan.to_run))  # as backfill: the CPU cores
    if plan.to_run:
        check_connections(cur, settings, plan.jobs)
    return plan


def tasks_for(
    states: list[KeyState], settings: UpdateSettings, rewrite_idle: bool = True
) -> tuple[list[Task], list[Any]]:
    """Tasks for the keys that need work (strengths of a symbol with the same span share one);
    skipped results for the keys that are current.

    One task per key and span, never split: its chunks commit in time order, so coverage stays
    one span that the next update goes on from (split tasks that finish out of order would leave
    a hole behind the span an interrupted run reached)."""
    interval = settings.read.interval
    groups: dict[tuple[str, Span | None], list[KeyState]] = defaultdict(list)
    for state in states:
        groups[(state.symbol, key_span(state, settings, interval, rewrite_idle))].append(state)
    to_run: list[Task] = []
    skipped = []
    for (symbol, span), members in groups.items():
        first = members[0]
        strengths = tuple(m.strength for m in members)
        if span is None:
            at = max((m.covered.end for m in members if m.covered), default=first.extent.newest_close)
            current = Task(
                symbol, strengths, TimeRange(at, at, at), first.hygiene, None, first.series_version
            )
            skipped.append(skipped_result(current))
            continue
        whole = TimeRange(span.start, span.end_exclusive, span.anchor)
        to_run.append(Task(symbol, strengths, whole, first.hygiene, span.count_from, first.series_version))
    return to_run, skipped


# ---------------------------------------------------------------------------- the run


def update(settings: UpdateSettings, progress: Progress | None = None, on_chunk: Any = None) -> RunSummary:
    """Continue every key from its coverage up to the newest bar (``docs/contract.md#keeping-current``).

    Returns the same summary as :func:`~triangles_polars.pipeline.backfill`; its ``start`` and
    ``end_exclusive`` span every task's range. A run of one key raises that key's error
    (``Locked`` exit 4 when another command holds it).
    """
    from triangles_polars.embedded import database_url
    from triangles_polars.engines import run_tasks
    from triangles_polars.locks import hold_locks
    from triangles_polars.pipeline import summarise

    started = time.perf_counter()
    progress = progress or Progress()
    url, _source = database_url(settings.database_url)
    plan = plan_update(url, settings)
    with hold_locks(url, settings, plan) as config:
        if plan.to_run and settings.wait != 0.0:
            plan = replan(url, settings, plan)  # the lock may have been waited for: the keys moved on
        results = run_tasks(url, settings, config, plan.to_run, progress, on_chunk)
    summary = span_summary(summarise(settings, url, plan, results), plan)
    summary.duration_s = round(time.perf_counter() - started, 3)
    return summary


def span_summary(summary: RunSummary, plan: Plan) -> RunSummary:
    """An update's ``start``, ``end_exclusive`` and ``anchor`` span its tasks (each key has its own)."""
    every = [(r.start, r.end_exclusive) for r in summary.tasks]
    summary.start = min((s for s, _ in every), default="")
    summary.end_exclusive = max((e for _, e in every), default="")
    anchors = [t.time_range.anchor for t in plan.to_run]
    summary.anchor = min(anchors).isoformat() if anchors else summary.start
    return summary


def replan(url: str, settings: UpdateSettings, plan: Plan) -> Plan:
    """Plan again under the locks, for the keys this run holds (what another run wrote is skipped)."""
    held = {(t.symbol, k) for t in plan.to_run for k in t.strengths}
    fresh = plan_update(url, settings)
    kept = []
    for task in fresh.to_run:
        mine = tuple(k for k in task.strengths if (task.symbol, k) in held)
        if mine:
            kept.append(replace(task, strengths=mine))
    plan.to_run = kept
    for result in fresh.skipped:  # held keys that another command brought up to date meanwhile
        mine = tuple(k for k in result.strengths if (result.symbol, k) in held)
        if mine:
            plan.skipped.append(
                dataclasses.replace(result, strengths=mine, triangles_by_strength=dict.fromkeys(mine, 0))
            )
    return plan


__all__ = [
    "Extent",
    "UpdateSettings",
    "bar_extents",
    "coverage_ends",
    "key_states",
    "parse_lookback",
    "plan_update",
    "span_summary",
    "update",
]
