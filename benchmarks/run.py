"""``python -m benchmarks``: time ``pipeline run export`` against its peers, measure its memory, write the results.

Archives (seeded, cached in benchmarks/.cache/): 100,000 posts; 1,000,000 posts;
2,000 posts of ~1.5 MB each (the "huge-row" archive); the realistic archive, in
bskyarchive's own storage (300,000 posts, ``--realistic-posts``; rowid order is
almost time order); and a shuffled copy of it (the same rows inserted in a seeded
random order, so rowid order is not time order). For each, warm page cache,
``--runs`` interleaved runs: every format alone (csv, json, ndjson; and all three at
once on the regular archives) exported by ``pipeline run export --types posts``,
each followed by the peers of that format dumping the same posts sorted by
``ORDER BY created_at DESC, uri``. Then each export under memray, ``--memray-runs``
times (default 3; the median peak is reported: one run's peak varies by about ±10%),
one Tracker per process, so each in a process of its own. Then a 500-post export
timed from process start to exit (median of 5); every record type of the realistic
archive with --ops at --jobs 1, 2 and 4; and memory at scale: csv, json, ndjson and
all three at once on the 1M archive (and the 10M one with ``--scale 10m`` or
``--archive-10m PATH``), each run once on the quiet machine and once beside a
CPU-bound competitor for both cores (see benchmarks/load.py).

``--issue17`` runs only what issue 17 accepts: the realistic, 1M and shuffled
archives (csv and json against the sqlite3 CLI), --jobs on the realistic archive,
and memory at scale. ``--quick`` runs the 100k archive and the 500-post export only.

Writes benchmarks/results/latest.json (everything, every run), latest.md (the
tables), chart.png, and the README's Performance tables (between the
``<!-- bench:start -->`` and ``<!-- bench:end -->`` lines). Exits 1, with FAIL
lines, if a target is missed:

- memray peak of any export above 500 MB (500 * 10**6 bytes);
- memray peak at 1M above 1.2x the peak at 100k, for the same format;
- CSV less than 1.0x as fast as ``sqlite3 -csv``, JSON less than 1.0x as fast as
  ``sqlite3 -json``, on the realistic, 1M and shuffled archives (1.5x, the stretch
  goal, is reported, never failed);
- slower than any other peer (sqlite-utils, stdlib, polars), on any archive;
- the 500-post export taking 1 s or more;
- ``--jobs 2`` less than 1.2x as fast as ``--jobs 1`` (realistic archive, every type
  and --ops), or a --jobs run's memray peak above 500 MB;
- at scale, quiet or loaded: a peak RSS above 500 MB; at 10M, a peak RSS above 1.2x
  the 1M peak of the same format and condition, or a quiet time per million rows
  above 1.2x the 1M one (the 10M checks are "n/a" unless 10M was measured).
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

from benchmarks import report, scale
from benchmarks.archives import (
    HUGE_POSTS,
    REALISTIC_POSTS,
    archive,
    check_export_disk,
    count_posts,
    huge_archive,
    realistic_archive,
    scale_archive,
    shuffled_archive,
    warm,
)
from benchmarks.measure import CACHE, RESULTS, ROOT, Run, timed
from benchmarks.ours import export_cmd, memray_peak
from benchmarks.peers import FAMILIES, Peer, select

FORMATS = ("csv", "json", "ndjson", "parquet")
TEXT_FORMATS = ("csv", "json", "ndjson")
ALL = "csv+json+ndjson"
PEAK_LIMIT = 500 * 10**6  # bytes
GROWTH_LIMIT = 1.2  # memray peak at 1M / at 100k
SPEED_TARGET = 1.0  # sqlite3 time / our time, csv and json, on SPEED_ARCHIVES
SPEED_STRETCH = 1.5  # reported, never failed
SPEED_ARCHIVES = ("realistic", "1M", "shuffled")
SQLITE3_PEERS = (("csv", "sqlite3 -csv -header"), ("json", "sqlite3 -json"))
JOBS_SPEEDUP = 1.2  # --jobs 1 time / --jobs 2 time, realistic archive
SCALE_GROWTH = 1.2  # peak RSS at 10M / at 1M, and time per million rows at 10M / at 1M
SCALE_FORMATS = ("csv", "json", "ndjson", "csv+json+ndjson")
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


def bench_jobs(label: str, db: Path, runs: int, work: Path) -> dict[str, object]:
    """Every record type of ``db`` and its ops, csv and json, at each --jobs value (interleaved)."""
    log(f"jobs: every type of the {label} archive, --ops; warming the page cache")
    warm(db)
    formats = ("csv", "json")
    times: dict[int, list[Run]] = {j: [] for j in JOBS}
    for i in range(runs):
        for j in JOBS:
            out = work / f"jobs{j}"
            r = timed(export_cmd(db, out, formats, ("--ops", "--jobs", str(j))), timeout=OURS_TIMEOUT_S)
            shutil.rmtree(out, ignore_errors=True)
            times[j].append(r)
            log(f"jobs run {i + 1}/{runs} --jobs {j}: " + (f"{r.wall:.2f} s" if r.ok else f"FAILED {r.error}"))
    result: dict[str, object] = {"label": label, "archive": str(db), "formats": list(formats), "jobs": {}}
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
    """Every target: {"target", "ok" (True, False, or None if not measured), "detail"}; "info": True marks
    one that is reported only (a stretch goal, a comparison), never a FAIL."""
    checks: list[dict[str, object]] = []

    def add(target: str, ok: bool | None, detail: str) -> None:
        checks.append(_check(target, ok, detail))

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
    checks += _speed_checks(archives)
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
        where = jobs.get("label", "1M")
        if j["1"]["best_s"] and j["2"]["best_s"]:
            speedup = j["1"]["best_s"] / j["2"]["best_s"]
            add(
                f"{where}, every type and --ops: --jobs 2 >= {JOBS_SPEEDUP}x as fast as --jobs 1",
                speedup >= JOBS_SPEEDUP,
                f"{speedup:.2f}x ({j['2']['best_s']} s vs {j['1']['best_s']} s)",
            )
        else:
            add(f"{where}: --jobs 1 and 2 run", False, "; ".join(j["1"]["errors"] + j["2"]["errors"]))
        for n, v in j.items():
            peak = v["memray_peak_bytes"]
            add(f"--jobs {n}: memray peak <= 500 MB", bool(peak) and peak <= PEAK_LIMIT, f"{(peak or 0) / 1e6:.0f} MB")
    if results.get("scale"):
        checks += _scale_checks(results["scale"])  # type: ignore[arg-type]
    return checks


def _check(target: str, ok: bool | None, detail: str, *, info: bool = False) -> dict[str, object]:
    return {"target": target, "ok": ok, "detail": detail, **({"info": True} if info else {})}


def _speed_checks(archives: dict[str, dict]) -> list[dict[str, object]]:
    """Our csv and json against the sqlite3 CLI's on each SPEED_ARCHIVES archive measured: the 1.0x target
    (a FAIL when missed), the 1.5x stretch (information), and the shuffled archive's time against the
    realistic one's (information: the shuffled one must not be slower than before, which needs a baseline)."""
    out = []
    for label in (x for x in SPEED_ARCHIVES if x in archives):
        for fmt, name in SQLITE3_PEERS:
            peer = archives[label]["peers"].get(name)
            target = f"{label} {fmt}: >= {SPEED_TARGET}x as fast as {name}"
            if peer and "ratio" in peer:
                detail = f"{peer['ratio']:.2f}x (median {peer['median_ratio']:.2f}x)"
                out.append(_check(target, peer["ratio"] >= SPEED_TARGET, detail))
                stretch = f"{label} {fmt}: stretch >= {SPEED_STRETCH}x as fast as {name}"
                out.append(_check(stretch, peer["ratio"] >= SPEED_STRETCH, detail, info=True))
            else:
                out.append(_check(target, None, "not measured"))
    if "realistic" in archives and "shuffled" in archives:
        for fmt in ("csv", "json"):
            real = archives["realistic"]["ours"].get(fmt, {}).get("best_s")
            shuf = archives["shuffled"]["ours"].get(fmt, {}).get("best_s")
            if real and shuf:
                out.append(
                    _check(
                        f"shuffled {fmt}: time / realistic {fmt} time",
                        None,
                        f"{shuf / real:.2f}x ({shuf} s vs {real} s)",
                        info=True,
                    )
                )
    return out


def _scale_checks(sc: dict[str, object]) -> list[dict[str, object]]:
    """Peak RSS under 500 MB for every scale run; at 10M, peak RSS and quiet time per million rows within
    SCALE_GROWTH of 1M's, per format and condition ("n/a" when 10M was not measured)."""
    out = []
    archives: dict[str, dict] = sc["archives"]  # type: ignore[assignment]
    for label, a in archives.items():
        for fmt, conds in a["formats"].items():
            for cond, v in conds.items():
                peak = v.get("max_peak_kib")
                if peak is None:
                    out.append(_check(f"scale {label} {fmt} {cond}: export runs", False, "; ".join(v["errors"])))
                    continue
                out.append(
                    _check(
                        f"scale {label} {fmt} {cond}: peak RSS <= 500 MB",
                        peak * 1024 <= PEAK_LIMIT,
                        f"{peak * 1024 / 1e6:.0f} MB ({peak / 1024:.0f} MiB)",
                    )
                )
    small, big = archives.get("1M"), archives.get("10M")
    for fmt in SCALE_FORMATS:
        for cond in scale.CONDITIONS:
            target = f"scale {fmt} {cond}: peak RSS at 10M <= {SCALE_GROWTH}x at 1M"
            s = (small or {}).get("formats", {}).get(fmt, {}).get(cond, {})
            b = (big or {}).get("formats", {}).get(fmt, {}).get(cond, {})
            if not big:
                out.append(_check(target, None, "10M not measured (--scale 10m or --archive-10m PATH)"))
            elif s.get("max_peak_kib") and b.get("max_peak_kib"):
                growth = b["max_peak_kib"] / s["max_peak_kib"]
                out.append(_check(target, growth <= SCALE_GROWTH, f"{growth:.2f}x"))
            else:
                out.append(_check(target, None, "a run failed"))
        target = f"scale {fmt} quiet: time per million rows at 10M <= {SCALE_GROWTH}x at 1M"
        s = (small or {}).get("formats", {}).get(fmt, {}).get("quiet", {})
        b = (big or {}).get("formats", {}).get(fmt, {}).get("quiet", {})
        if not big:
            out.append(_check(target, None, "10M not measured (--scale 10m or --archive-10m PATH)"))
        elif s.get("s_per_million") and b.get("s_per_million"):
            growth = b["s_per_million"] / s["s_per_million"]
            detail = f"{growth:.2f}x ({b['s_per_million']} s vs {s['s_per_million']} s per million)"
            out.append(_check(target, growth <= SCALE_GROWTH, detail))
        else:
            out.append(_check(target, None, "a run failed"))
    return out


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
    ap.add_argument(
        "--realistic",
        type=Path,
        metavar="PATH",
        help="an existing realistic (bskyarchive-style, seed-1) archive, read only; its shuffled copy is cached",
    )
    ap.add_argument(
        "--realistic-posts",
        type=int,
        default=REALISTIC_POSTS,
        metavar="N",
        help=f"posts in the realistic archive when it is generated (default {REALISTIC_POSTS:,})",
    )
    ap.add_argument(
        "--scale",
        choices=("1m", "10m"),
        default="1m",
        help="memory at scale up to 1M posts (default) or 10M too: builds the 10M archive (~13 GB, long) if not cached",
    )
    ap.add_argument(
        "--archive-10m", type=Path, metavar="PATH", help="an existing 10,000,000-post archive (implies --scale 10m)"
    )
    ap.add_argument("--no-scale", action="store_true", help="skip memory at scale (quiet and loaded)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="the 100k archive and the 500-post export only")
    mode.add_argument(
        "--issue17",
        action="store_true",
        help="only issue 17's set: realistic, 1M and shuffled archives (csv, json; the sqlite3 peers unless "
        "--skip-peers names others), --jobs on the realistic archive, memory at scale",
    )
    ap.add_argument("--skip-peers", help=f"peers not to run, comma-separated: {', '.join(FAMILIES)}")
    ap.add_argument("--only", help="formats, comma-separated (default: all four; csv,json with --issue17)")
    ap.add_argument("--no-jobs", action="store_true", help="skip the --jobs benchmark")
    ap.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        metavar="DIR",
        help="where latest.json, latest.md and chart.png go (default benchmarks/results)",
    )
    ap.add_argument("--no-readme", action="store_true", help="do not rewrite the README's Performance tables")
    ap.add_argument(
        "--from-json",
        type=Path,
        metavar="PATH",
        help="run nothing: rewrite latest.md, chart.png and the README from a results file (e.g. latest.json)",
    )
    args = ap.parse_args(argv)
    only = args.only if args.only is not None else ("csv,json" if args.issue17 else ",".join(FORMATS))
    args.formats = [f.strip() for f in only.split(",") if f.strip()]
    if bad := [f for f in args.formats if f not in FORMATS]:
        ap.error(f"--only: unknown format(s) {', '.join(bad)}")
    default_skip = ",".join(f for f in FAMILIES if f != "sqlite3") if args.issue17 else ""
    skip = args.skip_peers if args.skip_peers is not None else default_skip
    args.skip = {s.strip() for s in skip.split(",") if s.strip()}
    if args.runs < 1 or args.memray_runs < 1:
        ap.error("--runs and --memray-runs must be at least 1")
    if args.realistic_posts < 1:
        ap.error("--realistic-posts must be at least 1")
    for name in ("archive_1m", "archive_10m", "realistic"):
        path = getattr(args, name)
        if path is not None and not path.is_file():
            ap.error(f"--{name.replace('_', '-')}: no such file: {path}")
    return args


def plan_archives(args: argparse.Namespace) -> list[tuple[str, Path, bool]]:
    """(label, archive, huge) for every archive timed against the peers, in the order run."""
    if args.quick:
        return [("100k", archive(100_000), False)]
    realistic = args.realistic or realistic_archive(args.realistic_posts)
    one_m = args.archive_1m or archive(1_000_000)
    issue17 = [("realistic", realistic, False), ("1M", one_m, False), ("shuffled", shuffled_archive(realistic), False)]
    if args.issue17:
        return issue17
    return [("100k", archive(100_000), False), issue17[1], ("huge", huge_archive(), True), issue17[0], issue17[2]]


def plan_scale(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """(label, archive) for memory at scale: the 1M archive, and the 10M one when asked for (its disk check
    and build come first, so a full disk stops the run before anything else is made)."""
    if args.quick or args.no_scale:
        return []
    if args.archive_10m:
        check_export_disk(args.archive_10m)
    ten_m = args.archive_10m or (scale_archive() if args.scale == "10m" else None)
    return [("1M", args.archive_1m or archive(1_000_000))] + ([("10M", ten_m)] if ten_m else [])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    readme = None if args.no_readme else report.README
    if args.from_json:
        report.rewrite(args.from_json, args.results, readme)
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
            "issue17": args.issue17,
            "formats": args.formats,
            "peers": [p.name for p in peers],
            "argv": sys.argv[1:] if argv is None else argv,
        },
        "archives": {},
    }
    scale_plan = plan_scale(args)
    plan = plan_archives(args)
    paths = {label: db for label, db, _ in plan}
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
        if not args.issue17:
            results["small"] = bench_small(work)
        if not (args.quick or args.no_jobs):
            t0 = time.perf_counter()
            results["jobs"] = bench_jobs("realistic", paths["realistic"], args.runs, work)
            log(f"--jobs benchmark done in {time.perf_counter() - t0:.0f} s")
        if scale_plan:
            results["scale"] = scale.bench(scale_plan, list(SCALE_FORMATS), args.runs, work, log)
    results["huge_posts"] = HUGE_POSTS
    results["checks"] = check(results)
    results["total_s"] = round(time.perf_counter() - _T0, 1)
    failed = [c for c in results["checks"] if c["ok"] is False and not c.get("info")]  # type: ignore[union-attr]
    report.write(results, args.results, readme)
    print(report.markdown(results))
    for c in failed:
        print(f"FAIL: {c['target']}: {c['detail']}", file=sys.stderr)
    log(f"done; {len(failed)} target(s) missed" if failed else "done; every target met")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
