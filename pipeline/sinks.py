"""CSV / JSON / NDJSON writers with a lifecycle: open → write(batch)… → close() or abort().
(The Parquet writer is in ``parquet_sink``, registered in ``SINKS`` here.)

Every sink hashes (SHA-256) and counts the bytes it writes as it writes them, so
the manifest needs no second read of the files. With ``--compress`` the file on
disk is gzip or zstd, compressed while written (``Compression``); the hash and
size are the compressed bytes', and the uncompressed size is counted beside.
Splitting into numbered parts is a layer above the sinks (pipeline.parts).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from . import transforms
from .frames import series
from .records import RecordType

BOM = b"\xef\xbb\xbf"
BLOCK = 4 * 2**20  # uncompressed bytes per compression call (and per zstd frame)
CODECS = {"gzip": (".gz", 1, 9, 6), "zstd": (".zst", 1, 19, 3)}  # suffix, lowest, highest, default level
CSV_SAFE = r"^[=+\-@\t\r]"  # a text cell a spreadsheet reads as a formula (OWASP's CSV injection list)
CSV_SAFE_GROUP = r"^([=+\-@\t\r])"


@dataclass(frozen=True)
class Compression:
    """A codec and level for the text files (``--compress``, ``--compress-level``).

    The output depends on the uncompressed bytes only, never on how they were
    written: they are fed to the codec in fixed ``BLOCK``s. gzip is one zlib
    stream (Python's ``zlib``, header with no name and mtime 0); zstd is one frame
    per block (pyarrow's codec: its streaming writer takes no level), which
    every zstd reader reads as one stream.
    """

    codec: str
    level: int

    @property
    def suffix(self) -> str:
        return CODECS[self.codec][0]

    def compressor(self) -> _Blocks:
        return _Blocks(self)


class _Blocks:
    """Compresses what it is given in fixed blocks; ``write`` and ``finish`` return disk bytes."""

    def __init__(self, compression: Compression):
        self._pending = bytearray()
        self._blocks = 0  # blocks compressed so far
        if compression.codec == "gzip":
            z = zlib.compressobj(compression.level, zlib.DEFLATED, 31)  # 31: a gzip header, mtime 0, no name
            self._block, self._tail = z.compress, z.flush
        else:
            codec = pa.Codec("zstd", compression_level=compression.level)
            self._block, self._tail = (lambda view: codec.compress(view, asbytes=True)), (lambda: b"")

    def write(self, view: memoryview) -> list[bytes]:
        out = []
        if self._pending:
            take = min(BLOCK - len(self._pending), view.nbytes)
            self._pending += view[:take]
            view = view[take:]
            if len(self._pending) < BLOCK:
                return out
            out.append(self._block(memoryview(self._pending)))
            self._pending = bytearray()
            self._blocks += 1
        while view.nbytes >= BLOCK:  # straight from the caller's buffer: no copy
            out.append(self._block(view[:BLOCK]))
            view = view[BLOCK:]
            self._blocks += 1
        self._pending += view
        return out

    def finish(self) -> list[bytes]:
        # a file of no text still gets one block: a zstd frame of nothing (9 bytes), which
        # ``zstd -d`` reads as empty (it refuses a file of 0 bytes); for gzip it adds no byte
        out = [self._block(memoryview(self._pending))] if self._pending or not self._blocks else []
        return [*out, self._tail()]


@dataclass(frozen=True)
class FileOptions:
    """How a stream's files are laid out: compressed, split into parts, CSV cells made
    spreadsheet-safe. ``split_bytes`` counts uncompressed bytes."""

    compression: Compression | None = None
    split_rows: int | None = None
    split_bytes: int | None = None
    csv_safe: bool = False

    @property
    def split(self) -> bool:
        return self.split_rows is not None or self.split_bytes is not None


@dataclass(frozen=True)
class FileResult:
    """What one sink wrote: path (relative to the export folder), records, bytes, SHA-256;
    with ``--compress`` the uncompressed size, with ``--csv-safe`` the cells prefixed."""

    path: str
    records: int
    size_bytes: int
    sha256: str
    uncompressed_bytes: int | None = None
    csv_safe_cells: int | None = None


class HashingFile:
    """A binary file that hashes and counts what goes through it.

    ``resume``: continue a file a killed run wrote: cut it back to that many
    bytes (what a checkpoint recorded) and hash them again by reading them.
    ``compression``: what is written is compressed on its way to disk (``size``
    and the hash are the disk's bytes, ``raw_size`` what was written); such a
    file cannot be resumed.
    """

    def __init__(self, path: Path, resume: int | None = None, compression: Compression | None = None):
        self.path = path
        self._hash = hashlib.sha256()
        self.size = 0
        self.raw_size = 0
        self.closed = False
        self._z = None if compression is None else compression.compressor()
        if resume is None:
            self._f = open(path, "xb")  # noqa: SIM115 - closed by close()/abort()
            return
        if self._z is not None:
            raise ValueError(f"{path}: a compressed file cannot be continued")
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
            self.raw_size = self.size
            self._f.seek(resume)
        except BaseException:
            self._f.close()
            raise

    @property
    def compressed(self) -> bool:
        return self._z is not None

    def write(self, data: bytes | memoryview | pa.Buffer) -> int:
        view = memoryview(data)
        self.raw_size += view.nbytes
        if self._z is None:
            self._disk(view)
        else:
            for block in self._z.write(view):
                self._disk(block)
        return view.nbytes

    def _disk(self, data: bytes | memoryview) -> None:
        self._f.write(data)
        self._hash.update(data)
        self.size += len(data) if isinstance(data, bytes) else data.nbytes

    def flush(self) -> None:
        self._f.flush()

    def finish(self) -> str:
        """Flush to disk (fsync) and close; return the hex digest."""
        if self._z is not None:
            for block in self._z.finish():
                self._disk(block)
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
    ``compression``: the file is compressed while written (then not resumable).
    For ``--split-bytes`` a sink says what a file of no records takes
    (``empty_bytes``) and what each record adds to it (``sizes``), uncompressed.
    """

    empty_bytes = 0
    appendable = True  # a file cut back to ``position`` can be continued (Parquet's cannot: its footer comes last)

    def __init__(
        self,
        folder: Path,
        name: str,
        resume: tuple[int, ...] | None = None,
        compression: Compression | None = None,
    ):
        self.name = name
        self._file = HashingFile(folder / name, None if resume is None else resume[0], compression)
        self.records = 0 if resume is None else resume[1]

    def position(self) -> tuple[int, ...]:
        """(bytes, records) written so far, flushed to the OS: a point to resume from."""
        self._file.flush()
        return self._file.size, self.records

    @property
    def path(self) -> Path:
        return self._file.path

    def sizes(self, batch: pa.RecordBatch) -> pl.Series:
        """The bytes each record of ``batch`` adds to the file, uncompressed."""
        raise NotImplementedError(f"{type(self).__name__} cannot be split by bytes")

    def write(self, batch: pa.RecordBatch) -> None:
        self._write(batch)
        self.records += batch.num_rows

    def _write(self, batch: pa.RecordBatch) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        pass

    def _result(self, digest: str) -> FileResult:
        raw = self._file.raw_size if self._file.compressed else None
        return FileResult(self.name, self.records, self._file.size, digest, raw)

    def close(self) -> FileResult:
        self._finish()
        return self._result(self._file.finish())

    def abort(self) -> None:
        self._file.discard()


class CsvSink(Sink):
    """UTF-8 CSV with a BOM, a header row (unquoted, as bskyarchive's Go writer writes it),
    RFC 4180 quoting, ``\\n`` line ends.

    ``csv_safe``: text cells that start with ``=``, ``+``, ``-``, ``@``, tab or CR get a
    ``'`` in front (a spreadsheet would read them as formulas), counted in ``cells``.
    ``resume`` then carries that count as a third number.
    """

    def __init__(
        self,
        folder: Path,
        name: str,
        schema: pa.Schema,
        resume: tuple[int, ...] | None = None,
        compression: Compression | None = None,
        csv_safe: bool = False,
    ):
        super().__init__(folder, name, resume, compression)
        header = BOM + ",".join(schema.names).encode("utf-8") + b"\n"
        self.empty_bytes = len(header)
        if resume is None:  # the header names are this tool's own: nothing in them needs quoting
            self._file.write(header)
        self.csv_safe = csv_safe
        self.cells = (resume[2] if resume is not None and len(resume) > 2 else 0) if csv_safe else None
        self._text = [i for i, f in enumerate(schema) if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
        # pyarrow's writer writes each batch through at once: position() holds whole rows
        self._writer = pa_csv.CSVWriter(
            self._file, schema, write_options=pa_csv.WriteOptions(include_header=False, eol="\n")
        )

    def position(self) -> tuple[int, ...]:
        at = super().position()
        return at if self.cells is None else (*at, self.cells)

    def _safe(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, int]:
        """``batch`` with its formula-like text cells prefixed by ``'``, and how many there were."""
        columns, changed = list(batch.columns), 0
        for i in self._text:
            n = pc.sum(pc.match_substring_regex(columns[i], CSV_SAFE)).as_py() or 0
            if n:
                columns[i] = pc.replace_substring_regex(columns[i], CSV_SAFE_GROUP, "'\\1")
                changed += n
        return (pa.RecordBatch.from_arrays(columns, schema=batch.schema) if changed else batch), changed

    def sizes(self, batch: pa.RecordBatch) -> pl.Series:
        """Each row's bytes as pyarrow's writer writes it: a text cell quoted (its quotes
        doubled), a number as digits, a boolean as true/false, NULL as nothing; commas, ``\\n``."""
        if self.csv_safe:
            batch = self._safe(batch)[0]
        total = pa.repeat(pa.scalar(batch.num_columns, pa.int64()), batch.num_rows)  # separators and the line end
        for column in batch.columns:
            if pa.types.is_boolean(column.type):
                width = pc.if_else(column, 4, 5)
            elif pa.types.is_integer(column.type):
                width = pc.utf8_length(column.cast(pa.string()))
            else:
                width = pc.add(pc.add(pc.binary_length(column), 2), pc.count_substring(column, '"'))
            total = pc.add(total, pc.fill_null(width, 0).cast(pa.int64()))
        return series(total)

    def _write(self, batch: pa.RecordBatch) -> None:
        if self.csv_safe:
            batch, n = self._safe(batch)
            self.cells += n
        self._writer.write_batch(batch)

    def _finish(self) -> None:
        self._writer.close()

    def _result(self, digest: str) -> FileResult:
        result = super()._result(digest)
        return result if self.cells is None else FileResult(**{**result.__dict__, "csv_safe_cells": self.cells})


def _joined(batch: pa.RecordBatch, separator: str) -> pa.Buffer:
    """The batch's single string column, rows joined by ``separator``, as UTF-8 (no copy to Python)."""
    values = batch.column(0).cast(pa.large_string())
    one_list = pa.LargeListArray.from_arrays(pa.array([0, len(values)], pa.int64()), values)
    joined = pc.binary_join(one_list, pa.scalar(separator, pa.large_string()))
    start, end = memoryview(joined.buffers()[1]).cast("q")[joined.offset : joined.offset + 2]
    return joined.buffers()[2].slice(start, end - start)


def _lengths(batch: pa.RecordBatch, separator: int) -> pl.Series:
    """Each encoded object's UTF-8 bytes plus ``separator``."""
    return series(pc.binary_length(batch.column(0))).cast(pl.Int64) + separator


class NdjsonSink(Sink):
    """One JSON document per line; each batch holds one column of encoded objects."""

    def sizes(self, batch: pa.RecordBatch) -> pl.Series:
        return _lengths(batch, 1)

    def _write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows:
            self._file.write(_joined(batch, "\n"))
            self._file.write(b"\n")


class JsonArraySink(Sink):
    """A JSON array: ``[`` line, one object per line joined by ``,\\n``, then ``]``."""

    empty_bytes = 3  # "[]\n"; with records "[\n" + each object and ",\n" (one fewer) + "\n]\n"

    def sizes(self, batch: pa.RecordBatch) -> pl.Series:
        return _lengths(batch, 2)

    def _write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows:
            self._file.write(b",\n" if self.records else b"[\n")
            self._file.write(_joined(batch, ",\n"))

    def _finish(self) -> None:
        self._file.write(b"\n]\n" if self.records else b"[]\n")


from .parquet_sink import ParquetSink  # noqa: E402 - it subclasses Sink, defined above

SINKS: dict[str, type[Sink]] = {"csv": CsvSink, "json": JsonArraySink, "ndjson": NdjsonSink, "parquet": ParquetSink}
COMPRESSIBLE = frozenset({"csv", "json", "ndjson"})  # a columnar format (Parquet) compresses inside its own file


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


def file_name(stem: str, fmt: str, files: FileOptions = FileOptions(), part: int | None = None) -> str:
    """``<stem>[-<part, 5 digits>].<fmt>[.gz|.zst]``: the name of one of a stream's files."""
    number = "" if part is None else f"-{part:05d}"
    suffix = files.compression.suffix if files.compression is not None and fmt in COMPRESSIBLE else ""
    return f"{stem}{number}.{fmt}{suffix}"


def open_sink(
    folder: Path,
    rtype: RecordType,
    fmt: str,
    stem: str | None = None,
    resume: tuple[int, ...] | None = None,
    files: FileOptions = FileOptions(),
    part: int | None = None,
) -> Sink:
    """The sink of ``rtype`` in format ``fmt``: ``file_name(<stem or type>, fmt, files, part)`` in
    ``folder``; ``resume`` (size, records) continues a file a killed run left. ``files``:
    compression (text formats only) and ``--csv-safe``."""
    name = file_name(stem or rtype.name, fmt, files, part)
    compression = files.compression if fmt in COMPRESSIBLE else None
    if fmt == "csv":
        return CsvSink(folder, name, transforms.csv_schema(rtype), resume, compression, files.csv_safe)
    if fmt == "parquet":
        return ParquetSink(folder, name, rtype, resume)
    return SINKS[fmt](folder, name, resume, compression)


def resumable(fmt: str, files: FileOptions) -> bool:
    """Whether ``fmt``'s files, with ``files``' options, can be cut back to a checkpoint and
    continued: not Parquet's (the footer comes last), not compressed ones."""
    return SINKS[fmt].appendable and (files.compression is None or fmt not in COMPRESSIBLE)
