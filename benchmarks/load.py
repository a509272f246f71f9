"""A CPU-bound competitor for both cores: busy-looping processes started before a measured run, killed after it.

The competitor is ``LOAD_PROCESSES`` (one per core, at least 2) processes of
``python -c 'while True: pass'`` at the benchmark's own priority (nice 0, no
affinity), so the scheduler shares every core between them and the export's
threads. They start ``LOAD_SETTLE_S`` before the measured command (so they are
spinning when it starts) and are killed with SIGKILL, by pid, as soon as it exits
(also on an exception or Ctrl-C).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

LOAD_PROCESSES = max(2, os.cpu_count() or 2)
LOAD_SETTLE_S = 0.5
LOAD_CODE = "while True: pass"
DESCRIPTION = (
    f"{LOAD_PROCESSES} processes of `python -c '{LOAD_CODE}'` at the same priority (nice 0), "
    f"started {LOAD_SETTLE_S} s before each loaded run and killed (SIGKILL) when it exits"
)


@contextlib.contextmanager
def cpu_load(processes: int = LOAD_PROCESSES) -> Iterator[list[int]]:
    """Run ``processes`` busy loops for the duration of the ``with`` block; yields their pids."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(processes):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", LOAD_CODE],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        time.sleep(LOAD_SETTLE_S)
        if dead := [p.pid for p in procs if p.poll() is not None]:
            raise RuntimeError(f"CPU competitor process(es) {dead} exited at once")
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a live process (from /proc), None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
