"""The benchmark archives, generated once with data/fixtures/make_archive.py and cached in benchmarks/.cache/."""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import sys
import time
from pathlib import Path

from benchmarks.measure import CACHE, ROOT

SEED = 1
HUGE_POSTS = 2_000
HUGE_ROW_BYTES = 1_500_000


def _make_archive(path: Path, posts: int) -> None:
    spec = importlib.util.spec_from_file_location("make_archive", ROOT / "data" / "fixtures" / "make_archive.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.make_archive(path, posts=posts, seed=SEED)


def archive(posts: int) -> Path:
    """The seeded archive of ``posts`` posts (likes posts/2, follows posts/10, ops), made if not cached."""
    path = CACHE / f"posts-{posts}-seed{SEED}.db"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        print(f"generating {path.name} ...", file=sys.stderr, flush=True)
        tmp = path.with_suffix(".tmp")
        _make_archive(tmp, posts)
        tmp.rename(path)
        print(f"generated {path.name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return path


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
    path = CACHE / f"huge-{HUGE_POSTS}-seed{SEED}.db"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"generating {path.name} (~3 GB) ...", file=sys.stderr, flush=True)
    tmp = path.with_suffix(".tmp")
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
    tmp.rename(path)
    print(f"generated {path.name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return path


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
