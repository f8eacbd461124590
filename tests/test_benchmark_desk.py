"""The desk benchmark end to end at a tiny size (``python -m benchmarks.desk --symbols 3 --days 10``).

Every contender (``--jobs 1``, the defaults, ``--engine ray``, the per-(symbol, strength) loop, the
single-strength runs, the binary COPY floor), the Ray start-up run, the fixed-cost desk and the
smaller desk for peak RSS per worker run against the test server in schemas of their own. The test
checks that the results file holds every figure (no absolute path in it) and that every contender
wrote identical events. No timing is asserted: targets are only recorded.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytest.importorskip("psycopg2", reason="the benchmarks need the bench extra (psycopg2-binary)")
pytest.importorskip("matplotlib", reason="the benchmarks need the bench extra (matplotlib)")
# Found, not imported: Ray reads its settings when first imported, and only the benchmark's own
# processes (with their loopback environment) may import it.
if importlib.util.find_spec("ray") is None:
    pytest.skip("the desk benchmark runs --engine ray (the ray extra)", allow_module_level=True)

from benchmarks.desk import CONTENDERS, README_BEGIN, README_END, TARGETS, DeskResult, markdown

REPO = Path(__file__).resolve().parent.parent
BENCH_README = REPO / "benchmarks" / "README.md"
RUN_FIGURES = ("wall_s", "cpu", "server_cpu_s", "peak_rss_mb", "events", "events_table", "load_avg_start")
DESK_FIGURES = (
    "in_process_s",
    "worker_peak_rss_mb",
    "main_peak_rss_mb",
    "total_rss_peak_mb",
    "stage_seconds",
)


@pytest.fixture(scope="module")
def desk_run(pg, tmp_path_factory):
    """One tiny run of the desk benchmark; yields (raw JSON, output folder, README copy)."""
    tmp = tmp_path_factory.mktemp("desk")
    schema = f"desk_{uuid.uuid4().hex[:8]}"
    readme = tmp / "README.md"
    readme.write_text("# Benchmarks\n\nkept text\n")
    out = tmp / "out"
    command = [sys.executable, "-m", "benchmarks.desk", "--symbols", "3", "--days", "10"]
    command += ["--strengths", "3,5", "--rss-symbols", "1", "--fixed-days", "3", "--database-url", pg.url]
    command += ["--schema", schema, "--out", str(out), "--readme", str(readme), "--drop"]
    try:
        proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    finally:
        for (name,) in pg.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname = $1 OR nspname LIKE $2",
            (schema, f"{schema}\\_%"),
        ):
            pg.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(out.glob("desk-*.json"))
    assert len(files) == 1, files
    yield json.loads(files[0].read_text()), out, readme, tmp


@pytest.mark.db
def test_every_contender_writes_identical_events(desk_run):
    raw, *_ = desk_run
    assert set(raw["contenders"]) == set(CONTENDERS)
    checks = raw["checks"]
    assert set(checks) == {*CONTENDERS, "fixed", "rss"} and raw["reference"] == "jobs1"
    assert raw["events_identical"] is True
    for name, check in checks.items():
        assert check["identical"] is True and not check["groups_differing"], (name, check)
    reference = checks["jobs1"]
    assert reference["groups"] == 3 * 2 and reference["events"] > 0  # 3 symbols x strengths 3, 5
    assert len(reference["per_group"]) == 6
    for name in CONTENDERS:
        assert checks[name]["events"] == reference["events"], name
        assert checks[name]["digest"] == reference["digest"], name
        assert raw["contenders"][name]["events"] == reference["events"], name  # what the runs reported
    assert checks["rss"]["groups"] == 2  # one symbol, two strengths


@pytest.mark.db
def test_results_file_has_every_figure(desk_run):
    raw, out, readme, tmp = desk_run
    assert raw["format"] == 1 and raw["kind"] == "desk"
    text = json.dumps(raw)
    assert str(REPO) not in text and str(tmp) not in text and "/tmp/" not in text  # relative paths only
    result = DeskResult.from_json(raw)
    assert result.to_json() == raw  # loads back to the same figures
    assert raw["machine"]["cpu_count"] and raw["machine"]["postgresql"]["version"]
    assert raw["workload"]["rows"] > 0 and raw["workload"]["config"] == "benchmarks/.data/desk/desk.toml"
    assert (
        raw["server"] == {"kind": "external", "url": raw["server"]["url"]} and "?" not in raw["server"]["url"]
    )
    for name, run in raw["contenders"].items():
        missing = [k for k in RUN_FIGURES if run.get(k) is None]
        if name != "floor":
            missing += [k for k in DESK_FIGURES if run.get(k) in (None, {})]
        assert not missing, (name, missing)
        assert run["wall_s"] > 0 and run["peak_rss_mb"] > 5, (name, run)
        cpu = run["cpu"]
        assert 0 <= cpu["machine_busy_core_s"] <= cpu["machine_core_s"] + 0.05, (name, cpu)
        assert cpu["process_cpu_s"] >= 0 and run["server_cpu_s"] >= 0, (name, cpu)
        if name != "floor":
            assert run["attributed_cpu_s"] > 0 and run["worker_peak_rss_mb"] > 10, (name, run)
            assert set(run["stage_seconds"]) >= {"read", "detect", "write"}, (name, run["stage_seconds"])
            assert run["exit_codes"] and set(run["exit_codes"]) == {0}, name
    runs = raw["contenders"]
    for name in ("jobs1", "defaults", "ray"):
        assert (
            runs[name]["processes"] == 1
            and runs[name]["tasks"] == 3
            and runs[name]["task_status"] == {"done": 3}
        )
    assert runs["loop"]["processes"] == 6 and runs["loop"]["tasks"] == 6
    assert [p["events_by_strength"] for p in runs["singles"]["parts"]] == [
        {"3": runs["jobs1"]["events_by_strength"]["3"]},
        {"5": runs["jobs1"]["events_by_strength"]["5"]},
    ]
    assert runs["singles"]["wall_s"] == pytest.approx(
        sum(p["wall_s"] for p in runs["singles"]["parts"]), abs=0.01
    )
    assert (
        runs["ray"]["worker_peaks_mb"] and runs["defaults"]["worker_peaks_mb"]
    )  # the task-running processes
    assert set(runs["floor"]["stage_seconds"]) == {"read", "write"}
    assert runs["floor"]["bars"] == raw["workload"]["rows"]
    startup = raw["ray_startup"]
    assert {"import_s", "init_s", "command_s", "shutdown_s"} <= set(startup) and raw["ray_up_down_s"] > 0
    fixed = raw["fixed_cost"]
    assert fixed["tasks"] == 3 * 3 and fixed["task_status"] == {"done": 9}  # 3 symbols x 3 one-day tasks
    assert fixed["bars_read"] > fixed["bars"] > 0  # every 1-day task reads its 7 days of lookback too
    for key in ("fixed_cost_per_task_ms", "fixed_cost_stage_subtraction_ms", "tiny_task_median_ms"):
        assert raw[key] is not None, key
    assert set(raw["tiny_task_stage_ms"]) >= {"read", "detect", "write"}
    assert raw["rss_small"]["worker_peak_rss_mb"] > 10 and raw["rss_small"]["tasks"] == 1
    assert all(value is not None for value in raw["ratios"].values()), raw["ratios"]
    targets = {t["id"]: t for t in raw["targets"]}
    assert set(targets) == set(TARGETS)
    for target in targets.values():
        assert target["measured"] is not None and target["met"] in (True, False), target
    # The chart and the README section (the rest of the README kept).
    assert (out / "desk.png").stat().st_size > 1000
    section = readme.read_text()
    assert (
        section.startswith("# Benchmarks\n\nkept text\n")
        and README_BEGIN in section
        and README_END in section
    )
    assert "| desk, `--jobs 1` |" in section and "desk.png" in section and "identical for" in section


def test_recorded_results_render_as_the_readme_shows():
    """The README's desk section is the rendering of the results file it names (no database)."""
    text = BENCH_README.read_text()
    section = text.split(README_BEGIN)[1].split(README_END)[0]
    source = re.search(r"Raw figures: \[([^]]+\.json)\]", section)
    assert source, "the desk section names its results file"
    raw = json.loads((BENCH_README.parent / source.group(1)).read_text())
    recorded = DeskResult.from_json(raw)
    assert recorded.to_json() == raw
    assert recorded.events_identical() is True
    rendered = markdown(recorded, chart="results/desk.png")
    assert rendered.strip() in section
