"""The archive copied on a thread of its own, for ``Archive.snapshot``.

A rollback-journal archive is read from a copy taken while the export's read
transaction holds SQLite's shared lock (its writer cannot commit meanwhile; see
``Archive.snapshot``). The copy runs beside the export, which reads the archive
itself in that same transaction until the copy is complete; ``Copy`` calls back
once it is, or once it failed or was stopped.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path

from .interrupts import uninterrupted

CHUNK = 64 * 2**20  # copied per call: a stop request waits for one chunk at most


class Stopped(Exception):
    """The copy was stopped before it was complete (the export ended or failed first)."""


class Copy:
    """``fd`` (an open file) copied to ``dest`` on a thread; ``finished(error)`` runs on that
    thread at the end: None when complete, else what stopped it (``Stopped`` if asked to)."""

    def __init__(self, fd: int, dest: Path, finished: Callable[[BaseException | None], None]):
        self.fd, self.dest, self._finished = fd, dest, finished
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="snapshot", daemon=True)

    def start(self) -> None:
        """Start the copy; call it with interrupts ``held`` where the caller must know of the copy to stop it."""
        self._thread.start()

    def _run(self) -> None:
        try:
            copy_file(self.fd, self.dest, self._stop)
        except BaseException as e:  # handed to the archive, which decides
            self._finished(e)
        else:
            self._finished(None)

    def stop(self) -> None:
        """Stop the copy (if still running) and wait for its thread, through interrupts (it may be
        writing into a folder about to be removed); the file stays as it is."""
        self._stop.set()
        if self._thread.ident is None or self._thread is threading.current_thread():
            return

        def ended() -> bool:
            self._thread.join(0.1)
            return not self._thread.is_alive()

        uninterrupted(ended)


def copy_file(fd: int, dest: Path, stop: threading.Event | None = None) -> None:
    """Copy the whole file open as ``fd`` to ``dest`` (a new file) in the kernel where it can;
    ``Stopped`` if ``stop`` is set first (checked between chunks)."""
    size = os.fstat(fd).st_size
    kernel = getattr(os, "copy_file_range", None)
    with open(dest, "wb") as out:
        done = 0
        while done < size:
            if stop is not None and stop.is_set():
                raise Stopped
            n = 0
            want = min(size - done, CHUNK)
            if kernel is not None:
                try:
                    n = kernel(fd, out.fileno(), want, done, done)
                except OSError as e:  # another file system, or no such call here: copy by hand
                    if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
                        raise
                if n == 0:  # refused, or a file system that stops early: the rest by hand
                    kernel = None
            if kernel is None:
                n = os.pwrite(out.fileno(), os.pread(fd, min(want, 2**20), done), done)
            if n == 0:
                raise OSError(errno.EIO, f"the archive got shorter while it was copied ({done} of {size} bytes)")
            done += n
