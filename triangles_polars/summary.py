"""What a run reports: the summary (``--json``, ``docs/contract.md#json-output``) and progress events."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from triangles_polars.settings import Task


@dataclass
class RunSummary:
    """What a run did. ``to_json()`` is the ``--json`` object."""

    bars_processed: int = 0
    bad_bars_skipped: int = 0
    bad_bars_by_rule: dict[str, int] = field(default_factory=dict)
    triangles: int = 0
    chunks: int = 0
    commits: int = 0
    retries: int = 0
    duration_s: float = 0.0
    symbol: str = ""
    strength: int = 0
    start: str = ""
    end_exclusive: str = ""
    anchor: str = ""
    hygiene: str = ""
    mode: str = ""
    chunks_skipped: int = 0
    rows_inserted: int = 0
    rows_deleted: int = 0
    purged: int = 0
    events_table: str = ""
    database: str = ""
    export: str | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    triangles_by_strength: dict[int, int] = field(default_factory=dict)
    strengths: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    tasks: list[TaskResult] = field(default_factory=list)
    exit_code: int = 0
    many_tasks: bool = False

    def add(self, task: TaskResult) -> None:
        """Add one task's figures to the totals; the exit code is the most serious task's."""
        self.tasks.append(task)
        self.bars_processed += task.bars_processed
        self.bad_bars_skipped += task.bad_bars_skipped
        for code, n in task.bad_bars_by_rule.items():
            self.bad_bars_by_rule[code] = self.bad_bars_by_rule.get(code, 0) + n
        for k, n in task.triangles_by_strength.items():
            self.triangles_by_strength[k] = self.triangles_by_strength.get(k, 0) + n
        self.triangles = sum(self.triangles_by_strength.values())
        WriteStats.add_writes(self, task)  # type: ignore[arg-type]  # the same counters, by name
        self.retries += task.retries
        for stage, seconds in task.stage_seconds.items():
            self.stage_seconds[stage] = round(self.stage_seconds.get(stage, 0.0) + seconds, 3)
        if SEVERITY.index(task.exit_code) > SEVERITY.index(self.exit_code):
            self.exit_code = task.exit_code

    @property
    def rows_already_present(self) -> int:
        """Append mode: events of the range whose key the table held already (not inserted again)."""
        return max(0, self.triangles - self.rows_inserted) if self.mode == "append" else 0

    def written(self) -> str:
        """What the writes did, for the human summary: ``replace: 3,381 inserted, 3,381 replaced``.

        >>> RunSummary(triangles=3381, rows_inserted=0, mode="append").written()
        'append: 0 inserted, 3,381 already present'
        >>> RunSummary(triangles=10, rows_inserted=10, rows_deleted=7, mode="replace").written()
        'replace: 10 inserted, 7 replaced'
        """
        if self.mode == "append":
            return f"append: {self.rows_inserted:,} inserted, {self.rows_already_present:,} already present"
        return f"{self.mode}: {self.rows_inserted:,} inserted, {self.rows_deleted:,} replaced"

    def bad_bars(self) -> str:
        """Bad bars and their codes, for the human summary; a bar can carry several codes (rules 3-5).

        >>> RunSummary(bad_bars_skipped=3, bad_bars_by_rule={"DISCONTINUITY_500": 3, "FLAT_DISCONTINUITY_50": 2}).bad_bars()
        '3  (DISCONTINUITY_500 3, FLAT_DISCONTINUITY_50 2; a bar can carry several codes)'
        """
        codes = self.bad_bars_by_rule
        by_code = ", ".join(f"{code} {n:,}" for code, n in codes.items()) if codes else "none"
        several = "; a bar can carry several codes" if sum(codes.values()) > self.bad_bars_skipped else ""
        return f"{self.bad_bars_skipped:,}  ({by_code}{several})"

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-ready dict (``tasks`` only for a run of several tasks)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("tasks", "many_tasks")}
        out["rows_already_present"] = self.rows_already_present
        out["triangles_by_strength"] = {str(k): v for k, v in self.triangles_by_strength.items()}
        if self.many_tasks:
            out["tasks"] = [task.to_json() for task in self.tasks]
        return out


# Exit codes of a run of several tasks, least serious first (docs/contract.md#exit-codes).
SEVERITY = (0, 2, 4, 3, 1, 130)


class Progress:
    """Observer of a run; the default does nothing. The CLI subclasses it with a progress bar."""

    def start(self, total: float) -> None:
        """The run starts; ``total`` is the span of bar time to cover, in seconds."""

    def advance(self, done: float, *, bars: int, events: int, chunks: int) -> None:
        """Bars up to ``done`` seconds into the span were detected and their chunks queued."""

    def retry(self, error: BaseException) -> None:
        """A connection error is being retried."""

    def tasks_planned(self, tasks: int, total: float) -> None:
        """A run of ``tasks`` tasks covering ``total`` seconds of bar time starts."""

    def task_started(self, task: Any, first_bar: datetime | None = None) -> None:
        """A task starts in this process (its ``advance`` calls follow); its bars begin at ``first_bar``."""

    def task_done(self, result: TaskResult, span_s: float) -> None:
        """A task finished (anywhere); ``span_s`` is its bar time."""


@dataclass(kw_only=True)
class WriteStats:
    """What writing a task's chunks did, counted after each commit (``docs/contract.md#json-output``)."""

    chunks: int = 0  # chunks of the range: written now, or skipped (an earlier attempt committed them)
    chunks_skipped: int = 0
    commits: int = 0  # one per chunk written, one for a purge
    rows_inserted: int = 0
    rows_deleted: int = 0
    purged: int = 0

    def add_writes(self, other: WriteStats) -> None:
        """Add another's counters to these."""
        for name in WRITE_COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))


WRITE_COUNTERS = tuple(f.name for f in fields(WriteStats))


@dataclass
class TaskResult(WriteStats):
    """What one task did (its writing's counters included); ``to_json()`` is one object of
    ``--json``'s ``tasks``."""

    symbol: str
    strengths: tuple[int, ...]
    start: str
    end_exclusive: str
    status: str = "done"  # done, skipped, empty, locked, failed
    exit_code: int = 0
    error: str | None = None
    bars_processed: int = 0
    bad_bars_skipped: int = 0
    bad_bars_by_rule: dict[str, int] = field(default_factory=dict)
    triangles_by_strength: dict[int, int] = field(default_factory=dict)
    retries: int = 0
    duration_s: float = 0.0
    worker: str = ""
    warnings: list[str] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, task: Task, **fields: Any) -> TaskResult:
        """The result of ``task`` (its symbol, strengths and range), with ``fields`` set."""
        span = task.time_range
        return cls(
            task.symbol, task.strengths, span.start.isoformat(), span.end_exclusive.isoformat(), **fields
        )

    @property
    def triangles(self) -> int:
        return sum(self.triangles_by_strength.values())

    def to_json(self) -> dict[str, Any]:
        """The task's JSON object (strength keys as strings, as JSON needs)."""
        out = asdict(self)
        out = {name: out.pop(name) for name in ("symbol", "strengths", "start", "end_exclusive")} | out
        out["strengths"] = list(self.strengths)
        out["triangles_by_strength"] = {str(k): v for k, v in self.triangles_by_strength.items()}
        for internal in (
            "chunks_skipped",
            "rows_inserted",
            "rows_deleted",
            "purged",
            "warnings",
            "stage_seconds",
        ):
            out.pop(internal)
        return out
