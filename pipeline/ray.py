"""Ray: archives as Ray Datasets (``read_archive``), and the executor ``export_many`` runs tasks on.

Ray is an optional extra (``pip install 'pipeline[ray]'``); without it these raise
a UsageError saying so. ``import ray`` here is Ray itself (absolute imports):
this module is ``pipeline.ray``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UsageError
from .source import Filters

try:  # optional: without Ray, read_archive and RayTasks raise a UsageError saying how to install it
    from ray.data import Datasource as _Datasource
except ImportError:
    _Datasource = object

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

    from .many import ArchiveRun, Job

MISSING = "Ray is not installed: pip install 'pipeline[ray]'"
# The allocator settings the CLI makes (cli._tune_memory), given to Ray's workers at their start:
# they must be in the environment before pyarrow and Polars load.
ALLOCATOR_ENV = ("ARROW_DEFAULT_MEMORY_POOL", "_RJEM_MALLOC_CONF", "MALLOC_ARENA_MAX")


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError(MISSING) from None
    return ray


def runtime_env() -> dict[str, object]:
    """What Ray's workers need: this pipeline package (shipped, so a cluster runs the driver's
    version) and the allocator settings."""
    env = {k: os.environ[k] for k in ALLOCATOR_ENV if k in os.environ}
    return {"py_modules": [str(Path(__file__).resolve().parent)], "env_vars": env}


class RayTasks:
    """``export_many``'s executor on Ray: one task per archive declaring one CPU and the
    export's memory ceiling, never retried by Ray itself (the driver loop retries, counting
    attempts). Connects to ``address``, or starts a local instance of ``workers`` CPUs
    (and stops it at ``shutdown``); uses the session a caller has already started."""

    def __init__(self, workers: int, address: str | None = None):
        from .many import EXPORT_CPUS, EXPORT_MEMORY, run_one

        ray = _ray()
        self._ray = ray
        self._started = not ray.is_initialized()
        if self._started:
            ray.init(  # "local": a new instance, even where `ray start` left one running
                address=address or "local",
                num_cpus=None if address else workers,
                include_dashboard=False,
                runtime_env=runtime_env(),
                log_to_driver=False,
                logging_level=logging.WARNING,  # not Ray's INFO lines about its own start-up
            )
        self.capacity = 1 << 30  # Ray schedules by the declared resources
        remote = ray.remote(run_one)
        self._task = remote.options(num_cpus=EXPORT_CPUS, memory=EXPORT_MEMORY, max_retries=0, retry_exceptions=False)
        exc = ray.exceptions
        self._died = (
            exc.WorkerCrashedError, exc.NodeDiedError, exc.ObjectLostError, exc.LocalRayletDiedError,
            exc.OutOfMemoryError, exc.RaySystemError,
        )  # fmt: skip

    def submit(self, job: Job) -> Future[ArchiveRun]:
        return self._task.remote(job).future()

    def died(self, error: BaseException) -> bool:
        return isinstance(error, self._died)

    def recover(self, future: Future[ArchiveRun]) -> None:
        """Nothing to rebuild: Ray replaces a dead worker by itself."""

    def shutdown(self) -> None:
        if self._started:
            self._ray.shutdown()


# -- archives as Ray Datasets ------------------------------------------------------

MIN_TASK_ROWS = 16_384  # a read task reads at least this many rows (one page): each has a fixed cost


def read_archive(
    path: str | os.PathLike[str],
    record_type: str = "posts",
    filters: Filters | None = None,
    *,
    override_num_blocks: int | None = None,
    batch_bytes: int | None = None,
) -> ray.data.Dataset:
    """A Ray Dataset of an archive's records: the CSV columns the export writes for them,
    converted by the same transforms, one block per page of a read task.

    Each read task covers a range of the table's rowids (``override_num_blocks``
    ranges, default Ray's choice) and reads it in keyset pages, as the export
    does, in its own read transaction. ``filters``: ``Filters.parse(did=..., since=...,
    until=...)`` (``did="self"`` is the archive owner). Rows come in table order within a
    task; across tasks, in any order unless ``DataContext.execution_options.preserve_order``
    is set, and never in the export's order (newest first): sort if you need one.
    """
    ray = _ray()
    source = ArchiveDatasource(path, record_type, filters, batch_bytes)
    return ray.data.read_datasource(source, override_num_blocks=override_num_blocks)


class ArchiveDatasource(_Datasource):  # type: ignore[misc,valid-type]
    """The ``ray.data.Datasource`` behind ``read_archive``: read tasks over rowid ranges."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        record_type: str = "posts",
        filters: Filters | None = None,
        batch_bytes: int | None = None,
    ):
        from .records import RECORD_TYPES
        from .source import BATCH_BYTES, Archive

        if _Datasource is object:
            raise UsageError(MISSING)
        super().__init__()
        if record_type not in RECORD_TYPES:
            raise UsageError(f"unknown record type {record_type!r}; choose from {', '.join(RECORD_TYPES)}")
        self.path = Path(path)
        self.rtype = RECORD_TYPES[record_type]
        self.batch_bytes = batch_bytes or BATCH_BYTES
        filters = filters or Filters()
        with Archive(self.path) as db:
            db.check(self.rtype)
            if filters.did == "self":
                from dataclasses import replace

                filters = replace(filters, did=db.owner())
            self.filters = filters
            self._cuts, self._rows = self._ranges(db)
        self._size = self.path.stat().st_size

    def _ranges(self, db: Any) -> tuple[list[int], int]:
        """The table's row count and rowids to cut it at: the one in every MIN_TASK_ROWS."""
        from .source import _quote

        table = f"main.{_quote(self.rtype.table)}"
        rows = db.read_table(f"SELECT count(*) FROM {table}").column(0)[0].as_py()
        every = f"SELECT rowid FROM (SELECT rowid, row_number() OVER (ORDER BY rowid) AS n FROM {table})"
        cuts = db.read_table(f"{every} WHERE n % {MIN_TASK_ROWS} = 0").column(0).to_pylist()
        return cuts, rows

    def estimate_inmemory_data_size(self) -> int | None:
        return self._size

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None):
        """At most ``parallelism`` tasks, each over consecutive rowid ranges of MIN_TASK_ROWS rows
        (the last to the table's end): task i reads ``after < rowid <= until``."""
        import functools

        from ray.data.block import BlockMetadata
        from ray.data.datasource import ReadTask

        step = max(1, -(-len(self._cuts) // max(1, parallelism)))  # cuts per task, rounded up
        afters: list[int | None] = [None, *self._cuts[step - 1 :: step]]
        tasks = []
        for i, after in enumerate(afters):
            until = afters[i + 1] if i + 1 < len(afters) else None
            size = self._size // len(afters)
            meta = BlockMetadata(num_rows=None, size_bytes=size, input_files=[str(self.path)], exec_stats=None)
            read = functools.partial(
                _read_range, str(self.path), self.rtype.name, self.filters, after, until, self.batch_bytes
            )
            tasks.append(ReadTask(read, meta))
        return tasks


def _read_range(
    path: str, record_type: str, filters: Filters, after: int | None, until: int | None, batch_bytes: int
) -> Iterator[pa.Table]:
    """A read task: the rows with ``after < rowid <= until``, page by page, converted."""
    import pyarrow as pa

    from . import transforms
    from .records import RECORD_TYPES
    from .source import Archive, Position, RecordSource

    rtype = RECORD_TYPES[record_type]
    with Archive(Path(path)) as db:
        source = RecordSource(db, rtype, filters, 1, batch_bytes=batch_bytes, plan=False)
        if after is not None:
            source.resume(Position(after, 0, 0), [], [])
        for page in source.pages(until):
            out = transforms.transform(rtype, page, frozenset({"csv"}))
            assert out.csv is not None
            yield pa.Table.from_batches([out.csv])
