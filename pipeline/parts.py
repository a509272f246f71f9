"""``Output``: a stream's files in one format, one file or numbered parts (``--split-rows``,
``--split-bytes``).

A layer over any ``Sink``: it opens a sink per part (``<stem>-00001.<ext>``, …)
and cuts each batch where a part would pass its limits, so every part is a
whole file of its format (a CSV part has the BOM and the header, a JSON part is
an array). The cuts depend on the records alone (their count and their
uncompressed bytes, which the sink computes: ``Sink.sizes``), never on how the
records came in batches. Without limits it is one file with no number.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow as pa

from .errors import ExportError
from .records import RecordType
from .sinks import FileOptions, FileResult, Sink, open_sink

# A part's sink: (part number or None for an unsplit file, resume point or None) → Sink
OpenPart = Callable[[int | None, tuple[int, ...] | None], Sink]


class Output:
    """Writes batches into one file or into numbered parts, at most ``split_rows`` records and
    ``split_bytes`` uncompressed bytes each (a record larger than that alone in its part).

    ``position`` / ``resume``: the parts finished (their results) and the current
    part's sink position, for a checkpoint; finished parts are kept as they are.
    """

    def __init__(self, folder: Path, files: FileOptions, open_part: OpenPart, resume: dict[str, Any] | None = None):
        self.folder, self.files, self._open = folder, files, open_part
        self.done: list[FileResult] = []
        self.records = 0
        if resume is None:
            self._sink = open_part(1 if files.split else None, None)
            self._part_bytes = self._sink.empty_bytes  # uncompressed, once the part is closed
        else:
            self._resume(resume)

    def _resume(self, state: dict[str, Any]) -> None:
        """Finished parts as recorded (each still its recorded size), the current one cut back;
        parts the killed run began after the checkpoint removed. OSError, KeyError, TypeError
        or ValueError if the files are not as the checkpoint says."""
        self.done = [FileResult(**f) for f in state["done"]]
        for f in self.done:
            if (self.folder / f.path).stat().st_size != f.size_bytes:
                raise ValueError(f"{f.path} changed since the checkpoint")
        number = len(self.done) + 1 if self.files.split else None
        at = tuple(int(v) for v in state["part"])
        self._sink = self._open(number, at)
        self._part_bytes = int(state["part_bytes"])
        self.records = sum(f.records for f in self.done) + self._sink.records
        if number is not None:
            later = number + 1
            while (path := self._sink.path.with_name(self._part_name(later))).exists():
                path.unlink()
                later += 1

    def _part_name(self, number: int) -> str:
        current = self._sink.name  # <stem>-NNNNN.<ext>: the number is the last dash's
        stem, _, rest = current.rpartition("-")
        return f"{stem}-{number:05d}{rest[5:]}"

    def position(self) -> dict[str, Any]:
        """Where this output stands, for a checkpoint (JSON)."""
        return {
            "records": self.records,
            "part": list(self._sink.position()),
            "part_bytes": self._part_bytes,
            "done": [asdict(f) for f in self.done],
        }

    @property
    def path(self) -> Path:
        """The file being written."""
        return self._sink.path

    def write(self, batch: pa.RecordBatch) -> None:
        rows, limit = self.files.split_rows, self.files.split_bytes
        if not self.files.split:
            self._sink.write(batch)
            self.records += batch.num_rows
            return
        ends = self._sink.sizes(batch).cum_sum() if limit is not None else None
        start, n = 0, batch.num_rows
        while start < n:
            take = n - start
            if rows is not None:
                take = min(take, rows - self._sink.records)
            if ends is not None and limit is not None:
                before = int(ends[start - 1]) if start else 0
                fits = int(ends.search_sorted(before + limit - self._part_bytes, side="right")) - start
                take = min(take, fits)
                if take <= 0 and not self._sink.records:
                    take = 1  # a record larger than a part: a part of its own
            if take <= 0:
                self._next_part()
                continue
            self._sink.write(batch.slice(start, take))
            if ends is not None:
                self._part_bytes += int(ends[start + take - 1]) - (int(ends[start - 1]) if start else 0)
            self.records += take
            start += take

    def _next_part(self) -> None:
        self.done.append(self._close_part())
        self._sink = self._open(len(self.done) + 1, None)
        self._part_bytes = self._sink.empty_bytes

    def _close_part(self) -> FileResult:
        result = self._sink.close()
        if self.files.split_bytes is not None:  # the cuts were made by sizes computed ahead: check them
            written = result.uncompressed_bytes if result.uncompressed_bytes is not None else result.size_bytes
            if written != self._part_bytes:
                raise ExportError(
                    f"{result.path} has {written:,} bytes where {self._part_bytes:,} were computed for splitting "
                    "(a bug; please report it)"
                )
        return result

    def close(self) -> list[FileResult]:
        """The files written, in order."""
        return [*self.done, self._close_part()]

    def abort(self) -> None:
        self._sink.abort()
        for f in self.done:
            (self.folder / f.path).unlink(missing_ok=True)


def open_output(
    folder: Path,
    rtype: RecordType,
    fmt: str,
    files: FileOptions,
    stem: str | None = None,
    resume: dict[str, Any] | None = None,
) -> Output:
    """The files of ``rtype`` in format ``fmt`` (``<stem or type>[-NNNNN].<fmt>[.gz|.zst]``)
    in ``folder``; ``resume``: an ``Output.position`` a killed run recorded."""

    def open_part(number: int | None, at: tuple[int, ...] | None) -> Sink:
        return open_sink(folder, rtype, fmt, stem, at, files, number)

    return Output(folder, files, open_part, resume)
