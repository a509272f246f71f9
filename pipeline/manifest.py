"""What an export published: ``ExportResult``, the manifest that describes it, its metrics.

``build`` writes the manifest's fields in one place; ``read_unchanged`` reads an
earlier export back (``--skip-unchanged``, ``--resume``) into the same result.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from .media import MediaResult
from .options import path_text
from .publish import MANIFEST, TOOL
from .sinks import FileResult
from .source import Filters, iso_bound
from .version import __version__

METRICS = "metrics.json"  # beside manifest.json; not listed in it: it differs on every run


@dataclass(frozen=True)
class ExportResult:
    """What an export published: where, how many records, which files, rejects."""

    out: Path
    records: dict[str, int]
    files: list[FileResult]
    rejects: int
    manifest: dict[str, object] = field(repr=False)
    warnings: list[str] = field(default_factory=list)  # cleanup after publishing that did not work
    notices: list[str] = field(default_factory=list)  # e.g. a record type skipped: its table is missing
    media: int = 0  # blobs copied into media/
    media_missing: int = 0  # listed in the manifest: missing or unreadable
    media_refused: int = 0  # listed in the manifest: file_path outside the media root, unsafe hash
    skipped: bool = False  # --skip-unchanged found this export in ``out`` already: nothing was written
    metrics: dict[str, object] = field(default_factory=dict, repr=False)  # metrics.json: per stream, the run
    posts_by_others: int | None = None  # exported posts by other accounts (reposts); None: not counted


@dataclass(frozen=True)
class Contents:
    """What the streams of an export wrote, in stream order."""

    types: list[str]
    records: dict[str, int]
    files: list[FileResult]
    rejects: int
    media: MediaResult
    posts_by_others: int | None = None


def build(
    archive: Path,
    size_bytes: int,
    copied: bool,
    filters: Filters,
    formats: tuple[str, ...],
    contents: Contents,
    fingerprint: dict[str, object],
    layout: dict[str, object] | None = None,
) -> dict[str, object]:
    """The manifest of an export of ``archive`` (``size_bytes``: of the snapshot read, from a copy if ``copied``).

    ``layout``: compression, split and ``--csv-safe`` as asked (``ExportOptions.layout``);
    their keys, and a file's ``uncompressed_bytes`` and ``csv_safe_cells``, appear only
    when used, so a plain export's manifest keeps its shape.
    """
    media = contents.media
    layout = layout or {}
    extra: dict[str, object] = {k: v for k, v in layout.items() if k != "csv_safe"}
    if layout.get("csv_safe"):
        extra["csv_safe_cells"] = sum(f.csv_safe_cells or 0 for f in contents.files)
    return {
        "tool": TOOL,
        "version": __version__,
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "archive": {
            "path": path_text(archive.resolve()),
            "size_bytes": size_bytes,
            "read_from": "a copy taken under one read lock" if copied else "one read transaction",
        },
        "filters": {"did": filters.did, "since": iso_bound(filters.since), "until": iso_bound(filters.until)},
        "formats": list(formats),
        "types": contents.types,
        "records": contents.records,
        "files": [file_entry(f) for f in contents.files],
        **extra,
        "media_count": len(media.files),
        "media_missing": media.missing,
        "media_refused": media.refused,
        "media_root": media.root,
        "posts_by_others": contents.posts_by_others,
        "reject_count": contents.rejects,
        "fingerprint": fingerprint,
    }


def file_entry(f: FileResult) -> dict[str, object]:
    """A file as the manifest lists it: path, records, size_bytes, sha256, and the optional
    counts only when they apply."""
    return {k: v for k, v in asdict(f).items() if v is not None or k not in OPTIONAL}


OPTIONAL = ("uncompressed_bytes", "csv_safe_cells")


def read_unchanged(out: Path, sha256: object) -> ExportResult | None:
    """The export already in ``out`` if its manifest has this fingerprint and its files their
    listed sizes (the hash would mean reading them all), else None."""
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        if not isinstance(manifest, dict) or manifest.get("fingerprint", {}).get("sha256") != sha256:
            return None
        files = [FileResult(**f) for f in manifest["files"]]
        if any((out / f.path).stat().st_size != f.size_bytes for f in files):
            return None
        return ExportResult(
            out.resolve(),
            dict(manifest["records"]),
            files,
            int(manifest["reject_count"]),
            manifest,
            media=int(manifest.get("media_count", 0)),
            media_missing=len(manifest.get("media_missing", [])),
            media_refused=len(manifest.get("media_refused", [])),
            skipped=True,
            posts_by_others=manifest.get("posts_by_others"),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # no earlier export, or one this cannot read: export anew


def result(
    out: Path,
    manifest: dict[str, object],
    contents: Contents,
    warnings: list[str],
    notices: list[str],
    metrics: dict[str, object],
) -> ExportResult:
    """The result of a published export."""
    media = contents.media
    return ExportResult(
        out, contents.records, contents.files, contents.rejects, manifest, warnings, notices,
        len(media.files), len(media.missing), len(media.refused), metrics=metrics,
        posts_by_others=contents.posts_by_others,
    )  # fmt: skip


def stream_metrics(
    records: int, batches: int, files: list[FileResult], seconds: float, retries: int, rejects: int
) -> dict[str, object]:
    return {
        "records": records,
        "batches": batches,
        "bytes": sum(f.size_bytes for f in files),
        "seconds": round(seconds, 3),
        "rows_per_s": round(records / seconds) if seconds > 0 else None,
        "retries": retries,
        "rejects": rejects,
    }


def peak_rss() -> int | None:
    """This process's peak resident set so far, in bytes (None where the OS does not say)."""
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (ImportError, OSError):
        return None
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def write_json(path: Path, data: dict[str, object]) -> None:
    with open(path, "x", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
