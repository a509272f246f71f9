"""--resume after SIGKILL: checkpoints, byte-identical output, refusals; stale staging folders, `pipeline clean`.

The export is killed with SIGKILL at chosen places (``PIPELINE_KILL_AT``, see
tests/killable_cli.py) and at random moments from outside; ``--resume``
must then publish the same bytes as an uninterrupted run, which is itself
checked against the stdlib oracle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, run_cli
from test_export import check_export

FORMATS = ("-f", "csv", "-f", "json", "-f", "ndjson")


def _data(out: Path) -> dict[str, str]:
    """Every file of an export but the manifest and metrics, by path: its SHA-256 computed here."""
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name not in ("manifest.json", "metrics.json")
    }


def _staging(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.staging-*"))


def _export(archive: Path, out: Path, *extra: str, kill_at: str | None = None, seconds: str = "0"):
    env = {**os.environ, "PIPELINE_CHECKPOINT_SECONDS": seconds}
    env.pop("PIPELINE_KILL_AT", None)
    if kill_at:
        env["PIPELINE_KILL_AT"] = kill_at
    return run_cli("run", "export", archive, "--out", out, *FORMATS, "--ops", "-q", *extra, env=env)


@pytest.fixture(scope="module")
def reference(archive_150k, tmp_path_factory) -> dict[str, str]:
    """An uninterrupted export of the 150k-post archive (all types, ops, three formats)."""
    out = tmp_path_factory.mktemp("reference") / "out"
    done = _export(archive_150k, out)
    assert done.returncode == 0, done.stderr
    return _data(out)


@pytest.mark.parametrize(
    ("kill_at", "resumed"),
    [
        ("posts.page=1", None),  # after one batch: killed before its first checkpoint
        ("posts.page=6", "posts: resuming after"),  # mid-way through reading: spill files cut back
        ("posts.bucket=4", "records written"),  # mid-way through writing: output files cut back
        ("likes.page=2", "posts: done before the interruption"),  # a finished stream is kept
        ("publish=1", "the interrupted export was complete"),  # manifest written, not yet moved
        ("published=1", "already holds this export"),  # moved into place, not yet cleaned up
    ],
)
def test_killed_then_resumed_gives_the_same_bytes(archive_150k, reference, tmp_path, kill_at, resumed):
    out = tmp_path / "out"
    killed = _export(archive_150k, out, "--jobs", "1", kill_at=kill_at)  # streams one after another
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    if kill_at != "published=1":
        assert not out.exists() and len(_staging(out)) == 1  # nothing published; the staging folder stays
    again = _export(archive_150k, out, "--resume")
    assert again.returncode == 0, again.stderr
    if resumed is not None:
        assert resumed in again.stderr
    if kill_at == "posts.page=1":
        assert "posts: resuming" not in again.stderr  # no checkpoint yet: posts start over
    assert _data(out) == reference
    manifest = json.loads((out / "manifest.json").read_text())
    assert {f["path"]: f["sha256"] for f in manifest["files"]} == reference
    assert _staging(out) == [] and not (out / ".checkpoint").exists()


def test_resume_with_jobs_and_killed_twice(archive_150k, reference, tmp_path):
    """Killed while several streams run, then killed again while resuming: still the same bytes."""
    out = tmp_path / "out"
    assert _export(archive_150k, out, "--jobs", "4", kill_at="posts.page=4").returncode == -signal.SIGKILL
    second = _export(archive_150k, out, "--jobs", "4", "--resume", kill_at="posts.bucket=3")
    assert second.returncode == -signal.SIGKILL
    third = _export(archive_150k, out, "--jobs", "2", "--resume")
    assert third.returncode == 0, third.stderr
    assert "posts: resuming after" in third.stderr
    assert _data(out) == reference


def test_killed_from_outside_at_random_moments(archive_150k, reference, tmp_path):
    """A real SIGKILL at moments the export does not choose (checkpoints every 0.1 s)."""
    env = {**os.environ, "PIPELINE_CHECKPOINT_SECONDS": "0.1"}
    env.pop("PIPELINE_KILL_AT", None)
    for i, delay in enumerate((0.9, 1.6, 2.3)):
        out = tmp_path / f"out{i}"
        args = [sys.executable, str(ROOT / "cli.py"), "run", "export", str(archive_150k), "--out", str(out)]
        proc = subprocess.Popen([*args, *FORMATS, "--ops", "-q"], cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        again = _export(archive_150k, out, "--resume", seconds="0.1")
        assert again.returncode == 0, again.stderr
        assert _data(out) == reference, f"killed after {delay} s"


def test_resumed_output_matches_the_oracle(archive_20k, tmp_path):
    """Small pages (--batch-bytes 1M) so the kill falls between many checkpoints; checked field by field."""
    out = tmp_path / "out"
    extra = ("--batch-bytes", "1M")
    assert _export(archive_20k, out, *extra, kill_at="posts.page=30").returncode == -signal.SIGKILL
    again = _export(archive_20k, out, *extra, "--resume")
    assert again.returncode == 0, again.stderr
    assert "posts: resuming after" in again.stderr
    check_export(out, archive_20k, ["csv", "json", "ndjson"], ("posts", "likes", "follows"))


def test_ops_resume_mid_stream(archive_20k, tmp_path):
    out, ref = tmp_path / "out", tmp_path / "ref"
    extra = ("--types", "follows", "--batch-bytes", "1M")
    assert _export(archive_20k, ref, *extra).returncode == 0
    assert _export(archive_20k, out, *extra, kill_at="ops.page=2").returncode == -signal.SIGKILL
    again = _export(archive_20k, out, *extra, "--resume")
    assert again.returncode == 0, again.stderr
    assert "ops: resuming after" in again.stderr
    assert _data(out) == _data(ref)


def test_a_checkpoint_whose_files_are_gone_starts_the_stream_over(archive_150k, reference, tmp_path):
    out = tmp_path / "out"
    assert _export(archive_150k, out, kill_at="posts.page=6").returncode == -signal.SIGKILL
    (staging,) = _staging(out)
    spill = next((staging / ".spill-posts").glob(".spill-*"))
    next(spill.glob("*.arrow")).unlink()  # a spill file the checkpoint names
    again = _export(archive_150k, out, "--resume")
    assert again.returncode == 0, again.stderr
    assert _data(out) == reference


def test_resume_with_other_options_is_refused(archive_20k, tmp_path):
    out = tmp_path / "out"
    assert _export(archive_20k, out, "--batch-bytes", "1M", kill_at="posts.page=5").returncode == -signal.SIGKILL
    (staging,) = _staging(out)
    env = {**os.environ}
    env.pop("PIPELINE_KILL_AT", None)
    other = run_cli("run", "export", archive_20k, "--out", out, "-f", "csv", "--ops", "--resume", "-q", env=env)
    assert other.returncode == 2
    assert other.stderr.startswith("pipeline: error: cannot resume the export in")
    assert "formats was csv, json, ndjson, is csv" in other.stderr and "Traceback" not in other.stderr
    assert _staging(out) == [staging] and not out.exists()  # left as it was
    # --jobs, --batch-size, --batch-bytes do not shape the files: resuming with others is fine
    again = _export(archive_20k, out, "--batch-bytes", "4M", "--jobs", "1", "--resume")
    assert again.returncode == 0, again.stderr
    assert "posts: resuming after" in again.stderr


def test_resume_after_the_archive_changed_is_refused(archive_20k, tmp_path):
    db = tmp_path / "archive.db"
    shutil.copy(archive_20k, db)
    out = tmp_path / "out"
    assert _export(db, out, "--batch-bytes", "1M", kill_at="posts.page=5").returncode == -signal.SIGKILL
    os.utime(db, ns=(time.time_ns(), time.time_ns() + 10**9))
    again = _export(db, out, "--batch-bytes", "1M", "--resume")
    assert again.returncode == 2
    assert "the archive has changed" in again.stderr and "run without --resume" in again.stderr


def test_resume_with_nothing_to_resume_exports_anew(fixture_archive, tmp_path):
    out = tmp_path / "out"
    done = _export(fixture_archive, out, "--resume")
    assert done.returncode == 0, done.stderr
    assert "nothing to resume" in done.stderr
    check_export(out, fixture_archive, ["csv", "json", "ndjson"], ("posts", "likes", "follows"))


def test_a_new_run_reports_the_staging_folder_it_removes(archive_20k, tmp_path):
    out = tmp_path / "out"
    assert _export(archive_20k, out, kill_at="posts.page=1").returncode == -signal.SIGKILL
    (staging,) = _staging(out)
    again = _export(archive_20k, out)  # without --resume: starts over, and says so
    assert again.returncode == 0, again.stderr
    assert f"removed the staging folder of a killed run: {staging} (--resume would have continued it)" in again.stderr
    assert _staging(out) == []


def test_clean_removes_dead_runs_folders_only(archive_20k, tmp_path):
    out = tmp_path / "out"
    assert _export(archive_20k, out, kill_at="posts.page=1").returncode == -signal.SIGKILL
    (dead,) = _staging(out)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        alive = tmp_path / f".out.staging-{sleeper.pid}"  # a run still going: never touched
        alive.mkdir()
        cleaned = run_cli("clean", out)
        assert cleaned.returncode == 0, cleaned.stderr
        assert f"removed the staging folder of a killed run: {dead}" in cleaned.stderr
        assert not dead.exists() and alive.exists()
        nothing = run_cli("clean", out)
        assert nothing.returncode == 0 and "nothing to clean" in nothing.stderr
    finally:
        sleeper.kill()
        sleeper.wait()


def test_clean_puts_back_an_export_moved_aside(tmp_path):
    """A run killed between moving the earlier export aside and moving the new one in."""
    out = tmp_path / "out"
    aside = tmp_path / ".out.old-999999999"  # no such process
    aside.mkdir()
    (aside / "manifest.json").write_text(json.dumps({"tool": "pipeline"}))
    cleaned = run_cli("clean", out)
    assert cleaned.returncode == 0, cleaned.stderr
    assert "put back the earlier export" in cleaned.stderr
    assert (out / "manifest.json").exists() and not aside.exists()


def test_a_complete_staging_folder_with_a_damaged_file_redoes_that_stream(archive_20k, tmp_path):
    out, ref = tmp_path / "out", tmp_path / "ref"
    assert _export(archive_20k, ref).returncode == 0
    assert _export(archive_20k, out, "--jobs", "1", kill_at="publish=1").returncode == -signal.SIGKILL
    (staging,) = _staging(out)
    with open(staging / "likes.csv", "ab") as f:
        f.write(b"garbage")  # no longer the size its checkpoint and the manifest list
    again = _export(archive_20k, out, "--resume")
    assert again.returncode == 0, again.stderr
    assert "posts: done before the interruption" in again.stderr
    assert "likes: done before" not in again.stderr
    assert _data(out) == _data(ref)


def test_resume_without_out_continues_the_default_folder(archive_20k, tmp_path):
    """Without --out each run gets a new ./exports/<name>-<time>; --resume finds the killed one."""
    env = {**os.environ, "PIPELINE_CHECKPOINT_SECONDS": "0", "PIPELINE_KILL_AT": "posts.page=20"}
    args = ("run", "export", archive_20k, "--batch-bytes", "1M", "-q")
    assert run_cli(*args, cwd=tmp_path, env=env).returncode == -signal.SIGKILL
    (staging,) = (tmp_path / "exports").glob(".*.staging-*")
    env.pop("PIPELINE_KILL_AT")
    again = run_cli(*args, "--resume", cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr
    assert "posts: resuming after" in again.stderr
    (out,) = (tmp_path / "exports").iterdir()
    assert f".{out.name}.staging-" in staging.name
    check_export(out, archive_20k, ["csv", "json"], ("posts", "likes", "follows"))


@pytest.mark.parametrize("damage", ["shorter", "missing", "extra sort folder"])
def test_damaged_files_after_a_kill_start_the_stream_over(archive_150k, reference, tmp_path, damage):
    """Files not as the checkpoint says (a power loss can lose a new file's name, or the end of a
    file) are never padded or trusted: that stream starts over, the bytes are the same."""
    out = tmp_path / "out"
    kill_at = "posts.page=6" if damage == "extra sort folder" else "posts.bucket=6"
    assert _export(archive_150k, out, "--jobs", "1", kill_at=kill_at).returncode == -signal.SIGKILL
    (staging,) = _staging(out)
    if damage == "shorter":
        os.truncate(staging / "posts.json", 1000)
    elif damage == "missing":
        (staging / "posts.csv").unlink()
    else:  # a sorter that had no folder at the checkpoint made one afterwards
        extra = staging / ".spill-posts" / ".spill-after"
        extra.mkdir()
        (extra / "0.0.arrow").write_bytes(b"rows the checkpoint does not count")
    again = _export(archive_150k, out, "--jobs", "1", "--resume")
    assert again.returncode == 0, again.stderr
    assert _data(out) == reference


def test_killed_after_the_checkpoints_were_dropped(archive_20k, tmp_path):
    out, ref = tmp_path / "out", tmp_path / "ref"
    assert _export(archive_20k, ref).returncode == 0
    assert _export(archive_20k, out, kill_at="publish=1").returncode == -signal.SIGKILL
    (staging,) = _staging(out)
    shutil.rmtree(staging / ".checkpoint")  # the kill came just after they were removed
    again = _export(archive_20k, out, "--resume")
    assert again.returncode == 0, again.stderr
    assert _data(out) == _data(ref)


def test_a_staging_folder_with_this_process_id_is_resumed(archive_20k, tmp_path):
    """The process ID of the killed run came round again (a container's PID 1): still resumed."""
    import pipeline

    out, ref = tmp_path / "out", tmp_path / "ref"
    assert _export(archive_20k, ref, "--batch-bytes", "1M").returncode == 0
    assert _export(archive_20k, out, "--batch-bytes", "1M", kill_at="posts.page=30").returncode == -signal.SIGKILL
    (staging,) = _staging(out)
    staging.rename(staging.with_name(f".out.staging-{os.getpid()}"))
    said: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            said.append(record.getMessage())

    logger, handler = logging.getLogger("pipeline"), Collect()
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    try:
        result = pipeline.export(
            archive_20k, out, formats=["csv", "json", "ndjson"], ops=True, batch_bytes=2**20, resume=True
        )
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert result.records["posts"] == 20_000
    assert any(m.startswith("posts: resuming after") for m in said), said
    assert _data(out) == _data(ref)


def test_clean_says_when_it_cannot_remove(tmp_path, monkeypatch):
    from pipeline import publish

    left = tmp_path / ".out.staging-999999999"
    left.mkdir()

    def refuse(path, *args, **kwargs):
        raise PermissionError(1, "Operation not permitted", str(path))

    monkeypatch.setattr(publish.shutil, "rmtree", refuse)
    messages, ok = publish.clean(tmp_path / "out")
    assert not ok and messages == [f"could not remove {left}, left by a killed run: Operation not permitted"]
    assert left.exists()
