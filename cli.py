"""The ``pipeline`` command: parse options, call ``pipeline.export``, map errors to exit codes."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Optional

import typer


def _tune_memory() -> None:
    """Allocator settings for a bounded, measurable footprint; must run before pyarrow
    and polars load (the command imports them lazily)."""
    # Arrow's default pool here is mimalloc, which reserves memory in large mapped
    # arenas (1 GiB on first use) that memory profilers count as allocated.
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    # Polars' jemalloc keeps freed extents mapped (retain) and purges lazily; a
    # service profiling with memray sees that as held: unmap them, decay in 1 s.
    # One arena: by default each of its 4 x cores arenas keeps its own dirty pages
    # (1M posts to NDJSON: memray peak 311-331 MiB with the default, 241-247 MiB with
    # one arena, same speed; docs/decisions.md "Memory").
    os.environ.setdefault("_RJEM_MALLOC_CONF", "retain:false,dirty_decay_ms:1000,muzzy_decay_ms:0,narenas:1")
    # glibc gives each thread its own malloc arena; with reader and converter
    # threads that fragments memory (1M posts, all formats: peak RSS 532 → 432 MB).
    if "MALLOC_ARENA_MAX" not in os.environ:
        _mallopt(-8, 2)  # M_ARENA_MAX


def _mallopt(param: int, value: int) -> None:
    """glibc's ``mallopt``; nothing where the C library is another."""
    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):  # not glibc
            ctypes.CDLL(name).mallopt(param, value)


def _huge_rows() -> None:
    """Called once a huge row (over 1/64 of --batch-bytes) is read: from then on glibc maps
    each block of 1 MiB or more on its own and unmaps it when freed. By default its mmap
    threshold rises to the largest block freed, so huge values come from the heap, which
    keeps them (2,000 posts of 1.5 MB to JSON: peak RSS 535-602 MB, 354-388 MB with this,
    at 10-20% more time: each value is mapped and unmapped on each of its copies).
    Not set from the start: on ordinary archives it costs 2 s of system time per 1M
    posts to JSON (pages' buffers of 1-16 MB mapped afresh each time)."""
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ and "mmap_threshold" not in os.environ.get("GLIBC_TUNABLES", ""):
        _mallopt(-3, 2**20)  # M_MMAP_THRESHOLD


def _raise_file_limit() -> None:
    """The soft limit on open files raised to the hard one (at most 65,536): the sort keeps a
    file open per bucket (pipeline/tuning.py, ``_open_file_budget``), 776 of them for 10M posts,
    and the usual soft limit is 1,024 (256 on macOS). The library leaves the limit to its caller."""
    try:
        import resource
    except ImportError:  # not POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65_536 if hard == resource.RLIM_INFINITY else min(hard, 65_536)
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):  # e.g. macOS caps it lower: keep what there is
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


_tune_memory()
_raise_file_limit()

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Export a Bluesky archive (SQLite) to CSV, JSON, NDJSON and Parquet.",
)
run_app = typer.Typer(no_args_is_help=True, help="Run a pipeline job.")
app.add_typer(run_app, name="run")


class Format(StrEnum):
    csv = "csv"
    json = "json"
    ndjson = "ndjson"
    parquet = "parquet"


class Codec(StrEnum):
    gzip = "gzip"
    zstd = "zstd"


class LogFormat(StrEnum):
    text = "text"
    json = "json"


class _Signals:
    """SIGINT, SIGTERM and SIGHUP stop the export (exit 130, 143, 129) until it is published;
    from the swap on they are ignored: a published export is reported as one."""

    def __init__(self) -> None:
        self.published = threading.Event()

    def install(self) -> None:
        for name in ("SIGINT", "SIGTERM", "SIGHUP"):
            signal.signal(getattr(signal, name), self._stop)

    def _stop(self, signum: int, frame: object) -> None:
        if self.published.is_set():
            return
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        from pipeline.errors import Interrupted

        raise Interrupted(signum)

    def tuning(self, tuning):
        """``tuning`` with a hook that notes the publish."""
        from dataclasses import replace

        return replace(tuning, on_published=self.published.set)


@run_app.command("export")
def export_command(
    archive: Annotated[Path, typer.Argument(help="The archive: a SQLite file.", show_default=False)],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Output folder. [default: a new folder under ./exports/]", show_default=False),
    ] = None,  # noqa: UP045
    formats: Annotated[
        list[Format] | None,
        typer.Option(
            "--format",
            "-f",
            help="Output format: csv, json, ndjson or parquet (typed columns, zstd); repeat for several."
            " [default: csv, json]",
            show_default=False,
        ),
    ] = None,  # noqa: UP045
    types: Annotated[
        list[str] | None,
        typer.Option(
            "--types",
            "-t",
            help="Record types, comma-separated: posts, likes, follows. [default: every type the archive has]",
            show_default=False,
        ),
    ] = None,  # noqa: UP045
    ops: Annotated[
        bool, typer.Option("--ops", help="Also export the ops table, as ops/<type>.<action>.<ext>, in seq order.")
    ] = False,
    include_media: Annotated[
        bool,
        typer.Option("--include-media", help="Also copy the exported posts' media files into media/<hash>.<ext>."),
    ] = False,
    media_root: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--media-root",
            help="Folder the media table's relative file paths start at."
            " [default: the folder holding the archive's data/ folder (bskyarchive's layout), or the archive's folder]",
            show_default=False,
        ),
    ] = None,
    jobs: Annotated[
        int | None,
        typer.Option(
            "--jobs",
            "-j",
            min=1,
            help="Streams (record types, ops, media) exported at once."
            " [default: half the CPU cores, at least 1, at most the streams]",
            show_default=False,
        ),
    ] = None,  # noqa: UP045
    did: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Only records of this DID (exact match); 'self': the archive owner's (from profiles)."),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Only records created at or after this date/time (UTC unless an offset is given)."),
    ] = None,  # noqa: UP045
    until: Annotated[
        str | None,
        typer.Option(help="Only records created at or before this; a bare date means the end of that day."),
    ] = None,  # noqa: UP045
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Rows per Arrow record batch.")] = 1000,
    batch_bytes: Annotated[
        str,
        typer.Option(
            "--batch-bytes",
            help="The most one batch of rows holds, however large its rows (K, M, G: binary units; at least 1M).",
        ),
    ] = "64M",
    retries: Annotated[
        int,
        typer.Option(
            "--retries", min=0, help="Retries (backoff from 0.1 s, doubling) while the archive is locked or busy."
        ),
    ] = 5,
    skip_unchanged: Annotated[
        bool,
        typer.Option(
            "--skip-unchanged",
            help="Do nothing if OUT already holds this export: same archive (path, size, time) and options.",
        ),
    ] = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the export into OUT that a killed run left (its staging folder and checkpoints), "
            "with the same options; the files come out as an uninterrupted run's. Without one, export anew.",
        ),
    ] = False,
    max_rejects: Annotated[
        int | None,
        typer.Option(
            "--max-rejects",
            min=0,
            help="Fail, publishing nothing, once more values than this are rejected. [default: no limit]",
            show_default=False,
        ),
    ] = None,  # noqa: UP045
    compress: Annotated[
        Codec | None,
        typer.Option(
            "--compress",
            help="Compress the CSV, JSON and NDJSON files while writing them: posts.csv.gz, posts.ndjson.zst.",
            show_default=False,
        ),
    ] = None,  # noqa: UP045
    compress_level: Annotated[
        int | None,
        typer.Option(
            "--compress-level",
            help="Compression level: gzip 1-9 (default 6), zstd 1-19 (default 3).",
            show_default=False,
        ),
    ] = None,  # noqa: UP045
    split_rows: Annotated[
        int | None,
        typer.Option(
            "--split-rows",
            help="Cut each file into numbered parts of at most N records (posts-00001.csv, ...); "
            "1000000 keeps a CSV part within a spreadsheet's 1,048,576 rows.",
            show_default=False,
        ),
    ] = None,  # noqa: UP045
    split_bytes: Annotated[
        str | None,
        typer.Option(
            "--split-bytes",
            help="Cut each file into numbered parts of at most SIZE bytes before compression (K, M, G; at least 1K); "
            "a record larger than that gets a part of its own.",
            show_default=False,
        ),
    ] = None,  # noqa: UP045
    csv_safe: Annotated[
        bool,
        typer.Option(
            "--csv-safe",
            help="Put ' before CSV text cells that start with = + - @, tab or CR, so spreadsheets show them as text "
            "instead of running them as formulas (the cells changed are counted). Default: values exactly as stored.",
        ),
    ] = False,
    metrics_file: Annotated[
        Path | None,
        typer.Option(
            "--metrics-file",
            help="Also write the run's metrics (per stream: records, batches, bytes, seconds, rows/s, retries, "
            "rejects; peak memory) to this file in Prometheus' text format, after success or failure.",
            show_default=False,
        ),
    ] = None,  # noqa: UP045
    log_format: Annotated[
        LogFormat,
        typer.Option(
            "--log-format",
            help="text: progress and one-line messages; json: one JSON event per line on stderr (run_start, "
            "stream_phase, progress at least every 5 s, retry, run_end).",
        ),
    ] = LogFormat.text,
    memray_file: Annotated[
        Path | None,
        typer.Option(
            "--memray",
            help="Record a memray capture of the run into this new file (see `memray flamegraph FILE`).",
            show_default=False,
        ),
    ] = None,  # noqa: UP045
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an error.")] = False,
) -> None:
    """Export an archive's posts, likes and follows to CSV, JSON, NDJSON and/or Parquet, in bounded memory.

    Files are written to a staging folder and published into OUT only when all
    are complete, with a manifest.json (counts, sizes, SHA-256).

    Exit codes: 0 done, 1 export failed, 2 usage error, 3 bad archive,
    4 output not writable, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM),
    129 hung up (SIGHUP).

    Example:

        pipeline run export archive.db -o exports/mine -f csv -f ndjson --types posts,likes --since 2024-01-01

        pipeline run export archive.db -o exports/typed -f parquet --ops
        pipeline run export archive.db -o exports/sheets -f csv --split-rows 1000000 --csv-safe --compress gzip
    """
    from dataclasses import replace

    from pipeline import PipelineError, Tuning, export
    from pipeline.progress import JsonLog, JsonProgress, for_terminal, interval_from_env
    from pipeline.startup import skip_pandas_probe

    if _OWN_PROCESS:  # not inside a caller's process (a test's CliRunner), whose pyarrow may meet pandas
        skip_pandas_probe()  # this process hands pyarrow no pandas objects: 0.27 s saved where pandas is installed
    signals = _Signals()
    tuning = signals.tuning(replace(Tuning.from_env(), on_huge_rows=_huge_rows))

    log = JsonLog() if log_format == LogFormat.json else None
    try:  # before anything could write it
        _check_metrics_file(metrics_file, archive, out)
    except PipelineError as e:
        _Reporter(log).failed(str(e), e.exit_code, f"pipeline: error: {e}")
        raise typer.Exit(e.exit_code) from None
    say = _Reporter(log, metrics_file)
    _log_to_stderr(log)
    signals.install()  # SIGHUP: the terminal went away
    started = time.monotonic()
    chosen = [f.value for f in formats] if formats else ["csv", "json"]
    say.event("run_start", archive=str(archive), out=str(out) if out else None, formats=chosen, argv=sys.argv[1:])
    if log is None:
        progress = for_terminal(quiet)
    else:
        interval = interval_from_env()
        progress = JsonProgress(log, interval) if not quiet else None
    try:
        keywords = _export_keywords(  # sizes read before --memray creates its file
            dict(
                formats=formats,
                types=types,
                ops=ops,
                include_media=include_media,
                media_root=media_root,
                jobs=jobs,
                did=did,
                since=since,
                until=until,
                batch_size=batch_size,
                batch_bytes=batch_bytes,
                max_rejects=max_rejects,
                retries=retries,
                skip_unchanged=skip_unchanged,
                resume=resume,
                compress=compress,
                compress_level=compress_level,
                split_rows=split_rows,
                split_bytes=split_bytes,
                csv_safe=csv_safe,
            )  # fmt: skip
        )
        with _profiled(memray_file):
            result = export(archive, out, **keywords, progress=progress, tuning=tuning)
    except KeyboardInterrupt:
        if debug:
            raise
        say.failed("interrupted; nothing was published", 130, "pipeline: interrupted; nothing was published")
        raise typer.Exit(130) from None
    except PipelineError as e:
        if debug:
            raise
        say.failed(str(e), e.exit_code, f"pipeline: error: {e}")
        raise typer.Exit(e.exit_code) from None
    except (SystemExit, GeneratorExit):
        raise
    except BaseException as e:  # Exception, and what a native library raises outside it (a Rust panic)
        if debug:
            raise
        message = f"unexpected error: {type(e).__name__}: {e}"
        say.failed(message, 1, f"pipeline: {message} (run with --debug for details)")
        raise typer.Exit(1) from None
    # Published: a signal from now on cannot change that, so it is ignored while the process ends,
    # and a summary that cannot be written (stderr closed, a broken pipe) does not fail the run.
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    with contextlib.suppress(OSError, ValueError):
        say.done(result, time.monotonic() - started, include_media)


class Executor(StrEnum):
    local = "local"
    ray = "ray"


# The options of `export` that export-many applies to every archive; it takes them from
# export_command's signature, so a new per-archive option of `export` is one here too.
_PER_RUN = {"archive", "out", "metrics_file", "memray_file", "log_format", "quiet", "debug"}


def _with_export_options(command):
    """``command`` with the per-archive parameters of ``export_command`` appended (Typer reads
    the signature and the annotations); they arrive in ``**export_options``."""
    import inspect

    own = inspect.signature(command, eval_str=True)
    theirs = inspect.signature(export_command, eval_str=True)
    shared = [p for name, p in theirs.parameters.items() if name not in _PER_RUN]
    params = [p for p in own.parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD]
    command.__signature__ = own.replace(parameters=params + [p.replace(kind=p.KEYWORD_ONLY) for p in shared])
    command.__annotations__ = {p.name: p.annotation for p in command.__signature__.parameters.values()}
    return command


def _export_keywords(export_options: dict[str, object]) -> dict[str, object]:
    """The library keywords of ``export``'s CLI values: ``export`` and ``export-many`` both call
    this, so an option converted here reaches both (formats, sizes, the codec)."""
    kw = dict(export_options)
    formats = kw.pop("formats", None)
    kw["formats"] = [f.value for f in formats] if formats else ["csv", "json"]  # type: ignore[attr-defined]
    kw["batch_bytes"] = _size(str(kw["batch_bytes"]), "--batch-bytes")
    if kw.get("split_bytes") is not None:
        kw["split_bytes"] = _size(str(kw["split_bytes"]), "--split-bytes")
    if kw.get("compress") is not None:
        kw["compress"] = kw["compress"].value  # type: ignore[attr-defined]
    return kw


@_with_export_options
def export_many_command(
    archives: Annotated[
        Optional[list[Path]],  # noqa: UP045
        typer.Argument(
            help="Archive files, or folders searched (recursively) for *.db; literal paths, never patterns.",
            show_default=False,
        ),
    ] = None,
    out_root: Annotated[
        Path,
        typer.Option("--out-root", help="Each archive is exported into OUT_ROOT/<name>/; runs.json lands here."),
    ] = Path("exports"),
    globs: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            "--glob", help="Archives matching this pattern (** spans folders); repeatable.", show_default=False
        ),
    ] = None,
    lists: Annotated[
        Optional[list[Path]],  # noqa: UP045
        typer.Option("--from-file", help="A text file naming one archive per line; repeatable.", show_default=False),
    ] = None,
    executor: Annotated[
        Executor, typer.Option("--executor", help="local: a process pool; ray: one Ray task per archive.")
    ] = Executor.local,
    workers: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            "--workers",
            "-w",
            min=1,
            help="Worker processes (local), or CPUs of the local Ray instance. [default: CPU cores]",
            show_default=False,
        ),
    ] = None,
    ray_address: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--ray-address",
            help="Connect to this Ray cluster (e.g. auto, or HOST:6379) instead of starting a local instance.",
            show_default=False,
        ),
    ] = None,
    max_retries: Annotated[
        int,
        typer.Option("--max-retries", min=0, help="Runs again of an archive whose worker died (killed, node lost)."),
    ] = 2,
    log_format: Annotated[
        LogFormat,
        typer.Option(
            "--log-format",
            help="text: progress and one-line messages; json: one JSON event per line on stderr (run_start, "
            "archive_end, retry, progress at least every 5 s, run_end).",
        ),
    ] = LogFormat.text,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an error.")] = False,
    **export_options,
) -> None:
    """Export many archives, each into OUT_ROOT/<name>/ exactly as `pipeline run export` would.

    Every per-archive option of `export` applies to each archive. <name> is the
    archive's file name without its extension; where two archives share one
    (bskyarchive's are all archive.db), it is followed by 8 hex digits of a hash
    of its path. A task whose worker died is retried (--max-retries); an archive
    the export fails on is reported, not retried, and the others go on.
    OUT_ROOT/runs.json gets one JSON line per archive (status, exit code,
    records, bytes, seconds, peak RSS, attempts, error).

    Exit codes: 0 every archive published (or unchanged), 1 some failed (listed
    one per line), 2 usage error, 4 OUT_ROOT not writable, 130 interrupted.

    Example:

        pipeline run export-many ~/archives --out-root exports/all -f csv --types posts --skip-unchanged
    """
    from dataclasses import replace

    from pipeline import PipelineError, Tuning
    from pipeline.many import export_many
    from pipeline.progress import JsonLog, for_fleet

    log = JsonLog() if log_format == LogFormat.json else None
    say = _Reporter(log)
    say.event("run_start", out_root=str(out_root), executor=executor.value, argv=sys.argv[1:])
    try:
        result = export_many(
            archives or [],
            out_root,
            globs=globs or [],
            lists=lists or [],
            executor=executor.value,
            workers=workers,
            ray_address=ray_address,
            max_retries=max_retries,
            progress=for_fleet(quiet, log),
            tuning=replace(Tuning.from_env(), on_huge_rows=_huge_rows),
            setup=_tune_memory,
            **_export_keywords(export_options),
        )
    except KeyboardInterrupt:
        if debug:
            raise
        say.failed("interrupted", 130, "pipeline: interrupted")
        raise typer.Exit(130) from None
    except PipelineError as e:
        if debug:
            raise
        say.failed(str(e), e.exit_code, f"pipeline: error: {e}")
        raise typer.Exit(e.exit_code) from None
    published = sum(r.status == "published" for r in result.runs)
    unchanged = sum(r.status == "unchanged" for r in result.runs)
    if log is not None:
        log.emit("run_end", status="failed" if result.failed else "published", exit_code=result.exit_code,
                 archives=len(result.runs), published=published, unchanged=unchanged, failed=len(result.failed),
                 seconds=result.seconds)  # fmt: skip
    else:
        for r in result.failed:
            typer.echo(f"pipeline: failed: {r.archive}: exit {r.exit_code}: {r.error}", err=True)
        typer.echo(
            f"{len(result.runs):,} archive(s) in {result.seconds:.2f}s: {published:,} published, {unchanged:,}"
            f" unchanged, {len(result.failed):,} failed; {result.out_root / 'runs.json'}",
            err=True,
        )
    raise typer.Exit(result.exit_code)


run_app.command("export-many")(export_many_command)


@app.command("clean")
def clean_command(
    out: Annotated[Path, typer.Argument(help="The output folder whose killed runs' leftovers to remove.")],
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an error.")] = False,
) -> None:
    """Remove what killed exports into OUT left beside it.

    That is staging folders (.OUT.staging-<pid>) and earlier exports set aside
    while publishing (put back as OUT if OUT is missing). Folders of runs still
    running are left alone. One line per folder; exit 0, or 4 if one cannot be
    removed.
    """
    from pipeline.publish import clean

    try:
        messages, ok = clean(out)
    except OSError as e:
        if debug:
            raise
        typer.echo(f"pipeline: error: cannot clean beside {out}: {e.strerror or e}", err=True)
        raise typer.Exit(4) from None
    for message in messages:
        typer.echo(message if ok or not message.startswith("could not") else f"pipeline: error: {message}", err=True)
    if not messages:
        typer.echo(f"nothing to clean beside {out}", err=True)
    if not ok:
        raise typer.Exit(4)


class _Reporter:
    """What the command tells the user on stderr: lines (``--log-format text``) or JSON events;
    and the ``--metrics-file``."""

    def __init__(self, log, metrics_file: Path | None = None):
        self._log = log
        self._metrics_file = metrics_file
        self._started = time.monotonic()

    def _metrics(self, metrics: dict[str, object], success: bool) -> None:
        if self._metrics_file is None:
            return
        from pipeline.metrics import prometheus_text, write_metrics_file

        text = prometheus_text(metrics, success=success, run_seconds=round(time.monotonic() - self._started, 3))
        try:
            write_metrics_file(self._metrics_file, text)
        except OSError as e:
            line = f"cannot write --metrics-file {self._metrics_file}: {e.strerror or e}"
            if self._log is not None:
                self._log.emit("warning", message=line)
            else:
                typer.echo(f"pipeline: warning: {line}", err=True)

    def event(self, event: str, **fields: object) -> None:
        if self._log is not None:
            self._log.emit(event, **fields)

    def failed(self, message: str, code: int, line: str) -> None:
        self._metrics({}, success=False)
        if self._log is not None:
            self._log.emit("run_end", status="failed", exit_code=code, error=message)
        else:
            typer.echo(line, err=True)

    def done(self, result, elapsed: float, include_media: bool) -> None:
        self._metrics(result.metrics, success=True)
        if self._log is not None:
            for notice in result.notices:
                self._log.emit("notice", message=notice)
            for warning in result.warnings:
                self._log.emit("warning", message=warning)
            self._log.emit(
                "run_end",
                status="unchanged" if result.skipped else "published",
                exit_code=0,
                out=str(result.out),
                records=result.records,
                rejects=result.rejects,
                files=[{"path": f.path, "records": f.records, "bytes": f.size_bytes} for f in result.files],
                csv_safe_cells=_csv_safe_cells(result),
                bytes=sum(f.size_bytes for f in result.files),
                media=result.media,
                posts_by_others=result.posts_by_others,
                seconds=round(elapsed, 3),
            )
            return
        if result.skipped:
            for warning in result.warnings:
                typer.echo(f"pipeline: warning: {warning}", err=True)
            fp = str(result.manifest.get("fingerprint", {}).get("sha256", ""))[:12]
            typer.echo(
                f"Unchanged: {result.out} already holds this export (archive and options as before, fingerprint {fp});"
                " nothing was written",
                err=True,
            )
            return
        for notice in result.notices:
            typer.echo(f"pipeline: note: {notice}", err=True)
        for warning in result.warnings:
            typer.echo(f"pipeline: warning: {warning}", err=True)
        total = sum(result.records.values())
        per_type = ", ".join(f"{n:,} {name}" for name, n in result.records.items())
        files = ", ".join(f.path for f in result.files) if len(result.files) <= 6 else f"{len(result.files)} files"
        rejects = f", {result.rejects:,} rejected value(s) in rejects.ndjson" if result.rejects else ""
        cells = _csv_safe_cells(result)
        if cells is not None:
            rejects += f", {cells:,} CSV cell(s) prefixed with ' (--csv-safe)"
        if include_media:
            rejects += f", {result.media:,} media file(s) copied"
            if result.media_missing or result.media_refused:
                rejects += (
                    f" ({result.media_missing:,} missing, {result.media_refused:,} refused: listed in manifest.json)"
                )
        others = ""
        if result.posts_by_others:
            others = (
                f"; {result.posts_by_others:,} of the posts are by other accounts (reposts): --did self leaves them out"
            )
        typer.echo(
            f"Exported {total:,} records ({per_type}) to {result.out} ({files}) in {elapsed:.2f}s{rejects}{others}",
            err=True,
        )


def _csv_safe_cells(result) -> int | None:
    """The CSV cells ``--csv-safe`` prefixed (None without it)."""
    counts = [f.csv_safe_cells for f in result.files if f.csv_safe_cells is not None]
    return sum(counts) if counts else None


def _log_to_stderr(log=None) -> None:
    """The library's log (retries of a locked archive) as ``pipeline: warning:`` lines, or
    as JSON events (``retry`` for a retry, ``log`` otherwise) with ``--log-format json``."""
    import logging

    if log is None:

        class _Lines(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                # sys.stderr as it is now: the progress bar redirects it to print above itself
                print(f"pipeline: {record.levelname.lower()}: {record.getMessage()}", file=sys.stderr, flush=True)

        handler = _Lines()
    else:

        class _Events(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                message = record.getMessage()
                event = getattr(record, "event", "log")  # the library marks retries
                log.emit(event, level=record.levelname.lower(), message=message)

        handler = _Events()
    logger = logging.getLogger("pipeline")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _size(text: str, option: str) -> int:
    """A byte count: an integer, optionally with K, M or G (binary units: 64M = 64 MiB)."""
    from pipeline import UsageError

    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(value[-1:], 1)
    number = value[:-1] if scale > 1 else value
    if not (number.isascii() and number.isdecimal()):
        raise UsageError(f"{option}: cannot read {text!r} as a size (e.g. 64M, 1G, 67108864)")
    size = int(number) * scale
    if size > 2**40:
        raise UsageError(f"{option}: {text!r} is more than 1T")
    return size


@contextlib.contextmanager
def _profiled(path: Path | None):
    """A memray Tracker around the run when ``--memray FILE`` is given (native stacks too:
    Arrow and Polars allocate in C++ and Rust)."""
    if path is None:
        yield
        return
    from pipeline import UsageError

    try:
        import memray
    except ImportError:
        raise UsageError("--memray needs the memray package (pip install memray; Linux and macOS)") from None
    if path.exists():
        raise UsageError(f"--memray: {path} exists; give a new file name")
    try:
        tracker = memray.Tracker(path, native_traces=True)
        tracker.__enter__()
    except (OSError, RuntimeError) as e:  # an unwritable folder; another Tracker already active
        raise UsageError(f"--memray: cannot record into {path}: {e}") from None
    try:
        yield
    finally:
        tracker.__exit__(None, None, None)


def _check_metrics_file(path: Path | None, archive: Path, out: Path | None) -> None:
    """UsageError if ``--metrics-file`` would overwrite an input (the archive, its journal or
    log) or land in the folder the export replaces."""
    from pipeline import UsageError
    from pipeline.publish import inside

    if path is None:
        return
    real = Path(os.path.realpath(path))
    inputs = [Path(os.path.realpath(archive))]
    inputs += [inputs[0].with_name(inputs[0].name + s) for s in ("-wal", "-journal", "-shm")]
    if real in inputs:
        raise UsageError(f"--metrics-file {path} is the archive (or its journal): choose another file")
    if out is not None and inside(real, out):
        raise UsageError(f"--metrics-file {path} is inside --out, which the export replaces: choose another file")


_OWN_PROCESS = False  # set by main(): the command is the process (its console script or ``python cli.py``)


def main() -> None:
    global _OWN_PROCESS
    _OWN_PROCESS = True
    for name in ("stdout", "stderr"):  # closed by the caller (2>&-): messages go nowhere, the export still runs
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115 - lives as long as the process
    app(prog_name="pipeline")


if __name__ == "__main__":
    sys.exit(main())
