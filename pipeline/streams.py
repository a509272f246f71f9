"""The streams of an export: records (posts, likes, follows), ops, and their parts.

A records stream converts each page while the archive is read, sorts what was
converted (``sort.BucketSorter``) and writes it in export order; the ops stream
writes its pages in ``seq`` order into one file per (type, action). Both check
the run's ``Budget`` (cancellation, ``--max-rejects``, converter threads) and save
checkpoints so that a killed run can be resumed. The runner (``run.py``)
schedules them; ``media.copy_media`` is the third kind.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import os
import queue
import shutil
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import polars as pl
import pyarrow as pa

from . import transforms
from .checkpoint import Checkpoints, Clock, killpoint
from .errors import Cancelled, ExportError, PipelineError
from .progress import Progress
from .records import COLLECTION_TYPES, OP_ACTIONS, OPS, RecordType
from .sinks import SINKS, FileResult, NdjsonSink, Sink
from .sort import NINST, NSUB
from .source import Archive, Filters, Position, Reads, RecordSource, key_range, range_metadata

log = logging.getLogger("pipeline")
PREFETCH = 1  # pages read ahead of the converters by a stream running alone
CONVERTERS = min(2, os.cpu_count() or 1)
WRITE_ROWS = 16_384
REJECTS = "rejects.ndjson"
T = TypeVar("T")


@dataclass(frozen=True)
class StreamResult:
    """What one record type's export wrote: data files, records, and its rejects (part file, count)."""

    files: list[FileResult]
    records: int
    rejects: tuple[Path, int] | None
    batches: int = 0  # pages read
    retries: int = 0  # retries of a locked archive


def write_records(*args: object, **kwargs: object) -> StreamResult:
    """``_records`` from the stream's checkpoint, or from the start if its files are not
    as the checkpoint says."""
    try:
        return _records(*args, **kwargs, resume=True)  # type: ignore[arg-type]
    except _StartOver:
        return _records(*args, **kwargs, resume=False)  # type: ignore[arg-type]


def _records(
    db: Archive,
    folder: Path,
    rtype: RecordType,
    formats: Sequence[str],
    filters: Filters,
    batch_size: int,
    batch_bytes: int,
    progress: Progress,
    budget: Budget,
    checkpoints: Checkpoints | None = None,
    resume: bool = False,
) -> StreamResult:
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
        remove_leftovers(folder, name, spill)
    else:  # what the killed run wrote after the checkpoint: written again from it
        (folder / f".{name}.{REJECTS}").unlink(missing_ok=True)
        if state["phase"] == "converting":
            remove_leftovers(folder, name)
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
        stream = StreamResult(results, source.total, rejects.close(), pages_read, source.retried)
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


def remove_leftovers(folder: Path, name: str, spill: Path | None = None) -> None:
    """What a killed run of stream ``name`` left in the staging folder: its files, its
    rejects' part file, its sort files."""
    for fmt in SINKS:
        (folder / f"{name}.{fmt}").unlink(missing_ok=True)
    (folder / f".{name}.{REJECTS}").unlink(missing_ok=True)
    if spill is not None and spill.exists():
        shutil.rmtree(spill)


def write_ops(
    db: Archive,
    folder: Path,
    formats: Sequence[str],
    filters: Filters,
    batch_size: int,
    batch_bytes: int,
    progress: Progress,
    budget: Budget,
    checkpoints: Checkpoints | None = None,
    resume: bool = True,
) -> StreamResult:
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
        remove_leftovers(folder, name, ops_dir)
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
            return write_ops(*args, resume=False)
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
        return StreamResult(results, source.total, rejects.close(), pages_read, source.retried)
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


class RejectCount:
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
class Budget:
    """What one stream may use while ``jobs`` streams share the machine: its sort buckets'
    size, the converter threads (one pool for all), and the flag that stops it when another
    stream fails."""

    bucket_bytes: int
    converters: ThreadPoolExecutor  # shared by all streams: a stream that ends leaves its share to the rest
    cancel: threading.Event
    prefetch: int = PREFETCH  # pages read ahead
    rejects: RejectCount = field(default_factory=lambda: RejectCount(None))

    def check(self) -> None:
        if self.cancel.is_set():
            raise Cancelled

    def rejected(self, n: int, record_type: str) -> None:
        """Count ``n`` more rejected values; ExportError once they pass ``--max-rejects``."""
        self.rejects.add(n, record_type)
