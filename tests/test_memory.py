"""Memory regressions: a 200,000-post export and a huge-row one under pytest-memray's limit (run with --memray).

`make test` runs these in a second pytest pass with ``--memray -m memory``; the
first pass deselects them (``-m "not memory"`` in pyproject.toml), because
memray tracking slows every other test down. conftest.py imports ``cli`` first,
so the allocators are set as the command sets them (Arrow's system pool, Polars'
jemalloc returning memory).
"""

from __future__ import annotations

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
def huge_rows_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The benchmark's huge-row shape, smaller: 160 of 400 posts with ~1.5 MB of embed_data each (~240 MB)."""
    from benchmarks.archives import huge_embed

    path = tmp_path_factory.mktemp("archives") / "huge.db"
    make_archive(path, posts=400, seed=17)
    con = sqlite3.connect(path)
    rows = con.execute("SELECT rowid, did FROM posts ORDER BY rowid").fetchall()
    for rowid, did in rows[::5] + rows[1::5]:
        embed = huge_embed(rowid, did)
        con.execute(
            "UPDATE posts SET embed_data = ?, embed_type = 'images', has_media = 1 WHERE rowid = ?", (embed, rowid)
        )
    con.commit()
    con.close()
    return path


@pytest.mark.limit_memory("350 MB")  # measured 226 MiB on 300 posts all of ~1.5 MB (this archive has fewer)
def test_parquet_export_of_huge_rows(huge_rows_archive, tmp_path):
    result = pipeline.export(huge_rows_archive, tmp_path / "out", formats=["parquet"], types=["posts"])
    assert result.records == {"posts": 400}


@pytest.mark.limit_memory("260 MB")  # measured 111 MiB
def test_parquet_export_200k_posts(archive_200k, tmp_path):
    result = pipeline.export(archive_200k, tmp_path / "out", formats=["parquet"], types=["posts"])
    assert result.records == {"posts": 200_000}


@pytest.mark.limit_memory("400 MB")  # measured 237-274 MiB (either codec, over runs); 273 MiB uncompressed
@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_compressed_export_of_huge_rows(huge_rows_archive, tmp_path, codec):
    """Compressed while written: one block (4 MiB) and its compressed copy at a time, per file."""
    out = tmp_path / "out"
    formats = ["csv", "json", "ndjson"]
    result = pipeline.export(huge_rows_archive, out, formats=formats, types=["posts"], compress=codec, split_rows=100)
    assert result.records == {"posts": 400}
    assert all(f.uncompressed_bytes for f in result.files if f.path.startswith("posts"))
