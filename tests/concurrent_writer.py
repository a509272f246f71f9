"""An archiver writing while an export reads: numbered, deterministic transactions.

    python tests/concurrent_writer.py ARCHIVE SEED SECONDS [PAUSE]

Commits transaction 1, 2, ... for SECONDS (printing ``started`` after the
first), PAUSE seconds apart (default 0: back to back), then prints the last number. Transaction n inserts the post
``at://did:plc:writer/app.bsky.feed.post/w<n>`` and a like of it, changes the
text of one existing post, deletes one post and one like: a reader sees all
of transaction n or none of it. ``replay`` applies transactions 1..n to a copy
of the starting archive, to compute the state a reader saw.
"""

from __future__ import annotations

import random
import sqlite3
import sys
import time


def transaction(con: sqlite3.Connection, rng: random.Random, n: int) -> None:
    posts = con.execute("SELECT count(*) FROM posts").fetchone()[0]
    likes = con.execute("SELECT count(*) FROM likes").fetchone()[0]
    changed = rng.randrange(posts)
    gone_post = rng.randrange(posts)
    gone_like = rng.randrange(likes)
    when = f"2031-01-{1 + n % 28:02d}T00:00:00Z"
    uri = f"at://did:plc:writer/app.bsky.feed.post/w{n}"
    con.execute("BEGIN IMMEDIATE")
    con.execute(
        "UPDATE posts SET text = ? WHERE uri = (SELECT uri FROM posts ORDER BY uri LIMIT 1 OFFSET ?)",
        (f"edited by transaction {n}", changed),
    )
    con.execute("DELETE FROM posts WHERE uri = (SELECT uri FROM posts ORDER BY uri LIMIT 1 OFFSET ?)", (gone_post,))
    con.execute("DELETE FROM likes WHERE uri = (SELECT uri FROM likes ORDER BY uri LIMIT 1 OFFSET ?)", (gone_like,))
    con.execute(
        "INSERT INTO posts (uri, cid, did, text, created_at, indexed_at, archived_at)"
        " VALUES (?, ?, 'did:plc:writer', ?, ?, ?, ?)",
        (uri, f"cid{n}", f"post {n}", when, when, when),
    )
    con.execute(
        "INSERT INTO likes (uri, cid, did, subject_uri, subject_cid, created_at, indexed_at)"
        " VALUES (?, ?, 'did:plc:writer', ?, ?, ?, ?)",
        (f"at://did:plc:writer/app.bsky.feed.like/w{n}", f"lcid{n}", uri, f"cid{n}", when, when),
    )
    con.execute("COMMIT")


def replay(db: str, seed: int, n: int) -> None:
    con = sqlite3.connect(db, isolation_level=None)
    rng = random.Random(seed)
    for i in range(1, n + 1):
        transaction(con, rng, i)
    con.close()


def main(db: str, seed: int, seconds: float, pause: float = 0.0) -> None:
    con = sqlite3.connect(db, isolation_level=None, timeout=30)
    rng = random.Random(seed)
    n = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        n += 1
        transaction(con, rng, n)
        if n == 1:
            print("started", flush=True)
        time.sleep(pause)
    print(n, flush=True)
    con.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), *map(float, sys.argv[4:5]))
