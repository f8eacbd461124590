"""Synthetic, NQ-like 1-minute bar history for demos, tests and benchmarks.

The generator is fully vectorized (numpy + Polars, no Python loop over bars) and
deterministic for a given set of arguments and ``seed``.

Model
-----
* **Calendar** - the CME Globex equity-index week in America/New_York local time:
  trading from Sunday 18:00 to Friday 17:00 with a daily one-hour maintenance break
  17:00-18:00 Monday-Thursday and nothing on Saturday. Daylight-saving time is handled
  through Polars time-zone conversion. Exchange holidays and early closes are *ignored*.
  Bar open times lie on a grid of ``bar_interval_minutes`` counted from midnight UTC.
* **Price level** - a trend interpolated geometrically between yearly anchor levels
  of the NQ future (about 1,800 in mid-2010, above 20,000 in 2025; flat outside the
  anchors), a slowly mean-reverting deviation (pinned to zero at the anchors inside the
  range), and a fat-tailed log-space random walk (a Brownian bridge pinned every few
  trading days, so the path stays near the trend) whose volatility follows an intraday
  profile (busy at the 09:30 ET cash open and into the 16:00 close, quiet overnight) and
  a slowly varying volatility regime. Session starts (after the daily break and the
  weekend) gap.
* **Bars** - the open is the previous bar's close (plus the gap at a session start),
  high/low are drawn from the exact Brownian-bridge extremes between open and close, and
  all prices are rounded to the 0.25 tick. Volume scales with the intraday profile, the
  size of the move and a year-dependent average daily volume.
* **Missing bars** - ``missing_share`` of the calendar's bars are dropped, quiet
  (overnight) minutes more often than busy ones.
* **Corruption** - optionally ``corruption_share`` of the bars get planted defects of the
  kinds legacy-table hygiene rules catch (spikes, runs of spikes, far flat bars, far
  small-range bars, decimal-shifted low prices, high < low). Uncorrupted bars always
  satisfy OHLC integrity.

Note that the random path depends on the whole requested range: two calls with
different ``start``/``end`` do not produce identical bars on their overlap.
"""

from __future__ import annotations

from datetime import date, datetime

import numpy as np
import polars as pl

__all__ = ["TICK", "calendar_minutes", "generate_bars"]

TICK = 0.25
"""Price increment of the NQ future."""

_US_PER_MIN = 60_000_000
_US_PER_HOUR = 3_600_000_000
_US_PER_DAY = 86_400_000_000
_US_PER_WEEK = 7 * _US_PER_DAY
_LOCAL_TZ = "America/New_York"

# Trend anchors (date, approximate NQ level); interpolated geometrically, flat outside.
_PRICE_ANCHORS: tuple[tuple[date, float], ...] = (
    (date(2010, 1, 1), 1_900.0),
    (date(2010, 7, 1), 1_800.0),
    (date(2012, 1, 1), 2_600.0),
    (date(2014, 1, 1), 3_600.0),
    (date(2016, 1, 1), 4_300.0),
    (date(2018, 1, 1), 6_500.0),
    (date(2020, 1, 1), 8_800.0),
    (date(2021, 1, 1), 13_000.0),
    (date(2022, 1, 1), 11_000.0),
    (date(2023, 1, 1), 13_000.0),
    (date(2024, 1, 1), 17_000.0),
    (date(2025, 1, 1), 21_000.0),
    (date(2026, 1, 1), 25_000.0),
)
# Average daily volume (contracts) anchors; interpolated linearly, flat outside.
_ADV_ANCHORS: tuple[tuple[date, float], ...] = (
    (date(2010, 1, 1), 250_000.0),
    (date(2014, 1, 1), 220_000.0),
    (date(2018, 1, 1), 420_000.0),
    (date(2020, 1, 1), 550_000.0),
    (date(2022, 1, 1), 620_000.0),
    (date(2025, 1, 1), 650_000.0),
)

_DAILY_VOL = 0.0125  # typical daily log-return volatility
_REGIME_SD = 0.30  # sd of the log volatility regime
_SLOW_SD = 0.04  # sd of the slow log deviation from the trend
_GAP_VOL_PER_SQRT_HOUR = 0.0006  # session-start gap sd per sqrt(hours closed)
_BRIDGE_DAYS = 5  # pin the fast random walk back to the trend every ~5 trading days
_T_DF = 5.0  # Student-t degrees of freedom of the bar returns

_BREAK_START = 17 * 60  # local minute of day
_SESSION_START = 18 * 60


def _to_date(value: str | date) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        return date.fromisoformat(value)
    msg = f"expected an ISO date string or a date, got {type(value).__name__}"
    raise TypeError(msg)


def _date_us(d: date) -> int:
    """Microseconds since the Unix epoch of ``d`` 00:00 UTC."""
    return (d - date(1970, 1, 1)).days * _US_PER_DAY


def _check_interval(bar_interval_minutes: int) -> int:
    k = int(bar_interval_minutes)
    if k != bar_interval_minutes or k < 1 or 60 % k != 0:
        msg = f"bar_interval_minutes must be a positive divisor of 60, got {bar_interval_minutes!r}"
        raise ValueError(msg)
    return k


def _range_us(start: str | date, end: str | date) -> tuple[int, int]:
    s, e = _to_date(start), _to_date(end)
    if e < s:
        msg = f"end ({e}) is before start ({s})"
        raise ValueError(msg)
    return _date_us(s), _date_us(e) + _US_PER_DAY


def _calendar(start_us: int, end_us: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Open times (us since epoch, UTC) of the trading bars and their local minute of day."""
    # The New York UTC offset only changes on whole UTC hours, so convert an hourly grid
    # with Polars (DST-aware) and broadcast the offsets to the bars.
    hours = np.arange(start_us, end_us, _US_PER_HOUR, dtype=np.int64)
    utc = pl.Series("h", hours).cast(pl.Datetime("us", "UTC"))
    local = utc.dt.convert_time_zone(_LOCAL_TZ).dt.replace_time_zone(None).cast(pl.Int64)
    offsets = local.to_numpy() - hours

    step = k * _US_PER_MIN
    ts = np.arange(start_us, end_us, step, dtype=np.int64)
    local_us = ts + offsets[(ts - start_us) // _US_PER_HOUR]
    weekday = (local_us // _US_PER_DAY + 3) % 7  # Monday = 0; 1970-01-01 was a Thursday
    mod = (local_us % _US_PER_DAY) // _US_PER_MIN  # local minute of day
    closed = (
        (weekday == 5)  # Saturday
        | ((weekday == 6) & (mod < _SESSION_START))  # Sunday before 18:00
        | ((weekday == 4) & (mod >= _BREAK_START))  # Friday from 17:00
        | ((weekday <= 3) & (mod >= _BREAK_START) & (mod < _SESSION_START))  # daily break
    )
    keep = ~closed
    return ts[keep], mod[keep]


def calendar_minutes(start: str | date, end: str | date, bar_interval_minutes: int = 1) -> pl.Series:
    """Open times of all calendar bars in [start 00:00 UTC, end + 1 day 00:00 UTC).

    This is the Globex calendar (see the module docstring) before any bar is dropped;
    returned as a ``Datetime("us", "UTC")`` Series named ``ts``.
    """
    k = _check_interval(bar_interval_minutes)
    start_us, end_us = _range_us(start, end)
    ts, _ = _calendar(start_us, end_us, k)
    return pl.Series("ts", ts).cast(pl.Datetime("us", "UTC"))


def _intraday_profile() -> np.ndarray:
    """Relative 1-minute volatility by New York minute of day (0 during the break)."""
    m = np.arange(1440, dtype=np.float64)
    p = np.full(1440, 0.45)  # Asian session
    p[m >= 180] = 0.6  # Europe from 03:00
    p += np.where(m >= 180, 0.3 * np.exp(-(m - 180) / 20), 0.0)
    p[m >= 480] = 0.8  # US pre-market from 08:00
    p += np.where(m >= 510, 1.2 * np.exp(-(m - 510) / 8), 0.0)  # 08:30 data releases
    rth = (m >= 570) & (m < 960)  # cash session 09:30-16:00: U shape
    p[rth] = (
        0.85
        + 2.2 * np.exp(-(m[rth] - 570) / 25)
        + 0.8 * np.exp(-(960 - m[rth]) / 20)
        - 0.1 * ((m[rth] >= 720) & (m[rth] < 840))
    )
    p[(m >= 960) & (m < 975)] = 0.9
    p[(m >= 975) & (m < _BREAK_START)] = 0.55
    p[(m >= _BREAK_START) & (m < _SESSION_START)] = 0.0
    evening = m >= _SESSION_START
    p[evening] = 0.45 + 0.5 * np.exp(-(m[evening] - _SESSION_START) / 30)
    return p


def _window_sums(x: np.ndarray, k: int) -> np.ndarray:
    """sum(x[m : m + k]) for every minute of day m (wrapping around midnight)."""
    cs = np.concatenate(([0.0], np.cumsum(np.concatenate((x, x)))))
    return cs[np.arange(1440) + k] - cs[np.arange(1440)]


def _ar1(rng: np.random.Generator, n: int, half_life: float, sd: float) -> np.ndarray:
    """Stationary AR(1) path of length n (loop over knots only, never over bars)."""
    phi = 0.5 ** (1.0 / half_life)
    eps = rng.standard_normal(n)
    x = np.empty(n)
    x[0] = sd * eps[0]
    innov = sd * np.sqrt(1.0 - phi * phi) * eps
    for i in range(1, n):
        x[i] = phi * x[i - 1] + innov[i]
    return x


def _interp_anchors(t_us: np.ndarray, anchors: tuple[tuple[date, float], ...], log: bool) -> np.ndarray:
    xs = np.array([_date_us(d) for d, _ in anchors], dtype=np.float64)
    ys = np.array([v for _, v in anchors], dtype=np.float64)
    if log:
        return np.interp(t_us, xs, np.log(ys))
    return np.interp(t_us, xs, ys)


def _to_tick(x: np.ndarray) -> np.ndarray:
    return np.rint(x / TICK) * TICK


def _empty_frame() -> pl.DataFrame:
    from triangles_polars.schema import BAR_SCHEMA

    return pl.DataFrame(schema=BAR_SCHEMA)


def generate_bars(
    start: str | date,
    end: str | date,
    *,
    symbol: str = "GLBX.MDP3:NQ",
    seed: int = 0,
    missing_share: float = 0.05,
    corruption_share: float = 0.0,
    bar_interval_minutes: int = 1,
) -> pl.DataFrame:
    """Generate a synthetic NQ-like bar history (see the module docstring for the model).

    Bars whose open time ``ts`` lies in [start 00:00 UTC, end + 1 day 00:00 UTC) on the
    Globex calendar (holidays ignored), minus ``missing_share`` of them dropped at random,
    with ``corruption_share`` of the remaining bars corrupted on purpose.

    Returns columns ``symbol`` (String), ``ts`` (Datetime("us", "UTC"), bar open time),
    ``open``/``high``/``low``/``close`` (Float64, multiples of 0.25) and ``volume``
    (Int64), sorted by unique ``ts``. The same arguments always give the same frame.

    ``bar_interval_minutes`` must divide 60, ``missing_share`` lie in [0, 1) and
    ``corruption_share`` in [0, 0.2]; otherwise ``ValueError`` is raised.
    """
    k = _check_interval(bar_interval_minutes)
    if not 0.0 <= missing_share < 1.0:
        msg = f"missing_share must be in [0, 1), got {missing_share!r}"
        raise ValueError(msg)
    if not 0.0 <= corruption_share <= 0.2:
        msg = f"corruption_share must be in [0, 0.2], got {corruption_share!r}"
        raise ValueError(msg)
    start_us, end_us = _range_us(start, end)
    ts, mod = _calendar(start_us, end_us, k)
    n = ts.size
    if n == 0:
        return _empty_frame()
    rng = np.random.default_rng(seed)
    t = ts.astype(np.float64)

    # Per-bar volatility: intraday profile (summed over the bar's minutes) x regime.
    prof = _intraday_profile()
    p2 = prof * prof
    base_var = _DAILY_VOL**2 / p2.sum()  # p2 is zero during the break
    var_by_mod = _window_sums(p2, k) * base_var
    m = np.arange(1440)
    vol_prof = p2 * np.where((m >= 570) & (m < 960), 3.0, np.where((m >= 480) & (m < 570), 1.5, 1.0))
    vol_by_mod = _window_sums(vol_prof / vol_prof.sum(), k)  # share of daily volume

    knot0 = (ts[0] // _US_PER_WEEK) * _US_PER_WEEK
    knots = np.arange(knot0, ts[-1] + 2 * _US_PER_WEEK, _US_PER_WEEK, dtype=np.int64).astype(np.float64)
    regime = _ar1(rng, knots.size, half_life=6.0, sd=_REGIME_SD)
    regime_bar = np.exp(np.interp(t, knots, regime) - _REGIME_SD**2)
    sigma = np.sqrt(var_by_mod[mod]) * regime_bar

    # Fat-tailed bar returns (unit variance) and gaps at session starts.
    r = rng.standard_t(_T_DF, n) * (sigma / np.sqrt(_T_DF / (_T_DF - 2.0)))
    gap_idx = np.flatnonzero(np.diff(ts) > k * _US_PER_MIN) + 1
    gap_hours = (ts[gap_idx] - ts[gap_idx - 1]) / _US_PER_HOUR
    g_sd = _GAP_VOL_PER_SQRT_HOUR * np.sqrt(gap_hours) * regime_bar[gap_idx]
    del regime_bar
    g = np.zeros(n)
    g[gap_idx] = g_sd * rng.standard_normal(gap_idx.size)

    # Random walk of closes, turned into a Brownian bridge pinned every few trading days
    # (interpolation in cumulative-variance time) so it cannot drift away from the trend.
    walk = np.cumsum(g + r)
    inc_var = sigma * sigma
    inc_var[gap_idx] += g_sd * g_sd
    cum_var = np.cumsum(inc_var)
    del inc_var
    step = max(1, _BRIDGE_DAYS * 1380 // k)
    pins = np.unique(np.concatenate((np.arange(0, n, step), [n - 1])))
    walk -= np.interp(cum_var, cum_var[pins], walk[pins])
    del cum_var

    # Slow deviation from the trend, pinned to zero at the anchors inside the range.
    slow_k = _ar1(rng, knots.size, half_life=20.0, sd=_SLOW_SD)
    anchor_us = np.array([_date_us(d) for d, _ in _PRICE_ANCHORS], dtype=np.float64)
    inside = anchor_us[(anchor_us >= knots[0]) & (anchor_us <= knots[-1])]
    slow = np.interp(t, knots, slow_k)
    if inside.size:
        slow -= np.interp(t, inside, np.interp(inside, knots, slow_k))

    log_close = _interp_anchors(t, _PRICE_ANCHORS, log=True) + slow + walk
    del slow, walk
    log_open = np.empty(n)
    log_open[0] = log_close[0] - r[0]
    log_open[1:] = log_close[:-1] + g[1:]
    del g

    # Exact extremes of a Brownian bridge from open to close with the bar's variance.
    x = log_close - log_open
    s2 = sigma * sigma
    up = 0.5 * (x + np.sqrt(x * x - 2.0 * s2 * np.log1p(-rng.random(n))))
    down = 0.5 * (x - np.sqrt(x * x - 2.0 * s2 * np.log1p(-rng.random(n))))
    del s2
    open_ = _to_tick(np.exp(log_open))
    close = _to_tick(np.exp(log_close))
    high = np.maximum(_to_tick(np.exp(log_open + up)), np.maximum(open_, close))
    low = np.minimum(_to_tick(np.exp(log_open + down)), np.minimum(open_, close))
    del log_open, log_close, up, down

    # Volume: average daily volume x intraday share x (size of the move) x noise.
    expected_vol = _interp_anchors(t, _ADV_ANCHORS, log=False) * vol_by_mod[mod]
    move = np.abs(x) / sigma
    volume = expected_vol * (0.55 + 0.45 * move) * np.exp(0.5 * rng.standard_normal(n) - 0.125)
    volume = np.maximum(np.rint(volume), 1.0).astype(np.int64)
    del x, move, t, sigma

    # Drop quiet minutes preferentially: weighted sampling without replacement
    # (Efraimidis-Spirakis keys) of exactly round(missing_share * n) bars.
    n_drop = round(missing_share * n)
    if n_drop:
        weight = 1.0 / np.sqrt(expected_vol)
        keys = np.log1p(-rng.random(n)) / weight
        keep = np.ones(n, dtype=bool)
        keep[np.argpartition(keys, n - n_drop)[n - n_drop :]] = False
        ts, open_, high, low, close, volume = (a[keep] for a in (ts, open_, high, low, close, volume))
    del expected_vol

    if corruption_share > 0.0:
        _corrupt(rng, corruption_share, open_, high, low, close)

    return pl.DataFrame(
        {
            "symbol": pl.Series("symbol", [symbol], dtype=pl.String).new_from_index(0, ts.size),
            "ts": pl.Series("ts", ts).cast(pl.Datetime("us", "UTC")),
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": volume,
        }
    )


# Corruption kinds, each getting an equal share of the corrupted bars.
_SPIKE, _SPIKE_RUN, _FLAT_FAR, _SMALL_FAR, _LOW_PRICE, _HIGH_BELOW_LOW = range(6)
_BLOCK = 5  # one event per block of 5 bars; the block's first and last bars stay clean


def _corrupt(
    rng: np.random.Generator,
    share: float,
    open_: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
) -> None:
    """Plant hygiene-rule defects in about ``share`` of the bars (in place)."""
    m = close.size
    n_bad = round(share * m)
    if n_bad == 0:
        return
    budget = rng.multinomial(n_bad, np.full(6, 1.0 / 6.0))
    # Runs of 2-3 bars: split the run budget into runs of length 2 or 3.
    n_runs = round(budget[_SPIKE_RUN] / 2.5)
    if n_runs == 0:
        budget[_SPIKE] += budget[_SPIKE_RUN]
    extra = max(0, budget[_SPIKE_RUN] - 2 * n_runs) if n_runs else 0
    run_len = np.full(n_runs, 2, dtype=np.int64)
    run_len[rng.permutation(n_runs)[:extra]] = 3
    counts = budget.copy()
    counts[_SPIKE_RUN] = n_runs
    kinds = rng.permutation(np.repeat(np.arange(6), counts))
    lengths = np.ones(kinds.size, dtype=np.int64)
    lengths[kinds == _SPIKE_RUN] = run_len
    n_blocks = m // _BLOCK
    if kinds.size > n_blocks:
        msg = "corruption_share too large for the number of bars"
        raise ValueError(msg)
    blocks = rng.choice(n_blocks, kinds.size, replace=False)
    starts = blocks * _BLOCK + 1 + rng.integers(0, 4 - lengths)  # start in 1..3, fits in block
    ref = close[starts - 1]  # previous bar is always clean
    sign = np.where(rng.random(kinds.size) < 0.5, -1.0, 1.0)

    # Spikes and runs of spikes: all four prices shifted by 600-3000 points.
    sp = (kinds == _SPIKE) | (kinds == _SPIKE_RUN)
    shift = _to_tick(rng.uniform(600.0, 3000.0, kinds.size))
    shift *= np.where(ref - shift > 1500.0, sign, 1.0)  # keep prices positive and > 1000
    idx = np.repeat(starts[sp], lengths[sp]) + _ranks(lengths[sp])
    bar_shift = np.repeat(shift[sp], lengths[sp])
    for a in (open_, high, low, close):
        a[idx] += bar_shift

    # Flat bars (o = h = l = c) 60-400 points away from the price.
    sel = kinds == _FLAT_FAR
    level = _to_tick(ref[sel] + sign[sel] * rng.uniform(60.0, 400.0, sel.sum()))
    for a in (open_, high, low, close):
        a[starts[sel]] = level

    # Small-range bars (h - l <= 5 points) opening 160-800 points away.
    sel = kinds == _SMALL_FAR
    c = int(sel.sum())
    o = _to_tick(ref[sel] + sign[sel] * rng.uniform(160.0, 800.0, c))
    below = rng.integers(0, 11, c)
    above = rng.integers(0, 11, c)
    lo = o - below * TICK
    i = starts[sel]
    open_[i], low[i], high[i] = o, lo, o + above * TICK
    close[i] = lo + rng.integers(0, below + above + 1) * TICK

    # Decimal-shifted low prices (< 1000): all four prices divided by 10 or 100.
    sel = kinds == _LOW_PRICE
    i = starts[sel]
    divisor = 10.0 ** np.ceil(np.log10(np.maximum(high[i], 1.0) / 999.0))
    for a in (open_, high, low, close):
        a[i] = np.maximum(_to_tick(a[i] / divisor), TICK)

    # OHLC-integrity violation: high below low.
    sel = kinds == _HIGH_BELOW_LOW
    i = starts[sel]
    h, lo = high[i].copy(), low[i].copy()
    high[i] = lo - rng.integers(1, 9, i.size) * TICK
    low[i] = h


def _ranks(lengths: np.ndarray) -> np.ndarray:
    """0..len-1 for each group of the given lengths, concatenated."""
    ends = np.cumsum(lengths)
    return np.arange(ends[-1] if ends.size else 0) - np.repeat(ends - lengths, lengths)
