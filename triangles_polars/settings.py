"""Run settings: parsing and validation of everything a user types (SPEC §2, §3, §6).

Every check here raises :class:`BadInput` with a one-line message, so nothing reaches the
database before the arguments are known to be sane.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Literal

from triangles_polars.errors import BadInput

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
MAX_STRENGTH = 10_000

BAR_COLUMNS = ("symbol", "ts", "open", "high", "low", "close", "volume")

TsConvention = Literal["open", "close"]
HygieneProfile = Literal["basic", "full"]
WriteMode = Literal["replace", "append"]
Reader = Literal["connectorx", "adbc"]

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
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
            try:
                return datetime.combine(date.fromisoformat(raw), time(0), tzinfo=UTC), True
            except ValueError:
                raise BadInput(f"malformed {what} {raw!r}: not a real date") from None
        try:
            value = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise BadInput(
                f"malformed {what} {raw!r}: use YYYY-MM-DD or an ISO timestamp like 2025-11-30T23:00:00Z"
            ) from None
        is_day = False
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value, is_day


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
    """Per-instrument hygiene thresholds in price points (SPEC §3)."""

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


# The field report's NQ thresholds (SPEC §3).
NQ_THRESHOLDS = Thresholds(
    min_price=1000.0,
    discontinuity=500.0,
    small_range=5.0,
    big_gap=150.0,
    flat_gap=50.0,
    reference_window=7,
)
BUILTIN_PROFILES: dict[str, Thresholds] = {"NQ": NQ_THRESHOLDS}


def instrument_root(symbol: str) -> str:
    """``"GLBX.MDP3:NQ"`` → ``"NQ"``; ``"NQ.c.0"`` → ``"NQ"``: the key of built-in profiles."""
    return symbol.rsplit(":", 1)[-1].split(".", 1)[0]


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


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class BackfillSettings:
    """Everything one ``backfill`` run needs. Strings are parsed and validated on creation.

    ``start``/``end`` are UTC days (inclusive) or timestamps; ``end`` as a timestamp is an
    exclusive bound, so that ``[a, b)`` then ``[b, c)`` tile time without overlap.
    """

    symbol: str
    start: str | date | datetime
    end: str | date | datetime
    strength: int = DEFAULT_STRENGTH
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

    # Derived, set in __post_init__.
    range_start: datetime = field(init=False)
    range_end: datetime = field(init=False)
    anchor_ts: datetime = field(init=False)
    interval: timedelta = field(init=False)
    profile: HygieneProfile = field(init=False)
    thresholds: Thresholds = field(init=False)
    column_map: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if not isinstance(self.symbol, str) or not self.symbol.strip():
            raise BadInput("SYMBOL must be a non-empty string")
        if "\x00" in self.symbol:
            raise BadInput("SYMBOL must not contain NUL characters")
        start, _ = parse_instant(self.start, "START")
        end, end_is_day = parse_instant(self.end, "END")
        end_exclusive = end + timedelta(days=1) if end_is_day else end
        if end_exclusive <= start:
            raise BadInput(f"END {_show(self.end)} is before START {_show(self.start)}: nothing to do")
        if isinstance(self.strength, bool) or not isinstance(self.strength, int):
            raise BadInput(f"bad strength {self.strength!r}: it must be a whole number")
        if not 1 <= self.strength <= MAX_STRENGTH:
            raise BadInput(f"bad strength {self.strength}: it must be between 1 and {MAX_STRENGTH}")
        if self.anchor is None:
            anchor = start - timedelta(days=DEFAULT_ANCHOR_DAYS)
        else:
            anchor, _ = parse_instant(self.anchor, "ANCHOR")
            if anchor > start:
                raise BadInput(
                    f"ANCHOR {_show(self.anchor)} is after START {_show(self.start)}: "
                    "bars are loaded from ANCHOR, so it must come first"
                )
        if self.ts_convention not in ("open", "close"):
            raise BadInput(f"unknown ts convention {self.ts_convention!r}: use open or close")
        interval = parse_duration(self.bar_interval)
        profile = self.hygiene or ("basic" if self.ts_convention == "open" else "full")
        if profile not in ("basic", "full"):
            raise BadInput(f"unknown hygiene profile {profile!r}: use basic or full")
        if self.reader not in ("connectorx", "adbc"):
            raise BadInput(f"unknown reader {self.reader!r}: use connectorx or adbc")
        if self.mode not in ("replace", "append"):
            raise BadInput(f"unknown mode {self.mode!r}: use replace or append")
        split_table_name(self.bars_table, "bars table name")
        split_table_name(self.events_table, "events table name")
        column_map = {c: c for c in BAR_COLUMNS}
        for logical, actual in self.columns.items():
            if logical not in BAR_COLUMNS:
                raise BadInput(f"unknown bar column {logical!r}: expected one of {', '.join(BAR_COLUMNS)}")
            column_map[logical] = check_identifier(actual, f"column name for {logical}")
        for name, low in (("chunk_events", 1), ("max_retries", 0), ("slice_days", 1), ("prefetch", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise BadInput(f"bad {name.replace('_', '-')} {value!r}: it must be >= {low}")
        if not (isinstance(self.backoff_s, int | float) and 0 <= self.backoff_s <= 600):
            raise BadInput(f"bad backoff {self.backoff_s!r}: use 0 to 600 seconds")

        thresholds, has_profile = resolve_thresholds(
            self.symbol, self.config, {k: getattr(self, k) for k in THRESHOLD_KEYS}
        )
        if profile == "full" and thresholds.missing_for_full():
            missing = thresholds.missing_for_full()
            where = "no built-in or config profile" if not has_profile else "an incomplete profile"
            raise BadInput(
                f"hygiene 'full' needs thresholds for {self.symbol!r}, which has {where}: "
                f"missing {', '.join(missing)} (give --{' --'.join(m.replace('_', '-') for m in missing)} "
                "or a [instruments] table in --config)"
            )
        put("range_start", start)
        put("range_end", end_exclusive)
        put("anchor_ts", anchor)
        put("interval", interval)
        put("profile", profile)
        put("thresholds", thresholds)
        put("column_map", column_map)

    @property
    def events_table_parts(self) -> tuple[str | None, str]:
        """(schema or None, table) of the events table."""
        return split_table_name(self.events_table, "events table name")

    @property
    def bars_table_parts(self) -> tuple[str | None, str]:
        """(schema or None, table) of the bars table."""
        return split_table_name(self.bars_table, "bars table name")


def _show(value: Any) -> str:
    return value.isoformat() if isinstance(value, date | datetime) else str(value)
