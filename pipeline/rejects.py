"""A stream's rejected values: written as they come to a hidden part file, joined at the end."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa

from . import transforms
from .frames import frame
from .records import RecordType
from .sinks import NdjsonSink
from .source import RecordSource

REJECTS = "rejects.ndjson"


class RejectLog:
    """One stream's rejects, written as they come to a hidden part file (joined at the end)."""

    def __init__(self, folder: Path, rtype: RecordType):
        self._folder, self._rtype = folder, rtype
        self._sink: NdjsonSink | None = None
        self.count = 0

    def _lines(self, lines: pa.RecordBatch, n: int) -> None:
        self._sink = self._sink or NdjsonSink(self._folder, f".{self._rtype.name}.{REJECTS}")
        self._sink.write(lines)
        self.count += n

    def position(self) -> tuple[int, int] | None:
        """(bytes, rejects) written so far, for a checkpoint; None before the first."""
        return None if self._sink is None else self._sink.position()

    def files(self) -> list[Path]:
        return [] if self._sink is None else [self._sink.path]

    def resume(self, position: tuple[int, int] | None) -> None:
        """Continue the part file a killed run left, at a checkpoint's ``position``."""
        path = self._folder / f".{self._rtype.name}.{REJECTS}"
        if position is None:
            path.unlink(missing_ok=True)
            return
        self._sink = NdjsonSink(self._folder, path.name, resume=(position[0], position[1]))
        self.count = position[1]

    def write(self, bad: pa.Table) -> None:
        """Rejects as the transforms give them (with sort columns, which are not written)."""
        if bad.num_rows:
            self._lines(_reject_lines(bad.select(transforms.REJECT_SCHEMA.names)), bad.num_rows)

    def unplaced(self, source: RecordSource) -> None:
        """The rows a time filter left out because their time is not an instant."""
        if source.unplaced.keys:
            self._lines(_reject_lines(_unplaced_rejects(self._rtype, source)), len(source.unplaced.keys))

    def close(self) -> tuple[Path, int] | None:
        """The part file and its count, or None if there was no reject."""
        if self._sink is None:
            return None
        self._sink.close()
        return self._folder / self._sink.name, self.count

    def abort(self) -> None:
        if self._sink is not None:
            self._sink.abort()


def _reject_lines(bad: pa.RecordBatch) -> pa.RecordBatch:
    df = frame(bad)
    line = transforms.escape_line_separators(pl.struct(pl.all()).struct.json_encode())
    return transforms.to_batch(df.select(line.alias("json")))


def _unplaced_rejects(rtype: RecordType, source: RecordSource) -> pa.RecordBatch:
    n = len(source.unplaced.keys)
    return pa.RecordBatch.from_pydict(
        {
            "type": [rtype.name] * n,
            "key": source.unplaced.keys,
            "column": [rtype.time] * n,
            "value": source.unplaced.values,
            "reason": [
                "not a timestamp in the years 0001-9999 (UTC); the row cannot be placed in time, so"
                " --since/--until excluded it"
            ]
            * n,
        },
        schema=transforms.REJECT_SCHEMA,
    )
