"""The real ``triangles`` command in a subprocess: exit codes, one-line errors, JSON, masking."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from tests.helpers import NQ, Db, assert_one_line_error, run_cli

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
        run_cli("backfill", "NOPE", "2025-11-03", "2025-11-03", *base_args(loaded)), 2, "no bars for symbol"
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
    env_result = run_cli(
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
    result = run_cli("backfill", "--help")
    assert result.returncode == 0
    assert "triangles backfill GLBX.MDP3:NQ 2025-12-02 2025-12-02 5" in result.stdout
    assert "--chunk-events" in result.stdout and "PURGE" in result.stdout


def test_version_is_the_installed_distribution_version() -> None:
    from importlib.metadata import version

    import triangles_polars

    for flag in ("--version", "-V"):
        result = run_cli(flag)
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"triangles {version('triangles-polars')}\n"
    assert version("triangles-polars") == triangles_polars.__version__
