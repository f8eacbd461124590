"""Which symbols a run covers: names and shell-style patterns matched against the bars table.

See ``docs/contract.md#many-symbols-strengths-and-workers``. The distinct symbols are found by
walking the ``(symbol, ts)`` key one symbol at a time (a loose index scan), so matching stays
fast on a bars table of 10⁸ rows; a plain list of names needs no scan at all.
"""

from __future__ import annotations

import fnmatch
from typing import Any

from triangles_polars.db import fetch_all, qualified, quote_ident
from triangles_polars.errors import BadInput
from triangles_polars.settings import Tables

_GLOB = set("*?[")


def split_symbols(spec: str) -> list[str]:
    """``"ES,NQ*, CL"`` → ``["ES", "NQ*", "CL"]`` (empty items are bad input).

    >>> split_symbols("GLBX.MDP3:ES, *:NQ*")
    ['GLBX.MDP3:ES', '*:NQ*']
    """
    items = [part.strip() for part in spec.split(",")]
    if not items or any(not item for item in items):
        raise BadInput(
            f"bad symbol list {spec!r}: use SYMBOL or a comma-separated list of symbols and patterns"
        )
    return list(dict.fromkeys(items))


def is_pattern(item: str) -> bool:
    """Whether a list item is a shell-style pattern rather than a symbol."""
    return bool(_GLOB & set(item))


def distinct_symbols(cur: Any, tables: Tables) -> list[str]:
    """Every symbol of the bars table, in order, by a loose index scan of the (symbol, ts) key."""
    return loose_index_scan(cur, qualified(*tables.bars_parts), quote_ident(tables.columns["symbol"]))


def loose_index_scan(
    cur: Any, table: str, column: str, where: str = "TRUE", params: tuple[Any, ...] = ()
) -> list[Any]:
    """Distinct values of ``column`` (quoted) in ``table`` (qualified), in order: one index probe per value.

    ``column`` must lead an index, after the columns that ``where`` fixes by equality (the
    strengths of one symbol walk the events' ``(symbol, strength, …)`` key), so that no query
    reads the whole table the way ``SELECT DISTINCT`` would.
    """
    sql = f"""
        WITH RECURSIVE walk AS (
            (SELECT {column} AS value FROM {table} WHERE {where} ORDER BY {column} LIMIT 1)
            UNION ALL
            SELECT (SELECT {column} FROM {table} WHERE {where} AND {column} > walk.value ORDER BY {column} LIMIT 1)
            FROM walk WHERE walk.value IS NOT NULL
        )
        SELECT value FROM walk WHERE value IS NOT NULL"""
    return [row[0] for row in fetch_all(cur, sql, params or None)]


def symbols_with_bars(cur: Any, tables: Tables, names: list[str]) -> set[str]:
    """Which of ``names`` have at least one bar (one index probe per name)."""
    table = qualified(*tables.bars_parts)
    sym = quote_ident(tables.columns["symbol"])
    sql = (
        f"SELECT name FROM unnest($1::text[]) AS name WHERE EXISTS (SELECT 1 FROM {table} WHERE {sym} = name)"
    )
    return {row[0] for row in fetch_all(cur, sql, (names,))}


def resolve_symbols(cur: Any, tables: Tables, spec: str) -> list[str]:
    """The symbols a run covers, in the order given (patterns expand in sorted order).

    A pattern that matches nothing, or a named symbol with no bars at all, is bad input, with
    the symbols that do exist named in the message.
    """
    items = split_symbols(spec)
    if len(items) == 1 and not is_pattern(items[0]):
        # One symbol: its task says "no bars for symbol" if it reads none (no extra probe of the bars).
        return items
    patterns = [item for item in items if is_pattern(item)]
    available = distinct_symbols(cur, tables) if patterns else None
    names = [item for item in items if not is_pattern(item)]
    present = symbols_with_bars(cur, tables, names) if names else set()
    out: list[str] = []
    for item in items:
        if is_pattern(item):
            matched = [s for s in available or [] if fnmatch.fnmatchcase(s, item)]
            if not matched:
                raise BadInput(
                    f"pattern {item!r} matches no symbol of {tables.bars!r}{_existing(cur, tables)}"
                )
            out.extend(matched)
        elif item not in present:
            raise BadInput(f"no bars for symbol {item!r} in {tables.bars!r}{_existing(cur, tables)}")
        else:
            out.append(item)
    return list(dict.fromkeys(out))


def _existing(cur: Any, tables: Tables) -> str:
    """What the bars table holds, for a message (docs/contract.md#empty-results-speak)."""
    from triangles_polars.inventory import bars_hint  # it builds on this module

    return bars_hint(cur, tables)
