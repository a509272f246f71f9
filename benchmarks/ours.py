"""``pipeline run export`` as the benchmark runs it: the command, and memray's peak in a subprocess."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from benchmarks.measure import ROOT, Run, timed


def export_cmd(
    db: Path, out: Path, formats: tuple[str, ...], extra: tuple[str, ...] = ("--types", "posts")
) -> list[str]:
    """The CLI export of ``db``; by default posts only (what the peers dump)."""
    fmts = [x for f in formats for x in ("--format", f)]
    return [sys.executable, str(ROOT / "cli.py"), "run", "export", str(db), "--out", str(out), *fmts, *extra, "-q"]


def memray_peak(
    db: Path, work: Path, formats: tuple[str, ...], extra: tuple[str, ...] = ("--types", "posts"), timeout: float = 1200
) -> tuple[int | None, Run]:
    """memray's peak heap (bytes; None if the run failed) and the run (peak RSS) of one export.

    Only one memray Tracker may exist per process, so each export runs in a process of
    its own; native traces, aggregated file format (small file, same peak).
    """
    trace = work / f"memray-{'-'.join(formats)}.bin"
    out = work / f"memray-{'-'.join(formats)}"
    peak_file = trace.with_suffix(".peak")
    code = (
        "import sys, memray\n"
        f"sys.argv = {['pipeline', *export_cmd(db, out, formats, extra)[2:]]!r}\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        f"with memray.Tracker({str(trace)!r}, native_traces=True,"
        " file_format=memray.FileFormat.AGGREGATED_ALLOCATIONS):\n"
        "    import cli\n"
        "    try:\n"
        "        cli.main()\n"
        "    except SystemExit as e:\n"
        "        assert not e.code, e.code\n"
        # read here, so the benchmark process never loads memray (it would raise the floor of ru_maxrss)
        f"peak = memray.FileReader({str(trace)!r}).metadata.peak_memory\n"
        f"open({str(peak_file)!r}, 'w').write(str(peak))\n"
    )
    try:
        run = timed([sys.executable, "-c", code], timeout=timeout)
        peak = int(peak_file.read_text()) if run.ok else None
        return peak, run
    finally:
        trace.unlink(missing_ok=True)
        peak_file.unlink(missing_ok=True)
        shutil.rmtree(out, ignore_errors=True)
