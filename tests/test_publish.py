"""All or nothing: a failed, killed or interrupted export leaves OUT as it was."""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

import pipeline


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def earlier_export(tmp_path, fixture_archive) -> Path:
    out = tmp_path / "out"
    pipeline.export(fixture_archive, out, formats=["csv"], did="did:plc:nobody")
    return out


def _staging(out: Path) -> list[Path]:
    return list(out.parent.glob(f".{out.name}.staging-*"))


def test_disk_full_keeps_earlier_export(tmp_path, archive_20k, earlier_export):
    before = _snapshot(earlier_export)
    limit = 200_000  # bytes per file: the CSV of 20,000 posts is far larger

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "run", "export", str(archive_20k), "--out", str(earlier_export), "-q"],
        capture_output=True, text=True, preexec_fn=small_files, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "File too large" in line and "posts" in line and "batch" in line, line
    assert len(proc.stderr.strip().splitlines()) == 1
    assert _snapshot(earlier_export) == before
    assert _staging(earlier_export) == []


def test_database_error_keeps_earlier_export(tmp_path, fixture_archive, earlier_export):
    broken = tmp_path / "corrupt.db"
    data = bytearray(fixture_archive.read_bytes())
    page = 4096
    for i in range(len(data) // page // 2, len(data) // page):  # smash the back half of the pages
        data[i * page + 100 : i * page + 400] = os.urandom(300)
    broken.write_bytes(bytes(data))
    before = _snapshot(earlier_export)
    proc = run_cli("run", "export", broken, "--out", earlier_export, "-q")
    assert proc.returncode in (1, 3), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert _snapshot(earlier_export) == before
    assert _staging(earlier_export) == []


def _start_slow_export(archive: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "run", "export", str(archive), "--out", str(out),
         "-f", "csv", "-f", "json", "-f", "ndjson", "--batch-size", "1", "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait_for_data(out: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        staged = _staging(out)
        if staged and any(p.stat().st_size > 50_000 for p in staged[0].iterdir()):
            return
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    raise AssertionError("export never got going")


def test_sigkill_keeps_earlier_export(archive_20k, earlier_export):
    before = _snapshot(earlier_export)
    proc = _start_slow_export(archive_20k, earlier_export)
    _wait_for_data(earlier_export, proc)
    proc.kill()
    proc.wait()
    assert _snapshot(earlier_export) == before
    # the next run clears the dead run's staging folder and succeeds
    pipeline.export(archive_20k, earlier_export, formats=["csv"], did="did:plc:nobody")
    assert _staging(earlier_export) == []


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_interrupt_cleans_up(archive_20k, earlier_export, sig, code):
    before = _snapshot(earlier_export)
    proc = _start_slow_export(archive_20k, earlier_export)
    _wait_for_data(earlier_export, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert _snapshot(earlier_export) == before
    assert _staging(earlier_export) == []


def test_new_export_replaces_earlier(tmp_path, fixture_archive, earlier_export):
    pipeline.export(fixture_archive, earlier_export, formats=["ndjson"])
    names = {p.name for p in earlier_export.iterdir()}
    assert "posts.ndjson" in names and "posts.csv" not in names
    assert not list(tmp_path.glob(".out.*"))
