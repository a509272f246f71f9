"""Signals at every phase boundary of the command, and after the publish swap.

The command runs under a wrapper written here (``WRAPPER``: the technique of
``tests/killable_cli.py``, with its own switch) that sends itself a signal (SIGTERM
unless ``SIGNAL_NAME`` says otherwise) at ``SIGNAL_AT``:

- ``<event>=<n>``: the n-th passing of a phase boundary (``Tuning.on_event``: ``posts.page``,
  ``posts.bucket``, ``posts.done``, ``likes.page``, ``ops.page``, ``publish``, ``published``, ...);
- ``cleanup``: after the swap, as the earlier export (swapped out) is being removed;
- ``returned``: as ``pipeline.export`` returns to the command, before its summary;
- ``summary``: just after the summary line is written.

Each run exports a 3,000-post archive (posts, likes, follows, ops; three formats) into an
``OUT`` that holds an earlier export (of another archive). Before the swap a signal must
give its exit code (143 for SIGTERM, 130 SIGINT, 129 SIGHUP), "nothing was published", no
traceback, ``OUT`` as it was, byte for byte, and nothing beside it (no ``.OUT.staging-*``,
no ``.OUT.old-*``). From the swap on the export is published: ``OUT`` holds the new export,
the run says so (exit 0, or a message that it was published, never "nothing was
published"), prints no traceback ("Exception ignored" included), and leaves nothing beside
``OUT`` (or names what it left, and ``pipeline clean OUT`` removes it).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, make_archive

import pipeline

FORMATS = ["csv", "json", "ndjson"]
ARGS = ["-f", "csv", "-f", "json", "-f", "ndjson", "--ops", "-q", "--batch-bytes", "1M"]
BUCKET_BYTES = 256 * 1024  # several sort buckets for 3,000 posts: posts.bucket passes more than once
CODES = {"SIGTERM": 143, "SIGINT": 130, "SIGHUP": 129}

WRAPPER = r'''
"""The command with a signal switch (written by tests/test_signals.py): sends itself
SIGNAL_NAME (default SIGTERM) at SIGNAL_AT: <event>=<n>, cleanup, returned or summary."""

import os
import shutil
import signal
import sys
import threading
from dataclasses import replace

sys.path.insert(0, ROOT)

import typer

import cli
import pipeline
from pipeline import tuning

AT = os.environ["SIGNAL_AT"]
SIG = getattr(signal, os.environ.get("SIGNAL_NAME", "SIGTERM"))
_seen = {}
_lock = threading.Lock()
_swapped = threading.Event()


def send(where):
    print(f"signal-test: sending {SIG.name} at {where}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), SIG)


def on_event(event):
    if event == "published":
        _swapped.set()
    name, _, count = AT.rpartition("=")
    if event != name:
        return
    with _lock:
        _seen[event] = n = _seen.get(event, 0) + 1
    if str(n) == count:
        send(f"{event}={n}")


_rmtree = shutil.rmtree


def rmtree(*args, **kwargs):
    if AT == "cleanup" and _swapped.is_set():
        _swapped.clear()
        send("cleanup (removing the earlier export after the swap)")
    return _rmtree(*args, **kwargs)


shutil.rmtree = rmtree
_export = pipeline.export


def export(*args, **kwargs):
    result = _export(*args, **kwargs)
    if AT == "returned":
        send("returned (pipeline.export returned, before the summary)")
    return result


pipeline.export = export
_echo = typer.echo


def echo(message=None, *args, **kwargs):
    _echo(message, *args, **kwargs)
    if AT == "summary" and isinstance(message, str) and message.startswith("Exported "):
        send("summary (just after the summary line)")


typer.echo = echo
_defaults = tuning.Tuning.from_env


def from_env():
    extra = {"on_event": on_event}
    if os.environ.get("SIGNAL_BUCKET_BYTES"):
        extra["bucket_bytes"] = int(os.environ["SIGNAL_BUCKET_BYTES"])
    return replace(_defaults(), **extra)


tuning.Tuning.from_env = from_env

if __name__ == "__main__":
    sys.exit(cli.main())
'''.replace("ROOT", repr(str(ROOT)), 1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The archive, an earlier export (of another archive) to copy into each OUT, an
    uninterrupted export of the archive to compare with, and the wrapper."""
    base = tmp_path_factory.mktemp("signals")
    archive, other = base / "archive.db", base / "other.db"
    make_archive(archive, posts=3000, seed=5)
    make_archive(other, posts=300, seed=6)
    pipeline.export(other, base / "earlier", formats=FORMATS, ops=True)
    pipeline.export(archive, base / "reference", formats=FORMATS, ops=True)
    wrapper = base / "signal_cli.py"
    wrapper.write_text(WRAPPER)
    return {
        "base": base,
        "archive": archive,
        "earlier": base / "earlier",
        "reference": base / "reference",
        "wrapper": wrapper,
    }


def _files(out: Path, data_only: bool = False) -> dict[str, bytes]:
    skip = ("manifest.json", "metrics.json") if data_only else ()
    return {
        str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.name not in skip
    }


def _beside(out: Path) -> list[Path]:
    """What a run left beside OUT: ``.OUT.staging-<pid>``, ``.OUT.old-<pid>``, ..."""
    return sorted(p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def _run(setup: dict[str, Path], tmp_path: Path, at: str, sig: str = "SIGTERM", jobs: int = 1):
    """The export into an OUT holding the earlier export, with ``sig`` sent at ``at``."""
    out = tmp_path / "OUT"
    shutil.copytree(setup["earlier"], out)
    env = {**os.environ, "SIGNAL_AT": at, "SIGNAL_NAME": sig, "PIPELINE_CHECKPOINT_SECONDS": "0"}
    env["SIGNAL_BUCKET_BYTES"] = str(BUCKET_BYTES)
    cmd = [sys.executable, str(setup["wrapper"]), "run", "export", str(setup["archive"]), "--out", str(out)]
    started = time.monotonic()
    proc = subprocess.run(
        [*cmd, *ARGS, "--jobs", str(jobs)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=180
    )
    print(f"{at} {sig} jobs={jobs}: exit {proc.returncode} in {time.monotonic() - started:.1f}s\n{proc.stderr}")
    assert f"signal-test: sending {sig}" in proc.stderr, f"the run never reached {at}: {proc.stderr[-2000:]}"
    return out, proc


def _no_traceback(stderr: str) -> None:
    for what in ("Traceback", "Exception ignored"):
        at = stderr.find(what)
        assert at < 0, f"{what} on stderr:\n{stderr[max(0, at - 300) : at + 2500]}"


BEFORE_THE_SWAP = [
    "posts.page=1",
    "posts.page=5",
    "posts.bucket=1",
    "posts.bucket=3",
    "posts.done=1",
    "likes.page=1",
    "likes.bucket=1",
    "likes.done=1",
    "follows.page=1",
    "follows.done=1",
    "ops.page=1",
    "ops.done=1",
    "publish=1",
]


@pytest.mark.parametrize(
    ("at", "sig", "jobs"),
    [(at, "SIGTERM", 1) for at in BEFORE_THE_SWAP]
    + [(at, "SIGTERM", 4) for at in ("posts.page=2", "likes.page=1", "follows.done=1", "ops.done=1", "publish=1")]
    + [("posts.page=2", "SIGINT", 1), ("posts.bucket=2", "SIGHUP", 1), ("likes.page=1", "SIGINT", 4)],
)
def test_a_signal_before_the_swap_publishes_nothing(setup, tmp_path, at, sig, jobs):
    out, proc = _run(setup, tmp_path, at, sig, jobs)
    assert proc.returncode == CODES[sig], f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    assert "nothing was published" in proc.stderr, proc.stderr[-2000:]
    _no_traceback(proc.stderr)
    assert _files(out) == _files(setup["earlier"]), "OUT is not the earlier export as it was"
    assert _beside(out) == [], f"left beside OUT: {[p.name for p in _beside(out)]}"


def _check_published(setup: dict[str, Path], out: Path, proc: subprocess.CompletedProcess[str]) -> None:
    """The new export is in OUT; the run says it was published; nothing is left beside OUT
    that the run does not name and ``pipeline clean OUT`` does not remove."""
    err = proc.stderr
    _no_traceback(err)
    assert "nothing was published" not in err, f"exit {proc.returncode}, but the export was published: {err[-2000:]}"
    assert _files(out, data_only=True) == _files(setup["reference"], data_only=True), "OUT is not the new export"
    if proc.returncode != 0:
        said = err.replace("nothing was published", "")
        assert "published" in said or "Exported " in said, f"exit {proc.returncode} without saying it published: {err}"
    left = _beside(out)
    if left:
        unnamed = [p.name for p in left if p.name not in err]
        assert not unnamed, f"left beside OUT without a word: {unnamed}: {err[-2000:]}"
        clean = subprocess.run(
            [sys.executable, str(ROOT / "cli.py"), "clean", str(out)], capture_output=True, text=True, timeout=60
        )
        assert clean.returncode == 0, clean.stderr
        assert _beside(out) == [], f"pipeline clean left {[p.name for p in _beside(out)]}: {clean.stderr}"
        assert _files(out, data_only=True) == _files(setup["reference"], data_only=True), "clean changed OUT"


@pytest.mark.parametrize(
    ("at", "sig", "jobs"),
    [
        ("published=1", "SIGTERM", 1),
        ("published=1", "SIGTERM", 4),
        ("cleanup", "SIGTERM", 1),
        ("cleanup", "SIGTERM", 4),
        ("returned", "SIGTERM", 1),
        ("summary", "SIGTERM", 1),
        ("published=1", "SIGINT", 1),
        ("cleanup", "SIGINT", 1),
        ("published=1", "SIGHUP", 1),
        ("cleanup", "SIGHUP", 1),
    ],
)
def test_a_signal_after_the_swap_is_a_published_export(setup, tmp_path, at, sig, jobs):
    out, proc = _run(setup, tmp_path, at, sig, jobs)
    _check_published(setup, out, proc)


@pytest.mark.parametrize("delay", [0.0, 0.002, 0.01, 0.05])
def test_sigterm_from_outside_after_the_summary_prints_no_traceback(setup, tmp_path, delay):
    """The command as it is (no wrapper); SIGTERM sent from outside once the summary line is
    out, while the process ends."""
    out = tmp_path / "OUT"
    shutil.copytree(setup["earlier"], out)
    cmd = [sys.executable, str(ROOT / "cli.py"), "run", "export", str(setup["archive"]), "--out", str(out), *ARGS]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("Exported "):
            time.sleep(delay)
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=120)
    err = "".join(lines) + rest
    print(f"exit {proc.returncode}\n{err}")
    assert any(line.startswith("Exported ") for line in lines), err
    _no_traceback(err)
    # the process may be past its handlers (ended by the signal itself): published either way
    assert proc.returncode in (0, 143, -signal.SIGTERM), f"exit {proc.returncode}: {err}"
    assert "nothing was published" not in err
    assert _files(out, data_only=True) == _files(setup["reference"], data_only=True)
    assert _beside(out) == []
