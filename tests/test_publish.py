"""All or nothing: a failed, killed or interrupted export leaves OUT as it was."""

from __future__ import annotations

import hashlib
import json
import os
import re
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
    # metrics.json (times, memory) differs on every run by nature
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.name != "metrics.json"
    }


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
    assert "File too large" in line and "batch" in line, line
    assert re.search(r"\.staging-\d+/(\w+\.(csv|json)\)|\.spill-)", line), line  # the file it could not write
    assert any(f"({name}, batch" in line for name in ("posts", "likes", "follows")), line  # the stream that failed
    # one error line; before it only the note that the archive could not be copied either (file size limit)
    assert all("no room to copy the archive" in x for x in proc.stderr.strip().splitlines()[:-1])
    assert len(proc.stderr.strip().splitlines()) <= 2
    assert _snapshot(earlier_export) == before
    assert _staging(earlier_export) == []


def test_a_write_error_names_the_file(tmp_path, archive_150k):
    """Sort files stay small (16 MiB buckets) while posts.json grows past the limit: the error names it."""
    limit = 20_000_000

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "run", "export", str(archive_150k), "--out", str(out), "-q",
         "--types", "posts"],
        capture_output=True, text=True, preexec_fn=small_files, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    *before, line = proc.stderr.strip().splitlines()
    assert line.startswith("pipeline: error: writing the export failed: File too large (")
    assert all("no room to copy the archive" in x for x in before) and len(before) <= 1  # the archive is > 20 MB
    assert re.search(r"\.out\.staging-\d+/posts\.json\) \(posts, batch at://", line), line
    assert not out.exists() and _staging(out) == []


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


def _wait_for_data(out: Path, proc: subprocess.Popen, phase: str = "writing") -> None:
    """Until the export is converting (rows spilled to sort buckets, no output file yet)
    or writing (an output file past 50 kB)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        staged = _staging(out)
        if staged:
            files = [p for p in staged[0].rglob("*") if p.is_file()]
            spilled = [p for p in files if ".spill-" in str(p) and p.stat().st_size > 0]
            # an output file (not the archive's snapshot, or another hidden working file)
            written = [
                p for p in files if p.parent == staged[0] and not p.name.startswith(".") and p.stat().st_size > 50_000
            ]
            if phase == "converting" and spilled and not (staged[0] / "posts.csv").exists():
                return
            if phase == "writing" and written:
                return
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.02)
    raise AssertionError(f"export never got to {phase}")


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


@pytest.mark.parametrize(
    ("sig", "code", "phase"),
    [
        (signal.SIGINT, 130, "converting"),
        (signal.SIGINT, 130, "writing"),
        (signal.SIGTERM, 143, "converting"),
        (signal.SIGTERM, 143, "writing"),
        (signal.SIGHUP, 129, "writing"),
    ],
)
def test_interrupt_cleans_up(archive_20k, earlier_export, sig, code, phase):
    before = _snapshot(earlier_export)
    proc = _start_slow_export(archive_20k, earlier_export)
    _wait_for_data(earlier_export, proc, phase)
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


def test_symlinked_out_gets_the_export(tmp_path, fixture_archive, earlier_export):
    link = tmp_path / "latest"
    link.symlink_to(earlier_export, target_is_directory=True)
    result = pipeline.export(fixture_archive, link, formats=["ndjson"])
    assert link.is_symlink() and link.resolve() == earlier_export
    assert {"manifest.json", "posts.ndjson"} <= {p.name for p in earlier_export.iterdir()}
    assert not (earlier_export / "posts.csv").exists()
    assert result.out == earlier_export and result.warnings == []
    assert _staging(earlier_export) == [] and list(tmp_path.glob(".*")) == []


def test_fallback_rename_puts_earlier_export_back(tmp_path, fixture_archive, earlier_export, monkeypatch):
    """Where the folders cannot be swapped atomically, a failed second rename restores OUT."""
    from pipeline import publish

    before = _snapshot(earlier_export)
    monkeypatch.setattr(publish, "_exchange", lambda a, b: False)
    real_rename = os.rename

    def failing_rename(src, dst):
        if ".staging-" in str(src):
            raise OSError(28, "No space left on device", str(dst))
        real_rename(src, dst)

    monkeypatch.setattr(publish.os, "rename", failing_rename)
    with pytest.raises(pipeline.ExportError, match="No space left on device"):
        pipeline.export(fixture_archive, earlier_export, formats=["csv", "json"])
    assert _snapshot(earlier_export) == before
    assert list(tmp_path.glob(".*")) == []


def test_cleanup_failure_after_publishing_is_a_warning(tmp_path, fixture_archive, earlier_export, monkeypatch):
    from pipeline import publish

    real_rmtree = publish.shutil.rmtree

    def failing_rmtree(path, *args, **kwargs):
        if kwargs.get("ignore_errors"):
            return real_rmtree(path, *args, **kwargs)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(publish.shutil, "rmtree", failing_rmtree)
    result = pipeline.export(fixture_archive, earlier_export, formats=["ndjson"])
    assert not (earlier_export / "posts.csv").exists() and (earlier_export / "posts.ndjson").exists()
    assert len(result.warnings) == 1 and "could not remove the earlier export" in result.warnings[0]
    leftover = Path(result.warnings[0].rsplit("now at ", 1)[1].split(":")[0])
    assert (leftover / "posts.csv").exists()  # the earlier export, named in the warning


def _manifest_without_time(folder: Path) -> dict[str, object]:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.pop("exported_at")
    return manifest


def test_earlier_export_moved_aside_by_a_killed_run_is_restored(tmp_path, fixture_archive, earlier_export, caplog):
    before = _snapshot(earlier_export)
    before_manifest = _manifest_without_time(earlier_export)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    aside = tmp_path / f".out.old-{int(dead.stdout)}"
    earlier_export.rename(aside)  # killed between the two renames of the fallback
    with pytest.raises(pipeline.UsageError):
        pipeline.export(fixture_archive, earlier_export, since="2024-02-01", until="2024-01-01")
    # The next run puts it back before it publishes, then replaces it with the same export:
    # the same files; the manifest differs only in its time (a second may have passed).
    pipeline.export(fixture_archive, tmp_path / "out", formats=["csv"], did="did:plc:nobody", batch_size=5)
    assert f"put back the earlier export {earlier_export}, which a killed run had moved to {aside.name}" in caplog.text
    after = _snapshot(earlier_export)
    assert {k: v for k, v in after.items() if k != "manifest.json"} == {
        k: v for k, v in before.items() if k != "manifest.json"
    }
    assert _manifest_without_time(earlier_export) == before_manifest and not aside.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder")
def test_unreadable_out_is_an_output_error(tmp_path, fixture_archive):
    out = tmp_path / "locked"
    out.mkdir()
    (out / "x").write_text("x")
    out.chmod(0)
    try:
        proc = run_cli("run", "export", fixture_archive, "--out", out)
    finally:
        out.chmod(0o755)
    assert proc.returncode == 4 and "cannot read output folder" in proc.stderr, proc.stderr


def test_unreadable_out_maps_to_output_error(tmp_path, fixture_archive, earlier_export, monkeypatch):
    """The same as above where the tests run as root: reading OUT fails with EACCES."""
    real_iterdir = Path.iterdir

    def iterdir(self):
        if self == earlier_export:
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    with pytest.raises(pipeline.OutputError, match="cannot read output folder .*Permission denied") as e:
        pipeline.export(fixture_archive, earlier_export)
    assert e.value.exit_code == 4


def test_spill_read_error_names_the_bucket(tmp_path, fixture_archive, earlier_export, monkeypatch):
    from pipeline import Tuning, sort

    before = _snapshot(earlier_export)
    calls = []
    real_open = sort.ipc.open_stream

    def flaky_open(f):
        calls.append(f)
        if len(calls) == 3:
            raise OSError(5, "Input/output error")
        return real_open(f)

    monkeypatch.setattr(sort.ipc, "open_stream", flaky_open)
    with pytest.raises(pipeline.ExportError, match=r"Input/output error \(posts, batch rows created up to \d{4}-"):
        pipeline.export(
            fixture_archive, earlier_export, formats=["csv"], types=["posts"], tuning=Tuning(bucket_bytes=100_000)
        )
    assert _snapshot(earlier_export) == before and list(tmp_path.glob(".*")) == []
