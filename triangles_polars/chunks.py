"""Chunks: the unit of writing, one transaction each (``docs/contract.md#writing-idempotency-and-faults``).

A chunk covers a ``confirmed_at`` span of one strength; the spans of a run tile
``[START, END + 1 day)`` without gaps, so in ``replace`` mode deleting each chunk's span before
ingesting leaves exactly the events a clean run would.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import polars as pl

from triangles_polars.schema import empty_events


class MultiChunker:
    """One :class:`Chunker` per strength, fed with events of several strengths at once."""

    def __init__(
        self, strengths: tuple[int, ...], range_start: datetime, range_end: datetime, chunk_events: int
    ):
        self.chunkers = {k: Chunker(k, range_start, range_end, chunk_events) for k in strengths}

    def add(self, events: pl.DataFrame) -> list[Chunk]:
        """Buffer events (sorted by strength, confirmed_at); return the chunks that are complete."""
        if len(self.chunkers) == 1:
            return next(iter(self.chunkers.values())).add(events)
        parts = events.partition_by("strength", as_dict=True)
        return [c for (k,), part in parts.items() for c in self.chunkers[k].add(part)]

    def finish(self) -> list[Chunk]:
        """The last chunk of every strength."""
        return [c for chunker in self.chunkers.values() for c in chunker.finish()]


@dataclass(frozen=True)
class Chunk:
    """One unit of work: the events with ``span_start <= confirmed_at < span_end``."""

    strength: int
    chunk_no: int
    span_start: datetime
    span_end: datetime
    events: pl.DataFrame

    @property
    def size(self) -> int:
        return self.events.height


class Chunker:
    """Cuts a stream of events (sorted by confirmed_at) into chunks of about ``chunk_events``.

    A chunk is cut only once the event after the cut is known, and never inside a run of equal
    ``confirmed_at``; its span ends at that next event, and the last span at ``range_end``. So the
    spans tile the range, and the chunks are the same however the events arrive (all at once or
    slice by slice): a rerun of the same command finds the same chunks to resume.
    """

    def __init__(self, strength: int, range_start: datetime, range_end: datetime, chunk_events: int) -> None:
        self.strength = strength
        self.range_end = range_end
        self.chunk_events = chunk_events
        self._span_start = range_start
        self._buffer: list[pl.DataFrame] = []
        self._buffered = 0
        self._next_no = 0

    def add(self, events: pl.DataFrame) -> list[Chunk]:
        """Buffer events; return the chunks that are complete."""
        if events.height == 0:
            return []
        self._buffer.append(events)
        self._buffered += events.height
        out: list[Chunk] = []
        while self._buffered > self.chunk_events:
            pending = pl.concat(self._buffer) if len(self._buffer) > 1 else self._buffer[0]
            confirmed = pending["confirmed_at"]
            cut_value = confirmed[self.chunk_events]
            if cut_value == confirmed[self.chunk_events - 1]:
                # never split equal confirmed_at values: cut at the end of their run
                cut = int(confirmed.search_sorted(cut_value, side="right"))
            else:
                cut = self.chunk_events
            if cut >= pending.height:  # the event after the cut is not known yet
                self._buffer = [pending]
                break
            out.append(self._emit(pending.slice(0, cut), confirmed[cut]))
            rest = pending.slice(cut)
            self._buffer, self._buffered = [rest], rest.height
        return out

    def finish(self) -> list[Chunk]:
        """The last chunk (up to ``range_end``); an empty range still gets one chunk."""
        if self._buffered == 0 and self._next_no > 0:
            return []
        pending = pl.concat(self._buffer) if self._buffer else empty_events()
        self._buffer, self._buffered = [], 0
        return [self._emit(pending, self.range_end)]

    def _emit(self, events: pl.DataFrame, span_end: datetime) -> Chunk:
        chunk = Chunk(self.strength, self._next_no, self._span_start, span_end, events)
        self._next_no += 1
        self._span_start = span_end
        return chunk


def plan_chunks(
    events: pl.DataFrame, range_start: datetime, range_end: datetime, chunk_events: int
) -> list[Chunk]:
    """All chunks of a complete, sorted event frame of one strength (see :class:`Chunker`)."""
    strength = int(events["strength"][0]) if "strength" in events.columns and events.height else 0
    chunker = Chunker(strength, range_start, range_end, chunk_events)
    return chunker.add(events) + chunker.finish()
