from __future__ import annotations

import importlib.util
import os
import shutil
import sqlite3
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


# -- export-many: a fleet of small archives and their single exports (tests/test_many*.py) --------

MANY_FORMATS = ("-f", "csv", "-f", "json", "-f", "ndjson")


@pytest.fixture(scope="session")
def many_fleet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], Path]:
    """20 small archives under one folder: 8 in bskyarchive's layout (all ``archive.db``), 11
    hand-made ones (names with ``[``, ``*`` and a byte that is not UTF-8), and one corrupt file.
    Returns (the folder, the good archives, the corrupt one)."""
    root = tmp_path_factory.mktemp("fleet")
    good = []
    for i in range(8):
        path = root / f"acct{i}" / "data" / "archive.db"
        path.parent.mkdir(parents=True)
        make_archive(path, posts=150 + i, seed=100 + i, style="bskyarchive", media_files=False, workers=1)
        good.append(path)
    flat = root / "flat"
    flat.mkdir()
    names = [f"p{i}.db" for i in range(9)] + ["odd[1]*.db", os.fsdecode(b"caf\xe9.db")]
    for i, name in enumerate(names):
        make_archive(flat / name, posts=120 + i, seed=200 + i, bad_every=40, workers=1)
        good.append(flat / name)
    corrupt = flat / "corrupt.db"
    corrupt.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    return root, good, corrupt


def many_name(path: Path, archives: list[Path]) -> str:
    """The folder export-many gives ``path`` (the rule in the README, written out again)."""
    import hashlib

    stem = path.stem
    if sum(a.stem == stem for a in archives) > 1:
        return stem + "-" + hashlib.sha256(os.fsencode(os.path.realpath(path))).hexdigest()[:8]
    return stem


@pytest.fixture(scope="session")
def many_singles(many_fleet, tmp_path_factory: pytest.TempPathFactory) -> dict[Path, Path]:
    """Each good archive exported alone by ``pipeline run export`` (the reference)."""
    _, good, corrupt = many_fleet
    out = tmp_path_factory.mktemp("singles")
    everything = [*good, corrupt]
    refs = {}
    for archive in good:
        ref = out / many_name(archive, everything)
        r = run_cli("run", "export", archive, "--out", ref, *MANY_FORMATS, "-q")
        assert r.returncode == 0, r.stderr
        refs[archive] = ref
    return refs


def same_export(ours: Path, reference: Path) -> None:
    """``ours`` holds the files of ``reference`` byte for byte; its manifest is the reference's
    but for ``exported_at``; metrics.json (times) is not compared."""
    import json

    def listing(folder: Path) -> set[str]:
        return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {"metrics.json"}

    assert listing(ours) == listing(reference)
    for rel in listing(reference):
        a, b = (ours / rel).read_bytes(), (reference / rel).read_bytes()
        if rel == "manifest.json":
            ma, mb = json.loads(a), json.loads(b)
            ma.pop("exported_at"), mb.pop("exported_at")
            assert ma == mb
        else:
            assert a == b, rel


def copy_complete(archive) -> None:
    """Until an archive's snapshot copy (``Archive.snapshot``) has settled: complete and switched
    to (unless a statement spans the moment), failed, or stopped."""
    assert archive.copy_ended.wait(30), "the copy never ended"


@pytest.fixture
def rollback_archive(fixture_archive: Path, tmp_path: Path) -> Path:
    """A copy of the fixture archive in rollback-journal mode (bskyarchive's), in ``tmp_path``."""
    db = tmp_path / "archive.db"
    shutil.copy(fixture_archive, db)
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode = DELETE").fetchone()[0] == "delete"
    con.close()
    return db
