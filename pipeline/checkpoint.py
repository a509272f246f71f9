"""Checkpoints: what an export had finished when it was killed, so ``--resume`` can go on.

They live in the staging folder, in ``.checkpoint/``: ``run.json`` holds the
run's fingerprint (the archive's identity and every option that shapes the
files), and ``<stream>.json`` each stream's last consistent state — which
rows were read (the last rowid of a prefix of pages), the sort's spill files
and their sizes then, the output files' sizes and record counts, or the
stream's finished files. A checkpoint is written only after the files it
names are flushed to disk (fsync), and atomically (a temporary file renamed
over the old one), so after a SIGKILL or a power loss it describes files that
hold at least what it says; a resume cuts them back to those sizes and
recomputes their hashes by reading them.

Checkpoints are taken at most every ``Tuning.checkpoint_seconds`` (default 2 s;
the CLI reads ``PIPELINE_CHECKPOINT_SECONDS``) per stream: each costs an fsync
of the files written since the last one.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from .interrupts import held
from .tuning import CHECKPOINT_SECONDS

CHECKPOINTS = ".checkpoint"
RUN = "run.json"


def fsync_path(path: Path) -> None:
    """Flush a file (or folder) to disk; any descriptor of it will do on POSIX."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, data: object) -> None:
    """``path`` holds ``data`` whole, on disk, or is as it was: write aside, fsync, rename, fsync the folder."""
    temp = path.with_name(path.name + ".tmp")
    with open(temp, "w", encoding="utf-8") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    fsync_path(path.parent)


def read_json(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class Checkpoints:
    """The checkpoints of one staging folder (``None`` state: start the stream over).

    ``save_later`` hands a checkpoint to a background thread, which flushes the
    files it names to disk and then writes it, so the export does not wait for
    the disk (fsync of a JSON export's output and sort files cost ~7% of its
    time when it waited); checkpoints are written in the order they were
    handed over. A checkpoint that cannot be written (its files already gone:
    the stream moved on) is dropped: an older one still holds. One not yet
    written when its stream hands over the next is replaced by it (its ``then``
    is not run: the next one's covers it), so at most one per stream waits,
    however slow the disk: a checkpoint of a sort with many files is large, and
    queued ones once held 3 GB at 10M posts.
    """

    def __init__(self, staging: Path, interval: float = CHECKPOINT_SECONDS):
        self.staging = staging
        self.folder = staging / CHECKPOINTS
        self.interval = interval
        self._lock = threading.Lock()
        self._queue: queue.Queue[str | None] = queue.Queue()  # streams with a checkpoint pending; None: stop
        self._pending: dict[str, tuple[dict[str, object], list[Path], Callable[[], None] | None]] = {}
        self._thread: threading.Thread | None = None

    def begin(self, fingerprint: dict[str, object]) -> None:
        """A new run: the folder and its fingerprint."""
        self.folder.mkdir(exist_ok=True)
        write_json(self.folder / RUN, {"fingerprint": fingerprint})

    def fingerprint(self) -> dict[str, object] | None:
        run = read_json(self.folder / RUN)
        value = run.get("fingerprint") if run else None
        return value if isinstance(value, dict) else None

    def load(self, stream: str) -> dict[str, object] | None:
        return read_json(self.folder / f"{stream}.json")

    def save(self, stream: str, state: dict[str, object], files: Iterable[Path] = ()) -> None:
        """Record ``state`` for ``stream`` once ``files`` (what it describes) are on disk,
        after the checkpoints handed to ``save_later`` before it."""
        self.flush()
        self._write(stream, state, list(files))

    def save_later(
        self, stream: str, state: dict[str, object], files: Iterable[Path], then: Callable[[], None] | None = None
    ) -> None:
        """Like ``save``, in the background; ``then`` runs once the checkpoint is on disk
        (e.g. removing files only older checkpoints name), not at all if it was dropped or
        replaced."""
        with self._lock, held():  # started and known to ``close`` as one step, whatever comes meanwhile
            if self._thread is None:
                thread = threading.Thread(target=self._run, name="checkpoints", daemon=True)
                thread.start()
                self._thread = thread
            waiting = stream in self._pending  # not written yet: this one replaces it, in its place in line
            self._pending[stream] = (state, list(files), then)
        if not waiting:
            self._queue.put(stream)

    def flush(self) -> None:
        """Wait until the checkpoints handed over so far are written (or dropped)."""
        if self._thread is not None:
            self._queue.join()

    def _run(self) -> None:
        while True:
            stream = self._queue.get()
            try:
                if stream is None:
                    return
                with self._lock:
                    state, files, then = self._pending.pop(stream)
                try:
                    self._write(stream, state, files)
                except OSError:
                    continue
                if then is not None:
                    then()
            except Exception:  # noqa: S112 - a failed cleanup leaves files the stream's end removes anyway
                continue
            finally:
                self._queue.task_done()

    def _write(self, stream: str, state: dict[str, object], files: list[Path]) -> None:
        for path in files:
            fsync_path(path)
        with self._lock:  # streams save from their own threads; the folder fsync is shared
            write_json(self.folder / f"{stream}.json", state)

    def close(self) -> None:
        """Write what was handed over and stop the background thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def drop(self) -> None:
        """Before publishing: the export is complete and carries no checkpoints."""
        self.flush()
        shutil.rmtree(self.folder, ignore_errors=True)  # gone already if a killed run got this far


class Clock:
    """When a stream's next checkpoint is due."""

    def __init__(self, every: float):
        self.every = every
        self._last = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.every

    def reset(self) -> None:
        self._last = time.monotonic()
