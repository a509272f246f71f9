"""Memory regressions: a 200,000-post export under pytest-memray's limit (run with --memray).

`make test` runs these in a second pytest pass with ``--memray -m memory``; the
first pass deselects them (``-m "not memory"`` in pyproject.toml), because
memray tracking slows every other test down. conftest.py imports ``cli`` first,
so the allocators are set as the command sets them (Arrow's system pool, Polars'
jemalloc returning memory).
"""

from __future__ import annotations

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
