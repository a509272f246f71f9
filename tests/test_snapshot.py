"""One snapshot: an export while another process writes the archive at full speed."""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import sys

import pytest
from concurrent_writer import replay
from conftest import ROOT, run_cli
from test_export import check_export

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
