"""``ExportOptions``: what an export is asked to do, validated once, and its fingerprint.

Every CLI option maps to one field (``pipeline run export --help``); the
library's ``export(**kw)`` builds the same object. Invalid values raise
``UsageError`` (exit 2) before anything is opened.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .errors import UsageError
from .records import RECORD_TYPES
from .sinks import CODECS, SINKS, Compression, FileOptions
from .source import BATCH_BYTES, RETRIES, Filters, iso_bound
from .version import __version__

FORMATS = tuple(SINKS)
DEFAULT_FORMATS = ("csv", "json")
MAX_BATCH_SIZE = 2**20  # rows; pages are cut by --batch-bytes anyway, and SQLite's driver takes an int32
MIN_SPLIT_BYTES = 2**10  # a CSV part's header alone takes ~150 bytes


@dataclass(frozen=True)
class ExportOptions:
    """An export's options; ``filters`` is derived (the time bounds parsed). ``did`` may be
    ``"self"``: the archive's owner, resolved once the archive is open."""

    archive: Path
    out: Path | None = None
    formats: tuple[str, ...] = DEFAULT_FORMATS
    types: tuple[str, ...] | None = None  # None: every type the archive has
    ops: bool = False
    include_media: bool = False
    media_root: Path | None = None
    jobs: int | None = None
    did: str | None = None
    since: str | datetime | None = None
    until: str | datetime | None = None
    batch_size: int = 1000
    batch_bytes: int = BATCH_BYTES
    max_rejects: int | None = None
    retries: int = RETRIES
    skip_unchanged: bool = False
    resume: bool = False
    compress: str | None = None  # "gzip" or "zstd"
    compress_level: int | None = None  # None: the codec's default (gzip 6, zstd 3)
    split_rows: int | None = None
    split_bytes: int | None = None
    csv_safe: bool = False
    filters: Filters = field(init=False, repr=False)
    files: FileOptions = field(init=False, repr=False)

    def __post_init__(self) -> None:
        unknown = [f for f in self.formats if f not in SINKS]
        if unknown or not self.formats:
            raise UsageError(f"unknown format(s): {', '.join(unknown) or '(none)'}; choose from {', '.join(FORMATS)}")
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise UsageError(f"--batch-size must be between 1 and {MAX_BATCH_SIZE:,}, not {self.batch_size:,}")
        if self.batch_bytes < 2**20:
            raise UsageError(f"--batch-bytes must be at least 1 MiB, not {self.batch_bytes}")
        if self.retries < 0:
            raise UsageError(f"--retries must be 0 or more, not {self.retries}")
        if self.max_rejects is not None and self.max_rejects < 0:
            raise UsageError(f"--max-rejects must be 0 or more, not {self.max_rejects}")
        if self.jobs is not None and self.jobs < 1:
            raise UsageError(f"--jobs must be at least 1, not {self.jobs}")
        if self.did is not None and not _utf8(self.did):
            raise UsageError(f"--did {self.did!r} is not UTF-8 text: no DID is")
        object.__setattr__(self, "filters", Filters.parse(did=self.did, since=self.since, until=self.until))
        object.__setattr__(self, "files", self._files())

    def _files(self) -> FileOptions:
        """The file layout options, checked: a known codec and a level in its range, limits above 0."""
        compression = None
        if self.compress is not None:
            if self.compress not in CODECS:
                raise UsageError(f"unknown --compress {self.compress!r}; choose from {', '.join(CODECS)}")
            _, low, high, default = CODECS[self.compress]
            level = default if self.compress_level is None else self.compress_level
            if not low <= level <= high:
                raise UsageError(f"--compress-level for {self.compress} must be between {low} and {high}, not {level}")
            compression = Compression(self.compress, level)
        elif self.compress_level is not None:
            raise UsageError("--compress-level needs --compress gzip or --compress zstd")
        if self.split_rows is not None and self.split_rows < 1:
            raise UsageError(f"--split-rows must be at least 1, not {self.split_rows}")
        if self.split_bytes is not None and self.split_bytes < MIN_SPLIT_BYTES:
            raise UsageError(f"--split-bytes must be at least 1K, not {self.split_bytes}")
        if self.split_bytes is not None and "parquet" in self.formats:
            # a Parquet file's size is known only once its row groups are compressed
            raise UsageError("--split-bytes splits CSV, JSON and NDJSON files; split Parquet files with --split-rows")
        if self.csv_safe and "csv" not in self.formats:
            raise UsageError("--csv-safe changes CSV files only; add --format csv")
        return FileOptions(compression, self.split_rows, self.split_bytes, self.csv_safe)

    def layout(self) -> dict[str, object]:
        """The options that change the files' names and bytes beyond their format (for the
        fingerprint and the manifest); empty with the defaults, so earlier exports' fingerprints stand."""
        files, layout = self.files, dict[str, object]()
        if files.compression is not None:
            layout["compression"] = {"codec": files.compression.codec, "level": files.compression.level}
        if files.split:
            layout["split"] = {"rows": files.split_rows, "bytes": files.split_bytes}
        if files.csv_safe:
            layout["csv_safe"] = True
        return layout

    def fingerprint(self, types: Sequence[str], filters: Filters) -> dict[str, object]:
        """What the files depend on: the archive's identity and the options that shape them.

        The archive is identified by its path, size and modification time, and
        those of its write-ahead log if it has one (SQLite writes to the log first),
        not by a hash of its content, which would read the whole archive once more.
        ``types`` and ``filters`` as resolved against the archive (``--did self``).
        ``--jobs``, ``--batch-size``, ``--batch-bytes`` and ``--retries`` are left
        out: the files do not depend on them.
        """
        path = self.archive.resolve()
        inputs: dict[str, object] = {
            "tool_version": __version__,
            "archive": {"path": path_text(path), **(_identity(path) or {})},
            "wal": _identity(path.with_name(path.name + "-wal")),
            "formats": list(self.formats),
            "types": list(types),
            "ops": self.ops,
            "include_media": self.include_media,
            "media_root": None if self.media_root is None else path_text(self.media_root.resolve()),
            "filters": {"did": filters.did, "since": iso_bound(filters.since), "until": iso_bound(filters.until)},
            **self.layout(),
        }
        digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
        return {"sha256": digest, **inputs}


def _identity(path: Path) -> dict[str, object] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return {"size_bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def parse_types(types: Sequence[str] | str | None) -> tuple[str, ...] | None:
    """Record type names from ``--types`` (comma-separated, repeatable); None for all."""
    if types is None:
        return None
    if isinstance(types, str):
        types = [types]
    names = tuple(dict.fromkeys(n.strip() for t in types for n in t.split(",") if n.strip()))
    unknown = [n for n in names if n not in RECORD_TYPES]
    if unknown or not names:
        raise UsageError(
            f"unknown record type(s): {', '.join(unknown) or '(none)'}; choose from {', '.join(RECORD_TYPES)}"
        )
    return names


def path_text(path: Path) -> str:
    """A path as JSON text: bytes that are not UTF-8 (a path is bytes on POSIX) as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def unicode_text(text: str) -> str:
    """``text`` as valid Unicode (what a UTF-8 file or JSON can hold): the surrogates that stand
    for bytes that are not UTF-8 (a path's, in an error message) as ``\\xNN``, as ``path_text``
    writes them; any other lone surrogate as ``\\uNNNN``."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _utf8(text: str) -> bool:
    """Whether ``text`` is valid Unicode (command-line bytes that are not UTF-8 arrive as surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
