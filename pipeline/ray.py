"""Ray: archives as Ray Datasets (``read_archive``), and the executor ``export_many`` runs tasks on.

Ray is an optional extra (``pip install 'pipeline[ray]'``); without it these raise
a UsageError saying so. ``import ray`` here is Ray itself (absolute imports):
this module is ``pipeline.ray``.
"""

from __future__ import annotations

import os
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UsageError

if TYPE_CHECKING:
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
            ray.init(
                address=address,
                num_cpus=None if address else workers,
                include_dashboard=False,
                runtime_env=runtime_env(),
                log_to_driver=False,
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
