"""Archives stored the way bskyarchive really stores them (Go time strings, BLOB JSON, ``''``,
media under ``data/``, reposts of other accounts, two syncs), against the stdlib oracle."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import altered, copy_complete, make_archive, run_cli
from oracle import expected_posts, instant
from test_export import check_export

import pipeline
from pipeline.errors import ArchiveError
from pipeline.source import Archive

POSTS_N = 3000


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<root>/data/archive.db`` with its media files under ``<root>/data/media``; 3,000 posts, two syncs."""
    root = tmp_path_factory.mktemp("server")
    db = root / "data" / "archive.db"
    db.parent.mkdir()
    make_archive(db, posts=POSTS_N, seed=21, style="bskyarchive")
    return db


@pytest.fixture(scope="module")
def real_hard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same storage with today's hard cases in it: broken values (malformed JSON BLOBs,
    impossible Go dates, ``:60``, garbage) and a NULL-headed first page (the driver's trap)."""
    db = tmp_path_factory.mktemp("server") / "data" / "archive.db"
    db.parent.mkdir()
    make_archive(db, posts=POSTS_N, seed=22, style="bskyarchive", bad_every=40, null_prefix=1200)
    # Bytes that are not UTF-8 are passed through today (the hardening issue's case 3): left out here.
    con = sqlite3.connect(db)
    assert con.execute(
        "UPDATE posts SET embed_data = X'7b7d2c' WHERE embed_data = X'fffe7b22696d61676573223a205b5d7d'"
    ).rowcount
    con.commit()
    con.close()
    return db


@pytest.mark.parametrize("opts", [{}, {"batch_size": 7, "jobs": 1}, {"since": "2024-06-01", "jobs": 4}])
def test_hard_cases_in_real_storage_match_the_oracle(real_hard, tmp_path, opts):
    out = tmp_path / "out"
    result = pipeline.export(real_hard, out, formats=["csv", "json", "ndjson"], **opts)
    bounds = {"since": instant(opts["since"] + "T00:00:00Z")} if "since" in opts else {}
    check_export(out, real_hard, ["csv", "json", "ndjson"], ("posts", "likes", "follows"), **bounds)
    reasons = {json.loads(x)["reason"] for x in (out / "rejects.ndjson").read_text().splitlines()}
    assert result.rejects > 0 and any("not a timestamp" in r for r in reasons) and "malformed JSON" in reasons


def _owner(db: Path) -> str:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        (did,) = {r[0] for r in con.execute("SELECT did FROM profiles")}
        return did
    finally:
        con.close()


def _stored_times(db: Path) -> list[str]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [t for row in con.execute("SELECT created_at, indexed_at, archived_at FROM posts") for t in row]
    finally:
        con.close()


def test_the_archive_is_stored_as_bskyarchive_stores_it(real):
    """The checks below prove something only if the archive really has Go's forms."""
    times = _stored_times(real)
    assert all(" m=+" in t for t in times[1::3])  # indexed_at: time.Now() with the monotonic clock
    assert sum(len(t.split(" ")[1].partition(".")[2]) == 9 for t in times[1::3]) > 0.8 * POSTS_N
    assert {t.split(" ")[3] for t in times[1::3]} >= {"PST", "PDT"}  # the zone name changes with the season
    con = sqlite3.connect(real)
    assert con.execute("SELECT count(*) FROM posts WHERE typeof(embed_data) = 'blob'").fetchone()[0] == POSTS_N
    assert con.execute("SELECT count(*) FROM posts WHERE text IS NULL OR embed_type IS NULL").fetchone()[0] == 0
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    con.close()


def test_every_row_exact_and_in_instant_order(real, tmp_path):
    out = tmp_path / "out"
    result = pipeline.export(real, out, formats=["csv", "json", "ndjson"], types=["posts"])
    assert result.rejects == 0  # not one timestamp (or anything else) rejected
    check_export(out, real, ["csv", "json", "ndjson"], ("posts",))
    objs = [json.loads(line) for line in (out / "posts.ndjson").read_text().split("\n")[:-1]]  # not splitlines: U+2028
    keys = [(-instant(o["created_at"]), o["uri"]) for o in objs]
    assert keys == sorted(keys)  # newest first, then uri, to the nanosecond
    assert any(len(o["indexed_at"]) == len("2025-01-01T00:00:00.123456789Z") for o in objs)  # nanoseconds kept


@pytest.mark.parametrize(
    "bounds",
    [{"since": "2025-01-01"}, {"until": "2024-06-30"}, {"since": "2024-03-10T10:00:00-07:00", "until": "2024-11-03"}],
)
def test_since_until_count_instants(real, tmp_path, bounds):
    out = tmp_path / "out"
    result = pipeline.export(real, out, formats=["json"], types=["posts"], **bounds)
    since = (
        instant(bounds["since"] if "T" in bounds["since"] else bounds["since"] + "T00:00:00Z")
        if "since" in bounds
        else None
    )
    until = instant(bounds["until"] + "T23:59:59.999999999Z") if "until" in bounds else None
    want = expected_posts(str(real), since=since, until=until)
    assert 0 < result.records["posts"] == len(want.objects) < POSTS_N
    check_export(out, real, ["json"], ("posts",), since=since, until=until)


def test_media_copied_with_no_option(real, tmp_path):
    out = tmp_path / "out"
    result = pipeline.export(real, out, formats=["csv"], types=["posts"], include_media=True)
    con = sqlite3.connect(real)
    rows = con.execute("SELECT hash, file_path FROM media").fetchall()
    con.close()
    assert rows and result.media == len({h for h, _ in rows}) and result.media_missing == result.media_refused == 0
    server = real.parent.parent  # bskyarchive's working directory: paths start there
    for h, path in rows:
        copied = next((out / "media").glob(f"{h}.*"))
        assert copied.read_bytes() == (server / path).read_bytes()
        assert hashlib.sha256(copied.read_bytes()).hexdigest() == h
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["media_root"] == str(server.resolve())


def test_media_root_option_and_guard(real, tmp_path):
    """Another layout: the archive moved away from its media; --media-root names where they are.
    The guard holds against that root: a path leading out of it is refused."""
    moved = tmp_path / "elsewhere" / "archive.db"
    moved.parent.mkdir()
    shutil.copy(real, moved)
    con = sqlite3.connect(moved)
    (h_out,) = con.execute("SELECT hash FROM media ORDER BY hash LIMIT 1").fetchone()
    con.execute("UPDATE media SET file_path = '../outside.jpg' WHERE hash = ?", (h_out,))
    con.commit()
    con.close()
    (real.parent.parent.parent / "outside.jpg").write_bytes(b"not yours")
    r = run_cli("run", "export", moved, "--out", tmp_path / "lost", "-f", "csv", "--types", "posts", "--include-media")
    assert r.returncode == 0, r.stderr
    assert "--media-root" in r.stderr  # no file found: says so, and how to point at them
    out = tmp_path / "out"
    result = pipeline.export(
        moved, out, formats=["csv"], types=["posts"], include_media=True, media_root=real.parent.parent
    )
    assert result.media_refused == 1 and result.media_missing == 0 and result.media > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [r["hash"] for r in manifest["media_refused"]] == [h_out]
    assert manifest["media_root"] == str(real.parent.parent.resolve())


def test_did_self_is_the_owner(real, tmp_path):
    owner = _owner(real)
    out = tmp_path / "out"
    result = pipeline.export(real, out, formats=["json"], types=["posts"], did="self")
    want = expected_posts(str(real), did=owner)
    assert result.records["posts"] == len(want.objects) < POSTS_N
    check_export(out, real, ["json"], ("posts",), did=owner)
    assert json.loads((out / "manifest.json").read_text())["filters"]["did"] == owner


def test_did_self_without_a_profile_is_exit_3(real, tmp_path):
    db = altered(real, tmp_path / "noprofile.db", "DELETE FROM profiles")
    with pytest.raises(ArchiveError, match="no profile"):
        pipeline.export(db, tmp_path / "out", did="self")
    r = run_cli("run", "export", db, "--out", tmp_path / "out", "--did", "self")
    assert r.returncode == 3 and "no profile" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_summary_counts_other_accounts_posts(real, tmp_path):
    owner = _owner(real)
    others = sum(o["did"] != owner for o in expected_posts(str(real)).objects)
    assert 0.08 * POSTS_N < others < 0.2 * POSTS_N  # reposts, as a real archive has them
    r = run_cli("run", "export", real, "--out", tmp_path / "out", "-f", "csv", "--types", "posts")
    assert r.returncode == 0, r.stderr
    assert f"{others:,} of the posts are by other accounts" in r.stderr and "--did self" in r.stderr
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["posts_by_others"] == others


# --- never starve the archive's writer ---------------------------------------------------------


_COMMIT_ONE = """
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)
con.execute("BEGIN IMMEDIATE")
con.execute(
    "INSERT INTO posts (uri, cid, did, text, created_at, indexed_at) VALUES (?, 'c', 'did:plc:w', '', ?, ?)",
    (f"at://did:plc:w/app.bsky.feed.post/w{sys.argv[2]}",) + ("2031-01-01 00:00:00 +0000 UTC",) * 2,
)
try:
    con.execute("COMMIT")
    print("committed")
except sqlite3.OperationalError as e:
    print(e)
"""


def _commit_one(db: Path, n: int) -> str:
    """One commit by bskyarchive's writer: no busy timeout, so it fails at once while a reader
    holds the lock. In another process: SQLite's locks are POSIX locks, which never conflict
    within one process (and the ADBC driver has its own copy of SQLite besides Python's)."""
    r = subprocess.run([sys.executable, "-c", _COMMIT_ONE, str(db), str(n)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_snapshot_of_a_rollback_archive_releases_the_lock(real, tmp_path):
    db = tmp_path / "archive.db"
    shutil.copy(real, db)
    copy = tmp_path / "copy.db"
    with Archive(db) as archive:
        assert _commit_one(db, 1) == "database is locked"  # the archive's read transaction holds the lock
        archive.snapshot(copy)  # copied on a thread of its own; the archive is read meanwhile
        assert archive.copied and archive.origin == db
        assert archive.read_table("SELECT count(*) FROM posts").column(0)[0].as_py() == POSTS_N
        copy_complete(archive)
        assert _commit_one(db, 2) == "committed"  # switched to the copy: the writer commits at once
        count = archive.read_table("SELECT count(*) FROM posts").column(0)[0].as_py()
        assert count == POSTS_N  # and the snapshot does not see it


def test_snapshot_of_a_wal_archive_is_its_read_transaction(real, tmp_path):
    db = tmp_path / "archive.db"
    shutil.copy(real, db)
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal"
    con.close()
    with Archive(db) as archive:
        archive.snapshot(tmp_path / "copy.db")
        assert not archive.copied  # WAL readers never block the writer
        assert _commit_one(db, 1) == "committed"
    assert not (tmp_path / "copy.db").exists()


def test_the_snapshot_copy_is_never_published(real, tmp_path):
    out = tmp_path / "out"
    pipeline.export(real, out, formats=["csv"], types=["posts"])
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "metrics.json", "posts.csv"]
    assert not list(tmp_path.glob(".out.*"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["archive"]["read_from"].startswith("a copy")


def test_bundled_demo_archive_is_real(tmp_path):
    from conftest import ROOT

    demo = ROOT / "data" / "fixtures" / "bskyarchive" / "data" / "archive.db"
    out = tmp_path / "demo"
    result = pipeline.export(demo, out, formats=["csv", "json"], include_media=True)
    assert result.rejects == 0 and result.media > 0 and result.media_missing == 0
    assert os.path.basename(result.manifest["media_root"]) == "bskyarchive"


def test_a_data_folder_that_is_a_link_still_finds_its_media(real, tmp_path):
    """bskyarchive's data/ may be a symbolic link to another disk: the default finds the files."""
    disk = tmp_path / "disk" / "bsky-data"
    shutil.copytree(real.parent, disk, symlinks=True)
    server = tmp_path / "server"
    server.mkdir()
    (server / "data").symlink_to(disk, target_is_directory=True)
    result = pipeline.export(server / "data" / "archive.db", tmp_path / "out", formats=["csv"], types=["posts"],
                             include_media=True)  # fmt: skip
    assert result.media > 0 and result.media_missing == result.media_refused == 0


def test_the_working_directory_outside_data_is_not_readable(real, tmp_path):
    """Relative paths start at bskyarchive's working directory, but only files in data/ are copied."""
    server = tmp_path / "server"
    shutil.copytree(real.parent, server / "data", symlinks=True)
    (server / "secret.txt").write_text("a key")
    db = server / "data" / "archive.db"
    con = sqlite3.connect(db)
    (h,) = con.execute("SELECT hash FROM media ORDER BY hash LIMIT 1").fetchone()
    con.execute("UPDATE media SET file_path = 'secret.txt' WHERE hash = ?", (h,))
    con.commit()
    con.close()
    out = tmp_path / "out"
    result = pipeline.export(db, out, formats=["csv"], types=["posts"], include_media=True)
    assert result.media_refused == 1 and not list((out / "media").glob(f"{h}.*"))
