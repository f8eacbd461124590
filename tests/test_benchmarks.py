"""The benchmark suite end to end at a tiny size (``python -m benchmarks --quick``).

Runs every contender (baseline, product, product_adbc, floor) and the 1-day CLI run against the
test server in a schema of its own, then checks that all of them wrote the same events and that the
results JSON, chart and README section hold every figure. No timing is asserted: targets are only recorded.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH_README = REPO / "benchmarks" / "README.md"

pytest.importorskip("psycopg2", reason="the benchmarks need the bench extra (psycopg2-binary)")
pytest.importorskip("matplotlib", reason="the benchmarks need the bench extra (matplotlib)")

CONTENDER_FIGURES = (
    "e2e_s",
    "stage_seconds",
    "bars",
    "events",
    "bars_per_s",
    "events_per_s",
    "us_per_bar",
    "peak_rss_mb",
    "process_wall_s",
    "import_s",
    "runs_e2e_s",
    "process_cpu_s",
    "machine_busy_core_s",
    "machine_core_s",
)
STAGES = {
    "product": {"read", "detect", "write"},
    "product_adbc": {"read", "detect", "write"},
    "baseline": {"read", "detect", "write"},
    "floor": {"read", "write"},
}
DAILY_FIGURES = (
    "command",
    "wall_s_median",
    "wall_s_min",
    "wall_s_max",
    "warmup_wall_s",
    "in_process_s_median",
    "process_overhead_s_median",
    "peak_rss_mb",
    "bars_processed",
    "triangles",
    "matches_full_history",
)
TARGET_IDS = {"e2e_vs_floor", "vs_baseline", "time_per_bar_flat", "peak_rss_growth", "daily_wall"}
# Targets per product contender: the full-history ones for both, the 1-day CLI run for the default.
TARGET_KEYS = {("daily_wall", "product")} | {
    (key, name) for key in TARGET_IDS - {"daily_wall"} for name in ("product", "product_adbc")
}


@pytest.fixture(scope="module")
def quick_run(pg, tmp_path_factory):
    """One ``--quick`` run of the whole suite; yields (results dict, output folder, README copy)."""
    tmp = tmp_path_factory.mktemp("bench")
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    readme = tmp / "README.md"
    shutil.copy(BENCH_README, readme)
    out = tmp / "out"
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks",
                "--quick",
                "--database-url",
                pg.url,
                "--schema",
                schema,
                "--out",
                str(out),
                "--readme",
                str(readme),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        pg.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(out.glob("quick-*.json"))
    assert len(files) == 1, files
    yield json.loads(files[0].read_text()), out, readme, proc.stdout


def test_every_contender_writes_identical_events(quick_run):
    result, *_ = quick_run
    assert len(result["sizes"]) == 2
    for entry in result["sizes"]:
        contenders = entry["contenders"]
        assert set(contenders) == {"product", "product_adbc", "baseline", "floor"}
        assert entry["events_identical"] is True, entry["checks"]
        assert entry["product_adbc_events_identical"] is True, entry["checks"]
        for check in ("baseline_vs_product", "floor_vs_product", "baseline_vs_product_adbc"):
            assert entry["checks"][check]["identical"] is True, check
        assert entry["checks"]["product_adbc_vs_product"]["identical"] is True
        events = {name: contenders[name]["events"] for name in contenders}
        assert len(set(events.values())) == 1 and events["product"] > 0, events
        # Everyone read every bar of the table (bars from the first day up to the last one).
        assert {contenders[name]["bars"] for name in contenders} == {entry["bars_in_table"]}
    assert result["daily"]["matches_full_history"] is True
    assert result["daily"]["triangles"] > 0


def test_results_json_has_every_figure(quick_run):
    result, *_ = quick_run
    machine = result["machine"]
    for key in ("cpu_count", "python", "versions", "postgresql", "git"):
        assert key in machine, key
    assert machine["versions"]["polars"] and machine["postgresql"]["version"]
    for entry in result["sizes"]:
        for name, figures in entry["contenders"].items():
            missing = [k for k in CONTENDER_FIGURES if figures.get(k) is None]
            assert not missing, (entry["size"], name, missing)
            assert set(figures["stage_seconds"]) >= STAGES[name], (name, figures["stage_seconds"])
            assert figures["e2e_s"] > 0 and figures["peak_rss_mb"] > 10
            # CPU over the timed job: the whole machine's busy time includes this process's.
            assert 0 <= figures["machine_busy_core_s"] <= figures["machine_core_s"], figures
            assert figures["process_cpu_s"] > 0, figures
            assert figures["process_cpu_s"] <= figures["machine_busy_core_s"] + 0.05, figures
        for ratio in (
            "product_over_floor",
            "baseline_over_product",
            "read_over_read_floor",
            "product_adbc_over_floor",
            "baseline_over_product_adbc",
            "product_adbc_read_over_read_floor",
            "product_over_product_adbc",
        ):
            assert entry["ratios"][ratio] > 0, ratio
        # The two product contenders differ only in the reader.
        assert entry["contenders"]["product"]["settings"]["reader"] == "connectorx"
        assert entry["contenders"]["product_adbc"]["settings"]["reader"] == "adbc"
    daily = result["daily"]
    missing = [k for k in DAILY_FIGURES if daily.get(k) is None]
    assert not missing, missing
    assert daily["runs"] == 2 and len(daily["all_runs"]) == 3
    assert daily["wall_s_median"] > daily["in_process_s_median"] > 0
    assert "2025-12-02 2025-12-02 5 2025-11-30T23:00:00Z" in daily["command"]
    targets = {(t["id"], t["contender"]): t for t in result["targets"]}
    assert len(targets) == len(result["targets"]) and set(targets) == TARGET_KEYS
    assert result["targets"][0]["contender"] == "product"  # the default configuration comes first
    for target in targets.values():
        assert target["measured"] is not None, target
        assert target["pass"] in (True, False), target


def test_chart_and_readme_are_written(quick_run):
    _result, out, readme, stdout = quick_run
    chart = out / "end_to_end.png"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = readme.read_text()
    original = BENCH_README.read_text()
    # The hand-written part is kept, the generated part is between the markers.
    head = original.split("<!-- results:begin")[0]
    assert text.startswith(head)
    assert "## How to run" in text and "## Targets" in text
    generated = text.split("<!-- results:begin")[1].split("<!-- results:end -->")[0]
    assert "| 14d | product |" in generated and "| 42d | baseline (field report) |" in generated
    assert "| 42d | product_adbc (--reader adbc) |" in generated
    assert "CPU-bound limit / floor" in generated
    assert "| product_adbc (--reader adbc) | full history end to end" in generated
    assert "1-day incremental run" in generated
    assert "end_to_end.png" in generated
    assert text.count("<!-- results:end -->") == 1
    # The suite prints the same tables on stdout.
    assert "| 42d | floor (COPY) |" in stdout


def test_render_regenerates_from_json(quick_run, tmp_path):
    result, out, *_ = quick_run
    from benchmarks import report

    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\nintro\n")
    json_path = next(out.glob("quick-*.json"))
    written = report.write_outputs(result, tmp_path / "render", readme, json_path=json_path)
    assert (tmp_path / "render" / "end_to_end.png").exists()
    assert readme in written
    text = readme.read_text()
    assert text.startswith("# Benchmarks\n\nintro\n") and "| 14d | floor (COPY) |" in text
    # Rendering twice replaces the section instead of appending another one.
    report.write_outputs(result, tmp_path / "render", readme, json_path=json_path)
    assert readme.read_text() == text


@pytest.mark.parametrize("protocol", ["cursor", "binary"])
def test_tune_runs_the_product_and_reports_each_run(db, nq_bars, protocol: str) -> None:
    from triangles_polars import backfill
    from triangles_polars.db import connect, table_exists

    db.load(nq_bars)
    # What the tuning workload of --years 1 asks for (START = 2025-01-01 + 7 days, END = 2025-12-31).
    expected = backfill(db.settings(start="2025-01-08", end="2025-12-31", strength=5)).triangles
    assert expected > 0
    args = ["--years", "1", "--runs", "2", "--bars-table", db.bars_table, "--schema", db.schema]
    args += ["--database-url", db.url, "--connectorx-protocol", protocol]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.tune", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["run 1", "run 2"]
    for line in lines:
        assert f"; {expected:,} events" in line and "s process CPU" in line and "busy core-s" in line
    conn = connect(db.url)
    try:
        with conn.cursor() as cur:
            assert not table_exists(cur, db.schema, "tune_events")  # its scratch table is dropped
    finally:
        conn.close()
