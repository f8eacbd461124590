"""Engines: where a run's tasks execute (``docs/contract.md#engines``).

``local`` runs them in this process (``--jobs 1``) or in ``--jobs N`` worker processes; each
worker keeps its database connections across its tasks. ``ray`` hands them to a Ray cluster
(:mod:`triangles_polars.ray_engine`). Every engine returns one :class:`TaskResult` per task: a
task's failure is its result, never the run's exception.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from triangles_polars.settings import BackfillSettings, RunConfig, Task
from triangles_polars.summary import Progress, TaskResult

ChunkCallback = Callable[[Any, bool], None]


def task_span_s(task: Task) -> float:
    """A task's bar time, in seconds (what the progress bar counts)."""
    return (task.time_range.end_exclusive - task.time_range.anchor).total_seconds()


def run_tasks(
    url: str,
    settings: BackfillSettings,
    config: RunConfig,
    tasks: list[Task],
    progress: Progress,
    on_chunk: ChunkCallback | None = None,
) -> list[TaskResult]:
    """Run every task on the engine the settings name; results in completion order."""
    from triangles_polars.planning import worker_count

    progress.tasks_planned(len(tasks), sum(task_span_s(t) for t in tasks))
    if not tasks:
        return []
    if settings.engine == "ray":
        from triangles_polars.ray_engine import run_on_ray

        return run_on_ray(url, settings, config, tasks, progress)
    jobs = worker_count(settings.jobs, len(tasks))
    if jobs == 1:
        return run_in_process(url, config, tasks, progress, on_chunk)
    return run_in_workers(url, config, tasks, progress, jobs)


def run_in_process(
    url: str, config: RunConfig, tasks: list[Task], progress: Progress, on_chunk: ChunkCallback | None = None
) -> list[TaskResult]:
    """``--jobs 1``: one task after another in this process, sharing its connections."""
    from triangles_polars.db import SessionPool
    from triangles_polars.pipeline import Prefetch, execute_task

    sessions = SessionPool(url)
    results = []
    ahead: Prefetch | None = None
    current: Prefetch | None = None
    try:
        for i, task in enumerate(tasks):
            current, ahead = ahead or Prefetch(url, config, task, sessions, progress), None
            if i + 1 < len(tasks):  # the next task's bars are read while this one runs (after its own)
                ahead = Prefetch(url, config, tasks[i + 1], sessions, progress, after=current)
            result = execute_task(url, config, task, sessions, progress, on_chunk, opener=current.open)
            progress.task_done(result, task_span_s(task))
            results.append(result)
    finally:
        for unused in (current, ahead):  # opened for a task that did not run (a stop, an error)
            if unused is not None:
                unused.close()
        sessions.close()
    return results


def run_in_workers(
    url: str, config: RunConfig, tasks: list[Task], progress: Progress, jobs: int
) -> list[TaskResult]:
    """``--jobs N``: N worker processes; Ctrl-C reaches every worker, whose chunk in flight ends whole."""
    from triangles_polars import signals

    results: list[TaskResult] = []
    context = multiprocessing.get_context("spawn")  # no fork of a process with driver threads
    commits = context.Value("q", 0)  # the workers' committed chunks, for the "stopping…" line
    signals.watch_counter(commits)
    with _polars_threads(max(1, (os.cpu_count() or 1) // jobs)):
        executor = ProcessPoolExecutor(
            jobs, mp_context=context, initializer=_start_worker, initargs=(url, commits)
        )

    def pids() -> list[int]:
        return [process.pid for process in list((getattr(executor, "_processes", None) or {}).values())]

    with signals.children(pids):  # killed if the process has to end before they stop
        return _collect(executor, config, tasks, progress, results)


def _collect(
    executor: ProcessPoolExecutor,
    config: RunConfig,
    tasks: list[Task],
    progress: Progress,
    results: list[TaskResult],
) -> list[TaskResult]:
    from triangles_polars import signals

    try:
        pending: dict[Future[TaskResult], Task] = {executor.submit(_work, config, t): t for t in tasks}
        while pending:
            # Never wait for good: a stop request must be seen at once (docs/contract.md#signals).
            done, _ = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
            signals.check()
            for future in done:
                task = pending.pop(future)
                result = future.result()
                progress.task_done(result, task_span_s(task))
                results.append(result)
    except KeyboardInterrupt:
        running = [f for f in pending if f.running()]
        for process in list(getattr(executor, "_processes", {}).values()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGINT)
        executor.shutdown(wait=False, cancel_futures=True)
        # The chunks in flight commit (or roll back) whole; the workers then exit by themselves.
        wait(running, timeout=signals.GRACE_S / 2)
        raise
    executor.shutdown(wait=True)
    return results


@contextlib.contextmanager
def _polars_threads(threads: int) -> Iterator[None]:
    """Workers inherit the environment at start: give each its share of Polars' threads."""
    before = os.environ.get("POLARS_MAX_THREADS")
    os.environ["POLARS_MAX_THREADS"] = str(threads)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("POLARS_MAX_THREADS", None)
        else:
            os.environ["POLARS_MAX_THREADS"] = before


# ---------------------------------------------------------------------------- inside a worker process

_WORKER: dict[str, Any] = {}


def _start_worker(url: str, commits: Any = None) -> None:
    """Worker start-up: one session pool for all its tasks; Ctrl-C interrupts a running task only.

    SIGTERM (a service manager stops the whole group) stops a worker the way SIGINT does.
    """
    from triangles_polars import signals
    from triangles_polars.db import SessionPool

    _WORKER.update(url=url, sessions=SessionPool(url), busy=False, interrupted=False)
    atexit.register(_WORKER["sessions"].close)  # not left to the garbage collector at exit
    signals.install_worker_handlers(_on_sigint)
    if commits is not None:
        signals.report_commits_to(commits)


def _on_sigint(signum: int, frame: Any) -> None:
    # The terminal and the driver may both send it: the first one stops the task, the rest wait.
    if _WORKER.get("busy") and not _WORKER.get("interrupted"):
        _WORKER["interrupted"] = True
        raise KeyboardInterrupt


def _work(config: RunConfig, task: Task) -> TaskResult:
    from triangles_polars.pipeline import execute_task

    _WORKER["busy"] = True
    try:
        result = execute_task(_WORKER["url"], config, task, _WORKER["sessions"], worker=f"pid {os.getpid()}")
    finally:
        _WORKER["busy"] = False
    result.__dict__.pop("exception", None)  # the message and code travel; the object need not
    return result
