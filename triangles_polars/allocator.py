"""glibc's malloc arenas, capped for the whole process before any thread allocates.

glibc gives a thread that finds the arenas busy an arena of its own, up to 8 per core, and hands
little of their memory back. A process that runs tasks starts a reader and a writer thread per
task (and connectorx its own threads): with many arenas its peak RSS grew with the number of tasks
it ran (1.2-1.4x from 6 to 24 symbols of the desk benchmark); with two from the start it stays
flat, at no cost in speed.

The cap must come first: arenas made by threads that allocated before it stay in use (importing
Polars alone starts such threads). So the console script caps them in the first lines of
``triangles_polars.cli``, before Polars is imported (this module imports nothing heavy), and the
local workers start with ``MALLOC_ARENA_MAX``. Importing the package as a library changes nothing
in the caller's process. A process whose environment chooses its own limit (``MALLOC_ARENA_MAX``,
or ``glibc.malloc.arena_max`` in ``GLIBC_TUNABLES``) keeps that choice, and so do the worker
processes it starts.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Mapping

MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt's parameter number (malloc.h)


def arena_limit_chosen(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment sets glibc's arena limit itself (glibc read it at start)."""
    return "MALLOC_ARENA_MAX" in environ or "glibc.malloc.arena_max" in environ.get("GLIBC_TUNABLES", "")


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas in this process; False where the C library has no ``mallopt``
    (macOS, musl, Windows), which is left as it is."""
    with contextlib.suppress(OSError, AttributeError, TypeError):
        return bool(ctypes.CDLL(None).mallopt(_M_ARENA_MAX, arenas))
    return False


def limit_malloc_arenas_unless_chosen() -> bool:
    """The console script's cap: :func:`limit_malloc_arenas` unless the environment chose."""
    return False if arena_limit_chosen() else limit_malloc_arenas()
