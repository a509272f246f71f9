"""``RecordStream``: one record type (posts, likes, follows) from the archive into its files.

Convert while reading, sort what was converted, then write it in export order.
The archive is read in table order by a reader thread while converter threads
convert each page (the conversion is row by row, so its place in the order does
not matter); the converted rows go to an external sort by (instant, key) and
come back bucket by bucket for the sinks.

With checkpoints, the stream records where it stands at most every
``Tuning.checkpoint_seconds``: while converting, the last page of a prefix of
pages all of whose rows are in the sort's files (and those files' sizes); while
writing, the next bucket and the output files' sizes. A resumed stream continues
from its checkpoint (see pipeline.checkpoint), or starts over if its files are
not as the checkpoint says. A Parquet file cannot be cut back to a size (its
footer comes last), so with Parquet among the formats no checkpoint is taken
while writing: the last one is taken once every page is sorted, and a resumed
stream writes all its files again from its sorted rows.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from . import transforms
from .convert import KEY, convert_all, page_range, prefetch, sort_key, write_chunk
from .errors import ExportError
from .parts import Output, open_output
from .progress import Phase, Progress
from .records import RecordType
from .rejects import REJECTS, RejectLog
from .sinks import resumable
from .sort import NINST, NSUB, RID, BucketSorter
from .source import Position, Reads, RecordSource
from .streams import Budget, StreamContext, StreamResult, Writes, log, remove_leftovers


class StartOver(Exception):  # noqa: N818 - control flow
    """A checkpoint's files are not as it says: the stream starts over."""


@dataclass(frozen=True)
class RecordsState:
    """A record stream's checkpoint: ``converting`` (pages read up to ``position``, their rows
    in the sort's files) or ``writing`` (buckets before ``next_bucket`` in the files ``sinks``:
    format → ``Output.position``)."""

    phase: str
    plan: list[int]
    position: Position
    unplaced_keys: list[str | None]
    unplaced_values: list[str | None]
    pages: int
    rejected: int
    rows: dict[str, Any]
    bad: dict[str, Any]
    next_bucket: int = 0
    sinks: dict[str, dict[str, Any]] | None = None

    def to_json(self) -> dict[str, object]:
        p = self.position
        data: dict[str, object] = {
            "phase": self.phase, "plan": self.plan, "position": [p.after, p.seen, p.unplaced],
            "unplaced_keys": self.unplaced_keys, "unplaced_values": self.unplaced_values, "pages": self.pages,
            "rejected": self.rejected, "rows": self.rows, "bad": self.bad, "next_bucket": self.next_bucket,
        }  # fmt: skip
        if self.sinks is not None:
            data["sinks"] = self.sinks
        return data

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RecordsState:
        """KeyError, TypeError or ValueError if ``d`` is not one."""
        if d["phase"] not in ("converting", "writing"):
            raise ValueError(f"not a records stream's phase: {d['phase']!r}")
        after, seen, unplaced = d["position"]
        sinks = {str(k): dict(v) for k, v in d["sinks"].items()} if "sinks" in d else None
        return cls(
            d["phase"], [int(b) for b in d["plan"]], Position(int(after), int(seen), int(unplaced)),
            list(d["unplaced_keys"]), list(d["unplaced_values"]), int(d["pages"]), int(d["rejected"]),
            dict(d["rows"]), dict(d["bad"]), int(d["next_bucket"]), sinks,
        )  # fmt: skip


class RecordStream(Writes):
    """One record type's export: ``run`` returns its ``StreamResult``; ``abort`` on failure."""

    def __init__(self, ctx: StreamContext, rtype: RecordType, progress: Progress, budget: Budget):
        self.ctx, self.rtype, self.progress, self.budget = ctx, rtype, progress, budget
        self.name = rtype.name
        self.formats = frozenset(ctx.formats)
        self.spill = ctx.folder / f".spill-{self.name}"  # this stream's sort files
        self.key = sort_key(rtype, self.formats)
        self.sinks: dict[str, Output] = {}
        self.resumable = all(resumable(f, ctx.files) for f in ctx.formats)  # files continued from a checkpoint
        self.rejects = RejectLog(ctx.folder, rtype)
        self.pages_read = self.rejected = 0
        self._pages: Generator[pa.Table, None, None] | None = None

    @classmethod
    def run_resumed(cls, ctx: StreamContext, rtype: RecordType, progress: Progress, budget: Budget) -> StreamResult:
        """From the stream's checkpoint, or from the start if its files are not as it says."""
        try:
            return cls(ctx, rtype, progress, budget).run(cls._saved(ctx, rtype.name))
        except StartOver:
            return cls(ctx, rtype, progress, budget).run(None)

    @staticmethod
    def _saved(ctx: StreamContext, name: str) -> RecordsState | None:
        saved = ctx.checkpoints.load(name) if ctx.checkpoints is not None else None
        try:
            return RecordsState.from_json(saved) if saved is not None else None
        except (KeyError, TypeError, ValueError):
            return None

    def run(self, state: RecordsState | None) -> StreamResult:
        source = self._start(state)
        try:
            rows_order, bad_order = [NINST, NSUB, self.key, RID], [NINST, NSUB, KEY, RID, "_col"]
            with source.sorter(rows_order) as rows, source.sorter(bad_order) as bad:
                if state is not None:
                    self._restore(state, source, rows, bad)
                if state is None or state.phase == "converting":
                    self._convert(source, rows, bad, state)
                    position, first_bucket = Position(0, source.total, len(source.unplaced.keys)), 0
                else:
                    source.total, position, first_bucket = state.position.seen, state.position, state.next_bucket
                self._write(source, rows, bad, position, first_bucket, state)
            self.budget.rejected(len(source.unplaced.keys), self.name)
            self.rejects.unplaced(source)
            results = []
            for fmt in self.ctx.formats:  # every row read is written exactly once, or the export fails
                files = self.sinks[fmt].close()
                if sum(f.records for f in files) != source.total:
                    raise ExportError(
                        f"{files[0].path} has {sum(f.records for f in files):,} records but {source.total:,} were "
                        "read: the export is not published (a bug; please report it)",
                        record_type=self.name,
                    )
                results += files
            stream = StreamResult(results, source.total, self.rejects.close(), self.pages_read, source.retried)
            self.spill.rmdir()
            return stream
        except BaseException:
            self.abort()
            raise
        finally:
            if self._pages is not None:
                self._pages.close()  # stops the reader thread before its connection closes
            self.progress.stop()
            source.close()

    def _start(self, state: RecordsState | None) -> RecordSource:
        """The source, after what a killed run left past its checkpoint is removed."""
        folder, name = self.ctx.folder, self.name
        if state is None:
            remove_leftovers(folder, name, self.spill)
        else:  # what the killed run wrote after the checkpoint: written again from it
            (folder / f".{name}.{REJECTS}").unlink(missing_ok=True)
            if state.phase == "converting":
                remove_leftovers(folder, name)
        self.spill.mkdir(exist_ok=True)
        c, tuning = self.ctx, self.budget.tuning
        reads = Reads(*transforms.reads(self.rtype, self.formats))
        source = c.db.read(
            self.rtype, c.filters, c.batch_size, self.spill, reads, bucket_bytes=tuning.bucket_bytes,
            batch_bytes=c.batch_bytes, tuning=tuning, open_files=self.budget.open_files,
        )  # fmt: skip
        if state is not None and state.plan != list(source.plan.bounds):
            source.close()
            raise StartOver  # not the plan the files were sorted by
        return source

    def _restore(self, state: RecordsState, source: RecordSource, rows: BucketSorter, bad: BucketSorter) -> None:
        try:
            rows.restore(state.rows)
            bad.restore(state.bad)
        except (OSError, ValueError, KeyError, TypeError):  # files gone or cut short: start over
            raise StartOver from None
        for entry in self.spill.iterdir():  # a sorter's folder made after the checkpoint
            if entry not in (rows.folder, bad.folder):
                shutil.rmtree(entry)
        source.resume(state.position, state.unplaced_keys, state.unplaced_values)
        self.pages_read, self.rejected = state.pages, state.rejected
        self.budget.rejected(state.rejected, self.name)
        seen = f"{state.position.seen:,}"
        if state.phase == "converting":
            log.info("%s: resuming after %s records read and sorted", self.name, seen)
        else:
            written = next(iter((state.sinks or {"": {"records": 0}}).values()))["records"]
            log.info("%s: resuming after %s of %s records written", self.name, f"{written:,}", seen)

    def _convert(self, source: RecordSource, rows: BucketSorter, bad: BucketSorter, state: RecordsState | None) -> None:
        """Every page converted and put in the sort, checkpoints as the clock says."""
        budget, name = self.budget, self.name
        self.progress.phase(Phase.CONVERTING, source.total)
        if state is not None:
            self.progress.advance(source.start.seen if source.start else 0)
        self._pages = prefetch(source.pages(), budget.prefetch)
        converted = convert_all(self.rtype, self._pages, self.formats, budget.converting())
        clock = self.ctx.clock()
        settled = None
        for _page, n, settled, (rows_out, bad_out) in converted:
            self.pages_read += 1
            budget.check()
            budget.rejected(bad_out.num_rows, name)
            self.rejected += bad_out.num_rows
            try:
                rows.add(rows_out)
                bad.add(bad_out)
            except OSError as e:
                raise ExportError(
                    f"writing sort spill files in {self.spill} failed: {e.strerror or e}",
                    record_type=name,
                    key_range=page_range(rows_out, self.key),
                ) from None
            self.progress.advance(n)
            budget.event(f"{name}.page")
            if settled is not None and clock is not None and clock.due():
                self._checkpoint(source, rows, bad, "converting", settled)
                clock.reset()
        self._pages.close()
        if not self.resumable and settled is not None and clock is not None:
            self._checkpoint(source, rows, bad, "converting", settled)  # no checkpoint comes while writing

    def _write(
        self,
        source: RecordSource,
        rows: BucketSorter,
        bad: BucketSorter,
        position: Position,
        first_bucket: int,
        state: RecordsState | None,
    ) -> None:
        """The sorted rows into the sinks, bucket by bucket; then the rejects."""
        self.progress.set_total(source.total)
        self.progress.phase(Phase.WRITING, source.total)
        self._open_sinks(state.sinks if state is not None and state.phase == "writing" else None)
        self.progress.advance(self.sinks[self.ctx.formats[0]].records)
        clock = self.ctx.clock()
        # a Parquet or compressed file cannot be cut back to a checkpoint: a resume writes it again from the sorted rows
        keep = clock is not None and rows.snapshot() is not None
        ordered = prefetch(rows.buckets(first_bucket, keep), 1)  # the next bucket is read while one is written
        try:
            current = None
            for bucket, table in ordered:
                due = self.resumable and clock is not None and clock.due()
                if bucket != current and current is not None and keep and clock is not None and due:
                    # the buckets before this one are written: their files go once this is on disk
                    release = functools.partial(rows.release, bucket)
                    at = {f: self.sinks[f].position() for f in self.ctx.formats}
                    self._checkpoint(source, rows, bad, "writing", position, bucket, release, at)
                    clock.reset()
                current = bucket
                self._write_table(table)
                self.budget.event(f"{self.name}.bucket")
        except OSError as e:  # reading a bucket back (the sinks' errors are ExportErrors)
            raise ExportError(
                f"reading sort spill files in {self.spill} failed: {e.strerror or e}",
                record_type=self.name,
                key_range=rows.span(rows.reading),
            ) from None
        finally:
            ordered.close()
        try:
            for _, table in bad.buckets(keep=keep):
                self.rejects.write(table)
        except OSError as e:
            message = f"writing rejects failed: {e.strerror or e}"
            raise ExportError(message, record_type=self.name, key_range=bad.span(bad.reading)) from None

    def _write_table(self, table: pa.Table) -> None:
        for chunk in table.to_batches(max_chunksize=self.budget.tuning.write_rows):
            self.budget.check()
            write_chunk(self.sinks, self.ctx.formats, chunk, self.rtype, self.key)
            self.progress.advance(chunk.num_rows)

    def _open_sinks(self, resume: dict[str, dict[str, Any]] | None) -> None:
        try:
            for fmt in self.ctx.formats:
                at = resume[fmt] if resume is not None else None
                self.sinks[fmt] = open_output(self.ctx.folder, self.rtype, fmt, self.ctx.files, resume=at)
        except (OSError, KeyError, TypeError, ValueError):
            if resume is None:
                raise
            raise StartOver from None  # an output file missing or shorter than its checkpoint

    def _checkpoint(
        self,
        source: RecordSource,
        rows: BucketSorter,
        bad: BucketSorter,
        phase: str,
        position: Position,
        next_bucket: int = 0,
        then: Callable[[], None] | None = None,
        sinks: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        """Hand a checkpoint to the background writer (it flushes the files it names first)."""
        checkpoints = self.ctx.checkpoints
        rows_state, bad_state = rows.snapshot(next_bucket), bad.snapshot()
        if checkpoints is None or rows_state is None or bad_state is None:
            return  # rows held in memory: nothing on disk to resume from
        n = position.unplaced
        state = RecordsState(
            phase, list(source.plan.bounds), position, list(source.unplaced.keys[:n]),
            list(source.unplaced.values[:n]), self.pages_read, self.rejected, rows_state, bad_state,
            next_bucket, sinks,
        )  # fmt: skip
        files: list[Path] = [*rows.files(next_bucket), *bad.files(), *(s.path for s in self.sinks.values())]
        folders = [*rows.folders(), *bad.folders(), self.spill, self.ctx.folder]
        checkpoints.save_later(self.name, state.to_json(), [*files, *folders], then)
