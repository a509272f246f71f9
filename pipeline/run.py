"""The runner: wires source → transforms → sinks → publish, with progress.

A reader thread pages the archive while the main thread converts and writes,
so SQLite and the encoders overlap; the queue between them holds at most a few
batches, which keeps memory bounded.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import glob
import hashlib
import json
import logging
import os
import queue
import re
import shutil
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, FIRST_EXCEPTION, Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import polars as pl
import pyarrow as pa

from . import __version__, transforms
from . import source as source_module
from .checkpoint import Checkpoints, Clock, killpoint
from .errors import ArchiveError, Cancelled, ExportError, PipelineError, UsageError
from .media import MEDIA_DIR, MediaResult, copy_media
from .progress import Progress, Streams
from .publish import MANIFEST, TOOL, Staging, clean, restore_aside, stale_folders
from .records import COLLECTION_TYPES, OP_ACTIONS, OPS, POSTS, RECORD_TYPES, RecordType
from .sinks import SINKS, FileResult, NdjsonSink, Sink, concat_files
from .sort import NINST, NSUB
from .source import Archive, Filters, Position, Reads, RecordSource, iso_bound, key_range, range_metadata

log = logging.getLogger("pipeline")
FORMATS = tuple(SINKS)
DEFAULT_FORMATS = ("csv", "json")
_PREFETCH = 1
CONVERTERS = min(2, os.cpu_count() or 1)
WRITE_ROWS = 16_384
T = TypeVar("T")


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
    media_refused: int = 0  # listed in the manifest: file_path outside the archive's folder, unsafe hash
    skipped: bool = False  # --skip-unchanged found this export in ``out`` already: nothing was written
    posts_by_others: int | None = None  # exported posts by other accounts (reposts); None: not counted
    metrics: dict[str, object] = field(default_factory=dict, repr=False)  # metrics.json: per stream, the run


def default_out(archive: Path, now: datetime | None = None) -> Path:
    """A new timestamped folder under ./exports/."""
    now = now or datetime.now(UTC)
    return Path("exports") / f"{archive.stem}-{now.strftime('%Y%m%dT%H%M%SZ')}"


def _killed_default_out(archive: Path) -> Path | None:
    """The default ``out`` of the newest killed run of this archive that left a staging
    folder under ./exports/ (``.<stem>-<time>.staging-<pid>``), if any."""
    found = []
    for staging in Path("exports").glob(f".{glob.escape(archive.stem)}-*.staging-*"):
        out = staging.with_name(staging.name[1:].rsplit(".staging-", 1)[0])
        if re.fullmatch(re.escape(archive.stem) + r"-\d{8}T\d{6}Z", out.name) and staging in stale_folders(out):
            found.append(out)
    return max(found, default=None)  # the names sort by time


def export(
    archive: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    formats: Sequence[str] = DEFAULT_FORMATS,
    types: Sequence[str] | None = None,
    ops: bool = False,
    include_media: bool = False,
    media_root: str | os.PathLike[str] | None = None,
    jobs: int | None = None,
    did: str | None = None,
    since: str | datetime | None = None,
    until: str | datetime | None = None,
    batch_size: int = 1000,
    batch_bytes: int = source_module.BATCH_BYTES,
    max_rejects: int | None = None,
    retries: int = source_module.RETRIES,
    skip_unchanged: bool = False,
    resume: bool = False,
    progress: Progress | None = None,
) -> ExportResult:
    """Export an archive's records to ``out`` in each of ``formats``; publish all or nothing.

    ``types``: record type names (``RECORD_TYPES``); None means every type
    whose table the archive has (the others are skipped with a notice); a
    type asked for by name whose table is missing is an ArchiveError.
    ``ops``: also export the ``ops`` table into ``ops/<type>.<action>.<ext>``.
    ``include_media``: also copy the exported posts' blobs into ``media/``.
    ``media_root``: where the media table's relative paths start (default: told
    from the files, see ``media.media_root``).
    ``did``: only records of this DID; ``"self"``: of the archive's owner (the DID
    in ``profiles``; ArchiveError if there is none).
    ``jobs``: how many streams (record types, ops, media) run at once; default
    the CPU count, capped at the number of streams. The output does not depend on it.
    ``max_rejects``: fail (ExportError, nothing published) as soon as more values
    than this have been rejected; None for no limit.
    ``retries``: how often a query that finds the archive locked or busy is
    retried (exponential backoff from 0.1 s; each retry logged on the
    ``pipeline`` logger) before the export fails.
    ``skip_unchanged``: if ``out`` holds an export whose manifest has the same
    ``fingerprint`` (the archive's identity and every option that shapes the
    files), return it as it is (``ExportResult.skipped``) without exporting.

    Raises a PipelineError subclass (UsageError, ArchiveError, OutputError,
    ExportError) with a one-line message; nothing is written to ``out`` then.
    """
    formats = tuple(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in SINKS]
    if unknown or not formats:
        raise UsageError(f"unknown format(s): {', '.join(unknown) or '(none)'}; choose from {', '.join(FORMATS)}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, not {batch_size}")
    if batch_bytes < 2**20:
        raise UsageError(f"--batch-bytes must be at least 1 MiB, not {batch_bytes}")
    if retries < 0:
        raise UsageError(f"--retries must be 0 or more, not {retries}")
    if max_rejects is not None and max_rejects < 0:
        raise UsageError(f"--max-rejects must be 0 or more, not {max_rejects}")
    named = parse_types(types)
    if jobs is not None and jobs < 1:
        raise UsageError(f"--jobs must be at least 1, not {jobs}")
    filters = Filters.parse(did=did, since=since, until=until)
    lo, hi = filters.since, filters.until
    progress = progress or Progress()
    archive_path = Path(archive)
    out_path = Path(out) if out is not None else None
    if out_path is None and resume:  # the default folder is new each run: resume the newest one killed
        out_path = _killed_default_out(archive_path)
    out_path = out_path or default_out(archive_path)

    with contextlib.ExitStack() as opened:
        db = opened.enter_context(Archive(archive_path, retries))
        owner = _owner(db, did)
        if did == "self":
            filters = replace(filters, did=owner)
        rtypes, notices = _chosen_types(db, named)
        if ops:
            db.check(OPS)  # asked for: a missing table is an error
        if include_media and not db.has_table_named("media"):
            raise ArchiveError(f"archive {archive_path} has no 'media' table (asked for by --include-media)")
        print_ = fingerprint(archive_path, formats, [r.name for r in rtypes], ops, include_media, filters)
        if resume:
            restore_aside(out_path)  # a run killed while publishing moved the earlier export aside
        if skip_unchanged or resume:
            earlier = _unchanged(out_path, print_)
            if earlier is not None:
                if max_rejects is not None and earlier.rejects > max_rejects:  # as a new run would fail
                    raise ExportError(
                        f"more than --max-rejects {max_rejects} value(s) rejected ({earlier.rejects} in the unchanged"
                        f" export in {earlier.out}); nothing was published"
                    )
                if not skip_unchanged:  # --resume: the killed run had published it (or a run before it)
                    warnings, _ = clean(out_path)
                    return replace(earlier, notices=[f"{earlier.out} already holds this export; nothing to resume"],
                                   warnings=warnings)  # fmt: skip
                return earlier
        staging = Staging(out_path, print_, resume)
        try:
            if staging.resumed is not None:
                complete = _unchanged(staging.path, print_)  # killed while publishing: only that is left
                if complete is not None:
                    log.info("the interrupted export was complete; publishing it")
                    staging.checkpoints.drop()
                    for part in staging.path.glob(f".*.{REJECTS}"):
                        part.unlink()
                    warnings = staging.publish()
                    return replace(complete, out=staging.out, skipped=False, warnings=warnings, notices=notices)
                for leftover in (MANIFEST, METRICS, REJECTS):  # written again at the end
                    (staging.path / leftover).unlink(missing_ok=True)
                staging.checkpoints.folder.mkdir(exist_ok=True)
            # From here on the export reads one snapshot: a copy for a rollback-journal archive,
            # whose writer would fail to commit while this run held its lock.
            db = opened.enter_context(db.snapshot(staging.path / SNAPSHOT))
            checkpoints = staging.checkpoints
            streams: list[tuple[str, Callable[[Progress, _Budget], object]]] = []
            for rtype in rtypes:
                fn = functools.partial(
                    _write_all, db, staging.path, rtype, formats, filters, batch_size, batch_bytes,
                    checkpoints=checkpoints,
                )  # fmt: skip
                streams.append((rtype.name, _checkpointed(checkpoints, staging.path, rtype.name, fn)))
            if ops:
                ops_stream = functools.partial(
                    _write_ops, db, staging.path, formats, filters, batch_size, batch_bytes, checkpoints=checkpoints
                )
                streams.append((OPS.name, _checkpointed(checkpoints, staging.path, OPS.name, ops_stream)))
            if include_media and any(r.name == "posts" for r in rtypes):
                root = Path(media_root) if media_root is not None else None
                media_stream = functools.partial(copy_media, db, staging.path, filters, root=root)
                streams.append(("media", _checkpointed(checkpoints, staging.path, "media", media_stream, MEDIA_DIR)))
            elif include_media:
                notices.append("--include-media copies the media of exported posts; no posts were exported")
            started, seconds = time.monotonic(), {}
            db.cancel = cancel = threading.Event()  # also ends a stream's wait to retry a locked archive
            done = _run_streams(streams, jobs, progress, max_rejects, seconds, cancel)
            files: list[FileResult] = []
            records: dict[str, int] = {}
            reject_parts: list[tuple[Path, int]] = []
            media = MediaResult()
            per_stream: dict[str, dict[str, object]] = {}
            for name, _ in streams:  # in stream order, whichever finished first
                result = done[name]
                if isinstance(result, MediaResult):
                    media = result
                    files += media.files
                    per_stream[name] = _stream_metrics(len(media.files), 0, media.files, seconds[name], 0, 0)
                    continue
                assert isinstance(result, _Stream)
                files += result.files
                records[name] = result.records
                if result.rejects:
                    reject_parts.append(result.rejects)
                per_stream[name] = _stream_metrics(
                    result.records,
                    result.batches,
                    result.files,
                    seconds[name],
                    result.retries,
                    result.rejects[1] if result.rejects else 0,
                )
            rejects = sum(n for _, n in reject_parts)
            notices += media.notices()
            by_others = None
            if filters.did is None and owner is not None and any(r.name == POSTS.name for r in rtypes):
                by_others = db.count_others(POSTS, owner, filters)
            if reject_parts:
                # the parts stay until publishing: checkpoints of finished streams name them
                files.append(concat_files(staging.path, REJECTS, reject_parts, remove=False))
            manifest = {
                "tool": TOOL,
                "version": __version__,
                "exported_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
                "archive": {
                    "path": str(archive_path.resolve()),
                    "size_bytes": db.path.stat().st_size,
                    "read_from": "a copy taken under one read lock" if db.copied else "one read transaction",
                },
                "filters": {"did": filters.did, "since": iso_bound(lo), "until": iso_bound(hi)},
                "formats": list(formats),
                "types": [r.name for r in rtypes],
                "records": records,
                "files": [asdict(f) for f in files],
                "media_count": len(media.files),
                "media_missing": media.missing,
                "media_refused": media.refused,
                "media_root": media.root,
                "posts_by_others": by_others,
                "reject_count": rejects,
                "fingerprint": print_,
            }
            metrics = {
                "run_seconds": round(time.monotonic() - started, 3),
                "peak_rss_bytes": _peak_rss(),
                "archive_retries": db.retried,
                "streams": per_stream,
            }
            _write_json(staging.path / METRICS, metrics)
            if db.copied:  # the snapshot is not part of the export
                db.close()
                db.path.unlink()
            staging.write_manifest(manifest)  # last: a staging folder with a manifest is complete
            killpoint("publish")
            staging.checkpoints.drop()
            staging.checkpoints.close()
            for part, _ in reject_parts:
                part.unlink()
            warnings = staging.publish()
        except BaseException as e:
            staging.checkpoints.close()  # no checkpoint written into a folder being removed
            staging.discard()
            if isinstance(e, OSError):
                raise ExportError(
                    f"writing the export failed: {e.strerror or e} ({e.filename or staging.path})"
                ) from None
            raise
    return ExportResult(
        staging.out, records, files, rejects, manifest, warnings, notices,
        len(media.files), len(media.missing), len(media.refused), metrics=metrics, posts_by_others=by_others,
    )  # fmt: skip


def _owner(db: Archive, did: str | None) -> str | None:
    """The archive owner's DID: for ``--did self`` (ArchiveError without one) and, with no
    DID filter, to count the posts of other accounts (None if the archive does not say)."""
    if did == "self":
        return db.owner()
    if did is not None:
        return None
    try:
        return db.owner()
    except ArchiveError:
        return None


REJECTS = "rejects.ndjson"
SNAPSHOT = ".archive-snapshot.db"  # the copy a rollback-journal archive is read from; never published
METRICS = "metrics.json"  # beside manifest.json; not listed in it: it differs on every run


def _checkpointed(
    checkpoints: Checkpoints, folder: Path, name: str, fn: Callable[[Progress, _Budget], object], *own: str
) -> Callable[[Progress, _Budget], object]:
    """Stream ``fn`` with a checkpoint when it is done: a resumed run takes its files as they
    are (if they still have their sizes) instead of writing them again. A stream that was
    not done is started over, its leftovers (``own``: its files and folders) removed first,
    unless it continues from checkpoints of its own (the record types)."""

    def run(progress: Progress, budget: _Budget) -> object:
        state = checkpoints.load(name)
        result = _finished(folder, state) if state is not None and state.get("phase") == "done" else None
        if result is not None:
            log.info("%s: done before the interruption; its files are kept", name)
            progress.start(f"{name}: done before", 1)
            progress.advance(1)
            progress.stop()
            if isinstance(result, _Stream) and result.rejects:
                budget.rejected(result.rejects[1], name)
            return result
        if own:
            _remove_leftovers(folder, name)
            for path in own:
                if (folder / path).exists():
                    shutil.rmtree(folder / path)
        result = fn(progress, budget)
        done: dict[str, object] = {"phase": "done"}
        if isinstance(result, MediaResult):
            done.update(kind="media", files=[asdict(f) for f in result.files], missing=result.missing,
                        refused=result.refused)  # fmt: skip
        else:
            assert isinstance(result, _Stream)
            rejects = None
            if result.rejects is not None:
                path, count = result.rejects
                rejects = [path.name, count, path.stat().st_size]
            done.update(kind="records", files=[asdict(f) for f in result.files], records=result.records,
                        rejects=rejects, batches=result.batches, retries=result.retries)  # fmt: skip
        folders = {folder, *((folder / f.path).parent for f in _files(result))}
        checkpoints.save(name, done, sorted(folders))
        killpoint(f"{name}.done")
        return result

    return run


def _files(result: object) -> list[FileResult]:
    return result.files if isinstance(result, (MediaResult, _Stream)) else []


def _finished(folder: Path, state: dict[str, object]) -> _Stream | MediaResult | None:
    """A done stream's result from its checkpoint, if its files are all there with their sizes."""
    try:
        files = [FileResult(**f) for f in state["files"]]  # type: ignore[attr-defined]
        if any((folder / f.path).stat().st_size != f.size_bytes for f in files):
            return None
        if state["kind"] == "media":
            return MediaResult(files, list(state["missing"]), list(state["refused"]))  # type: ignore[call-overload]
        rejects = None
        if state["rejects"] is not None:
            name, count, size = state["rejects"]  # type: ignore[misc]
            if (folder / name).stat().st_size != size:
                return None
            rejects = (folder / name, int(count))
        return _Stream(files, int(state["records"]), rejects, int(state["batches"]), int(state["retries"]))  # type: ignore[call-overload]
    except (OSError, KeyError, TypeError, ValueError):
        return None


def _stream_metrics(
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


def _peak_rss() -> int | None:
    """This process's peak resident set so far, in bytes (None where the OS does not say)."""
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux
    except (ImportError, OSError):
        return None


def _write_json(path: Path, data: dict[str, object]) -> None:
    with open(path, "x", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def fingerprint(
    archive: Path,
    formats: Sequence[str],
    types: Sequence[str],
    ops: bool,
    include_media: bool,
    filters: Filters,
) -> dict[str, object]:
    """What an export's files depend on: the archive's identity and the options that shape them.

    The archive is identified by its path, size and modification time, and
    those of its write-ahead log if it has one (SQLite writes to the log first),
    not by a hash of its content, which would read the whole archive once more.
    ``--jobs``, ``--batch-size``, ``--batch-bytes`` and ``--retries`` are left
    out: the files do not depend on them.
    """

    def identity(path: Path) -> dict[str, object] | None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        return {"size_bytes": st.st_size, "mtime_ns": st.st_mtime_ns}

    path = archive.resolve()
    inputs: dict[str, object] = {
        "tool_version": __version__,
        "archive": {"path": str(path), **(identity(path) or {})},
        "wal": identity(path.with_name(path.name + "-wal")),
        "formats": list(formats),
        "types": list(types),
        "ops": ops,
        "include_media": include_media,
        "filters": {"did": filters.did, "since": iso_bound(filters.since), "until": iso_bound(filters.until)},
    }
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    return {"sha256": digest, **inputs}


def _unchanged(out: Path, print_: dict[str, object]) -> ExportResult | None:
    """The export already in ``out`` if its manifest has this fingerprint, else None."""
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        if not isinstance(manifest, dict) or manifest.get("fingerprint", {}).get("sha256") != print_["sha256"]:
            return None
        files = [FileResult(**f) for f in manifest["files"]]
        # Every file still as the manifest lists it (size; the hash would mean reading them all).
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
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # no earlier export, or one this cannot read: export anew


def parse_types(types: Sequence[str] | str | None) -> list[str] | None:
    """Record type names from ``--types`` (comma-separated, repeatable); None for all."""
    if types is None:
        return None
    if isinstance(types, str):
        types = [types]
    names = list(dict.fromkeys(n.strip() for t in types for n in t.split(",") if n.strip()))
    unknown = [n for n in names if n not in RECORD_TYPES]
    if unknown or not names:
        raise UsageError(
            f"unknown record type(s): {', '.join(unknown) or '(none)'}; choose from {', '.join(RECORD_TYPES)}"
        )
    return names


def _chosen_types(db: Archive, named: list[str] | None) -> tuple[list[RecordType], list[str]]:
    """The types to export, in RECORD_TYPES order, and notices about skipped ones.

    Without names, the ``posts`` table must be there (it is what makes the file
    an archive); likes and follows are skipped with a notice where missing.
    """
    notices = []
    chosen = []
    if named is None:  # every archive has posts: a file without them is not an archive
        db.check(RECORD_TYPES["posts"])
    for name, rtype in RECORD_TYPES.items():
        if named is not None and name not in named:
            continue
        if named is None and not db.has_table(rtype):
            notices.append(f"the archive has no {rtype.table!r} table; {name} skipped")
            continue
        db.check(rtype)  # a named type's missing table, or a missing column: ArchiveError
        chosen.append(rtype)
    return chosen, notices


@dataclass(frozen=True)
class _Stream:
    """What one record type's export wrote: data files, records, and its rejects (part file, count)."""

    files: list[FileResult]
    records: int
    rejects: tuple[Path, int] | None
    batches: int = 0  # pages read
    retries: int = 0  # retries of a locked archive


def _write_all(*args: object, **kwargs: object) -> _Stream:
    """``_write_records`` from the stream's checkpoint, or from the start if its files are not
    as the checkpoint says."""
    try:
        return _write_records(*args, **kwargs, resume=True)  # type: ignore[arg-type]
    except _StartOver:
        return _write_records(*args, **kwargs, resume=False)  # type: ignore[arg-type]


def _write_records(
    db: Archive,
    folder: Path,
    rtype: RecordType,
    formats: Sequence[str],
    filters: Filters,
    batch_size: int,
    batch_bytes: int,
    progress: Progress,
    budget: _Budget,
    checkpoints: Checkpoints | None = None,
    resume: bool = False,
) -> _Stream:
    """Convert while reading, sort what was converted, then write it in export order.

    The archive is read in table order by a reader thread while this thread
    converts each page (the conversion is row by row, so its place in the
    order does not matter); the converted rows go to an external sort by
    (instant, key) and come back bucket by bucket for the sinks.

    With ``checkpoints``, the stream records where it stands at most every
    ``checkpoints.interval`` seconds: while converting, the last page of a
    prefix of pages all of whose rows are in the sort's files (and those files'
    sizes); while writing, the next bucket and the output files' sizes. With
    ``resume``, a checkpoint left by a killed run is continued from (see
    pipeline.checkpoint); _StartOver if its files are not as it says.
    """
    wanted = frozenset(formats)
    name = rtype.name
    spill = folder / f".spill-{name}"  # this stream's sort files
    state = checkpoints.load(name) if checkpoints is not None and resume else None
    if state is not None and state.get("phase") not in ("converting", "writing"):
        state = None
    if state is None:
        _remove_leftovers(folder, name, spill)
    else:  # what the killed run wrote after the checkpoint: written again from it
        (folder / f".{name}.{REJECTS}").unlink(missing_ok=True)
        if state["phase"] == "converting":
            _remove_leftovers(folder, name)
    spill.mkdir(exist_ok=True)
    source = db.read(
        rtype,
        filters,
        batch_size,
        spill,
        Reads(*transforms.reads(rtype, wanted)),
        bucket_bytes=budget.bucket_bytes,
        batch_bytes=batch_bytes,
    )
    if state is not None and state.get("plan") != list(source.plan.bounds):
        source.close()
        raise _StartOver  # not the plan the files were sorted by
    sinks: dict[str, Sink] = {}
    rejects = _RejectLog(folder, rtype)
    pages: Generator[pa.Table, None, None] | None = None
    clock = Clock(checkpoints.interval) if checkpoints is not None else None
    pages_read, rejected = (int(state["pages"]), int(state["rejected"])) if state else (0, 0)
    try:
        key = _sort_key(rtype, wanted)
        with source.sorter([NINST, NSUB, key]) as rows, source.sorter([NINST, NSUB, KEY, "_col"]) as bad:
            if state is not None:
                try:
                    rows.restore(state["rows"])
                    bad.restore(state["bad"])
                except (OSError, ValueError, KeyError, TypeError):  # files gone or cut short: start over
                    raise _StartOver from None
                for entry in spill.iterdir():  # a sorter's folder made after the checkpoint
                    if entry not in (rows.folder, bad.folder):
                        shutil.rmtree(entry)
                position = Position(*state["position"])
                source.resume(position, list(state["unplaced_keys"]), list(state["unplaced_values"]))
                budget.rejected(rejected, name)
                if state["phase"] == "converting":
                    log.info("%s: resuming after %s records read and sorted", name, f"{position.seen:,}")
                else:
                    written = int(next(iter(dict(state["sinks"]).values()))[1])  # type: ignore[call-overload]
                    log.info("%s: resuming after %s of %s records written", name, f"{written:,}", f"{position.seen:,}")

            def checkpoint(
                phase: str,
                position: Position,
                next_bucket: int = 0,
                then: Callable[[], None] | None = None,
                **more: object,
            ) -> None:
                assert checkpoints is not None and clock is not None
                rows_state, bad_state = rows.snapshot(next_bucket), bad.snapshot()
                if rows_state is None or bad_state is None:
                    return  # rows held in memory: nothing on disk to resume from
                n = position.unplaced
                checkpoints.save_later(
                    name,
                    {
                        "phase": phase,
                        "plan": list(source.plan.bounds),
                        "position": [position.after, position.seen, n],
                        "unplaced_keys": source.unplaced.keys[:n],
                        "unplaced_values": source.unplaced.values[:n],
                        "pages": pages_read,
                        "rejected": rejected,
                        "rows": rows_state,
                        "bad": bad_state,
                        "next_bucket": next_bucket,
                        **more,
                    },
                    [
                        *rows.files(next_bucket),
                        *bad.files(),
                        *(s.path for s in sinks.values()),
                        *rows.folders(),
                        *bad.folders(),
                        spill,
                        folder,
                    ],
                    then,
                )
                clock.reset()

            if state is None or state["phase"] == "converting":
                progress.start(f"{name}: converting", source.total)
                if state is not None:
                    progress.advance(source.start.seen if source.start else 0)
                pages = prefetch(source.pages(), budget.prefetch)
                for _page, n, settled, (rows_out, bad_out) in _convert_all(rtype, pages, wanted, budget.converters):
                    pages_read += 1
                    budget.check()
                    budget.rejected(bad_out.num_rows, name)
                    rejected += bad_out.num_rows
                    try:
                        rows.add(rows_out)
                        bad.add(bad_out)
                    except OSError as e:
                        raise ExportError(
                            f"writing sort spill files in {spill} failed: {e.strerror or e}",
                            record_type=name,
                            key_range=_page_range(rows_out, key),
                        ) from None
                    progress.advance(n)
                    killpoint(f"{name}.page")
                    if settled is not None and clock is not None and clock.due():
                        checkpoint("converting", settled)
                pages.close()
                position = Position(0, source.total, len(source.unplaced.keys))
                first_bucket = 0
            else:
                source.total = position.seen
                first_bucket = int(state["next_bucket"])
            progress.set_total(source.total)
            progress.start(f"{name}: writing", source.total)
            resume = state["sinks"] if state is not None and state["phase"] == "writing" else {}
            try:
                for fmt in formats:
                    sinks[fmt] = _open_sink(folder, rtype, fmt, resume=tuple(resume[fmt]) if fmt in resume else None)
            except (OSError, KeyError, TypeError, ValueError):
                if not resume:
                    raise
                raise _StartOver from None  # an output file missing or shorter than its checkpoint
            progress.advance(sinks[formats[0]].records)
            keep = clock is not None and rows.snapshot() is not None
            ordered = prefetch(rows.buckets(first_bucket, keep), 1)  # the next bucket is read while one is written
            try:
                current = None
                for bucket, table in ordered:
                    if bucket != current and current is not None and keep and clock is not None and clock.due():
                        # every bucket before this one is in the files: continue from here
                        # the buckets before this one are written: their files go once this is on disk
                        release = functools.partial(rows.release, bucket)
                        at = {f: sinks[f].position() for f in formats}
                        checkpoint("writing", position, bucket, release, sinks=at)
                    current = bucket
                    for chunk in table.to_batches(max_chunksize=WRITE_ROWS):
                        budget.check()
                        _write(sinks, formats, chunk, rtype, key)
                        progress.advance(chunk.num_rows)
                    killpoint(f"{name}.bucket")
            except OSError as e:  # reading a bucket back (the sinks' errors are ExportErrors)
                raise ExportError(
                    f"reading sort spill files in {spill} failed: {e.strerror or e}",
                    record_type=name,
                    key_range=rows.span(rows.reading),
                ) from None
            finally:
                ordered.close()
            try:
                for _, table in bad.buckets(keep=keep):
                    rejects.write(table)
            except OSError as e:
                message = f"writing rejects failed: {e.strerror or e}"
                raise ExportError(message, record_type=name, key_range=bad.span(bad.reading)) from None
        budget.rejected(len(source.unplaced.keys), name)
        rejects.unplaced(source)
        results = [sinks[fmt].close() for fmt in formats]
        stream = _Stream(results, source.total, rejects.close(), pages_read, source.retried)
        spill.rmdir()
        return stream
    except BaseException:
        for s in sinks.values():
            s.abort()
        rejects.abort()
        raise
    finally:
        if pages is not None:
            pages.close()  # stops the reader thread before its connection closes
        progress.stop()
        source.close()


class _StartOver(Exception):  # noqa: N818 - control flow
    """A checkpoint's files are not as it says: the stream starts over."""


def _remove_leftovers(folder: Path, name: str, spill: Path | None = None) -> None:
    """What a killed run of stream ``name`` left in the staging folder: its files, its
    rejects' part file, its sort files."""
    for fmt in SINKS:
        (folder / f"{name}.{fmt}").unlink(missing_ok=True)
    (folder / f".{name}.{REJECTS}").unlink(missing_ok=True)
    if spill is not None and spill.exists():
        shutil.rmtree(spill)


def _write_ops(
    db: Archive,
    folder: Path,
    formats: Sequence[str],
    filters: Filters,
    batch_size: int,
    batch_bytes: int,
    progress: Progress,
    budget: _Budget,
    checkpoints: Checkpoints | None = None,
    resume: bool = True,
) -> _Stream:
    """The ``ops`` table in ``seq`` order, split into ``ops/<type>.<action>.<ext>``.

    ``seq`` is the table's rowid, so the keyset pages already come in export
    order: pages are converted on the converter threads but written in order,
    nothing is sorted or spilled. Each page's rows go to the files of their
    (type, action); a file is opened when its first row comes. With
    ``checkpoints``, the last page written and the files' sizes then are recorded
    (at most every ``checkpoints.interval`` seconds), and a killed run's continued.
    """
    rtype = OPS
    name = rtype.name
    wanted = frozenset(formats)
    reads = Reads(*transforms.reads(rtype, wanted))
    state = checkpoints.load(name) if checkpoints is not None and resume else None
    if state is not None and state.get("phase") != "writing":
        state = None
    ops_dir = folder / "ops"
    if state is None:
        _remove_leftovers(folder, name, ops_dir)
    source = db.read(rtype, filters, batch_size, spill_dir=folder, reads=reads, batch_bytes=batch_bytes)
    ops_dir.mkdir(exist_ok=True)
    key = _sort_key(rtype, wanted)
    sinks: dict[tuple[str, str], Sink] = {}  # (file stem, format)
    rejects = _RejectLog(folder, rtype)
    pages_read = 0
    progress.start("ops", source.total)
    if state is not None:
        try:
            position = Position(*state["position"])  # type: ignore[misc]
            files = {tuple(k.split("/")): v for k, v in dict(state["sinks"]).items()}  # type: ignore[call-overload]
            for entry in ops_dir.iterdir():  # opened after the checkpoint: written again
                if tuple(entry.name.rsplit(".", 1)) not in files:
                    entry.unlink()
            for (stem, fmt), (size, records) in files.items():
                sinks[stem, fmt] = _open_sink(ops_dir, rtype, fmt, stem, resume=(size, records))
            rejects.resume(state["rejects"])  # type: ignore[arg-type]
            source.resume(position, list(state["unplaced_keys"]), list(state["unplaced_values"]))  # type: ignore[call-overload]
        except (OSError, KeyError, TypeError, ValueError):  # not as the checkpoint says: start over
            for sink in sinks.values():
                sink.abort()
            source.close()
            progress.stop()
            args = (db, folder, formats, filters, batch_size, batch_bytes, progress, budget, checkpoints)
            return _write_ops(*args, resume=False)
        pages_read = int(state["pages"])  # type: ignore[call-overload]
        budget.rejected(rejects.count, name)
        progress.advance(position.seen)
        log.info("%s: resuming after %s records written", name, f"{position.seen:,}")
    clock = Clock(checkpoints.interval) if checkpoints is not None else None
    pages = prefetch(source.pages(), budget.prefetch)
    try:
        for page, (rows_out, bad_out) in _convert_in_order(rtype, pages, wanted, budget.converters):
            pages_read += 1
            budget.check()
            stems = _op_stems(page)
            for stem in stems.unique(maintain_order=True).to_list():
                part = rows_out.filter((stems == stem).to_arrow()) if stems.n_unique() > 1 else rows_out
                for fmt in formats:
                    if (stem, fmt) not in sinks:
                        sinks[stem, fmt] = _open_sink(ops_dir, rtype, fmt, stem)
                for chunk in part.to_batches(max_chunksize=WRITE_ROWS):
                    _write({fmt: sinks[stem, fmt] for fmt in formats}, formats, chunk, rtype, key)
            budget.rejected(bad_out.num_rows, name)
            if bad_out.num_rows:
                rejects.write(bad_out)
            progress.advance(page.num_rows)
            killpoint(f"{name}.page")
            if checkpoints is not None and clock is not None and clock.due():
                at = Position.of(page)
                checkpoints.save_later(
                    name,
                    {
                        "phase": "writing",
                        "position": [at.after, at.seen, at.unplaced],
                        "unplaced_keys": source.unplaced.keys[: at.unplaced],
                        "unplaced_values": source.unplaced.values[: at.unplaced],
                        "pages": pages_read,
                        "sinks": {f"{stem}/{fmt}": sink.position() for (stem, fmt), sink in sinks.items()},
                        "rejects": rejects.position(),
                    },
                    [*(s.path for s in sinks.values()), *rejects.files(), ops_dir, folder],
                )
                clock.reset()
        pages.close()
        budget.rejected(len(source.unplaced.keys), name)
        rejects.unplaced(source)
        if not sinks:
            ops_dir.rmdir()  # no op passed the filters: no files, no folder
        results = []
        for stem, fmt in sorted(sinks):  # the manifest lists them by name
            result = sinks[stem, fmt].close()
            results.append(replace(result, path=f"ops/{result.path}"))
        return _Stream(results, source.total, rejects.close(), pages_read, source.retried)
    except BaseException:
        for s in sinks.values():
            s.abort()
        rejects.abort()
        raise
    finally:
        pages.close()
        progress.stop()
        source.close()


def _op_stems(page: pa.Table) -> pl.Series:
    """Each op's file stem, ``<type>.<action>``: ``posts``, ``likes`` or ``follows`` by the
    collection and ``other`` for any other collection; the action if it is one of the three
    the schema allows, else ``other``. So there are at most 16 stems: file names stay short
    and safe, and the files open at once stay few, whatever the table holds."""
    df = pl.from_arrow(page.select(["collection", "action"]))
    assert isinstance(df, pl.DataFrame)
    kind = pl.col("collection").replace_strict(COLLECTION_TYPES, default="other", return_dtype=pl.String)
    action = pl.when(pl.col("action").is_in(OP_ACTIONS)).then(pl.col("action")).otherwise(pl.lit("other"))
    return df.select(pl.concat_str(kind, pl.lit("."), action)).to_series()


def _convert_in_order(
    rtype: RecordType, pages: Iterable[pa.Table], formats: frozenset[str], pool: ThreadPoolExecutor
) -> Iterator[tuple[pa.Table, tuple[pa.Table, pa.Table]]]:
    """Like ``_convert_all``, but results come back in page order (at most CONVERTERS ahead)."""
    running: collections.deque[tuple[pa.Table, Future[tuple[pa.Table, pa.Table]]]] = collections.deque()
    try:
        for page in pages:
            running.append((page, pool.submit(_convert, rtype, page, formats)))
            if len(running) > CONVERTERS:
                done, future = running.popleft()
                yield done, future.result()
        while running:
            done, future = running.popleft()
            yield done, future.result()
    finally:
        for _, f in running:
            f.cancel()


KEY = "_key"
CSV_PREFIX = "csv:"


def _convert_all(
    rtype: RecordType, pages: Iterable[pa.Table], formats: frozenset[str], pool: ThreadPoolExecutor
) -> Iterator[tuple[Position, int, Position | None, tuple[pa.Table, pa.Table]]]:
    """Convert pages on the converter ``pool`` (Polars and pyarrow release the GIL), at most
    CONVERTERS pages of this stream in flight. Results come back in any order: they are sorted next.

    Each comes as (its page's position, its page's rows, settled, result): ``settled`` is
    the position of the last page of the prefix of pages whose results have all come
    back, once this one is taken, if no later page's result has come back yet (the pages
    taken are exactly that prefix: a checkpoint can name it); else None.
    """
    running: set[Future[tuple[pa.Table, pa.Table]]] = set()
    # Pages by number, in submission order; a taken future is not kept (it holds its result).
    order: collections.deque[tuple[int, Position]] = collections.deque()
    info: dict[Future[tuple[pa.Table, pa.Table]], tuple[int, Position, int]] = {}
    taken: set[int] = set()

    def take(f: Future[tuple[pa.Table, pa.Table]]) -> tuple[Position, int, Position | None, tuple[pa.Table, pa.Table]]:
        result = f.result()
        number, position, n = info.pop(f)
        taken.add(number)
        settled = None
        while order and order[0][0] in taken:
            done, settled = order.popleft()
            taken.discard(done)
        return position, n, settled if not taken else None, result

    try:
        for number, page in enumerate(pages):
            future = pool.submit(_convert, rtype, page, formats)
            position = Position.of(page)
            info[future] = (number, position, page.num_rows)
            order.append((number, position))
            running.add(future)
            if len(running) >= CONVERTERS:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for f in done:
                    yield take(f)
        for f in as_completed(running):
            yield take(f)
    finally:
        for f in running:
            f.cancel()


def _convert(rtype: RecordType, page: pa.Table, formats: frozenset[str]) -> tuple[pa.Table, pa.Table]:
    """One page converted: (sort keys + CSV columns + JSON text, rejects + sort keys)."""
    try:
        out = transforms.transform(rtype, page, formats)
    except PipelineError:
        raise
    except Exception as e:
        raise ExportError(
            f"converting rows failed: {e}", record_type=rtype.name, key_range=_page_range(page, rtype.key)
        ) from e
    ninst, nsub = page.column(NINST), page.column(NSUB)
    cols, names = [ninst, nsub], [NINST, NSUB]
    if _sort_key(rtype, formats) == KEY:
        cols.append(page.column(rtype.key))
        names.append(KEY)
    if out.csv is not None:
        cols += out.csv.columns
        names += [CSV_PREFIX + n for n in out.csv.schema.names]
    if out.json is not None:
        cols.append(out.json.column(0))
        names.append("json")
    converted = pa.Table.from_arrays(cols, names=names)
    bad = pa.Table.from_batches([out.rejects])
    rows = bad.column("_row")
    bad = bad.append_column(NINST, ninst.take(rows)).append_column(NSUB, nsub.take(rows))
    bad = bad.append_column(KEY, bad.column("key"))
    return converted, bad


@functools.cache
def _sort_key(rtype: RecordType, formats: frozenset[str]) -> str:
    """The column converted rows are sorted by after the instant: the key as stored.

    A CSV export already carries it as a text column (nulls stay null, text as
    stored), so it is not spilled twice (15% of a CSV export's spill).
    """
    if "csv" in formats:
        text = {c.name for c in rtype.columns if c.kind == "text"}
        for c in rtype.csv:
            if c.source == rtype.key and c.source in text and c.null_as is None:
                return CSV_PREFIX + c.header
    return KEY


def _page_range(page: pa.Table, key: str) -> str:
    keys = page.column(key)
    return f"rows {keys[0].as_py()} … {keys[-1].as_py()} in table order" if page.num_rows else "empty page"


def _write(sinks: dict[str, Sink], formats: Sequence[str], chunk: pa.RecordBatch, rtype: RecordType, key: str) -> None:
    fmt = formats[0]
    try:
        for fmt in formats:
            if fmt == "csv":
                names = [n for n in chunk.schema.names if n.startswith(CSV_PREFIX)]
                part = chunk.select(names).rename_columns([n[len(CSV_PREFIX) :] for n in names])
            else:
                part = chunk.select(["json"])
            sinks[fmt].write(part)
    except OSError as e:
        span = key_range(chunk.replace_schema_metadata(range_metadata(chunk, key)))
        raise ExportError(
            f"writing the export failed: {e.strerror or e} ({sinks[fmt].path})", record_type=rtype.name, key_range=span
        ) from None


def _open_sink(
    folder: Path, rtype: RecordType, fmt: str, stem: str | None = None, resume: tuple[int, int] | None = None
) -> Sink:
    name = f"{stem or rtype.name}.{fmt}"
    if fmt == "csv":
        return SINKS[fmt](folder, name, transforms.csv_schema(rtype), resume)
    return SINKS[fmt](folder, name, resume)


class _RejectLog:
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
    df = pl.from_arrow(bad)
    assert isinstance(df, pl.DataFrame)
    return transforms.to_batch(df.select(pl.struct(pl.all()).struct.json_encode().alias("json")))


def _unplaced_rejects(rtype: RecordType, source: RecordSource) -> pa.RecordBatch:
    n = len(source.unplaced.keys)
    return pa.RecordBatch.from_pydict(
        {
            "type": [rtype.name] * n,
            "key": source.unplaced.keys,
            "column": [rtype.time] * n,
            "value": source.unplaced.values,
            "reason": ["not a timestamp; the row cannot be placed in time, so --since/--until excluded it"] * n,
        },
        schema=transforms.REJECT_SCHEMA,
    )


def prefetch(items: Iterable[T], depth: int) -> Generator[T, None, None]:
    """Iterate ``items`` in a background thread, at most ``depth`` items ahead."""
    q: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("done", None))
        except BaseException as e:  # handed to the consumer, raised there
            q.put(("error", e))
        finally:
            close = getattr(items, "close", None)
            if close is not None:  # a generator's cleanup runs here, in its own thread
                close()

    thread = threading.Thread(target=produce, name="reader", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "item":
                yield value  # type: ignore[misc]
            elif kind == "error":
                raise value  # type: ignore[misc]
            else:
                return
    finally:
        stop.set()
        # Drain so a blocked producer sees the stop flag, and wait for it: the
        # caller closes what it reads from. A second interrupt meanwhile is
        # raised only once the thread is gone.
        pending: BaseException | None = None
        while thread.is_alive():
            try:
                with contextlib.suppress(queue.Empty):
                    q.get(timeout=0.1)
            except BaseException as e:
                pending = pending or e
        if pending is not None:
            raise pending


# --- streams --------------------------------------------------------------------------


class _RejectCount:
    """Rejected values over all streams, against ``--max-rejects``."""

    def __init__(self, limit: int | None):
        self.limit = limit
        self.count = 0
        self._lock = threading.Lock()

    def add(self, n: int, record_type: str) -> None:
        if not n or self.limit is None:
            return
        with self._lock:
            self.count += n
            count = self.count
        if count > self.limit:
            raise ExportError(
                f"more than --max-rejects {self.limit} value(s) rejected ({count} so far); nothing was published",
                record_type=record_type,
            )


@dataclass(frozen=True)
class _Budget:
    """What one stream may use while ``jobs`` streams share the machine: its sort buckets'
    size, the converter threads (one pool for all), and the flag that stops it when another
    stream fails."""

    bucket_bytes: int
    converters: ThreadPoolExecutor  # shared by all streams: a stream that ends leaves its share to the rest
    cancel: threading.Event
    prefetch: int = _PREFETCH  # pages read ahead
    rejects: _RejectCount = field(default_factory=lambda: _RejectCount(None))

    def check(self) -> None:
        if self.cancel.is_set():
            raise Cancelled

    def rejected(self, n: int, record_type: str) -> None:
        """Count ``n`` more rejected values; ExportError once they pass ``--max-rejects``."""
        self.rejects.add(n, record_type)


def _run_streams(
    streams: list[tuple[str, Callable[[Progress, _Budget], object]]],
    jobs: int | None,
    progress: Progress,
    max_rejects: int | None = None,
    seconds: dict[str, float] | None = None,
    cancel: threading.Event | None = None,
) -> dict[str, object]:
    """Run each stream (name, fn(progress, budget)); ``jobs`` at a time. Returns name → result.

    One stream failing sets the shared cancel flag: the others stop at their
    next page, chunk or file (well under a second), and the first failure is
    raised. So does an interrupt, after the streams have stopped.
    """
    if not streams:
        return {}
    seconds = {} if seconds is None else seconds  # each stream's wall time, filled in as they end
    jobs = min(jobs or os.cpu_count() or 1, len(streams))
    cancel = cancel or threading.Event()
    # Memory is shared: each of the streams running at once gets its share of
    # the sort buckets and of the converter threads.
    converters = ThreadPoolExecutor(CONVERTERS, thread_name_prefix="convert")
    # Streams at once share the memory: each reads one page ahead instead of two
    # (sort buckets keep their size: halving them cost more time than it saved).
    budget = _Budget(
        source_module.BUCKET_BYTES, converters, cancel, _PREFETCH if jobs == 1 else 1, _RejectCount(max_rejects)
    )
    display = Streams(progress)

    def timed(name: str, fn: Callable[[Progress, _Budget], object]) -> object:
        started = time.monotonic()
        result = fn(display.stream(name), budget)
        seconds[name] = time.monotonic() - started
        return result

    try:
        if jobs == 1:
            return {name: timed(name, fn) for name, fn in streams}
        with ThreadPoolExecutor(jobs, thread_name_prefix="stream") as pool:
            futures = {pool.submit(timed, name, fn): name for name, fn in streams}
            try:
                finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
                failed = [f for f in finished if f.exception() is not None]
                if failed:
                    cancel.set()
                    wait(futures)
                    errors = [f.exception() for f in futures if f.exception() is not None]
                    first = next((e for e in errors if not isinstance(e, Cancelled)), errors[0])
                    raise first  # type: ignore[misc]
            except BaseException:
                cancel.set()
                for f in futures:
                    f.cancel()
                _wait_uninterrupted(futures)
                raise
            return {futures[f]: f.result() for f in futures}
    finally:
        converters.shutdown(wait=True, cancel_futures=True)
        display.stop()


def _wait_uninterrupted(futures: Iterable[Future[object]]) -> None:
    """Wait for running streams to stop even if another interrupt comes meanwhile."""
    pending: BaseException | None = None
    while True:
        try:
            wait(futures)
            break
        except BaseException as e:
            pending = pending or e
    if pending is not None:
        raise pending
