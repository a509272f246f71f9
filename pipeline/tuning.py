"""How an export runs, as values: ``Tuning`` (sizes, threads, clocks, hooks), ``OpenFiles`` and ``Once``.

Nothing here changes the bytes of an export: the files are the same for any
tuning. Tests pass a ``Tuning`` instead of patching module globals; the CLI
passes its allocator hook (``on_huge_rows``) here, so the library never
changes the process's allocator behind its caller's back.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

CHECKPOINT_SECONDS = 2.0


def _open_file_budget() -> int:
    """Sort bucket files open for writing at once, over all sorters of a run: half the
    descriptor limit, 16 to 8,192. An open writer costs a descriptor and about 1 KiB. A
    sorter with fewer writers than buckets, fed rows in no time order, starts a new part
    file for a bucket each time its writer was closed: 10M posts in 776 buckets with 256
    writers made 474,136 part files, and the run crawled (see docs/decisions.md)."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # not POSIX
        return 128
    if soft == resource.RLIM_INFINITY:
        return 8192
    return 2 * max(8, min(4096, soft // 4))


def _converters() -> int:
    return min(2, os.cpu_count() or 1)


@dataclass(frozen=True)
class Tuning:
    """Sizes, threads and hooks of a run; the output does not depend on any of them.

    ``page_rows``: rows a source page holds at least (Polars' fixed cost per call
    dominates smaller ones). ``bucket_bytes``: the target size of a sort bucket.
    ``converters``: threads converting pages, shared by all streams. ``write_rows``:
    rows per chunk handed to the sinks. ``prefetch``: pages read ahead of the
    converters by a stream running alone. ``checkpoint_seconds``: how often a
    stream records where it stands. ``open_files``: sort files open at once, over
    all sorters. ``on_huge_rows``: called once, from a reader thread, the first
    time a page holds a huge row (the CLI makes glibc unmap large blocks).
    ``on_event``: called at each phase boundary with its name (``posts.page``,
    ``publish``, ...), a test seam for killing the process at a chosen place.
    ``on_published``: called the moment the export is in place (still inside the
    swap, signals held off): the CLI stops treating signals as a failure then.
    """

    page_rows: int = 16_384
    bucket_bytes: int = 16 * 2**20
    converters: int = field(default_factory=_converters)
    write_rows: int = 16_384
    prefetch: int = 1
    in_flight_bytes: int = 128 * 2**20
    checkpoint_seconds: float = CHECKPOINT_SECONDS
    open_files: int = field(default_factory=_open_file_budget)
    on_huge_rows: Callable[[], None] | None = None
    on_event: Callable[[str], None] | None = None
    on_published: Callable[[], None] | None = None

    @classmethod
    def from_env(cls) -> Tuning:
        """The defaults, with ``checkpoint_seconds`` from ``PIPELINE_CHECKPOINT_SECONDS`` if set."""
        try:
            return cls(checkpoint_seconds=max(0.0, float(os.environ["PIPELINE_CHECKPOINT_SECONDS"])))
        except (KeyError, ValueError):
            return cls()

    def event(self, name: str) -> None:
        if self.on_event is not None:
            self.on_event(name)


class OpenFiles:
    """The run's budget of open sort files, shared by the sorters alive at once: each may keep
    ``share()`` writers open (a bucket whose writer was closed gets another part file)."""

    def __init__(self, budget: int):
        self.budget = budget
        self._sorters = 0
        self._lock = threading.Lock()

    def join(self) -> None:
        with self._lock:
            self._sorters += 1

    def leave(self) -> None:
        with self._lock:
            self._sorters -= 1

    def share(self) -> int:
        return max(4, self.budget // max(1, self._sorters))


class Once:
    """Calls ``fn`` the first time it is called, never again (thread-safe)."""

    def __init__(self, fn: Callable[[], None] | None):
        self._fn = fn
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            fn, self._fn = self._fn, None
        if fn is not None:
            fn()


class InFlight:
    """The bytes a run's pages and their converted rows hold between the readers and the
    sort or the sinks, over all its streams: at most ``limit``, so that memory does not
    depend on which stage happens to be slow (a busy machine, a slow disk) nor on
    ``--jobs``. A page is let in only if it fits, or if nothing else is in flight (a page
    larger than the limit still goes through, alone)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.held = 0
        self.peak = 0  # the most ever held, for tests and metrics
        self._cond = threading.Condition()

    def try_take(self, n: int) -> bool:
        with self._cond:
            if self.held and self.held + n > self.limit:
                return False
            self._hold(n)
            return True

    def grow(self, n: int) -> None:
        """``n`` more bytes held by what is already in (a page's converted rows), not waited for."""
        with self._cond:
            self._hold(n)

    def give(self, n: int) -> None:
        with self._cond:
            self.held -= n
            self._cond.notify_all()

    def wait(self, timeout: float) -> None:
        """Until bytes are given back (or ``timeout`` seconds)."""
        with self._cond:
            self._cond.wait(timeout)

    def _hold(self, n: int) -> None:
        self.held += n
        self.peak = max(self.peak, self.held)
