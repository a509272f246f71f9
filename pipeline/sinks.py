"""CSV / JSON / NDJSON writers with a lifecycle: open → write(batch)… → close() or abort().
(The Parquet writer is in ``parquet_sink``, registered in ``SINKS`` here.)

Every sink hashes (SHA-256) and counts the bytes it writes as it writes them, so
the manifest needs no second read of the files.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from . import transforms
from .records import RecordType

BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class FileResult:
    """What one sink wrote: path (relative to the export folder), records, bytes, SHA-256."""

    path: str
    records: int
    size_bytes: int
    sha256: str


class HashingFile:
    """A binary file that hashes and counts what goes through it.

    ``resume``: continue a file a killed run wrote: cut it back to that many
    bytes (what a checkpoint recorded) and hash them again by reading them.
    """

    def __init__(self, path: Path, resume: int | None = None):
        self.path = path
        self._hash = hashlib.sha256()
        self.size = 0
        self.closed = False
        if resume is None:
            self._f = open(path, "xb")  # noqa: SIM115 - closed by close()/abort()
            return
        self._f = open(path, "r+b")  # noqa: SIM115
        try:
            have = os.fstat(self._f.fileno()).st_size
            if have < resume:  # truncate() would pad it with NUL bytes
                raise OSError(f"{path} is shorter than its checkpoint ({have} of {resume} bytes)")
            self._f.truncate(resume)
            while self.size < resume:
                chunk = self._f.read(min(2**20, resume - self.size))
                if not chunk:
                    raise OSError(f"{path} is shorter than its checkpoint ({self.size} of {resume} bytes)")
                self._hash.update(chunk)
                self.size += len(chunk)
            self._f.seek(resume)
        except BaseException:
            self._f.close()
            raise

    def write(self, data: bytes | memoryview | pa.Buffer) -> int:
        view = memoryview(data)
        self._f.write(view)
        self._hash.update(view)
        self.size += view.nbytes
        return view.nbytes

    def flush(self) -> None:
        self._f.flush()

    def finish(self) -> str:
        """Flush to disk (fsync) and close; return the hex digest."""
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        self.closed = True
        return self._hash.hexdigest()

    def discard(self) -> None:
        if not self._f.closed:
            with contextlib.suppress(OSError):  # the disk may be full; the file goes either way
                self._f.close()
        self.closed = True
        self.path.unlink(missing_ok=True)


class Sink:
    """Base lifecycle. Subclasses implement ``_write`` and may extend ``_finish``.

    ``resume=(size, records)`` continues the file a killed run left, as it was
    when it held ``records`` records in ``size`` bytes (see ``position``).
    """

    resumable = True  # a file cut back to ``position`` can be continued

    def __init__(self, folder: Path, name: str, resume: tuple[int, int] | None = None):
        self.name = name
        self._file = HashingFile(folder / name, None if resume is None else resume[0])
        self.records = 0 if resume is None else resume[1]

    def position(self) -> tuple[int, int]:
        """(bytes, records) written so far, flushed to the OS: a point to resume from."""
        self._file.flush()
        return self._file.size, self.records

    @property
    def path(self) -> Path:
        return self._file.path

    def write(self, batch: pa.RecordBatch) -> None:
        self._write(batch)
        self.records += batch.num_rows

    def _write(self, batch: pa.RecordBatch) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        pass

    def close(self) -> FileResult:
        self._finish()
        digest = self._file.finish()
        return FileResult(self.name, self.records, self._file.size, digest)

    def abort(self) -> None:
        self._file.discard()


class CsvSink(Sink):
    """UTF-8 CSV with a BOM, a header row (unquoted, as bskyarchive's Go writer writes it),
    RFC 4180 quoting, ``\\n`` line ends."""

    def __init__(self, folder: Path, name: str, schema: pa.Schema, resume: tuple[int, int] | None = None):
        super().__init__(folder, name, resume)
        if resume is None:  # the header names are this tool's own: nothing in them needs quoting
            self._file.write(BOM + ",".join(schema.names).encode("utf-8") + b"\n")
        # pyarrow's writer writes each batch through at once: position() holds whole rows
        self._writer = pa_csv.CSVWriter(
            self._file, schema, write_options=pa_csv.WriteOptions(include_header=False, eol="\n")
        )

    def _write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)

    def _finish(self) -> None:
        self._writer.close()


def _joined(batch: pa.RecordBatch, separator: str) -> pa.Buffer:
    """The batch's single string column, rows joined by ``separator``, as UTF-8 (no copy to Python)."""
    values = batch.column(0).cast(pa.large_string())
    one_list = pa.LargeListArray.from_arrays(pa.array([0, len(values)], pa.int64()), values)
    joined = pc.binary_join(one_list, pa.scalar(separator, pa.large_string()))
    start, end = memoryview(joined.buffers()[1]).cast("q")[joined.offset : joined.offset + 2]
    return joined.buffers()[2].slice(start, end - start)


class NdjsonSink(Sink):
    """One JSON document per line; each batch holds one column of encoded objects."""

    def _write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows:
            self._file.write(_joined(batch, "\n"))
            self._file.write(b"\n")


class JsonArraySink(Sink):
    """A JSON array: ``[`` line, one object per line joined by ``,\\n``, then ``]``."""

    def _write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows:
            self._file.write(b",\n" if self.records else b"[\n")
            self._file.write(_joined(batch, ",\n"))

    def _finish(self) -> None:
        self._file.write(b"\n]\n" if self.records else b"[]\n")


from .parquet_sink import ParquetSink  # noqa: E402 - it subclasses Sink, defined above

SINKS: dict[str, type[Sink]] = {"csv": CsvSink, "json": JsonArraySink, "ndjson": NdjsonSink, "parquet": ParquetSink}


def concat_files(folder: Path, name: str, parts: list[tuple[Path, int]], remove: bool = True) -> FileResult:
    """Write ``name`` as the parts (path, records) one after another, hashing as it goes;
    the parts are removed (unless not ``remove``). Streams in 1 MiB pieces."""
    out = HashingFile(folder / name)
    try:
        for path, _ in parts:
            with open(path, "rb") as f:
                while chunk := f.read(2**20):
                    out.write(chunk)
        digest = out.finish()
    except BaseException:
        out.discard()
        raise
    for path, _ in parts if remove else ():
        path.unlink()
    return FileResult(name, sum(n for _, n in parts), out.size, digest)


def open_sink(
    folder: Path, rtype: RecordType, fmt: str, stem: str | None = None, resume: tuple[int, int] | None = None
) -> Sink:
    """The sink of ``rtype`` in format ``fmt``: ``<stem or type>.<fmt>`` in ``folder``; ``resume``
    (size, records) continues a file a killed run left."""
    name = f"{stem or rtype.name}.{fmt}"
    if fmt == "csv":
        return CsvSink(folder, name, transforms.csv_schema(rtype), resume)
    if fmt == "parquet":
        return ParquetSink(folder, name, rtype, resume)
    return SINKS[fmt](folder, name, resume)
