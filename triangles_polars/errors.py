"""One exception hierarchy; the CLI maps each class to an exit code in one place (``cli.py``)."""

from __future__ import annotations


class TrianglesError(Exception):
    """Base of every error the product raises on purpose. ``exit_code`` is its code (``docs/contract.md#exit-codes``)."""

    exit_code: int = 1


class BadInput(TrianglesError):
    """Bad usage or bad input data: arguments, config, bars, table shapes (exit 2)."""

    exit_code = 2


class DatabaseUnavailable(TrianglesError):
    """The database cannot be reached, or refuses us (exit 3)."""

    exit_code = 3


class RetriesExhausted(DatabaseUnavailable):
    """A read or a chunk kept failing on connection errors until ``--max-retries`` ran out (exit 3)."""
