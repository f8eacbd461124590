"""Tests for ``triangles_polars.plot``: pivot extraction and chart rendering."""

from __future__ import annotations

import math
import struct
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tests.helpers import NQ, Db, run_cli
from triangles_polars import backfill
from triangles_polars.plot import (
    _time_ticks,
    _window_triangles,
    aggregate_bars,
    chart_figure,
    pivots_from_events,
    render_chart,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
START = datetime(2024, 3, 5, 14, 30, tzinfo=UTC)
TS = pl.Datetime("us", "UTC")

EVENT_SCHEMA = {
    "symbol": pl.String,
    "strength": pl.Int16,
    "confirmed_at": TS,
    "pattern": pl.String,
    "a_ts": TS,
    "b_ts": TS,
    "c_ts": TS,
    "a_kind": pl.String,
    "b_kind": pl.String,
    "c_kind": pl.String,
    "a_price": pl.Float64,
    "b_price": pl.Float64,
    "c_price": pl.Float64,
    "leg_ab": pl.Float64,
    "leg_bc": pl.Float64,
    "bars_ab": pl.Int32,
    "bars_bc": pl.Int32,
}


def _tick(x: float) -> float:
    return round(x * 4) / 4


def make_bars(n: int = 300, start: datetime = START, symbol: str = "NQ") -> pl.DataFrame:
    """A sine-ish 1-minute price path on a 0.25 grid with valid OHLC."""
    rows = []
    prev = 18000.0
    for i in range(n):
        close = _tick(18000 + 40 * math.sin(i / 25) + 12 * math.sin(i / 4.3) + 3 * math.sin(i * 1.7))
        open_ = prev
        high = max(open_, close) + _tick(1 + abs(math.sin(i * 0.9)) * 2)
        low = min(open_, close) - _tick(1 + abs(math.cos(i * 1.3)) * 2)
        rows.append(
            (
                symbol,
                start + timedelta(minutes=i),
                open_,
                high,
                low,
                close,
                100 + i % 37,
            )
        )
        prev = close
    return pl.DataFrame(
        rows,
        schema={
            "symbol": pl.String,
            "ts": TS,
            "open": pl.Float64,
            "high": pl.Float64,
            "low": pl.Float64,
            "close": pl.Float64,
            "volume": pl.Int64,
        },
        orient="row",
    )


def make_events(bars: pl.DataFrame, k: int = 5) -> pl.DataFrame:
    """Plain-loop detector (docs/contract.md#triangle-events), good enough to feed the chart realistic events."""
    h = bars["high"].to_list()
    lo = bars["low"].to_list()
    o = bars["open"].to_list()
    c = bars["close"].to_list()
    ts = bars["ts"].to_list()
    sym = bars["symbol"][0]
    pivots: list[tuple[int, str, float]] = []
    for i in range(k, len(h) - k):
        hi = h[i] > max(h[i - k : i]) and h[i] >= max(h[i + 1 : i + k + 1])
        li = lo[i] < min(lo[i - k : i]) and lo[i] <= min(lo[i + 1 : i + k + 1])
        both = [("L", lo[i]), ("H", h[i])] if c[i] >= o[i] else [("H", h[i]), ("L", lo[i])]
        for kind, price in both:
            if (kind == "H" and hi) or (kind == "L" and li):
                pivots.append((i, kind, price))
    rows = []
    for j in range(2, len(pivots)):
        (ai, ak, ap), (bi, bk, bp), (ci, ck, cp) = pivots[j - 2 : j + 1]
        rows.append(
            {
                "symbol": sym,
                "strength": k,
                "confirmed_at": ts[ci + k] + timedelta(minutes=1),
                "pattern": ak + bk + ck,
                "a_ts": ts[ai],
                "b_ts": ts[bi],
                "c_ts": ts[ci],
                "a_kind": ak,
                "b_kind": bk,
                "c_kind": ck,
                "a_price": ap,
                "b_price": bp,
                "c_price": cp,
                "leg_ab": bp - ap,
                "leg_bc": cp - bp,
                "bars_ab": bi - ai,
                "bars_bc": ci - bi,
            }
        )
    return pl.DataFrame(rows, schema=EVENT_SCHEMA)


def hand_event(bars: pl.DataFrame, a: tuple, b: tuple, c: tuple) -> dict:
    """Event from (index, kind) pivots; prices taken from the bars."""
    out: dict = {"symbol": "NQ", "strength": 5}
    for name, (i, kind) in zip("abc", (a, b, c), strict=True):
        out[f"{name}_ts"] = bars["ts"][i]
        out[f"{name}_kind"] = kind
        out[f"{name}_price"] = bars["high" if kind == "H" else "low"][i]
    out["pattern"] = out["a_kind"] + out["b_kind"] + out["c_kind"]
    out["confirmed_at"] = out["c_ts"] + timedelta(minutes=6)
    out["leg_ab"] = out["b_price"] - out["a_price"]
    out["leg_bc"] = out["c_price"] - out["b_price"]
    out["bars_ab"] = b[0] - a[0]
    out["bars_bc"] = c[0] - b[0]
    return out


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# --------------------------------------------------------------------------------------
# pivots_from_events


def test_pivots_from_events_dedupes_shared_pivots() -> None:
    bars = make_bars(60)
    events = pl.DataFrame(
        [
            hand_event(bars, (10, "H"), (20, "L"), (30, "H")),
            hand_event(bars, (20, "L"), (30, "H"), (40, "L")),
            hand_event(bars, (30, "H"), (40, "L"), (40, "H")),  # two pivots in one bar
            hand_event(bars, (30, "H"), (40, "L"), (40, "H")),  # exact duplicate event
        ],
        schema=EVENT_SCHEMA,
    )
    piv = pivots_from_events(events)
    assert piv.columns == ["ts", "kind", "price"]
    assert piv.schema["ts"] == TS
    expected = [(10, "H"), (20, "L"), (30, "H"), (40, "H"), (40, "L")]
    assert piv.height == len(expected)
    assert list(zip(piv["ts"], piv["kind"], strict=True)) == [(bars["ts"][i], k) for i, k in expected]
    for (i, k), price in zip(expected, piv["price"], strict=True):
        assert price == bars["high" if k == "H" else "low"][i]


def test_pivots_from_events_empty() -> None:
    for empty in (pl.DataFrame(schema=EVENT_SCHEMA), pl.DataFrame()):
        piv = pivots_from_events(empty)
        assert piv.height == 0
        assert piv.columns == ["ts", "kind", "price"]


def test_pivots_from_events_normalises_naive_and_ms_timestamps() -> None:
    bars = make_bars(60)
    ev = pl.DataFrame([hand_event(bars, (10, "H"), (20, "L"), (30, "H"))], schema=EVENT_SCHEMA)
    naive_ms = ev.with_columns(
        pl.col("a_ts", "b_ts", "c_ts").dt.replace_time_zone(None).cast(pl.Datetime("ms"))
    )
    assert pivots_from_events(naive_ms).equals(pivots_from_events(ev))


# --------------------------------------------------------------------------------------
# window selection


def test_window_triangles_only_fully_inside() -> None:
    bars = make_bars(300)
    window = bars.slice(100, 150)  # bar indices 100..249 of the full path
    events = pl.DataFrame(
        [
            hand_event(bars, (90, "H"), (110, "L"), (130, "H")),  # A before the window
            hand_event(bars, (110, "L"), (130, "H"), (150, "L")),  # inside
            hand_event(bars, (200, "H"), (230, "L"), (260, "H")),  # C after the window
        ],
        schema=EVENT_SCHEMA,
    )
    tri = _window_triangles(window, events)
    assert tri.height == 1
    assert tri.row(0, named=True) == {
        "a_x": 10,
        "a_price": bars["low"][110],
        "b_x": 30,
        "b_price": bars["high"][130],
        "c_x": 50,
        "c_price": bars["low"][150],
        "c_kind": "L",
    }


def test_time_ticks_round_times_and_gaps() -> None:
    bars = make_bars(300)  # 14:30 .. 19:29
    x, labels = _time_ticks(bars)
    assert x[0] == 0 and labels[0] == "14:30\n2024-03-05"
    assert labels[1:4] == ["15:00", "15:30", "16:00"]
    assert x[1:4] == [30, 60, 90]
    # Drop 15:55..16:09: the 16:00 tick moves to the first bar after the gap, labelled truly.
    gappy = bars.filter(~pl.int_range(pl.len()).is_between(85, 99))
    x, labels = _time_ticks(gappy)
    assert (x[3], labels[3]) == (85, "16:10")
    # A window across midnight gets the new date on the first tick of the new day.
    night = make_bars(300, start=datetime(2024, 3, 4, 22, 0, tzinfo=UTC))
    _, labels = _time_ticks(night)
    assert labels[0] == "22:00\n2024-03-04"
    assert "00:00\n2024-03-05" in labels
    assert len(labels) <= 14


# --------------------------------------------------------------------------------------
# rendering

try:
    import matplotlib  # noqa: F401

    HAVE_MPL = True
except ImportError:  # pragma: no cover - the 'plot' extra is not installed
    HAVE_MPL = False

needs_mpl = pytest.mark.skipif(not HAVE_MPL, reason="needs the 'plot' extra")


@needs_mpl
def test_render_chart_writes_png(tmp_path: Path) -> None:
    bars = make_bars(300)
    events = make_events(bars)
    assert events.height >= 10
    out = render_chart(bars, events, tmp_path / "sub" / "chart.png")
    assert out == tmp_path / "sub" / "chart.png"
    w, h = png_size(out)
    assert 1000 <= w <= 4000 and 500 <= h <= 2500
    assert out.stat().st_size > 30_000


@needs_mpl
def test_render_chart_with_hand_events_and_title(tmp_path: Path) -> None:
    bars = make_bars(300)
    events = pl.DataFrame(
        [
            hand_event(bars, (20, "H"), (45, "L"), (70, "H")),
            hand_event(bars, (45, "L"), (70, "H"), (95, "L")),
            hand_event(bars, (70, "H"), (95, "L"), (120, "L")),
        ],
        schema=EVENT_SCHEMA,
    )
    out = render_chart(bars, events, str(tmp_path / "hand.png"), title="hand-made")
    assert isinstance(out, Path)
    png_size(out)


@needs_mpl
def test_render_chart_empty_events(tmp_path: Path) -> None:
    bars = make_bars(300)
    for i, empty in enumerate((pl.DataFrame(schema=EVENT_SCHEMA), pl.DataFrame())):
        out = render_chart(bars, empty, tmp_path / f"empty{i}.png")
        w, h = png_size(out)
        assert w >= 1000 and h >= 500
        assert out.stat().st_size > 10_000


@needs_mpl
def test_render_chart_empty_bars(tmp_path: Path) -> None:
    bars = make_bars(300)
    events = make_events(bars)
    out = render_chart(bars.clear(), events, tmp_path / "nobars.png")
    png_size(out)
    out = render_chart(bars.clear(), pl.DataFrame(schema=EVENT_SCHEMA), tmp_path / "none.png")
    png_size(out)


@needs_mpl
def test_render_chart_session_with_many_events(tmp_path: Path) -> None:
    bars = make_bars(1400, start=datetime(2024, 3, 4, 23, 0, tzinfo=UTC))
    events = make_events(bars, k=2)
    assert events.height >= 200
    out = render_chart(bars, events, tmp_path / "session.png")
    w, h = png_size(out)
    assert w >= 1000 and h >= 500


@needs_mpl
def test_render_chart_ignores_other_symbols(tmp_path: Path) -> None:
    bars = make_bars(200)
    other = make_events(make_bars(200, symbol="ES"))
    out = render_chart(bars, other, tmp_path / "other.png")
    png_size(out)
    assert _window_triangles(bars, other.clear()).height == 0


def test_missing_matplotlib_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(ImportError, match=r"pip install 'triangles-polars\[plot\]'"):
        render_chart(make_bars(20), pl.DataFrame(), tmp_path / "x.png")


@needs_mpl
def test_render_chart_daily_bars(tmp_path: Path) -> None:
    first = datetime(2022, 1, 3, tzinfo=UTC)
    bars = make_bars(400).with_columns(
        ts=pl.datetime_range(first, first + timedelta(days=399), "1d", eager=True, time_unit="us")
    )
    _, labels = _time_ticks(bars)
    assert len(labels) <= 14
    assert all(len(label) == 10 and label.count("-") == 2 for label in labels)  # dates
    out = render_chart(bars, make_events(bars), tmp_path / "daily.png", bar_interval=timedelta(days=1))
    png_size(out)


# --------------------------------------------------------------------------------------
# long windows: an overview, and a warning that says so


def bodies(fig: Any) -> Any:
    """The candle bodies' collection of a chart (one path per candle)."""
    ax = fig.axes[0]
    return next(c for c in ax.collections if c.get_label() == "_bodies")


@needs_mpl
def test_a_session_is_drawn_candle_by_candle_without_a_warning() -> None:
    bars = make_bars(1_380)  # a whole day of 1-minute bars
    heard: list[str] = []
    fig = chart_figure(bars, make_events(bars), on_warning=heard.append)
    assert fig.get_label() == "candles" and heard == []
    assert len(bodies(fig).get_paths()) == bars.height


@needs_mpl
def test_a_long_window_is_an_overview_of_aggregated_candles_and_says_so(tmp_path: Path) -> None:
    bars = make_bars(4 * 1_440)  # four days of 1-minute bars: 5,760 candles would be a smear
    events = make_events(bars)
    heard: list[str] = []
    fig = chart_figure(bars, events, on_warning=heard.append)

    assert fig.get_label() == "overview"
    assert len(heard) == 1 and "5,760 bars" in heard[0] and "overview" in heard[0], heard
    # Candles of a round step: far fewer than the bars, still enough to read the path.
    candles = len(bodies(fig).get_paths())
    assert 20 <= candles <= 400, candles
    step_minutes = 4 * 1_440 / candles
    assert step_minutes >= 5 and (4 * 1_440) % candles == 0, candles  # the window splits evenly
    assert f"per {int(step_minutes)} minutes" in heard[0] or f"per {int(step_minutes / 60)} hour" in heard[0]
    # The price range is kept: the overview's y range holds every bar's high and low.
    low, high = fig.axes[0].get_ylim()
    assert low < bars["low"].min() and high > bars["high"].max()
    # Every event is marked once, at its C pivot (no triangles: they would cover the candles).
    markers = [c for c in fig.axes[0].collections if c.get_label().endswith("_events")]
    assert sum(len(c.get_offsets()) for c in markers) == events.height > 0
    c_prices = sorted(events["c_price"].to_list())
    marked = sorted(float(y) for c in markers for _, y in c.get_offsets())
    span = float(bars["high"].max() - bars["low"].min())
    assert all(abs(y - p) <= 0.02 * span for y, p in zip(marked, c_prices, strict=True))
    assert "overview" in fig.axes[0].get_title()

    out = render_chart(bars, events, tmp_path / "long.png", on_warning=heard.append)
    assert png_size(out) == (1760, 880) and len(heard) == 2


@needs_mpl
def test_aggregated_candles_keep_open_high_low_close() -> None:
    bars = make_bars(600)  # 10 hours: hourly candles by hand
    hourly = aggregate_bars(bars, "1h")
    for row in hourly.iter_rows(named=True):
        hour = bars.filter((pl.col("ts") >= row["ts"]) & (pl.col("ts") < row["ts"] + timedelta(hours=1)))
        assert hour.height > 0
        assert row["open"] == hour["open"][0] and row["close"] == hour["close"][-1]
        assert row["high"] == hour["high"].max() and row["low"] == hour["low"].min()
    assert hourly["ts"].is_sorted() and hourly.height == bars["ts"].dt.truncate("1h").n_unique()


@needs_mpl
def test_plot_command_of_a_long_window_warns_on_stderr(db: Db, nq_bars: pl.DataFrame, tmp_path: Path) -> None:
    db.load(nq_bars)
    backfill(db.settings(start="2025-10-27", end="2025-11-30"))
    out = tmp_path / "month.png"
    args = ("--database-url", db.url, "--bars-table", db.bars_table, "--events-table", db.events_table)
    result = run_cli("plot", NQ, "2025-11-03", "2025-11-28", "--out", str(out), *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote {out}"
    assert "Traceback" not in result.stderr
    warning = [line for line in result.stderr.splitlines() if "overview" in line]
    assert len(warning) == 1 and "too many" in warning[0] and "one candle per" in warning[0], result.stderr
    assert png_size(out)[0] >= 1000

    session = run_cli("plot", NQ, "2025-11-25T14:30Z", "2025-11-25T21:00Z", "--out", str(out), *args)
    assert session.returncode == 0 and "overview" not in session.stderr, session.stderr
