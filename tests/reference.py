"""Test oracle for hygiene and triangle events (docs/contract.md#hygiene, #triangle-events).

This module is a deliberately plain, row-by-row re-implementation of the
contract in ``docs/contract.md`` (hygiene, triangle events). It uses only the standard library
(no polars, no numpy) and plain loops, so that it is easy to check by eye
against the contract. The product's lazy Polars implementation is tested by
comparing its output with the output of these functions.

Project decisions pinned here (where the contract leaves room):

* A bar flagged by rule 1 carries only ``OHLC_INTEGRITY``; a bar flagged by
  rule 2 carries only ``PRICE_LT_<min_price>``; rules 3-5 may stack.
* ``ref`` for rules 3-5 is the median close of the ``reference_window`` most
  recent *earlier* bars that pass rules 1-2. Bars flagged by rules 3-5 still
  pass rules 1-2, so they still count towards later bars' ``ref``.
* Positions are indices among the good bars only (time gaps do not matter).
* Pivot ordering within one bar that is both a swing high and a swing low:
  low first if ``close >= open``, else high first.
* ``confirmed_at = good_bars[i + k].ts + interval``.
* Every pivot C with two pivots before it in the sequence makes one event.
"""

import math
import statistics
from datetime import datetime, timedelta

THRESHOLD_KEYS = (
    "min_price",
    "discontinuity",
    "small_range",
    "big_gap",
    "flat_gap",
    "reference_window",
)

PROFILES = ("basic", "full")


def code_suffix(x: float) -> str:
    """Number as it appears in a reason code: 1000.0 -> "1000", 0.5 -> "0.5"."""
    if isinstance(x, int):
        return str(x)
    if float(x).is_integer():
        return str(int(x))
    return repr(float(x))


def _is_bad_number(x) -> bool:
    """True for None, NaN, +inf and -inf."""
    if x is None:
        return True
    return not math.isfinite(x)


def _fails_rule_1(bar: dict) -> bool:
    o, h, l, c = bar["open"], bar["high"], bar["low"], bar["close"]
    if _is_bad_number(o) or _is_bad_number(h) or _is_bad_number(l) or _is_bad_number(c):
        return True
    if h < max(o, c):
        return True
    if l > min(o, c):
        return True
    return h < l


def _fails_rule_2(bar: dict, min_price: float) -> bool:
    o, h, l, c = bar["open"], bar["high"], bar["low"], bar["close"]
    return min(o, h, l, c) < min_price


def reference_hygiene(bars: list[dict], profile: str, thresholds: dict) -> list[list[str]]:
    """Reason codes per bar (empty list = good bar), codes in rule order.

    bars: one symbol, sorted by ts, dicts with ts, open, high, low, close.
    profile: "basic" (rules 1-2) or "full" (rules 1-5).
    thresholds: dict with THRESHOLD_KEYS ("basic" only needs min_price).
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown hygiene profile: {profile!r}")

    min_price = thresholds["min_price"]
    code_rule_1 = "OHLC_INTEGRITY"
    code_rule_2 = f"PRICE_LT_{code_suffix(min_price)}"

    if profile == "full":
        discontinuity = thresholds["discontinuity"]
        small_range = thresholds["small_range"]
        big_gap = thresholds["big_gap"]
        flat_gap = thresholds["flat_gap"]
        reference_window = thresholds["reference_window"]
        code_rule_3 = f"DISCONTINUITY_{code_suffix(discontinuity)}"
        code_rule_4 = f"SMALL_RANGE_BIG_GAP_{code_suffix(big_gap)}"
        code_rule_5 = f"FLAT_DISCONTINUITY_{code_suffix(flat_gap)}"

    result = []
    # Closes of the earlier bars that passed rules 1-2, oldest first.
    passed_closes = []

    for bar in bars:
        codes = []

        if _fails_rule_1(bar):
            result.append([code_rule_1])
            continue

        if _fails_rule_2(bar, min_price):
            result.append([code_rule_2])
            continue

        if profile == "full":
            recent = passed_closes[-reference_window:] if reference_window > 0 else []
            if len(recent) > 0:
                ref = statistics.median(recent)
                o, h, l, c = bar["open"], bar["high"], bar["low"], bar["close"]

                # Rule 3
                if max(abs(o - ref), abs(h - ref), abs(l - ref), abs(c - ref)) > discontinuity:
                    codes.append(code_rule_3)
                # Rule 4
                if (h - l) <= small_range and abs(o - ref) > big_gap:
                    codes.append(code_rule_4)
                # Rule 5
                if o == h and h == l and l == c and abs(c - ref) > flat_gap:
                    codes.append(code_rule_5)

        # This bar passed rules 1-2 (whatever rules 3-5 said): it counts
        # towards the reference of later bars.
        passed_closes.append(bar["close"])
        result.append(codes)

    return result


def _is_swing_high(highs: list[float], i: int, k: int) -> bool:
    left = highs[i - k : i]
    right = highs[i + 1 : i + k + 1]
    return highs[i] > max(left) and highs[i] >= max(right)


def _is_swing_low(lows: list[float], i: int, k: int) -> bool:
    left = lows[i - k : i]
    right = lows[i + 1 : i + k + 1]
    return lows[i] < min(left) and lows[i] <= min(right)


def reference_pivots(good_bars: list[dict], strength: int) -> list[dict]:
    """Pivots of the good bars, in sequence order (position, order within bar).

    Each pivot is {"pos": int, "kind": "H" | "L", "price": float, "ts": datetime}.
    """
    k = strength
    if k < 1:
        raise ValueError(f"strength must be >= 1, got {k}")

    n = len(good_bars)
    highs = [bar["high"] for bar in good_bars]
    lows = [bar["low"] for bar in good_bars]

    pivots = []
    # Both windows must be complete: i - k >= 0 and i + k <= n - 1.
    for i in range(k, n - k):
        bar = good_bars[i]
        high_pivot = None
        low_pivot = None
        if _is_swing_high(highs, i, k):
            high_pivot = {"pos": i, "kind": "H", "price": bar["high"], "ts": bar["ts"]}
        if _is_swing_low(lows, i, k):
            low_pivot = {"pos": i, "kind": "L", "price": bar["low"], "ts": bar["ts"]}

        if high_pivot is not None and low_pivot is not None:
            if bar["close"] >= bar["open"]:
                pivots.append(low_pivot)
                pivots.append(high_pivot)
            else:
                pivots.append(high_pivot)
                pivots.append(low_pivot)
        elif high_pivot is not None:
            pivots.append(high_pivot)
        elif low_pivot is not None:
            pivots.append(low_pivot)

    return pivots


def reference_events(
    bars: list[dict],
    symbol: str,
    strength: int,
    interval: timedelta,
    profile: str,
    thresholds: dict,
    start: datetime,
    end_exclusive: datetime,
) -> list[dict]:
    """Full pipeline for one symbol: hygiene, drop bad bars, pivots, triangles.

    Keeps the events with start <= confirmed_at < end_exclusive, sorted by
    (confirmed_at, c_ts, order of C within its bar).
    """
    k = strength

    for i in range(1, len(bars)):
        prev, cur = bars[i - 1], bars[i]
        if not prev["ts"] < cur["ts"]:
            raise ValueError(f"bars not strictly increasing in ts: {prev['ts']} then {cur['ts']}")

    codes = reference_hygiene(bars, profile, thresholds)
    good_bars = []
    for bar, bar_codes in zip(bars, codes):
        if len(bar_codes) == 0:
            good_bars.append(bar)

    pivots = reference_pivots(good_bars, k)

    events = []
    for j in range(2, len(pivots)):
        a = pivots[j - 2]
        b = pivots[j - 1]
        c = pivots[j]
        confirmed_at = good_bars[c["pos"] + k]["ts"] + interval
        if not (start <= confirmed_at < end_exclusive):
            continue
        event = {
            "symbol": symbol,
            "strength": k,
            "confirmed_at": confirmed_at,
            "pattern": a["kind"] + b["kind"] + c["kind"],
            "a_ts": a["ts"],
            "b_ts": b["ts"],
            "c_ts": c["ts"],
            "a_kind": a["kind"],
            "b_kind": b["kind"],
            "c_kind": c["kind"],
            "a_price": a["price"],
            "b_price": b["price"],
            "c_price": c["price"],
            "leg_ab": b["price"] - a["price"],
            "leg_bc": c["price"] - b["price"],
            "bars_ab": b["pos"] - a["pos"],
            "bars_bc": c["pos"] - b["pos"],
        }
        # j (the index of C in the pivot sequence) breaks ties between two
        # pivots in one bar: it is the order of C within its bar.
        events.append((confirmed_at, c["ts"], j, event))

    events.sort(key=lambda item: (item[0], item[1], item[2]))
    return [item[3] for item in events]
