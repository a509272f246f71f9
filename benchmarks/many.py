"""``python -m benchmarks.many``: a fleet of small archives, export-many against a shell loop.

Builds (once, cached in benchmarks/.cache/many-<N>x<P>/) ``--archives`` seeded
archives of ``--posts`` posts each, in bskyarchive's layout (``accountNNN/data/
archive.db``), then times, interleaved over ``--rounds`` rounds, each from
process start to exit:

- ``loop``: a shell loop running ``pipeline run export`` once per archive;
- ``local``: ``pipeline run export-many --executor local`` (a process pool of the CPU count);
- ``ray``: ``pipeline run export-many --executor ray`` (a local Ray instance started
  and stopped by the command);
- ``ray fixed``: the same command on one archive: Ray's start-up and shutdown.

Every command exports every record type to CSV and JSON (the defaults). Prints a
Markdown table and writes every run to ``--json`` (default
benchmarks/results/many.json). Exits 1 if ``local`` is not at least 2x faster than
``loop`` (the issue's target).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.measure import CACHE, ROOT

PY = sys.executable
CLI = str(ROOT / "cli.py")


def fleet(archives: int, posts: int) -> Path:
    """The cached fleet folder (made if missing)."""
    import importlib.util

    folder = CACHE / f"many-{archives}x{posts}"
    done = folder / ".complete"
    if done.exists():
        return folder
    spec = importlib.util.spec_from_file_location("make_archive", ROOT / "data" / "fixtures" / "make_archive.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    shutil.rmtree(folder, ignore_errors=True)
    t0 = time.perf_counter()
    for i in range(archives):
        path = folder / f"account{i:03d}" / "data" / "archive.db"
        path.parent.mkdir(parents=True)
        module.make_archive(path, posts=posts, seed=1000 + i, style="bskyarchive", media_files=False, workers=1)
    done.touch()
    print(f"generated {archives} archives in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return folder


def _timed(command: list[str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {shlex.join(command)}\n{r.stderr[-2000:]}")
    return elapsed


def commands(folder: Path, out: Path) -> dict[str, list[str]]:
    archives = sorted(str(p) for p in folder.glob("account*/data/archive.db"))
    loop = 'i=0; for a in "$@"; do i=$((i+1)); ' + f"{shlex.quote(PY)} {shlex.quote(CLI)}"
    loop += f' run export "$a" --out {shlex.quote(str(out / "loop"))}/"$i" -q || exit 1; done'
    many = [PY, CLI, "run", "export-many", str(folder), "-q"]
    return {
        "loop": ["bash", "-c", loop, "loop", *archives],
        "local": [*many, "--out-root", str(out / "local"), "--executor", "local"],
        "ray": [*many, "--out-root", str(out / "ray"), "--executor", "ray"],
        "ray fixed": [
            PY,
            CLI,
            "run",
            "export-many",
            archives[0],
            "-q",
            "--out-root",
            str(out / "one"),
            "--executor",
            "ray",
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.many", description=__doc__.splitlines()[0])
    parser.add_argument("--archives", type=int, default=200)
    parser.add_argument("--posts", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip", action="append", default=[], help="a command not to run (e.g. ray)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "many.json")
    args = parser.parse_args(argv)
    folder = fleet(args.archives, args.posts)
    times: dict[str, list[float]] = {}
    for round_ in range(args.rounds):
        for name in ("loop", "local", "ray", "ray fixed"):
            if name in args.skip or (name == "ray fixed" and "ray" in args.skip):
                continue
            with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
                elapsed = _timed(commands(folder, Path(tmp))[name])
            times.setdefault(name, []).append(round(elapsed, 2))
            print(f"round {round_ + 1}: {name}: {elapsed:.2f} s", file=sys.stderr, flush=True)
    best = {name: min(ts) for name, ts in times.items()}
    lines = [
        f"{args.archives} archives of {args.posts} posts (likes, follows: all types to CSV and JSON), from process"
        f" start to exit, best of {args.rounds}:",
        "",
        "| command | best / all runs | archives/s | vs the shell loop |",
        "| --- | --- | ---: | ---: |",
    ]
    for name, ts in times.items():
        count = 1 if name == "ray fixed" else args.archives
        ratio = f"{best['loop'] / best[name]:.2f}x" if "loop" in best and name != "ray fixed" else "—"
        runs = ", ".join(f"{t:.2f}" for t in ts)
        lines.append(f"| {name} | {best[name]:.2f} s / {runs} | {count / best[name]:.1f} | {ratio} |")
    print("\n".join(lines))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"archives": args.archives, "posts": args.posts, "runs": times}, indent=2) + "\n")
    if "loop" in best and "local" in best and best["loop"] / best["local"] < 2:
        print("FAIL: export-many --executor local is not 2x faster than the shell loop", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
