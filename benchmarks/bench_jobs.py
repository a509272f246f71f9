"""Benchmark `--jobs`: every record type of a 1,000,000-post archive, plus its ops, with --jobs 1 and 2.

    python benchmarks/bench_jobs.py [--archive PATH] [--runs 3] [--jobs 1 2 4]

Uses the same seeded archive as bench_export.py (cached in benchmarks/.cache/):
1,000,000 posts, 500,000 likes, 100,000 follows, 50,000 ops. For each --jobs
value, interleaved, best of ``--runs``: wall time and peak RSS of
``pipeline run export --ops`` (default formats, csv and json). Then memray's
peak (in a subprocess of its own) for each --jobs value. Writes
benchmarks/results/jobs.json; exits 1 if --jobs 2 is not faster than --jobs 1
or a memray peak passes 500 MiB.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from bench_export import CACHE, PEAK_LIMIT_MIB, archive, export_cmd, memray_peak, report, timed, warm


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archive", type=Path, help="an existing archive instead of the generated one")
    ap.add_argument("--posts", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 2, 4])
    args = ap.parse_args()
    db = args.archive or archive(args.posts, args.seed)
    formats = ("csv", "json")
    times: dict[int, list[float]] = {j: [] for j in args.jobs}
    rss: dict[int, list[int]] = {j: [] for j in args.jobs}
    with tempfile.TemporaryDirectory(prefix="bench-jobs-", dir=CACHE) as tmp:
        work = Path(tmp)
        warm(db)
        for _ in range(args.runs):
            for j in args.jobs:  # interleaved: every --jobs value sees the same machine state
                out = work / f"out{j}"
                wall, kib = timed(export_cmd(db, out, formats, ("--ops", "--jobs", str(j))))
                times[j].append(round(wall, 3))
                rss[j].append(kib)
                shutil.rmtree(out)
        peaks = {j: memray_peak(db, work, formats, ("--ops", "--jobs", str(j))) for j in args.jobs}
    results = {
        "archive": str(db),
        "formats": list(formats),
        "best_s": {j: min(t) for j, t in times.items()},
        "median_s": {j: sorted(t)[len(t) // 2] for j, t in times.items()},
        "peak_rss_mib": {j: round(max(r) / 1024, 1) for j, r in rss.items()},
        "memray_peak_mib": {j: round(p[0] / 2**20, 1) for j, p in peaks.items()},
        "memray_run_peak_rss_mib": {j: round(p[1] / 1024, 1) for j, p in peaks.items()},
        "runs": times,
    }
    failed = []
    if 1 in times and 2 in times and results["best_s"][2] >= results["best_s"][1]:
        failed.append("--jobs 2 is not faster than --jobs 1")
    if any(v > PEAK_LIMIT_MIB for v in results["memray_peak_mib"].values()):
        failed.append(f"memray peak above {PEAK_LIMIT_MIB} MiB")
    return report("jobs.json", results, failed)


if __name__ == "__main__":
    sys.exit(main())
