"""``python -m benchmarks``: time ``pipeline run export`` against its peers, measure its memory, write the results.

For each archive (100,000 posts; 1,000,000 posts; 2,000 posts of ~1.5 MB each, the
"huge-row" archive), warm page cache, ``--runs`` interleaved runs: every format
alone (csv, json, ndjson; and all three at once on the regular archives) exported
by ``pipeline run export --types posts``, each followed by the peers of that format
dumping the same posts in the same order (newest instant first, then uri). Then
each export under memray, ``--memray-runs`` times (default 3; the median peak is
reported: one run's peak varies by about ±10%), one Tracker per process, so each in a
process of its own. Then a 500-post export timed from process start to exit (median of 5),
and every record type of the 1M archive with --ops at --jobs 1, 2 and 4.

Writes benchmarks/results/latest.json (everything, every run), latest.md (the
tables), chart.png, and the README's Performance tables (between the
``<!-- bench:start -->`` and ``<!-- bench:end -->`` lines). Exits 1, with FAIL
lines, if a target is missed:

- memray peak of any export above 500 MB (500 * 10**6 bytes);
- memray peak at 1M above 1.2x the peak at 100k, for the same format;
- CSV at 1M less than 1.5x as fast as ``sqlite3 -csv``; JSON at 1M less than 1.5x as
  fast as ``sqlite3 -json``;
- slower than any other peer (sqlite-utils, stdlib, polars), on any archive;
- the 500-post export taking 1 s or more;
- ``--jobs 2`` not faster than ``--jobs 1``, or a --jobs run's memray peak above 500 MB.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from benchmarks import report
from benchmarks.archives import HUGE_POSTS, archive, count_posts, huge_archive, warm
from benchmarks.measure import CACHE, ROOT, Run, timed
from benchmarks.ours import export_cmd, memray_peak
from benchmarks.peers import FAMILIES, Peer, select

FORMATS = ("csv", "json", "ndjson", "parquet")
TEXT_FORMATS = ("csv", "json", "ndjson")
ALL = "csv+json+ndjson"
PEAK_LIMIT = 500 * 10**6  # bytes
GROWTH_LIMIT = 1.2  # memray peak at 1M / at 100k
SPEED_TARGET = 1.5  # sqlite3 time / our time at 1M, csv and json
SMALL_POSTS = 500
SMALL_LIMIT_S = 1.0
OURS_TIMEOUT_S = 900
PEER_TIMEOUT_S = 600
HUGE_PEER_TIMEOUT_S = 180  # peers slower than this on the huge-row archive are skipped
HUGE_PEER_REPEAT_S = 20  # ... and those slower than this are run once only
PEER_RSS_LIMIT_MIB = 8192  # a peer past this is killed and reported as failed
JOBS = (1, 2, 4)

_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def _runs_json(runs: list[Run]) -> dict[str, object]:
    return {
        "wall_s": [round(r.wall, 3) for r in runs],
        "rss_kib": [r.rss_kib for r in runs],
        "hwm_kib": [r.hwm_kib for r in runs],
        "floor_kib": [r.floor_kib for r in runs],
    }


def _summary(runs: list[Run], posts: int) -> dict[str, object]:
    ok = [r for r in runs if r.ok]
    out: dict[str, object] = {"status": "ok" if ok else "failed", **_runs_json(ok)}
    if ok:
        best = min(r.wall for r in ok)
        out.update(
            best_s=round(best, 3),
            median_s=round(statistics.median(r.wall for r in ok), 3),
            rows_per_s=round(posts / best),
            peak_rss_kib=max(r.rss_kib for r in ok),
            peak_hwm_kib=max(r.hwm_kib for r in ok),
            floor_kib=max(r.floor_kib for r in ok),
        )
    errors = [r.error for r in runs if not r.ok]
    if errors:
        out["errors"] = errors
    return out


def _memray(label: str, db: Path, work: Path, fmt: str, runs: int) -> dict[str, object]:
    """memray's peak of ``runs`` exports of ``fmt``, one process each: the median (one run's
    peak varies by about ±10%) as ``memray_peak_bytes`` (None if a run failed), every run's
    peak, the largest peak RSS and the wall times of those runs (not the timed runs')."""
    peaks: list[int] = []
    rss: list[int] = []
    walls: list[float] = []
    error = None
    for i in range(runs):
        t0 = time.perf_counter()
        peak, r = memray_peak(db, work, tuple(fmt.split("+")), timeout=OURS_TIMEOUT_S * 3)
        log(
            f"{label} memray {i + 1}/{runs} {fmt}: "
            + (f"peak {peak / 2**20:.0f} MiB, RSS {r.rss_kib / 1024:.0f} MiB" if peak else f"FAILED {r.error}")
            + f" ({time.perf_counter() - t0:.0f} s)"
        )
        rss.append(r.rss_kib)
        walls.append(round(r.wall, 3))
        if peak is None:
            error = r.error or "no peak recorded"
            break
        peaks.append(peak)
    return {
        "memray_peak_bytes": None if error else round(statistics.median(peaks)),
        "memray_peaks_bytes": peaks,
        "memray_rss_kib": max(rss),
        "memray_wall_s": walls,
        "memray_error": error,
    }


def bench_archive(
    label: str,
    db: Path,
    formats: list[str],
    peers: list[Peer],
    runs: int,
    work: Path,
    *,
    huge: bool,
    trace: bool,
    memray_runs: int = 3,
) -> dict[str, object]:
    posts = count_posts(db)
    log(f"{label}: {db} ({posts:,} posts, {db.stat().st_size / 1e9:.2f} GB); warming the page cache")
    warm(db)
    ours_formats = list(formats) + ([ALL] if not huge and set(TEXT_FORMATS) <= set(formats) else [])
    ours: dict[str, list[Run]] = {f: [] for f in ours_formats}
    peer_runs: dict[str, list[Run]] = {p.name: [] for p in peers}
    stopped: dict[str, str] = {}  # peer name -> why it is not run again
    traces: dict[str, list[tuple[float, float]]] = {}
    peer_timeout = HUGE_PEER_TIMEOUT_S if huge else PEER_TIMEOUT_S
    for i in range(runs):  # interleaved: every tool sees the same machine state
        for fmt in ours_formats:
            out = work / "ours"
            r = timed(export_cmd(db, out, tuple(fmt.split("+"))), timeout=OURS_TIMEOUT_S, trace=trace and fmt == "csv")
            shutil.rmtree(out, ignore_errors=True)
            ours[fmt].append(r)
            log(
                f"{label} run {i + 1}/{runs} {fmt:<6} pipeline: " + (f"{r.wall:.2f} s" if r.ok else f"FAILED {r.error}")
            )
            if r.ok and r.trace:
                traces["pipeline export (csv)"] = r.trace
            for peer in (p for p in peers if p.format == fmt):
                if peer.name in stopped:
                    continue
                out = work / f"peer.{peer.format}"
                cmd, stdout = peer.command(db, out)
                r = timed(
                    cmd,
                    stdout=stdout,
                    timeout=peer_timeout,
                    rss_limit_mib=PEER_RSS_LIMIT_MIB,
                    trace=trace and peer.family == "polars" and fmt == "csv",
                )
                out.unlink(missing_ok=True)
                peer_runs[peer.name].append(r)
                log(f"{label} run {i + 1}/{runs} {fmt:<6} {peer.name}: " + (f"{r.wall:.2f} s" if r.ok else r.error))
                if r.ok and r.trace:
                    traces[f"{peer.name} (whole table)"] = r.trace
                if not r.ok:
                    stopped[peer.name] = (
                        f"skipped on this archive: slower than {peer_timeout} s"
                        if r.error and r.error.startswith("timed out")
                        else f"failed: {r.error}"
                    )
                elif huge and r.wall > HUGE_PEER_REPEAT_S:
                    stopped[peer.name] = f"run once on this archive (took {r.wall:.0f} s)"
    memory: dict[str, dict[str, object]] = {}
    for fmt in ours_formats:
        memory[fmt] = _memray(label, db, work, fmt, memray_runs)
    result: dict[str, object] = {
        "path": str(db),
        "posts": posts,
        "archive_bytes": db.stat().st_size,
        "ours": {f: {**_summary(ours[f], posts), **memory[f]} for f in ours_formats},
        "peers": {},
    }
    our_best = {f: v.get("best_s") for f, v in result["ours"].items()}  # type: ignore[union-attr]
    for peer in peers:
        s = _summary(peer_runs[peer.name], posts)
        s.update(format=peer.format, family=peer.family, whole_table=peer.whole_table)
        if peer.name in stopped:
            s["note"] = stopped[peer.name]
        if s["status"] == "ok" and our_best.get(peer.format):
            s["ratio"] = round(s["best_s"] / our_best[peer.format], 3)  # type: ignore[operator]
            ours_median = result["ours"][peer.format].get("median_s")  # type: ignore[index]
            s["median_ratio"] = round(s["median_s"] / ours_median, 3)  # type: ignore[operator]
        result["peers"][peer.name] = s  # type: ignore[index]
    if traces:
        result["traces"] = traces
    return result


def bench_small(work: Path) -> dict[str, object]:
    db = archive(SMALL_POSTS)
    runs = []
    for i in range(5):
        r = timed(export_cmd(db, work / f"small{i}", ("csv",)), timeout=60)
        shutil.rmtree(work / f"small{i}", ignore_errors=True)
        runs.append(r)
    ok = [r.wall for r in runs if r.ok]
    log(f"{SMALL_POSTS}-post export: " + ", ".join(f"{w:.2f}" for w in ok) + " s")
    return {
        "posts": SMALL_POSTS,
        "runs_s": [round(w, 3) for w in ok],
        "median_s": round(statistics.median(ok), 3) if ok else None,
        "max_s": round(max(ok), 3) if ok else None,
        "errors": [r.error for r in runs if not r.ok],
    }


def bench_jobs(db: Path, runs: int, work: Path) -> dict[str, object]:
    """Every record type of ``db`` and its ops, csv and json, at each --jobs value (interleaved)."""
    formats = ("csv", "json")
    times: dict[int, list[Run]] = {j: [] for j in JOBS}
    for i in range(runs):
        for j in JOBS:
            out = work / f"jobs{j}"
            r = timed(export_cmd(db, out, formats, ("--ops", "--jobs", str(j))), timeout=OURS_TIMEOUT_S)
            shutil.rmtree(out, ignore_errors=True)
            times[j].append(r)
            log(f"jobs run {i + 1}/{runs} --jobs {j}: " + (f"{r.wall:.2f} s" if r.ok else f"FAILED {r.error}"))
    result: dict[str, object] = {"archive": str(db), "formats": list(formats), "jobs": {}}
    for j in JOBS:
        peak, r = memray_peak(db, work, formats, ("--ops", "--jobs", str(j)), timeout=OURS_TIMEOUT_S * 3)
        log(f"jobs memray --jobs {j} (one run): " + (f"peak {peak / 2**20:.0f} MiB" if peak else f"FAILED {r.error}"))
        ok = [x for x in times[j] if x.ok]
        result["jobs"][str(j)] = {  # type: ignore[index]
            **_runs_json(ok),
            "best_s": round(min(x.wall for x in ok), 3) if ok else None,
            "median_s": round(statistics.median(x.wall for x in ok), 3) if ok else None,
            "peak_rss_kib": max((x.rss_kib for x in ok), default=None),
            "memray_peak_bytes": peak,
            "memray_rss_kib": r.rss_kib,
            "errors": [x.error for x in times[j] if not x.ok] + ([r.error] if r.error else []),
        }
    return result


def check(results: dict[str, object]) -> list[dict[str, object]]:
    """Every target: {"target", "ok" (True, False, or None if not measured), "detail"}."""
    checks: list[dict[str, object]] = []

    def add(target: str, ok: bool | None, detail: str) -> None:
        checks.append({"target": target, "ok": ok, "detail": detail})

    archives: dict[str, dict] = results["archives"]  # type: ignore[assignment]
    for label, a in archives.items():
        for fmt, o in a["ours"].items():
            if o["status"] != "ok" or o.get("memray_peak_bytes") is None:
                errors = [*o.get("errors", []), o.get("memray_error", o.get("error"))]
                add(f"{label} {fmt}: export runs", False, "; ".join(filter(None, errors)))
                continue
            peak = o["memray_peak_bytes"]
            add(
                f"{label} {fmt}: memray peak <= 500 MB",
                peak <= PEAK_LIMIT,
                f"{peak / 1e6:.0f} MB ({peak / 2**20:.0f} MiB)",
            )
    if "100k" in archives and "1M" in archives:
        for fmt, big in archives["1M"]["ours"].items():
            small = archives["100k"]["ours"].get(fmt, {})
            if big.get("memray_peak_bytes") and small.get("memray_peak_bytes"):
                growth = big["memray_peak_bytes"] / small["memray_peak_bytes"]
                add(f"{fmt}: memray peak 1M <= {GROWTH_LIMIT}x 100k", growth <= GROWTH_LIMIT, f"{growth:.2f}x")
    for fmt, name in (("csv", "sqlite3 -csv -header"), ("json", "sqlite3 -json")):
        peer = archives.get("1M", {}).get("peers", {}).get(name)
        target = f"{fmt} at 1M >= {SPEED_TARGET}x as fast as {name}"
        if peer and "ratio" in peer:
            add(target, peer["ratio"] >= SPEED_TARGET, f"{peer['ratio']:.2f}x (median {peer['median_ratio']:.2f}x)")
        else:
            add(target, None, "not measured")
    for label, a in archives.items():
        for name, p in a["peers"].items():
            if p["family"] == "sqlite3":
                continue
            target = f"{label} {p['format']}: faster than {name}"
            if "ratio" in p:
                add(target, p["ratio"] > 1, f"{p['ratio']:.2f}x")
            else:
                add(target, None, p.get("note", "not measured"))
    small = results.get("small")
    if small:
        add(
            f"{SMALL_POSTS}-post export < {SMALL_LIMIT_S:.0f} s (median of 5)",
            small["median_s"] is not None and small["median_s"] < SMALL_LIMIT_S,
            f"{small['median_s']} s",
        )
    jobs = results.get("jobs")
    if jobs:
        j = jobs["jobs"]
        if j["1"]["best_s"] and j["2"]["best_s"]:
            add(
                "--jobs 2 faster than --jobs 1",
                j["2"]["best_s"] < j["1"]["best_s"],
                f"{j['2']['best_s']} s vs {j['1']['best_s']} s",
            )
        for n, v in j.items():
            peak = v["memray_peak_bytes"]
            add(f"--jobs {n}: memray peak <= 500 MB", bool(peak) and peak <= PEAK_LIMIT, f"{(peak or 0) / 1e6:.0f} MB")
    return checks


def machine() -> dict[str, object]:
    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    def run(cmd: list[str]) -> str | None:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=ROOT).stdout.strip() or None
        except OSError:
            return None

    def field(path: str, key: str) -> str | None:
        try:
            with open(path) as f:
                return next((x.split(":", 1)[1].strip() for x in f if x.startswith(key)), None)
        except OSError:
            return None

    cpu = field("/proc/cpuinfo", "model name")
    mem = field("/proc/meminfo", "MemTotal")
    sqlite3_cli = shutil.which("sqlite3")
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_total_mib": int(mem.split()[0]) // 1024 if mem else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        **{dist: version(dist) for dist in ("pyarrow", "polars", "adbc-driver-sqlite", "memray", "sqlite-utils")},
        "sqlite3_cli": run([sqlite3_cli, "--version"]).split()[0] if sqlite3_cli else None,  # type: ignore[union-attr]
        "git_commit": run(["git", "rev-parse", "--short", "HEAD"]),
        "git_dirty": bool(run(["git", "status", "--porcelain", "--", "pipeline", "cli.py"])),
        "load_average_at_start": os.getloadavg(),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=3, help="interleaved runs per tool (default 3); best and median")
    ap.add_argument(
        "--memray-runs", type=int, default=3, help="memray runs per export (default 3); the median peak is reported"
    )
    ap.add_argument("--archive-1m", type=Path, help="an existing 1,000,000-post seed-1 archive (e.g. /tmp/big.db)")
    ap.add_argument("--quick", action="store_true", help="the 100k archive only: no 1M, huge-row or --jobs benchmark")
    ap.add_argument("--skip-peers", default="", help=f"peers not to run, comma-separated: {', '.join(FAMILIES)}")
    ap.add_argument("--only", default=",".join(FORMATS), help="formats, comma-separated (default: all four)")
    ap.add_argument("--no-jobs", action="store_true", help="skip the --jobs benchmark")
    ap.add_argument(
        "--from-json",
        type=Path,
        metavar="PATH",
        help="run nothing: rewrite latest.md, chart.png and the README from a results file (e.g. latest.json)",
    )
    args = ap.parse_args(argv)
    args.formats = [f.strip() for f in args.only.split(",") if f.strip()]
    if bad := [f for f in args.formats if f not in FORMATS]:
        ap.error(f"--only: unknown format(s) {', '.join(bad)}")
    args.skip = {s.strip() for s in args.skip_peers.split(",") if s.strip()}
    if args.runs < 1 or args.memray_runs < 1:
        ap.error("--runs and --memray-runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        report.rewrite(args.from_json)
        return 0
    if shutil.which("sqlite3") is None and "sqlite3" not in args.skip:
        raise SystemExit("the sqlite3 command-line tool is a peer (apt-get install sqlite3), or --skip-peers sqlite3")
    peers = select(args.formats, args.skip)
    results: dict[str, object] = {
        "machine": machine(),
        "options": {
            "runs": args.runs,
            "memray_runs": args.memray_runs,
            "quick": args.quick,
            "formats": args.formats,
            "peers": [p.name for p in peers],
            "argv": sys.argv[1:] if argv is None else argv,
        },
        "archives": {},
    }
    plan: list[tuple[str, Path, bool]] = [("100k", archive(100_000), False)]
    if not args.quick:
        plan.append(("1M", args.archive_1m or archive(1_000_000), False))
        plan.append(("huge", huge_archive(), True))
    CACHE.mkdir(parents=True, exist_ok=True)
    trace_label = plan[-1][0] if args.quick else "1M"
    with tempfile.TemporaryDirectory(prefix="bench-", dir=CACHE) as tmp:
        work = Path(tmp)
        for label, db, huge in plan:
            t0 = time.perf_counter()
            results["archives"][label] = bench_archive(  # type: ignore[index]
                label,
                db,
                args.formats,
                peers,
                args.runs,
                work,
                huge=huge,
                trace=label == trace_label,
                memray_runs=args.memray_runs,
            )
            log(f"{label} done in {time.perf_counter() - t0:.0f} s")
        results["small"] = bench_small(work)
        if not (args.quick or args.no_jobs):
            t0 = time.perf_counter()
            results["jobs"] = bench_jobs(plan[1][1], args.runs, work)
            log(f"--jobs benchmark done in {time.perf_counter() - t0:.0f} s")
    results["huge_posts"] = HUGE_POSTS
    results["checks"] = check(results)
    results["total_s"] = round(time.perf_counter() - _T0, 1)
    failed = [c for c in results["checks"] if c["ok"] is False]  # type: ignore[union-attr]
    report.write(results)
    print(report.markdown(results))
    for c in failed:
        print(f"FAIL: {c['target']}: {c['detail']}", file=sys.stderr)
    log(f"done; {len(failed)} target(s) missed" if failed else "done; every target met")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
