"""Signals, for every command: SIGINT and SIGTERM stop within a second (``docs/contract.md#signals``).

The command line runs each command in a thread of its own (the *body*); the main thread only
waits for it and handles signals. That matters: a signal may be delivered to any thread of the
process (connectorx, Polars and the driver threads all run), and Python runs its handlers only in
the main thread, and only when that thread runs bytecode. A main thread blocked in a wait without
a timeout (``concurrent.futures.wait`` on worker processes, ``queue.get`` on the reader) therefore
ignored Ctrl-C until the wait ended by itself, minutes later on a long backfill. Here the main
thread wakes every 50 ms, so the handler always runs at once.

A first SIGINT or SIGTERM:

* sets :data:`STOP`, which the work checks between batches and chunks (the reader and writer
  threads, the task loop, the worker pool, ``--follow``'s cycles): no new chunk starts, the one in
  flight commits;
* raises :class:`Stopped` (a :class:`KeyboardInterrupt`) in the body, unless the body said it
  checks :data:`STOP` itself (``--follow``'s cycles, see :func:`cooperative`), so that a body
  waiting somewhere else (Ray, a lock) stops too;
* arms a deadline (:data:`GRACE_S`): a body still running then is ended — worker processes are
  killed, the process exits. Every chunk is one transaction, so the chunk in flight rolls back
  whole on the server when its connection closes.

A second SIGINT exits at once. The exit code is 130 for SIGINT, 143 for SIGTERM, and 0 for
SIGTERM when the command is a service being stopped (``update --follow``, see :func:`service`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

#: Set by the first SIGINT or SIGTERM; the work checks it between batches, chunks and cycles.
STOP = threading.Event()
#: Seconds after the signal that the work has to stop by itself before the process is ended.
GRACE_S = 0.8
_TICK_S = 0.05


class Stopped(KeyboardInterrupt):
    """The run was asked to stop (SIGINT or SIGTERM); committed chunks stay."""


@dataclass
class _State:
    signum: int | None = None
    deadline: float | None = None
    service: bool = False
    cooperative: bool = False
    body: threading.Thread | None = None
    committed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    report_to: Any = None  # a multiprocessing.Value a worker process adds its commits to
    counters: list[Any] = field(default_factory=list)  # the worker processes' Values (driver)
    children: list[Callable[[], list[int]]] = field(default_factory=list)


_STATE = _State()


# ---------------------------------------------------------------------------- what the work calls


def stop_requested() -> bool:
    """Whether a stop was requested (cheap: call it between batches, chunks, cycles)."""
    return STOP.is_set()


def check() -> None:
    """Raise :class:`Stopped` if a stop was requested."""
    if STOP.is_set():
        raise Stopped()


def note_commit(n: int = 1) -> None:
    """Count committed chunks (or ``--follow`` cycles), for the "N chunks committed" line."""
    with _STATE.lock:
        _STATE.committed += n
    shared = _STATE.report_to
    if shared is not None:
        with shared.get_lock():
            shared.value += n


def committed() -> int:
    """Chunks committed by this command so far, its worker processes included."""
    return _STATE.committed + sum(int(c.value) for c in _STATE.counters)


def report_commits_to(counter: Any) -> None:
    """In a worker process: also count commits in ``counter`` (a ``multiprocessing.Value``)."""
    _STATE.report_to = counter


def watch_counter(counter: Any) -> None:
    """In the driver: add a worker pool's ``counter`` to :func:`committed`."""
    _STATE.counters.append(counter)


@contextlib.contextmanager
def children(pids: Callable[[], list[int]]) -> Iterator[None]:
    """Worker processes to kill if the process has to be ended (their chunks then roll back)."""
    _STATE.children.append(pids)
    try:
        yield
    finally:
        _STATE.children.remove(pids)


@contextlib.contextmanager
def cooperative() -> Iterator[None]:
    """The block checks :data:`STOP` itself: a signal sets it and raises nothing in the body."""
    before, _STATE.cooperative = _STATE.cooperative, True
    try:
        yield
    finally:
        _STATE.cooperative = before


def service() -> None:
    """The command is a service (``--follow``): SIGTERM is its normal stop, exit 0."""
    _STATE.service = True


def exit_code() -> int:
    """130 after SIGINT; 143 after SIGTERM, or 0 for a service; 130 when no signal came (Ctrl-C
    caught by a library in the body)."""
    if _STATE.signum == signal.SIGTERM:
        return 0 if _STATE.service else 143
    return 130


def stopping_message() -> str:
    """The line printed when a command stops: what was committed, and how to go on."""
    n = committed()
    plural = "" if n == 1 else "s"
    return f"stopping… {n} chunk{plural} committed; the same command again resumes after them"


def exit_fast(code: int) -> None:
    """Exit after a stop without the interpreter's slow teardown (every thread is done with).

    Worker processes are not waited for (they exit by themselves once their chunk in flight
    ended); multiprocessing's finalizers still run, so no semaphore is left to its tracker.
    """
    if "multiprocessing.util" in sys.modules:
        with contextlib.suppress(Exception):
            sys.modules["multiprocessing.util"]._run_finalizers()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    os._exit(code)


def exit_done(code: int) -> None:
    """Exit after a command that ran to its end: the ``atexit`` handlers run and the buffers are
    flushed, but the interpreter's teardown of Polars, PyArrow and the drivers (0.1-0.2 s, no
    use to anyone) is skipped."""
    import atexit

    atexit._run_exitfuncs()
    exit_fast(code)


def request_stop(signum: int = signal.SIGINT) -> None:
    """Ask the work to stop as a signal would (without the deadline)."""
    if _STATE.signum is None:
        _STATE.signum = signum
    STOP.set()


def reset() -> None:
    """Forget a stop and the counts (for a new command in the same process)."""
    STOP.clear()
    _STATE.signum = _STATE.deadline = None
    _STATE.service = False
    _STATE.committed = 0
    _STATE.counters.clear()


# ---------------------------------------------------------------------------- the main thread


def run_main(body: Callable[[], Any]) -> Any:
    """Run ``body`` in a thread, handling SIGINT and SIGTERM in this (the main) thread.

    Returns what ``body`` returned, or raises what it raised. A body still running
    :data:`GRACE_S` after a signal is not waited for: the process exits with :func:`exit_code`.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = body()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="triangles-command", daemon=True)
    _STATE.body = thread
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        thread.start()
        while thread.is_alive():
            thread.join(_TICK_S)
            if _STATE.deadline is not None and time.monotonic() >= _STATE.deadline and thread.is_alive():
                _exit_now(exit_code(), stopping_message() + " (the chunk in flight rolled back)")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _STATE.body = None
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")


def _on_signal(signum: int, frame: Any) -> None:
    if _STATE.deadline is not None:  # a second signal
        if signum == signal.SIGINT:
            _exit_now(130, "interrupted again: exiting at once")
        return
    _STATE.signum = signum
    _STATE.deadline = time.monotonic() + GRACE_S
    STOP.set()
    body = _STATE.body
    if not _STATE.cooperative and body is not None and body.is_alive() and body.ident is not None:
        # Like Python's own KeyboardInterrupt, but in the thread that runs the command.
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(body.ident), ctypes.py_object(Stopped))


def _exit_now(code: int, message: str) -> None:
    """End the process now: worker processes are killed, nothing is waited for."""
    for pids in list(_STATE.children):
        for pid in pids():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    with contextlib.suppress(Exception):
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
    os._exit(code)


# ---------------------------------------------------------------------------- worker processes


def install_worker_handlers(on_signal: Callable[[int, Any], None]) -> None:
    """In a worker process: SIGINT and SIGTERM set :data:`STOP`, then call ``on_signal``."""

    def handler(signum: int, frame: Any) -> None:
        if _STATE.signum is None:
            _STATE.signum = signum
        STOP.set()
        on_signal(signum, frame)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


__all__ = [
    "GRACE_S",
    "STOP",
    "Stopped",
    "check",
    "committed",
    "cooperative",
    "exit_code",
    "exit_done",
    "exit_fast",
    "note_commit",
    "request_stop",
    "reset",
    "run_main",
    "service",
    "stop_requested",
    "stopping_message",
]
