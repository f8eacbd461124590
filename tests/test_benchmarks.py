"""The benchmark suite end to end at a tiny size (``python -m benchmarks --quick``).

Runs every contender (baseline, product, product_adbc, floor) and the 1-day CLI run against the
test server in a schema of its own, then checks that all of them wrote the same events and that the
results JSON, chart and README section hold every figure. No timing is asserted: targets are only recorded.
Also: the baseline's row-by-row loop against the test oracle on bars with bad ones, and the README's
recorded results rendered again from their results file.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.reference import reference_events

REPO = Path(__file__).resolve().parent.parent
BENCH_README = REPO / "benchmarks" / "README.md"

pytest.importorskip("psycopg2", reason="the benchmarks need the bench extra (psycopg2-binary)")
pytest.importorskip("matplotlib", reason="the benchmarks need the bench extra (matplotlib)")

from benchmarks import report  # noqa: E402  (after the skips: it needs the bench extra)
from benchmarks.baseline import clean_bars, swing_pivots, triangle_events  # noqa: E402
from benchmarks.common import EVENT_COLUMNS  # noqa: E402
from benchmarks.results import FORMAT, RunResult, SuiteResult  # noqa: E402

# Figures every contender's run has (RunResult attributes), whatever the contender.
CONTENDER_FIGURES = (
    "e2e_s",
    "bars",
    "events",
    "bars_per_s",
    "events_per_s",
    "us_per_bar",
    "peak_rss_mb",
    "process_wall_s",
    "import_s",
    "cpu",
    "self_reported_peak_rss_mb",
)
# Counters each contender reports.
COUNTS = {
    "product": {"bad_bars", "chunks", "commits", "retries", "rows_inserted"},
    "product_adbc": {"bad_bars", "chunks", "commits", "retries", "rows_inserted"},
    "baseline": {"bad_bars", "batches", "commits", "retries", "rows_inserted", "purged"},
    "floor": {"read_bytes", "write_bytes"},
}
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
    "matches_full_history",
)
TARGET_IDS = {"e2e_vs_floor", "vs_baseline", "time_per_bar_flat", "peak_rss_growth", "daily_wall"}
# Targets per product contender: the full-history ones for both, the 1-day CLI run for the default.
TARGET_KEYS = {("daily_wall", "product")} | {
    (key, name) for key in TARGET_IDS - {"daily_wall"} for name in ("product", "product_adbc")
}


@pytest.fixture(scope="module")
def quick_run(pg, tmp_path_factory):
    """One ``--quick`` run of the whole suite; yields (results, output folder, README copy, stdout)."""
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
    yield SuiteResult.from_json(json.loads(files[0].read_text())), out, readme, proc.stdout


def test_every_contender_writes_identical_events(quick_run):
    result, *_ = quick_run
    assert [size.size for size in result.sizes] == ["14d", "42d"]
    for size in result.sizes:
        assert set(size.runs) == {"product", "product_adbc", "baseline", "floor"} and not size.skipped
        assert size.events_identical is True, size.checks
        assert size.product_adbc_events_identical is True, size.checks
        checks = (
            "baseline_vs_product",
            "floor_vs_product",
            "baseline_vs_product_adbc",
            "product_adbc_vs_product",
        )
        assert set(size.checks) == set(checks)
        for name in checks:
            check = size.checks[name]
            assert check.identical is True, (name, check)
            assert len(set(check.rows.values())) == 1 and set(check.only_in.values()) == {0}, check
        events = {name: run.events for name, run in size.runs.items()}
        assert len(set(events.values())) == 1 and events["product"] > 0, events
        assert size.checks["baseline_vs_product"].rows[size.events_tables["baseline"]] == events["product"]
        # Everyone read every bar of the table (bars from the first day up to the last one).
        assert {run.bars for run in size.runs.values()} == {size.bars_in_table}
        assert size.same_events("product_adbc") == {"baseline": True, "product": True}
    assert result.daily.matches_full_history is True
    assert result.daily.typical.triangles > 0


def test_results_json_has_every_figure(quick_run):
    result, out, *_ = quick_run
    raw = json.loads(next(out.glob("quick-*.json")).read_text())
    assert raw["format"] == FORMAT
    # The file holds the derived figures too (for its readers), and loads back to the same results.
    assert SuiteResult.from_json(raw) == result and raw == result.to_json()
    for key in ("bars_per_s", "us_per_bar", "repeats", "process_cpu_s"):
        assert key in raw["sizes"][0]["contenders"]["product"], key
    machine = result.machine
    for key in ("cpu_count", "python", "versions", "postgresql", "git"):
        assert key in machine, key
    assert machine["versions"]["polars"] and machine["postgresql"]["version"]
    assert result.server["kind"] == "external" and "url" in result.server
    for size in result.sizes:
        for name, run in size.runs.items():
            assert run.contender == name
            missing = [k for k in CONTENDER_FIGURES if getattr(run, k) is None]
            assert not missing, (size.size, name, missing)
            assert set(run.stage_seconds) >= STAGES[name], (name, run.stage_seconds)
            assert set(run.counts) == COUNTS[name], (name, run.counts)
            assert run.e2e_s > 0 and run.peak_rss_mb > 10
            assert run.runs_e2e_s == [run.e2e_s] and run.runs_peak_rss_mb == [
                run.peak_rss_mb
            ]  # --quick: 1 run
            # CPU over the timed job: the whole machine's busy time includes this process's.
            cpu = run.cpu
            assert 0 <= cpu.machine_busy_core_s <= cpu.machine_core_s, cpu
            assert cpu.process_s > 0, cpu
            assert cpu.process_s <= cpu.machine_busy_core_s + 0.05, cpu
        assert size.runs["baseline"].counts["bad_bars"] == 0  # clean synthetic bars
        assert size.runs["floor"].counts["read_bytes"] > 0 and size.runs["floor"].counts["write_bytes"] > 0
        for name in ("product", "product_adbc"):
            for stage in (None, "read", "write"):
                assert size.over_floor(name, stage) > 0, (name, stage)
            assert size.baseline_over(name) > 0
            assert size.cpu_bound_limit(name, machine["cpu_count"]) > 0
        ratios = size.ratios()
        assert ratios["product_over_product_adbc"] > 0 and ratios["baseline_over_product"] > 0
        # The two product contenders differ only in the reader.
        assert size.runs["product"].settings["reader"] == "connectorx"
        assert size.runs["product_adbc"].settings["reader"] == "adbc"
    daily = result.daily
    missing = [k for k in DAILY_FIGURES if getattr(daily, k) is None]
    assert not missing, missing
    assert len(daily.timed) == 2 and len(daily.all_runs) == 3
    assert daily.wall_s_median > daily.in_process_s_median > 0
    assert daily.wall_s_min <= daily.wall_s_median <= daily.wall_s_max
    assert daily.typical.bars_processed > 0
    assert "2025-12-02 2025-12-02 5 2025-11-30T23:00:00Z" in daily.command
    targets = {(t["id"], t["contender"]): t for t in raw["targets"]}
    assert len(targets) == len(raw["targets"]) and set(targets) == TARGET_KEYS
    assert raw["targets"][0]["contender"] == "product"  # the default configuration comes first
    for target in targets.values():
        assert target["measured"] is not None, target
        assert target["pass"] in (True, False), target
    # --quick sizes are not the ones the targets name: each note says what they were evaluated on.
    assert targets[("e2e_vs_floor", "product")]["note"].startswith("evaluated on 42d (the target names 16y)")
    assert targets[("daily_wall", "product")]["note"] is None


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
    from benchmarks.suite import main

    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\nintro\n")
    json_path = next(out.glob("quick-*.json"))
    render = ["--render", str(json_path), "--out", str(tmp_path / "render"), "--readme", str(readme)]
    main(render)
    assert (tmp_path / "render" / "end_to_end.png").exists()
    assert not list((tmp_path / "render").glob("*.json"))  # the results file is read, not rewritten
    text = readme.read_text()
    assert text.startswith("# Benchmarks\n\nintro\n") and "| 14d | floor (COPY) |" in text
    assert report.markdown(result, chart=None) in text
    # Rendering twice replaces the section instead of appending another one.
    main(render)
    assert readme.read_text() == text


def _cells(markdown: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in markdown.splitlines()
        if line.startswith("|")
    ]


def test_recorded_results_render_as_the_readme_shows():
    """The README's recorded section comes from its results file: rendered again from it, every
    table holds the same cells. Rates are compared to 0.1 %: files of format 1 kept the times
    rounded after the rates were computed from them."""
    text = BENCH_README.read_text()
    section = text.split(report.README_BEGIN)[1].split(report.README_END)[0]
    source = re.search(r"Raw figures: \[([^]]+\.json)\]", section)
    assert source, "the README's results section names its results file"
    recorded = SuiteResult.from_json(json.loads((BENCH_README.parent / source.group(1)).read_text()))
    assert SuiteResult.from_json(json.loads(json.dumps(recorded.to_json()))) == recorded
    shown, rendered = _cells(section), _cells(report.markdown(recorded, chart=None))
    assert len(shown) == len(rendered) > 20
    for row_shown, row_rendered in zip(shown, rendered, strict=True):
        for a, b in zip(row_shown, row_rendered, strict=True):
            if a == b:
                continue
            x, y = (float(v.replace(",", "").strip("*")) for v in (a, b))
            assert math.isclose(x, y, rel_tol=1e-3), (row_shown, row_rendered)


@pytest.mark.parametrize("strength", [2, 5, 8])
def test_baseline_loop_finds_the_oracles_events(legacy_bars, strength: int) -> None:
    """The baseline's own hygiene and detection (plain Python over fetched rows) give the events
    of the contract, bad bars of every kind the clean-table hygiene drops included."""
    rows = list(legacy_bars.select("ts", "open", "high", "low", "close").iter_rows())
    planted = {100: (math.nan, 1), 200: (None, 2), 300: (999.0, 3), 400: (math.inf, 4)}
    for i, (value, column) in planted.items():
        rows[i] = (*rows[i][:column], value, *rows[i][column + 1 :])
    rows[500] = (rows[500][0], rows[500][1], rows[500][3] - 1, rows[500][3], rows[500][4])  # high < low
    start, end = datetime(2025, 11, 3, tzinfo=UTC), datetime(2025, 11, 24, tzinfo=UTC)
    bars = [dict(zip(("ts", "open", "high", "low", "close"), row, strict=True)) for row in rows]
    thresholds = {"min_price": 1000.0}
    expected = reference_events(bars, "NQ", strength, timedelta(minutes=1), "basic", thresholds, start, end)
    good, bad = clean_bars(rows)
    assert bad >= len(planted) + 1
    events = triangle_events(good, swing_pivots(good, strength), "NQ", strength, start, end)
    assert events == [tuple(event[c] for c in EVENT_COLUMNS) for event in expected]
    assert len(events) > 100


def test_run_result_is_the_workers_json_line():
    run = RunResult("floor", 1.5, {"read": 0.5, "write": 1.0}, 3000, 300, counts={"read_bytes": 9})
    measured = RunResult.from_json(json.loads(json.dumps(run.to_json()))).measured_from_outside(2.0, 51200)
    assert measured.peak_rss_mb == 50.0 and measured.process_wall_s == 2.0 and measured.bars_per_s == 2000
    runs = [measured, RunResult.from_json({**measured.to_json(), "e2e_s": 1.0}), measured]
    median = RunResult.median(runs)
    assert median.e2e_s == 1.5 and median.runs_e2e_s == [1.5, 1.0, 1.5] and median.counts == {"read_bytes": 9}


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


def test_compare_revisions_finds_a_revision_equal_to_itself(db, tmp_path: Path) -> None:
    """HEAD against HEAD on 9 days of the suite's bars: both extracted trees run, the tables are equal."""
    from benchmarks import compare_revisions

    args = ["--before", "HEAD", "--after", "HEAD", "--days", "9", "--database-url", db.url]
    record = compare_revisions.main([*args, "--schema", db.schema, "--out", str(tmp_path)])
    assert record["identical"] and record["before"]["commit"] == record["after"]["commit"]
    (size,) = record["sizes"]
    before, after = size["before"]["events_table"], size["after"]["events_table"]
    assert size["comparison"]["only_in"] == {before: 0, after: 0}
    events = size["comparison"]["rows"][before]
    assert events == size["comparison"]["rows"][after] == size["before"]["triangles"] > 50
    assert size["bars_in_table"] == size["before"]["bars_processed"] > 5000
    assert [p.name for p in tmp_path.iterdir()] == [f"compare-{record['when'].replace(':', '')}.json"]


def _event(i: int) -> tuple[object, ...]:
    """An events-table row of its own key (C at minute ``i``), in EVENT_COLUMNS order."""
    t = datetime(2025, 3, 3, 14, tzinfo=UTC) + timedelta(minutes=i)
    a, b = t - timedelta(minutes=4), t - timedelta(minutes=2)
    return (
        "NQ",
        5,
        t + timedelta(minutes=5),
        "HLH",
        a,
        b,
        t,
        "H",
        "L",
        "H",
        100.0,
        90.0,
        100.0 + i,
        -10.0,
        10.0 + i,
        2,
        2,
    )


def test_compare_revisions_reports_every_difference(db) -> None:
    """A missing row, a changed row and a stray row: each side's EXCEPT ALL counts and shows them."""
    from benchmarks.common import pg_execute
    from benchmarks.compare_revisions import compare_tables
    from benchmarks.suite import create_events_table

    left, right = f"{db.schema}.left_events", f"{db.schema}.right_events"
    insert = (
        f"INSERT INTO {{}} ({', '.join(EVENT_COLUMNS)}) VALUES ({', '.join(['%s'] * len(EVENT_COLUMNS))})"
    )
    changed = (*_event(1)[:12], _event(1)[12] + 0.25, *_event(1)[13:])
    for name, rows in (
        (left, [_event(i) for i in range(5)]),
        (right, [_event(0), changed, *map(_event, (3, 4, 7))]),
    ):
        create_events_table(db.url, name)
        for row in rows:
            pg_execute(db.url, insert.format(name), row)
    result = compare_tables(db.url, left, right)
    assert not result.identical
    assert result.rows == {left: 5, right: 5}  # equal counts: only EXCEPT sees the difference
    assert result.only_in == {left: 2, right: 2}
    assert sorted(r["c_price"] for r in result.examples[left]) == [101.0, 102.0]
    assert sorted(r["c_price"] for r in result.examples[right]) == [101.25, 107.0]
    assert compare_tables(db.url, left, left).identical
