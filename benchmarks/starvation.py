"""``python -m benchmarks.starvation``: how many of a concurrent writer's commits fail while an export runs.

The archive's writer (the Go program bskyarchive) uses SQLite in rollback-journal
mode (journal_mode=DELETE, not WAL) with no busy timeout: while any reader holds
a SHARED lock, its COMMIT fails at once with SQLITE_BUSY ("database is locked")
and the posts of that commit are dropped. This benchmark stands in for it with a
writer process (Python's sqlite3, ``timeout=0`` so busy_timeout is 0, autocommit)
that loops ``BEGIN IMMEDIATE; INSERT one post; COMMIT``, sleeping ``--interval-ms``
between attempts, and counts the attempts that fail.

Each run, on a fresh copy of the cached ``--posts`` archive (journal_mode set to
DELETE): the writer starts, runs alone for ``--lead`` seconds (the baseline: no
reader, no failures expected), the export command runs to its end, the writer runs
``--tail`` seconds more and stops. Its attempts are split into three windows by
their start time: lead, export (from the export's spawn to its exit) and tail.
Then, unless ``--no-control``, the same writer runs alone on the same copy for the
same lead + export + tail durations: the control, the failures no reader causes.

``--pipeline`` is the export command, a template with ``{python}`` (this Python),
``{root}`` (this checkout), ``{archive}`` (the run's copy) and ``{out}`` (a fresh
output folder). ``--vs`` is a second command, run alternately with the first
(A, B, A, B, ...); the summary gives both medians and the ratio B/A of the median
failures. To compare another checkout's code (run with this venv) with this one's::

    B=/tmp/before
    python -m benchmarks.starvation --names before,after --json benchmarks/results/starvation.json \\
        --pipeline "env PYTHONPATH=$B {python} $B/cli.py run export {archive} --out {out} --format csv --format json" \\
        --vs "{python} {root}/cli.py run export {archive} --out {out} --format csv --format json"

Prints a table; ``--json`` writes every run and the summary.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.archives import archive
from benchmarks.measure import CACHE, ROOT

DEFAULT_PIPELINE = "{python} {root}/cli.py run export {archive} --out {out} --format csv --format json"
WINDOWS = ("lead", "export", "tail")
# Outcomes of one writer attempt, as one character each in the writer's log.
OK, BUSY_BEGIN, BUSY_INSERT, BUSY_COMMIT, OTHER = "o", "b", "i", "c", "e"
FAILED = BUSY_BEGIN + BUSY_INSERT + BUSY_COMMIT + OTHER


# --- the writer process -------------------------------------------------------------------------------------------


def _go_time() -> str:
    """Now, as Go's database/sql drivers store a time.Time (``2006-01-02 15:04:05.999999999-07:00``)."""
    now = datetime.datetime.now(datetime.UTC)
    return now.strftime("%Y-%m-%d %H:%M:%S.%f") + "000+00:00"


def _busy(e: sqlite3.OperationalError) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(e) or "busy" in str(e)


def writer_main(db: Path, interval_s: float) -> int:
    """Insert one post per transaction until stdin closes or SIGTERM; print one JSON line of counts and a log.

    Prints ``ready`` once connected. The log is every attempt's start (time.monotonic(),
    the system-wide CLOCK_MONOTONIC on Linux, comparable with the parent's) and outcome.
    """
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())

    def wait_eof() -> None:
        sys.stdin.buffer.read()
        stop.set()

    con = sqlite3.connect(db, timeout=0, isolation_level=None)
    mode = con.execute("PRAGMA journal_mode").fetchone()[0]
    busy_timeout = con.execute("PRAGMA busy_timeout").fetchone()[0]
    threading.Thread(target=wait_eof, daemon=True).start()
    print("ready", flush=True)

    times: list[float] = []
    codes: list[str] = []
    durations: list[float] = []
    others: dict[str, int] = {}
    did = "did:plc:starvationwriter"
    prefix = f"{time.time_ns():x}"
    n = 0
    while not stop.is_set():
        n += 1
        t = time.monotonic()
        step = BUSY_BEGIN
        try:
            con.execute("BEGIN IMMEDIATE")
            step = BUSY_INSERT
            now = _go_time()
            con.execute(
                "INSERT INTO posts (uri, cid, did, text, created_at, indexed_at, archived_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (f"at://{did}/app.bsky.feed.post/{prefix}-{n}", f"bafyrei{prefix}{n:08d}", did, f"post {n}")
                + (now, now, now),
            )
            step = BUSY_COMMIT
            con.execute("COMMIT")
            code = OK
        except sqlite3.Error as e:
            if isinstance(e, sqlite3.OperationalError) and _busy(e):
                code = step
            else:
                code = OTHER
                key = f"{type(e).__name__}: {e}"
                others[key] = others.get(key, 0) + 1
            if con.in_transaction:
                try:
                    con.execute("ROLLBACK")
                except sqlite3.Error as e2:
                    key = f"ROLLBACK {type(e2).__name__}: {e2}"
                    others[key] = others.get(key, 0) + 1
        durations.append(time.monotonic() - t)
        times.append(t)
        codes.append(code)
        stop.wait(interval_s)
    con.close()
    log = "".join(codes)
    ok = [d for d, c in zip(durations, log, strict=True) if c == OK]
    result = {
        "pid": os.getpid(),
        "journal_mode": mode,
        "busy_timeout": busy_timeout,
        "attempts": len(log),
        "ok": log.count(OK),
        "failed": len(log) - log.count(OK),
        "busy_begin": log.count(BUSY_BEGIN),
        "busy_insert": log.count(BUSY_INSERT),
        "busy_commit": log.count(BUSY_COMMIT),
        "other": others,
        "ok_ms_median": round(statistics.median(ok) * 1000, 3) if ok else None,
        "ok_ms_max": round(max(ok) * 1000, 3) if ok else None,
        "times": [round(x, 5) for x in times],
        "codes": log,
    }
    print(json.dumps(result), flush=True)
    return 0


# --- the parent ---------------------------------------------------------------------------------------------------


class Writer:
    """The writer process on ``db``: started by the constructor, returns once it is ready."""

    def __init__(self, db: Path, interval_s: float) -> None:
        self.err = tempfile.TemporaryFile()  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.starvation", "--writer", str(db)]
            + ["--interval-ms", str(interval_s * 1000)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.err,
            text=True,
        )
        assert self.proc.stdout and self.proc.stdin
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"the writer did not start: {line!r} {self._stderr()}")
        self.ready = time.monotonic()

    def _stderr(self) -> str:
        self.err.seek(0)
        return self.err.read().decode(errors="replace").strip()

    def stop(self) -> dict:
        """Close its stdin (it stops), and its counts and log."""
        assert self.proc.stdout and self.proc.stdin
        self.proc.stdin.close()
        try:
            out = self.proc.stdout.read()
            self.proc.wait(timeout=30)
        except BaseException:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            self.stopped = time.monotonic()
        if self.proc.returncode != 0 or not out.strip():
            raise RuntimeError(f"the writer failed (exit {self.proc.returncode}): {self._stderr()}")
        self.err.close()
        return json.loads(out.strip().splitlines()[-1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def prepare(src: Path, db: Path) -> dict:
    """Copy ``src`` to ``db`` in rollback-journal mode (DELETE): its journal mode and file format."""
    for suffix in ("", "-journal", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    shutil.copyfile(src, db)
    con = sqlite3.connect(db, isolation_level=None)
    try:
        mode = con.execute("PRAGMA journal_mode = DELETE").fetchone()[0]
    finally:
        con.close()
    with open(db, "rb") as f:
        header = f.read(20)
    versions = (header[18], header[19])  # file format write/read versions: 1 legacy (rollback), 2 WAL
    if mode != "delete" or versions != (1, 1):
        raise RuntimeError(f"{db}: journal_mode {mode!r}, file format versions {versions}: not rollback mode")
    return {"journal_mode": mode, "format_versions": list(versions)}


def windows(log: dict, bounds: dict[str, tuple[float, float]], origin: float) -> dict:
    """The writer's attempts split by start time into ``bounds``' windows; failure times relative to ``origin``."""
    out: dict = {}
    for name, (lo, hi) in bounds.items():
        picked = [(t, c) for t, c in zip(log["times"], log["codes"], strict=True) if lo <= t < hi]
        codes = "".join(c for _, c in picked)
        fails = [t - origin for t, c in picked if c in FAILED]
        attempts = len(codes)
        failed = len(fails)
        # from the first failure to the last: about while a reader held the lock
        span = [c for t, c in picked if fails and fails[0] <= t - origin <= fails[-1]]
        out[name] = {
            "seconds": round(hi - lo, 3),
            "attempts": attempts,
            "failed": failed,
            "fail_pct": round(100 * failed / attempts, 2) if attempts else None,
            "busy_begin": codes.count(BUSY_BEGIN),
            "busy_insert": codes.count(BUSY_INSERT),
            "busy_commit": codes.count(BUSY_COMMIT),
            "other": codes.count(OTHER),
            "first_fail_s": round(fails[0], 3) if fails else None,
            "last_fail_s": round(fails[-1], 3) if fails else None,
            "span_attempts": len(span),
            "span_fail_pct": round(100 * sum(c in FAILED for c in span) / len(span), 2) if span else None,
        }
    return out


def _log_summary(log: dict) -> dict:
    return {k: v for k, v in log.items() if k not in ("times", "codes")}


def _metrics(out: Path) -> dict:
    """What the export says of itself (metrics.json, if it wrote one): records and retries."""
    try:
        m = json.loads((out / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}
    streams = m.get("streams", {})
    return {
        "run_seconds": m.get("run_seconds"),
        "archive_retries": m.get("archive_retries"),
        "stream_retries": sum(s.get("retries", 0) for s in streams.values()),
        "records": {name: s.get("records") for name, s in streams.items()},
    }


def command(template: str, db: Path, out: Path) -> list[str]:
    values = {"python": sys.executable, "root": str(ROOT), "archive": str(db), "out": str(out)}
    return [token.format(**values) for token in shlex.split(template)]


def measure(template: str, db: Path, work: Path, args: argparse.Namespace) -> dict:
    """One export with the writer running: the writer's windows, the export's time and exit; then the control."""
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    cmd = command(template, db, out)
    writer = Writer(db, args.interval_ms / 1000)
    try:
        time.sleep(args.lead)
        stdout = work / "export.stdout"
        stderr = work / "export.stderr"
        with open(stdout, "wb") as so, open(stderr, "wb") as se:
            start = time.monotonic()
            proc = subprocess.Popen(cmd, stdout=so, stderr=se)
            try:
                code = proc.wait(timeout=args.timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            end = time.monotonic()
        time.sleep(args.tail)
        log = writer.stop()
    finally:
        writer.kill()
    error = None
    if code != 0:
        tail = stderr.read_text(errors="replace").strip().splitlines()[-3:]
        error = f"exit {code}: " + " | ".join(tail)
    bounds = {"lead": (writer.ready, start), "export": (start, end), "tail": (end, writer.stopped)}
    run = {
        "cmd": cmd,
        "export_s": round(end - start, 3),
        "exit": code,
        "error": error,
        "metrics": _metrics(out),
        "writer": _log_summary(log),
        "windows": windows(log, bounds, start),
    }
    shutil.rmtree(out, ignore_errors=True)
    if not args.no_control:
        run["control"] = control(db, bounds, args)
    return run


def control(db: Path, bounds: dict[str, tuple[float, float]], args: argparse.Namespace) -> dict:
    """The writer alone on ``db`` for the same lead, export and tail durations as ``bounds``."""
    writer = Writer(db, args.interval_ms / 1000)
    try:
        shift = writer.ready - bounds["lead"][0]
        ends = {name: hi + shift for name, (_, hi) in bounds.items()}
        time.sleep(max(0.0, ends["tail"] - time.monotonic()))
        log = writer.stop()
    finally:
        writer.kill()
    moved = {name: (lo + shift, hi + shift) for name, (lo, hi) in bounds.items()}
    moved["tail"] = (moved["tail"][0], writer.stopped)
    return {"writer": _log_summary(log), "windows": windows(log, moved, moved["export"][0])}


def _median(values: list[float | int | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def summarize(runs: list[dict], names: list[str]) -> dict:
    summary: dict = {}
    for name in names:
        mine = [r for r in runs if r["name"] == name]
        ex = [r["windows"]["export"] for r in mine]
        controls = [r["control"]["windows"]["export"] for r in mine if "control" in r]
        summary[name] = {
            "runs": len(mine),
            "exit_codes": [r["exit"] for r in mine],
            "export_s": _median([r["export_s"] for r in mine]),
            "attempts": _median([w["attempts"] for w in ex]),
            "failed": _median([w["failed"] for w in ex]),
            "fail_pct": _median([w["fail_pct"] for w in ex]),
            "fail_span_s": _median(
                [w["last_fail_s"] - w["first_fail_s"] if w["failed"] else None for w in ex]  # type: ignore[operator]
            ),
            "span_fail_pct": _median([w["span_fail_pct"] for w in ex]),
            "lead_failed": sum(r["windows"]["lead"]["failed"] for r in mine),
            "tail_failed": sum(r["windows"]["tail"]["failed"] for r in mine),
            "control_attempts": _median([w["attempts"] for w in controls]),
            "control_failed": _median([w["failed"] for w in controls]),
        }
    if len(names) == 2:
        a, b = (summary[n]["failed"] for n in names)
        summary["ratio_failed_b_over_a"] = round(b / a, 4) if a else None
        a, b = (summary[n]["fail_pct"] for n in names)
        summary["ratio_fail_pct_b_over_a"] = round(b / a, 4) if a else None
    return summary


def _fmt(v: object, spec: str = "") -> str:
    return "-" if v is None else format(v, spec)


def table(runs: list[dict], summary: dict, names: list[str]) -> str:
    width = max(3, *map(len, names))
    head = (
        f"{'cmd':<{width}} {'run':>3} {'export s':>8} {'exit':>4} {'attempts':>8} {'failed':>6} {'fail %':>6} "
        f"{'fails from..to s':>16} {'lead/tail fail':>14} {'control att/fail':>16}"
    )
    lines = [head, "-" * len(head)]
    for r in runs:
        w = r["windows"]["export"]
        span = f"{_fmt(w['first_fail_s'], '.2f')}..{_fmt(w['last_fail_s'], '.2f')}" if w["failed"] else "-"
        side = f"{r['windows']['lead']['failed']}/{r['windows']['tail']['failed']}"
        c = r.get("control", {}).get("windows", {}).get("export")
        ctl = f"{c['attempts']}/{c['failed']}" if c else "-"
        lines.append(
            f"{r['name']:<{width}} {r['run']:>3} {r['export_s']:>8.2f} {r['exit']:>4} "
            f"{w['attempts']:>8} {w['failed']:>6} {_fmt(w['fail_pct'], '.1f'):>6} {span:>16} {side:>14} {ctl:>16}"
        )
    lines.append("")
    lines.append("medians over runs (export window):")
    for name in names:
        s = summary[name]
        lines.append(
            f"  {name}: export {_fmt(s['export_s'], '.2f')} s, {_fmt(s['attempts'], 'g')} attempts, "
            f"{_fmt(s['failed'], 'g')} failed ({_fmt(s['fail_pct'], '.1f')}%), failing for "
            f"{_fmt(s['fail_span_s'], '.2f')} s ({_fmt(s['span_fail_pct'], '.1f')}% of attempts then);\n"
            f"    lead/tail failures (all runs) {s['lead_failed']}/{s['tail_failed']}; "
            f"control {_fmt(s['control_attempts'], 'g')} attempts, {_fmt(s['control_failed'], 'g')} failed; "
            f"exit codes {s['exit_codes']}"
        )
    if len(names) == 2:
        lines.append(
            f"  failed {names[1]}/{names[0]}: {_fmt(summary['ratio_failed_b_over_a'], '.3f')}, "
            f"fail % {names[1]}/{names[0]}: {_fmt(summary['ratio_fail_pct_b_over_a'], '.3f')}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.starvation", description=__doc__.split("\n\n")[0])
    ap.add_argument("--posts", type=int, default=300_000, help="posts in the archive (default 300000)")
    ap.add_argument("--runs", type=int, default=3, help="runs of each command (default 3)")
    ap.add_argument("--interval-ms", type=float, default=3.0, help="writer's sleep between attempts (default 3)")
    ap.add_argument("--pipeline", default=DEFAULT_PIPELINE, help=f"export command A (default: {DEFAULT_PIPELINE!r})")
    ap.add_argument("--vs", help="export command B, run alternately with A")
    ap.add_argument("--names", default="A,B", help="names of A and B in the table (default A,B)")
    ap.add_argument("--lead", type=float, default=0.5, help="writer alone before the export, s (default 0.5)")
    ap.add_argument("--tail", type=float, default=0.5, help="writer alone after the export, s (default 0.5)")
    ap.add_argument("--timeout", type=float, default=600, help="an export is killed past this, s (default 600)")
    ap.add_argument("--no-control", action="store_true", help="no writer-alone control after each run")
    ap.add_argument("--archive", type=Path, help="use this archive instead of the generated --posts one")
    ap.add_argument("--json", type=Path, help="write every run and the summary here")
    ap.add_argument("--writer", type=Path, help=argparse.SUPPRESS)  # the writer process itself
    args = ap.parse_args(argv)
    if args.writer:
        return writer_main(args.writer, args.interval_ms / 1000)
    if args.runs < 1:
        ap.error("--runs must be 1 or more")

    templates = [args.pipeline] + ([args.vs] if args.vs else [])
    names = [n.strip() for n in args.names.split(",")][: len(templates)]
    if len(names) != len(templates) or len(set(names)) != len(names):
        ap.error("--names: one distinct name per command")
    src = args.archive or archive(args.posts)
    CACHE.mkdir(parents=True, exist_ok=True)
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="starvation-", dir=CACHE) as tmp:
        work = Path(tmp)
        db = work / "archive.db"
        for i in range(1, args.runs + 1):
            for name, template in zip(names, templates, strict=True):
                mode = prepare(src, db)
                print(f"{name} run {i}/{args.runs} ...", file=sys.stderr, flush=True)
                run = {"name": name, "run": i, "archive": mode} | measure(template, db, work, args)
                runs.append(run)
                w = run["windows"]["export"]
                print(
                    f"  export {run['export_s']:.2f} s, exit {run['exit']}, {w['attempts']} attempts, "
                    f"{w['failed']} failed" + (f"; {run['error']}" if run["error"] else ""),
                    file=sys.stderr,
                    flush=True,
                )
    summary = summarize(runs, names)
    print(table(runs, summary, names))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "host": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
            "sqlite": sqlite3.sqlite_version,
            "archive": str(src),
            "posts": None if args.archive else args.posts,
            "config": {
                "interval_ms": args.interval_ms,
                "lead_s": args.lead,
                "tail_s": args.tail,
                "runs": args.runs,
                "commands": dict(zip(names, templates, strict=True)),
            },
            "summary": summary,
            "runs": runs,
        }
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    failed = [r for r in runs if r["exit"] != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
