"""The ``triangles`` command line: a thin layer over the Python API (SPEC §6).

Errors are mapped to exit codes in one place (:func:`guard`): 0 done, 2 bad usage or input,
3 database unreachable or retries exhausted, 1 anything unexpected; 130 when interrupted.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from triangles_polars.errors import BadInput, TrianglesError

app = typer.Typer(
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
bars_app = typer.Typer(
    help="Bring bars in: load CSV or Parquet files into the bars table.", no_args_is_help=True
)
server_app = typer.Typer(help="The embedded PostgreSQL server: status, url, stop.", no_args_is_help=True)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"triangles {version('triangles-polars')}")
        raise typer.Exit()


@app.callback()
def _main_options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", help="Show the version and exit.", callback=_print_version, is_eager=True
        ),
    ] = False,
) -> None:
    """Turn years of futures OHLCV bars in PostgreSQL into triangle pattern events."""


app.add_typer(bars_app, name="bars")
app.add_typer(server_app, name="server")


def _stderr():  # created per use (and lazily: `triangles --help` stays fast)
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def _known_urls() -> list[str]:
    urls = [os.environ.get("TRIANGLES_DATABASE_URL", ""), os.environ.get("DATABASE_URL", "")]
    argv = sys.argv
    for i, arg in enumerate(argv):
        if arg == "--database-url" and i + 1 < len(argv):
            urls.append(argv[i + 1])
        elif arg.startswith("--database-url="):
            urls.append(arg.split("=", 1)[1])
    return [u for u in urls if u]


def _clean(message: str) -> str:
    from triangles_polars.db import redact

    for url in _known_urls():
        message = redact(message, url)
    return " ".join(message.split())


@contextmanager
def guard() -> Iterator[None]:
    """Map exceptions to one-line messages and SPEC exit codes (no tracebacks)."""
    try:
        yield
    except typer.Exit:
        raise
    except TrianglesError as exc:
        _stderr().print(f"[bold red]error:[/] {_escape(_clean(str(exc)))}")
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        _stderr().print(
            "[bold yellow]interrupted:[/] committed chunks are kept; run the same command again to resume"
        )
        raise typer.Exit(130) from None
    except Exception as exc:
        if os.environ.get("TRIANGLES_DEBUG"):
            raise
        _stderr().print(
            f"[bold red]unexpected error:[/] {_escape(_clean(f'{type(exc).__name__}: {exc}'))} "
            "(set TRIANGLES_DEBUG=1 for a traceback)"
        )
        raise typer.Exit(1) from None


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _emit_json(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload, default=str) + "\n")
    sys.stdout.flush()


def _parse_columns(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    out = {}
    for part in text.split(","):
        if "=" not in part:
            raise BadInput(f"bad --columns {text!r}: use logical=actual pairs, e.g. ts=time,open=o")
        logical, actual = (p.strip() for p in part.split("=", 1))
        out[logical] = actual
    return out


# ---------------------------------------------------------------------------- options

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="PostgreSQL URL (postgresql://user:pass@host:port/db). Default: $TRIANGLES_DATABASE_URL, "
        "$DATABASE_URL, else the embedded server.",
        show_default=False,
    ),
]
EventsTable = Annotated[str, typer.Option("--events-table", help="Events table (schema.table allowed).")]
BarsTable = Annotated[str, typer.Option("--bars-table", help="Bars table (schema.table allowed).")]


@app.command(
    epilog=(
        "Examples:\n\n"
        "  triangles backfill GLBX.MDP3:NQ 2025-12-02 2025-12-02 5 2025-11-30T23:00:00Z\n\n"
        "  PURGE=1 triangles backfill GLBX.MDP3:NQ 2010-06-06 2025-12-28 --json\n\n"
        "  triangles backfill NQ 2024-01-01 2024-12-31 --ts-convention close --config nq.toml"
    )
)
def backfill(
    symbol: Annotated[str, typer.Argument(help="Symbol as stored in the bars table, e.g. GLBX.MDP3:NQ.")],
    start: Annotated[str, typer.Argument(help="First UTC day (YYYY-MM-DD) or timestamp.")],
    end: Annotated[str, typer.Argument(help="Last UTC day, inclusive (a timestamp is an exclusive bound).")],
    strength_arg: Annotated[
        int | None, typer.Argument(metavar="[STRENGTH]", help="Swing strength k.", show_default=False)
    ] = None,
    anchor_arg: Annotated[
        str | None, typer.Argument(metavar="[ANCHOR]", help="Load bars from here.", show_default=False)
    ] = None,
    strength: Annotated[
        int | None,
        typer.Option(
            "--strength", "-k", help="Swing strength k (bars each side).  [default: 5]", show_default=False
        ),
    ] = None,
    anchor: Annotated[
        str | None,
        typer.Option(
            "--anchor", help="Load bars from this time.  [default: START - 7 days]", show_default=False
        ),
    ] = None,
    database_url: DatabaseUrl = None,
    bars_table: BarsTable = "bars_1m",
    events_table: EventsTable = "triangle_events",
    columns: Annotated[
        str | None,
        typer.Option("--columns", help="Bar column names, e.g. ts=time,open=o.", show_default=False),
    ] = None,
    ts_convention: Annotated[
        str,
        typer.Option(
            "--ts-convention", help="open: ts is the bar's open time; close: its close time (legacy)."
        ),
    ] = "open",
    bar_interval: Annotated[str, typer.Option("--bar-interval", help="Bar length: 1m, 5m, 1h, 1d …")] = "1m",
    hygiene: Annotated[
        str | None,
        typer.Option(
            "--hygiene",
            help="basic (rules 1-2) or full (1-5).  [default: basic for open, full for close]",
            show_default=False,
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="TOML file of per-instrument thresholds.", show_default=False),
    ] = None,
    min_price: Annotated[
        float | None,
        typer.Option(
            "--min-price", help="Rule 2: bars priced below this are bad (NQ: 1000).", show_default=False
        ),
    ] = None,
    discontinuity: Annotated[
        float | None,
        typer.Option(
            "--discontinuity",
            help="Rule 3: max distance of any price from ref (NQ: 500).",
            show_default=False,
        ),
    ] = None,
    small_range: Annotated[
        float | None,
        typer.Option(
            "--small-range", help="Rule 4: a bar with high - low <= this … (NQ: 5).", show_default=False
        ),
    ] = None,
    big_gap: Annotated[
        float | None,
        typer.Option(
            "--big-gap", help="Rule 4: … whose open is more than this from ref (NQ: 150).", show_default=False
        ),
    ] = None,
    flat_gap: Annotated[
        float | None,
        typer.Option(
            "--flat-gap", help="Rule 5: a flat bar this far from ref is bad (NQ: 50).", show_default=False
        ),
    ] = None,
    reference_window: Annotated[
        int | None,
        typer.Option(
            "--reference-window",
            help="Rules 3-5: ref = median close of this many earlier bars (default 7).",
            show_default=False,
        ),
    ] = None,
    mode: Annotated[
        str, typer.Option("--mode", help="replace: rewrite the range; append: add new keys only.")
    ] = "replace",
    purge: Annotated[
        bool, typer.Option("--purge", envvar="PURGE", help="Delete the range's events first (env PURGE=1).")
    ] = False,
    chunk_events: Annotated[
        int, typer.Option("--chunk-events", help="Events per chunk (one transaction each).")
    ] = 50_000,
    max_retries: Annotated[
        int, typer.Option("--max-retries", help="Reconnect attempts per read or chunk.")
    ] = 5,
    backoff: Annotated[
        float, typer.Option("--backoff", help="First retry delay in seconds (doubles each time).")
    ] = 0.5,
    resume: Annotated[
        bool, typer.Option("--resume/--restart", help="Skip chunks an unfinished identical run committed.")
    ] = True,
    reader: Annotated[
        str,
        typer.Option(
            "--reader", help="How bars are read: connectorx (default) or adbc (binary COPY, faster)."
        ),
    ] = "connectorx",
    slice_days: Annotated[
        int,
        typer.Option("--slice-days", help="Days of bars per connectorx read (memory is bounded by a slice)."),
    ] = 183,
    export: Annotated[
        Path | None,
        typer.Option("--export", help="Also write the events as Parquet under DIR.", show_default=False),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print exactly one JSON object on stdout.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no summary.")] = False,
) -> None:
    """Detect triangle events for SYMBOL from START to END and write them to PostgreSQL."""
    with guard():
        from triangles_polars.pipeline import backfill as run_backfill
        from triangles_polars.settings import BackfillSettings

        k = _one_of("STRENGTH", strength_arg, "--strength", strength, 5)
        anchor_value = _one_of("ANCHOR", anchor_arg, "--anchor", anchor, None)
        settings = BackfillSettings(
            symbol=symbol,
            start=start,
            end=end,
            strength=k,
            anchor=anchor_value,
            database_url=database_url,
            bars_table=bars_table,
            events_table=events_table,
            columns=_parse_columns(columns),
            ts_convention=ts_convention,  # type: ignore[arg-type]
            bar_interval=bar_interval,
            hygiene=hygiene,  # type: ignore[arg-type]
            config=config,
            min_price=min_price,
            discontinuity=discontinuity,
            small_range=small_range,
            big_gap=big_gap,
            flat_gap=flat_gap,
            reference_window=reference_window,
            mode=mode,  # type: ignore[arg-type]
            purge=purge,
            chunk_events=chunk_events,
            max_retries=max_retries,
            backoff_s=backoff,
            resume=resume,
            export_dir=export,
            reader=reader,  # type: ignore[arg-type]
            slice_days=slice_days,
        )
        from triangles_polars.progress import BarProgress

        with BarProgress(enabled=not quiet and _stderr().is_terminal) as progress:
            summary = run_backfill(settings, progress=progress)
        if json_out:
            _emit_json(summary.to_json())
        elif not quiet:
            from triangles_polars.progress import print_summary

            print_summary(summary)


def _one_of(pos_name: str, pos: Any, opt_name: str, opt: Any, default: Any) -> Any:
    if pos is not None and opt is not None and pos != opt:
        raise BadInput(f"{pos_name} given twice with different values ({pos} and {opt_name} {opt})")
    return pos if pos is not None else opt if opt is not None else default


@app.command(epilog="Example:\n\n  triangles export GLBX.MDP3:NQ 2025-01-01 2025-12-31 --out events/")
def export(
    symbol: Annotated[str, typer.Argument(help="Symbol of the events.")],
    start: Annotated[str, typer.Argument(help="First UTC day (by confirmed_at).")],
    end: Annotated[str, typer.Argument(help="Last UTC day, inclusive.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (hive partitions symbol=…/year=…/).")],
    strength: Annotated[int, typer.Option("--strength", "-k")] = 5,
    database_url: DatabaseUrl = None,
    events_table: EventsTable = "triangle_events",
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
) -> None:
    """Export events confirmed from START to END to zstd Parquet, partitioned by symbol and year."""
    with guard():
        from triangles_polars.export import export_range

        result = export_range(
            symbol, start, end, out, strength=strength, database_url=database_url, events_table=events_table
        )
        if json_out:
            _emit_json(result)
        else:
            typer.echo(
                f"exported {result['events']} events to {len(result['files'])} partition file(s) under {out}"
            )


@bars_app.command(
    "load",
    epilog=(
        "Examples:\n\n  triangles bars load nq_2025.parquet\n\n"
        "  triangles bars load es.csv --symbol GLBX.MDP3:ES --columns ts=time,volume=vol"
    ),
)
def bars_load(
    file: Annotated[Path, typer.Argument(help="CSV or Parquet file of bars.")],
    symbol: Annotated[
        str | None,
        typer.Option("--symbol", help="Symbol for files without a symbol column.", show_default=False),
    ] = None,
    bars_table: BarsTable = "bars_1m",
    columns: Annotated[
        str | None,
        typer.Option("--columns", help="File column names, e.g. ts=time,open=o.", show_default=False),
    ] = None,
    ts_convention: Annotated[
        str, typer.Option("--ts-convention", help="open or close: what the file's ts means.")
    ] = "open",
    bar_interval: Annotated[
        str, typer.Option("--bar-interval", help="Bar length for --ts-convention close.")
    ] = "1m",
    database_url: DatabaseUrl = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
) -> None:
    """Load bars from FILE into the bars table (created if missing), all or nothing."""
    with guard():
        from triangles_polars.bars import ingest_bars, read_bar_file
        from triangles_polars.db import resolve_database_url
        from triangles_polars.settings import parse_duration

        if ts_convention not in ("open", "close"):
            raise BadInput(f"unknown ts convention {ts_convention!r}: use open or close")
        frame = read_bar_file(
            file,
            symbol=symbol,
            columns=_parse_columns(columns),
            ts_convention=ts_convention,
            bar_interval=parse_duration(bar_interval),
        )
        url, _ = resolve_database_url(database_url)
        loaded = ingest_bars(url, frame, bars_table)
        if json_out:
            _emit_json(
                {
                    "bars_loaded": loaded,
                    "bars_table": bars_table,
                    "symbols": sorted(frame["symbol"].unique().to_list()),
                }
            )
        else:
            typer.echo(f"loaded {loaded:,} bars into {bars_table}")


@app.command(epilog="Example:\n\n  triangles plot GLBX.MDP3:NQ 2025-12-02 2025-12-02 --out nq.png")
def plot(
    symbol: Annotated[str, typer.Argument()],
    start: Annotated[str, typer.Argument(help="First UTC day or timestamp.")],
    end: Annotated[str, typer.Argument(help="Last UTC day (inclusive).")],
    out: Annotated[Path, typer.Option("--out", help="PNG file to write.")],
    strength: Annotated[int, typer.Option("--strength", "-k")] = 5,
    database_url: DatabaseUrl = None,
    bars_table: BarsTable = "bars_1m",
    events_table: EventsTable = "triangle_events",
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
        )
        typer.echo(f"wrote {path}")


@app.command(epilog="Example:\n\n  triangles demo\n\n  TRIANGLES_HOME=/tmp/tri triangles demo --json")
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the Parquet export and the chart.")] = Path(
        "triangles_out"
    ),
    database_url: DatabaseUrl = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """The whole job on the embedded default: seed a year of synthetic NQ bars, backfill, export, chart."""
    with guard():
        from triangles_polars.demo import run_demo
        from triangles_polars.progress import BarProgress

        with BarProgress(enabled=not quiet and _stderr().is_terminal) as progress:
            result = run_demo(
                out,
                database_url=database_url,
                progress=progress,
                say=None if (quiet or json_out) else typer.echo,
            )
        if json_out:
            _emit_json(result)


@server_app.command("status")
def server_status() -> None:
    """Show whether the embedded server runs and where its data is."""
    with guard():
        from triangles_polars.embedded import server_status as status

        _emit_json(status())


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


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("RUST_LOG", "off")  # connectorx's pool logs connect errors itself
    if not os.environ.get("TRIANGLES_DEBUG"):
        os.environ["RUST_BACKTRACE"] = "0"  # no Rust backtraces for users either
    try:
        result = app(standalone_mode=False)
    except typer.Abort:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except Exception as exc:
        # Usage errors (click's UsageError, bundled or not): one line and their exit code (2).
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            sys.stderr.write(f"error: {_clean(exc.format_message())} (see --help)\n")
            sys.exit(exc.exit_code)
        raise
    except KeyboardInterrupt:  # outside a command (e.g. during imports)
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()
