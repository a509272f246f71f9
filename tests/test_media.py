"""--include-media against real blob files: the right files land, byte for byte; the rest is listed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from conftest import altered, run_cli
from oracle import instant

import pipeline

EXT = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}


@pytest.fixture
def media_archive(tmp_path, fixture_archive) -> tuple[Path, dict[str, str]]:
    """The fixture in its own folder with 40 real blobs, and the odd cases (hash → what it is)."""
    root = tmp_path / "archive"
    root.mkdir()
    db = root / "archive.db"
    shutil.copy(fixture_archive, db)
    con = sqlite3.connect(db)
    # media without its primary key, so one hash can appear twice (two posts, one blob)
    con.executescript(
        "CREATE TABLE media2 AS SELECT * FROM media; DROP TABLE media; ALTER TABLE media2 RENAME TO media;"
    )
    rows = con.execute("SELECT hash, post_uri, file_path FROM media ORDER BY hash LIMIT 46").fetchall()
    odd: dict[str, str] = {}
    for i, (_, _, path) in enumerate(rows[:40]):
        blob = root / path
        blob.parent.mkdir(parents=True, exist_ok=True)
        size = 3 * 2**20 + 17 if i == 0 else 1000 + i  # one bigger than the 1 MiB copy piece
        blob.write_bytes(os.urandom(size))
    h_missing = rows[40][0]  # its file is never written
    odd[h_missing] = "missing"
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"secret")
    h_dotdot, h_abs, h_link, h_dir, h_dup = (r[0] for r in rows[41:46])
    con.execute("UPDATE media SET file_path = '../outside.bin' WHERE hash = ?", (h_dotdot,))
    con.execute("UPDATE media SET file_path = ? WHERE hash = ?", (str(outside), h_abs))
    (root / "media" / "link.jpg").symlink_to(outside)
    con.execute("UPDATE media SET file_path = 'media/link.jpg' WHERE hash = ?", (h_link,))
    (root / "media" / "folder.jpg").mkdir()
    con.execute("UPDATE media SET file_path = 'media/folder.jpg' WHERE hash = ?", (h_dir,))
    odd.update({h_dotdot: "refused", h_abs: "refused", h_link: "refused", h_dir: "missing"})
    # a second row for a blob that exists, on another post
    h0, post0, path0 = rows[1]
    other = con.execute("SELECT uri FROM posts WHERE uri != ? LIMIT 1", (post0,)).fetchone()[0]
    con.execute("INSERT INTO media (hash, post_uri, mime_type, file_path, size_bytes) VALUES (?, ?, 'image/png', ?, 1)",
                (h0, other, path0))  # fmt: skip
    odd[h_dup] = "duplicate-free"  # nothing special: its file was written above
    con.commit()
    con.close()
    return db, odd


def _expected(db: Path, did: str | None = None, since: int | None = None) -> dict[str, tuple[str, str]]:
    """hash → (mime_type, file_path) of the media rows whose post the filters keep (stdlib)."""
    con = sqlite3.connect(db)
    rows = con.execute(
        "SELECT m.hash, m.mime_type, m.file_path, p.did, p.created_at FROM media m JOIN posts p ON p.uri = m.post_uri"
    ).fetchall()
    con.close()
    out: dict[str, tuple[str, str]] = {}
    for h, mime, path, post_did, created in sorted(rows, key=lambda r: (r[0], r[2], r[1])):
        if did is not None and post_did != did:
            continue
        t = instant(created)
        if since is not None and (t is None or t < since):
            continue
        out.setdefault(h, (mime, path))
    return out


@pytest.mark.parametrize("opts", [{}, {"since": "2024-01-01"}])
def test_media_copied_listed_or_refused(media_archive, tmp_path, opts):
    db, odd = media_archive
    out = tmp_path / "out"
    proc = run_cli("run", "export", db, "--out", out, "-f", "ndjson", "--include-media", "-q",
                   *[x for k, v in opts.items() for x in (f"--{k}", v)])  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    since = instant(opts["since"] + "T00:00:00Z") if "since" in opts else None
    want = _expected(db, since=since)
    root = db.parent.resolve()
    copied, missing, refused = {}, set(), set()
    for h, (mime, path) in want.items():
        src = Path(path) if os.path.isabs(path) else root / path
        real = Path(os.path.realpath(src))
        if root not in real.parents:
            refused.add(h)
        elif not real.is_file():
            missing.add(h)
        else:
            copied[f"{h}.{EXT[mime]}"] = real.read_bytes()
    manifest = json.loads((out / "manifest.json").read_text())
    got = {p.name: p.read_bytes() for p in (out / "media").iterdir()} if (out / "media").exists() else {}
    assert got == copied  # byte-identical, each blob once
    assert manifest["media_count"] == len(copied)
    assert {m["hash"] for m in manifest["media_missing"]} == missing
    assert {m["hash"] for m in manifest["media_refused"]} == refused
    files = {f["path"]: f for f in manifest["files"]}
    for name, data in copied.items():
        assert files[f"media/{name}"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert not (out / "media" / "link.jpg").exists() and b"secret" not in b"".join(got.values())
    if not opts:
        assert {h for h, kind in odd.items() if kind == "refused"} <= refused
        assert {h for h, kind in odd.items() if kind == "missing"} <= missing
        assert len(copied) == 40
    if not opts:  # the summary line counts them
        proc = run_cli("run", "export", db, "--out", tmp_path / "again", "-f", "csv", "--include-media")
        line = proc.stderr.strip().splitlines()[-1]
        assert f"{len(copied)} media file(s) copied ({len(missing)} missing, {len(refused)} refused" in line, line


def test_media_table_needed_when_asked(tmp_path, fixture_archive):
    db = altered(fixture_archive, tmp_path / "nomedia.db", "DROP TABLE media")
    with pytest.raises(pipeline.ArchiveError, match="no 'media' table"):
        pipeline.export(db, tmp_path / "out", include_media=True)
    assert not (tmp_path / "out").exists()


def test_file_paths_that_are_not_text(tmp_path, fixture_archive):
    """A file_path that is not UTF-8 is still a path (bytes); one with a NUL byte is refused."""
    root = tmp_path / "archive"
    root.mkdir()
    db = root / "archive.db"
    shutil.copy(fixture_archive, db)
    con = sqlite3.connect(db)
    (h1, _), (h2, _) = con.execute("SELECT hash, file_path FROM media ORDER BY hash LIMIT 2").fetchall()
    con.execute("UPDATE media SET file_path = CAST(X'6D65FF2E6A7067' AS TEXT) WHERE hash = ?", (h1,))  # b"me\xff.jpg"
    con.execute("UPDATE media SET file_path = 'media/x' || char(0) || 'y.jpg' WHERE hash = ?", (h2,))
    mime = con.execute("SELECT mime_type FROM media WHERE hash = ?", (h1,)).fetchone()[0]
    con.commit()
    con.close()
    data = os.urandom(5000)
    with open(os.path.join(os.fsencode(root), b"me\xff.jpg"), "wb") as f:
        f.write(data)
    out = tmp_path / "out"
    result = pipeline.export(db, out, formats=["csv"], types=["posts"], include_media=True)
    assert (out / "media" / f"{h1}.{EXT[mime]}").read_bytes() == data
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    refused = {m["hash"]: m for m in manifest["media_refused"]}
    assert refused[h2]["reason"] == "file_path holds a NUL byte" and result.media == 1
