"""What a new user meets first: ``triangles demo``, ``server status`` and the progress bar.

The demo runs end to end in a subprocess, on an embedded server of its own (TRIANGLES_HOME): it
seeds once, backfills, exports and charts; running it again must give the same events and must
not seed the bars again. Counts are checked against the demo's own database. The progress bar
is the real one, drawn on a recording console during a real run.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.dataset as ds
import pytest
from rich.console import Console

from tests.helpers import Db, run_cli, scalar
from triangles_polars import backfill
from triangles_polars.progress import BarProgress, ProgressView

# Every test here runs the demo, which starts the embedded server of its TRIANGLES_HOME.
pytestmark = pytest.mark.db

DEMO_SYMBOL = "SYNTH:NQ"  # what the demo promises to seed (see its help and output)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """An environment whose embedded default lives in a temporary TRIANGLES_HOME (stopped after)."""
    home = tmp_path_factory.mktemp("demo_home")
    # no URL from the environment: the demo must use the embedded default
    env = {"TRIANGLES_HOME": str(home), "TRIANGLES_DATABASE_URL": "", "DATABASE_URL": ""}
    yield env
    stopped = run_cli("server", "stop", env=env)
    assert stopped.returncode == 0, stopped.stderr


def demo_url(env: dict[str, str]) -> str:
    result = run_cli("server", "url", env=env)
    assert result.returncode == 0, result.stderr
    url = result.stdout.strip()
    assert url.startswith("postgresql://"), url
    assert env["TRIANGLES_HOME"] in url  # the server of this TRIANGLES_HOME, not another one
    return url


def counts(url: str) -> tuple[int, int]:
    """(bars, events) of the demo symbol in the demo database."""
    bars = scalar(url, f"SELECT count(*) FROM bars_1m WHERE symbol = '{DEMO_SYMBOL}'")
    events = scalar(url, f"SELECT count(*) FROM triangle_events WHERE symbol = '{DEMO_SYMBOL}'")
    return bars, events


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, "not a PNG"
    assert data[12:16] == b"IHDR", "PNG without IHDR first"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def printed_path(stdout: str, label: str) -> Path:
    """The path printed on the ``label : path`` line of the demo's report."""
    for line in stdout.splitlines():
        head, sep, tail = line.partition(":")
        if sep and head.strip() == label:
            return Path(tail.strip().split("  ")[0])
    raise AssertionError(f"no {label!r} line in:\n{stdout}")


def test_demo_twice_is_complete_and_idempotent(demo_env: dict[str, str], tmp_path: Path):
    out = tmp_path / "out"
    first = run_cli("demo", "--out", str(out), env=demo_env)
    assert first.returncode == 0, first.stderr
    assert "Traceback" not in first.stderr

    chart = printed_path(first.stdout, "chart")
    parquet = printed_path(first.stdout, "parquet")
    assert chart.parent == out and parquet == out / "parquet"
    assert chart.suffix == ".png" and chart.is_file()
    width, height = png_size(chart)
    assert width >= 1000 and height >= 500, (width, height)
    assert parquet.is_dir()
    assert (parquet / f"symbol={DEMO_SYMBOL}").is_dir()

    url = demo_url(demo_env)
    bars_1, events_1 = counts(url)
    assert bars_1 > 100_000  # about a year of 1-minute bars
    assert events_1 > 0
    # the Parquet export holds what the table holds
    exported = ds.dataset(parquet, format="parquet", partitioning="hive").to_table()
    assert exported.num_rows == events_1
    assert set(exported.column("symbol").to_pylist()) == {DEMO_SYMBOL}

    second = run_cli("demo", "--out", str(out), env=demo_env)
    assert second.returncode == 0, second.stderr
    assert "Traceback" not in second.stderr
    assert "seeding" not in second.stdout.lower()  # nothing to seed the second time
    assert counts(demo_url(demo_env)) == (bars_1, events_1)
    assert ds.dataset(parquet, format="parquet", partitioning="hive").count_rows() == events_1
    assert png_size(chart) == (width, height)


def test_demo_json_is_one_object_with_a_summary(demo_env: dict[str, str], tmp_path: Path):
    result = run_cli("demo", "--json", "--out", str(tmp_path / "out"), env=demo_env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.startswith("{"), f"stdout holds more than the JSON object: {result.stdout[:300]!r}"
    payload = json.loads(result.stdout)  # fails on anything but exactly one JSON document
    assert isinstance(payload, dict)
    assert result.stdout.strip().count("\n") == 0, "stdout must be a single JSON line"
    summary = payload["summary"]
    assert summary["bars_processed"] > 0
    assert summary["triangles"] > 0

    # the summary matches the database: bars read from the anchor, events written in the range
    url = demo_url(demo_env)
    bars_in_window = scalar(
        url,
        f"SELECT count(*) FROM bars_1m WHERE symbol = '{DEMO_SYMBOL}' "
        f"AND ts >= '{summary['anchor']}' AND ts < '{summary['end_exclusive']}'",
    )
    events_in_range = scalar(
        url,
        f"SELECT count(*) FROM triangle_events WHERE symbol = '{DEMO_SYMBOL}' "
        f"AND confirmed_at >= '{summary['start']}' AND confirmed_at < '{summary['end_exclusive']}'",
    )
    assert summary["bars_processed"] == bars_in_window
    assert summary["triangles"] == events_in_range


# Runs ``triangles demo`` in an interpreter where matplotlib cannot be imported (as on a machine
# without the plot extra): a meta-path finder refuses it before any other finder is asked.
WITHOUT_MATPLOTLIB = """
import sys

class NoMatplotlib:
    def find_spec(self, name, path=None, target=None):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoMatplotlib())
sys.argv = ["triangles", *sys.argv[1:]]
from triangles_polars.cli import main
main()
"""


def test_demo_without_matplotlib_skips_the_chart_and_says_how_to_get_it(
    demo_env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "TERM": "dumb", **demo_env}
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_MATPLOTLIB, "demo", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    chart_line = next(line for line in result.stdout.splitlines() if line.startswith("chart"))
    assert "skipped" in chart_line and "pip install 'triangles-polars[plot]'" in chart_line, chart_line
    assert not list(out.glob("*.png"))  # no chart ...
    parquet = printed_path(result.stdout, "parquet")  # ... but everything else was done
    url = demo_url(demo_env)
    assert ds.dataset(parquet, format="parquet", partitioning="hive").count_rows() == counts(url)[1] > 0

    as_json = subprocess.run(
        [sys.executable, "-c", WITHOUT_MATPLOTLIB, "demo", "--json", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["chart"] is None


# ---------------------------------------------------------------------------- server status


def test_server_status_is_human_by_default_and_json_on_request(demo_env: dict[str, str]) -> None:
    url = demo_url(demo_env)  # starts the server of this TRIANGLES_HOME
    pgdata = str(Path(demo_env["TRIANGLES_HOME"]).resolve() / "pgdata")

    human = run_cli("server", "status", env=demo_env)
    assert human.returncode == 0, human.stderr
    assert not human.stdout.lstrip().startswith("{"), human.stdout
    lines = human.stdout.splitlines()
    assert lines[0].startswith("embedded server: running"), human.stdout
    assert any(line.split(":", 1)[1].strip() == pgdata for line in lines if line.startswith("data folder"))
    assert any(line.split(":", 1)[1].strip() == url for line in lines if line.startswith("url")), human.stdout

    as_json = run_cli("server", "status", "--json", env=demo_env)
    assert as_json.returncode == 0, as_json.stderr
    payload = json.loads(as_json.stdout)  # exactly one JSON document
    assert payload["running"] is True and payload["initialised"] is True
    assert payload["pgdata"] == pgdata and payload["url"] == url
    assert isinstance(payload["pid"], int) and payload["pid"] > 0

    stopped = run_cli("server", "stop", env=demo_env)
    assert stopped.returncode == 0, stopped.stderr
    try:
        after = run_cli("server", "status", env=demo_env)
        assert after.returncode == 0, after.stderr
        assert after.stdout.startswith("embedded server: stopped"), after.stdout
        assert "url" not in after.stdout  # status never starts the server
        payload = json.loads(run_cli("server", "status", "--json", env=demo_env).stdout)
        assert (payload["running"], payload["initialised"], payload["url"], payload["pid"]) == (
            False,
            True,
            None,
            None,
        )
    finally:
        demo_url(demo_env)  # started again for the other tests of the module


def test_server_status_of_a_new_home_says_it_is_not_set_up(tmp_path: Path) -> None:
    env = {"TRIANGLES_HOME": str(tmp_path / "new_home"), "TRIANGLES_DATABASE_URL": "", "DATABASE_URL": ""}
    human = run_cli("server", "status", env=env)
    assert human.returncode == 0, human.stderr
    assert human.stdout.startswith("embedded server: not set up"), human.stdout
    payload = json.loads(run_cli("server", "status", "--json", env=env).stdout)
    assert (payload["running"], payload["initialised"]) == (False, False)
    assert not (tmp_path / "new_home" / "pgdata").exists()  # asking created nothing


# ---------------------------------------------------------------------------- the progress bar


def bar_time_with_bars(bars: pl.DataFrame, start: date, task_days: int | None) -> float:
    """Seconds from each task's first bar to its end, the tasks cut as the contract says.

    Tasks end at START + i·N days (the last at END + 1 day = 2025-12-01); the first reads from
    START − 7 days, each later one from its own start − 7 days.
    """
    end = datetime(2025, 12, 1, tzinfo=UTC)
    lo = datetime(start.year, start.month, start.day, tzinfo=UTC)
    step = timedelta(days=task_days) if task_days else end - lo
    total, task_start = 0.0, lo
    while task_start < end:
        task_end = min(task_start + step, end)
        inside = bars.filter((pl.col("ts") >= task_start - timedelta(days=7)) & (pl.col("ts") < task_end))[
            "ts"
        ]
        if inside.len():
            total += (task_end - inside.min()).total_seconds()
        task_start = task_end
    return total


class RecordingProgress(BarProgress):
    """The real progress bar, drawn on a recording console, keeping every view it showed."""

    def __init__(self, console: Console, timeline: list[Any]) -> None:
        super().__init__(enabled=True, console=console)
        self.timeline = timeline

    def _show(self) -> None:
        super()._show()
        self.timeline.append(self.view)


@pytest.mark.parametrize(
    ("start", "task_days"),
    [("2015-01-01", None), ("2025-09-01", 20)],
    ids=["ten-empty-years", "empty-tasks-first"],
)
def test_progress_starts_at_the_first_bar_and_ends_on_the_summary(
    db: Db, nq_bars: pl.DataFrame, start: str, task_days: int | None
) -> None:
    db.load(nq_bars)
    timeline: list[Any] = []  # views and commits, in the order they happened (list.append is atomic)
    console = Console(file=io.StringIO(), force_terminal=True, width=250, record=True)
    settings = db.settings(
        start=start, end="2025-11-30", chunk_events=2_000, slice_days=30, task_days=task_days, jobs=1
    )
    with RecordingProgress(console, timeline) as progress:
        summary = backfill(
            settings, progress=progress, on_chunk=lambda chunk, skipped: timeline.append("commit")
        )

    views = [item for item in timeline if isinstance(item, ProgressView)]
    assert summary.chunks > 1 and "commit" in timeline  # several chunks: the last one must count too
    # The bar covers the bar time from each task's first bar to its end, not the empty years before.
    assert views[-1].total_s == bar_time_with_bars(nq_bars, date.fromisoformat(start), task_days)
    # Counts show from the start: a view with bars counted comes before the first chunk commits.
    first_commit = timeline.index("commit")
    assert any(isinstance(item, ProgressView) and item.bars > 0 for item in timeline[:first_commit])
    assert_progress_ended_on(views, console, summary)


def assert_progress_ended_on(views: list[ProgressView], console: Console, summary: Any) -> None:
    """The last view, and the last line a terminal saw, hold exactly the summary's numbers at 100 %."""
    last = views[-1]
    assert (last.bars, last.events, last.chunks) == (
        summary.bars_processed,
        summary.triangles,
        summary.chunks,
    )
    assert last.done_s == last.total_s and last.tasks_done == last.tasks == len(summary.tasks)
    assert all(a.done_s <= b.done_s for a, b in itertools.pairwise(views))  # never goes back
    # ... and so does what a terminal saw last.
    drawn = [line for line in console.export_text().splitlines() if "backfill" in line][-1]
    for shown in (
        "100%",
        f"{summary.bars_processed:,} bars",
        f"{summary.triangles:,} events",
        f"{summary.chunks:,} chunks",
    ):
        assert shown in drawn, drawn


def test_progress_with_worker_processes_ends_on_the_summary(db: Db, nq_bars: pl.DataFrame) -> None:
    """Tasks of other processes only report when done: their counts still add up to the summary's."""
    db.load(nq_bars)
    timeline: list[Any] = []
    console = Console(file=io.StringIO(), force_terminal=True, width=250, record=True)
    settings = db.settings(start="2025-10-01", end="2025-11-30", chunk_events=300, task_days=10, jobs=2)
    with RecordingProgress(console, timeline) as progress:
        summary = backfill(settings, progress=progress)
    assert len(summary.tasks) == 7 and summary.chunks > len(summary.tasks)
    assert_progress_ended_on(timeline, console, summary)
