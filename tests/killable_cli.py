"""The command with a kill switch (a test seam, kept out of the production path).

    PIPELINE_KILL_AT=<event>=<n> python tests/killable_cli.py run export ...

runs ``pipeline`` as ``cli.py`` does, with ``Tuning.on_event`` set: the n-th time
the export passes ``<event>`` (``posts.page``, ``posts.bucket``, ``likes.done``,
``publish``, ``published``, ...), once the checkpoints handed over so far are on
disk, the process sends itself SIGKILL (or ``PIPELINE_KILL_SIGNAL``, e.g. SIGTERM).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cli  # noqa: E402
from pipeline import tuning  # noqa: E402

_WANTED, _, _COUNT = os.environ.get("PIPELINE_KILL_AT", "").rpartition("=")
_seen: dict[str, int] = {}
_lock = threading.Lock()


def _kill_at(event: str) -> None:
    if event != _WANTED:
        return
    with _lock:
        _seen[event] = n = _seen.get(event, 0) + 1
    if str(n) == _COUNT:
        os.kill(os.getpid(), getattr(signal, os.environ.get("PIPELINE_KILL_SIGNAL", "SIGKILL")))


_defaults = tuning.Tuning.from_env


def _from_env() -> tuning.Tuning:
    return replace(_defaults(), on_event=_kill_at)


tuning.Tuning.from_env = _from_env  # type: ignore[method-assign]  # the seam: only in this test process

if __name__ == "__main__":
    sys.exit(cli.main())
