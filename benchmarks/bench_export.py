"""Benchmark `pipeline run export` against the sqlite3 CLI, with memray's peak and peak RSS.

    python benchmarks/bench_export.py [--posts 1000000] [--small 500] [--runs 3]

1. Builds (once, cached in benchmarks/.cache/) a seeded archive of ``--posts`` posts.
2. Times, in the same run, warm page cache, best of ``--runs``:
   - the peer: ``sqlite3 -csv -header`` dumping the same rows in the same order
     (newest instant first, then uri) to a file;
   - ``pipeline run export --format csv`` of the same archive.
   Reports rows/s and the ratio pipeline / sqlite3.
3. Runs the export once more under memray (one Tracker per process, so in a
   subprocess of its own) and reports memray's peak heap beside the peak RSS.
4. Times a ``--small``-post export from process start to exit (median of 5).

Writes benchmarks/results/latest.json and exits 1 if a ceiling is broken:
memray peak > 500 MiB, ratio > 1.3, or the small export >= 1 s.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache"
RESULTS = ROOT / "benchmarks" / "results"
PEAK_LIMIT_MIB = 500
RATIO_LIMIT = 1.3
SMALL_LIMIT_S = 1.0
# The same rows and order as posts.csv; embed_data stands in for MediaFiles,
# which the CLI cannot compute (it writes more bytes than we do, not fewer).
PEER_SQL = (
    "SELECT uri, cid, did, text, created_at, like_count, repost_count, reply_count, quote_count,"
    " is_reply, reply_parent, has_media, embed_data, embed_type, indexed_at"
    " FROM posts ORDER BY julianday(created_at) DESC, uri"
)


def archive(posts: int, seed: int) -> Path:
    path = CACHE / f"posts-{posts}-seed{seed}.db"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        spec = importlib.util.spec_from_file_location("make_archive", ROOT / "data" / "fixtures" / "make_archive.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        print(f"generating {path.name} ...", file=sys.stderr)
        tmp = path.with_suffix(".tmp")
        module.make_archive(tmp, posts=posts, seed=seed)
        tmp.rename(path)
    return path


def _count(db: Path) -> int:
    import sqlite3

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("SELECT count(*) FROM posts").fetchone()[0]
    finally:
        con.close()


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def timed(cmd: list[str], stdout=subprocess.DEVNULL, env: dict[str, str] | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one command."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{err}")
    return wall, usage.ru_maxrss


def export_cmd(
    db: Path, out: Path, formats: tuple[str, ...] = ("csv",), extra: tuple[str, ...] = ("--types", "posts")
) -> list[str]:
    """The CLI export of ``db``; by default posts only (what the sqlite3 peer dumps)."""
    fmts = [x for f in formats for x in ("--format", f)]
    return [sys.executable, str(ROOT / "cli.py"), "run", "export", str(db), "--out", str(out), *fmts, *extra, "-q"]


def memray_peak(
    db: Path, work: Path, formats: tuple[str, ...], extra: tuple[str, ...] = ("--types", "posts")
) -> tuple[int, int]:
    """memray's peak heap (bytes) and the process's peak RSS (KiB) for one export."""
    trace = work / f"export-{'-'.join(formats)}-{len(extra)}.bin"
    out = work / f"memray-{'-'.join(formats)}"
    code = (
        "import sys, memray\n"
        f"sys.argv = {['pipeline', *export_cmd(db, out, formats, extra)[2:]]!r}\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        f"with memray.Tracker({str(trace)!r}):\n"
        "    import cli\n"
        "    try:\n"
        "        cli.main()\n"
        "    except SystemExit as e:\n"
        "        assert not e.code, e.code\n"
    )
    _, rss = timed([sys.executable, "-c", code])
    import memray

    peak = memray.FileReader(str(trace)).metadata.peak_memory
    trace.unlink()
    shutil.rmtree(out, ignore_errors=True)
    return peak, rss


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--posts", type=int, default=1_000_000)
    ap.add_argument("--small", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--archive", type=Path, help="an existing archive to use instead of generating one")
    args = ap.parse_args()
    sqlite3_cli = shutil.which("sqlite3")
    if sqlite3_cli is None:
        raise SystemExit("the sqlite3 command-line tool is needed as the peer (apt-get install sqlite3)")

    db = args.archive or archive(args.posts, args.seed)
    small = archive(args.small, args.seed)
    posts = _count(db)
    results: dict[str, object] = {"archive": str(db), "posts": posts, "archive_bytes": db.stat().st_size}
    with tempfile.TemporaryDirectory(prefix="bench-", dir=CACHE) as tmp:
        work = Path(tmp)
        warm(db)
        peer, ours, rss = [], [], []
        for i in range(args.runs):  # interleaved, so both see the same machine state
            with open(work / "peer.csv", "wb") as f:
                peer.append(timed([sqlite3_cli, "-csv", "-header", str(db), PEER_SQL], stdout=f)[0])
            (work / "peer.csv").unlink()
            wall, kib = timed(export_cmd(db, work / f"out{i}"))
            ours.append(wall)
            rss.append(kib)
            shutil.rmtree(work / f"out{i}")
        memory = {"+".join(f): memray_peak(db, work, f) for f in (("csv",), ("csv", "json", "ndjson"))}
        all_formats = work / "all"
        wall_all, rss_all = timed(export_cmd(db, all_formats, ("csv", "json", "ndjson")))
        shutil.rmtree(all_formats)
        small_times = []
        for i in range(5):
            small_times.append(timed(export_cmd(small, work / f"small{i}"))[0])
    best_peer, best_ours = min(peer), min(ours)
    results.update(
        sqlite3_csv_s=round(best_peer, 3),
        pipeline_csv_s=round(best_ours, 3),
        ratio=round(best_ours / best_peer, 3),
        pipeline_rows_per_s=round(posts / best_ours),
        sqlite3_rows_per_s=round(posts / best_peer),
        peak_rss_mib=round(max(rss) / 1024, 1),
        memray_peak_mib={k: round(v[0] / 2**20, 1) for k, v in memory.items()},
        memray_run_peak_rss_mib={k: round(v[1] / 1024, 1) for k, v in memory.items()},
        all_formats_s=round(wall_all, 3),
        all_formats_peak_rss_mib=round(rss_all / 1024, 1),
        small_posts=args.small,
        small_export_median_s=round(statistics.median(small_times), 3),
        small_export_max_s=round(max(small_times), 3),
        runs={"sqlite3": [round(x, 3) for x in peer], "pipeline": [round(x, 3) for x in ours]},
    )
    failed = []
    if max(v[0] for v in memory.values()) > PEAK_LIMIT_MIB * 2**20:
        failed.append(f"memray peak above {PEAK_LIMIT_MIB} MiB")
    if results["ratio"] > RATIO_LIMIT:  # type: ignore[operator]
        failed.append(f"slower than {RATIO_LIMIT}x the sqlite3 CLI")
    if results["small_export_max_s"] >= SMALL_LIMIT_S:  # type: ignore[operator]
        failed.append(f"{args.small}-post export took {SMALL_LIMIT_S}s or more")
    return report("latest.json", results, failed)


def report(name: str, results: dict[str, object], failed: list[str]) -> int:
    """Write ``results`` to benchmarks/results/``name``, print them and any failures; the exit code."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / name).write_text(json.dumps(results, indent=2) + "\n")
    width = max(map(len, results))
    for k, v in results.items():
        print(f"{k:<{width}}  {v}")
    for f in failed:
        print(f"FAIL: {f}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
