"""External sort by instant: bounded memory, sequential disk I/O.

Rows arrive in any order, each with ``_ninst`` (minus its instant in µs, so
ascending is newest first). A ``Plan`` cuts the instant range into buckets of
about the same number of rows; ``BucketSorter.add`` routes each row to its
bucket, spilled as Arrow IPC; ``sorted`` then reads one bucket at a time, sorts
it and yields it. Memory holds one bucket; work is O(n log n).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

NINST = "_ninst"
# Sorts after every real instant: rows whose time does not parse come last.
UNPLACED = 2**63 - 1


@dataclass(frozen=True)
class Plan:
    """Bucket boundaries, in whole seconds of ``_ninst`` (``ceil(ninst / 1e6)``), ascending."""

    bounds: tuple[int, ...] = ()

    @classmethod
    def from_counts(cls, seconds: pl.Series, counts: pl.Series, rows_per_bucket: int) -> Plan:
        """Cut where the running row count crosses a multiple of ``rows_per_bucket``.

        ``seconds`` ascending (in ``_ninst`` order), ``counts`` the rows in each.
        """
        if len(seconds) == 0:
            return cls()
        bucket = (counts.cum_sum() - counts) // max(rows_per_bucket, 1)
        starts = bucket != bucket.shift(1, fill_value=0)
        return cls(tuple(seconds.filter(starts).to_list()))


def _bucket_of(ninst: pl.Series, bounds: pl.Series) -> pl.Series:
    # -floor(instant_s) is ceil(ninst / 1e6); integer ceil without floats.
    seconds = -((-ninst) // 1_000_000)
    return bounds.search_sorted(seconds, side="right")


class BucketSorter:
    """Collects tables with a ``_ninst`` column; yields them back sorted by ``order``."""

    def __init__(self, plan: Plan, order: Sequence[str], spill_dir: str | os.PathLike[str] | None = None):
        self._bounds = pl.Series(plan.bounds, dtype=pl.Int64)
        self._order = [(c, "ascending") for c in order]
        self._parent = spill_dir
        self._folder: Path | None = None
        self._memory: list[pa.Table] = []  # one bucket only: no spill
        self._writers: dict[int, ipc.RecordBatchStreamWriter] = {}

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
        ids = _bucket_of(pl.from_arrow(table.column(NINST)), self._bounds)  # type: ignore[arg-type]
        order = ids.arg_sort()
        grouped = table.take(order.to_arrow())
        runs = ids.gather(order).rle()
        start = 0
        for bucket, n in zip(runs.struct.field("value"), runs.struct.field("len"), strict=True):
            w = self._writers.get(bucket)
            if w is None:
                w = self._writers[bucket] = ipc.new_stream(str(self._folder / f"{bucket}.arrow"), table.schema)
            w.write_table(grouped.slice(start, n))
            start += n

    def sorted(self) -> Iterator[pa.Table]:
        """Each bucket's rows sorted, buckets in order; a bucket's file is gone once read."""
        if self._memory:
            table = self._sort(pa.concat_tables(self._memory))
            self._memory = []
            yield table
            return
        for w in self._writers.values():
            w.close()
        buckets = sorted(self._writers)
        self._writers = {}
        assert self._folder is not None or not buckets
        for bucket in buckets:
            path = self._folder / f"{bucket}.arrow"  # type: ignore[operator]
            with pa.OSFile(str(path)) as f, ipc.open_stream(f) as reader:
                table = self._sort(reader.read_all())
            path.unlink()
            yield table
            del table

    def _sort(self, table: pa.Table) -> pa.Table:
        return table.take(pc.sort_indices(table, sort_keys=self._order)).combine_chunks()

    def close(self) -> None:
        for w in self._writers.values():
            w.close()
        self._writers = {}
        self._memory = []
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
