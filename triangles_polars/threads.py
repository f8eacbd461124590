"""The threads of a run: bars are read ahead of detection, and chunks written behind it.

Reading, detecting and writing overlap; memory holds a bounded number of batches and chunks.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import polars as pl

from triangles_polars import signals
from triangles_polars.chunks import Chunk
from triangles_polars.writer import ChunkWriter

_TICK_S = 0.1  # the longest a wait lasts before it looks at a stop request


class BatchReader:
    """Pulls bar batches from a stream in a background thread, ``depth`` batches ahead.

    connectorx releases the GIL while it reads, so reading the next batch overlaps detecting and
    writing the current one; memory holds at most ``depth + 1`` batches.
    """

    _DONE = object()

    def __init__(self, batches: Iterator[pl.DataFrame], depth: int, after: BatchReader | None = None) -> None:
        self._batches = batches
        self._after = after  # read only once that reader is done: one read connection at a time
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self.busy_s = 0.0
        self._thread = threading.Thread(target=self._run, name="triangles-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while self._after is not None and self._after._thread.is_alive():
                if self._stop.is_set() or signals.stop_requested():
                    return
                self._after._thread.join(_TICK_S)
            tick = time.perf_counter()
            for bars in self._batches:
                self.busy_s += time.perf_counter() - tick
                if self._stop.is_set() or signals.stop_requested():
                    return
                self._put(bars)
                tick = time.perf_counter()
            self._put(self._DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)

    def _put(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator[pl.DataFrame]:
        """The batches; :class:`~triangles_polars.signals.Stopped` when a stop is requested."""
        while True:
            try:
                item = self._queue.get(timeout=_TICK_S)  # never block for good: a stop must be seen
            except queue.Empty:
                signals.check()
                continue
            signals.check()
            if item is self._DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Stop reading ahead (the thread ends after its current read)."""
        self._stop.set()


class WriterThread:
    """Runs the sink in a thread of its own, ``depth`` chunks behind detection.

    Besides overlapping writing with detecting, this keeps every ADBC call off the main thread:
    there, ADBC turns Ctrl-C into a statement cancel that a finished statement silently
    swallows. Here Ctrl-C reaches the main thread, which lets the chunk in flight finish (it
    commits or rolls back whole) and starts no other.
    """

    _DONE = object()

    def __init__(
        self, writer: ChunkWriter, on_chunk: Callable[[Chunk, bool], None] | None, depth: int
    ) -> None:
        self._writer = writer
        self._on_chunk = on_chunk
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self.busy_s = 0.0
        self._thread = threading.Thread(target=self._run, name="triangles-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        finished = False
        try:
            while True:
                item = self._queue.get()
                if self._stop.is_set():  # interrupted or failed: start nothing more
                    return
                signals.check()  # a stop was requested: start no chunk
                if item is self._DONE:
                    tick = time.perf_counter()
                    self._writer.finish()
                    self.busy_s += time.perf_counter() - tick
                    finished = True
                    return
                tick = time.perf_counter()
                group = item if isinstance(item, list) else [item]  # a list: one transaction
                written = self._writer.write_together(group)
                self.busy_s += time.perf_counter() - tick
                if any(written):
                    signals.note_commit()
                for chunk, done in zip(group, written, strict=True):
                    if self._on_chunk is not None:  # after the commit, before the next chunk starts
                        self._on_chunk(chunk, not done)
        except BaseException as exc:
            self._error = exc
        finally:
            if not finished:  # its transaction may be anywhere: the next task starts afresh
                self._writer.session.close()

    @property
    def chunks_done(self) -> int:
        """Chunks committed so far."""
        return self._writer.stats.chunks

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, chunks: list[Chunk]) -> None:
        """Queue chunks for writing (waits while ``depth`` chunks are pending)."""
        for chunk in chunks:
            while True:
                self._check()
                try:
                    self._queue.put(chunk, timeout=0.1)
                    break
                except queue.Full:
                    if not self._thread.is_alive():
                        self._check()
                        raise RuntimeError("the writer thread stopped") from None

    def submit_together(self, chunks: list[Chunk]) -> None:
        """Queue chunks of distinct strengths to be written in one transaction (a task's last ones)."""
        if chunks:
            self.submit([chunks])  # type: ignore[list-item]

    def finish(self) -> None:
        """Write everything queued, mark the run done, and wait."""
        self.submit([self._DONE])  # type: ignore[list-item]
        while self._thread.is_alive():
            self._thread.join(timeout=0.1)
        self._check()

    def stop(self) -> None:
        """Start no new chunk; wait (briefly) for the one in flight."""
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(self._DONE)
        self._thread.join(timeout=30)
