"""The ``ray`` engine: a run's tasks as Ray tasks on a Ray cluster (``docs/contract.md#engines``).

:func:`run_on_ray` is what :func:`triangles_polars.engines.run_tasks` calls for ``--engine ray``.

* **Cluster.** ``--ray-address`` (else ``RAY_ADDRESS``) names an existing cluster: it is probed
  (a TCP connect, :data:`PROBE_TIMEOUT_S`) before Ray connects, so an unreachable one is
  :class:`ClusterUnreachable` (exit 3) in seconds. Without an address a local Ray is started for
  the run (on 127.0.0.1 only, no dashboard, a small object store) and stopped after it. A Ray
  already initialised in this process is used as it is and left running.
* **Tasks.** One Ray task per task, ``num_cpus=1``; Ray reruns a task whose worker or node died
  up to ``--max-task-retries`` times (application errors are not retried: a task's failure is its
  result). A rerun resumes after the chunks its earlier attempt committed (the run ledger); its
  ``retries`` count the reruns and a warning names them. At most ``--jobs`` tasks (default: this
  machine's cores, at most the number of tasks) are in flight, so the connection budget checked
  by the planner holds; each worker keeps its database sessions across consecutive tasks and
  closes them after :data:`IDLE_CLOSE_S` without one.
* **Stopping.** A stop (Ctrl-C, SIGTERM: :mod:`triangles_polars.signals`) re-raises at once and
  the driver leaves Ray: a local Ray started for the run is shut down, and a cluster ends the
  job's tasks when its driver goes. A task's chunk in flight then rolls back whole (its
  transaction dies with its connection); what was committed stays, and the same command resumes
  after it. No ``ray.cancel``: cancelling a task whose reply is on its way crashes Ray's driver
  (a ``RAY_CHECK`` in its task manager, seen on Ray 2.60 under load), so Ctrl-C could end with a
  Ray crash instead of exit 130. The processes of the run's own local Ray are the command's
  children, killed if it must end at once.
* **The password.** The database URL goes into the object store once (``ray.put``); tasks get an
  object reference, never the URL, as an argument. Task names hold the symbol and range only,
  the runtime environment only ``POLARS_MAX_THREADS``, the job's recorded entrypoint (the
  driver's command line) is masked, and a local Ray does not inherit ``TRIANGLES_DATABASE_URL`` /
  ``DATABASE_URL``. Nodes import this package themselves: it must be installed on every node.
* **Where the database is.** Every node connects to the database itself, so a URL only this
  machine can reach (a unix socket, as the embedded default's, or a loopback host) with a cluster
  that has nodes elsewhere is :class:`~triangles_polars.errors.BadInput` (exit 2).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from triangles_polars.errors import BadInput, DatabaseUnavailable, TrianglesError
from triangles_polars.masking import mask_text, redact
from triangles_polars.settings import BackfillSettings, RunConfig, Task
from triangles_polars.summary import Progress, TaskResult

INSTALL_COMMAND = 'pip install "triangles-polars[ray]"'
PROBE_TIMEOUT_S = 3.0
LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024
DEFAULT_GCS_PORT = 6379
DEFAULT_CLIENT_PORT = 10001
IDLE_CLOSE_S = 2.0  # a worker closes its database sessions after this long without a task
WAIT_TICK_S = 0.25  # the driver's wait for results wakes this often (Ctrl-C is seen then)
MAX_ERROR_CHARS = 300

# Environment set before Ray is imported and started: nodes bind 127.0.0.1 only, no usage reports.
RAY_ENVIRONMENT = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
# The product's own URL variables: a local Ray's processes need not inherit them (tasks get the URL by reference).
URL_VARIABLES = ("TRIANGLES_DATABASE_URL", "DATABASE_URL")


class ClusterUnreachable(TrianglesError):
    """The Ray cluster at ``--ray-address`` cannot be reached, or refuses us (exit 3)."""

    exit_code = 3


# ---------------------------------------------------------------------------- the driver


def run_on_ray(
    url: str, settings: BackfillSettings, config: RunConfig, tasks: list[Task], progress: Progress
) -> list[TaskResult]:
    """Run every task as a Ray task; one :class:`TaskResult` per task, in completion order.

    A task that Ray could not finish (its retries ran out, its worker crashed, it raised) is a
    ``failed`` result with a masked one-line error. Ctrl-C re-raises :class:`KeyboardInterrupt`;
    leaving Ray ends the tasks in flight (each chunk in flight rolls back whole).
    """
    from triangles_polars import signals
    from triangles_polars.engines import task_span_s
    from triangles_polars.planning import worker_count

    if not tasks:
        return []
    jobs = worker_count(settings.jobs, len(tasks))
    with (
        ray_session(url, settings, jobs) as (ray, cpus, own),
        signals.children(lambda: _local_pids(ray, own)),
    ):
        options = {
            "num_cpus": 1,
            "max_retries": settings.max_task_retries,
            "retry_exceptions": False,
            "runtime_env": {"env_vars": {"POLARS_MAX_THREADS": str(max(1, cpus // jobs))}},
        }
        remote = ray.remote(_ray_task)
        url_ref, config_ref = ray.put(url), ray.put(config)
        queue, pending, results = list(tasks), {}, []
        # Ctrl-C raises out of this loop: leaving the session ends the tasks in flight (module docstring).
        while queue or pending:
            signals.check()  # a stop request that raised nothing here (a cooperative caller)
            while queue and len(pending) < jobs:
                task = queue.pop(0)
                ref = remote.options(name=task_name(task), **options).remote(url_ref, config_ref, task)
                pending[ref] = task
            done, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_TICK_S)
            for ref in done:
                task = pending.pop(ref)
                result = collect(ray, ref, task, url, settings.max_task_retries)
                signals.note_commit(result.commits)  # for the "N chunks committed" line of a stop
                progress.task_done(result, task_span_s(task))
                results.append(result)
    return results


def task_name(task: Task) -> str:
    """The Ray task's name: symbol, range and strengths (what the dashboard and logs show)."""
    span = task.time_range
    strengths = ",".join(str(k) for k in task.strengths)
    return mask_text(
        f"triangles {task.symbol} {span.start:%Y-%m-%dT%H:%M}..{span.end_exclusive:%Y-%m-%dT%H:%M} k={strengths}"
    )


def collect(ray: Any, ref: Any, task: Task, url: str, max_task_retries: int) -> TaskResult:
    """A finished Ray task's result; Ray's own failures become a ``failed`` result."""
    try:
        result = ray.get(ref)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        result = failed_result(ray, task, exc, url, max_task_retries)
    if result.status == "failed":
        result.exception = _error_for(result)  # a run of one task raises it (with its exit code)
    return result


def failed_result(ray: Any, task: Task, exc: BaseException, url: str, max_task_retries: int) -> TaskResult:
    """The result of a task that Ray could not finish: exit 1 (3 for database trouble), one masked line."""
    cause = getattr(exc, "cause", None) if isinstance(exc, ray.exceptions.RayTaskError) else None
    if isinstance(cause, TrianglesError):
        code, text = cause.exit_code, str(cause)
    elif cause is not None:
        code, text = 1, f"{type(cause).__name__}: {_first_line(str(cause))}"
    else:
        code, text = 1, f"Ray {type(exc).__name__}: {_first_line(str(exc))}"
    system = tuple(
        getattr(ray.exceptions, name)
        for name in ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError", "LocalRayletDiedError")
        if hasattr(ray.exceptions, name)
    )
    line = " ".join(redact(text, url).split())
    return TaskResult.of(
        task,
        status="failed",
        exit_code=code,
        error=line[:MAX_ERROR_CHARS],
        retries=max_task_retries if isinstance(exc, system) else 0,
        triangles_by_strength=dict.fromkeys(task.strengths, 0),
        worker="ray",
    )


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _error_for(result: TaskResult) -> TrianglesError:
    """An exception of the class that carries the failed task's exit code."""
    from triangles_polars.locks import Locked

    kind = {2: BadInput, 3: DatabaseUnavailable, 4: Locked}.get(result.exit_code, TrianglesError)
    return kind(result.error or "task failed")


# ---------------------------------------------------------------------------- the cluster


def import_ray() -> Any:
    """Ray, imported with :data:`RAY_ENVIRONMENT` set (Ray reads it on import); BadInput if not installed."""
    os.environ.update(RAY_ENVIRONMENT)
    try:
        import ray
    except ImportError:
        raise BadInput(f"--engine ray needs Ray, which is not installed: {INSTALL_COMMAND}") from None
    return ray


def cluster_address(explicit: str | None) -> str | None:
    """``--ray-address``, else ``RAY_ADDRESS``; None (or ``local``) starts a local Ray for the run."""
    address = (explicit or os.environ.get("RAY_ADDRESS") or "").strip()
    return None if address in ("", "local") else address


@contextlib.contextmanager
def ray_session(url: str, settings: BackfillSettings, jobs: int) -> Iterator[tuple[Any, int, bool]]:
    """Ray, ready for the run, the CPUs the run may use, and whether it is a local Ray of the run's own.

    Disconnected (a local Ray of the run's own: stopped) after the run.

    Checks in this order, before anything is started: Ray installed (exit 2), a database URL the
    cluster's nodes can reach (exit 2), the cluster answers (exit 3).
    """
    ray = import_ray()
    if ray.is_initialized():  # a Ray of the caller's (tests, notebooks): use it, leave it running
        check_nodes(ray, url)
        yield ray, _cluster_cpus(ray), False
        return
    address = cluster_address(settings.ray_address)
    if address is None:
        _start_local(ray, url, jobs)
        cpus = os.cpu_count() or 1
    else:
        address = _resolve_auto(address)
        host, port = probe_target(address)
        if url_only_here(url) and not is_loopback(host):
            raise BadInput(_only_here_message(url, f"the Ray cluster at {address}"))
        probe(address, host, port)
        _connect(ray, url, address)
        cpus = 0
    try:
        check_nodes(ray, url)
        yield ray, cpus or _cluster_cpus(ray), address is None
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()


def _cluster_cpus(ray: Any) -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def _local_pids(ray: Any, own: bool) -> list[int]:
    """The processes of the run's own local Ray (killed if the process must end at once)."""
    if not own:
        return []
    try:
        node = ray._private.worker._global_node
        return [info.process.pid for infos in node.all_processes.values() for info in infos if info.process]
    except Exception:
        return []


def _start_local(ray: Any, url: str, jobs: int) -> None:
    """A local Ray for this run: 127.0.0.1 only, no dashboard, no logs echoed, a capped object store."""
    saved = {name: os.environ.get(name) for name in (*URL_VARIABLES, "RAY_AUTH_MODE")}
    for name in URL_VARIABLES:
        os.environ.pop(name, None)
    try:
        with _masked_entrypoint(ray, url):
            ray.init(
                address="local",  # a new Ray of the run's own, even where another one runs
                num_cpus=jobs,
                num_gpus=0,
                include_dashboard=False,
                object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                log_to_driver=False,
                logging_level=logging.ERROR,
                _node_ip_address="127.0.0.1",
            )
    except Exception as exc:
        with contextlib.suppress(Exception):
            ray.shutdown()
        raise TrianglesError(f"could not start a local Ray: {_first_line(redact(str(exc), url))}") from None
    finally:
        for name, value in saved.items():  # Ray sets RAY_AUTH_MODE for its own processes
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _connect(ray: Any, url: str, address: str) -> None:
    try:
        with _masked_entrypoint(ray, url):
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    except Exception as exc:
        with contextlib.suppress(Exception):
            ray.shutdown()
        message = _first_line(redact(str(exc), url)) or type(exc).__name__
        raise ClusterUnreachable(f"could not connect to the Ray cluster at {address}: {message}") from None


@contextlib.contextmanager
def _masked_entrypoint(ray: Any, url: str) -> Iterator[None]:
    """Ray records the driver's command line as the job's entrypoint (dashboard, job table): mask it."""
    utils = getattr(getattr(ray, "_private", None), "utils", None)
    original = getattr(utils, "get_entrypoint_name", None)
    if original is None:
        yield
        return
    utils.get_entrypoint_name = lambda: redact(original(), url)
    try:
        yield
    finally:
        utils.get_entrypoint_name = original


def _resolve_auto(address: str) -> str:
    """``auto``: the cluster Ray recorded on this machine (ClusterUnreachable if there is none)."""
    if address != "auto":
        return address
    try:
        from ray._private.services import canonicalize_bootstrap_address

        found = canonicalize_bootstrap_address("auto")
    except Exception as exc:
        raise ClusterUnreachable(
            f"no running Ray cluster found on this machine (--ray-address auto): {exc}"
        ) from None
    if not found:
        raise ClusterUnreachable("no running Ray cluster found on this machine (--ray-address auto)")
    return str(found)


def probe_target(address: str) -> tuple[str, int]:
    """The host and port to probe: the GCS port of ``host[:port]``, the client port of ``ray://``.

    >>> probe_target("ray://head.internal")
    ('head.internal', 10001)
    >>> probe_target("10.0.0.5:6380")
    ('10.0.0.5', 6380)
    >>> probe_target("[::1]")
    ('::1', 6379)
    """
    client = address.startswith("ray://")
    rest = address[len("ray://") :] if client else address
    try:
        parts = urlsplit("//" + rest)
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or parts.path or parts.query:
        raise BadInput(f"bad --ray-address {address!r}: use host:port or ray://host:port")
    return host, port or (DEFAULT_CLIENT_PORT if client else DEFAULT_GCS_PORT)


# An HTTP/2 client preface and an empty SETTINGS frame: a gRPC server (Ray's GCS, Ray's client
# server) answers with a SETTINGS frame of its own; anything else does not.
_HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_HTTP2_SETTINGS = 4


def probe(address: str, host: str, port: int, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Whether a Ray cluster answers there, in seconds: Ray's own connect retries for minutes.

    A TCP connect, then an HTTP/2 hello that a gRPC server answers (skipped with ``RAY_USE_TLS``).
    """
    tls = os.environ.get("RAY_USE_TLS", "").lower() in ("1", "true")
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as conn:
            if tls:
                return
            conn.sendall(_HTTP2_HELLO)
            header = b""
            while len(header) < 9 and (data := conn.recv(9 - len(header))):
                header += data
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        raise ClusterUnreachable(
            f"the Ray cluster at {address} is unreachable ({reason}); check --ray-address or RAY_ADDRESS"
        ) from None
    if len(header) < 9 or header[3] != _HTTP2_SETTINGS:
        raise ClusterUnreachable(
            f"{address} answers, but not as a Ray cluster (no gRPC there); check --ray-address or RAY_ADDRESS"
        )


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine by name or loopback address (no DNS lookup).

    >>> [is_loopback(h) for h in ("localhost", "127.0.0.1", "::1", "10.1.2.3", "head.internal")]
    [True, True, True, False, False]
    """
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def url_only_here(url: str) -> bool:
    """Whether only this machine can reach the database: a unix socket or a loopback host.

    >>> url_only_here("postgresql://postgres@localhost/postgres?host=/tmp/pg&port=5432")
    True
    >>> url_only_here("postgresql://u:pw@db.internal:5432/market")
    False
    >>> url_only_here("postgresql:///market")
    True
    """
    try:
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        hosts = query.get("hostaddr") or query.get("host") or unquote(parts.hostname or "")
    except ValueError:
        return False
    names = [h.strip() for h in hosts.split(",")] if hosts else [""]
    return all(not name or name.startswith(("/", "@")) or is_loopback(name) for name in names)


def _only_here_message(url: str, cluster: str) -> str:
    return (
        f"the database URL reaches a server only this machine can reach (a unix socket or localhost), "
        f"but {cluster} has nodes elsewhere that connect to the database themselves; "
        "give a database URL with a host the nodes can reach, or use --engine local"
    )


def check_nodes(ray: Any, url: str) -> None:
    """A URL only this machine can reach with a live node elsewhere (e.g. through a tunnel): BadInput."""
    if not url_only_here(url):
        return
    here = _machine_addresses()
    for node in ray.nodes():
        address = str(node.get("NodeManagerAddress", ""))
        if node.get("Alive") and address and not is_loopback(address) and address not in here:
            raise BadInput(_only_here_message(url, f"the Ray cluster (node {address})"))


def _machine_addresses() -> set[str]:
    """This machine's own addresses (by host name, and the one it would route out of; no packet sent)."""
    found: set[str] = set()
    with contextlib.suppress(OSError):
        found.update(str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None))
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.connect(("10.255.255.255", 1))  # a UDP connect only picks the route
        found.add(udp.getsockname()[0])
    return found


# ---------------------------------------------------------------------------- inside a Ray worker


class _WorkerSessions:
    """A worker's database sessions per URL, kept across its consecutive tasks.

    Closed after :data:`IDLE_CLOSE_S` without a task (an idle worker holds no connection for
    long) and at once after a task was interrupted (its connections' state is unknown).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pools: dict[str, Any] = {}
        self._last_used: dict[str, float] = {}
        self._busy = 0
        self._reaper: threading.Thread | None = None

    @contextlib.contextmanager
    def lease(self, url: str) -> Iterator[Any]:
        from triangles_polars.db import SessionPool

        with self._lock:
            pool = self._pools.get(url)
            if pool is None:
                pool = self._pools[url] = SessionPool(url)
            self._busy += 1
            if self._reaper is None:
                self._reaper = threading.Thread(target=self._reap, name="triangles-sessions", daemon=True)
                self._reaper.start()
        finished = False
        try:
            yield pool
            finished = True
        finally:
            with self._lock:
                self._busy -= 1
                self._last_used[url] = time.monotonic()
                if not finished:
                    self._pools.pop(url, None)
            if not finished:
                with contextlib.suppress(Exception):
                    pool.close()

    def _reap(self) -> None:
        while True:
            time.sleep(IDLE_CLOSE_S / 4)
            idle = []
            with self._lock:
                if self._busy:
                    continue
                now = time.monotonic()
                for url, last in list(self._last_used.items()):
                    if now - last >= IDLE_CLOSE_S:
                        del self._last_used[url]
                        if url in self._pools:
                            idle.append(self._pools.pop(url))
            for pool in idle:
                with contextlib.suppress(Exception):
                    pool.close()


_SESSIONS = _WorkerSessions()


def _ray_task(url: str, config: RunConfig, task: Task) -> TaskResult:
    """One task in a Ray worker (Ray passes the URL's object reference resolved)."""
    from triangles_polars.pipeline import execute_task

    attempt = _attempt_number()
    with _SESSIONS.lease(url) as sessions:
        result = execute_task(url, config, task, sessions, worker=_worker_label())
    result.__dict__.pop("exception", None)  # the message and code travel; the object need not
    if attempt:
        result.retries += attempt
        result.warnings.append(
            f"{task.label}: rerun {attempt} time(s) by Ray after its worker or node died; "
            f"{result.chunks_skipped:,} chunk(s) committed before were kept"
        )
    return result


def _attempt_number() -> int:
    """This task's attempt: 0 the first time, n after n reruns by Ray (0 if Ray does not say)."""
    try:
        from ray._private.worker import global_worker

        return int(global_worker.core_worker.get_current_task_attempt_number())
    except Exception:
        return 0


def _worker_label() -> str:
    """``node IP/node id pid N`` of the worker running the task."""
    try:
        import ray

        node = ray.get_runtime_context().get_node_id()[:8]
        return f"{ray.util.get_node_ip_address()}/{node} pid {os.getpid()}"
    except Exception:
        return f"ray pid {os.getpid()}"


__all__ = ["ClusterUnreachable", "run_on_ray"]
