"""The whole desk in one command: many symbols and strengths, tasks, local workers, failures that stay local.

Every (symbol, strength) of a many-symbol run must equal a separate single run and the plain-Python
reference, whatever ``--jobs`` or ``--task-days`` (docs/contract.md#many-symbols-strengths-and-workers).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from tests.helpers import Db, Server, run_cli
from tests.reference import reference_events
from triangles_polars import backfill
from triangles_polars.schema import EVENT_COLUMNS
from triangles_polars.settings import BackfillSettings, resolve_thresholds
from triangles_polars.synthetic import generate_bars

pytestmark = pytest.mark.db

START, END = "2025-11-10", "2025-11-19"
MINUTE = timedelta(minutes=1)
STRENGTHS = (3, 5, 8)
# symbol → (price factor, seed, corruption share); ES, CL and 6E get their thresholds from the config.
SYMBOLS = {
    "GLBX.MDP3:NQZ5": (1.0, 1, 0.0),
    "GLBX.MDP3:ESZ5": (0.28, 2, 0.0),
    "GLBX.MDP3:CLF6": (0.0031, 3, 0.0),
    "GLBX.MDP3:6EZ5": (0.000052, 4, 0.0),
    "SYNTH:NQ": (1.0, 5, 0.004),  # corrupt bars: OHLC_INTEGRITY and prices below NQ's 1000
    "SYNTH:RTY": (0.11, 6, 0.0),
}
GONE = "SYNTH:GONE"  # bars only before the range: status empty
CONFIG = """
[instruments.ES]
min_price = 1000
[instruments.CL]
min_price = 10
[instruments."GLBX.MDP3:6EZ5"]
min_price = 0.5
[instruments.RTY]
min_price = 500
"""


def _bars() -> pl.DataFrame:
    frames = []
    for symbol, (factor, seed, corruption) in SYMBOLS.items():
        bars = generate_bars(
            "2025-11-01", "2025-11-21", symbol=symbol, seed=seed, corruption_share=corruption
        )
        frames.append(bars.with_columns(pl.col("open", "high", "low", "close") * factor))
    frames.append(generate_bars("2025-10-01", "2025-10-20", symbol=GONE, seed=9))
    return pl.concat(frames)


@pytest.fixture(scope="module")
def desk(pg: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Db, Path, pl.DataFrame]]:
    """One schema for the module: the desk's bars, a config, and the bars frame."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    pg.execute(f"CREATE SCHEMA {schema}")
    db = Db(pg, schema)
    bars = _bars()
    db.load(bars)
    config = tmp_path_factory.mktemp("desk") / "desk.toml"
    config.write_text(CONFIG)
    yield db, config, bars
    pg.execute(f"DROP SCHEMA {schema} CASCADE")


def _settings(db: Db, config: Path, events: str, **kwargs: object) -> BackfillSettings:
    base: dict[str, object] = {
        "symbol": ",".join([*SYMBOLS, GONE]),
        "start": START,
        "end": END,
        "strength": ",".join(map(str, STRENGTHS)),
        "database_url": db.url,
        "bars_table": db.bars_table,
        "events_table": f"{db.schema}.{events}",
        "config": config,
        "backoff_s": 0.05,
        "chunk_events": 400,
    }
    return BackfillSettings(**(base | kwargs))  # type: ignore[arg-type]


def _events(db: Db, table: str) -> pl.DataFrame:
    return db.events(table=table).select(EVENT_COLUMNS)


@pytest.fixture(scope="module")
def single_runs(desk: tuple[Db, Path, pl.DataFrame]) -> pl.DataFrame:
    """Every (symbol, strength) run alone, one command each (what users script today)."""
    db, config, _ = desk
    for symbol in SYMBOLS:
        for k in STRENGTHS:
            backfill(_settings(db, config, "single_events", symbol=symbol, strength=k))
    return _events(db, "single_events")


def _reference(bars: pl.DataFrame, config: Path) -> pl.DataFrame:
    start = datetime.fromisoformat(START).replace(tzinfo=UTC)
    end = datetime.fromisoformat(END).replace(tzinfo=UTC) + timedelta(days=1)
    rows = []
    for symbol in SYMBOLS:
        thresholds, _ = resolve_thresholds(symbol, config, {})
        window = bars.filter(
            (pl.col("symbol") == symbol) & (pl.col("ts") >= start - timedelta(days=7)) & (pl.col("ts") < end)
        )
        for k in STRENGTHS:
            rows += reference_events(
                window.to_dicts(), symbol, k, MINUTE, "basic", thresholds.__dict__, start, end
            )
    return pl.DataFrame(rows).select(EVENT_COLUMNS)


def _same(got: pl.DataFrame, expected: pl.DataFrame) -> bool:
    order = ["symbol", "strength", "confirmed_at", "c_ts", "c_kind"]
    return got.sort(order).equals(expected.cast(got.schema).sort(order))


def test_single_runs_equal_the_reference(
    desk: tuple[Db, Path, pl.DataFrame], single_runs: pl.DataFrame
) -> None:
    _, config, bars = desk
    expected = _reference(bars, config)
    assert expected.height > 1000
    assert set(expected["symbol"].unique()) == set(SYMBOLS)
    assert _same(single_runs, expected)


@pytest.mark.parametrize(
    ("name", "options"),
    [("jobs1", {"jobs": 1}), ("jobs2", {"jobs": 2}), ("taskdays", {"jobs": 2, "task_days": 3})],
)
def test_desk_run_equals_single_runs(
    desk: tuple[Db, Path, pl.DataFrame], single_runs: pl.DataFrame, name: str, options: dict[str, object]
) -> None:
    db, config, bars = desk
    summary = backfill(_settings(db, config, f"desk_{name}", **options))
    assert _same(_events(db, f"desk_{name}"), single_runs)
    assert summary.exit_code == 0
    by_symbol: dict[str, list[str]] = {}
    for task in summary.tasks:
        by_symbol.setdefault(task.symbol, []).append(task.status)
    assert set(by_symbol) == {*SYMBOLS, GONE}
    assert set(by_symbol[GONE]) == {"empty"} and any(GONE in w for w in summary.warnings)
    assert all(set(statuses) == {"done"} for s, statuses in by_symbol.items() if s != GONE)
    expected_tasks = 4 if "task_days" in options else 1  # 10 days in tasks of 3 days
    assert all(len(statuses) == expected_tasks for statuses in by_symbol.values())
    # Totals do not depend on the split: each bar from ANCHOR to END + 1 day is counted once.
    anchor, end = datetime(2025, 11, 3, tzinfo=UTC), datetime(2025, 11, 20, tzinfo=UTC)
    window = bars.filter((pl.col("ts") >= anchor) & (pl.col("ts") < end))
    assert summary.bars_processed == window.height
    assert summary.triangles == single_runs.height
    assert summary.triangles_by_strength == dict(single_runs.group_by("strength").len().iter_rows())
    assert summary.bad_bars_skipped > 0 and "OHLC_INTEGRITY" in summary.bad_bars_by_rule
    if options["jobs"] == 2:  # this process, and a worker if the run lasted long enough to start one
        workers = {t.worker for t in summary.tasks if t.status == "done"} - {"main"}
        assert len(workers) <= 1 and all(w.startswith("pid ") for w in workers)


def test_rerun_skips_what_is_covered_even_with_another_split(
    desk: tuple[Db, Path, pl.DataFrame], single_runs: pl.DataFrame
) -> None:
    db, config, _ = desk
    settings = _settings(db, config, "desk_rerun", jobs=1)
    backfill(settings)
    again = backfill(replace(settings, task_days=2))
    statuses = {t.status for t in again.tasks if t.symbol != GONE}
    assert statuses == {"skipped"} and again.triangles == 0 and again.commits == 0
    assert _same(_events(db, "desk_rerun"), single_runs)


def test_failures_stay_local_and_the_rerun_completes_only_what_is_missing(
    desk: tuple[Db, Path, pl.DataFrame], single_runs: pl.DataFrame
) -> None:
    db, config, _ = desk
    table = f"{db.schema}.desk_faults"
    doomed = "GLBX.MDP3:ESZ5"
    killed: list[int] = []

    def kill_writer_of_doomed(chunk: object, skipped: bool) -> None:
        # After the doomed task's first commit, its writer's backend dies; with no retries left
        # the task fails (exit 3), and the tasks after it must still run.
        if not killed and chunk.events.height and chunk.events["symbol"][0] == doomed:  # type: ignore[attr-defined]
            killed.extend(
                db.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'triangles_writer'"
                )
            )

    # NQ-level minimum price makes every CL bar bad: that task is bad input (exit 2).
    bad_config = config.with_name("bad.toml")
    bad_config.write_text(CONFIG.replace("min_price = 10\n", "min_price = 1000\n"))
    settings = _settings(db, bad_config, "desk_faults", jobs=1, max_retries=0)
    summary = backfill(settings, on_chunk=kill_writer_of_doomed)
    status = {t.symbol: (t.status, t.exit_code) for t in summary.tasks}
    assert killed and status[doomed] == ("failed", 3)
    assert status["GLBX.MDP3:CLF6"] == ("failed", 2)
    assert summary.exit_code == 3  # the most serious of 3 and 2
    done = [s for s, (st, _) in status.items() if st == "done"]
    assert len(done) == 4
    stored = _events(db, "desk_faults")
    for symbol in done:
        assert _same(
            stored.filter(pl.col("symbol") == symbol), single_runs.filter(pl.col("symbol") == symbol)
        )
    # The same command, now with retries: only the failed ES task runs (CL still fails the same way).
    rerun = backfill(replace(settings, max_retries=5))
    status = {t.symbol: t.status for t in rerun.tasks}
    assert status[doomed] == "done" and status["GLBX.MDP3:CLF6"] == "failed"
    assert {s for s, st in status.items() if st == "skipped"} == set(done)
    expected = single_runs.filter(pl.col("symbol") != "GLBX.MDP3:CLF6")
    assert _same(_events(db, "desk_faults"), expected)
    assert db.execute(f"SELECT count(*) FROM {table}")[0][0] == expected.height  # no duplicates


@pytest.mark.parametrize(
    ("symbols", "strengths", "extra", "message"),
    [
        ("SYNTH:ZZ*", "5", [], "matches no symbol"),
        ("GLBX.MDP3:NQZ5,GLBX.MDP3:NOPE", "5", [], "no bars for symbol 'GLBX.MDP3:NOPE'"),
        ("GLBX.MDP3:NQZ5", "3,x", [], "bad strength"),
        ("GLBX.MDP3:NQZ5", "3,3", [], "give each strength once"),
        ("GLBX.MDP3:NQZ5", "5", ["--jobs", "0"], "jobs"),
        ("GLBX.MDP3:NQZ5", "5", ["--task-days", "0"], "task-days"),
        ("GLBX.MDP3:NQZ5", "5", ["--engine", "spark"], "engine"),
    ],
)
def test_bad_desk_input_is_one_line_exit_2_and_writes_nothing(
    desk: tuple[Db, Path, pl.DataFrame], symbols: str, strengths: str, extra: list[str], message: str
) -> None:
    db, _, _ = desk
    table = f"{db.schema}.bad_{uuid.uuid4().hex[:6]}"
    result = run_cli(
        "backfill", symbols, START, END, strengths,
        "--database-url", db.url, "--bars-table", db.bars_table, "--events-table", table, *extra,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr
    assert db.execute("SELECT to_regclass($1) IS NULL", (table,))[0][0]


def test_cli_desk_json_has_tasks_and_a_table_for_humans(desk: tuple[Db, Path, pl.DataFrame]) -> None:
    db, config, _ = desk
    args = [
        "backfill", "GLBX.MDP3:*,SYNTH:GONE", START, "2025-11-11", "3,5",
        "--database-url", db.url, "--bars-table", db.bars_table, "--config", str(config),
        "--events-table", f"{db.schema}.desk_cli", "--jobs", "2",
    ]  # fmt: skip
    result = run_cli(*args, "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    tasks = {t["symbol"]: t for t in payload["tasks"]}
    assert set(tasks) == {s for s in SYMBOLS if s.startswith("GLBX")} | {GONE}
    assert tasks[GONE]["status"] == "empty" and "warning" in result.stderr and GONE in result.stderr
    for key in ("bars_processed", "bad_bars_skipped", "bad_bars_by_rule", "triangles", "chunks", "commits"):
        assert key in payload
    assert payload["triangles"] == sum(sum(t["triangles_by_strength"].values()) for t in payload["tasks"])
    for task in payload["tasks"]:
        assert set(task) >= {
            "strengths",
            "start",
            "end_exclusive",
            "exit_code",
            "error",
            "worker",
            "duration_s",
        }
    human = run_cli(*args, "--restart")
    assert human.returncode == 0, human.stderr
    assert "Tasks" in human.stdout and "GLBX.MDP3:ESZ5" in human.stdout and "empty" in human.stdout


@pytest.mark.parametrize("chunk_events", [50_000, 60])
def test_a_tasks_last_chunks_share_one_transaction_and_finish_its_runs(
    desk: tuple[Db, Path, pl.DataFrame], single_runs: pl.DataFrame, chunk_events: int
) -> None:
    """One task, three strengths: the last chunk of each commits in one transaction, which also
    marks its run done (docs/contract.md#chunks); every other chunk is a commit of its own."""
    db, config, _ = desk
    symbol, events = "GLBX.MDP3:NQZ5", f"desk_together_{chunk_events}"
    summary = backfill(_settings(db, config, events, symbol=symbol, jobs=1, chunk_events=chunk_events))
    assert summary.chunks > 3 if chunk_events == 60 else summary.chunks == 3
    assert summary.commits == summary.chunks - 2 and summary.chunks_skipped == 0
    runs = db.execute(
        f"SELECT r.strength, r.status, r.chunks, (SELECT count(*) FROM {db.schema}.triangles_progress p "
        f"WHERE p.run_key = r.run_key) FROM {db.schema}.triangles_runs r WHERE r.events_table = $1 "
        "ORDER BY r.strength",
        (f"{db.schema}.{events}",),
    )
    assert [(k, status) for k, status, _, _ in runs] == [(k, "done") for k in STRENGTHS]
    assert all(chunks == recorded > 0 for _, _, chunks, recorded in runs)
    assert sum(chunks for _, _, chunks, _ in runs) == summary.chunks
    assert _same(_events(db, events), single_runs.filter(pl.col("symbol") == symbol))
    again = backfill(_settings(db, config, events, symbol=symbol, jobs=1, chunk_events=chunk_events))
    assert again.commits == 0 and [t.status for t in again.tasks] == ["skipped"]


def test_locks_and_coverage_of_many_keys_are_taken_and_read_in_one_statement_each(
    desk: tuple[Db, Path, pl.DataFrame],
) -> None:
    """The planner reads the coverage of every (task, strength) at once, and the driver tries every
    key's lock at once: a key held by another session is named with its holder, the rest are taken."""
    from triangles_polars.locks import KeyLocks, LockKey

    db, config, _ = desk
    events = f"{db.schema}.desk_keys"
    keys = [LockKey(events, s, k) for s in list(SYMBOLS)[:2] for k in STRENGTHS]
    other = KeyLocks(db.url)
    try:
        assert other.acquire(keys[:1]) == {}
        mine = KeyLocks(db.url)
        try:
            refused = mine.acquire(keys)
            assert list(refused) == [keys[0]] and "is locked by triangles_lock:" in refused[keys[0]]
            assert mine.held == keys[1:]
        finally:
            mine.release()
    finally:
        other.release()
    settings = _settings(db, config, "desk_keys", jobs=1, task_days=3)
    first = backfill(settings)
    assert {t.status for t in first.tasks} == {"done", "empty"}
    again = backfill(settings)
    assert all(t.status == "skipped" for t in again.tasks if t.symbol != GONE)
    assert len(again.tasks) == len(first.tasks)


def test_worker_processes_start_with_their_threads_and_two_malloc_arenas() -> None:
    """glibc's arenas grew a worker's memory with every task it ran: workers start with two."""
    import os

    from triangles_polars.engines import _worker_environment

    before = {name: os.environ.get(name) for name in ("MALLOC_ARENA_MAX", "POLARS_MAX_THREADS")}
    with _worker_environment(1):
        assert os.environ["MALLOC_ARENA_MAX"] == "2" and os.environ["POLARS_MAX_THREADS"] == "1"
    assert {name: os.environ.get(name) for name in before} == before
