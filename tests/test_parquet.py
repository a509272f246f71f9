"""--format parquet: typed columns against the stdlib oracle and the JSON output, read back
with pyarrow and DuckDB; row groups bounded by rows and bytes; the same bytes for any batch
size, byte budget, --jobs, run and resume."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, altered, run_cli
from oracle import expected_parquet, expected_parquet_ops, instant, rfc3339

import pipeline
from pipeline import parquet_sink

TYPES = ("posts", "likes", "follows")
BSKYARCHIVE = ROOT / "data" / "fixtures" / "bskyarchive" / "data" / "archive.db"
OMITTED_WHEN_EMPTY = ("reply_parent", "embed_type")  # JSON leaves these out when NULL or ''


def read_pyarrow(path: Path) -> list[dict[str, object]]:
    """A Parquet file's rows: instants as ns since the epoch, JSON columns decoded."""
    table = pq.read_table(path)
    columns = {}
    for name, col in zip(table.column_names, table.columns, strict=True):
        if pa.types.is_timestamp(col.type):
            columns[name] = col.cast(pa.int64()).to_pylist()
        elif isinstance(col.type, pa.BaseExtensionType):  # arrow.json
            columns[name] = [None if v is None else json.loads(v) for v in col.to_pylist()]
        else:
            columns[name] = col.to_pylist()
    return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]


def read_duckdb(path: Path) -> list[dict[str, object]]:
    """The same, read by DuckDB: its own types for each column (checked), ns through epoch_ns."""
    con = duckdb.connect()
    described = con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [str(path)]).fetchall()
    types = {name: kind for name, kind, *_ in described}
    select = ", ".join(f'epoch_ns("{n}") AS "{n}"' if t == "TIMESTAMP WITH TIME ZONE" or t == "TIMESTAMPTZ_NS"
                       else f'"{n}"' for n, t in types.items())  # fmt: skip
    rows = con.execute(f"SELECT {select} FROM read_parquet(?)", [str(path)]).fetchall()
    con.close()
    out = []
    for row in rows:
        d = dict(zip(types, row, strict=True))
        for n, t in types.items():
            if t == "JSON" and d[n] is not None:
                d[n] = json.loads(d[n])
        out.append(d)
    return out, types


def _rejects(out: Path) -> list[dict[str, str]]:
    path = out / "rejects.ndjson"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def check_parquet(out: Path, db: Path, types: tuple[str, ...] = TYPES, ops: bool = False) -> None:
    """Every Parquet file against the oracle, read by pyarrow and by DuckDB; manifest entries too."""
    manifest = {f["path"]: f for f in json.loads((out / "manifest.json").read_text())["files"]}
    got_rejects = {(r["key"], r["column"], r["value"]) for r in _rejects(out)}
    files: dict[str, tuple[list[dict], list[tuple]]] = {}
    for rtype in types:
        files[f"{rtype}.parquet"] = expected_parquet(str(db), rtype)
    if ops:
        by_stem, ops_rejects = expected_parquet_ops(str(db))
        for i, (stem, rows) in enumerate(sorted(by_stem.items())):
            files[f"ops/{stem}.parquet"] = (rows, ops_rejects if i == 0 else [])
    for name, (want, parquet_only) in files.items():
        path = out / name
        assert read_pyarrow(path) == want, name
        rows, duck_types = read_duckdb(path)
        assert rows == want, name
        if name == "posts.parquet":
            assert duck_types["embed_data"] == duck_types["labels"] == "JSON"
            assert duck_types["created_at"] == "TIMESTAMPTZ_NS" and duck_types["like_count"] == "BIGINT"
            assert duck_types["has_media"] == "BOOLEAN"
        data = path.read_bytes()
        entry = manifest[name]
        assert (entry["records"], entry["size_bytes"]) == (len(want), len(data))
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert set(parquet_only) <= got_rejects


@pytest.mark.parametrize("which", ["fixture", "bskyarchive", "20k"])
def test_parquet_matches_the_oracle(which, fixture_archive, archive_20k, tmp_path):
    """The hard-case archives, and the bskyarchive-style one (Go's nanosecond times)."""
    db = {"fixture": fixture_archive, "bskyarchive": BSKYARCHIVE, "20k": archive_20k}[which]
    out = tmp_path / "out"
    result = pipeline.export(db, out, formats=["parquet"], ops=True)
    check_parquet(out, db, ops=True)
    assert result.rejects == len(_rejects(out))  # the archive's broken values: null, and listed
    if which == "bskyarchive":
        times = read_pyarrow(out / "posts.parquet")
        assert sum(r["indexed_at"] % 1000 != 0 for r in times) > len(times) // 2  # nanoseconds kept
    else:
        assert result.rejects > 0


def test_parquet_schema_is_typed(fixture_archive, tmp_path):
    out = tmp_path / "out"
    pipeline.export(fixture_archive, out, formats=["parquet"], ops=True)
    schema = pq.read_schema(out / "posts.parquet")
    ns = pa.timestamp("ns", tz="UTC")
    assert [schema.field(c).type for c in ("created_at", "indexed_at", "archived_at")] == [ns, ns, ns]
    assert {schema.field(c).type for c in ("like_count", "repost_count", "reply_count", "quote_count")} == {pa.int64()}
    assert schema.field("has_media").type == schema.field("is_reply").type == pa.bool_()
    assert schema.field("uri").type == pa.string()
    physical = pq.ParquetFile(out / "posts.parquet").schema
    logical = {physical.column(i).name: str(physical.column(i).logical_type) for i in range(len(physical))}
    assert logical["embed_data"] == logical["labels"] == "JSON"
    assert pq.ParquetFile(out / "posts.parquet").metadata.row_group(0).column(0).compression == "ZSTD"
    ops = pq.read_schema(next((out / "ops").glob("*.parquet")))
    assert ops.field("seq").type == pa.int64() and ops.field("time").type == ns
    assert ops.names == ["seq", "did", "collection", "rkey", "action", "cid", "record", "time"]


def test_parquet_gives_the_json_outputs_values(archive_20k, tmp_path):
    """Read back with pyarrow and with DuckDB, row for row the values of posts.json (a rejected
    value, which JSON writes as stored, is null and listed in the rejects)."""
    out = tmp_path / "out"
    pipeline.export(archive_20k, out, formats=["json", "parquet"], types=["posts"])
    objects = json.loads((out / "posts.json").read_text())
    rejected = {(r["key"], r["column"]) for r in _rejects(out)}
    duck, _ = read_duckdb(out / "posts.parquet")
    nulls = 0
    for rows in (read_pyarrow(out / "posts.parquet"), duck):
        assert len(rows) == len(objects)
        for row, obj in zip(rows, objects, strict=True):
            assert list(row) == [*obj.keys(), *(k for k in row if k not in obj)] or set(obj) <= set(row)
            for column, value in row.items():
                want = obj.get(column)
                if value is None and want is not None:
                    assert (obj["uri"], column) in rejected, (obj["uri"], column, want)
                    nulls += 1
                elif column in OMITTED_WHEN_EMPTY and column not in obj:
                    assert value in (None, "")
                elif isinstance(value, int) and column.endswith("_at"):
                    assert rfc3339(value, fraction=True) == want
                else:
                    assert value == want, (obj["uri"], column)
    assert nulls > 0  # the archive's rejects were met


def test_instants_parquet_cannot_hold_are_null_and_rejected(fixture_archive, tmp_path):
    db = altered(
        fixture_archive,
        tmp_path / "far.db",
        "UPDATE posts SET created_at = '1500-03-01T10:00:00Z' WHERE rowid = 3",
        "UPDATE posts SET indexed_at = '2262-01-01T00:00:00Z' WHERE rowid = 4",
        "UPDATE posts SET archived_at = '2261-12-31T23:59:59.999999999Z' WHERE rowid = 5",  # the last one it holds
        "UPDATE likes SET created_at = '9999-12-31T23:59:59Z' WHERE rowid = 1",
        "UPDATE ops SET time = '1677-12-31T23:59:59.999999999Z' WHERE rowid = (SELECT min(rowid) FROM ops)",
    )
    out = tmp_path / "out"
    pipeline.export(db, out, formats=["json", "parquet"], ops=True)
    check_parquet(out, db, ops=True)
    reasons = {(r["column"], r["value"]): r["reason"] for r in _rejects(out)}
    for far in [("created_at", "1500-03-01T10:00:00Z"), ("indexed_at", "2262-01-01T00:00:00Z"),
                ("created_at", "9999-12-31T23:59:59Z"), ("time", "1677-12-31T23:59:59.999999999Z")]:  # fmt: skip
        assert "outside the years 1678-2261" in reasons[far] and "null in the .parquet" in reasons[far]
    assert ("archived_at", "2261-12-31T23:59:59.999999999Z") not in reasons
    posts = {o["uri"]: o for o in json.loads((out / "posts.json").read_text())}
    assert "1500-03-01T10:00:00Z" in {o["created_at"] for o in posts.values()}  # JSON writes it still
    held = [
        r for r in read_pyarrow(out / "posts.parquet") if r["archived_at"] == instant("2261-12-31T23:59:59.999999999Z")
    ]
    assert len(held) == 1


def test_parquet_only_formats_reject_nothing_more_without_parquet(fixture_archive, tmp_path):
    """The Parquet range is a reject only when Parquet is written."""
    db = altered(
        fixture_archive, tmp_path / "far.db", "UPDATE posts SET created_at = '1500-03-01T10:00:00Z' WHERE rowid = 3"
    )
    without = pipeline.export(db, tmp_path / "a", formats=["json"])
    with_pq = pipeline.export(db, tmp_path / "b", formats=["json", "parquet"])
    assert with_pq.rejects == without.rejects + 1


def _row_bytes(row: dict[str, object], schema: pa.Schema) -> int:
    """A row's size as the row-group bound counts it, computed here: 8 bytes per instant or
    integer, 1 per boolean, the UTF-8 length of each text."""
    size = 0
    for field in schema:
        v = row[field.name]
        if pa.types.is_boolean(field.type):
            size += 1
        elif pa.types.is_integer(field.type) or pa.types.is_timestamp(field.type):
            size += 8
        elif v is not None:
            size += len(v.encode("utf-8") if isinstance(v, str) else json.dumps(v).encode())
    return size


@pytest.fixture
def small_groups(monkeypatch):
    """Row groups of at most 100 rows or 50 KB, so a small archive has several of both kinds."""
    monkeypatch.setattr(parquet_sink, "ROW_GROUP_ROWS", 100)
    monkeypatch.setattr(parquet_sink, "ROW_GROUP_BYTES", 50_000)


def test_row_groups_end_at_the_row_or_byte_limit(fixture_archive, tmp_path, small_groups):
    out = tmp_path / "out"
    pipeline.export(fixture_archive, out, formats=["parquet"], types=["posts"], batch_size=7)
    f = pq.ParquetFile(out / "posts.parquet")
    schema = f.schema_arrow
    table = pq.read_table(out / "posts.parquet")
    texts = table.cast(pa.schema([pa.field(n, pa.string() if isinstance(t, pa.BaseExtensionType) else t)
                                  for n, t in zip(schema.names, schema.types, strict=True)]))  # fmt: skip
    sizes = [_row_bytes(r, texts.schema) for r in texts.to_pylist()]
    groups = [f.metadata.row_group(i).num_rows for i in range(f.metadata.num_row_groups)]
    assert sum(groups) == len(sizes) and len(groups) > 3
    start, kinds = 0, set()
    for i, n in enumerate(groups):
        used = sum(sizes[start : start + n])
        if i < len(groups) - 1:  # full: at 100 rows, or at the row that brought it to 50 KB
            full_rows = n == 100 and sum(sizes[start : start + n - 1]) < 50_000
            full_bytes = used >= 50_000 and sum(sizes[start : start + n - 1]) < 50_000
            assert full_rows or full_bytes, (i, n, used)
            kinds.add("rows" if full_rows else "bytes")
        else:
            assert n <= 100 and used < 50_000 + max(sizes[start : start + n])
        start += n
    assert kinds == {"rows", "bytes"}


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.parquet"))}


def test_same_bytes_for_any_batch_size_budget_jobs_and_run(archive_20k, tmp_path, small_groups):
    runs = {
        "default": {},
        "again": {},
        "batch_size=1, pages of 1 row": {"batch_size": 1, "tuning": pipeline.Tuning(page_rows=0, write_rows=5)},
        "batch_size=777": {"batch_size": 777, "tuning": pipeline.Tuning(page_rows=0, write_rows=1000)},
        "batch_bytes=1M": {"batch_bytes": 2**20},
        "jobs=1": {"jobs": 1},
        "jobs=4": {"jobs": 4},
    }
    made = {}
    for name, kw in runs.items():
        db = archive_20k
        if name == "batch_size=1, pages of 1 row":
            db = tmp_path / "small.db"  # 20,000 pages of one row would take minutes: 2,000 posts
            if not db.exists():
                altered(archive_20k, db, "DELETE FROM posts WHERE rowid > 2000", "DELETE FROM ops WHERE rowid > 300")
        out = tmp_path / name.replace(" ", "_").replace(",", "")
        pipeline.export(db, out, formats=["csv", "parquet"], ops=True, **kw)
        made[name] = _files(out)
    reference = made.pop("default")
    assert len(reference) > 5 and pq.ParquetFile(pa.BufferReader(reference["posts.parquet"])).num_row_groups > 3
    small = made.pop("batch_size=1, pages of 1 row")
    for name, files in made.items():
        assert files == reference, name
    again = pipeline.export(tmp_path / "small.db", tmp_path / "small_again", formats=["csv", "parquet"], ops=True)
    assert again.records["posts"] == 2000
    assert _files(tmp_path / "small_again") == small


# --- resume ------------------------------------------------------------------------------


def _export(archive: Path, out: Path, *extra: str, kill_at: str | None = None):
    env = {**os.environ, "PIPELINE_CHECKPOINT_SECONDS": "0"}
    env.pop("PIPELINE_KILL_AT", None)
    if kill_at:
        env["PIPELINE_KILL_AT"] = kill_at
    args = ("-f", "csv", "-f", "parquet", "--ops", "--batch-bytes", "1M", "-q")
    return run_cli("run", "export", archive, "--out", out, *args, *extra, env=env)


def _data(out: Path) -> dict[str, str]:
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name not in ("manifest.json", "metrics.json")
    }


@pytest.fixture(scope="module")
def parquet_reference(archive_20k, tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("reference") / "out"
    done = _export(archive_20k, out)
    assert done.returncode == 0, done.stderr
    return _data(out)


@pytest.mark.parametrize(
    ("kill_at", "resumed"),
    [
        ("posts.page=12", "posts: resuming after"),  # reading: the sort's files cut back
        ("posts.bucket=2", "posts: resuming after 20,000 records read and sorted"),  # writing: written again
        ("ops.page=1", "posts: done before the interruption"),  # ops: written again
    ],
)
def test_killed_then_resumed_gives_the_same_parquet_bytes(archive_20k, parquet_reference, tmp_path, kill_at, resumed):
    out = tmp_path / "out"
    killed = _export(archive_20k, out, "--jobs", "1", kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    again = _export(archive_20k, out, "--resume")
    assert again.returncode == 0, again.stderr
    assert resumed in again.stderr
    assert "records written" not in again.stderr  # a Parquet file is never continued
    assert _data(out) == parquet_reference
    manifest = json.loads((out / "manifest.json").read_text())
    assert {f["path"]: f["sha256"] for f in manifest["files"]} == parquet_reference
    check_parquet(out, archive_20k, ops=True)


def test_the_sink_cannot_continue_a_file(tmp_path):
    from pipeline.records import POSTS
    from pipeline.sinks import FileOptions, open_sink, resumable

    assert not resumable("parquet", FileOptions()) and resumable("csv", FileOptions())
    with pytest.raises(ValueError, match="cannot be continued"):
        open_sink(tmp_path, POSTS, "parquet", resume=(100, 10))
    sink = open_sink(tmp_path, POSTS, "parquet")
    with pytest.raises(TypeError):
        sink.position()
    sink.abort()
    assert list(tmp_path.iterdir()) == []


def test_an_empty_export_is_a_valid_file(fixture_archive, tmp_path):
    out = tmp_path / "out"
    pipeline.export(fixture_archive, out, formats=["parquet"], types=["posts"], did="did:plc:nobody")
    table = pq.read_table(out / "posts.parquet")
    assert table.num_rows == 0 and table.schema == pq.read_schema(out / "posts.parquet")
    assert duckdb.connect().execute(
        "SELECT count(*) FROM read_parquet(?)", [str(out / "posts.parquet")]
    ).fetchall() == [(0,)]


def test_parquet_parts_by_rows_and_split_bytes_refused(fixture_archive, tmp_path):
    """Parquet files split by --split-rows like the others (each part a whole file, read by
    pyarrow); --split-bytes with Parquet is a usage error, before anything is written."""
    import pyarrow.parquet as pq

    out = tmp_path / "parts"
    result = pipeline.export(fixture_archive, out, formats=["parquet", "json"], types=["posts"], split_rows=7)
    parts = sorted(out.glob("posts-*.parquet"))
    assert len(parts) == -(-result.records["posts"] // 7) and len(parts) > 1
    uris = [u for p in parts for u in pq.read_table(p).column("uri").to_pylist()]
    json_uris = [o["uri"] for p in sorted(out.glob("posts-*.json")) for o in json.loads(p.read_text())]
    assert uris == json_uris and len(uris) == result.records["posts"]
    assert all(pq.read_metadata(p).num_rows <= 7 for p in parts)
    with pytest.raises(pipeline.UsageError, match="--split-bytes"):
        pipeline.export(fixture_archive, tmp_path / "no", formats=["parquet"], split_bytes=2**20)
    assert not (tmp_path / "no").exists()
