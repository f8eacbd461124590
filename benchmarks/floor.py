"""The floor: what moving the same bytes costs on the same server, with no work in between.

* **read floor** - ``COPY (SELECT ts, open, high, low, close FROM bars WHERE symbol = ... AND
  ts >= ... AND ts < ...) TO STDOUT (FORMAT binary)`` of the bars the product reads, into a sink
  that only counts the bytes (no parsing, no storing: a lower bound for any reader);
* **write floor** - ``COPY events FROM STDIN (FORMAT binary)`` of the product's events into an
  empty table with the product's DDL (primary key and index included), then one commit. The
  events are dumped to a binary buffer first (``COPY product_events TO STDOUT``, not timed).

Both through psycopg2's ``copy_expert``, timed separately; their sum is the sequential floor.
"""

from __future__ import annotations

import io
from datetime import datetime

from benchmarks.common import EVENT_COLUMNS, CpuMeter, pg_connect
from benchmarks.results import RunResult


class _CountingSink:
    """A file-like object that keeps nothing but the number of bytes written."""

    def __init__(self) -> None:
        self.bytes = 0

    def write(self, data: bytes | memoryview) -> int:
        n = len(data)
        self.bytes += n
        return n


def run_floor(
    url: str,
    *,
    symbol: str,
    bars_table: str,
    anchor: datetime,
    end_exclusive: datetime,
    source_events_table: str | None,
    events_table: str | None,
) -> RunResult:
    """Time the read floor and (if a source of events is given) the write floor."""
    conn = pg_connect(url)
    meters: dict[str, CpuMeter] = {}  # per stage: the timed parts only (not the dump of the events)
    try:
        with conn.cursor() as cur:
            query = cur.mogrify(
                f"SELECT ts, open, high, low, close FROM {bars_table} "
                "WHERE symbol = %s AND ts >= %s AND ts < %s",
                (symbol, anchor, end_exclusive),
            ).decode()
            sink = _CountingSink()
            with CpuMeter() as read:
                cur.copy_expert(f"COPY ({query}) TO STDOUT (FORMAT binary)", sink)
                bars = cur.rowcount
                conn.commit()
            meters["read"] = read
            read_bytes = sink.bytes

            events = write_bytes = 0
            if source_events_table and events_table:
                columns = ", ".join(EVENT_COLUMNS)
                buffer = io.BytesIO()
                cur.copy_expert(
                    f"COPY (SELECT {columns} FROM {source_events_table}) TO STDOUT (FORMAT binary)", buffer
                )
                conn.commit()
                write_bytes = buffer.tell()
                buffer.seek(0)
                with CpuMeter() as write:
                    cur.copy_expert(f"COPY {events_table} ({columns}) FROM STDIN (FORMAT binary)", buffer)
                    events = cur.rowcount
                    conn.commit()
                meters["write"] = write
    finally:
        conn.close()
    cpu = meters["read"].cpu + meters["write"].cpu if "write" in meters else meters["read"].cpu
    return RunResult(
        contender="floor",
        e2e_s=sum(meter.wall_s for meter in meters.values()),
        stage_seconds={stage: meter.wall_s for stage, meter in meters.items()},
        bars=bars,
        events=events,
        cpu=cpu,
        counts={"read_bytes": read_bytes, "write_bytes": write_bytes},
    )
