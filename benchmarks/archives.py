"""The benchmark archives, generated once with data/fixtures/make_archive.py and cached in benchmarks/.cache/."""

from __future__ import annotations

import importlib.util
import json
import random
import shutil
import sqlite3
import sys
import time
from pathlib import Path
from urllib.parse import quote

from benchmarks.measure import CACHE, ROOT

SEED = 1
SHUFFLE_SEED = 1
SHUFFLED_TABLES = ("posts", "likes", "follows")  # the tables exported in time order
HUGE_POSTS = 2_000
HUGE_ROW_BYTES = 1_500_000
REALISTIC_POSTS = 300_000
SCALE_POSTS = 10_000_000
SCALE_ARCHIVE_BYTES = 13 * 10**9  # the 10M plain archive's size on disk, about
# Disk one export of the posts needs at once, per byte of archive: the snapshot copy of the archive (1x, the
# export copies a rollback-journal archive before reading it), csv + json + ndjson of the posts (1.46x,
# measured on the 40k plain archive) and the sort's spill files (at most about the posts' size, 1x).
EXPORT_DISK_FACTOR = 3.5


def _make_archive(path: Path, posts: int, **options: object) -> None:
    spec = importlib.util.spec_from_file_location("make_archive", ROOT / "data" / "fixtures" / "make_archive.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.make_archive(path, posts=posts, seed=SEED, **options)


def _cached(path: Path, make: object, what: str = "") -> Path:
    """``path``, made by ``make(tmp)`` into a temporary file and renamed, unless it exists already."""
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"generating {path.name}{what} ...", file=sys.stderr, flush=True)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    make(tmp)  # type: ignore[operator]
    tmp.rename(path)
    print(f"generated {path.name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return path


def archive(posts: int) -> Path:
    """The seeded archive of ``posts`` posts (likes posts/2, follows posts/10, ops), made if not cached."""
    return _cached(CACHE / f"posts-{posts}-seed{SEED}.db", lambda tmp: _make_archive(tmp, posts))


def realistic_archive(posts: int = REALISTIC_POSTS) -> Path:
    """The seeded archive in bskyarchive's own storage (Go time strings, JSON BLOBs, two syncs with reposts,
    so rowid order is almost time order), without media files; made if not cached."""
    return _cached(
        CACHE / f"bsky-{posts}-seed{SEED}.db",
        lambda tmp: _make_archive(tmp, posts, style="bskyarchive", media_files=False),
    )


def shuffled_archive(source: Path, seed: int = SHUFFLE_SEED) -> Path:
    """A copy of ``source`` whose posts, likes and follows are inserted in a seeded random order (so their
    rowid order is not time order); every other table is copied in rowid order. Made if not cached.

    The copy is built table by table from ``source``'s schema (read-only), not edited in place: the rows
    get new rowids, and the full-text index (filled by the posts trigger) follows them.
    """
    return _cached(CACHE / f"{source.stem}-shuffled{seed}.db", lambda tmp: _shuffle_copy(source, tmp, seed))


def _shuffle_copy(source: Path, dest: Path, seed: int) -> None:
    con = sqlite3.connect(f"file:{quote(str(dest))}", uri=True, isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode = OFF")
        con.execute("PRAGMA synchronous = OFF")
        con.execute("ATTACH DATABASE ? AS src", (f"file:{quote(str(source))}?mode=ro",))
        shadow = {r[1] for r in con.execute("PRAGMA src.table_list") if r[2] == "shadow"}
        schema = con.execute(
            "SELECT type, name, sql FROM src.sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%'"
            " ORDER BY rowid"
        ).fetchall()
        con.execute("BEGIN")
        tables = [(name, sql) for kind, name, sql in schema if kind == "table" and name not in shadow]
        for _, sql in tables:
            con.execute(sql)
        virtual = {name for name, sql in tables if sql.upper().startswith("CREATE VIRTUAL")}
        for kind, _, sql in schema:  # the triggers first: the posts trigger fills the full-text index
            if kind == "trigger":
                con.execute(sql)
        rng = random.Random(seed)
        for name, _ in tables:
            if name in virtual:
                continue
            if name in SHUFFLED_TABLES:
                _insert_shuffled(con, name, rng)
            else:
                con.execute(f'INSERT INTO main."{name}" SELECT * FROM src."{name}" ORDER BY rowid')
        for kind, _, sql in schema:
            if kind in ("index", "view"):
                con.execute(sql)
        con.execute("COMMIT")
        con.execute("DETACH DATABASE src")
    finally:
        con.close()


def _insert_shuffled(con: sqlite3.Connection, table: str, rng: random.Random) -> None:
    """Copy ``src.table`` into ``main.table`` in the order of a permutation of its rowids drawn from ``rng``."""
    rowids = [r[0] for r in con.execute(f'SELECT rowid FROM src."{table}" ORDER BY rowid')]
    rng.shuffle(rowids)
    con.execute("CREATE TEMP TABLE shuffle (pos INTEGER PRIMARY KEY, src_rowid INTEGER NOT NULL)")
    con.executemany("INSERT INTO temp.shuffle (src_rowid) VALUES (?)", ((r,) for r in rowids))
    con.execute(
        f'INSERT INTO main."{table}" SELECT t.* FROM temp.shuffle s CROSS JOIN src."{table}" t'
        " ON t.rowid = s.src_rowid ORDER BY s.pos"
    )
    con.execute("DROP TABLE temp.shuffle")


def scale_archive() -> Path:
    """The seeded 10,000,000-post plain archive (~13 GB), made if not cached; exits with a clear message first
    if the disk holding the cache lacks room for it and for the exports the benchmark writes from it."""
    path = CACHE / f"posts-{SCALE_POSTS}-seed{SEED}.db"
    if path.exists():
        check_export_disk(path)
        return path
    need = round(SCALE_ARCHIVE_BYTES * (1 + EXPORT_DISK_FACTOR))
    check_disk(need, f"the {SCALE_POSTS:,}-post archive and its exports")
    return archive(SCALE_POSTS)


def check_export_disk(db: Path) -> None:
    """Exit with one line unless the cache's disk has room for exporting ``db``'s posts (EXPORT_DISK_FACTOR)."""
    check_disk(round(db.stat().st_size * EXPORT_DISK_FACTOR), f"exporting {db.name}")


def check_disk(need: int, what: str) -> None:
    """Exit (SystemExit with one line) unless the disk holding benchmarks/.cache has ``need`` bytes free."""
    CACHE.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(CACHE).free
    if free < need:
        raise SystemExit(f"not enough disk for {what}: {need / 1e9:.0f} GB needed, {free / 1e9:.1f} GB free in {CACHE}")


def huge_embed(rowid: int, did: str, size: int = HUGE_ROW_BYTES) -> str:
    """A valid ``app.bsky.embed.images`` JSON object of about ``size`` bytes, different for every ``rowid``."""
    alt = (
        f'Row {rowid}: a long alt text with "quotes", a back\\slash, commas, a tab\t, a newline\n, '
        "and some non-ASCII: café ☕ 猫 ελλάδα 🐈. "
    ) * 26
    images = []
    i = 0
    total = 0
    while total < size:
        image = {
            "fullsize": f"https://cdn.example/img/{did}/bafkrei{rowid:07d}x{i:05d}@jpeg",
            "alt": alt,
            "aspectRatio": {"width": 1080 + i, "height": 1920},
        }
        total += len(json.dumps(image, ensure_ascii=False).encode()) + 2
        images.append(image)
        i += 1
    return json.dumps({"$type": "app.bsky.embed.images", "images": images}, ensure_ascii=False)


def huge_archive() -> Path:
    """A 2,000-post archive whose every post has ~1.5 MB of valid embed_data (has_media=1), ~3 GB."""
    return _cached(CACHE / f"huge-{HUGE_POSTS}-seed{SEED}.db", _make_huge, " (~3 GB)")


def _make_huge(tmp: Path) -> None:
    _make_archive(tmp, HUGE_POSTS)
    con = sqlite3.connect(tmp, isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode = OFF")
        con.execute("PRAGMA synchronous = OFF")
        con.execute("BEGIN")
        rows = con.execute("SELECT rowid, did FROM posts").fetchall()
        for rowid, did in rows:
            con.execute(
                "UPDATE posts SET embed_data = ?, embed_type = 'images', has_media = 1 WHERE rowid = ?",
                (huge_embed(rowid, did), rowid),
            )
        con.execute("COMMIT")
    finally:
        con.close()


def count_posts(db: Path) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("SELECT count(*) FROM posts").fetchone()[0]
    finally:
        con.close()


def warm(path: Path) -> None:
    """Read the file once, so every tool sees a warm page cache."""
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass
