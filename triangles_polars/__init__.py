"""triangles_polars: PostgreSQL bars → hygiene → triangle events → PostgreSQL / Parquet.

The CLI (``triangles``) is a thin layer over this API::

    from triangles_polars import BackfillSettings, backfill

    summary = backfill(BackfillSettings(symbol="GLBX.MDP3:NQ", start="2025-12-02", end="2025-12-02"))
    print(summary.triangles)

Keeping current: :func:`triangles_polars.update.update` (``UpdateSettings``) and
:func:`triangles_polars.follow.follow`.

:func:`compute_events` is the database-free part: hygiene + detection on any Polars frame.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from triangles_polars.errors import BadInput, DatabaseUnavailable, RetriesExhausted, TrianglesError
    from triangles_polars.pipeline import backfill
    from triangles_polars.settings import BackfillSettings, Thresholds
    from triangles_polars.stream import DetectionResult, compute_events
    from triangles_polars.summary import Progress, RunSummary

# The API's names, imported on first use: importing a module of the package (the console script's
# ``triangles_polars.cli`` first of all) does not import Polars before that module's own first lines.
_HOMES = {
    "BackfillSettings": "settings",
    "BadInput": "errors",
    "DatabaseUnavailable": "errors",
    "DetectionResult": "stream",
    "Progress": "summary",
    "RetriesExhausted": "errors",
    "RunSummary": "summary",
    "Thresholds": "settings",
    "TrianglesError": "errors",
    "backfill": "pipeline",
    "compute_events": "stream",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        value = getattr(importlib.import_module(f"triangles_polars.{_HOMES[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'triangles_polars' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])


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
