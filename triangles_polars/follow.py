"""Following new bars: ``triangles update --follow`` (``docs/contract.md#following-new-bars``).

A follower takes the locks of its keys once, for as long as it runs, catches up as an update
does (tasks, chunks, any engine), then repeats small *cycles*: look up every key's coverage end
and newest bar (one query), read each symbol's new bars with the lookback they need on one kept
connection, detect, and write every key's events and coverage in **one transaction**. It sleeps
``--poll`` seconds between cycles, or less: with ``--notify CHANNEL`` a connection of its own
``LISTEN``\\ s (psycopg: ADBC has no notifications) and a ``NOTIFY`` wakes the next cycle at once.

A dropped connection, a killed backend or a restarted server is retried forever, with the
backoff of ``--backoff`` doubling up to 30 s, and reset after each good cycle. SIGTERM ends the
loop between cycles (the cycle in flight commits) and exits 0; SIGINT exits 130.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TextIO

import polars as pl

from triangles_polars import signals
from triangles_polars.coverage import Coverage, CoverageKey, settings_key
from triangles_polars.db import (
    RetryPolicy,
    Session,
    TransientError,
    fetch_all,
    qualified,
    with_application_name,
    with_session_options,
)
from triangles_polars.errors import BadInput, RetriesExhausted, TrianglesError
from triangles_polars.ledger import ensure_tables
from triangles_polars.locks import Locked, LockKey, hold_locks, require_held
from triangles_polars.masking import mask_text
from triangles_polars.planning import Plan
from triangles_polars.settings import RunConfig, Task, TimeRange
from triangles_polars.source import BarSource
from triangles_polars.stream import StreamingDetector
from triangles_polars.summary import Progress, RunSummary
from triangles_polars.update import UpdateSettings, key_states, plan_update, span_summary, tasks_for

FOLLOW_NAME = "triangles_follow"
LISTEN_NAME = "triangles_listen"
MAX_BACKOFF_S = 30.0
_TICK_S = 0.1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NO_RANGE = TimeRange(_EPOCH, _EPOCH, _EPOCH)  # the lock plan's tasks only name their keys


# ---------------------------------------------------------------------------- what it prints


class FollowLog:
    """One line per cycle, heartbeat, retry and stop: human lines on stderr, or JSON Lines on stdout.

    Every record has a ``type`` (``catch_up``, ``cycle``, ``heartbeat``, ``retry``, ``stopped``)
    and ``at`` (UTC). ``quiet`` keeps the human cycle and heartbeat lines off stderr.
    """

    def __init__(
        self,
        json_out: bool = False,
        quiet: bool = False,
        out: TextIO | None = None,
        err: TextIO | None = None,
    ) -> None:
        self.json_out, self.quiet = json_out, quiet
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self.records: list[dict[str, Any]] = []  # kept for the Python API (bounded: the last 1000)

    def emit(self, record: dict[str, Any]) -> None:
        record = {"type": record.pop("type"), "at": _iso(datetime.now(UTC)), **record}
        self.records = [*self.records[-999:], record]
        if self.json_out:
            self.out.write(json.dumps(record, default=str) + "\n")
            self.out.flush()
        elif not self.quiet or record["type"] in ("retry", "stopped"):
            self.err.write(mask_text(human_line(record)) + "\n")
            self.err.flush()


def human_line(record: dict[str, Any]) -> str:
    """The human form of a log record (one line)."""
    at = record["at"][11:19]
    kind = record["type"]
    if kind == "catch_up":
        return (
            f"{at} caught up: {record['triangles']:,} events in {record['chunks']} chunks, "
            f"{record['bars_processed']:,} bars, {record['duration_s']:.2f} s"
        )
    if kind == "cycle":
        return (
            f"{at} cycle {record['cycle']}: {record['events']} events written ({record['new_events']} new), "
            f"newest bar {record['newest_bar']}, lag {record['lag_s']:.2f} s, {record['duration_s']:.3f} s"
        )
    if kind == "heartbeat":
        return (
            f"{at} heartbeat: no new bar for {record['quiet_s']:.0f} s, newest bar {record['newest_bar']}, "
            f"lag {record['lag_s']:.0f} s"
        )
    if kind == "retry":
        return f"{at} {record['error']}; retrying in {record['retry_in_s']:.1f} s"
    if kind == "stopped":
        return (
            f"{at} stopping… {record['chunks_committed']} chunks committed "
            f"({record['cycles']} cycles, {record['events']} events written)"
        )
    return f"{at} {kind}: {json.dumps(record, default=str)}"


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------------------- NOTIFY


class Listener(threading.Thread):
    """``LISTEN channel`` on a connection of its own; each notification sets ``wake``.

    The connection is retried forever (capped backoff); after each (re)connect ``wake`` is set
    once, since notifications sent while nobody listened are gone.
    """

    def __init__(self, url: str, channel: str, wake: threading.Event, backoff_s: float) -> None:
        super().__init__(name="triangles-listen", daemon=True)
        try:
            import psycopg
        except ImportError:  # pragma: no cover - psycopg is a dependency
            raise BadInput("--notify needs psycopg: pip install 'psycopg[binary]'") from None
        self.psycopg = psycopg
        self.url = with_session_options(with_application_name(url, LISTEN_NAME))
        self.channel, self.wake, self.backoff_s = channel, wake, backoff_s
        self.stopped = threading.Event()
        self.listening = threading.Event()
        self.conn: Any = None

    def run(self) -> None:
        failures = 0
        while not self.stopped.is_set():
            try:
                self._listen()
                failures = 0
            except Exception:
                self.listening.clear()
                failures += 1
                self.stopped.wait(min(MAX_BACKOFF_S, self.backoff_s * 2 ** (failures - 1)))
            finally:
                self._close()

    def _listen(self) -> None:
        from psycopg import sql

        self.conn = self.psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        self.conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        self.listening.set()
        self.wake.set()
        while not self.stopped.is_set():
            for _ in self.conn.notifies(timeout=0.5, stop_after=1):
                self.wake.set()

    def _close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def stop(self) -> None:
        """Stop listening (the thread ends within half a second; nobody waits for it)."""
        self.stopped.set()


# ---------------------------------------------------------------------------- one cycle


@dataclass
class Cycle:
    """What one cycle did."""

    events: int = 0
    new_events: int = 0
    bars: int = 0
    by_strength: dict[int, int] = field(default_factory=dict)
    newest_open: datetime | None = None
    newest_close: datetime | None = None
    symbols: list[str] = field(default_factory=list)


@dataclass
class _Part:
    task: Task
    events: pl.DataFrame
    cover_to: datetime | None


class Follower:
    """The follow loop of one command: its keys, its connection, its counts."""

    def __init__(self, url: str, settings: UpdateSettings, log: FollowLog, progress: Progress | None) -> None:
        self.url, self.settings, self.log = url, settings, log
        self.progress = progress or Progress()
        # No retry inside a cycle: the loop retries whole cycles, forever, with its own backoff.
        self.cycle_settings = replace(settings, max_retries=0)
        self.session = Session(url, FOLLOW_NAME, RetryPolicy(max_retries=0))
        self.keys: set[tuple[str, int]] = set()
        self.symbols: list[str] = []
        self.config: RunConfig = settings.run_config
        self.sources: dict[str, BarSource] = {}
        self.tables_ready = False
        self.wake = threading.Event()
        self.cycles = self.events = self.failures = 0
        self.newest_close: datetime | None = None
        self.newest_open: datetime | None = None

    # -- the whole run

    def run(self) -> int:
        signals.service()
        try:
            plan = self._retrying(lambda: plan_update(self.url, self.settings), "planning")
            self.symbols = plan.symbols
            keys_plan = Plan(plan.symbols)
            keys_plan.to_run = [
                Task(s, self.settings.strengths, _NO_RANGE, self.settings.hygiene_for(s))
                for s in plan.symbols
            ]
            with hold_locks(self.url, self.settings, keys_plan) as config:
                self.config = config
                self.keys = {(t.symbol, k) for t in keys_plan.to_run for k in t.strengths}
                if not self.keys:
                    raise Locked(keys_plan.locked[0].error or "every key is locked by another command")
                for warning in keys_plan.warnings:
                    self.log.err.write(f"warning: {mask_text(warning)} (not followed)\n")
                self._catch_up()
                self._loop()
        except signals.Stopped:
            pass
        finally:
            self.session.close()
        self.log.emit(
            {
                "type": "stopped",
                "signal": {130: "SIGINT", 0: "SIGTERM", 143: "SIGTERM"}.get(signals.exit_code()),
                "cycles": self.cycles,
                "events": self.events,
                "chunks_committed": signals.committed(),
            }
        )
        return signals.exit_code() if signals.stop_requested() else 0

    def _catch_up(self) -> None:
        """The first update, in chunks and tasks like a backfill's (retried until it succeeds)."""
        from triangles_polars.engines import run_tasks
        from triangles_polars.pipeline import summarise

        def once() -> RunSummary:
            plan = plan_update(self.url, self.settings)
            plan.to_run = [
                replace(t, strengths=mine)
                for t in plan.to_run
                if (mine := tuple(k for k in t.strengths if (t.symbol, k) in self.keys))
            ]
            plan.skipped = [r for r in plan.skipped if any((r.symbol, k) in self.keys for k in r.strengths)]
            results = run_tasks(self.url, self.settings, self.config, plan.to_run, self.progress)
            summary = span_summary(summarise(self.settings, self.url, plan, results), plan)
            if summary.exit_code == 3:  # a task ran out of retries: the database is away, try again
                failed = next(t for t in summary.tasks if t.exit_code == 3)
                raise RetriesExhausted(failed.error or "database unreachable")
            if summary.exit_code:
                failed = next(t for t in summary.tasks if t.exit_code == summary.exit_code)
                error = TrianglesError(failed.error or "catching up failed")
                error.exit_code = summary.exit_code
                raise error
            return summary

        started = time.perf_counter()
        summary = self._retrying(once, "catching up")
        self.events += summary.triangles
        record = {k: v for k, v in summary.to_json().items() if k not in ("tasks", "database")}
        record["duration_s"] = round(time.perf_counter() - started, 3)
        self.log.emit({"type": "catch_up", **record})

    def _loop(self) -> None:
        """Cycles until a stop is requested: after ``--poll`` seconds, or at once on a NOTIFY."""
        settings = self.settings
        listener = None
        if settings.notify is not None:
            listener = Listener(self.url, settings.notify, self.wake, settings.backoff_s)
            listener.start()
        last_news = last_beat = time.monotonic()
        next_at = time.monotonic()
        try:
            with signals.cooperative():  # a signal ends the loop between cycles; none is cut short
                while not signals.stop_requested():
                    self._wait(next_at)
                    if signals.stop_requested():
                        break
                    started = time.monotonic()
                    next_at = started + settings.poll_s
                    self.wake.clear()
                    cycle = self._retrying(self._cycle, "following", once=True)
                    if cycle is None:  # failed: retried after a backoff
                        next_at = time.monotonic()
                        continue
                    if cycle.bars or cycle.events:
                        last_news = last_beat = time.monotonic()
                        self._log_cycle(cycle, time.monotonic() - started)
                    elif time.monotonic() - last_beat >= settings.heartbeat_s:
                        last_beat = time.monotonic()
                        self._heartbeat(last_beat - last_news)
        finally:
            if listener is not None:
                listener.stop()

    def _wait(self, until: float) -> None:
        while not signals.stop_requested():
            remaining = until - time.monotonic()
            if remaining <= 0 or self.wake.wait(min(remaining, _TICK_S)):
                return

    def _retrying(self, body: Any, what: str, once: bool = False) -> Any:
        """Run ``body`` until it gets through the database (forever, capped backoff, reset after success).

        With ``once``, one attempt: None after a failure (the backoff already waited).
        """
        while True:
            signals.check()
            try:
                result = body()
                self.failures = 0
                return result
            except (RetriesExhausted, TransientError) as exc:
                self.failures += 1
                delay = min(MAX_BACKOFF_S, self.settings.backoff_s * 2 ** (self.failures - 1))
                message = str(exc).replace(" after 0 retries", "")
                self.log.emit(
                    {
                        "type": "retry",
                        "error": f"{what}: {mask_text(message)}",
                        "attempt": self.failures,
                        "retry_in_s": delay,
                    }
                )
                deadline = time.monotonic() + delay
                while time.monotonic() < deadline and not signals.stop_requested():
                    time.sleep(min(_TICK_S, max(0.0, deadline - time.monotonic())))
                if once:
                    return None

    def _cycle(self) -> Cycle:
        """One cycle: new bars of every key → events → one transaction."""
        cycle = Cycle()
        states = self.session.run(
            "looking for new bars", lambda cur: key_states(cur, self.cycle_settings, self.symbols)
        )
        states = [s for s in states if (s.symbol, s.strength) in self.keys]
        newest = max(states, key=lambda s: s.extent.newest_close).extent if states else None
        if newest is not None:
            self.newest_close = newest.newest_close
            self.newest_open = newest.newest_close - self.settings.read.interval
        if any(s.covered is None for s in states):
            # A key without coverage (a series reloaded with a new version, say) has its whole
            # history to write: that is a catch-up's job, in chunks.
            before = self.events
            self._catch_up()
            return Cycle(events=self.events - before, bars=1)
        tasks, _ = tasks_for(states, self.cycle_settings, rewrite_idle=False)
        if not tasks:
            return cycle
        parts = [self._detect(task, cycle) for task in tasks]
        deleted, inserted = self.session.run("writing a cycle", lambda cur: self._write(cur, parts))
        self.tables_ready = True
        signals.note_commit()
        cycle.new_events = inserted - deleted
        cycle.symbols = sorted({t.symbol for t in tasks})
        self.cycles += 1
        self.events += cycle.events
        return cycle

    def _detect(self, task: Task, cycle: Cycle) -> _Part:
        span, hygiene = task.time_range, task.hygiene
        source = self._source(task.symbol, span)
        query = source.query(span.anchor, span.end_exclusive)
        raw = self.session.run(
            "reading bars", lambda cur: pl.from_arrow(_arrow(cur, query))
        )  # one short read on the kept connection
        bars = source.normalise(raw)  # type: ignore[arg-type]
        detector = StreamingDetector(
            task.symbol,
            task.strengths,
            self.settings.read.interval,
            hygiene.profile,
            hygiene.thresholds,
            span.start,
            span.end_exclusive,
            count_from=task.count_from,
        )
        found = detector.push(bars)
        cycle.bars += found.bars
        cycle.events += found.events.height
        for k, n in found.events.group_by("strength").len().iter_rows():
            cycle.by_strength[int(k)] = cycle.by_strength.get(int(k), 0) + int(n)
        cover_to = None
        if bars.height:
            cover_to = min(span.end_exclusive, bars["ts"][-1] + self.settings.read.interval)
        return _Part(task, found.events, cover_to)

    def _source(self, symbol: str, span: TimeRange) -> BarSource:
        if symbol not in self.sources:
            source = BarSource(symbol, self.config.tables, self.config.read)
            self.sources[symbol] = self.session.run(
                "inspecting the bars table", lambda cur: source.inspect(cur, span.anchor, span.end_exclusive)
            )
        return self.sources[symbol]

    def _write(self, cur: Any, parts: list[_Part]) -> tuple[int, int]:
        """Every key's events and coverage in the cycle's one transaction: (rows deleted, inserted)."""
        config = self.config
        schema, table = config.tables.events_parts
        if not self.tables_ready:
            ensure_tables(cur, config.tables.events, schema, table)
        qualified_table = qualified(schema, table)
        coverage = Coverage(schema)
        keys = [LockKey(config.tables.events, p.task.symbol, k) for p in parts for k in p.task.strengths]
        require_held(cur, keys, config.lock_token)  # not while the locks are being taken again
        deleted = 0
        if config.write.mode == "replace":
            for part in parts:
                for k in part.task.strengths:
                    deleted += _delete(
                        cur, qualified_table, part.task.symbol, k, part.task.time_range, part.events
                    )
        frames = [p.events for p in parts if p.events.height]
        inserted = 0
        if frames:
            events = pl.concat(frames).to_arrow()
            if config.write.mode == "replace":
                cur.adbc_ingest(table, events, mode="append", db_schema_name=schema)
                inserted = events.num_rows
            else:
                cur.execute(
                    f"CREATE TEMP TABLE IF NOT EXISTS triangles_stage (LIKE {qualified_table}) ON COMMIT DELETE ROWS"
                )
                cur.adbc_ingest("triangles_stage", events, mode="append", temporary=True)
                inserted = _count(
                    cur, f"INSERT INTO {qualified_table} SELECT * FROM triangles_stage ON CONFLICT DO NOTHING"
                )
        for part in parts:
            if part.cover_to is None:
                continue
            task = part.task
            key_hash = settings_key(config, task)
            for k in task.strengths:
                key = CoverageKey(config.tables.events, task.symbol, k, key_hash)
                coverage.extend(cur, key, task.time_range.start, part.cover_to)
        return deleted, inserted

    # -- lines

    def _log_cycle(self, cycle: Cycle, seconds: float) -> None:
        now = datetime.now(UTC)
        self.log.emit(
            {
                "type": "cycle",
                "cycle": self.cycles,
                "events": cycle.events,
                "new_events": cycle.new_events,
                "triangles_by_strength": {str(k): n for k, n in sorted(cycle.by_strength.items())},
                "bars": cycle.bars,
                "symbols": cycle.symbols,
                "newest_bar": _iso(self.newest_open),
                "newest_close": _iso(self.newest_close),
                "lag_s": round((now - self.newest_close).total_seconds(), 3) if self.newest_close else None,
                "duration_s": round(seconds, 4),
            }
        )

    def _heartbeat(self, quiet_s: float) -> None:
        now = datetime.now(UTC)
        self.log.emit(
            {
                "type": "heartbeat",
                "quiet_s": round(quiet_s, 1),
                "newest_bar": _iso(self.newest_open),
                "newest_close": _iso(self.newest_close),
                "lag_s": round((now - self.newest_close).total_seconds(), 3) if self.newest_close else None,
                "cycles": self.cycles,
                "events": self.events,
            }
        )


def _arrow(cur: Any, query: str) -> Any:
    cur.execute(query)
    return cur.fetch_arrow_table()


def _delete(cur: Any, table: str, symbol: str, strength: int, span: TimeRange, events: pl.DataFrame) -> int:
    """Replace mode: the key's events of the span go first (and any with a C pivot the span's events have)."""
    sql = (
        f"DELETE FROM {table} WHERE symbol = $1 AND strength = $2 "
        "AND ((confirmed_at >= $3 AND confirmed_at < $4)"
    )
    params: tuple[Any, ...] = (symbol, strength, span.start, span.end_exclusive)
    mine = events.filter(pl.col("strength") == strength)
    if mine.height:
        sql += " OR (c_ts >= $5 AND c_ts <= $6)"
        params += (mine["c_ts"].min(), mine["c_ts"].max())
    return _count(cur, sql + ")", params)


def _count(cur: Any, sql: str, params: tuple[Any, ...] = ()) -> int:
    return int(fetch_all(cur, f"WITH d AS ({sql} RETURNING 1) SELECT count(*) FROM d", params)[0][0])


def follow(settings: UpdateSettings, log: FollowLog | None = None, progress: Progress | None = None) -> int:
    """Keep the keys of ``settings`` current until SIGINT or SIGTERM; returns the exit code.

    0 when stopped by SIGTERM (a service being stopped), 130 by SIGINT. Bad input, a locked key
    (exit 4) and errors no reconnect cures raise, as for :func:`~triangles_polars.update.update`.
    """
    from triangles_polars.embedded import database_url

    url, _source = database_url(settings.database_url)
    return Follower(url, settings, log or FollowLog(), progress).run()


__all__ = ["FollowLog", "Follower", "Listener", "follow", "human_line"]
