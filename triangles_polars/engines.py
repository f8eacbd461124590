"""Engines: where a run's tasks execute (``docs/contract.md#engines``).

``local`` runs them in this process (``--jobs 1``), or in this process and up to N − 1 worker
processes (``--jobs N``), started once the run is long enough to be worth them; each worker keeps
its database connections across its tasks. ``ray`` hands them to a Ray cluster
(:mod:`triangles_polars.ray_engine`). Every engine returns one :class:`TaskResult` per task: a
task's failure is its result, never the run's exception.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from triangles_polars.allocator import MALLOC_ARENAS, arena_limit_chosen
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
    return run_in_workers(url, config, tasks, progress, jobs, on_chunk)


def run_in_process(
    url: str, config: RunConfig, tasks: list[Task], progress: Progress, on_chunk: ChunkCallback | None = None
) -> list[TaskResult]:
    """``--jobs 1``: one task after another in this process, sharing its connections."""
    local = _Local(url, config, progress, on_chunk)
    try:
        return [local.run(task, tasks[i + 1] if i + 1 < len(tasks) else None) for i, task in enumerate(tasks)]
    finally:
        local.close()


class _Local:
    """Runs tasks in this process, one after another; the next task's bars are read while the
    current one runs (after its own)."""

    def __init__(
        self, url: str, config: RunConfig, progress: Progress, on_chunk: ChunkCallback | None
    ) -> None:
        from triangles_polars.db import SessionPool

        self.url, self.config, self.progress, self.on_chunk = url, config, progress, on_chunk
        self.sessions = SessionPool(url)
        self.ahead: tuple[Task, Any] | None = None  # (the next task, its Prefetch)

    def run(self, task: Task, following: Task | None) -> TaskResult:
        from triangles_polars.pipeline import Prefetch, execute_task

        ahead, self.ahead = self.ahead, None
        current = ahead[1] if ahead and ahead[0] is task else None
        if ahead and current is None:
            ahead[1].close()
        current = current or Prefetch(self.url, self.config, task, self.sessions, self.progress)
        if following is not None:
            prefetch = Prefetch(self.url, self.config, following, self.sessions, self.progress, after=current)
            self.ahead = (following, prefetch)
        try:
            result = execute_task(
                self.url, self.config, task, self.sessions, self.progress, self.on_chunk, opener=current.open
            )
        finally:
            current.close()  # opened for a task that did not run (a stop): its reader stops
        self.progress.task_done(result, task_span_s(task))
        return result

    def close(self) -> None:
        if self.ahead is not None:
            self.ahead[1].close()
            self.ahead = None
        self.sessions.close()


def run_in_workers(
    url: str,
    config: RunConfig,
    tasks: list[Task],
    progress: Progress,
    jobs: int,
    on_chunk: ChunkCallback | None = None,
) -> list[TaskResult]:
    """``--jobs N``: this process and up to N − 1 worker processes take the tasks.

    A worker costs about a second of CPU to start (an interpreter, Polars, the drivers, its
    connections), which a short run would pay for nothing on a machine of few cores: this process
    runs tasks from the start, and the workers are started once the run has lasted
    :data:`WORKER_START_S` with at least as much work still queued; each takes tasks once it is
    up. A daily update ends before it would need them; a long run has N processes at work.
    Ctrl-C reaches every worker, whose chunk in flight ends whole.
    """
    from triangles_polars import signals

    results: list[TaskResult] = []
    context = multiprocessing.get_context("spawn")  # no fork of a process with driver threads
    commits = context.Value("q", 0)  # the workers' committed chunks, for the "stopping…" line
    signals.watch_counter(commits)
    executor = ProcessPoolExecutor(
        jobs - 1, mp_context=context, initializer=_start_worker, initargs=(url, commits)
    )

    def pids() -> list[int]:
        return [process.pid for process in list((getattr(executor, "_processes", None) or {}).values())]

    local = _Local(url, config, progress, on_chunk)
    try:
        # Workers start during the run (on their first submit) and inherit the environment then.
        with _worker_environment(max(1, (os.cpu_count() or 1) // jobs)), signals.children(pids):
            return _share(executor, jobs - 1, local, config, tasks, progress, results)
    finally:
        local.close()


def _share(
    executor: ProcessPoolExecutor,
    workers: int,
    local: _Local,
    config: RunConfig,
    tasks: list[Task],
    progress: Progress,
    results: list[TaskResult],
) -> list[TaskResult]:
    """This process takes tasks from the front of the queue while a feeder thread hands tasks from
    its back to each worker that has started and is idle; results in completion order. This
    process reads its next task ahead only while more tasks are left than there are workers (a
    few long tasks are for the workers to share)."""
    from triangles_polars import signals

    feeder = _Feeder(executor, workers, config, deque(tasks), progress, results)
    feeder.start()
    mine: Task | None = None  # the task this process runs next (its bars read ahead)
    try:
        while True:
            signals.check()  # a stop request is seen at once (docs/contract.md#signals)
            with feeder.lock:
                mine = mine or (feeder.queue.popleft() if feeder.queue else None)
                following = feeder.queue.popleft() if len(feeder.queue) > feeder.workers else None
            if mine is None:
                break
            result = local.run(mine, following)
            with feeder.lock:
                results.append(result)
            mine = following
        while not feeder.done.wait(0.05):  # the workers' last tasks
            signals.check()
        if feeder.error is not None:
            raise feeder.error
    except KeyboardInterrupt:
        feeder.stop.set()
        in_flight = [f for f in feeder.running if f.running()]
        for process in list(getattr(executor, "_processes", {}).values()):
            # A started worker stops its chunk in flight; one still starting has none (and would
            # print a KeyboardInterrupt from its imports): it is ended.
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGINT if process.pid in feeder.started else signal.SIGKILL)
        executor.shutdown(wait=False, cancel_futures=True)
        # The chunks in flight commit (or roll back) whole; the workers then exit by themselves.
        wait(in_flight, timeout=signals.GRACE_S / 2)
        raise
    finally:
        feeder.stop.set()
    if feeder.starting:  # workers still starting were not needed: they have nothing to finish
        for process in list(getattr(executor, "_processes", {}).values()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
        executor.shutdown(wait=False, cancel_futures=True)
    else:
        executor.shutdown(wait=True)
    return results


#: About what a worker process takes to start: the workers are started once the run has lasted
#: this long and the work still queued would take this process at least as long again.
WORKER_START_S = 1.0


class _Feeder(threading.Thread):
    """Starts the workers when the run is long enough to be worth them, hands queued tasks (from
    the back) to each worker that has started and is idle, and collects their results; ``done``
    once the queue is empty and no worker has a task."""

    def __init__(
        self,
        executor: ProcessPoolExecutor,
        workers: int,
        config: RunConfig,
        queue: deque[Task],
        progress: Progress,
        results: list[TaskResult],
    ) -> None:
        super().__init__(name="triangles-feeder", daemon=True)
        self.executor, self.workers, self.config = executor, workers, config
        self.queue, self.progress, self.results = queue, progress, results
        self.began = time.monotonic()
        self.starting: list[Future[int]] | None = None  # None until the workers are started
        self.lock = threading.Lock()
        self.running: dict[Future[TaskResult], Task] = {}
        self.started: set[int] = set()  # the pids of the workers that have started
        self.idle = 0
        self.done, self.stop = threading.Event(), threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set() and not self._step():
                pending = [*self.running, *(self.starting or ())]
                if pending:
                    wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
                else:
                    self.stop.wait(0.05)
        except BaseException as exc:  # a worker died (BrokenProcessPool): the run's error
            self.error = exc
        self.done.set()

    def _step(self) -> bool:
        """Collect what finished, hand out tasks; True once nothing is queued or running."""
        from triangles_polars import signals

        with self.lock:
            if self.starting is None and self._worth_starting():
                self.starting = [self.executor.submit(_ready) for _ in range(self.workers)]
        for future in [f for f in self.starting or () if f.done()]:
            self.starting.remove(future)
            if future.exception() is None:  # a worker that failed to start takes nothing
                self.started.add(future.result())
                self.idle += 1
        for future in [f for f in self.running if f.done()]:
            task = self.running.pop(future)
            result = future.result()
            self.progress.task_done(result, task_span_s(task))
            with self.lock:
                self.results.append(result)
            self.idle += 1
        with self.lock:
            while self.idle and self.queue and not self.stop.is_set() and not signals.stop_requested():
                task = self.queue.pop()
                self.running[self.executor.submit(_work, self.config, task)] = task
                self.idle -= 1
            return not self.queue and not self.running

    def _worth_starting(self) -> bool:
        """Whether the run has lasted a worker's start and has as much work queued (estimated from
        the tasks this process finished so far: none yet means long tasks)."""
        elapsed = time.monotonic() - self.began
        if not self.queue or self.stop.is_set() or elapsed < WORKER_START_S:
            return False
        finished = len(self.results)
        return not finished or elapsed / finished * len(self.queue) >= WORKER_START_S


@contextlib.contextmanager
def _worker_environment(threads: int) -> Iterator[None]:
    """Workers inherit the environment at start: give each its share of Polars' threads, and
    glibc's malloc its arena limit from the first allocation on (:mod:`triangles_polars.allocator`;
    the console script capped its own process before importing Polars), unless the environment
    chose one."""
    wanted = {"POLARS_MAX_THREADS": str(threads)}
    if not arena_limit_chosen():
        wanted["MALLOC_ARENA_MAX"] = str(MALLOC_ARENAS)
    before = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


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


def _ready() -> int:
    """Nothing: its result says that a worker has started (its initializer ran)."""
    return os.getpid()


def _work(config: RunConfig, task: Task) -> TaskResult:
    from triangles_polars.pipeline import execute_task

    _WORKER["busy"] = True
    try:
        result = execute_task(_WORKER["url"], config, task, _WORKER["sessions"], worker=f"pid {os.getpid()}")
    finally:
        _WORKER["busy"] = False
    result.__dict__.pop("exception", None)  # the message and code travel; the object need not
    return result
