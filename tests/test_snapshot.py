"""One snapshot: an export while another process writes the archive at full speed."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from concurrent_writer import replay
from conftest import ROOT, copy_complete, run_cli
from test_export import check_export

import pipeline
from pipeline.source import Archive

SEED = 5


@pytest.mark.parametrize(("jobs", "mode"), [("1", "wal"), ("4", "wal"), ("4", "delete")])
def test_export_sees_one_snapshot_while_the_archive_is_written(archive_20k, tmp_path, jobs, mode):
    """WAL: one read transaction. Rollback journal (bskyarchive's): a copy taken under one lock."""
    start = tmp_path / "start.db"
    shutil.copy(archive_20k, start)
    con = sqlite3.connect(start)
    assert con.execute(f"PRAGMA journal_mode = {mode}").fetchone()[0] == mode
    con.close()
    live = tmp_path / "live.db"
    shutil.copy(start, live)
    writer = subprocess.Popen(
        # In rollback-journal mode a writer committing back to back holds readers off entirely (its
        # pending lock): bskyarchive commits a page of posts at a time, so this one pauses 5 ms.
        [
            sys.executable,
            str(ROOT / "tests" / "concurrent_writer.py"),
            str(live),
            str(SEED),
            "6",
            "0" if mode == "wal" else "0.005",
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None and writer.stdout.readline().strip() == "started"
    out = tmp_path / "out"
    try:
        r = run_cli("run", "export", live, "--out", out, "-f", "csv", "-f", "json", "--jobs", jobs, "-q")
    finally:
        last = int(writer.communicate(timeout=60)[0].strip())
    assert r.returncode == 0, r.stderr
    # The snapshot is the state after some transaction n: its post w<n> is the newest writer post.
    seen = [int(m) for m in re.findall(r"app\.bsky\.feed\.post/w(\d+)", (out / "posts.csv").read_text())]
    n = max(seen)
    assert 1 <= n < last, (n, last)  # the writer kept committing while the export read
    replayed = tmp_path / "replayed.db"
    shutil.copy(start, replayed)  # start.db has no -wal: it was closed after the switch
    replay(str(replayed), SEED, n)
    # Every type, every page: exactly the rows of that state, none duplicated or missing.
    check_export(out, replayed, ["csv", "json"], ("posts", "likes", "follows"))


# -- the copy, made while the export reads ----------------------------------------------


def _can_commit(db: Path) -> bool:
    """Whether another process can commit to ``db`` now, with no busy timeout (as bskyarchive)."""
    code = (
        "import sqlite3\n"
        f"con = sqlite3.connect({str(db)!r}, timeout=0, isolation_level=None)\n"
        "try:\n"
        "    con.execute('BEGIN IMMEDIATE')\n"
        "    con.execute('CREATE TABLE IF NOT EXISTS w (x)')\n"
        "    con.execute('INSERT INTO w VALUES (1)')\n"
        "    con.execute('COMMIT')\n"
        "    print('committed')\n"
        "except sqlite3.OperationalError as e:\n"
        "    print(e)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    return done.stdout.strip() == "committed"


def test_the_writer_commits_once_the_copy_is_complete_and_the_export_still_reads_its_snapshot(
    rollback_archive, tmp_path
):
    copy = tmp_path / "copy.db"
    with Archive(rollback_archive) as db:
        posts = db.read_table("SELECT count(*) FROM posts").column(0)[0].as_py()
        assert not _can_commit(rollback_archive)  # the read transaction holds the lock
        reader = db.open_reader("SELECT uri FROM posts")  # a statement open across calls: no switch under it
        db.snapshot(copy)
        copy_complete(db)
        assert not _can_commit(rollback_archive)
        assert reader.read_next_batch() is not None
        db.close_reader(reader)
        assert _can_commit(rollback_archive)  # switched to the copy: the lock is gone
        con = sqlite3.connect(rollback_archive)
        con.execute("DELETE FROM posts")
        con.commit()
        con.close()
        assert db.read_table("SELECT count(*) FROM posts").column(0)[0].as_py() == posts
        assert db.copied and db.size_bytes == copy.stat().st_size


@pytest.mark.skipif(not hasattr(os, "copy_file_range"), reason="slowed down through os.copy_file_range")
def test_closing_the_archive_stops_the_copy(rollback_archive, tmp_path, monkeypatch):
    """An interrupted export closes its archive before removing the staging folder the copy goes to."""
    from pipeline import snapshot

    real = os.copy_file_range

    def slow(*args):
        time.sleep(0.01)
        return real(*args)

    monkeypatch.setattr(snapshot, "CHUNK", 4096)
    monkeypatch.setattr(os, "copy_file_range", slow)
    copy = tmp_path / "copy.db"
    db = Archive(rollback_archive)
    db.snapshot(copy)
    time.sleep(0.1)
    started = time.monotonic()
    db.close()
    assert time.monotonic() - started < 2
    assert not any(t.name == "snapshot" for t in threading.enumerate())
    assert 0 < copy.stat().st_size < rollback_archive.stat().st_size  # stopped half way


def test_a_failed_copy_reads_in_place_with_a_warning(rollback_archive, tmp_path, monkeypatch, caplog):
    from pipeline import snapshot

    def broken(fd, dest, stop=None):
        dest.write_bytes(b"part")
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(snapshot, "copy_file", broken)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        pipeline.export(rollback_archive, out, formats=["csv"])
    assert "copying the archive failed (Input/output error); reading it in place" in caplog.text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["archive"]["read_from"] == "one read transaction"
    assert manifest["archive"]["size_bytes"] == rollback_archive.stat().st_size
    assert (out / "posts.csv").is_file() and not [p.name for p in out.iterdir() if p.name.startswith(".")]
