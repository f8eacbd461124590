"""The ``triangles`` options and arguments, each declared once, with its help and default.

Commands take these ``Annotated`` aliases as parameter types and the ``DEFAULT_*`` constants
below as parameter defaults, so ``--help`` shows what a run really does. Help text is the
documentation. Importing this module stays cheap (no Polars, no database drivers), so that
``triangles --help`` is fast.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import typer.core

from triangles_polars.errors import BadInput

# The library's defaults, re-exported: commands use them as parameter defaults.
from triangles_polars.settings import DEFAULT_ANCHOR_DAYS, DEFAULT_STRENGTH
from triangles_polars.settings import DEFAULT_BACKOFF_S as DEFAULT_BACKOFF_S
from triangles_polars.settings import DEFAULT_BARS_TABLE as DEFAULT_BARS_TABLE
from triangles_polars.settings import DEFAULT_CHUNK_EVENTS as DEFAULT_CHUNK_EVENTS
from triangles_polars.settings import DEFAULT_EVENTS_TABLE as DEFAULT_EVENTS_TABLE
from triangles_polars.settings import DEFAULT_MAX_RETRIES as DEFAULT_MAX_RETRIES
from triangles_polars.settings import DEFAULT_MAX_TASK_RETRIES as DEFAULT_MAX_TASK_RETRIES
from triangles_polars.settings import DEFAULT_SLICE_DAYS as DEFAULT_SLICE_DAYS

# Defaults of BackfillSettings that settings.py has no constant for (keep them equal).
DEFAULT_TS_CONVENTION = "open"
DEFAULT_BAR_INTERVAL = "1m"
DEFAULT_MODE = "replace"
DEFAULT_READER = "connectorx"
DEFAULT_DEMO_OUT = Path("triangles_out")


def _default(text: object) -> str:
    """`` [default: TEXT]`` for the help of an option whose default is derived (its value is None)."""
    if typer.core.DEFAULT_MARKUP_MODE == "rich":  # help is Rich markup: a bare "[default: …]" is a tag
        return f" \\[default: {text}]"
    return f"  [default: {text}]"  # as click puts it


def parse_columns(text: str | None) -> dict[str, str]:
    """``"ts=time,open=o"`` → ``{"ts": "time", "open": "o"}`` (the value of ``--columns``)."""
    if not text:
        return {}
    out = {}
    for part in text.split(","):
        if "=" not in part:
            raise BadInput(f"bad --columns {text!r}: use logical=actual pairs, e.g. ts=time,open=o")
        logical, actual = (p.strip() for p in part.split("=", 1))
        out[logical] = actual
    return out


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"triangles {version('triangles-polars')}")
        raise typer.Exit()


# ------------------------------------------------------------------------ arguments

Symbol = Annotated[
    str, typer.Argument(metavar="SYMBOL", help="Symbol as stored in the bars table, e.g. GLBX.MDP3:NQ.")
]
Start = Annotated[
    str,
    typer.Argument(
        metavar="START",
        help="First UTC day (YYYY-MM-DD or YYYYMMDD: from its midnight) or timestamp (inclusive).",
    ),
]
End = Annotated[
    str,
    typer.Argument(
        metavar="END",
        help="Last UTC day (YYYY-MM-DD or YYYYMMDD), inclusive: the whole day; "
        "or a timestamp, an exclusive bound.",
    ),
]
Symbols = Annotated[
    str,
    typer.Argument(
        metavar="SYMBOLS",
        help="A symbol as stored in the bars table (GLBX.MDP3:NQ), or a comma-separated list of "
        "symbols and shell-style patterns ('GLBX.MDP3:*', '*:NQ*').",
    ),
]
StrengthArg = Annotated[
    str | None,
    typer.Argument(metavar="STRENGTHS", help="Swing strength k, or a list (3,5,8), as --strength."),
]
AnchorArg = Annotated[str | None, typer.Argument(metavar="ANCHOR", help="Load bars from here, as --anchor.")]
SymbolPattern = Annotated[
    str | None,
    typer.Argument(
        metavar="PATTERN",
        help="Only these symbols: a symbol, a shell-style pattern ('GLBX.MDP3:*') or a comma-separated "
        "list of them." + _default("every symbol"),
        show_default=False,
    ),
]

# ------------------------------------------------------------------------ where the data is

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="PostgreSQL URL (postgresql://user:pass@host:port/db)."
        + _default("$TRIANGLES_DATABASE_URL, else $DATABASE_URL, else the embedded server"),
    ),
]
BarsTable = Annotated[str, typer.Option("--bars-table", help="Bars table (schema.table allowed).")]
EventsTable = Annotated[str, typer.Option("--events-table", help="Events table (schema.table allowed).")]
Columns = Annotated[
    str | None,
    typer.Option(
        "--columns",
        help="Bar column names that differ from symbol, ts, open, high, low, close, volume, "
        "as logical=actual pairs, e.g. ts=time,open=o.",
    ),
]
TsConvention = Annotated[
    str,
    typer.Option(
        "--ts-convention", help="What ts is: open = the bar's open time; close = its close time (legacy)."
    ),
]
BarInterval = Annotated[str, typer.Option("--bar-interval", help="Bar length: 1m, 5m, 1h, 1d …")]

# ------------------------------------------------------------------------ what to detect

_strength = typer.Option(
    "--strength",
    "-k",
    help="Swing strength k: bars on each side of a pivot." + _default(DEFAULT_STRENGTH),
    show_default=False,
)
Strength = Annotated[int, _strength]
# backfill: None when not given, so that it can be told apart from the STRENGTHS argument; a list
# (3,5,8) detects every strength from one read of the bars
OptionalStrength = Annotated[
    str | None,
    typer.Option(
        "--strength",
        "-k",
        help="Swing strength k (bars on each side of a pivot), or a list such as 3,5,8."
        + _default(DEFAULT_STRENGTH),
        show_default=False,
    ),
]
Anchor = Annotated[
    str | None,
    typer.Option(
        "--anchor", help="Load bars from this day or time." + _default(f"START - {DEFAULT_ANCHOR_DAYS} days")
    ),
]

# ------------------------------------------------------------------------ hygiene

Hygiene = Annotated[
    str | None,
    typer.Option(
        "--hygiene",
        help="basic (rules 1-2) or full (rules 1-5)." + _default("basic for open, full for close"),
    ),
]
Config = Annotated[
    Path | None,
    typer.Option("--config", help="TOML file of per-instrument thresholds, keyed by symbol or root."),
]


def _threshold(flag: str, rule: str) -> Any:
    return typer.Option(flag, help=rule + _default("the instrument's profile"))


MinPrice = Annotated[
    float | None, _threshold("--min-price", "Rule 2: bars priced below this are bad (NQ: 1000).")
]
Discontinuity = Annotated[
    float | None, _threshold("--discontinuity", "Rule 3: max distance of any price from ref (NQ: 500).")
]
SmallRange = Annotated[
    float | None, _threshold("--small-range", "Rule 4: a bar with high - low <= this … (NQ: 5).")
]
BigGap = Annotated[
    float | None, _threshold("--big-gap", "Rule 4: … whose open is more than this from ref (NQ: 150).")
]
FlatGap = Annotated[
    float | None, _threshold("--flat-gap", "Rule 5: a flat bar this far from ref is bad (NQ: 50).")
]
ReferenceWindow = Annotated[
    int | None,
    _threshold("--reference-window", "Rules 3-5: ref = median close of this many earlier bars (NQ: 7)."),
]

# ------------------------------------------------------------------------ writing and faults

Mode = Annotated[str, typer.Option("--mode", help="replace: rewrite the range; append: add new keys only.")]
Purge = Annotated[
    bool,
    typer.Option(
        "--purge", envvar="PURGE", help="First delete every event of the symbol and strength in the range."
    ),
]
ChunkEvents = Annotated[int, typer.Option("--chunk-events", help="Events per chunk (one transaction each).")]
MaxRetries = Annotated[
    int,
    typer.Option(
        "--max-retries",
        envvar="TRIANGLES_MAX_RETRIES",
        help="Reconnect attempts per read or chunk when the database is unreachable (0: give up at once).",
    ),
]
Backoff = Annotated[
    float, typer.Option("--backoff", help="First retry delay in seconds (doubles each time).")
]
Resume = Annotated[
    bool,
    typer.Option(
        "--resume/--restart", help="Skip the chunks an unfinished identical run committed, or start over."
    ),
]
Reader = Annotated[
    str, typer.Option("--reader", help="How bars are read: connectorx, or adbc (binary COPY, faster).")
]
SliceDays = Annotated[
    int, typer.Option("--slice-days", help="Days of bars per read (memory is bounded by a slice).")
]

# ------------------------------------------------------------------------ output

Json = Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no summary.")]
Export = Annotated[
    Path | None,
    typer.Option("--export", metavar="DIR", help="Also write the events as Parquet under DIR."),
]
ExportOut = Annotated[Path, typer.Option("--out", help="Output folder (hive partitions symbol=…/year=…/).")]
ChartOut = Annotated[Path, typer.Option("--out", help="PNG file to write.")]
DemoOut = Annotated[Path, typer.Option("--out", help="Folder for the Parquet export and the chart.")]
Version = Annotated[
    bool,
    typer.Option(
        "--version", "-V", help="Show the version and exit.", callback=_print_version, is_eager=True
    ),
]

# ------------------------------------------------------------------------ how they show in --help

_REQUIRED_ARGUMENT = re.compile(r"\{([^}]*)\}")


def _flags_without_metavar(params: list[Any]) -> list[Any]:
    for param in params:
        if getattr(param, "is_flag", False):  # a flag takes no value: no "<bool>" after it
            param.metavar = ""
    return params


class Command(typer.core.TyperCommand):
    """Usage reads ``SYMBOL START END [STRENGTH]`` (not ``{symbol}``); flags show no ``<bool>``."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = super().collect_usage_pieces(ctx)
        return [_REQUIRED_ARGUMENT.sub(lambda m: m.group(1).upper(), piece) for piece in pieces]

    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_without_metavar(super().get_params(ctx))


class Group(typer.core.TyperGroup):
    """A command group whose flags (``--help``, ``--version``) show no ``<bool>``.

    Without a sub-command it prints its help and exits 0, as ``--help`` does (click would exit 2
    with an empty error message).
    """

    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_without_metavar(super().get_params(ctx))

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if not args and self.no_args_is_help and not ctx.resilient_parsing:
            text = ctx.get_help()  # Rich help prints itself and returns ""
            if text:
                typer.echo(text)
            ctx.exit(0)
        return super().parse_args(ctx, args)


class App(typer.Typer):
    """A Typer app whose groups and commands use :class:`Group` and :class:`Command`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cls=Group, **kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", Command)
        return super().command(*args, **kwargs)


# ------------------------------------------------------------------------ many tasks, engines, locks

Jobs = Annotated[
    int | None,
    typer.Option(
        "--jobs",
        "-j",
        help="Worker processes of the local engine; 1 runs in this process."
        + _default("CPU cores, at most the tasks"),
        show_default=False,
    ),
]
Engine = Annotated[
    str,
    typer.Option(
        "--engine",
        help="Where tasks run: local (worker processes) or ray (a Ray cluster)." + _default("local"),
        show_default=False,
    ),
]
RayAddress = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        envvar="RAY_ADDRESS",
        help="Ray cluster to use (host:port or ray://…)."
        + _default("$RAY_ADDRESS, else a local Ray for the run"),
        show_default=False,
    ),
]
TaskDays = Annotated[
    int | None,
    typer.Option(
        "--task-days", help="Split each symbol's range into tasks of this many days.", show_default=False
    ),
]
MaxTaskRetries = Annotated[
    int,
    typer.Option(
        "--max-task-retries",
        help="Ray reruns of a task whose worker or node died." + _default(DEFAULT_MAX_TASK_RETRIES),
        show_default=False,
    ),
]
Wait = Annotated[
    float | None,
    typer.Option(  # a bare --wait (no SECONDS) is turned into --wait=inf by cli.main (optional_values)
        "--wait",
        metavar="[SECONDS]",
        help="If another command holds a key's lock, wait for it (forever without SECONDS) instead of exit 4.",
        show_default=False,
    ),
]


# Options whose value may be left out (Typer has no optional values): the value they then take.
OPTIONAL_VALUES = {"--wait": "inf"}


def optional_values(argv: list[str]) -> list[str]:
    """``--wait`` without SECONDS becomes ``--wait=inf`` (wait forever), before Typer parses.

    >>> optional_values(["backfill", "NQ", "--wait", "--json"])
    ['backfill', 'NQ', '--wait=inf', '--json']
    >>> optional_values(["backfill", "NQ", "--wait", "30"])
    ['backfill', 'NQ', '--wait', '30']
    """
    out = []
    for i, arg in enumerate(argv):
        if arg in OPTIONAL_VALUES and "--" not in argv[:i]:
            following = argv[i + 1] if i + 1 < len(argv) else None
            if following is None or not re.fullmatch(r"\d+(\.\d*)?|\.\d+|inf", following):
                out.append(f"{arg}={OPTIONAL_VALUES[arg]}")
                continue
        out.append(arg)
    return out


# ------------------------------------------------------------------------ bars load (files, series)

DEFAULT_ADJUST = "none"

BarFiles = Annotated[
    list[str],
    typer.Argument(
        metavar="FILE",
        help="CSV, Parquet or Databento DBN (.dbn, .dbn.zst) files of bars; glob patterns "
        "(quoted or not) are expanded.",
        show_default=False,
    ),
]
LoadSeriesSymbol = Annotated[
    str | None,
    typer.Option(
        "--symbol",
        help="Symbol for every row of a CSV/Parquet file, or for the one series of a DBN file.",
        show_default=False,
    ),
]
Definitions = Annotated[
    list[str] | None,
    typer.Option(
        "--definitions",
        metavar="FILE",
        help="DBN instrument definitions (schema 'definition') for parent-symbology files such as "
        "NQ.FUT; repeat it or use a glob for several.",
        show_default=False,
    ),
]
Continuous = Annotated[
    str | None,
    typer.Option(
        "--continuous",
        metavar="ROOT",
        help="Load the front-month series DATASET:ROOT of a parent file (with --definitions) "
        "instead of its contracts and spreads; its rolls go to bars_rolls.",
        show_default=False,
    ),
]
Adjust = Annotated[
    str,
    typer.Option(
        "--adjust",
        help="With --continuous: none (traded prices) or difference (back-adjusted at each roll; "
        "the series is replaced whole and its version bumped).",
    ),
]


# ------------------------------------------------------------------------ update (keeping current)

# Defaults of UpdateSettings (triangles_polars.update, not imported here: it loads Polars).
DEFAULT_LOOKBACK = "0"
DEFAULT_POLL_S = 5.0
DEFAULT_HEARTBEAT_S = 60.0

Until = Annotated[
    str | None,
    typer.Option(
        "--until",
        metavar="TS",
        help="Write up to and including this time (a UTC day: that whole day)."
        + _default("the newest bar's close"),
        show_default=False,
    ),
]
Lookback = Annotated[
    str,
    typer.Option(
        "--lookback",
        metavar="DURATION",
        help="First rewrite the events of the last DURATION of coverage (30m, 2h, 1d), for bars "
        "that arrived late or were corrected.",
    ),
]
Follow = Annotated[
    bool,
    typer.Option("--follow", help="Keep updating as bars arrive (a service: SIGTERM stops it, exit 0)."),
]
Poll = Annotated[
    float, typer.Option("--poll", metavar="SECONDS", help="With --follow: how often to look for new bars.")
]
Notify = Annotated[
    str | None,
    typer.Option(
        "--notify",
        metavar="CHANNEL",
        help="With --follow: also wake at once on PostgreSQL NOTIFY CHANNEL (see the README's trigger).",
        show_default=False,
    ),
]
Heartbeat = Annotated[
    float,
    typer.Option(
        "--heartbeat", metavar="SECONDS", hidden=True, help="With --follow: heartbeat after this quiet."
    ),
]


# ------------------------------------------------------------------------ options backfill and update share

CommandFn = TypeVar("CommandFn", bound=Callable[..., Any])


def run_options(  # declares options only: with_options adds its parameters to a command
    strength: OptionalStrength = None,
    database_url: DatabaseUrl = None,
    bars_table: BarsTable = DEFAULT_BARS_TABLE,
    events_table: EventsTable = DEFAULT_EVENTS_TABLE,
    columns: Columns = None,
    ts_convention: TsConvention = DEFAULT_TS_CONVENTION,
    bar_interval: BarInterval = DEFAULT_BAR_INTERVAL,
    hygiene: Hygiene = None,
    config: Config = None,
    min_price: MinPrice = None,
    discontinuity: Discontinuity = None,
    small_range: SmallRange = None,
    big_gap: BigGap = None,
    flat_gap: FlatGap = None,
    reference_window: ReferenceWindow = None,
    mode: Mode = DEFAULT_MODE,
    chunk_events: ChunkEvents = DEFAULT_CHUNK_EVENTS,
    max_retries: MaxRetries = DEFAULT_MAX_RETRIES,
    backoff_s: Backoff = DEFAULT_BACKOFF_S,
    reader: Reader = DEFAULT_READER,
    slice_days: SliceDays = DEFAULT_SLICE_DAYS,
    jobs: Jobs = None,
    engine: Engine = "local",
    ray_address: RayAddress = None,
    max_task_retries: MaxTaskRetries = DEFAULT_MAX_TASK_RETRIES,
    wait: Wait = None,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """The options of ``backfill`` and ``update``, named after the settings fields they set
    (``json_out`` and ``quiet`` are the command line's own)."""


def with_options(*groups: Callable[..., None]) -> Callable[[CommandFn], CommandFn]:
    """Add the parameters of option groups (functions that only declare options, like
    :func:`run_options`) to a command, after its own; the command takes them in ``**options``.

    Typer reads a command's options from its signature, so the group's parameters are declared
    once and every command that takes them shows the same help and defaults.
    """

    def add(command: CommandFn) -> CommandFn:
        own = inspect.signature(command, eval_str=True)
        params = [p for p in own.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        for group in groups:
            params += [
                p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
                for p in inspect.signature(group, eval_str=True).parameters.values()
            ]
        command.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return add
