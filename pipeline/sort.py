"""External sort by instant: bounded memory, sequential disk I/O.

Rows arrive in any order, each with ``_ninst`` (minus its instant in µs, so
ascending is newest first) and ``_nsub`` (minus its nanoseconds past that µs).
A ``Plan`` cuts the instant range into buckets of about the same number of rows;
``BucketSorter.add`` routes each row to its bucket, spilled as Arrow IPC;
``sorted`` then reads one bucket at a time, sorts it and yields it. Memory holds one bucket; work is O(n log n).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from .frames import series
from .timestamps import format_micros
from .tuning import OpenFiles, Tuning

NINST = "_ninst"
# Minus the nanoseconds past the microsecond (0 to -999): sorts ties of ``_ninst`` newest first.
NSUB = "_nsub"
# The row's rowid in the archive: the last tie-breaker, so that rows equal in (instant, key) (a
# NULL or duplicated key in a damaged archive) still come out in one order, whatever the threads.
RID = "_rid"
# A page's cells that were not UTF-8, per row: JSON [[column, hex of the stored bytes], ...], or
# null. The page holds them as text with U+FFFD for the bad bytes; the transforms make them rejects.
UTF8 = "_bad_utf8"
# Sorts after every real instant: rows whose time does not parse come last.
UNPLACED = 2**63 - 1


@dataclass(frozen=True)
class Plan:
    """Bucket boundaries: the first ``_ninst`` of each bucket after the first, ascending."""

    bounds: tuple[int, ...] = ()

    @classmethod
    def from_counts(cls, keys: pl.Series, counts: pl.Series, rows_per_bucket: int) -> Plan:
        """Cut where the running row count crosses a multiple of ``rows_per_bucket``.

        ``keys`` ascending ``_ninst`` values, ``counts`` the rows with each. Rows
        with one ``_ninst`` are never split, so a bucket exceeds the size only
        when that many rows share an instant (or, all with UNPLACED, have none).
        """
        if len(keys) == 0:
            return cls()
        bucket = (counts.cum_sum() - counts) // max(rows_per_bucket, 1)
        starts = bucket != bucket.shift(1, fill_value=0)
        return cls(tuple(keys.filter(starts).to_list()))


class BucketSorter:
    """Collects tables with a ``_ninst`` column; yields them back sorted by ``order``."""

    def __init__(
        self,
        plan: Plan,
        order: Sequence[str],
        spill_dir: str | os.PathLike[str] | None = None,
        max_bytes: int | None = None,
        open_files: OpenFiles | None = None,
    ):
        """``open_files``: the run's budget of open bucket files, shared with the sorters alive
        at the same time (default: a budget of this sorter's own). Rows arrive in table order,
        which need not follow time, so every page may touch every bucket: with fewer writers
        than buckets, files are split into many small parts (1M posts in 80 buckets took
        6-7 s with 64, 5.7 s with 256)."""
        self._bounds = pl.Series(plan.bounds, dtype=pl.Int64)
        self._max_bytes = max_bytes  # a bucket larger than this on disk is split before it is read
        self._order = [(c, "ascending") for c in order]
        self._parent = spill_dir
        self._folder: Path | None = None
        self._memory: list[pa.Table] = []  # one bucket only: no spill
        self._writers: OrderedDict[int, ipc.RecordBatchStreamWriter] = OrderedDict()  # least recent first
        self._parts: dict[int, list[Path]] = {}
        self._parts_lock = threading.Lock()  # release() runs on the checkpoint thread
        self.reading: int | None = None  # the bucket being read back, for messages
        self._open_files = open_files or OpenFiles(Tuning().open_files)
        self._open_files.join()
        self._counted = True

    def __enter__(self) -> BucketSorter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        if not len(self._bounds):
            self._memory.append(table)
            return
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix=".spill-", dir=self._parent))
        ids = self._bounds.search_sorted(series(table.column(NINST)), side="right")
        order = ids.arg_sort()
        grouped = table.take(order.to_arrow())
        runs = ids.gather(order).rle()
        start = 0
        for bucket, n in zip(runs.struct.field("value"), runs.struct.field("len"), strict=True):
            self._writer(bucket, table.schema).write_table(grouped.slice(start, n))
            start += n

    def _writer(self, bucket: int, schema: pa.Schema) -> ipc.RecordBatchStreamWriter:
        w = self._writers.get(bucket)
        if w is not None:
            self._writers.move_to_end(bucket)
            return w
        share = self._open_files.share()
        while self._writers and len(self._writers) >= share:
            _, oldest = self._writers.popitem(last=False)
            oldest.close()
        parts = self._parts.setdefault(bucket, [])
        assert self._folder is not None  # made by ``add`` before the first writer
        path = self._folder / f"{bucket}.{len(parts)}.arrow"
        parts.append(path)
        w = self._writers[bucket] = ipc.new_stream(str(path), schema)
        return w

    def sorted(self) -> Iterator[pa.Table]:
        """Each bucket's rows sorted, buckets in order; a bucket's files are gone once read."""
        for _, table in self.buckets():
            yield table

    def buckets(self, start: int = 0, keep: bool = False) -> Iterator[tuple[int, pa.Table]]:
        """(bucket, its rows sorted) for the buckets from ``start`` on, in order; a bucket split
        because it was too large comes as several tables in a row. Read files are removed,
        unless ``keep``: then they stay until ``release`` (a checkpoint may still name them)."""
        if self._memory:
            table = self._sort(pa.concat_tables(self._memory))
            self._memory = []
            yield 0, table
            return
        for w in self._writers.values():
            w.close()
        self._writers.clear()
        with self._parts_lock:
            order = sorted(b for b in self._parts if b >= start)
        for bucket in order:
            with self._parts_lock:
                parts = list(self._parts.get(bucket, ()))
                if not keep:
                    self._parts.pop(bucket, None)
            self.reading = bucket
            size = sum(p.stat().st_size for p in parts)
            if self._max_bytes is not None and size > self._max_bytes:
                split = self._split(parts, size, keep)
                if split is not None:
                    with split:
                        for _, table in split.buckets():
                            yield bucket, table
                    continue
            tables = []
            for path in parts:
                with pa.OSFile(str(path)) as f, ipc.open_stream(f) as reader:
                    tables.append(reader.read_all())
                if not keep:
                    path.unlink()
            table = self._sort(pa.concat_tables(tables))
            del tables
            yield bucket, table
            del table

    def release(self, before: int) -> None:
        """Remove the files of the buckets before ``before`` (read with ``keep``); may run on
        another thread (once a checkpoint past them is on disk)."""
        with self._parts_lock:
            gone = [self._parts.pop(b) for b in [b for b in self._parts if b < before]]
        for paths in gone:
            for path in paths:
                path.unlink(missing_ok=True)

    # -- checkpoints ---------------------------------------------------------------

    def snapshot(self, start: int = 0) -> dict[str, object] | None:
        """The spill files (of the buckets from ``start`` on) and their sizes now, for a
        checkpoint; None if the rows are held in memory (one bucket: nothing on disk to
        resume from). The files hold whole IPC messages at any moment between ``add``
        calls (Arrow writes them unbuffered)."""
        if not len(self._bounds):
            return None
        if self._folder is None:
            return {"folder": None, "parts": {}}
        with self._parts_lock:
            listed = [(b, list(paths)) for b, paths in self._parts.items() if b >= start]
        parts = {str(b): [[p.name, p.stat().st_size] for p in paths] for b, paths in listed}
        return {"folder": self._folder.name, "parts": parts}

    def files(self, start: int = 0) -> list[Path]:
        """The spill files (from bucket ``start`` on), to flush to disk before a checkpoint names them."""
        with self._parts_lock:
            return [p for b, paths in self._parts.items() if b >= start for p in paths]

    @property
    def folder(self) -> Path | None:
        """Where the spill files are (None until the first rows are spilled)."""
        return self._folder

    def folders(self) -> list[Path]:
        """The spill folder and its parent, to flush to disk so new files' names survive."""
        return [] if self._folder is None else [self._folder, self._folder.parent]

    def restore(self, state: dict[str, Any]) -> None:
        """Back to a ``snapshot``: its files cut to their sizes, any other file in the folder
        removed. New rows go to new part files. Raises ValueError if the files are not there."""
        if self._folder is not None or self._parts or self._memory or not len(self._bounds):
            raise ValueError("restore needs a new sorter with a plan")
        if state["folder"] is None:
            return
        folder = Path(self._parent or tempfile.gettempdir()) / str(state["folder"])
        parts: dict[int, list[Path]] = {}
        for bucket, entries in dict(state["parts"]).items():
            for name, size in entries:
                path = folder / name
                if path.stat().st_size < size:
                    raise ValueError(f"spill file {path} is shorter than its checkpoint")
                os.truncate(path, size)
                parts.setdefault(int(bucket), []).append(path)
        named = {p for paths in parts.values() for p in paths}
        for entry in folder.iterdir():
            if entry not in named:
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        self._folder, self._parts = folder, parts

    def _split(self, paths: list[Path], size: int, keep: bool = False) -> BucketSorter | None:
        """A bucket too large to hold (huge rows close in time; the plan sized buckets by the
        archive's average row) spilled again into sub-buckets, one IPC batch at a time; its
        files are gone (unless ``keep``). None if its rows share one instant (then it is read whole)."""
        assert self.max_bytes is not None
        ninst = []
        for path in paths:  # pass 1: the instants alone
            with pa.OSFile(str(path)) as f, ipc.open_stream(f) as reader:
                for batch in reader:
                    ninst.append(series(batch.column(NINST)))
        counts = pl.concat(ninst).rename("k").value_counts(sort=True, name="n").sort("k")
        if counts.height < 2:
            return None
        rows = int(counts.get_column("n").sum())
        per_bucket = max(1, rows * self.max_bytes // (2 * size))  # sub-buckets of about half the limit
        plan = Plan.from_counts(counts.get_column("k"), counts.get_column("n"), per_bucket)
        child = BucketSorter(plan, [c for c, _ in self._order], self._folder, self.max_bytes, self._open_files)
        try:
            for path in paths:  # pass 2: every batch to its sub-bucket
                with pa.OSFile(str(path)) as f, ipc.open_stream(f) as reader:
                    for batch in reader:
                        child.add(pa.Table.from_batches([batch]))
                if not keep:
                    path.unlink()
        except BaseException:
            child.close()
            raise
        return child

    @property
    def max_bytes(self) -> int | None:
        return self._max_bytes

    def span(self, bucket: int | None) -> str:
        """The instants a bucket holds, for messages (newest first, as exported)."""
        if bucket is None:
            return "every bucket"
        newer = -self._bounds[bucket - 1] if bucket > 0 else None
        older = -self._bounds[bucket] if bucket < len(self._bounds) else None
        if older == -UNPLACED:
            older = None
        fmt = format_micros
        return (
            f"rows created {'up to ' + fmt(newer) if newer is not None else 'last'}"
            f"{', after ' + fmt(older) if older is not None else ''}"
        )

    def _sort(self, table: pa.Table) -> pa.Table:
        return table.take(pc.sort_indices(table, sort_keys=self._order)).combine_chunks()

    def close(self) -> None:
        """Remove every spill file; errors closing writers are ignored (the files go too)."""
        if self._counted:
            self._counted = False
            self._open_files.leave()
        for w in self._writers.values():
            with contextlib.suppress(OSError):
                w.close()
        self._writers.clear()
        self._parts = {}
        self._memory = []
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
