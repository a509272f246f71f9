"""``OpsStream``: the ``ops`` table in ``seq`` order, split into ``ops/<type>.<action>.<ext>``.

``seq`` is the table's rowid, so the keyset pages already come in export order:
pages are converted on the converter threads but written in order, nothing is
sorted or spilled. Each page's rows go to the files of their (type, action); a
file is opened when its first row comes. With checkpoints, the last page written
and the files' sizes then are recorded (at most every
``Tuning.checkpoint_seconds``), and a killed run's are continued. With Parquet
among the formats (a file that cannot be continued) no such checkpoint is
taken: a killed run's ops are written again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import polars as pl
import pyarrow as pa

from . import transforms
from .convert import convert_in_order, prefetch, sort_key, write_chunk
from .frames import frame
from .parts import Output, open_output
from .progress import Phase, Progress
from .records import COLLECTION_TYPES, OP_ACTIONS, OPS
from .rejects import RejectLog
from .sinks import resumable
from .source import Position, Reads, RecordSource
from .streams import Budget, StreamContext, StreamResult, Writes, log, remove_leftovers

OPS_DIR = "ops"


@dataclass(frozen=True)
class OpsState:
    """The ops stream's checkpoint: pages written up to ``position``, the files then
    (``"<stem>/<format>"`` → ``Output.position``) and the rejects' part file ([size, count])."""

    position: Position
    unplaced_keys: list[str | None]
    unplaced_values: list[str | None]
    pages: int
    sinks: dict[str, dict[str, Any]]
    rejects: list[int] | None

    def to_json(self) -> dict[str, object]:
        p = self.position
        return {
            "phase": "writing", "position": [p.after, p.seen, p.unplaced], "unplaced_keys": self.unplaced_keys,
            "unplaced_values": self.unplaced_values, "pages": self.pages, "sinks": self.sinks,
            "rejects": self.rejects,
        }  # fmt: skip

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> OpsState:
        """KeyError, TypeError or ValueError if ``d`` is not one."""
        if d["phase"] != "writing":
            raise ValueError(f"not the ops stream's phase: {d['phase']!r}")
        after, seen, unplaced = d["position"]
        sinks = {str(k): dict(v) for k, v in d["sinks"].items()}
        rejects = None if d["rejects"] is None else [int(d["rejects"][0]), int(d["rejects"][1])]
        return cls(
            Position(int(after), int(seen), int(unplaced)), list(d["unplaced_keys"]), list(d["unplaced_values"]),
            int(d["pages"]), sinks, rejects,
        )  # fmt: skip


class OpsStream(Writes):
    """The ops' export: ``run`` returns its ``StreamResult``; ``abort`` on failure."""

    def __init__(self, ctx: StreamContext, progress: Progress, budget: Budget):
        self.ctx, self.progress, self.budget = ctx, progress, budget
        self.formats = frozenset(ctx.formats)
        self.folder = ctx.folder / OPS_DIR
        self.key = sort_key(OPS, self.formats)
        self.sinks: dict[tuple[str, str], Output] = {}  # (file stem, format)
        self.rejects = RejectLog(ctx.folder, OPS)
        self.pages_read = 0
        self.resumable = all(resumable(f, ctx.files) for f in ctx.formats)  # files continued from a checkpoint

    @classmethod
    def run_resumed(cls, ctx: StreamContext, progress: Progress, budget: Budget) -> StreamResult:
        """From the stream's checkpoint, or from the start if its files are not as it says."""
        saved = ctx.checkpoints.load(OPS.name) if ctx.checkpoints is not None else None
        try:
            state = OpsState.from_json(saved) if saved is not None else None
        except (KeyError, TypeError, ValueError):
            state = None
        return cls(ctx, progress, budget).run(state)

    def run(self, state: OpsState | None) -> StreamResult:
        c = self.ctx
        if state is None:
            remove_leftovers(c.folder, OPS.name, self.folder)
        reads = Reads(*transforms.reads(OPS, self.formats))
        source = c.db.read(
            OPS, c.filters, c.batch_size, spill_dir=c.folder, reads=reads, batch_bytes=c.batch_bytes,
            tuning=self.budget.tuning,
        )  # fmt: skip
        self.folder.mkdir(exist_ok=True)
        self.progress.phase(Phase.WRITING, source.total)
        if state is not None and not self._resume(state, source):  # not as the checkpoint says: start over
            self.abort()
            source.close()
            self.progress.stop()
            return type(self)(c, self.progress, self.budget).run(None)
        pages = prefetch(source.pages(), self.budget.prefetch)
        try:
            self._write(source, pages)
            pages.close()
            return self._finish(source)
        except BaseException:
            self.abort()
            raise
        finally:
            pages.close()
            self.progress.stop()
            source.close()

    def _resume(self, state: OpsState, source: RecordSource) -> bool:
        """Continue a killed run's files from its checkpoint; False if they are not as it says."""
        try:
            for key, at in state.sinks.items():
                stem, fmt = key.split("/")
                self.sinks[stem, fmt] = self._open(stem, fmt, at)
            kept = {s.path.name for s in self.sinks.values()} | {f.path for s in self.sinks.values() for f in s.done}
            for entry in self.folder.iterdir():  # opened after the checkpoint: written again
                if entry.name not in kept:
                    entry.unlink()
            self.rejects.resume(None if state.rejects is None else (state.rejects[0], state.rejects[1]))
            source.resume(state.position, state.unplaced_keys, state.unplaced_values)
        except (OSError, KeyError, TypeError, ValueError):
            return False
        self.pages_read = state.pages
        self.budget.rejected(self.rejects.count, OPS.name)
        self.progress.advance(state.position.seen)
        log.info("%s: resuming after %s records written", OPS.name, f"{state.position.seen:,}")
        return True

    def _write(self, source: RecordSource, pages: Iterable[pa.Table]) -> None:
        budget, formats = self.budget, self.ctx.formats
        clock = self.ctx.clock()
        converted = convert_in_order(OPS, pages, self.formats, budget.converting())
        for page, (rows_out, bad_out) in converted:
            self.pages_read += 1
            budget.check()
            stems = _op_stems(page)
            for stem in stems.unique(maintain_order=True).to_list():
                part = rows_out.filter((stems == stem).to_arrow()) if stems.n_unique() > 1 else rows_out
                for fmt in formats:
                    if (stem, fmt) not in self.sinks:
                        self.sinks[stem, fmt] = self._open(stem, fmt)
                for chunk in part.to_batches(max_chunksize=budget.tuning.write_rows):
                    write_chunk({fmt: self.sinks[stem, fmt] for fmt in formats}, formats, chunk, OPS, self.key)
            budget.rejected(bad_out.num_rows, OPS.name)
            if bad_out.num_rows:
                self.rejects.write(bad_out)
            self.progress.advance(page.num_rows)
            budget.event(f"{OPS.name}.page")
            if self.resumable and self.ctx.checkpoints is not None and clock is not None and clock.due():
                self._checkpoint(source, Position.of(page))
                clock.reset()

    def _open(self, stem: str, fmt: str, resume: dict[str, Any] | None = None) -> Output:
        return open_output(self.folder, OPS, fmt, self.ctx.files, stem, resume)

    def _checkpoint(self, source: RecordSource, at: Position) -> None:
        assert self.ctx.checkpoints is not None
        rejects = self.rejects.position()
        state = OpsState(
            at, list(source.unplaced.keys[: at.unplaced]), list(source.unplaced.values[: at.unplaced]),
            self.pages_read, {f"{stem}/{fmt}": sink.position() for (stem, fmt), sink in self.sinks.items()},
            None if rejects is None else list(rejects),
        )  # fmt: skip
        files = [*(s.path for s in self.sinks.values()), *self.rejects.files(), self.folder, self.ctx.folder]
        self.ctx.checkpoints.save_later(OPS.name, state.to_json(), files)

    def _finish(self, source: RecordSource) -> StreamResult:
        self.budget.rejected(len(source.unplaced.keys), OPS.name)
        self.rejects.unplaced(source)
        if not self.sinks:
            self.folder.rmdir()  # no op passed the filters: no files, no folder
        results = []
        for stem, fmt in sorted(self.sinks):  # the manifest lists them by name
            for result in self.sinks[stem, fmt].close():
                results.append(replace(result, path=f"{OPS_DIR}/{result.path}"))
        return StreamResult(results, source.total, self.rejects.close(), self.pages_read, source.retried)


def _op_stems(page: pa.Table) -> pl.Series:
    """Each op's file stem, ``<type>.<action>``: ``posts``, ``likes`` or ``follows`` by the
    collection and ``other`` for any other collection; the action if it is one of the three
    the schema allows, else ``other``. So there are at most 16 stems: file names stay short
    and safe, and the files open at once stay few, whatever the table holds."""
    df = frame(page.select(["collection", "action"]))
    kind = pl.col("collection").replace_strict(COLLECTION_TYPES, default="other", return_dtype=pl.String)
    action = pl.when(pl.col("action").is_in(OP_ACTIONS)).then(pl.col("action")).otherwise(pl.lit("other"))
    return df.select(pl.concat_str(kind, pl.lit("."), action)).to_series()
