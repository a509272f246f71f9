"""Many archives on a process pool or Ray, one driver loop: ``export_many``.

Each archive is one task that runs the single export (``run.run``) into
``OUT_ROOT/<name>/``, so its files are exactly what ``pipeline run export``
writes. The executors are ``concurrent.futures`` executors (a
``ProcessPoolExecutor``; Ray's ObjectRefs as futures), and one loop submits,
collects, retries the tasks whose worker died, and records one line per archive
in ``runs.json``. A failure the export reports (a bad archive, an unusable
option) is the archive's outcome, not retried.
"""

from __future__ import annotations

import glob as globbing
import hashlib
import json
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .errors import OutputError, PipelineError, UsageError
from .options import ExportOptions, parse_types, path_text, unicode_text
from .progress import FleetProgress
from .publish import inside
from .tuning import Tuning

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

RUNS = "runs.json"  # in OUT_ROOT: one JSON object per line, one line per archive, in input order
EXECUTORS = ("local", "ray")
MAX_RETRIES = 2
# What one export task declares to Ray: the export's memory ceiling (docs/decisions.md, "Memory";
# tests/test_memory.py holds a 200,000-post export under it) and one CPU (a small archive's
# export is mostly one thread: start-up, the key pass, the writes).
EXPORT_MEMORY = 500 * 2**20
EXPORT_CPUS = 1


@dataclass(frozen=True)
class ArchiveRun:
    """One archive's outcome: a line of ``runs.json``. ``status``: published, unchanged
    (``--skip-unchanged`` found it done) or failed; ``exit_code`` as ``pipeline run export``
    would exit; ``peak_rss_bytes``: the worker's peak resident set during this archive."""

    archive: str
    out: str
    status: str
    exit_code: int
    records: int = 0
    bytes: int = 0
    seconds: float = 0.0
    peak_rss_bytes: int | None = None
    attempts: int = 1
    error: str | None = None
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # an error names the archive, whose path may hold bytes that are not UTF-8: runs.json is UTF-8
        if self.error is not None:
            object.__setattr__(self, "error", unicode_text(self.error))
        object.__setattr__(self, "warnings", [unicode_text(w) for w in self.warnings])

    @property
    def ok(self) -> bool:
        return self.status != "failed"


@dataclass(frozen=True)
class ManyResult:
    """What ``export_many`` did: one ``ArchiveRun`` per archive, in input order."""

    out_root: Path
    runs: list[ArchiveRun]
    seconds: float

    @property
    def failed(self) -> list[ArchiveRun]:
        return [r for r in self.runs if not r.ok]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


@dataclass(frozen=True)
class Job:
    """One archive's task, as sent to a worker: its export options (``archive`` and ``out``
    set), the tuning, the worker set-up hook, and which attempt this is (from 1)."""

    index: int
    options: ExportOptions
    tuning: Tuning
    setup: Callable[[], None] | None = None
    attempt: int = 1

    def failed(self, error: str, exit_code: int = 1) -> ArchiveRun:
        return ArchiveRun(_text(self.options.archive), _text(self.options.out), "failed", exit_code, error=error)


def export_many(
    archives: Sequence[str | os.PathLike[str]] = (),
    out_root: str | os.PathLike[str] = "exports",
    *,
    globs: Sequence[str] = (),
    lists: Sequence[str | os.PathLike[str]] = (),
    executor: str = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    max_retries: int = MAX_RETRIES,
    progress: FleetProgress | None = None,
    tuning: Tuning | None = None,
    setup: Callable[[], None] | None = None,
    **export_options: object,
) -> ManyResult:
    """Export each archive into ``out_root/<name>/`` as ``pipeline.export`` would; write ``runs.json``.

    ``archives``: archive files, or folders searched (recursively, hidden entries
    skipped) for ``*.db``; taken literally, never as patterns. ``globs``: patterns
    (``**`` spans folders). ``lists``: text files naming one archive per line.
    ``executor``: ``local`` (a process pool of ``workers``, default the CPU count)
    or ``ray`` (one Ray task per archive; ``ray_address`` an existing cluster,
    else a local instance of ``workers`` CPUs). A task whose worker died is run
    again, up to ``max_retries`` times; an archive the export fails on is not.
    ``setup`` runs in each worker before anything else (the CLI's allocator
    settings). ``export_options``: any keyword of ``pipeline.export`` but
    ``out``, ``progress`` and ``tuning``, applied to every archive.

    Raises UsageError (bad options or inputs) or OutputError before any export;
    after that, failures are in the result (``exit_code`` 1), not raised.
    """
    started = time.monotonic()
    if executor not in EXECUTORS:
        raise UsageError(f"unknown executor {executor!r}; choose from {', '.join(EXECUTORS)}")
    if max_retries < 0:
        raise UsageError(f"--max-retries must be 0 or more, not {max_retries}")
    if ray_address is not None and executor != "ray":
        raise UsageError("--ray-address is for --executor ray")
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be at least 1, not {workers}")
    template = _template(export_options)
    root = Path(out_root)
    found = find_archives(archives, globs, lists, root)
    _guard(found, root, template)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create --out-root {root}: {e.strerror or e}") from None
    if not root.is_dir():
        raise OutputError(f"--out-root {root} exists and is not a folder")
    tuning = tuning or Tuning()
    jobs = [
        Job(i, replace(template, archive=path, out=root / name), tuning, setup)
        for i, (path, name) in enumerate(zip(found, out_names(found), strict=True))
    ]
    progress = progress or FleetProgress()
    workers = workers or os.cpu_count() or 1
    pool: Executor = _local(workers, setup) if executor == "local" else _ray(workers, ray_address)
    progress.start(len(jobs))
    try:
        runs = drive(jobs, pool, max_retries, progress)
    finally:
        pool.shutdown()
        progress.stop()
    write_runs(root, runs)
    return ManyResult(root, runs, round(time.monotonic() - started, 3))


def _template(keywords: dict[str, object]) -> ExportOptions:
    """The export options every archive shares, validated once (UsageError), as ``export`` builds them."""
    for name in ("archive", "out", "progress", "tuning"):
        if name in keywords:
            raise UsageError(f"export_many sets {name!r} per archive; it is not an option of all of them")
    kw = dict(keywords)
    if "formats" in kw:
        kw["formats"] = tuple(dict.fromkeys(kw["formats"]))  # type: ignore[call-overload]
    if "types" in kw:
        kw["types"] = parse_types(kw["types"])  # type: ignore[arg-type]
    if kw.get("media_root") is not None:
        kw["media_root"] = Path(kw["media_root"])  # type: ignore[arg-type]
    try:
        return ExportOptions(Path("."), None, **kw)  # type: ignore[arg-type]
    except TypeError as e:
        raise UsageError(f"export_many: {e}") from None


# -- inputs ----------------------------------------------------------------------


def find_archives(
    paths: Iterable[str | os.PathLike[str]],
    globs: Iterable[str] = (),
    lists: Iterable[str | os.PathLike[str]] = (),
    out_root: Path | None = None,
) -> list[Path]:
    """The archives to export, each once (by its real path), in the order given.

    A path is a file (an archive) or a folder, searched recursively for ``*.db``
    in name order, skipping hidden files and folders (a staging folder's snapshot
    is one) and ``out_root``. A glob is expanded (``**`` spans folders) and must
    match something. A list file holds one path per line (bytes that are not
    UTF-8 allowed; blank lines skipped; relative to the current folder).
    """
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += _search(p, out_root)
        elif p.exists():
            found.append(p)
        else:
            raise UsageError(f"{p}: no such archive or folder")
    for pattern in globs:
        matches = sorted(Path(m) for m in globbing.glob(pattern, recursive=True) if os.path.isfile(m))
        if not matches:
            raise UsageError(f"--glob {pattern!r} matches no file")
        found += matches
    for listing in map(Path, lists):
        try:
            lines = listing.read_bytes().split(b"\n")
        except OSError as e:
            raise UsageError(f"--from-file {listing}: {e.strerror or e}") from None
        found += [Path(os.fsdecode(line.removesuffix(b"\r"))) for line in lines if line.strip()]
    unique: dict[str, Path] = {}
    for p in found:
        unique.setdefault(os.path.realpath(p), p)
    if not unique:
        raise UsageError("no archives to export (a folder holds no *.db file?)")
    return list(unique.values())


def _search(folder: Path, out_root: Path | None) -> list[Path]:
    found = []
    for parent, dirs, files in os.walk(folder):
        here = Path(parent)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not _same(here / d, out_root))
        found += [here / f for f in sorted(files) if f.endswith(".db") and not f.startswith(".")]
    return found


def _same(path: Path, other: Path | None) -> bool:
    return other is not None and os.path.realpath(path) == os.path.realpath(other)


def out_names(archives: Sequence[Path]) -> list[str]:
    """Each archive's folder name in OUT_ROOT: its file name without the extension; where two
    archives share one (bskyarchive's are all ``archive.db``), or it is hidden or ``runs.json``,
    followed by ``-`` and 8 hex digits of the SHA-256 of its real path: stable across runs."""
    stems = Counter(a.stem for a in archives)
    names = []
    for a in archives:
        name = a.stem.lstrip(".")  # a hidden archive's folder is not hidden
        if stems[a.stem] > 1 or not name or name != a.stem or name == RUNS:
            digest = hashlib.sha256(os.fsencode(os.path.realpath(a))).hexdigest()[:8]
            name = f"{name or 'archive'}-{digest}"
        names.append(name)
    clashes = [n for n, k in Counter(names).items() if k > 1]
    if clashes:  # a stem that looks like another's stem and hash
        raise UsageError(f"two archives would share the folder {clashes[0]!r}; rename one")
    return names


def _guard(archives: Sequence[Path], root: Path, template: ExportOptions) -> None:
    """UsageError if an input lies inside OUT_ROOT (publishing a folder there would remove it)."""
    for a in archives:
        if inside(a, root):
            raise UsageError(f"archive {a} is inside --out-root {root}; choose an output root outside the archives")
    if template.include_media and template.media_root is not None and inside(template.media_root, root):
        raise UsageError(f"--media-root {template.media_root} is inside --out-root {root}")


# -- the driver loop -------------------------------------------------------------


class Executor(Protocol):
    """What the driver loop needs of an executor: futures, and which failures mean the task died."""

    capacity: int  # tasks in flight at once

    def submit(self, job: Job) -> Future[ArchiveRun]: ...

    def died(self, error: BaseException) -> bool: ...

    def recover(self, future: Future[ArchiveRun]) -> None: ...

    def shutdown(self) -> None: ...


def drive(jobs: Sequence[Job], executor: Executor, max_retries: int, progress: FleetProgress) -> list[ArchiveRun]:
    """Run every job on ``executor``, ``capacity`` at a time; a job whose task died is queued
    again (first) until it has had ``1 + max_retries`` attempts. Outcomes in job order."""
    runs: list[ArchiveRun | None] = [None] * len(jobs)
    queue, running = deque(jobs), dict[Future[ArchiveRun], Job]()
    failed = 0
    while queue or running:
        while queue and len(running) < executor.capacity:
            job = queue.popleft()
            running[executor.submit(job)] = job
        finished, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in finished:
            job = running.pop(future)
            try:
                got = future.result()
            except Exception as e:  # the task did not return: its worker died, or it could not be sent
                if not executor.died(e):
                    got = job.failed(f"unexpected error: {type(e).__name__}: {e}")
                else:
                    executor.recover(future)
                    if job.attempt <= max_retries:
                        progress.retry(_text(job.options.archive), job.attempt, _first_line(e))
                        queue.appendleft(replace(job, attempt=job.attempt + 1))
                        continue
                    got = job.failed(f"the worker died on each of {job.attempt} attempt(s): {_first_line(e)}")
            got = replace(got, attempts=job.attempt)
            runs[job.index] = got
            failed += not got.ok
            progress.archive(got, sum(r is not None for r in runs), failed)
    return [r for r in runs if r is not None]


def write_runs(root: Path, runs: Sequence[ArchiveRun]) -> None:
    """``runs.json``: one line per archive, replaced whole (written beside it, then renamed)."""
    tmp = root / f".{RUNS}.{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for r in runs:
                f.write(json.dumps(asdict(r), ensure_ascii=False) + "\n")
        os.replace(tmp, root / RUNS)
    except (OSError, UnicodeError) as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {root / RUNS}: {getattr(e, 'strerror', None) or e}") from None


# -- the task --------------------------------------------------------------------


def run_one(job: Job) -> ArchiveRun:
    """One archive, in a worker: the single export, its failure as an outcome (never raised).

    A retry continues as ``--resume`` does: from the killed attempt's checkpoints, and
    if that attempt had published already, it finds the export there and does not
    publish it again.
    """
    from .progress import Progress
    from .run import run

    if job.setup is not None:
        job.setup()
    _reset_peak_rss()
    options = replace(job.options, resume=True) if job.attempt > 1 else job.options
    started = time.monotonic()
    messages = _Collected()
    logger = logging.getLogger("pipeline")
    saved = logger.handlers[:], logger.propagate
    logger.handlers[:], logger.propagate = [messages], False
    try:
        result = run(options, Progress(), job.tuning)
    except PipelineError as e:
        return replace(job.failed(str(e), e.exit_code), seconds=_since(started), warnings=messages.lines)
    except Exception as e:  # a bug: reported as the single export reports it
        return replace(job.failed(f"unexpected error: {type(e).__name__}: {e}"), warnings=messages.lines)
    finally:
        logger.handlers[:], logger.propagate = saved
    return ArchiveRun(
        archive=_text(options.archive),
        out=_text(options.out),
        status="unchanged" if result.skipped and options.skip_unchanged else "published",
        exit_code=0,
        records=sum(result.records.values()),
        bytes=sum(f.size_bytes for f in result.files),
        seconds=_since(started),
        peak_rss_bytes=_peak_rss(),
        warnings=messages.lines + result.notices + result.warnings,
    )


class _Collected(logging.Handler):
    """The library's log lines during one task (retries of a locked archive, resume notes)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _reset_peak_rss() -> None:
    """Start the kernel's peak-RSS count (VmHWM) afresh, so a reused worker reports this archive's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss() -> int | None:
    """VmHWM since the reset (Linux); elsewhere the process's peak so far."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    from .manifest import peak_rss

    return peak_rss()


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)


def _text(path: Path | None) -> str:
    return "" if path is None else path_text(path)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


# -- the local executor ----------------------------------------------------------


class LocalPool:
    """A ``ProcessPoolExecutor`` of ``workers`` reused processes, started by a fork server
    that has pyarrow and Polars imported (forking a process with Arrow's
    threads running is unsafe; spawning each worker pays the imports again). A killed
    worker breaks the whole pool: ``recover`` replaces it, once per breakage."""

    def __init__(self, workers: int, setup: Callable[[], None] | None = None):
        import multiprocessing  # here: `import pipeline` stays as quick as before

        self.capacity = workers
        self._setup = setup
        methods = multiprocessing.get_all_start_methods()
        self._context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        if self._context.get_start_method() == "forkserver":
            # Not the pipeline itself: Python 3.11's fork server imports its preloads from its own
            # sys.path, not the driver's, which could be another copy of the package.
            self._context.set_forkserver_preload(["pyarrow", "polars"])
        self._generation = 0
        self._born: dict[Future[ArchiveRun], int] = {}
        self._pool = self._new()

    def _new(self) -> ProcessPoolExecutor:
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(
            self.capacity, mp_context=self._context, initializer=_warm, initargs=(self._setup,)
        )  # fmt: skip

    def submit(self, job: Job) -> Future[ArchiveRun]:
        future = self._pool.submit(run_one, job)
        self._born[future] = self._generation
        return future

    def died(self, error: BaseException) -> bool:
        from concurrent.futures.process import BrokenProcessPool

        return isinstance(error, BrokenProcessPool)

    def recover(self, future: Future[ArchiveRun]) -> None:
        if self._born.pop(future, None) == self._generation:  # the first of this pool's failures
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._generation += 1
            self._pool = self._new()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _warm(setup: Callable[[], None] | None) -> None:
    """A worker's start: the set-up hook (allocator settings, before pyarrow loads where the
    worker was spawned), then the imports every export needs, paid once per worker."""
    if setup is not None:
        setup()
    import polars  # noqa: F401
    import pyarrow  # noqa: F401

    from . import run  # noqa: F401
    from .startup import skip_pandas_probe

    skip_pandas_probe()  # a worker of ours: it hands pyarrow no pandas objects


def _local(workers: int, setup: Callable[[], None] | None) -> Executor:
    return LocalPool(workers, setup)


def _ray(workers: int, address: str | None) -> Executor:
    from .ray import RayTasks

    return RayTasks(workers, address)
