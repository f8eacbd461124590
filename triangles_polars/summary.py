"""What a run reports: the summary (``--json``, ``docs/contract.md#json-output``) and progress events."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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
        self.chunks += task.chunks
        self.chunks_skipped += task.chunks_skipped
        self.commits += task.commits
        self.retries += task.retries
        self.rows_inserted += task.rows_inserted
        self.rows_deleted += task.rows_deleted
        self.purged += task.purged
        for stage, seconds in task.stage_seconds.items():
            self.stage_seconds[stage] = round(self.stage_seconds.get(stage, 0.0) + seconds, 3)
        if SEVERITY.index(task.exit_code) > SEVERITY.index(self.exit_code):
            self.exit_code = task.exit_code

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-ready dict (``tasks`` only for a run of several tasks)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("tasks", "many_tasks")}
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

    def task_started(self, task: Any) -> None:
        """A task starts in this process (its ``advance`` calls follow)."""

    def task_done(self, result: TaskResult, span_s: float) -> None:
        """A task finished (anywhere); ``span_s`` is its bar time."""


@dataclass
class TaskResult:
    """What one task did; ``to_json()`` is one object of ``--json``'s ``tasks``."""

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
    chunks: int = 0
    chunks_skipped: int = 0
    commits: int = 0
    retries: int = 0
    rows_inserted: int = 0
    rows_deleted: int = 0
    purged: int = 0
    duration_s: float = 0.0
    worker: str = ""
    warnings: list[str] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def triangles(self) -> int:
        return sum(self.triangles_by_strength.values())

    def to_json(self) -> dict[str, Any]:
        """The task's JSON object (strength keys as strings, as JSON needs)."""
        out = asdict(self)
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
