"""The runner: opens the archive, decides what to export, runs the streams, publishes.

``export`` is the front door; the CLI calls it with the same keywords. It
validates ``ExportOptions``, opens the archive, takes one snapshot of it
(``Archive.snapshot``), decides the streams (``Plan``), stages them
(``publish.Staging``), runs them ``jobs`` at a time on threads it owns, with one
cancel flag and the converter pool they share (``streams.Budget``), writes the
manifest and metrics (``manifest.py``) and publishes. Any OS error on the way
becomes an ``ExportError``; nothing is published then.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import logging
import os
import re
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from .errors import ArchiveError, Cancelled, ExportError
from .interrupts import held, uninterrupted
from .manifest import METRICS, Contents, ExportResult, build, peak_rss, read_unchanged, result, stream_metrics
from .manifest import write_json as write_metrics
from .media import MEDIA_DIR, MediaResult, copy_media
from .ops_stream import OpsStream
from .options import DEFAULT_FORMATS, ExportOptions, parse_types
from .progress import Progress, Streams
from .publish import MANIFEST, Staging, clean, guard_inputs, restore_aside, stale_folders
from .record_stream import RecordStream
from .records import OPS, POSTS, RECORD_TYPES, RecordType
from .rejects import REJECTS
from .sinks import FileResult, concat_files
from .source import BATCH_BYTES, RETRIES, Archive, Filters
from .streams import Budget, RejectCount, Result, Stream, StreamContext, checkpointed
from .tuning import InFlight, OpenFiles, Tuning

log = logging.getLogger("pipeline")
SNAPSHOT = ".archive-snapshot.db"  # the copy a rollback-journal archive is read from; never published
__all__ = ["ExportResult", "default_out", "export"]


def default_jobs() -> int:
    """Streams at once when ``jobs`` is not given: half the CPUs, at least one. One stream
    already keeps two cores busy (its reader, the converter threads, its writer): on this
    2-core machine a second stream at once gave 1.02x the speed for 50 MiB more peak RSS,
    which took an export of every type past 500 MB (docs/decisions.md)."""
    return max(1, (os.cpu_count() or 1) // 2)


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
    batch_bytes: int = BATCH_BYTES,
    max_rejects: int | None = None,
    retries: int = RETRIES,
    skip_unchanged: bool = False,
    resume: bool = False,
    compress: str | None = None,
    compress_level: int | None = None,
    split_rows: int | None = None,
    split_bytes: int | None = None,
    csv_safe: bool = False,
    progress: Progress | None = None,
    tuning: Tuning | None = None,
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
    half the CPU count (``default_jobs``), capped at the number of streams. The output does not depend on it.
    ``max_rejects``: fail (ExportError, nothing published) as soon as more values
    than this have been rejected; None for no limit.
    ``retries``: how often a query that finds the archive locked or busy is
    retried (exponential backoff from 0.1 s; each retry logged on the
    ``pipeline`` logger) before the export fails.
    ``skip_unchanged``: if ``out`` holds an export whose manifest has the same
    ``fingerprint`` (the archive's identity and every option that shapes the
    files), return it as it is (``ExportResult.skipped``) without exporting.
    ``compress``: ``"gzip"`` or ``"zstd"``: CSV, JSON and NDJSON files compressed while
    written (``posts.csv.gz``), at ``compress_level`` (default gzip 6, zstd 3).
    ``split_rows`` / ``split_bytes``: each file cut into numbered parts (``posts-00001.csv``,
    …) of at most that many records / uncompressed bytes, each part a whole file.
    ``csv_safe``: CSV text cells that start with ``=``, ``+``, ``-``, ``@``, tab or CR get a
    ``'`` in front, so a spreadsheet shows them as text (counted in the manifest).
    ``tuning``: sizes, threads and hooks (``Tuning``); the files do not depend on it.

    Raises a PipelineError subclass (UsageError, ArchiveError, OutputError,
    ExportError) with a one-line message; nothing is written to ``out`` then.
    """
    options = ExportOptions(
        Path(archive), None if out is None else Path(out), tuple(dict.fromkeys(formats)), parse_types(types),
        ops, include_media, None if media_root is None else Path(media_root), jobs, did, since, until,
        batch_size, batch_bytes, max_rejects, retries, skip_unchanged, resume, compress, compress_level,
        split_rows, split_bytes, csv_safe,
    )  # fmt: skip
    return run(options, progress or Progress(), tuning or Tuning())


@dataclass(frozen=True)
class Plan:
    """What an export does, decided against the archive: the record types, the filters with
    ``--did self`` resolved, the owner's DID, notices for the user, and the fingerprint."""

    types: list[RecordType]
    filters: Filters
    owner: str | None
    notices: list[str]
    fingerprint: dict[str, object]

    @classmethod
    def of(cls, db: Archive, options: ExportOptions) -> Plan:
        owner = _owner(db, options.did)
        filters = replace(options.filters, did=owner) if options.did == "self" else options.filters
        types, notices = _chosen_types(db, options.types)
        if options.ops:
            db.check(OPS)  # asked for: a missing table is an error
        if options.include_media and not db.has_table_named("media"):
            raise ArchiveError(f"archive {options.archive} has no 'media' table (asked for by --include-media)")
        return cls(types, filters, owner, notices, options.fingerprint([r.name for r in types], filters))


def run(options: ExportOptions, progress: Progress, tuning: Tuning) -> ExportResult:
    """``export`` with its options validated."""
    out = options.out
    if out is None and options.resume:  # the default folder is new each run: resume the newest one killed
        out = _killed_default_out(options.archive)
    out = out or default_out(options.archive)
    guard_inputs(out, options.archive, options.media_root if options.include_media else None)
    with contextlib.ExitStack() as opened:
        db = opened.enter_context(Archive(options.archive, options.retries))
        plan = Plan.of(db, options)
        earlier = _earlier(out, options, plan)
        if earlier is not None:
            return earlier
        staging = Staging(out, plan.fingerprint, options.resume, tuning.checkpoint_seconds)
        try:
            complete = _complete_in(staging, plan)
            if complete is not None:
                return complete
            # From here on the export reads one snapshot: a copy for a rollback-journal archive,
            # whose writer would fail to commit while this run held its lock (made while the export reads).
            db.snapshot(staging.path / SNAPSHOT)
            return _export(db, staging, options, plan, progress, tuning)
        except BaseException as e:
            staging.checkpoints.close()  # no checkpoint written into a folder being removed
            db.close()  # nor the archive's copy
            staging.discard()
            if isinstance(e, OSError):
                raise ExportError(
                    f"writing the export failed: {e.strerror or e} ({e.filename or staging.path})"
                ) from None
            raise


def _earlier(out: Path, options: ExportOptions, plan: Plan) -> ExportResult | None:
    """With ``--skip-unchanged`` or ``--resume``: the export already in ``out``, if it is this one."""
    if options.resume:
        restore_aside(out)  # a run killed while publishing moved the earlier export aside
    if not (options.skip_unchanged or options.resume):
        return None
    earlier = read_unchanged(out, plan.fingerprint["sha256"])
    if earlier is None:
        return None
    if options.max_rejects is not None and earlier.rejects > options.max_rejects:  # as a new run would fail
        raise ExportError(
            f"more than --max-rejects {options.max_rejects} value(s) rejected ({earlier.rejects} in the unchanged"
            f" export in {earlier.out}); nothing was published"
        )
    if options.skip_unchanged:
        return earlier
    warnings, _ = clean(out)  # --resume: the killed run had published it (or a run before it)
    return replace(earlier, notices=[f"{earlier.out} already holds this export; nothing to resume"], warnings=warnings)


def _complete_in(staging: Staging, plan: Plan) -> ExportResult | None:
    """A resumed staging folder that its killed run had completed (killed while publishing):
    published as it is. Otherwise what the end of a run writes is removed, and None."""
    if staging.resumed is None:
        return None
    complete = read_unchanged(staging.path, plan.fingerprint["sha256"])
    if complete is not None:
        log.info("the interrupted export was complete; publishing it")
        staging.checkpoints.drop()
        for part in staging.path.glob(f".*.{REJECTS}"):
            part.unlink()
        warnings = staging.publish()
        return replace(complete, out=staging.out, skipped=False, warnings=warnings, notices=plan.notices)
    for leftover in (MANIFEST, METRICS, REJECTS, SNAPSHOT):  # written again
        (staging.path / leftover).unlink(missing_ok=True)
    staging.checkpoints.folder.mkdir(exist_ok=True)
    return None


def _streams(db: Archive, staging: Staging, options: ExportOptions, plan: Plan) -> list[tuple[str, Stream]]:
    """The streams of this export, in the order their files are listed: record types, ops, media."""
    folder, checkpoints, filters = staging.path, staging.checkpoints, plan.filters
    ctx = StreamContext(
        db, folder, options.formats, filters, options.batch_size, options.batch_bytes, checkpoints, options.files
    )
    streams: list[tuple[str, Stream]] = []
    for rtype in plan.types:
        fn: Stream = functools.partial(RecordStream.run_resumed, ctx, rtype)
        streams.append((rtype.name, checkpointed(checkpoints, folder, rtype.name, fn)))
    if options.ops:
        fn = functools.partial(OpsStream.run_resumed, ctx)
        streams.append((OPS.name, checkpointed(checkpoints, folder, OPS.name, fn)))
    if options.include_media and any(r.name == POSTS.name for r in plan.types):
        fn = functools.partial(copy_media, db, folder, filters, root=options.media_root, out=staging.out)
        streams.append(("media", checkpointed(checkpoints, folder, "media", fn, MEDIA_DIR)))
    elif options.include_media:
        plan.notices.append("--include-media copies the media of exported posts; no posts were exported")
    return streams


def _export(
    db: Archive, staging: Staging, options: ExportOptions, plan: Plan, progress: Progress, tuning: Tuning
) -> ExportResult:
    """Run the streams into ``staging``, write the manifest and metrics, publish."""
    streams = _streams(db, staging, options, plan)
    started, seconds = time.monotonic(), dict[str, float]()
    jobs = min(options.jobs or default_jobs(), max(1, len(streams)))
    converters = ThreadPoolExecutor(tuning.converters, thread_name_prefix="convert")
    # Streams at once share the memory: each reads one page ahead at most (sort buckets keep
    # their size: halving them cost more time than it saved).
    budget = Budget(
        tuning, converters, db.cancel, tuning.prefetch if jobs == 1 else 1, RejectCount(options.max_rejects),
        OpenFiles(tuning.open_files), staging.checkpoints, InFlight(tuning.in_flight_bytes),
    )  # fmt: skip
    try:
        done = _run_streams(streams, jobs, progress, budget, seconds)
    finally:
        converters.shutdown(wait=True, cancel_futures=True)
    contents, parts, per_stream = _collect(streams, done, seconds, staging.path)
    if plan.filters.did is None and plan.owner is not None and contents.records.get(POSTS.name) is not None:
        contents = replace(contents, posts_by_others=db.count_others(POSTS, plan.owner, plan.filters))
    manifest = build(
        options.archive, db.size_bytes, db.copied, plan.filters, options.formats, contents, plan.fingerprint,
        options.layout(),
    )  # fmt: skip
    metrics: dict[str, object] = {
        "run_seconds": round(time.monotonic() - started, 3),
        "peak_rss_bytes": peak_rss(),
        "peak_in_flight_bytes": budget.in_flight.peak,
        "archive_retries": db.retried,
        "streams": per_stream,
    }
    write_metrics(staging.path / METRICS, metrics)
    db.close()  # the copy stopped, if the export read everything before it was complete
    if db.snapshot_path is not None:  # the copy is not part of the export
        db.snapshot_path.unlink(missing_ok=True)
    staging.write_manifest(manifest)  # last: a staging folder with a manifest is complete
    budget.event("publish")
    staging.checkpoints.drop()
    staging.checkpoints.close()
    for part in parts:  # kept until now: checkpoints of finished streams name them
        part.unlink()
    warnings = staging.publish(budget.event)
    return result(staging.out, manifest, contents, warnings, plan.notices + contents.media.notices(), metrics)


def _collect(
    streams: list[tuple[str, Stream]], done: dict[str, Result], seconds: dict[str, float], folder: Path
) -> tuple[Contents, list[Path], dict[str, dict[str, object]]]:
    """The streams' results in stream order (whichever finished first): the export's contents
    (the rejects' part files joined into one file), the part files, and per-stream metrics."""
    files: list[FileResult] = []
    records: dict[str, int] = {}
    parts: list[tuple[Path, int]] = []
    media = MediaResult()
    per_stream: dict[str, dict[str, object]] = {}
    for name, _ in streams:
        got = done[name]
        files += got.files
        if isinstance(got, MediaResult):
            media = got
            per_stream[name] = stream_metrics(len(got.files), 0, got.files, seconds[name], 0, 0)
            continue
        records[name] = got.records
        if got.rejects:
            parts.append(got.rejects)
        rejected = got.rejects[1] if got.rejects else 0
        per_stream[name] = stream_metrics(got.records, got.batches, got.files, seconds[name], got.retries, rejected)
    if parts:
        files.append(concat_files(folder, REJECTS, parts, remove=False))
    types = [name for name, _ in streams if name in RECORD_TYPES]
    contents = Contents(types, records, files, sum(n for _, n in parts), media)
    return contents, [p for p, _ in parts], per_stream


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


def _chosen_types(db: Archive, named: Sequence[str] | None) -> tuple[list[RecordType], list[str]]:
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
    streams: list[tuple[str, Stream]], jobs: int, progress: Progress, budget: Budget, seconds: dict[str, float]
) -> dict[str, Result]:
    """Run each stream (name, fn(progress, budget)); ``jobs`` at a time. Returns name → result;
    ``seconds`` gets each stream's wall time as it ends.

    One stream failing sets the shared cancel flag: the others stop at their
    next page, chunk or file (well under a second), and the first failure is
    raised. So does an interrupt, after the streams have stopped.
    """
    display = Streams(progress)

    def timed(name: str, fn: Stream) -> Result:
        started = time.monotonic()
        got = fn(display.stream(name), budget)
        seconds[name] = time.monotonic() - started
        return got

    try:
        if jobs == 1:
            return {name: timed(name, fn) for name, fn in streams}
        with ThreadPoolExecutor(jobs, thread_name_prefix="stream") as pool:
            futures: dict[Future[Result], str] = {}
            try:
                with held():  # an interrupt while a stream's thread starts: raised once all are submitted
                    for name, fn in streams:
                        futures[pool.submit(timed, name, fn)] = name
                finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
                errors = [e for f in finished if (e := f.exception()) is not None]
                if errors:
                    budget.cancel.set()
                    wait(futures)
                    errors = [e for f in futures if (e := f.exception()) is not None]
                    raise next((e for e in errors if not isinstance(e, Cancelled)), errors[0])
            except BaseException:
                budget.cancel.set()
                for f in futures:
                    f.cancel()
                _wait_uninterrupted(futures)
                raise
            return {futures[f]: f.result() for f in futures}
    finally:
        display.stop()


def _wait_uninterrupted(futures: Iterable[Future[Result]]) -> None:
    """Wait for running streams to stop even if another interrupt comes meanwhile."""
    uninterrupted(lambda: not wait(futures).not_done)
