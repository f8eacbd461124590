"""Chart rendering: candlesticks of a bar window with swing pivots and triangle events.

``render_chart`` draws one PNG (or any format matplotlib can write, chosen by the file
suffix) of a window of bars, typically one trading session:

* candlesticks (green up, red down, thin wicks), plotted against the bar index so that
  missing minutes leave no gaps; the x tick labels show the bar open time in UTC;
* every distinct A/B/C pivot of the events that lies in the window: a small downward
  marker above the high for a swing high (``H``), an upward marker below the low for a
  swing low (``L``);
* every event whose three pivots lie in the window, as a translucent filled triangle
  (A, B, C at the pivot's bar index and price), coloured by the kind of C.

matplotlib is an optional extra (``pip install 'triangles-polars[plot]'``); it is
imported inside ``render_chart`` only, so this module imports without it. Rendering
uses the Agg canvas directly (no pyplot, no global backend switch, no display).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from triangles_polars.schema import UTC_TS, to_utc
from triangles_polars.settings import (
    DEFAULT_BARS_TABLE,
    DEFAULT_EVENTS_TABLE,
    DEFAULT_MAX_CANDLES,
    DEFAULT_STRENGTH,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["aggregate_bars", "chart_figure", "overview_step", "pivots_from_events", "render_chart"]

_MISSING_MPL = "plotting needs the 'plot' extra: pip install 'triangles-polars[plot]'"

_TS = UTC_TS
_PIVOT_SCHEMA: dict[str, pl.DataType] = {
    "ts": _TS,
    "kind": pl.String(),
    "price": pl.Float64(),
}

# Colours: candles in the usual green/red, triangles and pivots in blue/orange so that
# they never read as candles.
_UP = "#26a69a"
_DOWN = "#ef5350"
_TRI_C_HIGH = "#1f5fbf"  # C is a swing high
_TRI_C_LOW = "#e07b00"  # C is a swing low
_PIVOT_HIGH = "#0d3b8c"
_PIVOT_LOW = "#9c4a00"


def pivots_from_events(events: pl.DataFrame) -> pl.DataFrame:
    """Distinct pivots (``ts``, ``kind``, ``price``) referenced as A, B or C by events.

    Sorted by ``ts`` then ``kind``. A bar that is both a swing high and a swing low
    gives two rows. An empty (or column-less) frame gives an empty result.
    """
    needed = [f"{p}_{c}" for p in "abc" for c in ("ts", "kind", "price")]
    if events.height == 0 or any(c not in events.columns for c in needed):
        if events.height == 0:
            return pl.DataFrame(schema=_PIVOT_SCHEMA)
        missing = [c for c in needed if c not in events.columns]
        raise ValueError(f"events frame lacks column(s): {', '.join(missing)}")
    parts = [
        events.select(
            to_utc(pl.col(f"{p}_ts"), events.schema[f"{p}_ts"]).alias("ts"),
            pl.col(f"{p}_kind").cast(pl.String).alias("kind"),
            pl.col(f"{p}_price").cast(pl.Float64).alias("price"),
        )
        for p in "abc"
    ]
    return pl.concat(parts).unique(maintain_order=False).sort("ts", "kind")


def _bar_index(bars: pl.DataFrame) -> pl.DataFrame:
    """``ts`` (UTC, us) -> bar index ``x`` within the window."""
    return bars.select(to_utc(pl.col("ts"), bars.schema["ts"]).alias("ts")).with_row_index("x")


def _events_for_bars(bars: pl.DataFrame, events: pl.DataFrame) -> pl.DataFrame:
    """Events restricted to the symbol(s) of the bars (when both carry a symbol)."""
    if bars.height and events.height and "symbol" in events.columns and "symbol" in bars.columns:
        symbols = bars.get_column("symbol").unique()
        events = events.filter(pl.col("symbol").is_in(symbols.to_list()))
    return events


def _window_pivots(bars: pl.DataFrame, events: pl.DataFrame) -> pl.DataFrame:
    """Distinct pivots of the events that lie in the window, with bar index ``x``."""
    return pivots_from_events(events).join(_bar_index(bars), on="ts", how="inner")


def _window_triangles(bars: pl.DataFrame, events: pl.DataFrame) -> pl.DataFrame:
    """Events whose A, B and C all lie in the window, with ``a_x``, ``b_x``, ``c_x``.

    Columns: ``a_x, a_price, b_x, b_price, c_x, c_price, c_kind``, ordered by ``c_x``.
    """
    schema = {
        **{f"{p}_{c}": t for p in "abc" for c, t in (("x", pl.UInt32()), ("price", pl.Float64()))},
        "c_kind": pl.String(),
    }
    if events.height == 0 or bars.height == 0:
        return pl.DataFrame(schema=schema)
    index = _bar_index(bars)
    out = events.select(
        *(to_utc(pl.col(f"{p}_ts"), events.schema[f"{p}_ts"]).alias(f"{p}_ts") for p in "abc"),
        *(pl.col(f"{p}_price").cast(pl.Float64) for p in "abc"),
        pl.col("c_kind").cast(pl.String),
    )
    for p in "abc":
        out = out.join(index.rename({"ts": f"{p}_ts", "x": f"{p}_x"}), on=f"{p}_ts", how="inner")
    return out.select(list(schema)).sort("c_x", "a_x", "b_x")


_TICK_STEPS = (
    "1m", "2m", "5m", "10m", "15m", "30m", "1h", "2h", "3h", "4h", "6h", "12h",
    "1d", "2d", "7d", "1mo", "3mo", "6mo", "1y", "2y", "5y", "10y",
)  # fmt: skip
_MAX_TICKS = 14


def _time_ticks(bars: pl.DataFrame) -> tuple[list[int], list[str]]:
    """X tick positions (bar indices) at round UTC times, and their labels.

    The step is the smallest of ``_TICK_STEPS`` giving at most ``_MAX_TICKS`` ticks; a
    tick sits on the first bar of each step (its own open time is shown, so a gap
    never mislabels a tick). Intraday steps show ``HH:MM`` with the date added on the
    first tick and wherever the day changes.
    """
    ts = to_utc(pl.col("ts"), bars.schema["ts"])
    counts = bars.select(ts.dt.truncate(step).n_unique().alias(step) for step in _TICK_STEPS).row(0)
    step = next(
        (st for st, n in zip(_TICK_STEPS, counts, strict=True) if n <= _MAX_TICKS),
        _TICK_STEPS[-1],
    )
    bucket = ts.dt.truncate(step)
    ticks = (
        bars.select(
            pl.int_range(pl.len(), dtype=pl.Int64).alias("x"),
            ts.alias("ts"),
            (bucket != bucket.shift()).fill_null(ts == bucket).alias("tick"),
        )
        .filter(pl.col("tick"))
        .with_columns(day=pl.col("ts").dt.date())
    )
    if ticks.height == 0:  # the first bar is off-grid and the window is short
        ticks = bars.head(1).select(pl.lit(0, pl.Int64).alias("x"), ts.alias("ts"), ts.dt.date().alias("day"))
    intraday = step.endswith(("m", "h")) and not step.endswith("mo")
    if intraday:
        new_day = pl.col("day") != pl.col("day").shift()
        label = pl.when(new_day.fill_null(True)).then(pl.col("ts").dt.strftime("%H:%M\n%Y-%m-%d"))
        label = label.otherwise(pl.col("ts").dt.strftime("%H:%M"))
    else:
        label = pl.col("ts").dt.strftime("%Y-%m-%d")
    ticks = ticks.select("x", label.alias("label"))
    return ticks.get_column("x").to_list(), ticks.get_column("label").to_list()


def _default_title(
    bars: pl.DataFrame, events: pl.DataFrame, n_triangles: int, bar_interval: timedelta
) -> str:
    """``SYMBOL · first open – last close UTC · k=… · N triangles``."""
    parts: list[str] = []
    for frame in (bars, events):
        if "symbol" in frame.columns and frame.height:
            parts.append(", ".join(sorted(frame.get_column("symbol").unique().to_list())))
            break
    if bars.height == 0:
        parts.append("no bars")
    else:
        ts = bars.select(to_utc(pl.col("ts"), bars.schema["ts"])).to_series()
        start, end = ts.min(), ts.max() + bar_interval  # type: ignore[operator]
        if bar_interval >= timedelta(days=1):
            end = end - timedelta(days=1)  # type: ignore[operator]
            parts.append(f"{start:%Y-%m-%d} – {end:%Y-%m-%d}")
        else:
            same_day = start.date() == end.date()  # type: ignore[union-attr]
            end_fmt = "%H:%M" if same_day else "%Y-%m-%d %H:%M"
            parts.append(f"{start:%Y-%m-%d %H:%M} – {end:{end_fmt}} UTC")
    if events.height and "strength" in events.columns:
        ks = sorted(events.get_column("strength").unique().to_list())
        parts.append("k=" + ",".join(str(k) for k in ks))
    parts.append(f"{n_triangles} triangle{'s' if n_triangles != 1 else ''}")
    return "  ·  ".join(parts)


def _triangle_alpha(n: int) -> float:
    """Face alpha: clear for a handful of triangles, faint for hundreds.

    Consecutive triangles share two pivots, so any spot is covered by only a few of
    them; the alpha mainly keeps hundreds of small triangles from turning into a
    solid band over the price path.
    """
    if n <= 0:
        return 0.2
    return float(min(0.2, max(0.08, 0.2 * (30 / n) ** 0.4)))


def _draw_candles(ax: Axes, bars: pl.DataFrame, np: Any) -> None:
    """Candles as two collections: wicks (LineCollection) and bodies (PolyCollection)."""
    from matplotlib.collections import LineCollection, PolyCollection

    o, h, low, c = (bars.get_column(n).cast(pl.Float64).to_numpy() for n in ("open", "high", "low", "close"))
    x = np.arange(bars.height, dtype=float)
    up = c >= o
    colours = np.where(up, _UP, _DOWN)

    wicks = np.stack([np.column_stack([x, low]), np.column_stack([x, h])], axis=1)
    ax.add_collection(LineCollection(wicks, colors=colours, linewidths=0.7, zorder=2, label="_wicks"))

    w = 0.35 if bars.height > 600 else 0.4
    lo, hi = np.minimum(o, c), np.maximum(o, c)
    bodies = np.stack(
        [
            np.column_stack([x - w, lo]),
            np.column_stack([x + w, lo]),
            np.column_stack([x + w, hi]),
            np.column_stack([x - w, hi]),
        ],
        axis=1,
    )
    # The edge in the body colour keeps doji (open == close) visible as a dash.
    ax.add_collection(
        PolyCollection(
            bodies,
            facecolors=colours,
            edgecolors=colours,
            linewidths=0.4,
            zorder=3,
            label="_bodies",
        )
    )


def render_chart(
    bars: pl.DataFrame,
    events: pl.DataFrame,
    out: str | Path,
    *,
    title: str | None = None,
    bar_interval: timedelta = timedelta(minutes=1),
    max_candles: int = DEFAULT_MAX_CANDLES,
    on_warning: Callable[[str], object] | None = None,
) -> Path:
    """Render candlesticks, swing pivots and triangle events of a bar window to ``out``.

    ``bars``: ``symbol, ts, open, high, low, close[, volume]`` sorted by ``ts`` (bar open
    time). ``events``: rows of the events table (``docs/contract.md#the-events-table``). Pivots are placed by matching their
    timestamps to bar timestamps exactly; triangles with any pivot outside the window
    are not drawn. Either frame may be empty. ``bar_interval`` sets the span shown in
    the default title (the last bar's close time). More than ``max_candles`` bars are drawn
    as an overview instead, and ``on_warning`` (default :func:`warnings.warn`) says so (see
    :func:`chart_figure`). Returns the written path.
    """
    fig = chart_figure(
        bars, events, title=title, bar_interval=bar_interval, max_candles=max_candles, on_warning=on_warning
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def chart_figure(
    bars: pl.DataFrame,
    events: pl.DataFrame,
    *,
    title: str | None = None,
    bar_interval: timedelta = timedelta(minutes=1),
    max_candles: int = DEFAULT_MAX_CANDLES,
    on_warning: Callable[[str], object] | None = None,
) -> Figure:
    """The chart of :func:`render_chart` as a matplotlib figure, labelled with how it was drawn.

    ``fig.get_label()`` is ``"candles"`` (every bar a candle, pivots, triangles) or
    ``"overview"``: past ``max_candles`` bars (a week or a year of 1-minute bars) candles one by
    one are an unreadable smear, so the bars are aggregated into at most a few hundred candles
    of a round step (:func:`overview_step`) and each event is marked at its C pivot; the
    warning says so and how to get candles back.
    """
    try:
        import numpy as np
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401 (the extra is there)
        from matplotlib.collections import PolyCollection
        from matplotlib.colors import to_rgba
        from matplotlib.patches import Patch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(_MISSING_MPL) from exc

    if bars.height:
        missing = [c for c in ("ts", "open", "high", "low", "close") if c not in bars.columns]
        if missing:
            raise ValueError(f"bars frame lacks column(s): {', '.join(missing)}")
    events = _events_for_bars(bars, events)
    step = overview_step(bars, max_candles)
    if step is not None:
        (on_warning or warnings.warn)(overview_note(bars.height, step, max_candles))
        return _overview_figure(bars, events, step, title, bar_interval)
    triangles = _window_triangles(bars, events)
    pivots = _window_pivots(bars, events) if bars.height else pl.DataFrame(schema=_PIVOT_SCHEMA)

    fig, ax = _new_figure("candles")

    legend: list[Any] = []
    if bars.height:
        _draw_candles(ax, bars, np)
        legend += [
            Patch(facecolor=_UP, edgecolor=_UP, label="up bar"),
            Patch(facecolor=_DOWN, edgecolor=_DOWN, label="down bar"),
        ]
        lo = bars.get_column("low").min()
        hi = bars.get_column("high").max()
        span = float(hi - lo) if hi != lo else max(abs(float(hi)) * 1e-3, 1.0)  # type: ignore[operator,arg-type]
        pad = 0.012 * span  # marker offset from the high / low
        ax.set_xlim(-1.0, bars.height)
        ax.set_ylim(float(lo) - 4 * pad, float(hi) + 4 * pad)  # type: ignore[arg-type]

        tick_x, tick_labels = _time_ticks(bars)
        ax.set_xticks(tick_x, tick_labels)

        if triangles.height:
            n = triangles.height
            verts = np.stack(
                [triangles.select(f"{p}_x", f"{p}_price").cast(pl.Float64).to_numpy() for p in "abc"],
                axis=1,
            )
            c_high = triangles.get_column("c_kind").to_numpy() == "H"
            face_alpha = _triangle_alpha(n)
            edge_alpha = min(0.7, face_alpha * 3.0)

            def _rgba(alpha: float) -> Any:
                high = np.array(to_rgba(_TRI_C_HIGH, alpha))
                low = np.array(to_rgba(_TRI_C_LOW, alpha))
                return np.where(c_high[:, None], high, low)

            # Fills behind the candles (they never hide a bar), thin outlines above them
            # (so small triangles stay visible in a dense session without covering it).
            ax.add_collection(
                PolyCollection(verts, facecolors=_rgba(face_alpha), edgecolors="none", zorder=1.5)
            )
            ax.add_collection(
                PolyCollection(
                    verts,
                    facecolors="none",
                    edgecolors=_rgba(edge_alpha),
                    linewidths=0.5 if n > 50 else 0.8,
                    zorder=3.5,
                )
            )
            if c_high.any():
                legend.append(
                    Patch(
                        facecolor=to_rgba(_TRI_C_HIGH, 0.35),
                        edgecolor=_TRI_C_HIGH,
                        label=f"triangle, C = swing high ({int(c_high.sum())})",
                    )
                )
            if (~c_high).any():
                legend.append(
                    Patch(
                        facecolor=to_rgba(_TRI_C_LOW, 0.35),
                        edgecolor=_TRI_C_LOW,
                        label=f"triangle, C = swing low ({int((~c_high).sum())})",
                    )
                )

        if pivots.height:
            marker_size = 22 if bars.height > 600 else 30
            legend += _mark_swings(
                ax,
                pivots,
                pad,
                (_PIVOT_HIGH, "swing high (H)"),
                (_PIVOT_LOW, "swing low (L)"),
                "pivots",
                s=marker_size,
                edgecolors="white",
                linewidths=0.4,
                zorder=4,
            )

    note = None
    if bars.height == 0:
        note = "no bars in this window"
        ax.set_xticks([])
        ax.set_yticks([])
    elif events.height == 0:
        note = "no triangle events"
    elif triangles.height == 0:
        note = f"none of {events.height} event(s) lies fully in this window"
    if note is not None:
        ax.text(
            0.5,
            0.5 if bars.height == 0 else 0.97,
            note,
            transform=ax.transAxes,
            ha="center",
            va="center" if bars.height == 0 else "top",
            fontsize=12 if bars.height == 0 else 10,
            color="#555555",
            bbox={"facecolor": "white", "edgecolor": "#cccccc", "alpha": 0.85},
            zorder=5,
        )

    if title is None:
        title = _default_title(bars, events, triangles.height, bar_interval)
    ax.set_title(title, fontsize=13, pad=26 if legend else 6)
    ax.set_xlabel("bar open time (UTC)")
    ax.set_ylabel("price")
    if legend:
        _legend_above(ax, legend)
    fig.tight_layout()
    return fig


def _mark_swings(
    ax: Axes,
    marks: pl.DataFrame,
    pad: float,
    high: tuple[str, str],
    low: tuple[str, str],
    name: str,
    **style: Any,
) -> list[Any]:
    """Mark swing highs (``kind`` H, a down triangle just above ``price``) and lows (L, an up
    triangle just below) at ``x``, coloured and labelled by ``high``/``low`` (colour, label), each
    collection named ``_H_<name>``/``_L_<name>`` (hidden from legends); the legend entries of the
    kinds present, with their counts."""
    from matplotlib.lines import Line2D

    entries = []
    for kind, marker, (colour, label), sign in (("H", "v", high, 1.0), ("L", "^", low, -1.0)):
        sel = marks.filter(pl.col("kind") == kind)
        if sel.height == 0:
            continue
        ax.scatter(
            sel["x"].cast(pl.Float64).to_numpy(),
            sel["price"].to_numpy() + sign * pad,
            marker=marker,
            color=colour,
            label=f"_{kind}_{name}",
            **style,
        )
        entries.append(
            Line2D(
                [],
                [],
                linestyle="none",
                marker=marker,
                color=colour,
                markersize=6,
                label=f"{label} ({sel.height:,})",
            )
        )
    return entries


def _legend_above(ax: Axes, handles: list[Any]) -> None:
    """One legend row between the title and the plot: it never covers a candle."""
    ax.legend(
        handles=handles,
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=len(handles),
        fontsize=9,
        frameon=False,
        handlelength=1.6,
        columnspacing=1.6,
    )


def _new_figure(label: str) -> tuple[Figure, Axes]:
    """A figure on the Agg canvas (no pyplot, no display) with one styled axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 8), dpi=110)
    FigureCanvasAgg(fig)
    fig.set_label(label)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_facecolor("#fbfbfb")
    ax.grid(True, color="#e3e3e3", linewidth=0.6, zorder=0)
    ax.set_axisbelow(True)
    return fig, ax


# The overview's candle steps, smallest first, and how its title and warning name them.
_OVERVIEW_STEPS = {
    "5m": "5 minutes",
    "15m": "15 minutes",
    "30m": "30 minutes",
    "1h": "hour",
    "2h": "2 hours",
    "4h": "4 hours",
    "1d": "day",
    "1w": "week",
    "1mo": "month",
}
_OVERVIEW_CANDLES = 400  # about as many as a session's chart shows readably (a year: daily candles)


def overview_step(bars: pl.DataFrame, max_candles: int = DEFAULT_MAX_CANDLES) -> str | None:
    """None when the bars fit as candles; else the overview's step (a polars duration string).

    The smallest step of ``_OVERVIEW_STEPS`` that gives at most ``_OVERVIEW_CANDLES`` candles
    (UTC buckets), the largest one otherwise.

    >>> from datetime import datetime, UTC
    >>> week = pl.DataFrame({"ts": pl.datetime_range(
    ...     datetime(2025, 1, 6, tzinfo=UTC), datetime(2025, 1, 10, 23, 59, tzinfo=UTC), "1m", eager=True)})
    >>> overview_step(week.head(1380)), overview_step(week)
    (None, '30m')
    """
    if bars.height <= max_candles:
        return None
    ts = to_utc(pl.col("ts"), bars.schema["ts"])
    counts = bars.select(ts.dt.truncate(step).n_unique().alias(step) for step in _OVERVIEW_STEPS).row(0)
    steps = list(_OVERVIEW_STEPS)
    return next((st for st, n in zip(steps, counts, strict=True) if n <= _OVERVIEW_CANDLES), steps[-1])


def overview_note(n_bars: int, step: str, max_candles: int = DEFAULT_MAX_CANDLES) -> str:
    """What the user is told when a chart is drawn as an overview."""
    return (
        f"{n_bars:,} bars are too many to draw one by one (more than {max_candles:,}): drawn as an "
        f"overview, one candle per {_OVERVIEW_STEPS[step]} (UTC), each triangle event marked at its C "
        "pivot; plot a shorter window (a session or a day) for every candle and triangle"
    )


def aggregate_bars(bars: pl.DataFrame, step: str) -> pl.DataFrame:
    """OHLC candles of ``step`` (UTC buckets) from bars sorted by ``ts``: ``ts`` is the bucket's start."""
    ts = to_utc(pl.col("ts"), bars.schema["ts"])
    return (
        bars.with_columns(ts.dt.truncate(step).alias("ts"))
        .group_by("ts", maintain_order=True)
        .agg(
            pl.col("open").first(),
            pl.col("high").max(),
            pl.col("low").min(),
            pl.col("close").last(),
        )
        .sort("ts")
    )


def _overview_markers(candles: pl.DataFrame, events: pl.DataFrame, step: str) -> pl.DataFrame:
    """Each event's C pivot (``x`` = its candle's index, ``price``, ``kind``) for candles of ``step``."""
    schema = {"x": pl.UInt32(), "price": pl.Float64(), "kind": pl.String()}
    if events.height == 0 or any(c not in events.columns for c in ("c_ts", "c_price", "c_kind")):
        return pl.DataFrame(schema=schema)
    index = candles.select("ts").with_row_index("x")
    marks = events.select(
        to_utc(pl.col("c_ts"), events.schema["c_ts"]).dt.truncate(step).alias("ts"),
        pl.col("c_price").cast(pl.Float64).alias("price"),
        pl.col("c_kind").cast(pl.String).alias("kind"),
    )
    return marks.join(index, on="ts", how="inner").select(list(schema))


def _overview_figure(
    bars: pl.DataFrame, events: pl.DataFrame, step: str, title: str | None, bar_interval: timedelta
) -> Figure:
    """Aggregated candles of ``step`` with every event marked at its C pivot (label ``"overview"``)."""
    import numpy as np
    from matplotlib.patches import Patch

    candles = aggregate_bars(bars, step)
    marks = _overview_markers(candles, events, step)
    fig, ax = _new_figure("overview")
    _draw_candles(ax, candles, np)
    legend: list[Any] = [
        Patch(facecolor=_UP, edgecolor=_UP, label="up candle"),
        Patch(facecolor=_DOWN, edgecolor=_DOWN, label="down candle"),
    ]
    lo, hi = float(candles["low"].min()), float(candles["high"].max())  # type: ignore[arg-type]
    pad = 0.012 * (hi - lo if hi != lo else max(abs(hi) * 1e-3, 1.0))
    ax.set_xlim(-1.0, candles.height)
    ax.set_ylim(lo - 4 * pad, hi + 4 * pad)
    ax.set_xticks(*_time_ticks(candles))
    # Many events share a candle: small translucent marks behind the candles show where they crowd.
    legend += _mark_swings(
        ax,
        marks,
        pad,
        (_TRI_C_HIGH, "event, C = swing high"),
        (_TRI_C_LOW, "event, C = swing low"),
        "events",
        s=8,
        alpha=0.3,
        linewidths=0,
        zorder=1.5,
    )
    if title is None:
        title = _default_title(bars, events, marks.height, bar_interval)
        title += f"  ·  overview: 1 candle per {_OVERVIEW_STEPS[step]}"
    ax.set_title(title, fontsize=13, pad=26)
    ax.set_xlabel("candle start (UTC)")
    ax.set_ylabel("price")
    _legend_above(ax, legend)
    fig.tight_layout()
    return fig


def plot_window(
    symbol: str,
    start: str,
    end: str,
    out: str | Path,
    *,
    strength: int = DEFAULT_STRENGTH,
    database_url: str | None = None,
    bars_table: str = DEFAULT_BARS_TABLE,
    events_table: str = DEFAULT_EVENTS_TABLE,
    on_warning: Callable[[str], object] | None = None,
) -> Path:
    """Read a window of bars and its events from PostgreSQL and render them with :func:`render_chart`.

    A symbol with no bars at all, or no events of ``strength`` at all, is bad input naming what
    the tables hold; a window without bars (a holiday) is drawn, and ``on_warning`` (default:
    :func:`warnings.warn`) hears about it (``docs/contract.md#empty-results-speak``).
    """
    from triangles_polars.db import RetryPolicy, Session, fetch_all, qualified, table_exists
    from triangles_polars.embedded import database_url as resolve
    from triangles_polars.errors import BadInput
    from triangles_polars.inventory import bars_hint, events_hint
    from triangles_polars.schema import DETECT_SCHEMA
    from triangles_polars.settings import ReadSettings, Tables, Window
    from triangles_polars.source import READER_NAME, BarSource

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise BadInput(_MISSING_MPL) from None
    window = Window.parse(start, end)
    tables = Tables.parse(bars_table, events_table, {})
    url, _ = resolve(database_url)
    policy = RetryPolicy()

    def _has_events(cur: Any, events: str) -> bool:
        sql = f"SELECT EXISTS (SELECT 1 FROM {events} WHERE symbol = $1 AND strength = $2)"
        return bool(fetch_all(cur, sql, (symbol, strength))[0][0])

    def inspect(cur: Any) -> tuple[BarSource, pl.DataFrame]:
        source = BarSource(symbol, tables, ReadSettings()).inspect(cur, window.start, window.end_exclusive)
        if not source.has_bars(cur):
            raise BadInput(f"no bars for symbol {symbol!r} in {bars_table!r}{bars_hint(cur, tables)}")
        schema, table = tables.events_parts
        exists = table_exists(cur, schema, table)
        if not exists or not _has_events(cur, qualified(schema, table)):
            raise BadInput(
                f"no events for {symbol} k={strength} in {events_table!r} (run `triangles backfill "
                f"{symbol} START END -k {strength}` first){events_hint(cur, events_table) if exists else ''}"
            )
        cur.execute(
            f"SELECT * FROM {qualified(schema, table)} WHERE symbol = $1 AND strength = $2 "
            "AND a_ts >= $3 AND confirmed_at < $4",
            parameters=(symbol, strength, window.start, window.end_exclusive),
        )
        return source, pl.from_arrow(cur.fetch_arrow_table())  # type: ignore[return-value]

    with Session(url, READER_NAME, policy) as session:
        source, events = session.run("reading the window", inspect)
    batches = list(source.stream(url, window.start, window.end_exclusive, policy))
    bars = pl.concat(batches) if batches else pl.DataFrame(schema=DETECT_SCHEMA)
    if bars.height == 0:
        (on_warning or warnings.warn)(
            f"{symbol}: no bars between {window.start.isoformat()} and {window.end_exclusive.isoformat()} "
            "(a holiday or a quiet window?): the chart is empty"
        )
    bars = bars.with_columns(pl.lit(symbol).alias("symbol"))
    return render_chart(bars, events, out, bar_interval=source.read.interval, on_warning=on_warning)
