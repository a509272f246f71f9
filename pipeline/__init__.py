"""pipeline: export a Bluesky archive (SQLite) to CSV, JSON and NDJSON, streaming Arrow batches.

The stages are usable on their own: ``Archive(...).read(POSTS)`` yields
``pyarrow.RecordBatch``es, ``transforms`` maps them to export columns, and the
sinks write them. ``export`` wires them together as the CLI does; ``export_many``
runs it for many archives on a process pool or Ray (``pipeline.ray``: Ray Datasets).
"""

from __future__ import annotations

from . import transforms
from .errors import ArchiveError, ExportError, OutputError, PipelineError, UsageError
from .many import ArchiveRun, ManyResult, export_many
from .options import ExportOptions
from .records import POSTS, RECORD_TYPES, RecordType
from .run import ExportResult, export
from .sinks import CsvSink, FileResult, JsonArraySink, NdjsonSink
from .source import Archive, Filters
from .tuning import Tuning
from .version import __version__

__all__ = [
    "__version__",
    "ExportOptions",
    "POSTS",
    "RECORD_TYPES",
    "Archive",
    "ArchiveError",
    "ArchiveRun",
    "CsvSink",
    "ExportError",
    "ExportResult",
    "FileResult",
    "Filters",
    "JsonArraySink",
    "ManyResult",
    "NdjsonSink",
    "OutputError",
    "PipelineError",
    "RecordType",
    "UsageError",
    "export",
    "export_many",
    "transforms",
    "Tuning",
]
