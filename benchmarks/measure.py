"""Run one command: wall time, peak RSS (os.wait4), an optional RSS trace, a timeout and an RSS ceiling."""

from __future__ import annotations

import os
import resource
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache"
RESULTS = ROOT / "benchmarks" / "results"
SAMPLE_S = 0.02


@dataclass
class Run:
    """One command's outcome: wall seconds, peak RSS in KiB, and why it failed (None if it did not).

    ``rss_kib`` is os.wait4's ru_maxrss. Linux carries the spawning process's own
    high-water mark over exec, so it is never below ``floor_kib`` (this process's
    peak RSS when it spawned the command); ``hwm_kib`` is the command's own VmHWM,
    polled every 20 ms (it can miss growth in the last 20 ms).
    """

    wall: float
    rss_kib: int
    error: str | None = None
    trace: list[tuple[float, float]] = field(default_factory=list)  # (seconds, RSS MiB)
    hwm_kib: int = 0
    floor_kib: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


def _vm_kib(pid: int) -> tuple[int, int] | None:
    """VmRSS and VmHWM (KiB) of a live process; None once it has exited."""
    rss = hwm = None
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith(b"VmHWM:"):
                    hwm = int(line.split()[1])
    except (OSError, ValueError):
        return None
    return (rss, hwm) if rss is not None and hwm is not None else None


def timed(
    cmd: list[str],
    *,
    stdout: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    rss_limit_mib: float | None = None,
    trace: bool = False,
) -> Run:
    """Run ``cmd`` (stdout to the file ``stdout`` or discarded): wall time and peak RSS.

    A thread polls /proc/<pid>/status every 20 ms: it records the RSS if ``trace``,
    and kills the command past ``timeout`` seconds or ``rss_limit_mib``. The child is
    waited for without being reaped first (WNOWAIT), so its pid cannot be reused
    while the thread may still signal it.
    """
    floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = open(stdout, "wb") if stdout else subprocess.DEVNULL  # noqa: SIM115
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        try:
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        finally:
            if stdout:
                out.close()
        done = threading.Event()
        lock = threading.Lock()
        killed: list[str] = []
        samples: list[tuple[float, float]] = []
        hwm = [0]

        def watch() -> None:
            while not done.wait(SAMPLE_S):
                now = time.perf_counter() - t0
                vm = _vm_kib(proc.pid)
                kib = vm[0] if vm else None
                if vm:
                    hwm[0] = max(hwm[0], vm[1])
                if trace and kib is not None:
                    samples.append((round(now, 3), round(kib / 1024, 1)))
                reason = None
                if now > timeout:
                    reason = f"timed out after {timeout:.0f} s"
                elif rss_limit_mib and kib and kib / 1024 > rss_limit_mib:
                    reason = f"killed: RSS above {rss_limit_mib:.0f} MiB"
                if reason:
                    with lock:
                        if not done.is_set():
                            killed.append(reason)
                            os.kill(proc.pid, 9)
                    return

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        except BaseException:  # Ctrl-C: leave no command running
            with lock:
                done.set()
                proc.kill()
            proc.wait()
            raise
        wall = time.perf_counter() - t0
        with lock:
            done.set()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait again
        watcher.join()
        error = None
        if killed:
            error = killed[0]
        elif proc.returncode != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace").strip().splitlines()[-3:]
            error = f"exit {proc.returncode}: " + " | ".join(tail)
    return Run(wall, usage.ru_maxrss, error, samples, hwm[0], floor)
