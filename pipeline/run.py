"""The runner: wires source → transforms → sinks → publish, with progress.

A reader thread pages the archive while the main thread converts and writes,
so SQLite and the encoders overlap; the queue between them holds at most a few
batches, which keeps memory bounded.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from . import __version__
from . import source as source_module
from .checkpoint import Checkpoints, killpoint
from .errors import ArchiveError, Cancelled, ExportError, UsageError
from .media import MEDIA_DIR, MediaResult, copy_media
from .progress import Progress, Streams
from .publish import MANIFEST, TOOL, Staging, clean, restore_aside, stale_folders
from .records import OPS, POSTS, RECORD_TYPES, RecordType
from .sinks import SINKS, FileResult, concat_files
from .source import Archive, Filters, iso_bound
from .streams import (
    CONVERTERS,
    PREFETCH,
    REJECTS,
    Budget,
    RejectCount,
    StreamResult,
    remove_leftovers,
    write_ops,
    write_records,
)

log = logging.getLogger("pipeline")
FORMATS = tuple(SINKS)
DEFAULT_FORMATS = ("csv", "json")


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
            streams: list[tuple[str, Callable[[Progress, Budget], object]]] = []
            for rtype in rtypes:
                fn = functools.partial(
                    write_records, db, staging.path, rtype, formats, filters, batch_size, batch_bytes,
                    checkpoints=checkpoints,
                )  # fmt: skip
                streams.append((rtype.name, _checkpointed(checkpoints, staging.path, rtype.name, fn)))
            if ops:
                ops_stream = functools.partial(
                    write_ops, db, staging.path, formats, filters, batch_size, batch_bytes, checkpoints=checkpoints
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
                assert isinstance(result, StreamResult)
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


SNAPSHOT = ".archive-snapshot.db"  # the copy a rollback-journal archive is read from; never published
METRICS = "metrics.json"  # beside manifest.json; not listed in it: it differs on every run


def _checkpointed(
    checkpoints: Checkpoints, folder: Path, name: str, fn: Callable[[Progress, Budget], object], *own: str
) -> Callable[[Progress, Budget], object]:
    """Stream ``fn`` with a checkpoint when it is done: a resumed run takes its files as they
    are (if they still have their sizes) instead of writing them again. A stream that was
    not done is started over, its leftovers (``own``: its files and folders) removed first,
    unless it continues from checkpoints of its own (the record types)."""

    def run(progress: Progress, budget: Budget) -> object:
        state = checkpoints.load(name)
        result = _finished(folder, state) if state is not None and state.get("phase") == "done" else None
        if result is not None:
            log.info("%s: done before the interruption; its files are kept", name)
            progress.start(f"{name}: done before", 1)
            progress.advance(1)
            progress.stop()
            if isinstance(result, StreamResult) and result.rejects:
                budget.rejected(result.rejects[1], name)
            return result
        if own:
            remove_leftovers(folder, name)
            for path in own:
                if (folder / path).exists():
                    shutil.rmtree(folder / path)
        result = fn(progress, budget)
        done: dict[str, object] = {"phase": "done"}
        if isinstance(result, MediaResult):
            done.update(kind="media", files=[asdict(f) for f in result.files], missing=result.missing,
                        refused=result.refused)  # fmt: skip
        else:
            assert isinstance(result, StreamResult)
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
    return result.files if isinstance(result, (MediaResult, StreamResult)) else []


def _finished(folder: Path, state: dict[str, object]) -> StreamResult | MediaResult | None:
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
        return StreamResult(files, int(state["records"]), rejects, int(state["batches"]), int(state["retries"]))  # type: ignore[call-overload]
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


def _run_streams(
    streams: list[tuple[str, Callable[[Progress, Budget], object]]],
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
    budget = Budget(
        source_module.BUCKET_BYTES, converters, cancel, PREFETCH if jobs == 1 else 1, RejectCount(max_rejects)
    )
    display = Streams(progress)

    def timed(name: str, fn: Callable[[Progress, Budget], object]) -> object:
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
