"""The real ``triangles`` command in a subprocess: exit codes, one-line errors, JSON, masking."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from tests.helpers import (
    NQ,
    Db,
    Server,
    assert_one_line_error,
    run_cli,
    run_cli_in_process,
    run_on_a_terminal,
)

REQUIRED_JSON_KEYS = {
    "bars_processed",
    "bad_bars_skipped",
    "bad_bars_by_rule",
    "triangles",
    "chunks",
    "commits",
    "retries",
    "duration_s",
}


def base_args(db: Db, *extra: str) -> list[str]:
    return [
        "--database-url",
        db.url,
        "--bars-table",
        db.bars_table,
        "--events-table",
        db.events_table,
        *extra,
    ]


@pytest.fixture()
def loaded(db: Db, nq_bars: pl.DataFrame) -> Db:
    db.load(nq_bars.filter(pl.col("ts") < pl.datetime(2025, 11, 5, time_zone="UTC")))
    return db


def test_positional_form_of_the_field_report_with_json(loaded: Db) -> None:
    result = run_cli(
        "backfill", NQ, "2025-11-03", "2025-11-03", "5", "2025-11-01T23:00:00Z", *base_args(loaded, "--json")
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)  # exactly one JSON object on stdout
    assert set(summary) >= REQUIRED_JSON_KEYS
    assert result.stdout.count("\n") == 1
    stored = loaded.events()
    assert summary["triangles"] == stored.height > 0
    assert summary["anchor"].startswith("2025-11-01T23:00")
    assert summary["chunks"] == summary["commits"] == 1 and summary["retries"] == 0
    expected_bars = loaded.execute(
        f"SELECT count(*) FROM {loaded.bars_table} WHERE ts >= '2025-11-01T23:00:00Z' AND ts < '2025-11-04'"
    )[0][0]
    assert summary["bars_processed"] == expected_bars


def test_human_summary(loaded: Db) -> None:
    result = run_cli("backfill", NQ, "2025-11-03", "2025-11-03", *base_args(loaded))
    assert result.returncode == 0, result.stderr
    for label in (
        "Bars processed",
        "Bad bars skipped",
        "Triangles",
        "Chunks",
        "Commits",
        "Retries",
        "Duration",
    ):
        assert label in result.stdout
    quiet = run_cli("backfill", NQ, "2025-11-03", "2025-11-03", *base_args(loaded, "--quiet"))
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["2025-11-04", "2025-11-03"], ["before START"]),
        (["2025-13-01", "2025-12-02"], ["malformed START", "2025-13-01"]),
        (["2025-11-03", "yesterday"], ["malformed END", "yesterday"]),
        (["2025-11-03", "2025-11-03", "0"], ["strength", "between 1"]),
        (["2025-11-03", "2025-11-03", "--strength", "-2"], ["strength"]),
        (["2025-11-03", "2025-11-03", "--anchor", "2025-11-04"], ["ANCHOR", "after START"]),
        (["2025-11-03", "2025-11-03", "--hygiene", "strict"], ["unknown hygiene profile"]),
        (["2025-11-03", "2025-11-03", "--ts-convention", "middle"], ["unknown ts convention"]),
        (["2025-11-03", "2025-11-03", "--bar-interval", "fortnight"], ["bar interval"]),
        (["2025-11-03", "2025-11-03", "--mode", "upsert"], ["unknown mode"]),
        (
            ["2025-11-03", "2025-11-03", "--discontinuity", "-5", "--hygiene", "full"],
            ["discontinuity", ">= 0"],
        ),
        (["2025-11-03", "2025-11-03", "--chunk-events", "0"], ["chunk-events"]),
        (["2025-11-03", "2025-11-03", "5", "--strength", "6"], ["STRENGTH given twice"]),
    ],
)
def test_bad_arguments_exit_2_with_one_line(loaded: Db, args: list[str], needles: list[str]) -> None:
    assert_one_line_error(run_cli("backfill", NQ, *args, *base_args(loaded)), 2, *needles)
    assert loaded.execute(f"SELECT to_regclass('{loaded.events_table}') IS NULL")[0][0]  # nothing written


def test_full_hygiene_without_thresholds_names_what_is_missing(loaded: Db) -> None:
    result = run_cli(
        "backfill", "GLBX.MDP3:ES", "2025-11-03", "2025-11-03", "--hygiene", "full", *base_args(loaded)
    )
    assert_one_line_error(result, 2, "GLBX.MDP3:ES", "discontinuity", "small_range", "big_gap", "flat_gap")
    # legacy convention defaults to full hygiene: same clear error
    result = run_cli(
        "backfill", "GLBX.MDP3:ES", "2025-11-03", "2025-11-03", "--ts-convention", "close", *base_args(loaded)
    )
    assert_one_line_error(result, 2, "missing discontinuity")


def test_config_file_thresholds_and_bad_config(loaded: Db, tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(
        '[instruments."GLBX.MDP3:ES"]\nmin_price = 100\ndiscontinuity = 50\nsmall_range = 1\nbig_gap = 20\nflat_gap = 5\n'
    )
    loaded.execute(f"UPDATE {loaded.bars_table} SET symbol = 'GLBX.MDP3:ES'")
    result = run_cli(
        "backfill",
        "GLBX.MDP3:ES",
        "2025-11-03",
        "2025-11-03",
        "--hygiene",
        "full",
        "--config",
        str(good),
        "--json",
        *base_args(loaded),
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["hygiene"] == "full" and summary["triangles"] > 0
    broken = tmp_path / "broken.toml"
    broken.write_text("[instruments.ES\nmin_price = 1")
    assert_one_line_error(
        run_cli(
            "backfill",
            "GLBX.MDP3:ES",
            "2025-11-03",
            "2025-11-03",
            "--config",
            str(broken),
            *base_args(loaded),
        ),
        2,
        "not valid TOML",
    )
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[instruments.ES]\nmin_prise = 1\n")
    assert_one_line_error(
        run_cli(
            "backfill",
            "GLBX.MDP3:ES",
            "2025-11-03",
            "2025-11-03",
            "--config",
            str(unknown),
            *base_args(loaded),
        ),
        2,
        "min_prise",
    )


def test_missing_bars_table_and_columns(db: Db) -> None:
    assert_one_line_error(
        run_cli("backfill", NQ, "2025-11-03", "2025-11-03", *base_args(db)), 2, "bars table", "does not exist"
    )
    db.execute(f"CREATE TABLE {db.bars_table} (symbol text, ts timestamptz, open float8, high float8)")
    assert_one_line_error(
        run_cli("backfill", NQ, "2025-11-03", "2025-11-03", *base_args(db)), 2, "lacks column", "low", "close"
    )


def test_no_bars_for_symbol_or_range(loaded: Db) -> None:
    assert_one_line_error(
        run_cli("backfill", "NOPE", "2025-11-03", "2025-11-03", *base_args(loaded)),
        2,
        "no bars for symbol",
        f"symbols with bars: {NQ} (2025-10-20 → 2025-11-04)",  # what exists, with its days
    )
    # A known symbol whose window holds no bars (a holiday) is not a failure: exit 0 with a warning,
    # so that a daily cron job does not fail on a holiday.
    quiet = run_cli("backfill", NQ, "2030-01-01", "2030-01-02", "--json", *base_args(loaded))
    assert quiet.returncode == 0, quiet.stderr
    assert "warning" in quiet.stderr and "no bars between" in quiet.stderr
    assert json.loads(quiet.stdout)["triangles"] == 0


def test_unreachable_database_exit_3_and_password_never_shown(tmp_path: Path) -> None:
    url = "postgresql://trader:s3cr3t-pw@127.0.0.1:1/market"
    result = run_cli(
        "backfill",
        NQ,
        "2025-11-03",
        "2025-11-03",
        "--database-url",
        url,
        "--max-retries",
        "1",
        "--backoff",
        "0.01",
    )
    assert_one_line_error(result, 3, "unreachable")
    assert "s3cr3t-pw" not in result.stderr + result.stdout
    env_result = run_cli_in_process(  # the console script itself is run just above
        "backfill", NQ, "2025-11-03", "2025-11-03", "--max-retries", "0", env={"TRIANGLES_DATABASE_URL": url}
    )
    assert_one_line_error(env_result, 3, "unreachable")
    assert "s3cr3t-pw" not in env_result.stderr


def test_password_masked_in_json_summary(loaded: Db) -> None:
    # The embedded server trusts local connections, so any password connects; it must not be echoed.
    url = loaded.url.replace("postgres@", "postgres:pa55word-xyz@")
    result = run_cli(
        "backfill", NQ, "2025-11-03", "2025-11-03", "--json", "--database-url", url,
        "--bars-table", loaded.bars_table, "--events-table", loaded.events_table,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "pa55word-xyz" not in result.stdout + result.stderr
    assert ":***@" in json.loads(result.stdout)["database"]
    bad = run_cli("backfill", NQ, "2025-11-03", "2025-11-03", "--database-url", url, "--bars-table", "nope")
    assert_one_line_error(bad, 2, "does not exist")
    assert "pa55word-xyz" not in bad.stderr


def test_help_has_examples() -> None:
    result = run_cli_in_process("backfill", "--help")
    assert result.returncode == 0
    assert "triangles backfill GLBX.MDP3:NQ 2025-12-02 2025-12-02 5" in result.stdout
    assert "--chunk-events" in result.stdout and "PURGE" in result.stdout


def test_version_is_the_installed_distribution_version() -> None:
    from importlib.metadata import version

    import triangles_polars

    for result in (run_cli("--version"), run_cli_in_process("-V")):
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"triangles {version('triangles-polars')}\n"
    assert version("triangles-polars") == triangles_polars.__version__


# ---------------------------------------------------------------------------- groups without a sub-command


@pytest.mark.parametrize(
    "group", [[], ["bars"], ["events"], ["server"]], ids=["triangles", "bars", "events", "server"]
)
def test_a_group_without_its_sub_command_prints_its_help_and_exits_0(group: list[str]) -> None:
    result = run_cli_in_process(*group)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no "error:  (see --help)" with an empty message
    assert f"Usage: {' '.join(['triangles', *group])} [OPTIONS] COMMAND" in result.stdout
    assert "Commands" in result.stdout


def test_a_group_without_its_sub_command_in_the_real_console_script() -> None:
    result = run_cli("server")
    assert (result.returncode, result.stderr) == (0, "")
    assert "Usage: triangles server [OPTIONS] COMMAND" in result.stdout and "status" in result.stdout


# ---------------------------------------------------------------------------- compact dates


@pytest.mark.parametrize(
    ("start", "end", "first", "end_exclusive"),
    [
        ("20251103", "20251103", "2025-11-03T00:00:00+00:00", "2025-11-04T00:00:00+00:00"),
        ("20251103", "2025-11-04", "2025-11-03T00:00:00+00:00", "2025-11-05T00:00:00+00:00"),
        ("20251103", "2025-11-03T12:00:00Z", "2025-11-03T00:00:00+00:00", "2025-11-03T12:00:00+00:00"),
    ],
)
def test_compact_dates_are_whole_days(start: str, end: str, first: str, end_exclusive: str) -> None:
    from triangles_polars.settings import TimeRange, Window

    window = Window.parse(start, end)
    assert (window.start.isoformat(), window.end_exclusive.isoformat()) == (first, end_exclusive)
    assert TimeRange.parse(start, end, "20251027").anchor.isoformat() == "2025-10-27T00:00:00+00:00"


@pytest.mark.parametrize(
    ("value", "needles"),
    [("20251332", ["not a real date"]), ("2025-1103", ["YYYYMMDD"]), ("202511030", ["YYYYMMDD"])],
)
def test_malformed_compact_dates_name_the_accepted_forms(value: str, needles: list[str]) -> None:
    result = run_cli_in_process(
        "backfill", NQ, "2025-11-03", value, "--database-url", "postgresql://u@127.0.0.1:1/db"
    )
    assert_one_line_error(result, 2, "malformed END", value, *needles)


def test_compact_dates_backfill_the_same_day_as_iso_dates(loaded: Db) -> None:
    compact = run_cli_in_process("backfill", NQ, "20251103", "20251103", "--json", *base_args(loaded))
    assert compact.returncode == 0, compact.stderr
    iso = run_cli_in_process(
        "backfill", NQ, "2025-11-03", "2025-11-03", "--json", "--restart", *base_args(loaded)
    )
    assert iso.returncode == 0, iso.stderr
    compact_summary, iso_summary = json.loads(compact.stdout), json.loads(iso.stdout)
    assert compact_summary["triangles"] == iso_summary["triangles"] > 0
    assert compact_summary["bars_processed"] == iso_summary["bars_processed"]
    assert compact_summary["end_exclusive"] == iso_summary["end_exclusive"] == "2025-11-04T00:00:00+00:00"
    # the update's --until takes the same forms: the whole day
    from triangles_polars.update import UpdateSettings

    compact_until = UpdateSettings(symbol=NQ, until="20251103").until_exclusive
    assert compact_until == UpdateSettings(symbol=NQ, until="2025-11-03").until_exclusive
    assert compact_until is not None and compact_until.isoformat() == "2025-11-04T00:00:00+00:00"


# ---------------------------------------------------------------------------- --help


def every_command() -> list[tuple[list[str], object]]:
    """``(["bars", "load"], click command)`` for every command and group of the app."""
    import typer

    from triangles_polars.cli import app

    found: list[tuple[list[str], object]] = []

    def walk(command: object, path: list[str]) -> None:
        found.append((path, command))
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


COMMANDS_WITH_EXAMPLES = {"backfill", "update", "export", "plot", "bars load"}


@pytest.mark.parametrize(
    ("path", "command"), every_command(), ids=lambda v: " ".join(v) if isinstance(v, list) else ""
)
def test_help_reads_right(path: list[str], command: object) -> None:
    result = run_cli_in_process(*path, "--help", env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "<bool>" not in text  # a flag takes no value
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert "{" not in usage and "[[" not in usage, usage
    for param in getattr(command, "params", []):
        if getattr(param, "hidden", False):
            continue
        assert (getattr(param, "help", None) or "").strip(), (
            f"{' '.join(path)}: {param.name} has no description"
        )
        if param.param_type_name == "argument":
            assert (param.metavar or "").isupper(), usage  # SYMBOL START END, as the usage line
            assert param.metavar in usage, usage
        if param.name == "end":  # a day is inclusive, a timestamp exclusive: both said
            assert "inclusive" in param.help and "exclusive" in param.help, param.help
    if " ".join(path) in COMMANDS_WITH_EXAMPLES:
        assert f"triangles {' '.join(path)} " in text.split("Example", 1)[-1], "no examples"


def test_backfill_help_shows_the_derived_defaults() -> None:
    text = " ".join(run_cli_in_process("backfill", "--help", env={"COLUMNS": "250"}).stdout.split())
    assert "SYMBOLS START END [STRENGTHS] [ANCHOR]" in text
    for default in ("[default: 5]", "[default: START - 7 days]", "[default: basic for open, full for close]"):
        assert default in text, default
    assert "[default: the instrument's profile]" in text  # the hygiene thresholds
    assert "TRIANGLES_MAX_RETRIES" in text


# ---------------------------------------------------------------------------- retries on a terminal


def screen_on_a_terminal(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """:func:`tests.helpers.run_on_a_terminal` within 60 s, its screen with the ANSI codes removed."""
    import re

    code, screen = run_on_a_terminal(*args, env=env, columns=200, timeout=60)
    return code, re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)


UNREACHABLE = "postgresql://trader:Unreach4ble-pw@127.0.0.1:1/market"  # nothing listens on port 1


def test_retries_are_told_on_a_terminal_with_how_to_wait_less() -> None:
    code, screen = screen_on_a_terminal(
        "backfill", NQ, "2025-11-03", "2025-11-03", "--database-url", UNREACHABLE,
        "--max-retries", "2", "--backoff", "0.2",
    )  # fmt: skip
    assert code == 3, screen
    assert "connection refused; retry 1/2 in 0.2 s" in screen
    assert "connection refused; retry 2/2 in 0.4 s" in screen  # the backoff doubles
    assert screen.count("--max-retries 0 or TRIANGLES_MAX_RETRIES=0") == 1  # once, not per retry
    assert "database unreachable after 2 retries" in screen
    assert "Unreach4ble-pw" not in screen


def test_retries_are_not_told_with_quiet_and_the_env_var_shortens_them() -> None:
    code, screen = screen_on_a_terminal(
        "export", NQ, "2025-11-03", "2025-11-03", "--out", "/nonexistent", "--database-url", UNREACHABLE,
        env={"TRIANGLES_MAX_RETRIES": "1"},
    )  # fmt: skip
    # export has no --max-retries: the hint names the variable only
    assert code == 3, screen
    assert "retry 1/1 in 0.5 s" in screen and "to give up at once: TRIANGLES_MAX_RETRIES=0" in screen
    assert "--max-retries" not in screen
    quiet = screen_on_a_terminal(
        "backfill", NQ, "2025-11-03", "2025-11-03", "--database-url", UNREACHABLE, "--quiet",
        "--max-retries", "1", "--backoff", "0.05",
    )  # fmt: skip
    assert quiet[0] == 3 and "retry" not in quiet[1].replace("after 1 retry", ""), quiet[1]
    # TRIANGLES_MAX_RETRIES=0 gives up at once, on a command without --max-retries too
    at_once = run_cli_in_process(
        "plot", NQ, "2025-11-03", "2025-11-03", "--out", "/nonexistent.png", "--database-url", UNREACHABLE,
        env={"TRIANGLES_MAX_RETRIES": "0"},
    )  # fmt: skip
    assert_one_line_error(at_once, 3, "unreachable after 0 retries")


def test_help_examples_on_the_demo_data_run_as_written(
    pg: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The help examples marked "the demo's" run as written on the demo's symbol, tables and dates:
    a fresh database (named only by TRIANGLES_DATABASE_URL) holding SYNTH:NQ bars in ``bars_1m``."""
    import shlex
    import uuid
    from urllib.parse import urlsplit, urlunsplit

    from triangles_polars.bars import ingest_bars
    from triangles_polars.synthetic import generate_bars

    name = f"helpex_{uuid.uuid4().hex[:10]}"
    pg.execute(f"CREATE DATABASE {name}")
    try:
        url = urlunsplit(urlsplit(pg.url)._replace(path=f"/{name}"))
        ingest_bars(url, generate_bars("2025-11-10", "2025-11-30", symbol="SYNTH:NQ", seed=2025), "bars_1m")
        examples = []
        for path in (["backfill"], ["export"], ["plot"]):  # in this order: events first
            text = run_cli_in_process(*path, "--help", env={"COLUMNS": "250"}).stdout
            examples += [line.strip() for line in text.splitlines() if "the demo's" in line]
        assert len(examples) == 3, examples
        monkeypatch.chdir(tmp_path)
        for example in examples:
            args = shlex.split(example, comments=True)
            assert args[0] == "triangles"
            result = run_cli_in_process(*args[1:], env={"TRIANGLES_DATABASE_URL": url})
            assert result.returncode == 0, (example, result.stderr)
        assert list((tmp_path / "events").rglob("*.parquet")) and (tmp_path / "nq.png").stat().st_size > 0
    finally:
        pg.execute(f"DROP DATABASE {name} WITH (FORCE)")
