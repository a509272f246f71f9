"""Memory and time at scale: each export of the posts, on a quiet machine and beside a CPU-bound competitor.

For one archive, ``runs`` interleaved rounds; in each, every format (csv, json,
ndjson, and all three at once) is exported once on the quiet machine and once
while ``benchmarks.load.cpu_load`` keeps both cores busy. Each run's peak RSS is
the process's own (``peak_kib``); the competitor's CPU use during the run is kept,
as the proof that it competed.
"""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.archives import count_posts, warm
from benchmarks.load import DESCRIPTION, cpu_load, cpu_seconds
from benchmarks.measure import Run, timed
from benchmarks.ours import export_cmd

CONDITIONS = ("quiet", "loaded")
TIMEOUT_S = 3600


def peak_kib(run: Run) -> int:
    """The command's own peak RSS: ru_maxrss, or the polled VmHWM when ru_maxrss only shows the floor
    (the benchmark process's own peak, which Linux carries over exec)."""
    if run.rss_kib <= run.floor_kib + 1024 and run.hwm_kib:
        return run.hwm_kib
    return run.rss_kib


def _loaded(cmd: list[str]) -> tuple[Run, float | None]:
    """``cmd`` timed beside the competitor; also the cores the competitor used on average meanwhile."""
    with cpu_load() as pids:
        before = [cpu_seconds(p) for p in pids]
        t0 = time.perf_counter()
        run = timed(cmd, timeout=TIMEOUT_S)
        wall = time.perf_counter() - t0
        after = [cpu_seconds(p) for p in pids]
    used = [b - a for a, b in zip(before, after, strict=True) if a is not None and b is not None]
    return run, (round(sum(used) / wall, 2) if used and wall > 0 else None)


def _summary(runs: list[Run], cores: list[float | None], posts: int) -> dict[str, object]:
    ok = [r for r in runs if r.ok]
    out: dict[str, object] = {
        "wall_s": [round(r.wall, 3) for r in ok],
        "peak_kib": [peak_kib(r) for r in ok],
        "errors": [r.error for r in runs if not r.ok],
    }
    if ok:
        best = min(r.wall for r in ok)
        out.update(
            best_s=round(best, 3),
            median_s=round(statistics.median(r.wall for r in ok), 3),
            s_per_million=round(best / posts * 1e6, 3) if posts else None,
            max_peak_kib=max(peak_kib(r) for r in ok),
        )
    if any(c is not None for c in cores):
        out["competitor_cores"] = [c for c in cores if c is not None]
    return out


def bench_scale(
    label: str, db: Path, formats: list[str], runs: int, work: Path, log: Callable[[str], None]
) -> dict[str, object]:
    """Every format of ``formats`` (each "a" or "a+b+c") exported from ``db``, quiet and loaded, ``runs`` times."""
    posts = count_posts(db)
    log(f"scale {label}: {db} ({posts:,} posts, {db.stat().st_size / 1e9:.2f} GB); warming the page cache")
    warm(db)
    runs_of: dict[tuple[str, str], list[Run]] = {(f, c): [] for f in formats for c in CONDITIONS}
    cores_of: dict[tuple[str, str], list[float | None]] = {(f, c): [] for f in formats for c in CONDITIONS}
    for i in range(runs):
        for fmt in formats:
            for cond in CONDITIONS:
                out = work / "scale"
                cmd = export_cmd(db, out, tuple(fmt.split("+")))
                if cond == "loaded":
                    r, cores = _loaded(cmd)
                else:
                    r, cores = timed(cmd, timeout=TIMEOUT_S), None
                shutil.rmtree(out, ignore_errors=True)
                runs_of[fmt, cond].append(r)
                cores_of[fmt, cond].append(cores)
                log(
                    f"scale {label} run {i + 1}/{runs} {fmt:<15} {cond:<6}: "
                    + (f"{r.wall:.2f} s, peak RSS {peak_kib(r) / 1024:.0f} MiB" if r.ok else f"FAILED {r.error}")
                    + (f", competitor {cores:.2f} cores" if cores is not None else "")
                )
    return {
        "path": str(db),
        "posts": posts,
        "archive_bytes": db.stat().st_size,
        "formats": {f: {c: _summary(runs_of[f, c], cores_of[f, c], posts) for c in CONDITIONS} for f in formats},
    }


def bench(
    archives: list[tuple[str, Path]], formats: list[str], runs: int, work: Path, log: Callable[[str], None]
) -> dict[str, object]:
    """``bench_scale`` on each (label, archive); the competitor's description goes with the results."""
    result: dict[str, object] = {"load": DESCRIPTION, "archives": {}}
    for label, db in archives:
        t0 = time.perf_counter()
        result["archives"][label] = bench_scale(label, db, formats, runs, work, log)  # type: ignore[index]
        log(f"scale {label} done in {time.perf_counter() - t0:.0f} s")
    return result
