"""The command end to end: bad input gives one line and an exit code; nothing is written."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from conftest import run_cli


def _one_line_error(proc, code: int, *needles: str) -> None:
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("pipeline: error:"), lines[0]
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def _archive_without(tmp_path: Path, fixture: Path, sql: str) -> Path:
    db = tmp_path / "broken.db"
    db.write_bytes(fixture.read_bytes())
    con = sqlite3.connect(db)
    con.executescript(sql)
    con.close()
    return db


def test_missing_archive(tmp_path):
    out = tmp_path / "out"
    proc = run_cli("run", "export", tmp_path / "nope.db", "--out", out)
    _one_line_error(proc, 3, "not found", "nope.db")
    assert not out.exists()


def test_not_sqlite(tmp_path):
    bad = tmp_path / "notes.db"
    bad.write_text("hello, I am not a database\n")
    proc = run_cli("run", "export", bad, "--out", tmp_path / "out")
    _one_line_error(proc, 3, "not a SQLite database")
    assert not (tmp_path / "out").exists()


def test_no_posts_table(tmp_path, fixture_archive):
    db = _archive_without(tmp_path, fixture_archive, "DROP TABLE media; DROP TABLE posts;")
    proc = run_cli("run", "export", db, "--out", tmp_path / "out")
    _one_line_error(proc, 3, "no 'posts' table")
    assert not (tmp_path / "out").exists()


def test_missing_column(tmp_path, fixture_archive):
    db = _archive_without(tmp_path, fixture_archive, "ALTER TABLE posts DROP COLUMN labels;")
    proc = run_cli("run", "export", db, "--out", tmp_path / "out")
    _one_line_error(proc, 3, "labels")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("opt", ["--since", "--until"])
def test_unparseable_date(tmp_path, fixture_archive, opt):
    proc = run_cli("run", "export", fixture_archive, "--out", tmp_path / "out", opt, "last tuesday")
    _one_line_error(proc, 2, opt, "last tuesday")
    assert not (tmp_path / "out").exists()


def test_since_after_until(tmp_path, fixture_archive):
    proc = run_cli(
        "run", "export", fixture_archive, "--out", tmp_path / "out", "--since", "2024-02-01", "--until", "2024-01-31"
    )
    _one_line_error(proc, 2, "after")
    assert not (tmp_path / "out").exists()


def test_unwritable_out(tmp_path, fixture_archive):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    proc = run_cli("run", "export", fixture_archive, "--out", blocker / "sub" / "out")
    _one_line_error(proc, 4, "cannot write")


def test_read_only_parent(tmp_path, fixture_archive):
    import os

    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        if os.access(parent, os.W_OK):
            pytest.skip("running as a user that can write anywhere (root without CAP restrictions)")
        proc = run_cli("run", "export", fixture_archive, "--out", parent / "out")
        _one_line_error(proc, 4, "cannot write")
    finally:
        parent.chmod(0o700)


def test_out_is_foreign_folder(tmp_path, fixture_archive):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.docx").write_text("precious")
    proc = run_cli("run", "export", fixture_archive, "--out", out)
    _one_line_error(proc, 4, "not empty")
    assert [p.name for p in out.iterdir()] == ["thesis.docx"]


def test_usage_error_exit_2(tmp_path, fixture_archive):
    proc = run_cli("run", "export", fixture_archive, "--format", "xml")
    assert proc.returncode == 2
    proc = run_cli("run", "export", fixture_archive, "--batch-size", "0")
    assert proc.returncode == 2


def test_debug_shows_traceback(tmp_path):
    proc = run_cli("run", "export", tmp_path / "nope.db", "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_success_summary_and_manifest(tmp_path, fixture_archive):
    out = tmp_path / "out"
    proc = run_cli("run", "export", fixture_archive, "--out", out, "-f", "csv", "-f", "ndjson")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("Exported ")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["formats"] == ["csv", "ndjson"]
    assert {f["path"] for f in manifest["files"]} >= {"posts.csv", "posts.ndjson"}
    assert not (out / "posts.json").exists()
    assert manifest["archive"]["path"] == str(fixture_archive.resolve())


def test_default_out_and_formats(tmp_path, fixture_archive):
    proc = run_cli("run", "export", fixture_archive, "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (out,) = (tmp_path / "exports").iterdir()
    assert out.name.startswith("archive-")
    assert sorted(p.name for p in out.iterdir() if p.name != "rejects.ndjson") == [
        "follows.csv", "follows.json", "likes.csv", "likes.json", "manifest.json", "metrics.json", "posts.csv",
        "posts.json",
    ]  # every record type the archive has, in csv and json  # fmt: skip


def test_help_has_example():
    proc = run_cli("run", "export", "--help")
    assert proc.returncode == 0
    assert "Example:" in proc.stdout and "pipeline run export" in proc.stdout


def test_types_option(tmp_path, fixture_archive):
    proc = run_cli("run", "export", fixture_archive, "--out", tmp_path / "o", "--types", "follows,likes", "-q")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "follows.csv", "follows.json", "likes.csv", "likes.json", "manifest.json", "metrics.json",
    ]  # fmt: skip
    proc = run_cli("run", "export", fixture_archive, "--out", tmp_path / "p", "--types", "posts,reposts")
    _one_line_error(proc, 2, "unknown record type", "reposts")


def test_missing_table_named_or_not(tmp_path, fixture_archive):
    db = tmp_path / "nolikes.db"
    db.write_bytes(fixture_archive.read_bytes())
    con = sqlite3.connect(db)
    con.execute("DROP TABLE likes")
    con.commit()
    con.close()
    proc = run_cli("run", "export", db, "--out", tmp_path / "o", "-q")
    assert proc.returncode == 0, proc.stderr
    assert "pipeline: note: the archive has no 'likes' table; likes skipped" in proc.stderr
    proc = run_cli("run", "export", db, "--out", tmp_path / "p", "--types", "likes")
    _one_line_error(proc, 3, "no 'likes' table")
    assert not (tmp_path / "p").exists()


def test_max_rejects(tmp_path, fixture_archive):
    from oracle import expected_records

    total = sum(len(expected_records(str(fixture_archive), t).rejects) for t in ("posts", "likes", "follows"))
    assert total > 0
    out = tmp_path / "out"
    ok = run_cli("run", "export", fixture_archive, "--out", out, "--max-rejects", total, "-q")
    assert ok.returncode == 0, ok.stderr
    assert json.loads((out / "manifest.json").read_text())["reject_count"] == total
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for limit in (0, total - 1):
        r = run_cli("run", "export", fixture_archive, "--out", out, "--max-rejects", limit, "-q")
        assert r.returncode == 1, r.stderr
        assert f"more than --max-rejects {limit} value(s) rejected" in r.stderr and "Traceback" not in r.stderr
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing published
        assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left
    bad = run_cli("run", "export", fixture_archive, "--out", tmp_path / "o2", "--max-rejects", "-1")
    assert bad.returncode == 2
