"""triangles_polars: PostgreSQL bars → hygiene → triangle events → PostgreSQL / Parquet.

The CLI (``triangles``) is a thin layer over this API::

    from triangles_polars import BackfillSettings, backfill

    summary = backfill(BackfillSettings(symbol="GLBX.MDP3:NQ", start="2025-12-02", end="2025-12-02"))
    print(summary.triangles)
"""

from triangles_polars.errors import BadInput, DatabaseUnavailable, RetriesExhausted, TrianglesError
from triangles_polars.pipeline import RunSummary, backfill
from triangles_polars.settings import BackfillSettings, Thresholds

__all__ = [
    "BackfillSettings",
    "BadInput",
    "DatabaseUnavailable",
    "RetriesExhausted",
    "RunSummary",
    "Thresholds",
    "TrianglesError",
    "backfill",
]
__version__ = "0.1.0"
