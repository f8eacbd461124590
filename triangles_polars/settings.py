"""Run settings: parsing and validation of everything a user types.

Every check here raises :class:`BadInput` with a one-line message, so nothing reaches the
database before the arguments are known to be sane.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Literal

from triangles_polars.db import RetryPolicy
from triangles_polars.errors import BadInput
from triangles_polars.schema import BAR_COLUMNS, instant_utc
from triangles_polars.symbols import instrument_root

DEFAULT_BARS_TABLE = "bars_1m"
DEFAULT_EVENTS_TABLE = "triangle_events"
DEFAULT_STRENGTH = 5
DEFAULT_ANCHOR_DAYS = 7
# Chosen from benchmarks/README.md: larger chunks amortise the per-transaction round trips,
# beyond ~50k events the gain is flat while a retry redoes more work.
DEFAULT_CHUNK_EVENTS = 50_000
DEFAULT_MAX_RETRIES = 5
DEFAULT_BACKOFF_S = 0.5
# connectorx reads bars in time slices of this many days (memory is bounded by a slice, not
# the history), up to two slices ahead of detection; see benchmarks/README.md for measurements.
DEFAULT_SLICE_DAYS = 183
DEFAULT_PREFETCH = 2
DEFAULT_MAX_TASK_RETRIES = 3
# `plot` draws at most this many candles (a full day of 1-minute bars is 1,380); a longer
# window is drawn as an overview of aggregated candles (docs/contract.md#triangles-plot).
DEFAULT_MAX_CANDLES = 2_000
MAX_STRENGTH = 10_000

TsConvention = Literal["open", "close"]
HygieneProfile = Literal["basic", "full"]
WriteMode = Literal["replace", "append"]
Reader = Literal["connectorx", "adbc"]
Engine = Literal["local", "ray"]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_DURATION = re.compile(r"^\s*(\d+)\s*(s|sec|m|min|h|d)\s*$")
_DURATION_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


# --------------------------------------------------------------------------- small parsers


def parse_duration(text: str | timedelta) -> timedelta:
    """``"1m"`` → 1 minute; accepts s, m (min), h, d."""
    if isinstance(text, timedelta):
        value = text
    else:
        match = _DURATION.match(str(text))
        if not match:
            raise BadInput(f"bad bar interval {text!r}: use a duration like 1m, 5m, 1h or 1d")
        value = timedelta(seconds=int(match.group(1)) * _DURATION_UNITS[match.group(2)])
    if value <= timedelta(0):
        raise BadInput(f"bad bar interval {text!r}: it must be positive")
    return value


def parse_instant(text: str | date | datetime, what: str) -> tuple[datetime, bool]:
    """Parse a UTC day or a timestamp. Returns ``(instant, is_whole_day)``.

    Naive timestamps are taken as UTC; offsets are converted to UTC.
    """
    if isinstance(text, datetime):
        value = text
        is_day = False
    elif isinstance(text, date):
        return datetime.combine(text, time(0), tzinfo=UTC), True
    else:
        raw = str(text).strip()
        # A day, extended (2025-06-02) or compact (20250602): both mean the whole day.
        day = re.fullmatch(r"(\d{4})(-?)(\d{2})\2(\d{2})", raw)
        if day:
            try:
                year, month, dom = int(day[1]), int(day[3]), int(day[4])
                return datetime.combine(date(year, month, dom), time(0), tzinfo=UTC), True
            except ValueError:
                raise BadInput(f"malformed {what} {raw!r}: not a real date") from None
        try:
            value = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise BadInput(
                f"malformed {what} {raw!r}: use a day (YYYY-MM-DD or YYYYMMDD) or an ISO timestamp "
                "like 2025-11-30T23:00:00Z"
            ) from None
        is_day = False
    return instant_utc(value), is_day


def split_table_name(name: str, what: str) -> tuple[str | None, str]:
    """``"analytics.events"`` → ``("analytics", "events")``; rejects anything but plain identifiers.

    Identifiers are still quoted in every statement; validation keeps names predictable and
    makes injection attempts a clear error instead of a strange table.
    """
    parts = str(name).split(".")
    if len(parts) > 2 or not all(_IDENT.match(p) for p in parts):
        raise BadInput(f"bad {what} {name!r}: use letters, digits and underscores, optionally schema.table")
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


def check_identifier(name: str, what: str) -> str:
    """A single SQL identifier (column name), validated like table names."""
    if not _IDENT.match(str(name)):
        raise BadInput(f"bad {what} {name!r}: use letters, digits and underscores")
    return str(name)


# --------------------------------------------------------------------------- thresholds


THRESHOLD_KEYS = (
    "min_price",
    "discontinuity",
    "small_range",
    "big_gap",
    "flat_gap",
    "reference_window",
)
_FULL_KEYS = ("discontinuity", "small_range", "big_gap", "flat_gap")


@dataclass(frozen=True)
class Thresholds:
    """Per-instrument hygiene thresholds in price points (``docs/contract.md#hygiene``)."""

    min_price: float = 0.0
    discontinuity: float | None = None
    small_range: float | None = None
    big_gap: float | None = None
    flat_gap: float | None = None
    reference_window: int = 7

    def missing_for_full(self) -> list[str]:
        """Names of the thresholds that the ``full`` profile needs and this profile lacks."""
        return [k for k in _FULL_KEYS if getattr(self, k) is None]

    def merged(self, overrides: dict[str, Any]) -> Thresholds:
        """A copy with the non-None ``overrides`` applied and validated."""
        clean = {k: v for k, v in overrides.items() if v is not None}
        for key, value in clean.items():
            if key not in THRESHOLD_KEYS:
                raise BadInput(f"unknown threshold {key!r}: expected one of {', '.join(THRESHOLD_KEYS)}")
            clean[key] = _check_threshold(key, value)
        return replace(self, **clean)


def _check_threshold(key: str, value: Any) -> float | int:
    if key == "reference_window":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadInput(f"bad reference_window {value!r}: it must be a whole number >= 1")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadInput(f"bad {key} {value!r}: it must be a number")
    if not math.isfinite(value) or value < 0:
        raise BadInput(f"bad {key} {value!r}: it must be a finite number >= 0")
    return float(value)


# The field report's NQ thresholds (``docs/contract.md#hygiene``).
NQ_THRESHOLDS = Thresholds(
    min_price=1000.0,
    discontinuity=500.0,
    small_range=5.0,
    big_gap=150.0,
    flat_gap=50.0,
    reference_window=7,
)
BUILTIN_PROFILES: dict[str, Thresholds] = {"NQ": NQ_THRESHOLDS}


def load_config(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a TOML config: ``[instruments."SYMBOL"]`` or ``[instruments.ROOT]`` tables of thresholds."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput(f"config file {str(path)!r} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"config file {str(path)!r} unreadable: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    unknown = set(raw) - {"instruments"}
    if unknown:
        raise BadInput(
            f"config file {str(path)!r}: unknown section(s) {', '.join(sorted(unknown))}; "
            "expected [instruments.SYMBOL] tables"
        )
    instruments = raw.get("instruments", {})
    if not isinstance(instruments, dict):
        raise BadInput(f"config file {str(path)!r}: 'instruments' must be a table")
    out: dict[str, dict[str, Any]] = {}
    for name, table in instruments.items():
        if not isinstance(table, dict):
            raise BadInput(f"config file {str(path)!r}: [instruments.{name}] must be a table")
        bad = set(table) - set(THRESHOLD_KEYS)
        if bad:
            raise BadInput(
                f"config file {str(path)!r}: unknown key(s) {', '.join(sorted(bad))} in "
                f"[instruments.{name}]; expected {', '.join(THRESHOLD_KEYS)}"
            )
        try:
            out[name] = {k: _check_threshold(k, v) for k, v in table.items()}
        except BadInput as exc:
            raise BadInput(f"config file {str(path)!r}: [instruments.{name}] {exc}") from None
    return out


def resolve_thresholds(
    symbol: str, config_path: str | Path | None, overrides: dict[str, Any]
) -> tuple[Thresholds, bool]:
    """Built-in profile ← config file (exact symbol, else root) ← command-line overrides.

    Returns the thresholds and whether the instrument has a profile at all.
    """
    root = instrument_root(symbol)
    base = BUILTIN_PROFILES.get(symbol) or BUILTIN_PROFILES.get(root)
    has_profile = base is not None
    thresholds = base or Thresholds()
    if config_path is not None:
        config = load_config(config_path)
        table = config.get(symbol, config.get(root))
        if table is not None:
            has_profile = True
            thresholds = Thresholds(**{**_as_dict(thresholds), **table})
    given = {k: v for k, v in overrides.items() if v is not None}
    if given:
        has_profile = True
    return thresholds.merged(given), has_profile


def _as_dict(thresholds: Thresholds) -> dict[str, Any]:
    return {f.name: getattr(thresholds, f.name) for f in fields(thresholds)}


# --------------------------------------------------------------------------- sub-configs


@dataclass(frozen=True)
class Window:
    """A span of time ``[start, end_exclusive)``: UTC days are inclusive, a timestamp END exclusive.

    >>> Window.parse("2025-12-02", "2025-12-02").end_exclusive.isoformat()
    '2025-12-03T00:00:00+00:00'
    """

    start: datetime
    end_exclusive: datetime

    @classmethod
    def parse(cls, start: str | date | datetime, end: str | date | datetime) -> Window:
        """Parse START and END; END before START is bad input."""
        first, _ = parse_instant(start, "START")
        last, end_is_day = parse_instant(end, "END")
        end_exclusive = last + timedelta(days=1) if end_is_day else last
        if end_exclusive <= first:
            raise BadInput(f"END {_show(end)} is before START {_show(start)}: nothing to do")
        return cls(first, end_exclusive)


@dataclass(frozen=True)
class TimeRange(Window):
    """A run's window plus the ``anchor`` that bars are loaded from (default START − 7 days)."""

    anchor: datetime = field(default=datetime.min.replace(tzinfo=UTC))

    @classmethod
    def parse(  # type: ignore[override]
        cls,
        start: str | date | datetime,
        end: str | date | datetime,
        anchor: str | date | datetime | None = None,
    ) -> TimeRange:
        window = Window.parse(start, end)
        if anchor is None:
            at = window.start - timedelta(days=DEFAULT_ANCHOR_DAYS)
        else:
            at, _ = parse_instant(anchor, "ANCHOR")
            if at > window.start:
                raise BadInput(
                    f"ANCHOR {_show(anchor)} is after START {_show(start)}: "
                    "bars are loaded from ANCHOR, so it must come first"
                )
        return cls(window.start, window.end_exclusive, at)


@dataclass(frozen=True)
class Tables:
    """Where bars are read and events written, and the bars table's column names."""

    bars: str = DEFAULT_BARS_TABLE
    events: str = DEFAULT_EVENTS_TABLE
    columns: dict[str, str] = field(default_factory=lambda: {c: c for c in BAR_COLUMNS})

    @classmethod
    def parse(cls, bars: str, events: str, columns: dict[str, str]) -> Tables:
        split_table_name(bars, "bars table name")
        split_table_name(events, "events table name")
        column_map = {c: c for c in BAR_COLUMNS}
        for logical, actual in columns.items():
            if logical not in BAR_COLUMNS:
                raise BadInput(f"unknown bar column {logical!r}: expected one of {', '.join(BAR_COLUMNS)}")
            column_map[logical] = check_identifier(actual, f"column name for {logical}")
        return cls(bars, events, column_map)

    @property
    def events_parts(self) -> tuple[str | None, str]:
        """(schema or None, table) of the events table."""
        return split_table_name(self.events, "events table name")

    @property
    def bars_parts(self) -> tuple[str | None, str]:
        """(schema or None, table) of the bars table."""
        return split_table_name(self.bars, "bars table name")


@dataclass(frozen=True)
class ReadSettings:
    """How bars are read: what their ts means, their length, and the reader's batching."""

    ts_convention: TsConvention = "open"
    interval: timedelta = timedelta(minutes=1)
    reader: Reader = "connectorx"
    slice_days: int = DEFAULT_SLICE_DAYS
    prefetch: int = DEFAULT_PREFETCH

    @property
    def stored_shift(self) -> timedelta:
        """What the stored ts adds to a bar's open time: one interval for the close convention."""
        return self.interval if self.ts_convention == "close" else timedelta(0)

    @classmethod
    def parse(
        cls, ts_convention: str, bar_interval: str | timedelta, reader: str, slice_days: int, prefetch: int
    ) -> ReadSettings:
        _one_of_choices("ts convention", ts_convention, ("open", "close"))
        _one_of_choices("reader", reader, ("connectorx", "adbc"))
        _whole("slice_days", slice_days, 1)
        _whole("prefetch", prefetch, 1)
        return cls(ts_convention, parse_duration(bar_interval), reader, slice_days, prefetch)  # type: ignore[arg-type]


@dataclass(frozen=True)
class HygieneSettings:
    """The hygiene profile and the instrument's thresholds (see ``docs/contract.md#hygiene``)."""

    profile: HygieneProfile = "basic"
    thresholds: Thresholds = field(default_factory=Thresholds)

    @classmethod
    def resolve(
        cls,
        symbol: str,
        profile: str | None,
        ts_convention: str,
        config: str | Path | None,
        overrides: dict[str, Any],
        *,
        check_only: bool = False,
    ) -> HygieneSettings:
        """Profile default by ts convention; thresholds built-in ← config ← overrides.

        ``check_only``: validate the profile, config file and overrides without a symbol (a run
        over a list or pattern resolves each symbol's thresholds when it knows the symbols).
        """
        chosen = profile or ("basic" if ts_convention == "open" else "full")
        _one_of_choices("hygiene profile", chosen, ("basic", "full"))
        thresholds, has_profile = resolve_thresholds(symbol, config, overrides)
        missing = thresholds.missing_for_full()
        if chosen == "full" and missing and not check_only:
            where = "no built-in or config profile" if not has_profile else "an incomplete profile"
            raise BadInput(
                f"hygiene 'full' needs thresholds for {symbol!r}, which has {where}: "
                f"missing {', '.join(missing)} (give --{' --'.join(m.replace('_', '-') for m in missing)} "
                "or a [instruments] table in --config)"
            )
        return cls(chosen, thresholds)  # type: ignore[arg-type]


@dataclass(frozen=True)
class WriteSettings:
    """How events are written (see ``docs/contract.md#writing-idempotency-and-faults``)."""

    mode: WriteMode = "replace"
    purge: bool = False
    chunk_events: int = DEFAULT_CHUNK_EVENTS
    resume: bool = True

    @classmethod
    def parse(cls, mode: str, purge: bool, chunk_events: int, resume: bool) -> WriteSettings:
        _one_of_choices("mode", mode, ("replace", "append"))
        _whole("chunk_events", chunk_events, 1)
        return cls(mode, bool(purge), chunk_events, bool(resume))  # type: ignore[arg-type]


def _one_of_choices(what: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise BadInput(f"unknown {what} {value!r}: use {' or '.join(choices)}")


def _whole(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise BadInput(f"bad {name.replace('_', '-')} {value!r}: it must be >= {low}")


def parse_strengths(value: int | str | Sequence[int]) -> tuple[int, ...]:
    """One strength or several (``3,5,8``), each a whole number from 1 to ``MAX_STRENGTH``.

    >>> parse_strengths("3,5,8")
    (3, 5, 8)
    >>> parse_strengths(5)
    (5,)
    """
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        if not all(re.fullmatch(r"\d+", p) for p in parts):
            raise BadInput(f"bad strength {value!r}: use a whole number or a list like 3,5,8")
        items: list[Any] = [int(p) for p in parts]
    elif isinstance(value, int | bool):
        items = [value]
    else:
        items = list(value)
    for k in items:
        if isinstance(k, bool) or not isinstance(k, int):
            raise BadInput(f"bad strength {k!r}: it must be a whole number")
        if not 1 <= k <= MAX_STRENGTH:
            raise BadInput(f"bad strength {k}: it must be between 1 and {MAX_STRENGTH}")
    if not items or len(set(items)) != len(items):
        raise BadInput(f"bad strength list {value!r}: give each strength once")
    return tuple(items)


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Task:
    """One unit of work: one symbol's bars over one time range, read once, detected at each strength.

    Bars are loaded from ``time_range.anchor``; bars and bad bars are counted from ``count_from``
    (the run's anchor for a symbol's first task, the task's START for the others, so that a
    split run counts each bar once).
    """

    symbol: str
    strengths: tuple[int, ...]
    time_range: TimeRange
    hygiene: HygieneSettings
    count_from: datetime | None = None
    series_version: int = 0

    @property
    def label(self) -> str:
        """``SYMBOL [START, END)`` for messages."""
        span = self.time_range
        return f"{self.symbol} [{span.start:%Y-%m-%d %H:%M}, {span.end_exclusive:%Y-%m-%d %H:%M})"


@dataclass(frozen=True)
class RunConfig:
    """What every task of a run shares: where to read and write, how, and how hard to retry.

    Holds no database URL, so it can travel to workers (and Ray tasks) without the password.
    ``lock_token`` names the driver's lock connection that chunks are written under.
    ``ledger``: record the run and its chunks in the run ledger (backfill's resume); an update
    resumes from coverage alone and leaves no rows there.
    """

    tables: Tables = field(default_factory=Tables)
    read: ReadSettings = field(default_factory=ReadSettings)
    write: WriteSettings = field(default_factory=WriteSettings)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    lock_token: str | None = None
    ledger: bool = True


@dataclass(frozen=True)
class BackfillSettings:
    """Everything one ``backfill`` run needs, as a user types it; parsed and validated on creation.

    ``start``/``end`` are UTC days (inclusive) or timestamps; ``end`` as a timestamp is an
    exclusive bound, so that ``[a, b)`` then ``[b, c)`` tile time without overlap. ``strength``
    is one strength or several (``3,5,8``): the bars are read once and detected at each.
    The parsed pieces are the typed sub-configs ``time_range``, ``tables``, ``read``,
    ``hygiene_settings``, ``write`` and ``retry``.
    """

    symbol: str
    start: str | date | datetime
    end: str | date | datetime
    strength: int | str | Sequence[int] = DEFAULT_STRENGTH
    anchor: str | date | datetime | None = None
    database_url: str | None = None
    bars_table: str = DEFAULT_BARS_TABLE
    events_table: str = DEFAULT_EVENTS_TABLE
    columns: dict[str, str] = field(default_factory=dict)
    ts_convention: TsConvention = "open"
    bar_interval: str | timedelta = "1m"
    hygiene: HygieneProfile | None = None
    config: str | Path | None = None
    min_price: float | None = None
    discontinuity: float | None = None
    small_range: float | None = None
    big_gap: float | None = None
    flat_gap: float | None = None
    reference_window: int | None = None
    mode: WriteMode = "replace"
    purge: bool = False
    chunk_events: int = DEFAULT_CHUNK_EVENTS
    max_retries: int = DEFAULT_MAX_RETRIES
    backoff_s: float = DEFAULT_BACKOFF_S
    resume: bool = True
    export_dir: str | Path | None = None
    slice_days: int = DEFAULT_SLICE_DAYS
    reader: Reader = "connectorx"
    prefetch: int = DEFAULT_PREFETCH
    jobs: int | None = None
    engine: Engine = "local"
    ray_address: str | None = None
    task_days: int | None = None
    max_task_retries: int = DEFAULT_MAX_TASK_RETRIES
    wait: float | None = 0.0

    # Parsed, set in __post_init__.
    strengths: tuple[int, ...] = field(init=False)
    time_range: TimeRange = field(init=False)
    tables: Tables = field(init=False)
    read: ReadSettings = field(init=False)
    hygiene_settings: HygieneSettings = field(init=False)
    write: WriteSettings = field(init=False)
    retry: RetryPolicy = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.symbol, str) or not self.symbol.strip():
            raise BadInput("SYMBOL must be a non-empty string")
        if "\x00" in self.symbol:
            raise BadInput("SYMBOL must not contain NUL characters")
        _whole("max_retries", self.max_retries, 0)
        _whole("max_task_retries", self.max_task_retries, 0)
        _one_of_choices("engine", self.engine, ("local", "ray"))
        if self.jobs is not None:
            _whole("jobs", self.jobs, 1)
        if self.task_days is not None:
            _whole("task_days", self.task_days, 1)
        if self.wait is not None and not (isinstance(self.wait, int | float) and self.wait >= 0):
            raise BadInput(f"bad --wait {self.wait!r}: use a number of seconds >= 0")
        if not (isinstance(self.backoff_s, int | float) and 0 <= self.backoff_s <= 600):
            raise BadInput(f"bad backoff {self.backoff_s!r}: use 0 to 600 seconds")
        thresholds = {k: getattr(self, k) for k in THRESHOLD_KEYS}
        parsed = {
            "strengths": parse_strengths(self.strength),
            "time_range": TimeRange.parse(self.start, self.end, self.anchor),
            "read": ReadSettings.parse(
                self.ts_convention, self.bar_interval, self.reader, self.slice_days, self.prefetch
            ),
            "tables": Tables.parse(self.bars_table, self.events_table, self.columns),
            "write": WriteSettings.parse(self.mode, self.purge, self.chunk_events, self.resume),
            "hygiene_settings": HygieneSettings.resolve(
                self.symbol if self.single_symbol else "",
                self.hygiene,
                self.ts_convention,
                self.config,
                thresholds,
                check_only=not self.single_symbol,
            ),
            "retry": RetryPolicy(max_retries=self.max_retries, backoff_s=self.backoff_s),
        }
        for name, value in parsed.items():
            object.__setattr__(self, name, value)

    @property
    def single_symbol(self) -> bool:
        """Whether SYMBOL names one symbol (not a list or a pattern)."""
        return not (set(self.symbol) & set(",*?["))

    @property
    def run_config(self) -> RunConfig:
        """The shared part of every task of this run."""
        return RunConfig(self.tables, self.read, self.write, self.retry)

    def hygiene_for(self, symbol: str) -> HygieneSettings:
        """The hygiene of one symbol (its own thresholds: built-in, config, overrides)."""
        if symbol == self.symbol:
            return self.hygiene_settings
        overrides = {k: getattr(self, k) for k in THRESHOLD_KEYS}
        return HygieneSettings.resolve(symbol, self.hygiene, self.ts_convention, self.config, overrides)


def _show(value: Any) -> str:
    return value.isoformat() if isinstance(value, date | datetime) else str(value)
