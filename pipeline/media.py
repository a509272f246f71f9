"""``--include-media``: the blobs of the exported posts, copied into ``media/<hash>.<ext>``.

Which blobs: the ``media`` rows whose post is exported (same ``--did``,
``--since``, ``--until`` on the post's ``created_at``), each hash once. Where
from: ``file_path``, relative to the media root unless absolute; after symbolic
links are resolved it must lie inside the media root, else it is refused (never
opened). A blob that is missing or unreadable is listed, not fatal. Each blob
is streamed in 1 MiB pieces and hashed (SHA-256) as it is copied.

The media root: bskyarchive keeps ``data/archive.db`` and stores paths
relative to its working directory (``data/media/ab/cd/<sha256>.jpg``), so a
relative path starts at the folder that holds the archive's folder. Archives
made otherwise keep paths relative to the archive's own folder. ``media_root``
tells which of the two a sample of the paths exists under; ``--media-root``
names another.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import adbc_driver_manager as adbc
import polars as pl
import pyarrow as pa

from .errors import ExportError, OutputError
from .frames import frame
from .options import path_text
from .progress import Phase, Progress
from .publish import inside
from .sinks import FileResult, HashingFile
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
    root: str | None = None  # the media root used
    undecided: str | None = None  # why the root could not be told from the files, if it could not

    def to_state(self) -> dict[str, object]:
        """As a finished stream's checkpoint (JSON)."""
        return {"phase": "done", "kind": "media", "files": [asdict(f) for f in self.files],
                "missing": self.missing, "refused": self.refused, "root": self.root}  # fmt: skip

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> MediaResult:
        """Back from ``to_state``; KeyError, TypeError or ValueError if it is not one."""
        if state["kind"] != "media":
            raise ValueError("not a media stream's state")
        return cls([FileResult(**f) for f in state["files"]], list(state["missing"]), list(state["refused"]),
                   state["root"])  # fmt: skip

    def notices(self) -> list[str]:
        """What a user should hear: an undecided root, or that no file was found at all."""
        if self.undecided:
            return [self.undecided]
        out = []
        if self.missing and not self.files:
            out.append(
                f"none of the {len(self.missing):,} media files was found (media root {self.root});"
                " give --media-root DIR if they are elsewhere"
            )
        return out


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
    df = frame(table.cast(schema))
    if filters.timed:
        df = df.filter(filters.keep(*parse_instants(df.get_column("created_at"))))
    df = df.drop("created_at").sort("hash", "file_path", "mime_type", nulls_last=True)  # which row of a hash: fixed
    return df.unique("hash", keep="first", maintain_order=True)


_ROOT_SAMPLE = 32  # relative paths looked for under each candidate root


@dataclass(frozen=True)
class MediaRoot:
    """Where relative media paths start (``path``), the folder every media file must lie in once
    symbolic links are resolved (``allowed``: the escape guard), and, if the root could not be
    told from the files, why."""

    path: Path
    allowed: Path
    undecided: str | None = None


def media_root(archive_path: Path, rows: pl.DataFrame, given: Path | None = None) -> MediaRoot:
    """The folder relative ``file_path``s start at (see the module's text); ``given`` wins.

    Candidates, in order: the folder holding the archive's folder (bskyarchive's
    layout: there the files must lie in the archive's folder, ``data/``, not
    anywhere in bskyarchive's working directory), then the archive's folder; each
    as the archive's path says and with symbolic links resolved (a ``data``
    folder, or the archive itself, may be a link). The first one under which the
    most of a sample of the relative paths exist is taken; if none of them exists
    anywhere, the first candidate whose name the paths start with (else the
    archive's folder), and ``undecided`` says so.
    """
    if given is not None:
        return MediaRoot(Path(given), Path(os.path.realpath(given)))
    named, real = Path(os.path.abspath(archive_path)).parent, Path(os.path.realpath(archive_path)).parent
    candidates: list[tuple[Path, Path]] = []  # (root, the folder its files must lie in)
    for home in dict.fromkeys((real, named)):
        candidates.append((home.parent, Path(os.path.realpath(home))))
    for home in dict.fromkeys((real, named)):
        candidates.append((home, Path(os.path.realpath(home))))
    sample = [
        p
        for p in (os.fsdecode(v) for v in rows.get_column("file_path").drop_nulls().to_list())
        if p and "\0" not in p and not os.path.isabs(p)
    ][:_ROOT_SAMPLE]
    if sample:
        hits = [sum(_found(root / p, allowed) for p in sample) for root, allowed in candidates]
        if max(hits) > 0:
            return MediaRoot(*candidates[hits.index(max(hits))])
    first = Path(sample[0]).parts[0] if sample and Path(sample[0]).parts else ""
    by_name = first == real.name or (not sample and real.name == "data")
    root, allowed = candidates[0] if by_name else candidates[len(candidates) // 2]
    if not sample:
        return MediaRoot(root, allowed)
    return MediaRoot(
        root,
        allowed,
        f"none of {len(sample)} media paths (e.g. {sample[0]}) exists under {real.parent} or {real};"
        f" reading them from {root} (give --media-root DIR if the files are elsewhere)",
    )


def _found(path: Path, allowed: Path) -> bool:
    """Whether ``path`` is there and, links resolved, in ``allowed`` (a hit for a candidate root)."""
    real = Path(os.path.realpath(path))
    return os.path.lexists(path) and (real == allowed or allowed in real.parents)


def copy_media(
    archive: Archive,
    folder: Path,
    filters: Filters,
    progress: Progress,
    budget: Any = None,
    *,
    root: MediaRoot | Path | None = None,
    out: Path | None = None,
) -> MediaResult:
    """Copy the exported posts' blobs into ``folder/media``; list the missing and refused ones.

    ``root``: where relative paths start (default: ``media_root`` of the archive's path).
    Raises OSError for a failure on the writing side (disk full): that fails the export.
    """
    rows = media_rows(archive, filters)
    if not isinstance(root, MediaRoot):
        root = media_root(archive.origin, rows, root)
    result = MediaResult(root=path_text(root.path), undecided=root.undecided)
    where = (root.path, Path(os.path.realpath(root.allowed)))
    out_dir = folder / MEDIA_DIR
    progress.phase(Phase.COPYING, len(rows))
    try:
        check = budget.check if budget is not None else (lambda: None)
        for blob_hash, mime, file_path in rows.iter_rows():
            check()  # another stream failed: stop
            _copy_one(blob_hash, mime, file_path, where, out_dir, result, check, out)
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
    where: tuple[Path, Path],
    out_dir: Path,
    result: MediaResult,
    check: Callable[[], None],
    out: Path | None = None,
) -> None:
    """Copy one blob, or list it as missing or refused. OutputError if it lies in ``out``
    (the folder the export replaces: publishing would remove the file it copied)."""
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
    root, allowed = where  # relative paths start at ``root``; every file must resolve into ``allowed``
    source = Path(path) if os.path.isabs(path) else root / path
    real = Path(os.path.realpath(source))
    if real != allowed and allowed not in real.parents:
        result.refused.append({**entry, "reason": "file_path leads outside the media root"})
        return
    if out is not None and inside(real, out):
        raise OutputError(f"media file {real} lies in --out {out}; publishing would remove it: choose another --out")
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
        out = HashingFile(out_dir / name)
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
