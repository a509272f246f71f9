"""What the streams of an export share: their context, budget, results and done-checkpoints.

An export runs one stream per record type (``record_stream.RecordStream``), one
for the ops (``ops_stream.OpsStream``) and one for the media
(``media.copy_media``), each a ``Stream``: called with its progress display and
the run's ``Budget``, it returns a ``Result``. The runner (``run.py``) schedules
them; ``checkpointed`` makes a finished stream's result survive a kill.
"""

from __future__ import annotations

import glob
import logging
import shutil
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import Checkpoints, Clock
from .convert import Converters
from .errors import Cancelled, ExportError
from .media import MediaResult
from .parts import Output
from .progress import Phase, Progress
from .rejects import REJECTS, RejectLog
from .sinks import FileOptions, FileResult
from .source import Archive, Filters
from .tuning import InFlight, OpenFiles, Tuning

log = logging.getLogger("pipeline")


class Writes:
    """A stream's open files, its sinks and its reject log: ``abort`` removes what they wrote."""

    sinks: Mapping[Any, Output]
    rejects: RejectLog

    def abort(self) -> None:
        for s in self.sinks.values():
            s.abort()
        self.rejects.abort()


@dataclass(frozen=True)
class StreamContext:
    """What every stream of a run reads and writes: the archive (one snapshot), the staging
    folder, the formats, filters and batch sizes, and the run's checkpoints (None: none)."""

    db: Archive
    folder: Path
    formats: tuple[str, ...]
    filters: Filters
    batch_size: int
    batch_bytes: int
    checkpoints: Checkpoints | None = None
    files: FileOptions = FileOptions()  # compression, parts, --csv-safe

    def clock(self) -> Clock | None:
        """When the next checkpoint is due (None without checkpoints)."""
        return None if self.checkpoints is None else Clock(self.checkpoints.interval)


@dataclass(frozen=True)
class StreamResult:
    """What one record type's export wrote: data files, records, and its rejects (part file, count)."""

    files: list[FileResult]
    records: int
    rejects: tuple[Path, int] | None
    batches: int = 0  # pages read
    retries: int = 0  # retries of a locked archive

    def to_state(self) -> dict[str, object]:
        """As a finished stream's checkpoint (JSON): its rejects' part file by name and size."""
        rejects = None
        if self.rejects is not None:
            path, count = self.rejects
            rejects = [path.name, count, path.stat().st_size]
        return {"phase": "done", "kind": "records", "files": [asdict(f) for f in self.files],
                "records": self.records, "rejects": rejects, "batches": self.batches,
                "retries": self.retries}  # fmt: skip

    @classmethod
    def from_state(cls, folder: Path, state: dict[str, Any]) -> StreamResult:
        """Back from ``to_state``; ValueError if its rejects' part file is not as it was (and
        KeyError, TypeError or ValueError if it is not such a state)."""
        if state["kind"] != "records":
            raise ValueError("not a records stream's state")
        rejects = None
        if state["rejects"] is not None:
            name, count, size = state["rejects"]
            if (folder / name).stat().st_size != size:
                raise ValueError(f"{name} changed")
            rejects = (folder / name, int(count))
        files = [FileResult(**f) for f in state["files"]]
        return cls(files, int(state["records"]), rejects, int(state["batches"]), int(state["retries"]))


Result = StreamResult | MediaResult
Stream = Callable[[Progress, "Budget"], Result]


def checkpointed(checkpoints: Checkpoints, folder: Path, name: str, fn: Stream, *own: str) -> Stream:
    """Stream ``fn`` with a checkpoint when it is done: a resumed run takes its files as they
    are (if they still have their sizes) instead of writing them again. A stream that was
    not done is started over, its leftovers (``own``: its files and folders) removed first,
    unless it continues from checkpoints of its own (the record types)."""

    def run(progress: Progress, budget: Budget) -> Result:
        result = finished(folder, checkpoints.load(name))
        if result is not None:
            log.info("%s: done before the interruption; its files are kept", name)
            progress.phase(Phase.DONE_BEFORE, 1)
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
        folders = {folder, *((folder / f.path).parent for f in result.files)}
        checkpoints.save(name, result.to_state(), sorted(folders))
        budget.event(f"{name}.done")
        return result

    return run


def finished(folder: Path, state: dict[str, Any] | None) -> Result | None:
    """A done stream's result from its checkpoint, if its files are all there with their sizes."""
    if state is None or state.get("phase") != "done":
        return None
    try:
        result = MediaResult.from_state(state) if state["kind"] == "media" else StreamResult.from_state(folder, state)
        if any((folder / f.path).stat().st_size != f.size_bytes for f in result.files):
            return None
        return result
    except (OSError, KeyError, TypeError, ValueError):
        return None


def remove_leftovers(folder: Path, name: str, spill: Path | None = None) -> None:
    """What a killed run of stream ``name`` left in the staging folder: its files, its
    rejects' part file, its sort files."""
    for pattern in (f"{glob.escape(name)}.*", f"{glob.escape(name)}-[0-9]*.*"):  # posts.csv.gz, posts-00002.csv
        for path in folder.glob(pattern):
            if path.is_file():
                path.unlink()
    (folder / f".{name}.{REJECTS}").unlink(missing_ok=True)
    if spill is not None and spill.exists():
        shutil.rmtree(spill)


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
    """What the streams of a run share: the tuning, the converter threads (one pool for all),
    the open sort files, the bytes in flight, the reject count, and the flag that stops them
    when one fails."""

    tuning: Tuning
    converters: ThreadPoolExecutor  # shared by all streams: a stream that ends leaves its share to the rest
    cancel: threading.Event
    prefetch: int = 1  # pages read ahead
    rejects: RejectCount = field(default_factory=lambda: RejectCount(None))
    open_files: OpenFiles = field(default_factory=lambda: OpenFiles(Tuning().open_files))
    checkpoints: Checkpoints | None = None
    in_flight: InFlight = field(default_factory=lambda: InFlight(Tuning().in_flight_bytes))

    def event(self, name: str) -> None:
        """A phase boundary (``posts.page``, ...): ``Tuning.on_event``, once the checkpoints
        handed over so far are on disk (so a test that kills here finds them)."""
        if name == "published" and self.tuning.on_published is not None:
            self.tuning.on_published()
        if self.tuning.on_event is not None:
            if self.checkpoints is not None:
                self.checkpoints.flush()
            self.tuning.on_event(name)

    def converting(self) -> Converters:
        """Where the streams convert their pages: the shared pool, the bytes in flight."""
        return Converters(self.converters, self.tuning.converters, self.in_flight, self.cancel)

    def check(self) -> None:
        if self.cancel.is_set():
            raise Cancelled

    def rejected(self, n: int, record_type: str) -> None:
        """Count ``n`` more rejected values; ExportError once they pass ``--max-rejects``."""
        self.rejects.add(n, record_type)
