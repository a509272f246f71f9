"""Memory regressions: a 200,000-post export and a huge-row one under pytest-memray's limit (run with --memray).

`make test` runs these in a second pytest pass with ``--memray -m memory``; the
first pass deselects them (``-m "not memory"`` in pyproject.toml), because
memray tracking slows every other test down. conftest.py imports ``cli`` first,
so the allocators are set as the command sets them (Arrow's system pool, Polars'
jemalloc returning memory).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from conftest import make_archive

import pipeline

pytestmark = pytest.mark.memory


@pytest.fixture(scope="module")
def archive_200k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("archives") / "posts200k.db"
    make_archive(path, posts=200_000, seed=13)
    return path


@pytest.mark.limit_memory("260 MB")  # measured 176 MiB
def test_csv_export_200k_posts(archive_200k, tmp_path):
    result = pipeline.export(archive_200k, tmp_path / "out", formats=["csv"], types=["posts"])
    assert result.records == {"posts": 200_000}


@pytest.mark.limit_memory("400 MB")  # measured 289 MiB
def test_all_formats_export_200k_posts(archive_200k, tmp_path):
    result = pipeline.export(archive_200k, tmp_path / "out", formats=["csv", "json", "ndjson"], types=["posts"])
    assert result.records == {"posts": 200_000}


@pytest.fixture(scope="module")
def archive_huge_rows(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 posts with ~1.5 MB of valid embed_data each (450 MB), as the benchmark's huge-row archive."""
    path = tmp_path_factory.mktemp("archives") / "huge300.db"
    make_archive(path, posts=300, seed=5)
    con = sqlite3.connect(path)
    for rowid, did in con.execute("SELECT rowid, did FROM posts").fetchall():
        alt = f'Row {rowid}: a long alt text, "quoted", café ☕ 猫 🐈, a tab\t and a newline\n. ' * 26
        images = [
            {"fullsize": f"https://cdn.example/img/{did}/bafkrei{rowid:07d}x{i:05d}@jpeg", "alt": alt}
            for i in range(560)
        ]
        embed = json.dumps({"$type": "app.bsky.embed.images", "images": images}, ensure_ascii=False)
        con.execute("UPDATE posts SET embed_data = ?, has_media = 1 WHERE rowid = ?", (embed, rowid))
    con.commit()
    con.close()
    return path


@pytest.mark.limit_memory("350 MB")  # measured 226 MiB
def test_parquet_export_of_huge_rows(archive_huge_rows, tmp_path):
    result = pipeline.export(archive_huge_rows, tmp_path / "out", formats=["parquet"], types=["posts"])
    assert result.records == {"posts": 300}


@pytest.mark.limit_memory("260 MB")  # measured 111 MiB
def test_parquet_export_200k_posts(archive_200k, tmp_path):
    result = pipeline.export(archive_200k, tmp_path / "out", formats=["parquet"], types=["posts"])
    assert result.records == {"posts": 200_000}
