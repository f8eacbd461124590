"""Launcher: run one command, time it, and report its own peak RSS (``wait4``) to a file.

    python -m benchmarks.spawn RESULT.json -- COMMAND ARGS...

Why a launcher: Linux counts the RSS a process had *before* ``exec`` into the peak RSS of what it
becomes (``ru_maxrss`` of a child, and ``RUSAGE_SELF`` inside it, include the parent's memory at
the fork). The suite grows to a gigabyte while it generates 16 years of bars, so every child it
forked directly would report at least that. This launcher imports nothing but the standard library
(about 10 MB), so the peak RSS of the processes it starts is their own. The wall time is taken here
around ``Popen`` .. ``wait4``: process start, imports and exit of the command are included.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def main() -> None:
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        sys.exit("usage: python -m benchmarks.spawn RESULT.json -- COMMAND ARGS...")
    result_path, command = sys.argv[1], sys.argv[3:]
    started = time.perf_counter()
    proc = subprocess.Popen(command)  # stdin, stdout and stderr are inherited
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    with open(result_path, "w") as handle:
        json.dump(
            {"returncode": os.waitstatus_to_exitcode(status), "wall_s": wall, "maxrss_kb": usage.ru_maxrss},
            handle,
        )


if __name__ == "__main__":
    main()
