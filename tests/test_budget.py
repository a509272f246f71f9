"""Byte-budgeted batches: huge rows shrink pages and batches, output stays the same."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import run_cli
from hypothesis import given, settings
from hypothesis import strategies as st
from test_export import check_export

from pipeline import POSTS, Archive, Filters
from pipeline.source import HUGE_PAGES_PER_BATCH, HUGE_ROW, PAGES_PER_BATCH, RecordSource, rebatch
from pipeline.tuning import Tuning

MIB = 2**20
CELL = 8  # bytes a cell counts beside its text (the source's _ROW_OVERHEAD)


def _bytes(row: dict[str, str | None], columns: int) -> int:
    """A row's budget bytes, computed here from the text alone: UTF-8 length plus 8 a cell."""
    return CELL * columns + sum(len(v.encode()) for v in row.values() if v is not None)


@pytest.fixture(scope="module")
def huge_rows(fixture_archive, tmp_path_factory) -> Path:
    """The fixture archive with 40 posts whose embed_data is 200-700 KB of valid JSON
    (with media) and 5 whose text is 300 KB: pages of a 1 MiB budget hold a few rows."""
    path = tmp_path_factory.mktemp("huge") / "huge.db"
    shutil.copy(fixture_archive, path)
    con = sqlite3.connect(path)
    rowids = [r[0] for r in con.execute("SELECT rowid FROM posts ORDER BY rowid")]
    for n, rowid in enumerate(rowids[5::7][:40]):
        images = [
            {"fullsize": f"https://cdn.example/img/did:plc:x/bafk{rowid}i{i}@jpeg", "alt": f"alt {i} " * 400}
            for i in range(60 + 25 * (n % 9))
        ]
        embed = json.dumps({"$type": "app.bsky.embed.images", "images": images})
        con.execute("UPDATE posts SET embed_data = ?, has_media = 1 WHERE rowid = ?", (embed, rowid))
    for rowid in rowids[3::50][:5]:
        con.execute("UPDATE posts SET text = ? WHERE rowid = ?", ('ελλάδα, "quoted"\n' * 18_000, rowid))
    con.commit()
    con.close()
    return path


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.lists(st.integers(0, 3000), max_size=12), max_size=8),
    max_rows=st.integers(1, 9),
    max_bytes=st.integers(1, 6000),
)
def test_rebatch_keeps_rows_and_limits(sizes, max_rows, max_bytes):
    tables, rows = [], []
    for part in sizes:
        values = [f"{len(rows) + i}:" + "é" * (n // 2) for i, n in enumerate(part)]
        rows += values
        tables.append(pa.table({"v": pa.array(values, pa.string())}))
    out = list(rebatch(iter(tables), max_rows, max_bytes))
    assert [v for t in out for v in t.column("v").to_pylist()] == rows
    cost = [_bytes({"v": v}, 1) for v in rows]
    start = 0
    for i, t in enumerate(out):
        n = t.num_rows
        used = sum(cost[start : start + n])
        assert 1 <= n <= max_rows
        assert used <= max_bytes or n == 1  # a row larger than the budget travels alone
        if i < len(out) - 1:  # full: the next row would pass a limit
            assert n == max_rows or used + cost[start + n] > max_bytes
        start += n


def test_pages_and_batches_stay_within_budget(huge_rows):
    budget = 1 * MIB
    names = POSTS.column_names
    with Archive(huge_rows) as archive:
        source = RecordSource(archive, POSTS, Filters(), 1000, batch_bytes=budget)
        pages = list(source.pages())
        batches = list(source)
        source.close()
    page_sizes = [[_bytes(r, len(names) + 1) for r in p.select(names).to_pylist()] for p in pages]
    assert max(len(p) for p in page_sizes) > 100 and min(len(p) for p in page_sizes) < 10  # shrinks and grows back
    assert all(sum(p) <= budget // PAGES_PER_BATCH or len(p) == 1 for p in page_sizes)
    huge = [p for p in page_sizes if max(p) > budget * HUGE_ROW]
    assert huge and all(sum(p) <= budget // HUGE_PAGES_PER_BATCH or len(p) == 1 for p in huge)
    batch_sizes = [[_bytes(r, len(names) + 1) for r in b.to_pylist()] for b in batches]
    assert all(sum(b) <= budget or len(b) == 1 for b in batch_sizes)
    assert any(len(b) < 1000 for b in batch_sizes[:-1])  # the budget, not the row count, cut some
    with Archive(huge_rows) as archive:  # the same rows in the same order as with no byte limit
        source = RecordSource(archive, POSTS, Filters(), 1000, batch_bytes=2**40)
        whole = pa.Table.from_batches(list(source)).replace_schema_metadata()
        source.close()
    assert pa.Table.from_batches(batches).replace_schema_metadata().equals(whole)


def test_huge_rows_call_the_allocator_hook_once(fixture_archive, huge_rows, monkeypatch):
    """The CLI's hook (glibc unmaps large blocks when freed) runs once huge rows are read,
    never for ordinary ones."""
    calls = []
    tuning = Tuning(on_huge_rows=lambda: calls.append(1))
    for db, expected in ((fixture_archive, []), (huge_rows, [1])):
        with Archive(db) as archive:
            source = RecordSource(archive, POSTS, Filters(), 1000, batch_bytes=MIB, tuning=tuning)
            assert sum(p.num_rows for p in source.pages()) > 1000
            source.close()
        assert calls == expected, db


def test_the_command_installs_the_hook_and_it_lowers_the_mmap_threshold(huge_rows, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import cli

    calls = []
    monkeypatch.setattr(cli, "_huge_rows", lambda: calls.append("hook"))
    monkeypatch.setattr(cli.signal, "signal", lambda *a: None)  # keep pytest's handlers
    args = ["run", "export", str(huge_rows), "--out", str(tmp_path / "o"), "-f", "csv", "--batch-bytes", "1M", "-q"]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    assert calls == ["hook"]

    class Libc:
        def __init__(self, name: str):
            self.name = name

        def mallopt(self, param: int, value: int) -> int:
            calls.append((param, value))
            return 1

    monkeypatch.undo()
    monkeypatch.setattr(cli.ctypes, "CDLL", Libc)
    monkeypatch.setattr(cli.ctypes.util, "find_library", lambda name: "libc.so.6")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    calls.clear()
    cli._huge_rows()
    assert calls == [(-3, 2**20)]  # M_MMAP_THRESHOLD, 1 MiB
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")
    cli._huge_rows()  # the user's own setting stands
    assert calls == [(-3, 2**20)]


def test_export_with_huge_rows_matches_oracle(huge_rows, tmp_path):
    formats = ["csv", "json", "ndjson"]
    fmts = [x for f in formats for x in ("-f", f)]
    small = run_cli("run", "export", huge_rows, "--out", tmp_path / "small", *fmts, "--batch-bytes", "1M", "-q")
    assert small.returncode == 0, small.stderr
    check_export(tmp_path / "small", huge_rows, formats)
    default = run_cli("run", "export", huge_rows, "--out", tmp_path / "default", *fmts, "-q")
    assert default.returncode == 0, default.stderr
    for f in formats:
        assert (tmp_path / "small" / f"posts.{f}").read_bytes() == (tmp_path / "default" / f"posts.{f}").read_bytes()


@pytest.mark.parametrize("value", ["12x", "-1", "", "1.5M", "500K", "²M", "100000000000G"])
def test_bad_batch_bytes_is_usage_error(fixture_archive, tmp_path, value):
    r = run_cli("run", "export", fixture_archive, "--out", tmp_path / "o", "--batch-bytes", value)
    assert r.returncode == 2, r.stderr
    assert "--batch-bytes" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_memray_capture(fixture_archive, tmp_path):
    import memray

    capture = tmp_path / "run.bin"
    r = run_cli("run", "export", fixture_archive, "--out", tmp_path / "o", "-f", "csv", "--memray", capture, "-q")
    assert r.returncode == 0, r.stderr
    meta = memray.FileReader(str(capture)).metadata
    assert meta.peak_memory > 0 and meta.has_native_traces
    again = run_cli("run", "export", fixture_archive, "--out", tmp_path / "o2", "--memray", capture, "-q")
    assert again.returncode == 2 and "exists" in again.stderr
    assert not (tmp_path / "o2").exists()
    # A usage error found before the run leaves no capture behind to block the corrected command.
    other = tmp_path / "other.bin"
    bad = run_cli("run", "export", fixture_archive, "--out", tmp_path / "o3", "--memray", other, "--batch-bytes", "x")
    assert bad.returncode == 2 and not other.exists()


def test_a_bucket_of_huge_rows_close_in_time_is_split(huge_rows, tmp_path):
    """The plan sizes buckets by the archive's average row: huge rows that are all the newest
    would make one bucket of ~18 MB. It is spilled again into sub-buckets before it is read."""
    from oracle import expected_posts

    db = tmp_path / "clustered.db"
    shutil.copy(huge_rows, db)
    con = sqlite3.connect(db)
    big = [r[0] for r in con.execute("SELECT rowid FROM posts WHERE length(embed_data) > 100000 ORDER BY rowid")]
    for i, rowid in enumerate(big):  # all of them newer than every other post, each at its own instant
        con.execute(
            "UPDATE posts SET created_at = ? WHERE rowid = ?", (f"2031-01-01T00:{i // 60:02d}:{i % 60:02d}Z", rowid)
        )
    con.commit()
    con.close()
    bucket = 256 * 1024
    with Archive(db) as archive:
        source = RecordSource(archive, POSTS, Filters(), 1000, spill_dir=tmp_path, bucket_bytes=bucket)
        with source.sorter() as sorter:
            for page in source.pages():
                sorter.add(page)
            tables = list(sorter.sorted())
        source.close()
    sizes = [t.nbytes for t in tables]
    assert max(sizes) <= 4 * bucket + 2 * max(len(r) for t in tables for r in t.column("embed_data").to_pylist() if r)
    uris = [u for t in tables for u in t.column("uri").to_pylist()]
    assert uris == [o["uri"] for o in expected_posts(str(db)).objects]
    assert not [p for p in tmp_path.rglob("*.arrow")]  # every spill file is gone
