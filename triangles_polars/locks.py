"""One writer per key: PostgreSQL advisory locks (``docs/contract.md#one-writer-per-key``).

The driver of a writing command takes one session-level advisory lock per key (events table,
symbol, strength) on a connection of its own, tagged ``triangles_lock:<run id>``, and holds it
for the whole run. Its tasks and workers write under it: every chunk transaction checks that the
run's lock connection still holds the key (:func:`held_sql`), so nothing is written while the
driver is reconnecting; the driver takes the locks again after a reconnect.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from triangles_polars.db import RetryPolicy, Session, TransientError, fetch_all
from triangles_polars.errors import TrianglesError

LOCK_APP_PREFIX = "triangles_lock:"


class Locked(TrianglesError):
    """Another command holds the lock on a key (exit 4)."""

    exit_code = 4


@dataclass(frozen=True)
class LockKey:
    """One key: (events table, symbol, strength)."""

    events_table: str
    symbol: str
    strength: int

    @property
    def text(self) -> str:
        return f"{self.events_table}\x1f{self.symbol}\x1f{self.strength}"

    def __str__(self) -> str:
        return f"{self.symbol} k={self.strength} in {self.events_table}"


# The lock id is a bigint hash of the key; pg_locks shows it as (classid, objid).
def _is_key(key: str) -> str:
    """SQL condition: pg_locks row ``l`` is the advisory lock of the key text ``key`` (an SQL expression)."""
    key_id = f"hashtextextended({key}, 0)"
    return f"""l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
          AND l.classid = (({key_id} >> 32) & 4294967295)::oid AND l.objid = ({key_id} & 4294967295)::oid"""


def _holder_sql(key: str) -> str:
    return f"""SELECT a.application_name, a.pid, a.backend_start FROM pg_locks l
    JOIN pg_stat_activity a ON a.pid = l.pid WHERE {_is_key(key)} LIMIT 1"""


def held_sql(key: str = "$1", holder: str = "$2") -> str:
    """SQL (one boolean): the run's lock connection (application name ``holder``) holds ``key``
    (both SQL expressions)."""
    return f"""SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE {_is_key(key)} AND a.application_name = {holder})"""


@dataclass
class KeyLocks:
    """The driver's locks: taken once, held on one connection until :meth:`release`."""

    url: str
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    wait_s: float | None = 0.0  # None: wait forever; 0: fail at once
    token: str = field(default_factory=lambda: LOCK_APP_PREFIX + uuid.uuid4().hex[:16])
    held: list[LockKey] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.session = Session(self.url, self.token, self.policy)
        self.released = False
        self._guard = threading.Lock()

    def acquire(self, keys: list[LockKey]) -> dict[LockKey, str]:
        """Take every key it can; returns the keys held by others, with a line naming the holder."""
        deadline = None if self.wait_s is None else time.monotonic() + self.wait_s
        pending = list(keys)
        while pending:
            taken = self._try(pending)
            self.held.extend(k for k in pending if k in taken)
            pending = [k for k in pending if k not in taken]
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(0.2)
        return self.holders(pending)

    def _try(self, keys: list[LockKey]) -> set[LockKey]:
        """Try every key in one statement; the keys taken."""
        # autocommit-free session: a session-level advisory lock survives the commit.
        rows = self.session.query(
            "taking the locks",
            "SELECT i FROM unnest($1::text[]) WITH ORDINALITY AS u(k, i) "
            "WHERE pg_try_advisory_lock(hashtextextended(u.k, 0))",
            ([k.text for k in keys],),
        )
        return {keys[int(row[0]) - 1] for row in rows}

    def holders(self, keys: list[LockKey]) -> dict[LockKey, str]:
        """One line per key naming who holds it (application, pid, since when), in one query."""
        if not keys:
            return {}
        rows = self.session.query(
            "finding the lock holders",
            f"SELECT u.i, h.* FROM unnest($1::text[]) WITH ORDINALITY AS u(k, i) "
            f"LEFT JOIN LATERAL ({_holder_sql('u.k')}) h ON true",
            ([k.text for k in keys],),
        )
        out = {}
        for i, app, pid, since in rows:
            key = keys[int(i) - 1]
            out[key] = (
                f"{key} is locked by another command"
                if pid is None
                else f"{key} is locked by {app or 'another client'} (pid {pid}, since {since:%Y-%m-%d %H:%M:%S %Z})"
            )
        return out

    def holder(self, key: LockKey) -> str:
        """One line naming who holds a key."""
        return self.holders([key])[key]

    def ensure(self) -> None:
        """Take the held keys again if the lock connection was lost (after a reconnect)."""
        with self._guard:  # never at the same time as release(): a released lock stays released
            if self.released or not self.held:
                return
            try:
                alive = self.session.query(
                    "checking the locks",
                    "SELECT count(*) FROM pg_locks l WHERE l.pid = pg_backend_pid() AND l.locktype = 'advisory'",
                )
                if int(alive[0][0]) < len(self.held) and not self.released:
                    taken = self._try(self.held)
                    lost = [k for k in self.held if k not in taken]
                    if lost:
                        raise Locked(self.holder(lost[0]))
            finally:
                if self.released:  # released while this waited for a dead server: leave nothing open
                    self.session.close()

    def release(self) -> None:
        """Release every lock now, then close the lock connection (no retry on a dead server).

        The locks are released by a statement, not only by closing: a backend ends a moment
        after its client leaves, and the next command (``update && update``) must find them free.
        """
        self.released = True
        guarded = self._guard.acquire(timeout=2.0)  # the keeper may be waiting out a dead server
        try:
            self.held.clear()
            conn = getattr(self.session, "_conn", None)
            if conn is not None:
                with contextlib.suppress(Exception), conn.cursor() as cur:
                    cur.execute("SELECT pg_advisory_unlock_all()")
                    cur.fetchall()
            self.session.close()
        finally:
            if guarded:
                self._guard.release()


def check_held(cur: Any, key: LockKey, token: str) -> bool:
    """Whether the run's lock connection holds ``key`` (run inside a chunk transaction)."""
    return bool(fetch_all(cur, held_sql(), (key.text, token))[0][0])


def require_held(cur: Any, keys: list[LockKey], token: str | None) -> None:
    """Write only under the run's locks: a key its lock connection does not hold (the driver is
    taking it again after a reconnect) is a :class:`TransientError`, so the write waits (retries).
    One statement for every key; nothing to check when the run took no locks (``token`` None)."""
    if not token or not keys:
        return
    sql = f"SELECT u.k FROM unnest($1::text[]) AS u(k) WHERE NOT ({held_sql('u.k', '$2')})"
    missing = fetch_all(cur, sql, ([k.text for k in keys], token))
    if missing:
        lost = next(k for k in keys if k.text == missing[0][0])
        raise TransientError(f"the run's lock on {lost.symbol} k={lost.strength} is being taken again")


class _Keeper(threading.Thread):
    """Takes the locks again after the lock connection was lost (a restart, a killed backend)."""

    def __init__(self, locks: KeyLocks, every_s: float = 1.0) -> None:
        super().__init__(name="triangles-locks", daemon=True)
        self.locks, self.every_s = locks, every_s
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.every_s):
            # Writers wait (retry) while the lock is missing; a failure here is tried again next tick.
            with contextlib.suppress(Exception):
                self.locks.ensure()


@contextlib.contextmanager
def hold_locks(url: str, settings: Any, plan: Any) -> Iterator[Any]:
    """Hold one lock per key of the plan's tasks for the block; yields the run's config.

    With one key, a key held elsewhere is :class:`Locked` (exit 4) at once (or after ``--wait``);
    with many, the tasks of a refused key lose that strength, and a task left with none is
    ``locked`` in the plan.
    """
    config = settings.run_config
    keys = list(
        dict.fromkeys(LockKey(settings.tables.events, t.symbol, k) for t in plan.to_run for k in t.strengths)
    )
    if not keys:
        yield config
        return
    locks = KeyLocks(url, settings.retry, settings.wait)
    keeper = _Keeper(locks)
    try:
        refused = locks.acquire(keys)
        if refused and len(keys) == 1:
            raise Locked(next(iter(refused.values())))
        if refused:
            _drop_refused(plan, refused)
        keeper.start()
        yield dataclasses.replace(config, lock_token=locks.token)
    finally:
        keeper.stopped.set()
        locks.release()


def _drop_refused(plan: Any, refused: dict[LockKey, str]) -> None:
    from triangles_polars.summary import TaskResult

    still = []
    by_symbol = {(key.symbol, key.strength): line for key, line in refused.items()}
    for task in plan.to_run:
        lines = [by_symbol[(task.symbol, k)] for k in task.strengths if (task.symbol, k) in by_symbol]
        kept = tuple(k for k in task.strengths if (task.symbol, k) not in by_symbol)
        if kept:
            still.append(dataclasses.replace(task, strengths=kept))
            plan.warnings.extend(lines)
        else:
            plan.locked.append(TaskResult.of(task, status="locked", exit_code=4, error=lines[0]))
    plan.to_run = still
