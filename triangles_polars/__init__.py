"""triangles_polars: PostgreSQL bars → hygiene → triangle events → PostgreSQL / Parquet.

The CLI (``triangles``) is a thin layer over this API::

    from triangles_polars import BackfillSettings, backfill

    summary = backfill(BackfillSettings(symbol="GLBX.MDP3:NQ", start="2025-12-02", end="2025-12-02"))
    print(summary.triangles)

Keeping current: :func:`triangles_polars.update.update` (``UpdateSettings``) and
:func:`triangles_polars.follow.follow`.

:func:`compute_events` is the database-free part: hygiene + detection on any Polars frame.
"""

from triangles_polars.errors import BadInput, DatabaseUnavailable, RetriesExhausted, TrianglesError
from triangles_polars.pipeline import backfill
from triangles_polars.settings import BackfillSettings, Thresholds
from triangles_polars.stream import DetectionResult, compute_events
from triangles_polars.summary import Progress, RunSummary

__all__ = [
    "BackfillSettings",
    "BadInput",
    "DatabaseUnavailable",
    "DetectionResult",
    "Progress",
    "RetriesExhausted",
    "RunSummary",
    "Thresholds",
    "TrianglesError",
    "backfill",
    "compute_events",
]
__version__ = "0.1.0"
