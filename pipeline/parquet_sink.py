"""The Parquet writer: typed columns, streamed row group by row group, hashed as written.

A Parquet file is its row groups and then a footer that lists them, so it is
written with ``pyarrow.parquet.ParquetWriter`` into the sink's ``HashingFile``,
one row group at a time, never built whole. Row groups end after
``ROW_GROUP_ROWS`` rows or once they hold ``ROW_GROUP_BYTES`` of values,
whichever comes first, counted over the rows in export order: their bounds (and
so the file's bytes) do not depend on how the rows arrive (``--batch-size``,
``--batch-bytes``, ``--jobs``). Columns are compressed with zstd.

A file cut back to a checkpoint would have no footer, so a Parquet sink cannot
continue a killed run's file (``appendable`` is False): the stream writes its
files again (see ``record_stream`` and ``ops_stream``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from .frames import series
from .records import RecordType
from .sinks import HashingFile, Sink

ROW_GROUP_ROWS = 65_536
ROW_GROUP_BYTES = 16 * 2**20  # of values, as Arrow holds them: the writer holds a few times this (measured)
COMPRESSION = "zstd"
REPEATED_TEXTS = frozenset({"did", "embed_type", "collection", "action"})  # few distinct values
# Parquet's JSON logical type (pyarrow 19+ writes it for its arrow.json extension type): DuckDB
# then reads embed_data and labels as JSON. Older pyarrow: plain strings.
JSON_TYPE: pa.DataType = pa.json_(pa.string()) if hasattr(pa, "json_") else pa.string()
_TYPES: dict[str, pa.DataType] = {
    "text": pa.string(),
    "timestamp": pa.timestamp("ns", tz="UTC"),
    "int": pa.int64(),
    "bool": pa.bool_(),
    "json": JSON_TYPE,
}
_WIDTH = {"timestamp": 8, "int": 8, "bool": 1}  # bytes per value of the fixed-width kinds


def parquet_schema(rtype: RecordType) -> pa.Schema:
    """The columns of ``rtype``'s Parquet file: the archive's names, in JSON key order, typed."""
    return pa.schema([(c.name, _TYPES[c.kind]) for c in rtype.columns])


class _Output:
    """``HashingFile`` as the file object ParquetWriter writes to; ``drop`` makes it discard
    writes (an aborted writer still writes its footer when closed)."""

    def __init__(self, file: HashingFile):
        self._file = file
        self._dropped = False
        self.closed = False

    def write(self, data: bytes | memoryview) -> int:
        return len(data) if self._dropped else self._file.write(data)

    def tell(self) -> int:
        return self._file.size

    def flush(self) -> None:
        if not self._dropped:
            self._file.flush()

    def close(self) -> None:  # the sink closes the file (fsync, digest)
        self.closed = True

    def drop(self) -> None:
        self._dropped = True


class ParquetSink(Sink):
    """A Parquet file of ``rtype``'s typed columns (a converted chunk's ``pq:`` columns)."""

    appendable = False

    def __init__(self, folder: Path, name: str, rtype: RecordType, resume: tuple[int, int] | None = None):
        if resume is not None:
            raise ValueError(f"{name}: a Parquet file cannot be continued from a checkpoint")
        super().__init__(folder, name)
        self.schema = parquet_schema(rtype)
        self._fixed = sum(_WIDTH.get(c.kind, 0) for c in rtype.columns)
        self._texts = [c.name for c in rtype.columns if c.kind in ("text", "json")]
        self._out = _Output(self._file)
        # dictionary-encode only columns whose values repeat (a dictionary of unique texts only costs memory)
        repeated = [c.name for c in rtype.columns if c.kind not in ("text", "json") or c.name in REPEATED_TEXTS]
        import pyarrow.parquet as pq  # here: 15 ms of start-up that other exports need not pay

        self._writer = pq.ParquetWriter(self._out, self.schema, compression=COMPRESSION, use_dictionary=repeated)
        self._group: list[pa.RecordBatch] = []
        self._group_rows = self._group_bytes = 0

    def position(self) -> tuple[int, int]:
        raise TypeError("a Parquet file has no point to resume from before its footer")

    def _write(self, batch: pa.RecordBatch) -> None:
        batch = self._typed(batch)
        cum = self._row_bytes(batch).cum_sum()
        start, before = 0, 0  # the bytes of the rows before ``start``
        while start < batch.num_rows:
            # the group ends at its ROW_GROUP_ROWS-th row, or at the row that brings it to ROW_GROUP_BYTES
            room = ROW_GROUP_BYTES - self._group_bytes
            last = cum.search_sorted(before + room, side="left")  # first row reaching the limit
            take = min(int(last) + 1 - start, ROW_GROUP_ROWS - self._group_rows, batch.num_rows - start)
            end_bytes = int(cum[start + take - 1])
            self._group.append(batch.slice(start, take))
            self._group_rows += take
            self._group_bytes += end_bytes - before
            start, before = start + take, end_bytes
            if self._group_rows >= ROW_GROUP_ROWS or self._group_bytes >= ROW_GROUP_BYTES:
                self._flush_group()

    def _typed(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The batch in the file's schema (Polars hands over large strings; JSON gets its type)."""
        arrays = []
        for f in self.schema:
            col = batch.column(f.name)
            if isinstance(f.type, pa.BaseExtensionType):
                arrays.append(pa.ExtensionArray.from_storage(f.type, col.cast(f.type.storage_type)))
            else:
                arrays.append(col.cast(f.type))
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def _row_bytes(self, batch: pa.RecordBatch) -> pl.Series:
        """Each row's size: its text's bytes and the fixed-width values."""
        total = pa.repeat(pa.scalar(self._fixed, pa.int64()), batch.num_rows)
        for name in self._texts:
            col = batch.column(name)
            if isinstance(col, pa.ExtensionArray):
                col = col.storage
            total = pc.add(total, pc.fill_null(pc.binary_length(col), 0).cast(pa.int64()))
        return series(total)

    def _flush_group(self) -> None:
        if self._group_rows:
            table = pa.Table.from_batches(self._group, self.schema)
            self._writer.write_table(table, row_group_size=self._group_rows)
        self._group, self._group_rows, self._group_bytes = [], 0, 0

    def _finish(self) -> None:
        self._flush_group()
        self._writer.close()

    def abort(self) -> None:
        self._out.drop()
        with contextlib.suppress(Exception):  # the footer goes nowhere
            self._writer.close()
        super().abort()
