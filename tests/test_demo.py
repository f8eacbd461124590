"""``triangles demo`` end to end in a subprocess, on an embedded server of its own (TRIANGLES_HOME).

The demo seeds once, backfills, exports and charts; running it again must give the same events
and must not seed the bars again. Counts are checked against the demo's own database.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from tests.helpers import run_cli
from triangles_polars.db import connect

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


def scalar(url: str, sql: str) -> int:
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return int(cur.fetchone()[0])
    finally:
        conn.close()


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
