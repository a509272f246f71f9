"""Re-runs: the same export twice gives the same files; --skip-unchanged does no work when nothing changed."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3

import pytest
from conftest import run_cli

import pipeline
from pipeline import run as run_module


def _files(out) -> dict[str, str]:
    """Every file of an export but the manifest, by path: its SHA-256 computed here."""
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name not in ("manifest.json", "metrics.json")
    }


@pytest.fixture
def archive(fixture_archive, tmp_path):
    db = tmp_path / "archive.db"
    shutil.copy(fixture_archive, db)
    return db


def test_two_runs_give_identical_files(archive, tmp_path):
    out = tmp_path / "out"
    args = ("run", "export", archive, "--out", out, "-f", "csv", "-f", "json", "-f", "ndjson", "--ops", "-q")
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    files, manifest = _files(out), json.loads((out / "manifest.json").read_text())
    second = run_cli(*args)
    assert second.returncode == 0, second.stderr
    again = json.loads((out / "manifest.json").read_text())
    assert _files(out) == files  # no appended, duplicated or changed byte
    assert again["files"] == manifest["files"] and again["fingerprint"] == manifest["fingerprint"]
    assert {f["path"]: f["sha256"] for f in again["files"]} == files


def test_skip_unchanged_does_no_work(archive, tmp_path, monkeypatch):
    out = tmp_path / "out"
    made = pipeline.export(archive, out, formats=["csv", "json"])
    manifest = (out / "manifest.json").read_bytes()
    mtime = (out / "manifest.json").stat().st_mtime_ns

    def no_work(*args, **kwargs):
        raise AssertionError("--skip-unchanged exported again")

    monkeypatch.setattr(run_module, "_run_streams", no_work)
    skipped = pipeline.export(archive, out, formats=["csv", "json"], skip_unchanged=True)
    assert skipped.skipped and not made.skipped
    assert skipped.records == made.records and skipped.files == made.files and skipped.rejects == made.rejects
    assert (out / "manifest.json").read_bytes() == manifest
    assert (out / "manifest.json").stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder either


def test_skip_unchanged_cli_message(archive, tmp_path):
    out = tmp_path / "out"
    assert run_cli("run", "export", archive, "--out", out, "-q").returncode == 0
    r = run_cli("run", "export", archive, "--out", out, "-q", "--skip-unchanged")
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith("Unchanged: ") and "nothing was written" in r.stderr


@pytest.mark.parametrize("change", ["archive", "formats", "filter", "damaged"])
def test_skip_unchanged_exports_when_something_changed(archive, tmp_path, change):
    out = tmp_path / "out"
    pipeline.export(archive, out, formats=["csv"])
    kwargs: dict[str, object] = {"formats": ["csv"]}
    if change == "archive":  # the archiver added a post
        con = sqlite3.connect(archive)
        con.execute(
            "INSERT INTO posts (uri, cid, did, text, created_at, indexed_at)"
            " VALUES ('at://did:plc:new/app.bsky.feed.post/zzz', 'c', 'did:plc:new', 'new', "
            "'2030-01-01T00:00:00Z', '2030-01-01T00:00:00Z')"
        )
        con.commit()
        con.close()
    elif change == "formats":
        kwargs["formats"] = ["csv", "ndjson"]
    elif change == "filter":
        kwargs["since"] = "2024-01-01"
    else:  # a data file of the earlier export was cut short
        with open(out / "posts.csv", "r+b") as f:
            f.truncate(100)
    result = pipeline.export(archive, out, skip_unchanged=True, **kwargs)  # type: ignore[arg-type]
    assert not result.skipped
    text = (out / "posts.csv").read_text(encoding="utf-8-sig")
    assert ("at://did:plc:new/app.bsky.feed.post/zzz" in text) == (change == "archive")
    assert len(text) > 100


def test_skip_unchanged_still_applies_max_rejects(archive, tmp_path):
    out = tmp_path / "out"
    made = pipeline.export(archive, out, formats=["csv"])
    assert made.rejects > 0
    before = _files(out)
    with pytest.raises(pipeline.ExportError, match="--max-rejects 0"):
        pipeline.export(archive, out, formats=["csv"], skip_unchanged=True, max_rejects=0)
    assert _files(out) == before
    again = pipeline.export(archive, out, formats=["csv"], skip_unchanged=True, max_rejects=made.rejects)
    assert again.skipped
