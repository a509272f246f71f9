"""Test seams for export-many (kept out of the production path): a worker that stops at a known point."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PauseOnce:
    """A ``Tuning.on_event`` hook: the first worker (over all processes) to pass ``event`` writes
    its PID into ``folder/paused`` and sleeps, so the test can SIGKILL it there; later ones pass."""

    folder: str
    event: str = "posts.page"

    def __call__(self, event: str) -> None:
        if event != self.event:
            return
        try:
            fd = os.open(Path(self.folder) / "paused", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        time.sleep(300)


def paused_pid(folder: Path, timeout: float = 120.0) -> int:
    """The PID PauseOnce wrote, once it has (the worker is then asleep at its event)."""
    marker = folder / "paused"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = marker.read_text() if marker.exists() else ""
        if text:
            return int(text)
        time.sleep(0.05)
    raise AssertionError(f"no worker paused within {timeout} s")


@dataclass(frozen=True)
class KillWhileExporting:
    """A ``Tuning.on_event`` hook: a worker exporting into OUT_ROOT/``name`` SIGKILLs itself at
    its first page, on every attempt (it has its staging folder, ``.<name>.staging-<pid>``, open)."""

    name: str

    def __call__(self, event: str) -> None:
        if not event.endswith(".page"):
            return
        mark = f"/.{self.name}.staging-"
        for fd in os.listdir("/proc/self/fd"):
            try:
                if mark in os.readlink(f"/proc/self/fd/{fd}"):
                    os.kill(os.getpid(), 9)
            except OSError:
                continue
