"""pipeline: export a Bluesky archive (SQLite) to CSV, JSON and NDJSON, streaming Arrow batches.

The stages are usable on their own: ``Archive(...).read(POSTS)`` yields
``pyarrow.RecordBatch``es, ``transforms`` maps them to export columns, and the
sinks write them. ``export`` wires them together as the CLI does.
"""

from __future__ import annotations

__version__ = "0.2.0"

from . import transforms  # noqa: E402
from .errors import ArchiveError, ExportError, OutputError, PipelineError, UsageError  # noqa: E402
from .records import POSTS, RECORD_TYPES, RecordType  # noqa: E402
from .run import ExportResult, export  # noqa: E402
from .sinks import CsvSink, FileResult, JsonArraySink, NdjsonSink  # noqa: E402
from .source import Archive, Filters  # noqa: E402

__all__ = [
    "POSTS",
    "RECORD_TYPES",
    "Archive",
    "ArchiveError",
    "CsvSink",
    "ExportError",
    "ExportResult",
    "FileResult",
    "Filters",
    "JsonArraySink",
    "NdjsonSink",
    "OutputError",
    "PipelineError",
    "RecordType",
    "UsageError",
    "export",
    "transforms",
]
