"""``--include-media``: the blobs of the exported posts, copied into ``media/<hash>.<ext>``.

Which blobs: the ``media`` rows whose post is exported (same ``--did``,
``--since``, ``--until`` on the post's ``created_at``), each hash once. Where
from: ``file_path``, relative to the archive's folder unless absolute; after
symbolic links are resolved it must lie inside that folder, else it is refused
(never opened). A blob that is missing or unreadable is listed, not fatal.
Each blob is streamed in 1 MiB pieces and hashed (SHA-256) as it is copied.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import adbc_driver_manager as adbc
import polars as pl
import pyarrow as pa

from .errors import ExportError
from .progress import Progress
from .sinks import FileResult, _HashingFile
from .source import Archive, Filters, read_failed, retrying
from .timestamps import parse_instants

MEDIA_DIR = "media"
CHUNK = 2**20
# Extensions for the MIME types Bluesky stores; other types use their subtype.
MIME_EXTENSIONS = {
    "image/jpeg": "jpg",
    "image/jpg": "jpg",
    "image/pjpeg": "jpg",
    "image/png": "png",
    "image/webp": "webp",
    "image/gif": "gif",
    "image/heic": "heic",
    "image/heif": "heif",
    "image/avif": "avif",
    "image/svg+xml": "svg",
    "video/mp4": "mp4",
    "video/quicktime": "mov",
    "video/webm": "webm",
}
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")


@dataclass
class MediaResult:
    """Copied files, and the blobs listed instead: missing or unreadable, and refused."""

    files: list[FileResult] = field(default_factory=list)
    missing: list[dict[str, str | None]] = field(default_factory=list)
    refused: list[dict[str, str | None]] = field(default_factory=list)


def extension(mime_type: str | None) -> str:
    """The file extension for a MIME type: known ones by table, others by subtype, else ``bin``."""
    mime = (mime_type or "").strip().lower().split(";")[0].strip()
    if mime in MIME_EXTENSIONS:
        return MIME_EXTENSIONS[mime]
    sub = mime.rpartition("/")[2]
    sub = sub.split("+")[0]
    return sub if re.fullmatch(r"[a-z0-9]{1,10}", sub) else "bin"


def media_rows(archive: Archive, filters: Filters) -> pl.DataFrame:
    """(hash, mime_type, file_path) of the blobs of the posts the filters keep, by hash, each once."""
    where, params = "", None
    if filters.did is not None:
        where, params = " WHERE p.did = ?", pa.record_batch([pa.array([filters.did], pa.string())], names=["p0"])
    # As bytes: a stored value need not be UTF-8, and a path is bytes to the OS anyway.
    sql = (
        "SELECT CAST(m.hash AS BLOB) AS hash, CAST(m.mime_type AS BLOB) AS mime_type,"
        " CAST(m.file_path AS BLOB) AS file_path, CAST(p.created_at AS TEXT) AS created_at"
        f" FROM main.media AS m JOIN main.posts AS p ON p.uri = m.post_uri{where}"
    )
    try:  # in the archive's read transaction: the same snapshot as the posts
        table = retrying(lambda: archive.read_table(sql, params), archive.retries, "media", cancel=archive.cancel)
    except adbc.Error as e:
        raise ExportError(read_failed(e, archive.retries), record_type="media") from None
    schema = pa.schema([*((n, pa.binary()) for n in ("hash", "mime_type", "file_path")), ("created_at", pa.string())])
    df = pl.from_arrow(table.cast(schema))
    assert isinstance(df, pl.DataFrame)
    if filters.timed:
        df = df.filter(filters.keep(*parse_instants(df.get_column("created_at"))))
    df = df.drop("created_at").sort("hash", "file_path", "mime_type", nulls_last=True)  # which row of a hash: fixed
    return df.unique("hash", keep="first", maintain_order=True)


def copy_media(archive: Archive, folder: Path, filters: Filters, progress: Progress, budget: Any = None) -> MediaResult:
    """Copy the exported posts' blobs into ``folder/media``; list the missing and refused ones.

    Raises OSError for a failure on the writing side (disk full): that fails the export.
    """
    rows = media_rows(archive, filters)
    root = Path(os.path.realpath(archive.path.parent))
    out_dir = folder / MEDIA_DIR
    result = MediaResult()
    progress.start("media", len(rows))
    try:
        check = budget.check if budget is not None else (lambda: None)
        for blob_hash, mime, file_path in rows.iter_rows():
            check()  # another stream failed: stop
            _copy_one(blob_hash, mime, file_path, root, out_dir, result, check)
            progress.advance(1)
    finally:
        progress.stop()
    if not result.files and out_dir.exists():
        out_dir.rmdir()
    return result


def _text(value: bytes | None) -> str | None:
    """A stored value for the manifest: UTF-8, with any invalid byte shown as U+FFFD."""
    return None if value is None else value.decode("utf-8", errors="replace")


def _copy_one(
    raw_hash: bytes | None,
    raw_mime: bytes | None,
    file_path: bytes | None,
    root: Path,
    out_dir: Path,
    result: MediaResult,
    check: Callable[[], None],
) -> None:
    blob_hash = _text(raw_hash)
    entry = {"hash": blob_hash, "file_path": _text(file_path)}
    if blob_hash is None or not _SAFE_NAME.fullmatch(blob_hash):
        result.refused.append({**entry, "reason": "the hash is not a safe file name"})
        return
    if not file_path:
        result.missing.append({**entry, "reason": "no file_path"})
        return
    if b"\0" in file_path:
        result.refused.append({**entry, "reason": "file_path holds a NUL byte"})
        return
    path = os.fsdecode(file_path)  # undecodable bytes survive as surrogate escapes
    source = Path(path) if os.path.isabs(path) else root / path
    real = Path(os.path.realpath(source))
    if real != root and root not in real.parents:
        result.refused.append({**entry, "reason": "file_path leads outside the archive's folder"})
        return
    try:  # O_NONBLOCK: a FIFO must not hang the export; it is refused below like a folder
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        result.missing.append({**entry, "reason": e.strerror or str(e)})
        return
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        result.missing.append({**entry, "reason": "not a regular file"})
        return
    name = f"{blob_hash}.{extension(_text(raw_mime))}"
    with os.fdopen(fd, "rb") as src:
        out_dir.mkdir(exist_ok=True)
        out = _HashingFile(out_dir / name)
        try:
            while True:
                try:
                    chunk = src.read(CHUNK)
                except OSError as e:  # unreadable (e.g. EIO, a folder): listed, the partial copy goes
                    out.discard()
                    result.missing.append({**entry, "reason": e.strerror or str(e)})
                    return
                if not chunk:
                    break
                out.write(chunk)
                check()  # a big file does not hold up stopping
            digest = out.finish()
        except BaseException:
            out.discard()
            raise
    result.files.append(FileResult(f"{MEDIA_DIR}/{name}", 1, out.size, digest))
