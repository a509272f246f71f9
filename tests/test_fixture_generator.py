"""The fixture generator's style "bskyarchive" stores values as bskyarchive does (stdlib only)."""

from __future__ import annotations

import calendar
import filecmp
import hashlib
import json
import re
import sqlite3
from datetime import datetime
from pathlib import Path

import pytest
from conftest import generator

gen = generator

# Go's time.Time.String(): 'YYYY-MM-DD HH:MM:SS[.f] ±HHMM ZONE[ m=±S.NNNNNNNNN]'.
GO_TIME = re.compile(
    r"(?P<dt>\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})(?:\.(?P<frac>\d{0,8}[1-9]))?"
    r" (?P<off>[+-]\d{4}) (?P<zone>[A-Z]{3,5}|[+-]\d{4})(?P<mono> m=[+-]\d+\.\d{9})?"
)
TIMESTAMP_COLUMNS = {
    "posts": ("created_at", "indexed_at", "archived_at"),
    "media": ("created_at",),
    "profiles": ("snapshot_at",),
    "operations": ("started_at", "completed_at"),
    "likes": ("created_at", "indexed_at"),
    "follows": ("created_at", "indexed_at"),
    "ops": ("time",),
}


def go_instant(text: str) -> int:
    """Nanoseconds since the epoch of a Go time string (raises on anything else)."""
    match = GO_TIME.fullmatch(text)
    assert match, f"not a Go time string: {text!r}"
    off = match["off"]
    if match["zone"].startswith(("+", "-")):
        assert match["zone"] == off, text
    seconds = calendar.timegm(datetime.strptime(match["dt"], "%Y-%m-%d %H:%M:%S").timetuple())
    offset = (int(off[1:3]) * 3600 + int(off[3:5]) * 60) * (-1 if off[0] == "-" else 1)
    return (seconds - offset) * 10**9 + int((match["frac"] or "").ljust(9, "0"))


def fraction_digits(text: str) -> int:
    match = GO_TIME.fullmatch(text)
    assert match
    return len(match["frac"] or "")


def media_hash(url: str) -> str:
    return url.rsplit("/", 1)[1].split("@", 1)[0]


@pytest.fixture(scope="module")
def bsky_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder holding data/archive.db and data/media (1,200 posts)."""
    root = tmp_path_factory.mktemp("bsky")
    (root / "data").mkdir()
    gen.make_archive(root / "data" / "archive.db", 1200, seed=5, style="bskyarchive")
    return root


@pytest.fixture(scope="module")
def db(bsky_root: Path):
    conn = sqlite3.connect(bsky_root / "data" / "archive.db")
    yield conn
    conn.close()


def owner(db: sqlite3.Connection) -> str:
    (did,) = {row[0] for row in db.execute("SELECT did FROM profiles")}
    return did


def test_go_time_string() -> None:
    assert gen.go_time_string(1714566896789000000, 0, "UTC") == "2024-05-01 12:34:56.789 +0000 UTC"
    assert gen.go_time_string(1714566896780000000, 0, "UTC", None) == "2024-05-01 12:34:56.78 +0000 UTC"
    assert gen.go_time_string(1714566896000000000, 9 * 3600, "") == "2024-05-01 21:34:56 +0900 +0900"
    assert gen.go_time_string(1714566896000000000, -3 * 3600, "") == "2024-05-01 09:34:56 -0300 -0300"
    assert gen.go_time_string(1714566896000000000, 0, "") == "2024-05-01 12:34:56 +0000 +0000"
    assert gen.go_time_string(1714566896000000000, 19_800, "") == "2024-05-01 18:04:56 +0530 +0530"
    assert (
        gen.go_time_string(1762920188093296684, -8 * 3600, "PST", 514.016063271)
        == "2025-11-11 20:03:08.093296684 -0800 PST m=+514.016063271"
    )
    assert gen.go_time_string(1, 0, "UTC", 2.5) == "1970-01-01 00:00:00.000000001 +0000 UTC m=+2.500000000"
    year5 = calendar.timegm((5, 3, 1, 0, 0, 0)) * 10**9
    assert gen.go_time_string(year5, 0, "UTC") == "0005-03-01 00:00:00 +0000 UTC"


def test_every_timestamp_is_a_go_time_string(db: sqlite3.Connection) -> None:
    for table, columns in TIMESTAMP_COLUMNS.items():
        for column in columns:
            values = [v for (v,) in db.execute(f"SELECT {column} FROM {table}")]
            assert values, (table, column)
            for value in values:
                go_instant(value)
    zones = {GO_TIME.fullmatch(v)["zone"] for (v,) in db.execute("SELECT created_at FROM posts")}
    assert {"UTC", "+0000"} <= zones and len(zones) > 4
    local = {GO_TIME.fullmatch(v)["zone"] for (v,) in db.execute("SELECT indexed_at FROM posts")}
    assert local == {"PST", "PDT"}


def test_now_times_have_nanoseconds_and_monotonic_clock(db: sqlite3.Connection) -> None:
    rows = db.execute("SELECT created_at, indexed_at, archived_at FROM posts").fetchall()
    for column in (1, 2):
        values = [row[column] for row in rows]
        assert all(" m=+" in v for v in values)
        share = sum(fraction_digits(v) == 9 for v in values) / len(values)
        assert 0.85 <= share <= 0.95, share
    assert not any(" m=" in row[0] for row in rows)
    assert sum(fraction_digits(row[0]) == 3 for row in rows) > len(rows) / 2  # records carry milliseconds
    for created, indexed, archived in rows:
        assert go_instant(created) < go_instant(indexed)
        assert go_instant(created) < go_instant(archived)


def test_json_blobs_and_empty_strings(db: sqlite3.Connection) -> None:
    types = db.execute("SELECT DISTINCT typeof(embed_data), typeof(labels) FROM posts").fetchall()
    assert types == [("blob", "blob")]
    nulls = db.execute(
        "SELECT count(*) FROM posts WHERE text IS NULL OR reply_parent IS NULL OR embed_type IS NULL"
    ).fetchone()
    assert nulls == (0,)
    assert db.execute("SELECT count(*) FROM posts WHERE embed_type = '' AND embed_data = x'6e756c6c'").fetchone()[0]
    assert db.execute("SELECT count(*) FROM posts WHERE labels = x'6e756c6c'").fetchone()[0] > 1000
    assert db.execute("SELECT count(*) FROM posts WHERE is_reply = 0 AND reply_parent != ''").fetchone() == (0,)
    for data, labels in db.execute("SELECT embed_data, labels FROM posts"):
        json.loads(data)
        json.loads(labels)
    assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)


def test_media_files_and_hashes(bsky_root: Path, db: sqlite3.Connection) -> None:
    media = {row[0]: row for row in db.execute("SELECT hash, post_uri, file_path, size_bytes, mime_type FROM media")}
    assert len(media) > 200
    for blob, _, file_path, size, mime in media.values():
        assert re.fullmatch(r"[0-9a-f]{64}", blob)
        assert file_path == f"data/media/{blob[:2]}/{blob[2:4]}/{blob}.jpg"
        data = (bsky_root / file_path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == blob
        assert len(data) == size and mime == "image/jpeg"
    # A post's own images are downloaded: the hash cut from each fullsize URL is a media row's.
    seen = set()
    for kind, data in db.execute(
        "SELECT embed_type, embed_data FROM posts WHERE embed_type LIKE '%media' OR embed_type = 'images'"
    ):
        view = json.loads(data)
        images = view["images"] if kind == "images" else view["media"]["images"]
        for image in images:
            assert media_hash(image["fullsize"]) in media
            seen.add(media_hash(image["fullsize"]))
    assert seen == set(media)


def test_reposts(db: sqlite3.Connection) -> None:
    me = owner(db)
    rows = db.execute("SELECT rowid, uri, did, created_at FROM posts ORDER BY rowid").fetchall()
    reposts = [row for row in rows if row[2] != me]
    assert 0.10 <= len(reposts) / len(rows) <= 0.16
    assert len({row[2] for row in reposts}) >= 5
    assert all(row[1].startswith(f"at://{row[2]}/app.bsky.feed.post/") for row in rows)
    # Stored at the feed position of the repost, with the original post's (older) created_at.
    out_of_order = sum(go_instant(a[3]) < go_instant(b[3]) for a, b in zip(rows, rows[1:], strict=False))
    assert out_of_order > len(reposts) / 2


def test_two_syncs_insert_newest_first_and_update_in_place(db: sqlite3.Connection) -> None:
    me = owner(db)
    assert len(db.execute("SELECT snapshot_at FROM profiles").fetchall()) == 2
    rows = db.execute("SELECT rowid, did, created_at, indexed_at, archived_at FROM posts ORDER BY rowid").fetchall()
    starts = sorted(go_instant(v) for (v,) in db.execute("SELECT started_at FROM operations"))
    assert len(starts) == 2
    first = [row for row in rows if go_instant(row[4]) < starts[1]]
    second = [row for row in rows if go_instant(row[4]) >= starts[1]]
    assert 0.65 <= len(first) / len(rows) <= 0.75
    assert max(row[0] for row in first) < min(row[0] for row in second)
    for sync in (first, second):
        own = [go_instant(row[2]) for row in sync if row[1] == me]
        assert own == sorted(own, reverse=True)
    # The second sync saved the older posts again: same rowid, new indexed_at, old archived_at.
    refreshed = sum(go_instant(row[3]) >= starts[1] for row in first)
    assert refreshed / len(first) > 0.9


def parses(text: str) -> bool:
    try:
        go_instant(text)
    except (AssertionError, ValueError):
        return False
    return True


def test_null_prefix_and_bad_values(tmp_path: Path) -> None:
    path = tmp_path / "data" / "archive.db"
    path.parent.mkdir()
    gen.make_archive(path, 400, seed=2, style="bskyarchive", null_prefix=30, bad_every=20, media_files=False)
    assert not (tmp_path / "data" / "media").exists()
    conn = sqlite3.connect(path)
    rows = conn.execute(
        "SELECT uri, created_at, indexed_at, text, reply_parent, embed_type, embed_data, labels FROM posts"
    )
    rows = rows.fetchall()
    conn.close()
    # Broken values: impossible dates in Go form, garbage, malformed JSON BLOBs.
    broken = {value for row in rows for value in row[1:3] if not parses(value)}
    known = {value for column, value in gen.BSKY_BAD_VALUES if column in ("created_at", "indexed_at")}
    assert broken and broken <= known
    assert "2024-02-30 10:00:00 +0000 UTC" in broken
    unparseable_json = 0
    for row in rows:
        for value in row[6:8]:
            try:
                json.loads(value) if value is not None else None
            except ValueError:
                unparseable_json += 1
    assert unparseable_json > 0
    # NULL prefix: the 30 newest posts (created_at, ties by uri) have SQL NULLs, the next one values.
    dated = sorted((row for row in rows if parses(row[1])), key=lambda row: (-go_instant(row[1]), row[0]))
    assert all(value is None for row in dated[:30] for value in row[3:])
    assert all(value is not None and value != "" for value in dated[30][3:])
    assert sum(value is None for row in rows for value in row[3:]) == 30 * 5


def test_same_arguments_same_bytes(tmp_path: Path) -> None:
    trees = []
    for name in ("a", "b"):
        (tmp_path / name / "data").mkdir(parents=True)
        gen.make_archive(tmp_path / name / "data" / "archive.db", 300, seed=9, style="bskyarchive")
        trees.append(tmp_path / name / "data")
    assert (trees[0] / "archive.db").read_bytes() == (trees[1] / "archive.db").read_bytes()
    files = sorted(p.relative_to(trees[0]) for p in (trees[0] / "media").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(trees[1]) for p in (trees[1] / "media").rglob("*") if p.is_file())
    assert files
    match, mismatch, errors = filecmp.cmpfiles(trees[0], trees[1], [str(f) for f in files], shallow=False)
    assert not mismatch and not errors and len(match) == len(files)
