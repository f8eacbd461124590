"""What the database holds: the symbols of the bars table and the series of the events table.

``triangles bars list`` and ``triangles events list`` print these, and the "no bars" / "no
events" errors of the other commands name them (``docs/contract.md#empty-results-speak``).
Symbols are found by a loose index scan (:func:`triangles_polars.catalog.loose_index_scan`:
one index probe per symbol, never a read of the whole table); a symbol's first and last row
are two more probes, and its count reads that symbol's part of the index only.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from triangles_polars.catalog import is_pattern, loose_index_scan, split_symbols
from triangles_polars.db import Session, fetch_all, qualified, quote_ident, table_exists
from triangles_polars.errors import BadInput
from triangles_polars.schema import instant_utc
from triangles_polars.settings import DEFAULT_BARS_TABLE, DEFAULT_EVENTS_TABLE, Tables, split_table_name

INVENTORY_NAME = "triangles_inventory"
HINT_SYMBOLS = 8  # symbols a "no bars" / "no events" message names, at most

T = TypeVar("T")


@dataclass(frozen=True)
class BarSeries:
    """One symbol of the bars table: its first and last bar (``ts`` as stored, in UTC) and its bar count."""

    symbol: str
    first_bar: datetime
    last_bar: datetime
    bars: int | None = None  # None: not counted

    def to_json(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "first_bar": self.first_bar.isoformat(),
            "last_bar": self.last_bar.isoformat(),
            "bars": self.bars,
        }


@dataclass(frozen=True)
class EventSeries:
    """One (symbol, strength) of the events table: its first and last ``confirmed_at`` and its event count."""

    symbol: str
    strength: int
    first_confirmed_at: datetime
    last_confirmed_at: datetime
    events: int | None = None  # None: not counted

    def to_json(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "strength": self.strength,
            "first_confirmed_at": self.first_confirmed_at.isoformat(),
            "last_confirmed_at": self.last_confirmed_at.isoformat(),
            "events": self.events,
        }


# ---------------------------------------------------------------------------- matching


def matches(symbol: str, spec: str | None) -> bool:
    """Whether a symbol is named by ``spec``: a symbol, a shell-style pattern, or a comma-separated list.

    >>> [matches("GLBX.MDP3:NQ", s) for s in (None, "GLBX.MDP3:*", "*:ES,*:NQ", "NQ")]
    [True, True, True, False]
    """
    if spec is None:
        return True
    return any(
        fnmatch.fnmatchcase(symbol, item) if is_pattern(item) else symbol == item
        for item in split_symbols(spec)
    )


# ---------------------------------------------------------------------------- queries (one cursor)


def bar_series(
    cur: Any, tables: Tables, pattern: str | None = None, *, count: bool = True, limit: int | None = None
) -> list[BarSeries]:
    """The symbols of the bars table matching ``pattern`` (all without one), in symbol order.

    ``count=False`` skips the bar counts (two index probes per symbol); ``limit`` keeps the first
    symbols only. The bars table must exist (bad input otherwise).
    """
    schema, name = tables.bars_parts
    if not table_exists(cur, schema, name):
        raise BadInput(f"bars table {tables.bars!r} does not exist")
    table, sym, ts = (
        qualified(schema, name),
        quote_ident(tables.columns["symbol"]),
        quote_ident(tables.columns["ts"]),
    )
    symbols = [s for s in loose_index_scan(cur, table, sym) if matches(s, pattern)][:limit]
    if not symbols:
        return []
    counted = f"(SELECT count(*) FROM {table} WHERE {sym} = s.name)" if count else "NULL::bigint"
    rows = fetch_all(
        cur,
        f"SELECT s.name, (SELECT min({ts}) FROM {table} WHERE {sym} = s.name), "
        f"(SELECT max({ts}) FROM {table} WHERE {sym} = s.name), {counted} "
        "FROM unnest($1::text[]) WITH ORDINALITY AS s(name, n) ORDER BY s.n",
        (symbols,),
    )
    return [
        BarSeries(s, instant_utc(first), instant_utc(last), None if n is None else int(n))
        for s, first, last, n in rows
    ]


def event_series(
    cur: Any, events_table: str, pattern: str | None = None, *, count: bool = True, limit: int | None = None
) -> list[EventSeries]:
    """The (symbol, strength) series of the events table whose symbol matches ``pattern``.

    In symbol then strength order; ``limit`` keeps the series of the first symbols only. The
    events table must exist (bad input otherwise: no backfill has written it yet).
    """
    schema, name = split_table_name(events_table, "events table name")
    if not table_exists(cur, schema, name):
        raise BadInput(f"events table {events_table!r} does not exist: run a backfill first")
    table = qualified(schema, name)
    symbols = [s for s in loose_index_scan(cur, table, "symbol") if matches(s, pattern)][:limit]
    keys = [(s, k) for s in symbols for k in loose_index_scan(cur, table, "strength", "symbol = $1", (s,))]
    if not keys:
        return []
    of_key = f"FROM {table} WHERE symbol = s.name AND strength = s.k"
    counted = f"(SELECT count(*) {of_key})" if count else "NULL::bigint"
    rows = fetch_all(
        cur,
        f"SELECT s.name, s.k, (SELECT min(confirmed_at) {of_key}), (SELECT max(confirmed_at) {of_key}), "
        f"{counted} FROM unnest($1::text[], $2::int[]) WITH ORDINALITY AS s(name, k, n) ORDER BY s.n",
        ([s for s, _ in keys], [int(k) for _, k in keys]),
    )
    return [
        EventSeries(s, int(k), instant_utc(first), instant_utc(last), None if n is None else int(n))
        for s, k, first, last, n in rows
    ]


# ---------------------------------------------------------------------------- hints for error messages


def _day(value: datetime) -> str:
    return value.date().isoformat()


def _more(shown: int, total: int) -> str:
    return f" … ({total:,} in all)" if total > shown else ""


def bars_hint(cur: Any, tables: Tables) -> str:
    """``"; symbols with bars: SYNTH:NQ (2024-12-01 → 2025-11-30)"`` (appended to a "no bars" message)."""
    total = len(loose_index_scan(cur, qualified(*tables.bars_parts), quote_ident(tables.columns["symbol"])))
    if not total:
        return f"; {tables.bars!r} holds no bars (load some with `triangles bars load`)"
    shown = bar_series(cur, tables, count=False, limit=HINT_SYMBOLS)
    listed = ", ".join(f"{s.symbol} ({_day(s.first_bar)} → {_day(s.last_bar)})" for s in shown)
    return f"; symbols with bars: {listed}{_more(len(shown), total)}"


def events_hint(cur: Any, events_table: str) -> str:
    """``"; symbols with events: SYNTH:NQ (k=5, 2024-12-08 → 2025-11-30)"`` (for a "no events" message)."""
    schema, name = split_table_name(events_table, "events table name")
    total = len(loose_index_scan(cur, qualified(schema, name), "symbol"))
    if not total:
        return f"; {events_table!r} holds no events (write some with `triangles backfill`)"
    by_symbol: dict[str, list[str]] = {}
    for s in event_series(cur, events_table, count=False, limit=HINT_SYMBOLS):
        by_symbol.setdefault(s.symbol, []).append(
            f"k={s.strength}, {_day(s.first_confirmed_at)} → {_day(s.last_confirmed_at)}"
        )
    listed = ", ".join(f"{symbol} ({'; '.join(spans)})" for symbol, spans in by_symbol.items())
    return f"; symbols with events: {listed}{_more(len(by_symbol), total)}"


# ---------------------------------------------------------------------------- the Python API


def _run(database_url: str | None, what: str, body: Callable[[Any], T]) -> T:
    from triangles_polars.embedded import database_url as resolve

    url, _ = resolve(database_url)
    with Session(url, INVENTORY_NAME) as session:
        return session.run(what, body)


def list_bars(
    pattern: str | None = None,
    *,
    database_url: str | None = None,
    bars_table: str = DEFAULT_BARS_TABLE,
    columns: dict[str, str] | None = None,
    count: bool = True,
) -> list[BarSeries]:
    """Each symbol of the bars table (matching ``pattern``) with its first and last bar and its bar count."""
    tables = Tables.parse(bars_table, DEFAULT_EVENTS_TABLE, columns or {})
    return _run(database_url, "listing the bars", lambda cur: bar_series(cur, tables, pattern, count=count))


def list_events(
    pattern: str | None = None,
    *,
    database_url: str | None = None,
    events_table: str = DEFAULT_EVENTS_TABLE,
    count: bool = True,
) -> list[EventSeries]:
    """Each (symbol, strength) of the events table (symbol matching ``pattern``): first and last ``confirmed_at``, count."""
    split_table_name(events_table, "events table name")
    return _run(
        database_url, "listing the events", lambda cur: event_series(cur, events_table, pattern, count=count)
    )


# ---------------------------------------------------------------------------- the human tables


def _when(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M")


def _count(n: int | None) -> str:
    return "" if n is None else f"{n:,}"


def format_table(header: tuple[str, ...], rows: list[tuple[str, ...]], right: set[int]) -> list[str]:
    """Columns padded to their widest cell (``right``: the columns aligned right, e.g. counts).

    >>> format_table(("a", "n"), [("x", "1,000"), ("yy", "5")], {1})
    ['a       n', 'x   1,000', 'yy      5']
    """
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: tuple[str, ...]) -> str:
        padded = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    return [line(header), *(line(row) for row in rows)]


def bar_table(series: list[BarSeries]) -> list[str]:
    """The lines of ``triangles bars list``: symbol, first bar, last bar (UTC), bars; a totals line."""
    rows = [(s.symbol, _when(s.first_bar), _when(s.last_bar), _count(s.bars)) for s in series]
    total = sum(s.bars or 0 for s in series)
    footer = f"{len(series):,} symbol(s)" + (
        f", {total:,} bars" if all(s.bars is not None for s in series) else ""
    )
    return [*format_table(("symbol", "first bar (UTC)", "last bar (UTC)", "bars"), rows, {3}), footer]


def event_table(series: list[EventSeries]) -> list[str]:
    """The lines of ``triangles events list``: symbol, strength, first and last confirmed_at (UTC), events."""
    rows = [
        (s.symbol, str(s.strength), _when(s.first_confirmed_at), _when(s.last_confirmed_at), _count(s.events))
        for s in series
    ]
    total = sum(s.events or 0 for s in series)
    header = ("symbol", "k", "first confirmed_at (UTC)", "last confirmed_at (UTC)", "events")
    footer = f"{len(series):,} series" + (
        f", {total:,} events" if all(s.events is not None for s in series) else ""
    )
    return [*format_table(header, rows, {1, 4}), footer]


__all__ = [
    "BarSeries",
    "EventSeries",
    "bar_series",
    "bar_table",
    "bars_hint",
    "event_series",
    "event_table",
    "events_hint",
    "list_bars",
    "list_events",
]
