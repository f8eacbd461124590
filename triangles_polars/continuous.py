"""The front-month continuous series ``DATASET:ROOT`` from parent bars and instrument definitions.

The rules (``docs/contract.md#vendor-files-and-continuous-futures``):

* **Sessions** are CME trading days: a bar belongs to day D when its open time in
  America/Chicago is at or after 17:00 on D − 1 and before 17:00 on D. The previous session is the
  latest earlier session that has bars.
* For each session the series takes the **outright future** (``instrument_class == "F"``,
  root ROOT) with the largest total volume in the previous session (the first session uses its
  own); a tie keeps the current contract; the series never rolls to an earlier expiration than
  the current one.
* ``adjust="difference"`` back-adjusts: a roll's gap is ``close(to) − close(from)`` at the last
  minute before the roll in which both contracts have a bar, and every bar before a roll has
  open, high, low and close shifted by the sum of the gaps of all later rolls (volume unchanged).
  ``adjust="none"`` keeps the traded prices.

Choices where those rules are silent:

* "Sessions that have bars" are sessions in which an outright future of the root has a bar
  (spreads and other roots do not make a session).
* Among several non-current contracts tied on volume, the earliest expiration wins, then the
  symbol. The current contract counts with volume 0 in a previous session where it has no bar.
  A contract without an expiration never blocks a roll and is never blocked, so through one the
  series can leave a contract and later come back to it. The rule above still holds as
  written: every stretch between two rolls is shifted by the gaps of all later rolls, so two
  stretches of one contract can carry different shifts, and a roll's common minute can lie
  before earlier rolls (its bar then also carries their gaps).
* If the chosen contract has no bar in a session, the series has no bar there (no substitute).
* "Minute" means a bar open time (``ts``) shared by both contracts, whatever the bar interval;
  a bar without a close does not count. When no such minute exists before the roll, the roll's
  gap is null and shifts nothing.
* Rolls name contracts by their symbol in the bars (``GLBX.MDP3:NQH6``).
* Bars that hold rows but no outright future of ROOT are ``BadInput`` (a wrong root, or a file
  of another product: an empty series would hide the mistake); no bars at all give an empty
  series.

Memory: the bars are read in passes over batches, never held whole. Pass 1 sums volume per
(session, contract) (a few rows per session); the contract per session follows from that small
frame. Pass 2 collects, for each roll, the two contracts' bars of the latest three sessions in
which both traded, to find the common minute (a rare roll without one there gets one more pass
over its older sessions). The last pass selects the chosen contract's bars batch by batch and
shifts them. So a 16-year parent file needs three reads of the file and memory for one batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Literal

import polars as pl

from triangles_polars.errors import BadInput
from triangles_polars.symbols import dataset_of, instrument_root

Adjust = Literal["none", "difference"]
ADJUSTS = ("none", "difference")
SESSION_TZ = "America/Chicago"
SESSION_START_HOUR = 17  # CME Globex opens at 17:00 Chicago time for the next trading day
GAP_SESSIONS = 3  # sessions per roll searched for a common minute in the first gap pass

BarsSource = pl.DataFrame | pl.LazyFrame | Callable[[], Iterable[pl.DataFrame]]

BAR_COLUMNS = ("symbol", "ts", "open", "high", "low", "close", "volume")
NEEDED_COLUMNS = (*BAR_COLUMNS, "instrument_class", "expiration")
ROLLS_SCHEMA: dict[str, pl.DataType] = {
    "symbol": pl.String(),
    "session": pl.Date(),
    "from_contract": pl.String(),
    "to_contract": pl.String(),
    "gap": pl.Float64(),
}
SCHEDULE_SCHEMA: dict[str, pl.DataType] = {
    "session": pl.Date(),
    "contract": pl.String(),
    "shift": pl.Float64(),
}
SERIES_SCHEMA: dict[str, pl.DataType] = {
    "symbol": pl.String(),
    "ts": pl.Datetime("us", "UTC"),
    "open": pl.Float64(),
    "high": pl.Float64(),
    "low": pl.Float64(),
    "close": pl.Float64(),
    "volume": pl.Int64(),
}


def session_date(ts: pl.Expr | str = "ts") -> pl.Expr:
    """The CME session (trading day) of a bar open time: 17:00 Chicago on D − 1 up to 17:00 on D.

    Shifting Chicago wall-clock time by the 7 hours from 17:00 to midnight turns the session
    boundary into a date boundary, on both sides of a DST change.
    """
    expr = pl.col(ts) if isinstance(ts, str) else ts
    local = expr.dt.convert_time_zone(SESSION_TZ).dt.replace_time_zone(None)
    return (local + timedelta(hours=24 - SESSION_START_HOUR)).dt.date()


@dataclass
class ContinuousSeries:
    """A built continuous series: the contract per session, the rolls, and the bars on demand.

    ``schedule`` has a row per session with bars: ``session, contract, shift`` (the price shift
    of that session's bars; 0 with ``adjust="none"``). ``rolls`` has ``symbol, session,
    from_contract, to_contract, gap``. ``batches()`` reads the source again and yields the
    series' bars (bars-table shape, symbol ``DATASET:ROOT``), sorted by ts within each batch.
    """

    symbol: str
    root: str
    adjust: str
    schedule: pl.DataFrame
    rolls: pl.DataFrame
    _source: Callable[[], Iterable[pl.DataFrame]] = field(repr=False)
    _contracts: frozenset[str] = field(repr=False, default=frozenset())

    def batches(self) -> Iterator[pl.DataFrame]:
        """The series' bars, one frame per source batch that has any."""
        if self.schedule.height == 0:
            return
        chosen = self.schedule.select("session", pl.col("contract").alias("symbol"), "shift").lazy()
        for batch in self._source():
            picked = (
                _outrights(batch.lazy(), self._contracts)
                .with_columns(session_date().alias("session"))
                .join(chosen, on=["session", "symbol"], how="inner")
                .select(
                    pl.lit(self.symbol, pl.String).alias("symbol"),
                    "ts",
                    *[(pl.col(p) + pl.col("shift")).alias(p) for p in ("open", "high", "low", "close")],
                    "volume",
                )
                .sort("ts")
                .collect()
            )
            if picked.height:
                yield picked.cast(SERIES_SCHEMA)  # type: ignore[arg-type]

    def collect(self) -> pl.DataFrame:
        """The whole series in one frame, sorted by ts."""
        frames = list(self.batches())
        if not frames:
            return pl.DataFrame(schema=SERIES_SCHEMA)
        return pl.concat(frames).sort("ts")


def build_continuous(
    bars: BarsSource,
    root: str,
    *,
    adjust: Adjust | str = "none",
    dataset: str | None = None,
) -> ContinuousSeries:
    """Build the front-month series of ``root`` from parent bars with their definitions.

    ``bars`` is a frame, or a callable that returns the bars in batches each time it is called
    (``DbnBars.batches`` of a parent file opened with definitions and ``extra_columns=True``); it
    needs ``symbol, ts, open, high, low, close, volume, instrument_class, expiration``. ``root``
    is ``NQ`` or ``GLBX.MDP3:NQ``; the series is named ``DATASET:ROOT``, the dataset taken from
    ``dataset``, the root's prefix or the contracts' symbols. Returns the series with its
    schedule and rolls; the bars stream from :meth:`ContinuousSeries.batches`.

    Raises :class:`BadInput` for an unknown ``adjust``, for bars without the columns above or
    without any ``instrument_class`` (no definitions), for contracts of the root from several
    datasets, and for bars that hold rows but no outright future of ``root`` (a wrong root or
    another product's file, which an empty series would hide). No bars at all (a file with
    metadata only) give an empty series and no rolls.
    """
    if adjust not in ADJUSTS:
        raise BadInput(f"unknown adjustment {adjust!r}: use none or difference")
    source = _as_source(bars)
    want_root = instrument_root(root)
    dataset = dataset or dataset_of(root)

    volumes, contracts = _pass_volumes(source, want_root, dataset)
    if volumes.height:
        dataset = dataset or _dataset_of_contracts(contracts, want_root)
    symbol = f"{dataset}:{want_root}" if dataset else want_root
    schedule = _choose_contracts(volumes)
    rolls = _rolls(schedule, symbol)
    if rolls.height:
        rolls = _gaps(source, contracts, volumes, rolls)
    schedule = _shifts(schedule, rolls, adjust)
    return ContinuousSeries(
        symbol=symbol,
        root=want_root,
        adjust=adjust,
        schedule=schedule,
        rolls=rolls,
        _source=source,
        _contracts=frozenset(contracts),
    )


def continuous_frames(
    bars: BarsSource, root: str, *, adjust: Adjust | str = "none", dataset: str | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``(series, rolls)`` in memory: :func:`build_continuous` then ``collect``."""
    series = build_continuous(bars, root, adjust=adjust, dataset=dataset)
    return series.collect(), series.rolls


# --------------------------------------------------------------------------- passes


def _as_source(bars: BarsSource) -> Callable[[], Iterable[pl.DataFrame]]:
    if isinstance(bars, pl.LazyFrame):
        bars = bars.collect()
    if isinstance(bars, pl.DataFrame):
        frame = bars
        return lambda: (frame,)
    if callable(bars):
        return bars
    raise BadInput(
        f"bars for a continuous series must be a frame or a batch source, not {type(bars).__name__}"
    )


def _outrights(batch: pl.LazyFrame, contracts: frozenset[str] | set[str]) -> pl.LazyFrame:
    return batch.filter((pl.col("instrument_class") == "F") & pl.col("symbol").is_in(list(contracts)))


@dataclass
class _Seen:
    """What pass 1 saw, for messages when no contract qualifies."""

    rows: int = 0
    classless: int = 0
    roots: set[str] = field(default_factory=set)


def _pass_volumes(
    source: Callable[[], Iterable[pl.DataFrame]], root: str, dataset: str | None
) -> tuple[pl.DataFrame, set[str]]:
    """Pass 1: volume and bar count per (session, contract) of the root's outright futures."""
    contracts: set[str] = set()
    verdict: dict[str, bool] = {}  # symbol → is an outright of ROOT (roots computed once per symbol)
    seen = _Seen()
    parts: list[pl.DataFrame] = []
    for batch in source():
        missing = [c for c in NEEDED_COLUMNS if c not in batch.columns]
        if missing:
            raise BadInput(
                f"bars for a continuous series lack column(s) {', '.join(missing)}: read the parent "
                "file with its instrument definitions"
            )
        if batch.height == 0:
            continue
        seen.rows += batch.height
        seen.classless += batch["instrument_class"].null_count()
        futures = batch.filter(pl.col("instrument_class") == "F")["symbol"].unique().to_list()
        for sym in futures:
            if sym not in verdict:
                sym_root = instrument_root(sym)
                seen.roots.add(sym_root)
                same_dataset = dataset is None or dataset_of(sym) in (None, dataset)
                verdict[sym] = sym_root == root and same_dataset
                if verdict[sym]:
                    contracts.add(sym)
        part = (
            _outrights(batch.lazy(), contracts)
            .group_by(session_date().alias("session"), pl.col("symbol").alias("contract"))
            .agg(
                pl.col("volume").sum().alias("volume"),
                pl.len().alias("bars"),
                pl.col("expiration").max().alias("expiration"),
            )
            .collect()
        )
        parts.append(part)
        if len(parts) >= 32:  # keep the partial aggregates small on long files
            parts = [_merge_volumes(parts)]
    volumes = _merge_volumes(parts)
    if volumes.height == 0 and seen.rows:
        if seen.classless == seen.rows:
            raise BadInput(
                "the bars carry no instrument_class: a continuous series needs the parent file's "
                "instrument definitions (--definitions FILE)"
            )
        found = ", ".join(sorted(seen.roots)) or "none"
        raise BadInput(f"no outright future of root {root} among the bars (future roots found: {found})")
    return volumes, contracts


def _merge_volumes(parts: list[pl.DataFrame]) -> pl.DataFrame:
    schema = {
        "session": pl.Date(),
        "contract": pl.String(),
        "volume": pl.Int64(),
        "bars": pl.Int64(),
        "expiration": pl.Datetime("us", "UTC"),
    }
    if not parts:
        return pl.DataFrame(schema=schema)
    return (
        pl.concat([p.cast(schema) for p in parts])  # type: ignore[arg-type]
        .group_by("session", "contract")
        .agg(pl.col("volume").sum(), pl.col("bars").sum(), pl.col("expiration").max())
        .sort("session", "contract")
    )


def _dataset_of_contracts(contracts: set[str], root: str) -> str | None:
    datasets = {dataset_of(c) for c in contracts} - {None}
    if len(datasets) > 1:
        raise BadInput(
            f"contracts of root {root} come from several datasets ({', '.join(sorted(datasets))}): "
            "give the root as DATASET:ROOT"
        )
    return next(iter(datasets), None)


def _choose_contracts(volumes: pl.DataFrame) -> pl.DataFrame:
    """The contract of each session, from the previous session's volumes.

    A loop over sessions (one small aggregated row per session and contract, ~4,000 sessions
    for 16 years), because each choice depends on the one before it (ties keep the current
    contract, and its expiration is a floor): a recurrence, not a column expression.
    """
    if volumes.height == 0:
        return pl.DataFrame(schema={"session": pl.Date(), "contract": pl.String()})
    expiry = dict(volumes.group_by("contract").agg(pl.col("expiration").max()).iter_rows())
    per_session = volumes.group_by("session", maintain_order=True).agg("contract", "volume").sort("session")
    sessions: list[date] = per_session["session"].to_list()
    books = [
        dict(zip(c, v, strict=True))
        for c, v in zip(per_session["contract"], per_session["volume"], strict=True)
    ]
    chosen: list[str] = []
    current: str | None = None
    for i in range(len(sessions)):
        basis = books[i - 1] if i else books[0]
        current = _choose(basis, current, expiry)
        chosen.append(current)
    return pl.DataFrame(
        {"session": sessions, "contract": chosen}, schema={"session": pl.Date(), "contract": pl.String()}
    )


def _choose(basis: dict[str, int], current: str | None, expiry: dict[str, object]) -> str:
    floor = expiry.get(current) if current is not None else None
    candidates = {
        c: (v or 0)
        for c, v in basis.items()
        if floor is None or expiry.get(c) is None or expiry[c] >= floor  # type: ignore[operator]
    }
    if current is not None:
        candidates.setdefault(current, 0)
    best = max(candidates.values())
    if current is not None and candidates[current] == best:
        return current
    tied = [c for c, v in candidates.items() if v == best]
    return min(tied, key=lambda c: (expiry.get(c) is None, expiry.get(c) or 0, c))


def _rolls(schedule: pl.DataFrame, symbol: str) -> pl.DataFrame:
    return (
        schedule.with_columns(pl.col("contract").shift(1).alias("from_contract"))
        .filter(pl.col("from_contract").is_not_null() & (pl.col("from_contract") != pl.col("contract")))
        .select(
            pl.lit(symbol, pl.String).alias("symbol"),
            "session",
            "from_contract",
            pl.col("contract").alias("to_contract"),
            pl.lit(None, pl.Float64).alias("gap"),
        )
        .cast(ROLLS_SCHEMA)  # type: ignore[arg-type]
    )


def _gaps(
    source: Callable[[], Iterable[pl.DataFrame]],
    contracts: set[str],
    volumes: pl.DataFrame,
    rolls: pl.DataFrame,
) -> pl.DataFrame:
    """Pass 2: each roll's gap at the last minute before it in which both contracts have a bar."""
    traded = volumes.select("session", "contract")
    # Sessions before each roll in which both contracts have bars, latest first.
    both = (
        rolls.with_row_index("roll")
        .join(traded.rename({"session": "s", "contract": "from_contract"}), on="from_contract")
        .join(
            traded.rename({"session": "s", "contract": "to_contract"}),
            on=["to_contract", "s"],
        )
        .filter(pl.col("s") < pl.col("session"))
        .with_columns(pl.col("s").rank("ordinal", descending=True).over("roll").alias("depth"))
    )
    found = pl.DataFrame(schema={"roll": pl.UInt32(), "gap": pl.Float64()})
    for window in (pl.col("depth") <= GAP_SESSIONS, pl.col("depth") > GAP_SESSIONS):
        todo = both.filter(window & ~pl.col("roll").is_in(found["roll"].implode()))
        if todo.height == 0:
            continue
        found = pl.concat([found, _gap_pass(source, contracts, todo)])
    out = rolls.with_row_index("roll").drop("gap").join(found, on="roll", how="left").drop("roll")
    return out.select(list(ROLLS_SCHEMA)).cast(ROLLS_SCHEMA)  # type: ignore[arg-type]


def _gap_pass(
    source: Callable[[], Iterable[pl.DataFrame]], contracts: set[str], todo: pl.DataFrame
) -> pl.DataFrame:
    """One read of the bars: the closes the rolls in ``todo`` need, then each one's gap."""
    needs = pl.concat(
        [
            todo.select(
                "roll", pl.col("s").alias("session"), pl.col(c).alias("symbol"), pl.lit(side).alias("side")
            )
            for c, side in (("from_contract", "from"), ("to_contract", "to"))
        ]
    ).lazy()
    frozen = frozenset(contracts)
    parts = [
        _outrights(batch.lazy(), frozen)
        .filter(pl.col("close").is_not_null())
        .with_columns(session_date().alias("session"))
        .join(needs, on=["session", "symbol"], how="inner")
        .select("roll", "side", "ts", "close")
        .collect()
        for batch in source()
    ]
    closes = (
        pl.concat(parts)
        if parts
        else pl.DataFrame(
            schema={
                "roll": pl.UInt32(),
                "side": pl.String(),
                "ts": pl.Datetime("us", "UTC"),
                "close": pl.Float64(),
            }
        )
    )
    old = closes.filter(pl.col("side") == "from").drop("side")
    new = closes.filter(pl.col("side") == "to").drop("side")
    return (
        old.join(new, on=["roll", "ts"], suffix="_to")
        .sort("roll", "ts")
        .group_by("roll")
        .agg((pl.col("close_to") - pl.col("close")).last().alias("gap"))
        .cast({"roll": pl.UInt32(), "gap": pl.Float64()})
    )


def _shifts(schedule: pl.DataFrame, rolls: pl.DataFrame, adjust: str) -> pl.DataFrame:
    """Each session's price shift: the sum of the gaps of all later rolls (or 0)."""
    if adjust == "none" or schedule.height == 0:
        return schedule.with_columns(pl.lit(0.0).alias("shift")).cast(SCHEDULE_SCHEMA)  # type: ignore[arg-type]
    gaps = rolls.select("session", pl.col("gap").fill_null(0.0))
    return (
        schedule.join(gaps, on="session", how="left")
        .sort("session")
        .with_columns(pl.col("gap").fill_null(0.0))
        # Summed from the latest roll backwards, so each shift is literally the sum of the gaps
        # of the later rolls (no total-minus-prefix rounding).
        .with_columns(pl.col("gap").shift(-1, fill_value=0.0).cum_sum(reverse=True).alias("shift"))
        .select(list(SCHEDULE_SCHEMA))
        .cast(SCHEDULE_SCHEMA)  # type: ignore[arg-type]
    )
