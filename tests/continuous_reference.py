"""Plain-Python reference of the continuous-series rules (tests only: loops, no Polars).

Written from the rules as a user reads them, not from the vectorised code:

* a bar belongs to session D when its open time in America/Chicago is at or after 17:00 on D − 1
  and before 17:00 on D; the previous session is the latest earlier session with bars (bars of
  the root's outright futures);
* per session, the outright (class ``F``) of the root with the largest volume in the previous
  session (the first session: its own); a tie keeps the current contract, other ties go to the
  earliest expiration then the symbol; never a contract expiring before the current one (a
  contract without an expiration neither blocks nor is blocked, so the series may come back to
  a contract it left);
* a roll's gap is ``close(to) − close(from)`` at the latest shared bar time before the roll
  (both bars with a close), null if there is none; with ``difference`` each bar is shifted by
  the sum of the (non-null) gaps of the rolls after its session, whatever its contract.

Bars with rows but no outright of the root are an error of the product (``BadInput``); the tests
check that themselves, and this reference just gives an empty series for them.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

CHICAGO = ZoneInfo("America/Chicago")


def session_of(ts: datetime) -> date:
    """The CME trading day of a bar opening at ``ts`` (aware)."""
    local = ts.astimezone(CHICAGO)
    return local.date() + timedelta(days=1) if local.hour >= 17 else local.date()


def is_outright_of(bar: dict[str, Any], root: str) -> bool:
    """Class F and symbol ``[DATASET:]ROOT<month><year>``."""
    if bar["instrument_class"] != "F":
        return False
    name = bar["symbol"].split(":")[-1]
    return re.fullmatch(re.escape(root) + r"[FGHJKMNQUVXZ]\d{1,2}", name) is not None


@dataclass
class Roll:
    session: date
    from_contract: str
    to_contract: str
    gap: float | None


def choose_contracts(bars: list[dict[str, Any]], root: str) -> tuple[list[date], dict[date, str]]:
    """Sessions with bars, and the contract of each."""
    mine = [b for b in bars if is_outright_of(b, root)]
    volume: dict[date, dict[str, int]] = {}
    expiry: dict[str, datetime | None] = {}
    for b in mine:
        s = session_of(b["ts"])
        volume.setdefault(s, {})
        volume[s][b["symbol"]] = volume[s].get(b["symbol"], 0) + (b["volume"] or 0)
        expiry[b["symbol"]] = b["expiration"]
    sessions = sorted(volume)
    chosen: dict[date, str] = {}
    current: str | None = None
    for i, s in enumerate(sessions):
        basis = volume[sessions[i - 1]] if i > 0 else volume[s]
        allowed = {}
        for c, v in basis.items():
            if (
                current is None
                or expiry[current] is None
                or expiry[c] is None
                or expiry[c] >= expiry[current]
            ):
                allowed[c] = v
        if current is not None:
            allowed.setdefault(current, 0)
        best = max(allowed.values())
        if current is None or allowed[current] != best:
            tied = sorted(
                (c for c in allowed if allowed[c] == best),
                key=lambda c: (expiry[c] is None, expiry[c] or datetime.min.replace(tzinfo=CHICAGO), c),
            )
            current = tied[0]
        chosen[s] = current
    return sessions, chosen


def continuous(
    bars: list[dict[str, Any]], root: str, adjust: str = "none", symbol: str = "GLBX.MDP3:NQ"
) -> tuple[list[dict[str, Any]], list[Roll]]:
    """The series' bars (sorted by ts) and its rolls."""
    sessions, chosen = choose_contracts(bars, root)
    mine = [b for b in bars if is_outright_of(b, root)]
    rolls: list[Roll] = []
    for prev, s in itertools.pairwise(sessions):
        if chosen[prev] != chosen[s]:
            old, new = chosen[prev], chosen[s]
            closes_old = {
                b["ts"]: b["close"]
                for b in mine
                if b["symbol"] == old and session_of(b["ts"]) < s and b["close"] is not None
            }
            closes_new = {
                b["ts"]: b["close"]
                for b in mine
                if b["symbol"] == new and session_of(b["ts"]) < s and b["close"] is not None
            }
            common = sorted(set(closes_old) & set(closes_new))
            gap = closes_new[common[-1]] - closes_old[common[-1]] if common else None
            rolls.append(Roll(s, old, new, gap))
    series = []
    for b in sorted(mine, key=lambda b: b["ts"]):
        s = session_of(b["ts"])
        if chosen[s] != b["symbol"]:
            continue
        shift = 0.0
        if adjust == "difference":
            for r in reversed(rolls):
                if r.session > s and r.gap is not None:
                    shift += r.gap
        row = {"symbol": symbol, "ts": b["ts"], "volume": b["volume"]}
        for p in ("open", "high", "low", "close"):
            row[p] = None if b[p] is None else b[p] + shift
        series.append(row)
    return series, rolls
