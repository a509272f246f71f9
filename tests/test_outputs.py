"""Compressed files, split files and spreadsheet-safe CSV (--compress, --split-rows/--split-bytes, --csv-safe).

The plain export is checked against the stdlib oracle (test_export.check_export);
the new forms are read back independently (stdlib gzip, pyarrow's zstd reader,
DuckDB, the csv and json modules) and compared with it value by value.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import zlib
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.csv as pa_csv
import pytest
from conftest import run_cli
from hypothesis import given, settings
from hypothesis import strategies as st
from test_export import BOM, check_export, read_csv

import pipeline
from pipeline.parts import Output
from pipeline.sinks import Compression as Codec
from pipeline.sinks import CsvSink, FileOptions, HashingFile, JsonArraySink, NdjsonSink, open_sink

FORMATS = ["csv", "json", "ndjson"]
NOT_TEXT = {"LikeCount", "RepostCount", "ReplyCount", "QuoteCount", "IsReply", "HasMedia", "Seq"}  # export-format.md
FORMULA_STARTS = "=+-@\t\r"
texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
csv_texts = st.one_of(texts, st.text(alphabet='a"=,\n\r\té-+', max_size=8))  # quoting and formula starts
starts = st.sampled_from(list(FORMULA_STARTS) + ["'", "a", "é", "\n", " ", '"', ""])


def decompress(path: Path) -> bytes:
    """A file's bytes, decompressed by a reader independent of the export: stdlib gzip, pyarrow's zstd."""
    if path.suffix == ".gz":
        return gzip.decompress(path.read_bytes())
    if path.suffix == ".zst":
        with pa.input_stream(str(path), compression="zstd") as f:
            return f.read()
    return path.read_bytes()


def data_files(out: Path) -> dict[str, str]:
    """Every file of an export but the manifest and metrics, by path: its SHA-256 computed here."""
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name not in ("manifest.json", "metrics.json")
    }


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def parts_of(out: Path, stem: str, ext: str) -> list[Path]:
    """The numbered parts of ``<stem>.<ext>`` in part order (checked to be 1, 2, 3, ...)."""
    found = sorted(out.glob(f"{stem}-[0-9][0-9][0-9][0-9][0-9].{ext}"))
    base = len(Path(stem).name) + 1
    assert [int(p.name[base : base + 5]) for p in found] == list(range(1, len(found) + 1))
    return found


def csv_rows(data: bytes) -> list[list[str]]:
    text = data.decode("utf-8")
    assert text.startswith(BOM)
    return list(csv.reader(io.StringIO(text[1:], newline="")))


def json_objects(data: bytes, fmt: str) -> list[dict]:
    if fmt == "json":
        return json.loads(data)
    text = data.decode("utf-8")
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.split("\n")[:-1]]


@pytest.fixture(scope="module")
def plain(fixture_archive, tmp_path_factory) -> Path:
    """The fixture archive (hard cases) exported plainly, with the ops, checked against the oracle."""
    out = tmp_path_factory.mktemp("plain") / "out"
    pipeline.export(fixture_archive, out, formats=FORMATS, ops=True)
    check_export(out, fixture_archive, FORMATS, ("posts", "likes", "follows"))
    return out


# --compress ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("codec", "suffix"), [("gzip", ".gz"), ("zstd", ".zst")])
def test_compressed_files_hold_the_plain_export(fixture_archive, plain, tmp_path, codec, suffix):
    out = tmp_path / "out"
    pipeline.export(fixture_archive, out, formats=FORMATS, ops=True, compress=codec)
    want = {p: f for p, f in data_files(plain).items() if p != "rejects.ndjson"}
    got = {p: f for p, f in data_files(out).items() if p != "rejects.ndjson"}
    assert sorted(got) == sorted(p + suffix for p in want)
    assert (out / "rejects.ndjson").read_bytes() == (plain / "rejects.ndjson").read_bytes()  # not compressed
    listed = {f["path"]: f for f in manifest(out)["files"]}
    plain_listed = {f["path"]: f for f in manifest(plain)["files"]}
    for path in want:
        disk = (out / (path + suffix)).read_bytes()
        assert decompress(out / (path + suffix)) == (plain / path).read_bytes(), path
        entry = listed[path + suffix]
        assert entry["size_bytes"] == len(disk) and entry["sha256"] == hashlib.sha256(disk).hexdigest()
        assert entry["uncompressed_bytes"] == (plain / path).stat().st_size
        assert entry["records"] == plain_listed[path]["records"]
        if codec == "gzip":  # no name, no time: the same bytes on every run
            assert disk[:3] == b"\x1f\x8b\x08" and disk[3] == 0 and disk[4:8] == b"\0\0\0\0"
    assert manifest(out)["compression"] == {"codec": codec, "level": 6 if codec == "gzip" else 3}
    assert "compression" not in manifest(plain) and "uncompressed_bytes" not in plain_listed["posts.csv"]


def test_compressed_outputs_read_back_with_pyarrow_and_duckdb(fixture_archive, plain, tmp_path):
    """The recipes' readers on compressed files give the plain JSON output's values."""
    out = tmp_path / "out"
    pipeline.export(fixture_archive, out, formats=FORMATS, compress="zstd", compress_level=9)
    want = json.loads((plain / "posts.json").read_text(encoding="utf-8"))
    con = duckdb.connect()
    for name in ("posts.ndjson.zst", "posts.json.zst"):
        fmt = "array" if name.startswith("posts.json") else "newline_delimited"
        rows = con.execute("SELECT json FROM read_json_objects(?, format = ?)", [str(out / name), fmt]).fetchall()
        assert [json.loads(r[0]) for r in rows] == want, name
    gz = tmp_path / "gz"
    pipeline.export(fixture_archive, gz, formats=["csv", "ndjson"], compress="gzip", compress_level=1)
    header = read_csv(plain / "posts.csv")[0]
    table = pa_csv.read_csv(  # pyarrow picks the codec from the name and skips the BOM
        str(gz / "posts.csv.gz"),
        parse_options=pa_csv.ParseOptions(newlines_in_values=True),
        convert_options=pa_csv.ConvertOptions(
            column_types={h: pa.string() for h in header}, strings_can_be_null=False, quoted_strings_can_be_null=False
        ),
    )
    assert table.column_names == header
    assert [list(r.values()) for r in table.to_pylist()] == read_csv(plain / "posts.csv")[1:]
    with pa.input_stream(str(gz / "posts.ndjson.gz"), compression="gzip") as f:
        assert json_objects(f.read(), "ndjson") == want


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(max_size=3 * 2**20).map(lambda b: b * 3),
    cuts=st.lists(st.integers(1, 2**21), max_size=12),
    codec=st.sampled_from(["gzip", "zstd"]),
)
def test_compressed_bytes_do_not_depend_on_write_sizes(tmp_path_factory, data, cuts, codec):
    folder = tmp_path_factory.mktemp("c")
    one = HashingFile(folder / "one", compression=Codec(codec, 3))
    one.write(data)
    digest = one.finish()
    many = HashingFile(folder / "many", compression=Codec(codec, 3))
    start = 0
    for c in cuts:
        many.write(data[start : start + c])
        start += c
    many.write(data[start:])
    assert many.finish() == digest and (folder / "many").read_bytes() == (folder / "one").read_bytes()
    assert decompress(folder.joinpath("one").rename(folder / ("x.gz" if codec == "gzip" else "x.zst"))) == data
    assert one.raw_size == len(data) and one.size == len(
        (folder / ("x.gz" if codec == "gzip" else "x.zst")).read_bytes()
    )


def test_gzip_output_is_one_stream(tmp_path):
    """One gzip member (zlib's own reader, which stops at the first member, reads it all)."""
    f = HashingFile(tmp_path / "a.gz", compression=Codec("gzip", 6))
    data = b"".join(f"line {i}\n".encode() for i in range(2_000_000))  # several blocks
    f.write(data)
    f.finish()
    z = zlib.decompressobj(31)
    assert z.decompress((tmp_path / "a.gz").read_bytes()) == data and z.eof and z.unused_data == b""


# --split-rows / --split-bytes -------------------------------------------------------------------


def _check_parts(out: Path, plain: Path, path: str, rows: int | None, size: int | None) -> list[Path]:
    """The parts of ``path`` are each a whole file; together they hold the plain file's records,
    in order; each within the limits (a larger record alone), and listed in the manifest."""
    stem, ext = path.rsplit(".", 1)
    parts = parts_of(out, stem, ext)
    assert parts and not (out / path).exists()
    listed = [f for f in manifest(out)["files"] if f["path"].startswith(stem + "-") and f["path"].endswith("." + ext)]
    assert [f["path"] for f in listed] == [str(p.relative_to(out)) for p in parts]  # in order
    plain_bytes = (plain / path).read_bytes()
    counts = []
    if ext == "csv":
        records = [csv_rows(p.read_bytes()) for p in parts]
        header = read_csv(plain / path)[0]
        assert all(r[0] == header for r in records)  # each part: the BOM and the header
        assert [row for r in records for row in r[1:]] == read_csv(plain / path)[1:]
        counts = [len(r) - 1 for r in records]
    else:
        records = [json_objects(p.read_bytes(), ext) for p in parts]
        assert [o for r in records for o in r] == json_objects(plain_bytes, ext)
        counts = [len(r) for r in records]
    for p, f, n in zip(parts, listed, counts, strict=True):
        data = p.read_bytes()
        assert f["records"] == n and f["size_bytes"] == len(data) and f["sha256"] == hashlib.sha256(data).hexdigest()
        if rows is not None:
            assert n <= rows
        if size is not None:
            assert len(data) <= size or n == 1
    if rows is not None and size is None:
        assert all(n == rows for n in counts[:-1])  # full parts but the last
    if size is not None and ext != "csv":  # a part ends only where the next record would not fit
        for i, (part, n) in enumerate(zip(parts[:-1], counts[:-1], strict=True)):
            lines = parts[i + 1].read_bytes().split(b"\n")
            following = len(lines[1].removesuffix(b",")) + 2 if ext == "json" else len(lines[0]) + 1
            assert len(part.read_bytes()) + following > size or (rows is not None and n == rows)
    return parts


def test_split_rows_parts_hold_the_plain_export(fixture_archive, plain, tmp_path):
    out = tmp_path / "out"
    pipeline.export(fixture_archive, out, formats=FORMATS, ops=True, split_rows=70)
    for path in manifest(plain)["files"]:
        if path["path"] != "rejects.ndjson":
            _check_parts(out, plain, path["path"], 70, None)
    assert manifest(out)["split"] == {"rows": 70, "bytes": None}
    assert manifest(out)["records"] == manifest(plain)["records"]


def test_split_bytes_parts_hold_the_plain_export(fixture_archive, plain, tmp_path):
    """1K parts: most records share a part, some are larger than 1K and get a part of their own."""
    out = tmp_path / "out"
    pipeline.export(fixture_archive, out, formats=FORMATS, split_bytes=1024, split_rows=5)
    alone = 0
    for path in ("posts.csv", "posts.json", "posts.ndjson", "likes.json"):
        parts = _check_parts(out, plain, path, 5, 1024)
        alone += sum(p.stat().st_size > 1024 for p in parts)
    assert alone > 0 and len(parts_of(out, "posts", "ndjson")) > 1


def test_split_and_compressed(fixture_archive, plain, tmp_path):
    """Parts are compressed each (posts-00001.csv.gz); --split-bytes counts the uncompressed bytes."""
    out = tmp_path / "out"
    pipeline.export(fixture_archive, out, formats=FORMATS, split_bytes=4096, compress="gzip")
    for fmt in FORMATS:
        parts = parts_of(out, "posts", f"{fmt}.gz")
        assert len(parts) > 1
        listed = {f["path"]: f for f in manifest(out)["files"]}
        for p in parts:
            assert listed[p.name]["uncompressed_bytes"] == len(decompress(p)) <= 4096 or listed[p.name]["records"] == 1
        whole = b"".join(decompress(p) for p in parts)
        if fmt == "ndjson":  # NDJSON parts joined are the whole file
            assert whole == (plain / "posts.ndjson").read_bytes()
        else:
            plain_parts = tmp_path / f"p-{fmt}"
            plain_parts.mkdir()
            for p in parts:
                (plain_parts / p.name.removesuffix(".gz")).write_bytes(decompress(p))
            got = [json_objects(decompress(p), fmt) for p in parts] if fmt == "json" else None
            if got is not None:
                assert [o for g in got for o in g] == json.loads((plain / "posts.json").read_bytes())
            else:
                rows = [csv_rows(decompress(p)) for p in parts]
                assert [r for x in rows for r in x[1:]] == read_csv(plain / "posts.csv")[1:]


def test_one_part_is_numbered_and_an_empty_export_has_one_empty_part(fixture_archive, tmp_path):
    out = tmp_path / "out"
    pipeline.export(fixture_archive, out, formats=FORMATS, types=["posts"], split_rows=1_000_000)
    assert sorted(p.name for p in out.glob("posts*")) == ["posts-00001.csv", "posts-00001.json", "posts-00001.ndjson"]
    empty = tmp_path / "empty"
    pipeline.export(fixture_archive, empty, formats=FORMATS, types=["posts"], split_rows=10, since="2200-01-01")
    assert (empty / "posts-00001.json").read_bytes() == b"[]\n"
    assert (empty / "posts-00001.ndjson").read_bytes() == b""
    assert csv_rows((empty / "posts-00001.csv").read_bytes())[1:] == []
    assert [f["records"] for f in manifest(empty)["files"] if f["path"].startswith("posts-")] == [0, 0, 0]


@settings(max_examples=80, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.one_of(st.none(), csv_texts),
            st.one_of(st.none(), st.integers(-(2**40), 2**40)),
            st.one_of(st.none(), st.booleans()),
        ),
        max_size=25,
    ),
    split_rows=st.one_of(st.none(), st.integers(1, 6)),
    split_bytes=st.integers(1, 120),
    cuts=st.lists(st.integers(1, 9), max_size=6),
    safe=st.booleans(),
)
def test_parts_do_not_depend_on_batching(tmp_path_factory, rows, split_rows, split_bytes, cuts, safe):
    """Any batching gives the same parts; each within its limits; CSV sizes computed ahead are the bytes written."""
    schema = pa.schema([("A", pa.large_string()), ("N", pa.int64()), ("B", pa.bool_())])
    whole = pa.RecordBatch.from_arrays(
        [pa.array(c, t.type) for c, t in zip(zip(*rows, strict=True) if rows else ([], [], []), schema, strict=True)],
        schema=schema,
    )
    files = FileOptions(split_rows=split_rows, split_bytes=split_bytes, csv_safe=safe)
    results = []
    for batching in ([whole.num_rows], cuts):
        folder = tmp_path_factory.mktemp("p")
        out = Output(
            folder, files, lambda n, at, folder=folder: CsvSink(folder, f"a-{n:05d}.csv", schema, at, None, safe)
        )
        start = 0
        for c in batching:
            out.write(whole.slice(start, c))
            start += c
        out.write(whole.slice(start))
        got = out.close()
        results.append([(f.path, f.records, f.sha256) for f in got])
        for f in got:
            size = (folder / f.path).stat().st_size
            assert f.records <= (split_rows or f.records) and (size <= split_bytes or f.records <= 1)
        assert sum(f.records for f in got) == len(rows)
    assert results[0] == results[1]


# --csv-safe -----------------------------------------------------------------------------------


def safe_cell(value: str) -> str:
    """The rule, in plain Python: OWASP's formula starts get a ' in front."""
    return "'" + value if value[:1] in tuple(FORMULA_STARTS) else value


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.one_of(st.none(), st.tuples(starts, texts).map("".join)), st.integers(-5, 5)), max_size=30)
)
def test_csv_safe_prefixes_exactly_the_formula_cells(tmp_path_factory, rows):
    folder = tmp_path_factory.mktemp("s")
    schema = pa.schema([("T", pa.large_string()), ("N", pa.int64())])
    batch = pa.RecordBatch.from_arrays(
        [pa.array([r[0] for r in rows], pa.large_string()), pa.array([r[1] for r in rows], pa.int64())], schema=schema
    )
    sink = CsvSink(folder, "a.csv", schema, csv_safe=True)
    sink.write(batch)
    result = sink.close()
    got = csv_rows((folder / "a.csv").read_bytes())
    want = [["" if t is None else safe_cell(t), str(n)] for t, n in rows]  # numbers (even -5) stay as they are
    assert got[1:] == want and got[0] == ["T", "N"]
    assert result.csv_safe_cells == sum(t is not None and safe_cell(t) != t for t, _ in rows)


def test_csv_safe_export(fixture_archive, plain, tmp_path):
    """Every text cell of every CSV file by the rule, the rest exact; the count in the manifest,
    the summary line and the JSON log's run_end."""
    out = tmp_path / "out"
    done = run_cli("run", "export", fixture_archive, "-o", out, "-f", "csv", "-f", "json", "--ops", "--csv-safe")
    assert done.returncode == 0, done.stderr
    changed = 0
    for f in manifest(plain)["files"]:
        if not f["path"].endswith(".csv"):
            continue
        rows = read_csv(plain / f["path"])
        text = [h not in NOT_TEXT for h in rows[0]]
        want = [rows[0]] + [[safe_cell(v) if t else v for v, t in zip(r, text, strict=True)] for r in rows[1:]]
        changed += sum(a != b for r, s in zip(rows, want, strict=True) for a, b in zip(r, s, strict=True))
        assert read_csv(out / f["path"]) == want, f["path"]
        entry = next(e for e in manifest(out)["files"] if e["path"] == f["path"])
        assert entry["csv_safe_cells"] == sum(
            a != b for r, s in zip(rows, want, strict=True) for a, b in zip(r, s, strict=True)
        )
    assert changed > 0 and manifest(out)["csv_safe_cells"] == changed
    assert f"{changed:,} CSV cell(s) prefixed with ' (--csv-safe)" in done.stderr
    assert (out / "posts.json").read_bytes() == (plain / "posts.json").read_bytes()  # JSON stays exact
    logged = run_cli(
        "run", "export", fixture_archive, "-o", tmp_path / "j", "-f", "csv", "--csv-safe", "--log-format", "json", "-q"
    )
    end = [json.loads(x) for x in logged.stderr.splitlines() if '"run_end"' in x][0]
    assert end["csv_safe_cells"] == sum(
        e["csv_safe_cells"] for e in manifest(out)["files"] if e["path"] in ("posts.csv", "likes.csv", "follows.csv")
    )


# byte identity ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layout",
    [
        {"compress": "gzip", "split_rows": 6000, "csv_safe": True},
        {"compress": "zstd", "split_bytes": 3 * 2**20},
        {"split_bytes": 2**20, "split_rows": 5000},
    ],
    ids=["gzip-rows-safe", "zstd-bytes", "bytes-rows"],
)
def test_new_forms_are_byte_identical_for_any_batching_jobs_and_run(archive_20k, tmp_path, layout):
    runs = [
        {"jobs": 4},
        {"jobs": 1, "batch_size": 7, "batch_bytes": 2**20},
        {"jobs": 2, "batch_size": 5000},
        {"jobs": 4},
    ]
    seen = []
    for i, extra in enumerate(runs):
        out = tmp_path / f"o{i}"
        pipeline.export(archive_20k, out, formats=FORMATS, ops=True, **layout, **extra)
        seen.append(data_files(out))
    assert len(seen[0]) > 12 and all(s == seen[0] for s in seen[1:])


# usage errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--compress", "gzip", "--compress-level", "10"], "--compress-level for gzip must be between 1 and 9, not 10"),
        (["--compress", "zstd", "--compress-level", "0"], "--compress-level for zstd must be between 1 and 19, not 0"),
        (["--compress-level", "3"], "--compress-level needs --compress gzip or --compress zstd"),
        (["--compress", "bz2"], "'bz2' is not one of"),
        (["--split-rows", "0"], "--split-rows must be at least 1, not 0"),
        (["--split-bytes", "100"], "--split-bytes must be at least 1K, not 100"),
        (["--split-bytes", "ten"], "--split-bytes: cannot read 'ten' as a size"),
        (["-f", "json", "--csv-safe"], "--csv-safe changes CSV files only; add --format csv"),
    ],
)
def test_usage_errors(fixture_archive, tmp_path, args, message):
    out = tmp_path / "out"
    done = run_cli("run", "export", fixture_archive, "-o", out, *args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert not out.exists()


def test_library_usage_error_names_the_option(fixture_archive, tmp_path):
    with pytest.raises(pipeline.UsageError, match="unknown --compress 'lz4'"):
        pipeline.export(fixture_archive, tmp_path / "o", compress="lz4")


def test_open_sink_names(tmp_path):
    files = FileOptions(compression=Codec("zstd", 3))
    assert open_sink(tmp_path, pipeline.POSTS, "ndjson", files=files, part=2).name == "posts-00002.ndjson.zst"
    assert isinstance(open_sink(tmp_path, pipeline.POSTS, "json"), JsonArraySink)
    assert isinstance(open_sink(tmp_path, pipeline.POSTS, "ndjson"), NdjsonSink)


# --resume ---------------------------------------------------------------------------------------


def _cli(archive: Path, out: Path, *extra: str, kill_at: str | None = None):
    env = {**os.environ, "PIPELINE_CHECKPOINT_SECONDS": "0"}
    env.pop("PIPELINE_KILL_AT", None)
    if kill_at:
        env["PIPELINE_KILL_AT"] = kill_at
    return run_cli("run", "export", archive, "--out", out, "-f", "csv", "-f", "ndjson", "-q", *extra, env=env)


@pytest.mark.parametrize(
    ("layout", "resumed"),
    [
        (("--compress", "zstd"), "posts: resuming after 150,000 records read and sorted"),  # files written again
        (("--split-rows", "40000"), "records written"),  # parts before the checkpoint kept, the current one cut back
        (("--split-bytes", "9M", "--compress", "gzip", "--compress-level", "1"), "read and sorted"),
    ],
    ids=["zstd", "split-rows", "split-bytes-gzip"],
)
def test_killed_while_writing_then_resumed_gives_the_same_bytes(archive_150k, tmp_path, layout, resumed):
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert _cli(archive_150k, ref, "--types", "posts", *layout).returncode == 0
    killed = _cli(archive_150k, out, "--types", "posts", "--jobs", "1", *layout, kill_at="posts.bucket=4")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    again = _cli(archive_150k, out, "--types", "posts", "--resume", *layout)
    assert again.returncode == 0, again.stderr
    assert resumed in again.stderr
    assert data_files(out) == data_files(ref)
    assert len(data_files(out)) > (2 if "--compress" in layout and "--split-bytes" not in layout else 4)


@pytest.mark.parametrize("layout", [("--compress", "gzip"), ("--split-rows", "700")], ids=["gzip", "split"])
def test_ops_killed_then_resumed_gives_the_same_bytes(archive_20k, tmp_path, layout):
    ref, out = tmp_path / "ref", tmp_path / "out"
    extra = ("--types", "follows", "--ops", "--batch-bytes", "1M", *layout)
    assert _cli(archive_20k, ref, *extra).returncode == 0
    assert _cli(archive_20k, out, *extra, kill_at="ops.page=2").returncode == -signal.SIGKILL
    again = _cli(archive_20k, out, *extra, "--resume")
    assert again.returncode == 0, again.stderr
    assert ("ops: resuming after" in again.stderr) == ("--compress" not in layout)  # compressed: the ops start over
    assert data_files(out) == data_files(ref)
    assert len(list((out / "ops").iterdir())) > 4


@settings(max_examples=60, deadline=None)
@given(
    objs=st.lists(st.dictionaries(texts, texts, max_size=3), min_size=1, max_size=40),
    split_rows=st.one_of(st.none(), st.integers(1, 5)),
    split_bytes=st.one_of(st.none(), st.integers(8, 90)),
    stop=st.integers(0, 40),
    fmt=st.sampled_from(["json", "ndjson"]),
)
def test_output_resumed_at_its_position_ends_as_written_through(
    tmp_path_factory, objs, split_rows, split_bytes, stop, fmt
):
    """A position taken mid-way, more written (more parts begun), then resumed from the position
    and written to the end: the same files as one uninterrupted run, and nothing more."""
    batch = pa.RecordBatch.from_pydict({"json": pa.array([json.dumps(o) for o in objs], pa.large_string())})
    stop = min(stop, len(objs))
    files = FileOptions(split_rows=split_rows, split_bytes=split_bytes)

    def opened(folder: Path, resume: dict | None = None) -> Output:
        return Output(folder, files, lambda n, at: open_sink(folder, pipeline.POSTS, fmt, None, at, files, n), resume)

    whole = tmp_path_factory.mktemp("w")
    out = opened(whole)
    out.write(batch)
    want = [(f.path, f.records, f.sha256) for f in out.close()]

    folder = tmp_path_factory.mktemp("r")
    out = opened(folder)
    out.write(batch.slice(0, stop))
    at = json.loads(json.dumps(out.position()))  # as a checkpoint stores it
    out.write(batch.slice(stop))  # the killed run went on past the checkpoint
    out._sink._file.flush()
    again = opened(folder, at)
    again.write(batch.slice(stop))
    got = again.close()
    assert [(f.path, f.records, f.sha256) for f in got] == want
    assert sorted(p.name for p in folder.iterdir()) == sorted(f.path for f in got)


def test_split_parts_read_back_with_duckdb_and_pyarrow(fixture_archive, plain, tmp_path):
    """The parts of a split, compressed export read with one glob give the plain output's values."""
    out = tmp_path / "out"
    pipeline.export(fixture_archive, out, formats=["csv", "ndjson"], types=["posts"], split_rows=40, compress="zstd")
    want = json.loads((plain / "posts.json").read_text(encoding="utf-8"))
    con = duckdb.connect()
    rows = con.execute("SELECT json FROM read_json_objects(?)", [str(out / "posts-*.ndjson.zst")]).fetchall()
    assert [json.loads(r[0]) for r in rows] == want  # the glob's files in name order: the parts in order
    header, *plain_rows = read_csv(plain / "posts.csv")
    got = con.execute(
        "SELECT * FROM read_csv(?, all_varchar = true, header = true, delim = ',', quote = '\"', escape = '\"')",
        [str(out / "posts-*.csv.zst")],
    )
    assert [d[0] for d in got.description] == header
    assert [["" if v is None else v for v in r] for r in got.fetchall()] == plain_rows
    options = pa_csv.ConvertOptions(column_types={h: pa.string() for h in header}, strings_can_be_null=False)
    parsed = [
        pa_csv.read_csv(str(p), pa_csv.ReadOptions(), pa_csv.ParseOptions(newlines_in_values=True), options)
        for p in parts_of(out, "posts", "csv.zst")
    ]
    assert [list(r.values()) for t in parsed for r in t.to_pylist()] == plain_rows


def test_an_empty_zstd_file_is_one_empty_frame(fixture_archive, tmp_path):
    """A stream of no text still gets a zstd frame (RFC 8878: magic 28 B5 2F FD), so the
    `zstd` tool reads it as empty; a file of 0 bytes it refuses."""
    out = tmp_path / "out"
    pipeline.export(fixture_archive, out, formats=["ndjson"], types=["posts"], since="2100-01-01", compress="zstd")
    data = (out / "posts.ndjson.zst").read_bytes()
    assert data[:4] == bytes.fromhex("28b52ffd")
    if shutil.which("zstd"):
        got = subprocess.run(["zstd", "-dc", str(out / "posts.ndjson.zst")], capture_output=True)
        assert (got.returncode, got.stdout) == (0, b""), got.stderr
