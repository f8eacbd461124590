"""The ``triangles`` command line: a thin layer over the Python API (``docs/contract.md#command-line``).

Each command declares its options with the shared definitions of :mod:`triangles_polars.options`
and calls one library function. Errors are mapped to exit codes in one place (:func:`guard`):
0 done, 2 bad usage or input, 3 database unreachable or retries exhausted, 4 locked, 1 anything
unexpected; 130 after SIGINT, 143 after SIGTERM (0 for ``update --follow``). Every command runs
in a thread of its own while the main thread handles the signals (:mod:`triangles_polars.signals`).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from triangles_polars.allocator import limit_malloc_arenas_unless_chosen

# First, before Polars is imported (options -> settings) and starts threads: this process runs
# tasks, and glibc's per-thread malloc arenas would grow it with every task (allocator's docstring).
CAPPED_MALLOC_ARENAS = limit_malloc_arenas_unless_chosen()

from triangles_polars import options as opt  # noqa: E402
from triangles_polars.errors import BadInput, TrianglesError  # noqa: E402

if TYPE_CHECKING:
    from triangles_polars.progress import BarProgress
    from triangles_polars.settings import BackfillSettings

app = opt.App(
    name="triangles",
    help=(
        "Turn years of futures OHLCV bars in PostgreSQL into triangle pattern events.\n\n"
        "Database: --database-url, else $TRIANGLES_DATABASE_URL, else $DATABASE_URL, else an "
        "embedded PostgreSQL started from the pip wheel in $TRIANGLES_HOME (or your data folder)."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
bars_app = opt.App(
    help="Bars: load CSV, Parquet or Databento DBN files into the bars table; list what it holds.",
    no_args_is_help=True,
)
server_app = opt.App(help="The embedded PostgreSQL server: status, url, stop.", no_args_is_help=True)
events_app = opt.App(
    help="What the events table holds: list its symbols and strengths.", no_args_is_help=True
)


@app.callback()
def _main_options(version: opt.Version = False) -> None:
    """Turn years of futures OHLCV bars in PostgreSQL into triangle pattern events."""


app.add_typer(bars_app, name="bars")
app.add_typer(events_app, name="events")
app.add_typer(server_app, name="server")


def _stderr():  # created per use (and lazily: `triangles --help` stays fast)
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


# The command line being run (set by :func:`run`): its URLs' passwords are masked in every message.
_ARGV: list[str] = []


def _known_urls() -> list[str]:
    urls = [os.environ.get("TRIANGLES_DATABASE_URL", ""), os.environ.get("DATABASE_URL", "")]
    argv = _ARGV or sys.argv
    for i, arg in enumerate(argv):
        if arg == "--database-url" and i + 1 < len(argv):
            urls.append(argv[i + 1])
        elif arg.startswith("--database-url="):
            urls.append(arg.split("=", 1)[1])
    return [u for u in urls if u]


def _clean(message: str) -> str:
    """``message`` on one line, password-free: every password-looking part masked, and every
    password the command line or the environment holds (even in a misplaced argument)."""
    from triangles_polars.masking import mask_text, url_passwords

    candidates = [*_known_urls(), *(_ARGV or sys.argv[1:])]
    secrets = tuple(dict.fromkeys(p for url in candidates for p in url_passwords(url)))
    return " ".join(mask_text(message, secrets).split())


@contextmanager
def guard(quiet: bool = False, *, retries_option: bool = False) -> Iterator[None]:
    """Map exceptions to one-line messages and the exit codes of docs/contract.md#exit-codes (no tracebacks).

    On a terminal (and without ``--quiet``) each connection retry is told on stderr as it starts,
    with how to give up sooner (``retries_option``: the command has ``--max-retries``).
    """
    try:
        with _retries_told(quiet, retries_option):
            yield
    except typer.Exit:
        raise
    except TrianglesError as exc:
        _fail(exc)
    except OSError as exc:
        if exc.filename is None:
            _unexpected(exc)
        # A path the user gave that cannot be read or written (--out /proc/x, a read-only folder).
        path = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
        _fail(BadInput(f"cannot use {str(path)!r}: {exc.strerror or type(exc).__name__}"))
    except KeyboardInterrupt:  # SIGINT or SIGTERM (see triangles_polars.signals)
        from triangles_polars import signals

        _stderr().print(f"[bold yellow]{_signal_word()}:[/] {_escape(signals.stopping_message())}")
        raise typer.Exit(signals.exit_code()) from None
    except Exception as exc:
        if _is_driver_error(exc):  # a database error that escaped db.translated: classified the same way
            from triangles_polars.db import classify

            _fail(classify(exc, "database", ([None, *_known_urls()])[-1]))
        _unexpected(exc)


def _fail(exc: TrianglesError) -> NoReturn:
    _stderr().print(f"[bold red]error:[/] {_escape(_clean(str(exc)))}")
    raise typer.Exit(exc.exit_code) from None


def _unexpected(exc: Exception) -> NoReturn:
    """A bug: one line naming it, exit 1 (``TRIANGLES_DEBUG=1`` shows the traceback instead)."""
    if os.environ.get("TRIANGLES_DEBUG"):
        raise exc
    _stderr().print(
        f"[bold red]unexpected error:[/] {_escape(_clean(f'{type(exc).__name__}: {exc}'))} "
        "(set TRIANGLES_DEBUG=1 for a traceback)"
    )
    raise typer.Exit(1) from None


def _is_driver_error(exc: BaseException) -> bool:
    module = type(exc).__module__ or ""
    return module.startswith(("adbc_driver", "connectorx")) or type(exc).__name__ == "PanicException"


@contextmanager
def _retries_told(quiet: bool, retries_option: bool) -> Iterator[None]:
    """Print each connection retry on stderr (a terminal only, not with --quiet), and once how to wait less."""
    if quiet or not _stderr().is_terminal:
        yield
        return
    from triangles_polars.db import MAX_RETRIES_ENV, RetryNotice, retries_reported_to

    shorter = f"--max-retries 0 or {MAX_RETRIES_ENV}=0" if retries_option else f"{MAX_RETRIES_ENV}=0"
    told: list[RetryNotice] = []

    def tell(notice: RetryNotice) -> None:
        _stderr().print(f"[yellow]{_escape(str(notice))}[/]")
        if not told:
            _stderr().print(f"[dim]waiting for the database; to give up at once: {shorter}[/]")
        told.append(notice)

    with retries_reported_to(tell):
        yield


def _signal_word() -> str:
    from triangles_polars import signals

    return "terminated" if signals.exit_code() in (0, 143) else "interrupted"


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _emit_json(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload, default=str) + "\n")
    sys.stdout.flush()


def _progress(quiet: bool) -> BarProgress:
    from triangles_polars.progress import BarProgress

    return BarProgress(enabled=not quiet and _stderr().is_terminal)


# ---------------------------------------------------------------------------- commands

BACKFILL_EXAMPLES = """Examples:

  triangles backfill SYNTH:NQ 20251124 20251128 3,5,8    # a week of the demo's bars (triangles demo)

  triangles backfill GLBX.MDP3:NQ 2025-12-02 2025-12-02 5 2025-11-30T23:00:00Z

  PURGE=1 triangles backfill GLBX.MDP3:NQ 2010-06-06 2025-12-28 --json

  triangles backfill NQ 2024-01-01 2024-12-31 --ts-convention close --config nq.toml"""


@app.command(epilog=BACKFILL_EXAMPLES)
@opt.with_options(opt.run_options)
def backfill(  # its own parameters, then run_options'; named after the BackfillSettings fields they set
    symbol: opt.Symbols,
    start: opt.Start,
    end: opt.End,
    strength_arg: opt.StrengthArg = None,
    anchor_arg: opt.AnchorArg = None,
    anchor: opt.Anchor = None,
    purge: opt.Purge = False,
    resume: opt.Resume = True,
    export_dir: opt.Export = None,
    task_days: opt.TaskDays = None,
    **options: Any,
) -> None:
    """Detect triangle events for SYMBOLS from START to END and write them to PostgreSQL."""
    given = dict(locals())
    with guard(options["quiet"], retries_option=True):
        from triangles_polars.pipeline import backfill as run_backfill
        from triangles_polars.progress import print_summary

        settings = _backfill_settings(given)
        with _progress(options["quiet"]) as progress:
            summary = run_backfill(settings, progress=progress)
        _report(summary, options["json_out"], options["quiet"], print_summary)


_CLI_ONLY = ("strength_arg", "anchor_arg", "json_out", "quiet", "options")


def _warn(message: str) -> None:
    """One warning line on stderr (docs/contract.md#empty-results-speak)."""
    _stderr().print(f"[bold yellow]warning:[/] {_escape(_clean(message))}")


def _report(summary: Any, json_out: bool, quiet: bool, human: Any) -> None:
    """The summary on stdout (JSON or human), warnings on stderr; exit with the run's code."""
    for warning in summary.warnings:
        _warn(warning)
    if json_out:
        _emit_json(summary.to_json())
    elif not quiet:
        human(summary)
    if summary.exit_code:
        raise typer.Exit(summary.exit_code)


def _backfill_settings(given: dict[str, Any]) -> BackfillSettings:
    """The backfill parameters as settings: the positional STRENGTH/ANCHOR merged, --columns parsed."""
    from triangles_polars.settings import BackfillSettings

    fields = _run_fields(given)
    fields["anchor"] = _one_of("ANCHOR", given["anchor_arg"], "--anchor", given["anchor"], None)
    return BackfillSettings(**fields)


def _run_fields(given: dict[str, Any]) -> dict[str, Any]:
    """A command's own parameters and its ``run_options`` as settings fields: the positional
    STRENGTHS merged with ``--strength``, ``--wait`` and ``--columns`` parsed."""
    options = given["options"]
    fields = {name: value for name, value in {**given, **options}.items() if name not in _CLI_ONLY}
    fields["strength"] = _one_of(
        "STRENGTH", given["strength_arg"], "--strength", options["strength"], opt.DEFAULT_STRENGTH
    )
    wait = options["wait"]
    fields["wait"] = 0.0 if wait is None else (None if wait == float("inf") else wait)
    fields["columns"] = opt.parse_columns(options["columns"])
    return fields


def _one_of(arg_name: str, arg: Any, option_name: str, option: Any, default: Any) -> Any:
    if arg is not None and option is not None and arg != option:
        raise BadInput(f"{arg_name} given twice with different values ({arg} and {option_name} {option})")
    return arg if arg is not None else option if option is not None else default


UPDATE_EXAMPLES = """Examples:

  triangles update GLBX.MDP3:NQ                          # up to the newest bar (a cron job)

  triangles update 'GLBX.MDP3:*' 3,5,8 --json --wait 300   # every symbol, three strengths

  triangles update GLBX.MDP3:NQ --lookback 2h            # rewrite the last 2 hours first

  triangles update GLBX.MDP3:NQ --follow --notify bars_1m  # a service: a cycle per new bar"""


@app.command(epilog=UPDATE_EXAMPLES)
@opt.with_options(opt.run_options)
def update(  # its own parameters, then run_options'; named after the UpdateSettings fields they set
    symbol: opt.Symbols,
    strength_arg: opt.StrengthArg = None,
    until: opt.Until = None,
    lookback: opt.Lookback = opt.DEFAULT_LOOKBACK,
    follow: opt.Follow = False,
    poll_s: opt.Poll = opt.DEFAULT_POLL_S,
    notify: opt.Notify = None,
    heartbeat_s: opt.Heartbeat = opt.DEFAULT_HEARTBEAT_S,
    **options: Any,
) -> None:
    """Continue the events of SYMBOLS from where they are complete up to the newest bar (or follow)."""
    given = dict(locals())
    with guard(options["quiet"], retries_option=True):
        from triangles_polars.progress import print_summary
        from triangles_polars.update import UpdateSettings
        from triangles_polars.update import update as run_update

        settings = UpdateSettings(**_run_fields(given))
        json_out, quiet = options["json_out"], options["quiet"]
        if settings.follow:
            from triangles_polars.follow import FollowLog
            from triangles_polars.follow import follow as run_follow

            with _progress(True) as progress:  # the catch-up: no bar, one line per cycle instead
                code = run_follow(settings, FollowLog(json_out, quiet), progress)
            raise typer.Exit(code)
        with _progress(quiet) as progress:
            summary = run_update(settings, progress=progress)
        _report(summary, json_out, quiet, print_summary)


@app.command(
    epilog="Examples:\n\n  triangles export SYNTH:NQ 2025-11-01 2025-11-30 --out events/   # the demo's data"
    "\n\n  triangles export GLBX.MDP3:NQ 2025-01-01 2025-12-31 -k 8 --out events/ --json"
)
def export(
    symbol: opt.Symbol,
    start: opt.Start,
    end: opt.End,
    out: opt.ExportOut,
    strength: opt.Strength = opt.DEFAULT_STRENGTH,
    database_url: opt.DatabaseUrl = None,
    events_table: opt.EventsTable = opt.DEFAULT_EVENTS_TABLE,
    json_out: opt.Json = False,
) -> None:
    """Export events confirmed from START to END to zstd Parquet, partitioned by symbol and year."""
    with guard():
        from triangles_polars.export import export_range

        result = export_range(
            symbol, start, end, out, strength=strength, database_url=database_url, events_table=events_table
        )
        for warning in result["warnings"]:
            _warn(warning)
        if json_out:
            _emit_json(result)
        else:
            typer.echo(
                f"exported {result['events']:,} events to {len(result['files']):,} partition file(s) under {out}"
            )


@bars_app.command(
    "load",
    epilog=(
        "Examples:\n\n  triangles bars load nq_2025.parquet\n\n"
        "  triangles bars load es.csv --symbol GLBX.MDP3:ES --columns ts=time,volume=vol\n\n"
        "  triangles bars load 'nq/*.dbn.zst' --definitions nq_defs.dbn --continuous NQ --adjust difference"
    ),
)
def bars_load(
    files: opt.BarFiles,
    symbol: opt.LoadSeriesSymbol = None,
    definitions: opt.Definitions = None,
    continuous: opt.Continuous = None,
    adjust: opt.Adjust = opt.DEFAULT_ADJUST,
    bars_table: opt.BarsTable = opt.DEFAULT_BARS_TABLE,
    columns: opt.Columns = None,
    ts_convention: opt.TsConvention = opt.DEFAULT_TS_CONVENTION,
    bar_interval: opt.BarInterval = opt.DEFAULT_BAR_INTERVAL,
    database_url: opt.DatabaseUrl = None,
    max_retries: opt.MaxRetries = opt.DEFAULT_MAX_RETRIES,
    json_out: opt.Json = False,
    quiet: opt.Quiet = False,
) -> None:
    """Load CSV, Parquet or DBN bar files into the bars table: streamed, idempotent, all or nothing."""
    given = {k: v for k, v in locals().items() if k not in ("json_out", "quiet")}
    with guard(quiet, retries_option=True):
        from triangles_polars.loading import TerminalLoadProgress, load_bars, print_load_summary

        given["columns"] = opt.parse_columns(columns)
        with TerminalLoadProgress(enabled=not quiet and _stderr().is_terminal) as progress:
            result = load_bars(**given, progress=progress)
        _report(result, json_out, quiet, lambda r: print_load_summary(r, typer.echo))


@bars_app.command(
    "list", epilog="Examples:\n\n  triangles bars list\n\n  triangles bars list 'SYNTH:*' --json"
)
def bars_list(
    pattern: opt.SymbolPattern = None,
    bars_table: opt.BarsTable = opt.DEFAULT_BARS_TABLE,
    columns: opt.Columns = None,
    database_url: opt.DatabaseUrl = None,
    json_out: opt.Json = False,
) -> None:
    """List the symbols of the bars table: first and last bar (UTC) and bar count."""
    with guard():
        from triangles_polars.inventory import bar_table, list_bars

        found = list_bars(
            pattern, database_url=database_url, bars_table=bars_table, columns=opt.parse_columns(columns)
        )
        if json_out:
            _emit_json({"bars_table": bars_table, "symbols": [s.to_json() for s in found]})
        else:
            _echo_lines(bar_table(found) if found else [f"no symbol of {bars_table!r} matches {pattern!r}"])


@events_app.command(
    "list", epilog="Examples:\n\n  triangles events list\n\n  triangles events list 'SYNTH:*' --json"
)
def events_list(
    pattern: opt.SymbolPattern = None,
    events_table: opt.EventsTable = opt.DEFAULT_EVENTS_TABLE,
    database_url: opt.DatabaseUrl = None,
    json_out: opt.Json = False,
) -> None:
    """List the symbols and strengths of the events table: first and last confirmed_at (UTC) and event count."""
    with guard():
        from triangles_polars.inventory import event_table, list_events

        found = list_events(pattern, database_url=database_url, events_table=events_table)
        if json_out:
            _emit_json({"events_table": events_table, "series": [s.to_json() for s in found]})
        else:
            none = f"no events in {events_table!r}" + (f" for {pattern!r}" if pattern else "")
            _echo_lines(event_table(found) if found else [none])


def _echo_lines(lines: list[str]) -> None:
    for line in lines:
        typer.echo(line)


@app.command(
    epilog="Examples:\n\n  triangles plot SYNTH:NQ 2025-11-25T14:30:00Z 2025-11-25T21:00:00Z --out nq.png"
    "   # one session of the demo's data\n\n  triangles plot GLBX.MDP3:NQ 20251202 20251202 -k 8 --out nq.png"
)
def plot(
    symbol: opt.Symbol,
    start: opt.Start,
    end: opt.End,
    out: opt.ChartOut,
    strength: opt.Strength = opt.DEFAULT_STRENGTH,
    database_url: opt.DatabaseUrl = None,
    bars_table: opt.BarsTable = opt.DEFAULT_BARS_TABLE,
    events_table: opt.EventsTable = opt.DEFAULT_EVENTS_TABLE,
) -> None:
    """Draw candlesticks of the window with swing pivots and triangles to a PNG (needs the plot extra)."""
    with guard():
        from triangles_polars.plot import plot_window

        path = plot_window(
            symbol,
            start,
            end,
            out,
            strength=strength,
            database_url=database_url,
            bars_table=bars_table,
            events_table=events_table,
            on_warning=_warn,
        )
        typer.echo(f"wrote {path}")


@app.command(epilog="Example:\n\n  triangles demo\n\n  TRIANGLES_HOME=/tmp/tri triangles demo --json")
def demo(
    out: opt.DemoOut = opt.DEFAULT_DEMO_OUT,
    database_url: opt.DatabaseUrl = None,
    json_out: opt.Json = False,
    quiet: opt.Quiet = False,
) -> None:
    """The whole job on the embedded default: seed a year of synthetic NQ bars, backfill, export, chart."""
    with guard(quiet):
        from triangles_polars.demo import run_demo

        say = None if (quiet or json_out) else typer.echo
        with _progress(quiet) as progress:
            result = run_demo(out, database_url=database_url, progress=progress, say=say)
        if json_out:
            _emit_json(result)


@server_app.command(
    "status", epilog="Examples:\n\n  triangles server status\n\n  triangles server status --json"
)
def server_status(json_out: opt.Json = False) -> None:
    """Show whether the embedded server runs, where its data is and its URL (--json for scripts)."""
    with guard():
        from triangles_polars.embedded import describe_status
        from triangles_polars.embedded import server_status as status

        current = status()
        if json_out:
            _emit_json(current)
        else:
            for line in describe_status(current):
                typer.echo(line)


@server_app.command("url")
def server_url() -> None:
    """Start the embedded server if needed and print its connection URL."""
    with guard():
        from triangles_polars.embedded import start_server

        typer.echo(start_server())


@server_app.command("stop")
def server_stop() -> None:
    """Stop the embedded server (it restarts on the next command that needs it)."""
    with guard():
        from triangles_polars.embedded import stop_server

        typer.echo("stopped" if stop_server() else "not running")


@functools.cache
def _command() -> Any:
    """The click command of ``app``, built once: typer rebuilds it from the signatures on every call."""
    return typer.main.get_command(app)


def run(argv: list[str]) -> int:
    """Run one command line as the console script does, minus signal handling; returns the exit code.

    Usage errors print one password-free line and exit 2 (tests run commands in-process through here).
    """
    global _ARGV
    _ARGV = list(argv)
    try:
        result = _command().main(args=opt.optional_values(argv), prog_name="triangles", standalone_mode=False)
    except Exception as exc:
        # Usage errors (click's UsageError, bundled or not): one line and their exit code (2);
        # click would print the usage and the raw arguments.
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            sys.stderr.write(f"error: {_clean(exc.format_message())} (see --help)\n")
            sys.stderr.flush()
            return int(exc.exit_code)
        raise
    finally:
        _ARGV = []
    return result if isinstance(result, int) else 0


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("RUST_LOG", "off")  # connectorx's pool logs connect errors itself
    if not os.environ.get("TRIANGLES_DEBUG"):
        os.environ["RUST_BACKTRACE"] = "0"  # no Rust backtraces for users either
    from triangles_polars import signals

    try:
        # The command runs in a thread of its own; this thread handles SIGINT and SIGTERM at once.
        code = signals.run_main(lambda: run(sys.argv[1:]))
    except typer.Abort:
        sys.stderr.write(f"{_signal_word()}\n")
        sys.exit(signals.exit_code())
    except KeyboardInterrupt:  # outside a command (e.g. during imports)
        sys.stderr.write(f"{_signal_word()}\n")
        sys.exit(signals.exit_code())
    if signals.stop_requested():  # stopped by a signal: no slow interpreter teardown (within 1 s)
        signals.exit_fast(code)
    signals.exit_done(code)


if __name__ == "__main__":
    main()
