from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "data" / "fixtures" / "archive.db"
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
import cli  # noqa: E402, F401 - sets the allocators as the command does, before pyarrow and polars load


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_archive", ROOT / "data" / "fixtures" / "make_archive.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generator = _load_generator()
make_archive = generator.make_archive


def altered(source: Path, copy: Path, *sql: str) -> Path:
    """A copy of the archive ``source`` at ``copy`` with the ``sql`` statements run on it."""
    import shutil
    import sqlite3

    shutil.copy(source, copy)
    con = sqlite3.connect(copy)
    for statement in sql:
        con.execute(statement)
    con.commit()
    con.close()
    return copy


@pytest.fixture(scope="session")
def fixture_archive() -> Path:
    assert FIXTURE.exists(), "the bundled fixture archive is missing"
    return FIXTURE


@pytest.fixture(scope="session")
def archive_20k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("archives") / "posts20k.db"
    make_archive(path, posts=20_000, seed=7)
    return path


@pytest.fixture(scope="session")
def archive_null_prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("archives") / "nullprefix.db"
    make_archive(path, posts=8_000, seed=3, null_prefix=5_000)
    return path


def run_cli(*args: str | os.PathLike[str], **kwargs) -> subprocess.CompletedProcess[str]:
    """Run the installed console script's module as a separate process; with
    ``PIPELINE_KILL_AT`` in ``env``, the same command with a kill switch (killable_cli.py)."""
    script = "killable_cli.py" if "PIPELINE_KILL_AT" in (kwargs.get("env") or {}) else "../cli.py"
    return subprocess.run(
        [sys.executable, str(ROOT / "tests" / script), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=kwargs.pop("cwd", ROOT),
        timeout=kwargs.pop("timeout", 300),
        **kwargs,
    )


@pytest.fixture(scope="session")
def archive_150k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Big enough that a whole export takes seconds (for timing a cancelled run against)."""
    path = tmp_path_factory.mktemp("archives") / "posts150k.db"
    make_archive(path, posts=150_000, seed=11)
    return path
