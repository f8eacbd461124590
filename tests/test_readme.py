"""The README's "Try it on the demo data" block runs as written, right after ``triangles demo``.

Every shell command of the block is read from README.md and run, unchanged, by ``bash`` with the
``triangles`` console script on the PATH, in a folder holding a copy of ``docs/sample_bars.csv``
(as a checkout's root does). The block uses the default database; the test points it at a fresh
database of the test server through ``TRIANGLES_DATABASE_URL``, the variable the CLI reads, and
gives it a ``TRIANGLES_HOME`` of its own, which must stay empty (no embedded server was started).
The block's Python snippet runs the same way, and ``compute_events(bars)`` with its defaults.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import polars as pl
import pytest

from tests.helpers import Server, scalar
from triangles_polars import compute_events

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SAMPLE = ROOT / "docs" / "sample_bars.csv"
BEGIN, END = "<!-- try-it:begin -->", "<!-- try-it:end -->"
DEMO_SYMBOL, SAMPLE_SYMBOL = "SYNTH:NQ", "SAMPLE:NQ"

pytestmark = pytest.mark.db


def try_it_block() -> str:
    text = README.read_text(encoding="utf-8")
    assert "## Try it on the demo data" in text
    assert text.count(BEGIN) == 1 and text.count(END) == 1, "README.md: one try-it block, marked"
    return text.split(BEGIN, 1)[1].split(END, 1)[0]


def fenced(block: str, language: str) -> list[str]:
    """The bodies of the block's code fences of ``language``."""
    return re.findall(rf"```{language}\n(.*?)```", block, flags=re.DOTALL)


def shell_commands(script: str) -> list[str]:
    """The commands of a shell fence: comments and blank lines dropped, ``\\`` continuations joined."""
    commands, pending = [], ""
    for line in script.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        commands.append(pending + line.strip())
        pending = ""
    assert not pending, f"a command ends with a continuation: {pending!r}"
    return commands


def test_the_block_is_found_and_holds_what_a_demo_user_needs() -> None:
    block = try_it_block()
    (script,) = fenced(block, "bash")
    commands = shell_commands(script)
    assert len(commands) >= 8 and all(c.startswith("triangles ") for c in commands), commands
    assert any(c.startswith(f"triangles backfill {DEMO_SYMBOL} ") for c in commands)
    assert "triangles bars load docs/sample_bars.csv" in commands
    assert len(fenced(block, "python")) == 1


def test_the_sample_file_has_the_documented_columns_and_a_few_hundred_bars() -> None:
    with SAMPLE.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["symbol", "ts", "open", "high", "low", "close", "volume"]
    assert 200 <= len(rows) <= 1_000
    assert {row["symbol"] for row in rows} == {SAMPLE_SYMBOL}
    assert all(row["ts"].endswith("Z") for row in rows)  # UTC, said so in every value
    for row in rows:
        o, h, low, c = (float(row[k]) for k in ("open", "high", "low", "close"))
        assert low <= min(o, c) <= max(o, c) <= h  # clean bars: no hygiene code to explain


@dataclass
class Checkout:
    """A folder laid out like a checkout's root, and the environment of the block's commands."""

    root: Path
    env: dict[str, str]
    url: str
    home: Path

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", command],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    def scalar(self, sql: str) -> int:
        return int(scalar(self.url, sql))


def with_database(url: str, name: str) -> str:
    """``url`` naming database ``name`` instead (query string, so the socket folder, kept)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="module")
def checkout(pg: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Checkout]:
    """A fresh database on the test server, after ``triangles demo`` ran on it as a user runs it."""
    name = f"readme_{uuid.uuid4().hex[:10]}"
    pg.execute(f"CREATE DATABASE {name}")
    root = tmp_path_factory.mktemp("checkout")
    (root / "docs").mkdir()
    shutil.copy(SAMPLE, root / "docs" / SAMPLE.name)
    home = root / "home"
    url = with_database(pg.url, name)
    scripts = str(Path(sys.executable).parent)  # where pip put the `triangles` console script
    env = {
        **os.environ,
        "PATH": scripts + os.pathsep + os.environ.get("PATH", ""),
        "TRIANGLES_DATABASE_URL": url,
        "DATABASE_URL": "",
        "TRIANGLES_HOME": str(home),
        "TERM": "dumb",
    }
    env.pop("TRIANGLES_DEBUG", None)
    place = Checkout(root, env, url, home)
    demo = place.run("triangles demo")
    assert demo.returncode == 0, demo.stderr
    yield place
    pg.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_every_command_of_the_block_runs_as_written_after_the_demo(checkout: Checkout) -> None:
    (script,) = fenced(try_it_block(), "bash")
    outputs = {}
    for command in shell_commands(script):
        result = checkout.run(command)
        assert result.returncode == 0, f"$ {command}\n{result.stdout}\n{result.stderr}"
        assert "Traceback" not in result.stderr and "error:" not in result.stderr, (
            f"$ {command}\n{result.stderr}"
        )
        outputs[command] = result

    # They ran against the test database (TRIANGLES_DATABASE_URL), not an embedded server.
    assert not (checkout.home / "pgdata").exists()
    sample_rows = len(SAMPLE.read_text().splitlines()) - 1
    loaded = checkout.scalar(f"SELECT count(*) FROM bars_1m WHERE symbol = '{SAMPLE_SYMBOL}'")
    assert loaded == sample_rows

    # The sample's backfill found events at k=3, and its JSON says what the table holds.
    (sample_json,) = [r for c, r in outputs.items() if c.startswith(f"triangles backfill {SAMPLE_SYMBOL}")]
    summary = json.loads(sample_json.stdout)
    stored = checkout.scalar(
        f"SELECT count(*) FROM triangle_events WHERE symbol = '{SAMPLE_SYMBOL}' AND strength = 3"
    )
    assert summary["bars_processed"] == sample_rows and summary["triangles"] == stored >= 1

    # What the listing and the outputs promise.
    (bars_list,) = [r.stdout for c, r in outputs.items() if c == "triangles bars list"]
    assert DEMO_SYMBOL in bars_list
    for chart in ("session_k3.png", "year.png", "sample.png"):
        assert (checkout.root / "triangles_out" / chart).stat().st_size > 10_000, chart
    assert list((checkout.root / "triangles_out" / "november").rglob("*.parquet"))
    (year,) = [r for c, r in outputs.items() if "year.png" in c]
    assert "overview" in year.stderr


def test_the_python_snippet_runs_and_finds_what_the_command_line_wrote(checkout: Checkout) -> None:
    (snippet,) = fenced(try_it_block(), "python")
    env = {k: v for k, v in checkout.env.items() if k != "TRIANGLES_DATABASE_URL"}  # needs none
    result = subprocess.run(
        [sys.executable, "-c", snippet],
        cwd=checkout.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    match = re.fullmatch(r"(\d+) events, (\d+) bad bars", first)
    assert match, result.stdout
    # The database run of the same file (the block's backfill, which reads it whole) found as many.
    checkout.run("triangles bars load docs/sample_bars.csv")
    checkout.run("triangles backfill SAMPLE:NQ 2025-12-02 2025-12-02 3 --quiet")
    stored = checkout.scalar(
        f"SELECT count(*) FROM triangle_events WHERE symbol = '{SAMPLE_SYMBOL}' AND strength = 3"
    )
    assert (int(match.group(1)), int(match.group(2))) == (stored, 0)
    assert stored >= 1


def test_compute_events_with_its_defaults_as_the_readme_says() -> None:
    """``triangles_polars.compute_events(bars)``: no other argument, strength 5."""
    bars = pl.read_csv(SAMPLE, try_parse_dates=True)
    events = compute_events(bars).events
    assert events.height > 0
    assert events["strength"].unique().to_list() == [5]
    assert events["symbol"].unique().to_list() == [SAMPLE_SYMBOL]
    assert "`triangles_polars.compute_events(bars)`" in README.read_text(encoding="utf-8")
