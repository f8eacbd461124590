"""The ``ray`` engine on a real Ray cluster of two nodes, against a real PostgreSQL (nothing mocked).

One cluster serves the module (``ray.cluster_utils.Cluster``: a head and one more node, one CPU
each, no dashboard, every process on 127.0.0.1; the first test checks that nothing of it listens
elsewhere). The tests run the engine through the Python API and through the real command:
several symbols and strengths equal separate local runs, a node removed mid-run costs no event
and duplicates none, the password reaches no Ray log, task name or job entrypoint, and a bad
cluster or a database URL the cluster cannot reach is one line with its exit code.

Ray's state API (``ray.util.state.list_tasks``) needs the dashboard, which this cluster does not
run; task names are read from the same task events in the GCS through Ray's global state instead.

**A pytest process of its own.** Ray keeps per-process state and reads its settings when it is
first imported, and pytest's collection of other modules imports it before any fixture here runs:
imported without ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` Ray swaps the loopback address given to
``ray.init`` for this machine's outward address, where the cluster does not listen, and retries
there for many minutes. So in the suite's own process only
:func:`test_ray_module_in_a_process_of_its_own` runs (``tests/conftest.py`` deselects the rest): it
runs this module in a fresh ``pytest`` with :func:`ray_environment` set from the start (Ray's files
under the run's own temp dir, not ``/tmp/ray``; token authentication with a token of the run's
own), bounded in time. ``TRIANGLES_TEST_RAY_IN_PROCESS=1 pytest tests/test_ray.py -k NAME`` runs
tests here directly (for debugging); the cluster fixture then checks the address Ray would dial
and bounds Ray's start, so a Ray that does not come up fails in seconds, with the reason.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import polars as pl
import pytest

from tests.helpers import NQ, Db, Server, assert_one_line_error, run_cli
from triangles_polars.pipeline import backfill
from triangles_polars.synthetic import generate_bars

pytestmark = pytest.mark.ray  # run in a pytest process of its own (see the module's docstring)

REPO = Path(__file__).resolve().parent.parent
IN_PROCESS_VARIABLE = "TRIANGLES_TEST_RAY_IN_PROCESS"  # read by tests/conftest.py too
MODULE_TIMEOUT_S = 600  # the whole module in its own process (4-5 min measured on 2 cores at load 11-16)
HUNG_TEST_DUMP_S = 300  # a test running this long gets every thread's traceback printed
RAY_START_TIMEOUT_S = 60  # connecting to the test cluster takes about a second
LOOPBACK = "127.0.0.1"
STRENGTHS = (3, 5, 8)
# Three series at different price levels: (symbol, seed, price factor).
SERIES = ((NQ, 7, 1.0), ("GLBX.MDP3:ES", 8, 0.25), ("GLBX.MDP3:YM", 9, 2.0))
# The password of test_cli_json_and_no_password_in_ray; its first part is found in any encoding.
SECRET_CORE = "R4y-s3cret"
SECRET = SECRET_CORE + "@pw:%"  # characters that must be percent-encoded in a URL
INSTALL_COMMAND = 'pip install "triangles-polars[ray]"'


@dataclass
class RayCluster:
    """The module's cluster: ``ray`` (connected to it), the ``Cluster``, its extra node's arguments."""

    ray: Any
    cluster: Any
    node: Any
    node_args: dict[str, Any]

    @property
    def address(self) -> str:
        return str(self.cluster.address)

    @property
    def session_dir(self) -> Path:
        return Path(self.cluster.head_node.get_session_dir_path())


def ray_environment(temp_dir: Path) -> dict[str, str]:
    """The environment the module's Ray runs in, set before Ray is imported (Ray reads it then).

    Nodes on 127.0.0.1 only, no usage reports, Ray's own files (``ray_current_cluster``, the local
    Ray's sessions) under ``temp_dir`` rather than the machine-wide ``/tmp/ray``, and token
    authentication with a token of the run's own for every process (the cluster, the drivers, the
    command's local Ray) rather than whatever ``~/.ray/auth_token`` or the caller's ``RAY_AUTH_*`` say.
    """
    (temp_dir / "ray").mkdir(parents=True, exist_ok=True)  # Ray writes there without creating it
    return {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_TMPDIR": str(temp_dir),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    }


def _module_environment(temp_dir: Path, database_url: str) -> dict[str, str]:
    """The module's own process: ours without any Ray address or credentials, plus the Ray settings."""
    inherited = {
        k: v
        for k, v in os.environ.items()
        if k != "RAY_ADDRESS" and not k.startswith(("RAY_AUTH_", "PYTEST_"))
    }
    extra = {IN_PROCESS_VARIABLE: "1", "TRIANGLES_TEST_DATABASE_URL": database_url, "PYTHONFAULTHANDLER": "1"}
    return inherited | ray_environment(temp_dir) | extra


def _outcome_counts(output: str) -> dict[str, int]:
    """pytest's closing line as counts: ``{"passed": 7, "skipped": 1}``."""
    closing = output.strip().splitlines()[-1] if output.strip() else ""
    return {
        word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|errors?|skipped|deselected)", closing)
    }


def test_ray_module_in_a_process_of_its_own(pg: Server, tmp_path_factory: pytest.TempPathFactory) -> None:
    pytest.importorskip("ray", reason="the Ray tests need the ray extra")
    in_process = [name for name, value in globals().items() if name.startswith("test_") and callable(value)]
    in_process.remove("test_ray_module_in_a_process_of_its_own")
    # Short paths: Ray's unix sockets live under them (at most 107 bytes).
    basetemp, ray_tmp = tmp_path_factory.mktemp("rb"), tmp_path_factory.mktemp("rt")
    module = str(Path(__file__).relative_to(REPO))
    command = [
        sys.executable,
        "-m",
        "pytest",
        module,
        "-q",
        "-p",
        "no:cacheprovider",
        f"--basetemp={basetemp}",
    ]
    command += ["-o", f"faulthandler_timeout={HUNG_TEST_DUMP_S}"]
    # The suite's own process group: a Ctrl-C of the suite stops the module too.
    with subprocess.Popen(
        command, cwd=REPO, env=_module_environment(ray_tmp, pg.url),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    ) as proc:  # fmt: skip
        try:
            output, _ = proc.communicate(timeout=MODULE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()  # its Ray's processes follow (Ray's reaper ends a node whose parent died)
            output, _ = proc.communicate()
            pytest.fail(f"the Ray module ran over {MODULE_TIMEOUT_S} s; its output:\n{output[-8000:]}")
    counts = _outcome_counts(output)
    assert proc.returncode == 0, output[-12000:]
    assert counts.get("passed", 0) + counts.get("skipped", 0) == len(in_process), output[-3000:]


def _within(seconds: float, what: str, call: Callable[[], Any]) -> Any:
    """``call()`` in a thread of its own; the test fails after ``seconds`` if it has not returned
    (Ray's own connect retries run for many minutes)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run, name=f"bounded {what}", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        pytest.fail(f"{what} did not return within {seconds:.0f} s", pytrace=False)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _check_dialed_address(ray: Any, address: str) -> None:
    """Ray connects to ``address`` itself, not to another address it puts in its place."""
    from ray._private import services

    dialed = services.canonicalize_bootstrap_address(address)
    if dialed != address:
        pytest.fail(
            f"ray.init would dial {dialed} for the cluster at {address}: Ray was imported before "
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set (it reads it on import) and puts this machine's "
            "address in place of loopback; run the module as the suite does (a process of its own)",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    # Run by hand: the settings before Ray's import (the suite's driver sets them at the process start).
    if "RAY_TMPDIR" not in os.environ and "ray" not in sys.modules:
        for name, value in ray_environment(tmp_path_factory.mktemp("rt")).items():
            os.environ.setdefault(name, value)
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    node_args = {"num_cpus": 1, "node_ip_address": LOOPBACK, "temp_dir": str(tmp_path_factory.mktemp("ray"))}
    cluster = Cluster(initialize_head=True, head_node_args={**node_args, "include_dashboard": False})
    try:
        node = cluster.add_node(**node_args)
        _check_dialed_address(ray, cluster.address)
        logs = Path(cluster.head_node.get_session_dir_path()) / "logs"
        _within(
            RAY_START_TIMEOUT_S,
            f"ray.init to the test cluster at {cluster.address} (Ray's logs: {logs})",
            lambda: ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.ERROR),
        )
        yield RayCluster(ray, cluster, node, node_args)
    finally:
        ray.shutdown()
        cluster.shutdown()


def _listening_beyond_loopback() -> list[str]:
    """TCP ports that this process or its descendants (the cluster) listen on, other than loopback."""
    import psutil

    ours = {os.getpid(), *(p.pid for p in psutil.Process().children(recursive=True))}
    return [
        f"{c.laddr.ip}:{c.laddr.port} (pid {c.pid})"
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
        and c.pid in ours
        and c.laddr.ip.removeprefix("::ffff:") not in (LOOPBACK, "::1")
    ]


def _load_series(db: Db, start: str, end: str) -> None:
    for symbol, seed, factor in SERIES:
        bars = generate_bars(start, end, symbol=symbol, seed=seed)
        db.load(bars.with_columns(pl.col(c) * factor for c in ("open", "high", "low", "close")))


def _nodes(tasks: list[Any]) -> set[str]:
    """The node ids named by the tasks' ``worker`` fields (``IP/node pid N``)."""
    workers = [t["worker"] if isinstance(t, dict) else t.worker for t in tasks]
    return {w.split()[0].split("/")[1] for w in workers}


def _table_exists(db: Db, table: str) -> bool:
    return db.execute("SELECT to_regclass($1) IS NOT NULL", (f"{db.schema}.{table}",))[0][0]


def _no_duplicate_keys(db: Db) -> None:
    rows = db.execute(
        f"SELECT count(*), count(DISTINCT (symbol, strength, c_ts, c_kind)) FROM {db.events_table}"
    )
    assert rows[0][0] == rows[0][1] > 0


# ---------------------------------------------------------------------------- the engine


def test_many_symbols_and_strengths_equal_local_runs_on_both_nodes(ray_cluster: RayCluster, db: Db) -> None:
    assert _listening_beyond_loopback() == []
    _load_series(db, "2025-11-03", "2025-11-14")
    span = {"start": "2025-11-10", "end": "2025-11-13"}
    summary = backfill(db.settings(symbol="GLBX.MDP3:*", strength="3,5,8", task_days=2, engine="ray", **span))
    assert summary.exit_code == 0, [t.error for t in summary.tasks if t.error]
    assert len(summary.tasks) == len(SERIES) * 2
    assert {t.status for t in summary.tasks} == {"done"}
    assert len(_nodes(summary.tasks)) == 2, [t.worker for t in summary.tasks]

    references = []
    for i, (symbol, _, _) in enumerate(SERIES):
        for k in STRENGTHS:
            table = f"ref_{i}_{k}"
            backfill(
                db.settings(symbol=symbol, strength=k, events_table=f"{db.schema}.{table}", jobs=1, **span)
            )
            references.append(db.events(table=table))
    reference = pl.concat(references).sort("symbol", "strength", "confirmed_at", "c_ts", "c_kind")
    events = db.events()
    assert events.height == reference.height == summary.triangles > 0
    assert events.equals(reference)


def _tasks_mid_run(db: Db) -> int:
    """Tasks (by range) with a committed chunk and a strength not finished yet."""
    try:
        rows = db.execute(
            f"SELECT count(DISTINCT r.range_start) FROM {db.schema}.triangles_runs r "
            f"WHERE r.status = 'running' AND EXISTS "
            f"(SELECT 1 FROM {db.schema}.triangles_progress p WHERE p.run_key = r.run_key)"
        )
    except Exception:  # the ledger does not exist before the first chunk
        return 0
    return int(rows[0][0])


def test_node_removed_mid_run_costs_no_event(ray_cluster: RayCluster, db: Db, nq_bars: pl.DataFrame) -> None:
    db.load(nq_bars)
    span = {"start": "2025-11-03", "end": "2025-11-17"}
    removed, finished = threading.Event(), threading.Event()

    def remove_node_when_both_write() -> None:
        # Two tasks mid-run on a cluster of two one-CPU nodes: one of them runs on the extra node.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not finished.is_set():
            if _tasks_mid_run(db) >= 2:
                ray_cluster.cluster.remove_node(ray_cluster.node)
                removed.set()
                return
            time.sleep(0.02)

    remover = threading.Thread(target=remove_node_when_both_write, daemon=True)
    remover.start()
    try:
        summary = backfill(db.settings(strength="3,5,8", task_days=2, chunk_events=20, engine="ray", **span))
    finally:
        finished.set()
        remover.join(timeout=60)
        if removed.is_set():  # a fresh node in its place, for the tests that follow
            ray_cluster.node = ray_cluster.cluster.add_node(**ray_cluster.node_args)
            ray_cluster.cluster.wait_for_nodes()

    assert removed.is_set(), "no moment with two tasks mid-run: the node was not removed"
    assert summary.exit_code == 0, [t.error for t in summary.tasks]
    assert {t.status for t in summary.tasks} == {"done"}
    rerun = [t for t in summary.tasks if t.retries > 0]
    assert rerun, [(t.worker, t.retries) for t in summary.tasks]
    assert summary.retries >= len(rerun)
    assert any("rerun 1 time(s) by Ray" in w for w in summary.warnings), summary.warnings
    _no_duplicate_keys(db)

    clean = backfill(db.settings(strength="3,5,8", events_table=f"{db.schema}.clean", jobs=1, **span))
    assert db.events().equals(db.events(table="clean"))
    assert (summary.triangles, summary.bars_processed) == (clean.triangles, clean.bars_processed)


def _with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    user, _, host = parts.netloc.rpartition("@")
    user = user.split(":", 1)[0] or "postgres"
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}"))


def test_cli_json_and_no_password_in_ray(ray_cluster: RayCluster, db: Db, nq_bars: pl.DataFrame) -> None:
    if urlsplit(db.url).password:
        pytest.skip("the test server's URL has a password of its own; this test gives one it knows")
    db.load(nq_bars)
    url = _with_password(db.url, SECRET)  # the test servers trust local connections: any password works
    tables = ("--bars-table", db.bars_table, "--events-table", db.events_table)
    result = run_cli(
        "backfill", NQ, "2025-11-03", "2025-11-14", "3,5", "--database-url", url, *tables,
        "--engine", "ray", "--task-days", "3", "--json",
        env={"RAY_ADDRESS": ray_cluster.address},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert len(payload["tasks"]) == 4
    assert {t["status"] for t in payload["tasks"]} == {"done"}
    assert len(_nodes(payload["tasks"])) == 2
    assert payload["triangles"] == sum(
        t["triangles_by_strength"][k] for t in payload["tasks"] for k in ("3", "5")
    )
    assert payload["triangles"] == db.events().height > 0
    secret = SECRET_CORE.encode()
    assert secret not in (result.stdout + result.stderr).encode()

    # Every file Ray wrote for the session (logs of every process, events, job info).
    files = [p for p in ray_cluster.session_dir.rglob("*") if p.is_file() and not p.is_symlink()]
    assert any(p.name.startswith("raylet") for p in files)
    assert [p for p in files if secret in p.read_bytes()] == []

    # Task names (and everything else Ray recorded about each task), from the GCS's task events.
    from ray._private.state import state

    time.sleep(1.5)  # task events reach the GCS in batches (every second)
    task_events = b"".join(state._connect_and_get_accessor().get_task_events())
    assert b"triangles GLBX.MDP3:NQ 2025-11-03T00:00..2025-11-06T00:00 k=3,5" in task_events
    assert secret not in task_events

    # The job's entrypoint (the driver's command line, shown by the dashboard) is masked.
    entrypoints = [job.get("Entrypoint", "") for job in ray_cluster.ray._private.state.jobs()]
    ours = [e for e in entrypoints if "--database-url" in e]
    assert ours and "***" in ours[0], entrypoints
    assert not any(SECRET_CORE in e for e in entrypoints)


def test_local_ray_for_the_run_on_loopback_only_ctrl_c_stops_it_and_the_same_command_resumes(
    ray_cluster: RayCluster, db: Db, nq_bars: pl.DataFrame
) -> None:
    import psutil

    db.load(nq_bars)
    span = ("2025-11-03", "2025-11-08")
    tables = ("--bars-table", db.bars_table, "--events-table", db.events_table)
    args = ["backfill", NQ, *span, "3,5,8", "--database-url", db.url, *tables]
    args += ["--engine", "ray", "--task-days", "2", "--chunk-events", "20", "--json"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"TERM": "dumb"}
    listening: set[tuple[str, int]] = set()
    spawned: set[int] = set()
    with subprocess.Popen(
        [sys.executable, "-m", "triangles_polars.cli", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    ) as proc:  # fmt: skip
        deadline = time.monotonic() + 90
        while _tasks_mid_run(db) == 0 and proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(psutil.Error):
                spawned.update(p.pid for p in psutil.Process(proc.pid).children(recursive=True))
            listening.update(
                (c.laddr.ip.removeprefix("::ffff:"), c.pid)
                for c in psutil.net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN and c.pid in spawned
            )
            time.sleep(0.1)
        interrupted = time.monotonic()
        proc.send_signal(signal.SIGINT)  # a chunk is committed: tasks are running
        stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert time.monotonic() - interrupted < 5  # the local Ray's own shutdown (~1.5 s)
    assert "committed" in stderr and stdout == ""
    assert listening, "the local Ray was never seen listening"
    assert {ip for ip, _ in listening} <= {LOOPBACK, "::1"}, listening
    # Stopped with the run: none of its processes is left. Ray's agents leave on their own once they
    # see their raylet gone (five checks 0.4 s apart): seconds, more on a loaded machine.
    deadline = time.monotonic() + 30
    while (left := [p for p in spawned if psutil.pid_exists(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [psutil.Process(p).name() for p in left if psutil.pid_exists(p)] == []
    _no_duplicate_keys(db)

    again = run_cli(*args, env={"RAY_ADDRESS": ray_cluster.address})  # resumes, on the cluster
    assert again.returncode == 0, again.stderr
    assert {t["status"] for t in json.loads(again.stdout)["tasks"]} <= {"done", "skipped"}
    _no_duplicate_keys(db)
    backfill(
        db.settings(start=span[0], end=span[1], strength="3,5,8", events_table=f"{db.schema}.clean", jobs=1)
    )
    assert db.events().equals(db.events(table="clean"))


# ---------------------------------------------------------------------------- bad input


def _backfill_cli(db: Db, *extra: str, env: dict[str, str] | None = None) -> Any:
    tables = ("--bars-table", db.bars_table, "--events-table", db.events_table)
    return run_cli(
        "backfill", NQ, "2025-11-03", "2025-11-07", "--database-url", db.url, *tables, "--engine", "ray",
        *extra, env=env,
    )  # fmt: skip


def _nothing_written(db: Db) -> None:
    assert not _table_exists(db, "triangle_events")
    assert not _table_exists(db, "triangles_runs")


def test_unreachable_cluster_is_exit_3_within_seconds(db: Db, nq_bars: pl.DataFrame) -> None:
    db.load(nq_bars)
    started = time.monotonic()
    result = _backfill_cli(db, "--ray-address", f"{LOOPBACK}:1")
    assert time.monotonic() - started < 10
    assert_one_line_error(result, 3, "ray cluster", f"{LOOPBACK}:1", "unreachable")
    _nothing_written(db)


def test_socket_url_with_remote_cluster_is_exit_2_before_any_probe(db: Db, nq_bars: pl.DataFrame) -> None:
    if urlsplit(db.url).hostname not in (None, "localhost", LOOPBACK) and "host=/" not in db.url:
        pytest.skip("the test server's URL is reachable from other machines")
    db.load(nq_bars)
    # 10.255.255.1 is never reached: the URL is refused before the cluster is probed.
    started = time.monotonic()
    result = _backfill_cli(db, "--ray-address", "10.255.255.1:6379")
    assert time.monotonic() - started < 10
    assert_one_line_error(result, 2, "only this machine can reach", "10.255.255.1:6379")
    _nothing_written(db)


def test_ray_not_installed_is_exit_2_with_the_install_command(
    db: Db, nq_bars: pl.DataFrame, tmp_path: Path
) -> None:
    # A Python path where `import ray` fails as it does where Ray is not installed.
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    db.load(nq_bars)
    result = _backfill_cli(db, env={"PYTHONPATH": str(tmp_path), "RAY_ADDRESS": ""})
    assert_one_line_error(result, 2, INSTALL_COMMAND)
    _nothing_written(db)
