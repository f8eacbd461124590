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

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        out = asdict(self)
        out["triangles_by_strength"] = {str(k): v for k, v in self.triangles_by_strength.items()}
        return out


class Progress:
    """Observer of a run; the default does nothing. The CLI subclasses it with a progress bar."""

    def start(self, total: float) -> None:
        """The run starts; ``total`` is the span of bar time to cover, in seconds."""

    def advance(self, done: float, *, bars: int, events: int, chunks: int) -> None:
        """Bars up to ``done`` seconds into the span were detected and their chunks queued."""

    def retry(self, error: BaseException) -> None:
        """A connection error is being retried."""
