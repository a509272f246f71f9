"""End to end against the stdlib oracle: every format, with and without each filter."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import pytest
from oracle import Expected, expected_ops, expected_posts, expected_records, instant

import pipeline

BOM = "\ufeff"
ALL_TYPES = ("posts", "likes", "follows")
FILTERS = {
    "none": {},
    "did": {"did": "__first_did__"},
    "since": {"since": "2023-06-01"},
    "until": {"until": "2023-06-01"},
    "since_until": {"since": "2023-03-01T00:00:00+02:00", "until": "2024-02-29"},
    "all": {"did": "__first_did__", "since": "2022-06-01", "until": "2024-12-31T23:59:59.999Z"},
}


def _dids(db: Path) -> list[str]:
    import sqlite3

    con = sqlite3.connect(db)
    rows = [r[0] for r in con.execute("SELECT did FROM posts GROUP BY did ORDER BY count(*) DESC")]
    con.close()
    return rows


def _oracle_bounds(opts: dict[str, str]) -> dict[str, object]:
    out: dict[str, object] = {}
    if "did" in opts:
        out["did"] = opts["did"]
    if "since" in opts:
        s = opts["since"]
        out["since"] = instant(s if "T" in s else s + "T00:00:00Z")
    if "until" in opts:
        u = opts["until"]
        out["until"] = instant(u) if "T" in u else instant(u + "T23:59:59.999999999Z")
    return out


def read_csv(path: Path) -> list[list[str]]:
    csv.field_size_limit(2**31 - 1)  # a post's text may be larger than the csv module's 128 KiB default
    text = path.read_bytes().decode("utf-8")
    assert text.startswith(BOM)
    return list(csv.reader(io.StringIO(text[1:], newline="")))


def check_export(
    out: Path, db: Path, formats: list[str], types: tuple[str, ...] = ("posts",), **filters: object
) -> None:
    """Every file of ``types`` against the oracle; the manifest's sizes, hashes and reject count."""
    manifest = json.loads((out / "manifest.json").read_text())
    by_path = {f["path"]: f for f in manifest["files"]}
    for f in by_path.values():
        data = (out / f["path"]).read_bytes()
        assert f["size_bytes"] == len(data)
        assert f["sha256"] == hashlib.sha256(data).hexdigest()
    got_rejects = []
    if (out / "rejects.ndjson").exists():
        got_rejects = [json.loads(x) for x in (out / "rejects.ndjson").read_text().splitlines()]
    reject_count = 0
    for rtype in types:
        exp = expected_records(str(db), rtype, **filters)
        _check_type(out, rtype, formats, exp, by_path)
        mine = [r for r in got_rejects if r["type"] == rtype]
        assert sorted((r["key"], r["column"], r["value"]) for r in mine) == sorted(
            (r["key"], r["column"], r["value"]) for r in exp.rejects
        )
        reject_count += len(exp.rejects)
    if set(types) >= set(manifest.get("types", types)):
        assert manifest["reject_count"] == reject_count == len(got_rejects)


def _check_type(out: Path, rtype: str, formats: list[str], exp: Expected, by_path: dict) -> None:
    if "csv" in formats:
        rows = read_csv(out / f"{rtype}.csv")
        assert rows[0] == exp.csv_rows[0]
        assert len(rows) == len(exp.csv_rows)
        for got, want in zip(rows, exp.csv_rows, strict=True):
            assert got == want
        assert by_path[f"{rtype}.csv"]["records"] == len(exp.objects)
    if "json" in formats:
        text = (out / f"{rtype}.json").read_text(encoding="utf-8")
        objs = json.loads(text, parse_constant=_not_json)
        assert objs == exp.objects
        assert _strict(objs) == _strict(exp.objects)  # key order, and true is not 1
        lines = text.split("\n")
        assert lines[0] == ("[" if objs else "[]") and text.endswith("]\n")
    if "ndjson" in formats:
        text = (out / f"{rtype}.ndjson").read_text(encoding="utf-8")
        lines = text.split("\n")
        assert lines[-1] == ""
        objs = [json.loads(line, parse_constant=_not_json) for line in lines[:-1]]
        assert objs == exp.objects
        assert _strict(objs) == _strict(exp.objects)


def _strict(objs: list[dict]) -> list[str]:
    """Objects as canonical text: equal only with the same keys in the same order and the same types."""
    return [json.dumps(o, ensure_ascii=False) for o in objs]


def _not_json(name: str) -> object:
    raise AssertionError(f"export wrote {name}, which is not JSON")


@pytest.mark.parametrize("name", list(FILTERS))
@pytest.mark.parametrize("which", ["fixture", "20k"])
def test_export_matches_oracle(name, which, fixture_archive, archive_20k, tmp_path):
    db = fixture_archive if which == "fixture" else archive_20k
    opts = {k: (_dids(db)[0] if v == "__first_did__" else v) for k, v in FILTERS[name].items()}
    out = tmp_path / "out"
    result = pipeline.export(db, out, formats=["csv", "json", "ndjson"], **opts)
    assert result.out == out
    check_export(out, db, ["csv", "json", "ndjson"], ALL_TYPES, **_oracle_bounds(opts))
    if name == "none":
        for rtype in ALL_TYPES:
            assert result.records[rtype] == len(expected_records(str(db), rtype).objects) > 0


def test_fixture_has_hard_cases(fixture_archive):
    """The oracle comparison only proves something if the hard cases are really there."""
    exp = expected_posts(str(fixture_archive))
    texts = [o["text"] for o in exp.objects if isinstance(o["text"], str)]
    assert any("\r\n" in t for t in texts) and any('"' in t for t in texts) and any("," in t for t in texts)
    assert any(any(ord(ch) > 0xFFFF for ch in t) for t in texts)  # emoji
    assert any(o["text"] is None for o in exp.objects) and any(o["text"] == "" for o in exp.objects)
    assert exp.rejects, "the fixture should exercise rejects"
    created = [o["created_at"] for o in exp.objects]
    assert len(set(created)) < len(created), "equal created_at ties"
    assert any(row[12] for row in exp.csv_rows[1:]), "some MediaFiles"


def test_null_prefix_column(archive_null_prefix, tmp_path):
    """NULL in the first 5,000 rows (export order) and text later: no type mismatch."""
    exp = expected_posts(str(archive_null_prefix))
    first = exp.objects[:5000]
    assert all("reply_parent" not in o and "embed_data" not in o and o["text"] is None for o in first)
    assert any("embed_data" in o for o in exp.objects[5000:])
    for batch_size in (1000, 6000):
        out = tmp_path / f"out{batch_size}"
        pipeline.export(archive_null_prefix, out, formats=["csv", "json", "ndjson"], batch_size=batch_size)
        check_export(out, archive_null_prefix, ["csv", "json", "ndjson"])


def _data_files(out: Path) -> dict[str, bytes]:
    # metrics.json (times, memory) differs on every run by nature
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name not in ("manifest.json", "metrics.json")}


def test_bytes_identical_across_batch_sizes_and_runs(fixture_archive, tmp_path):
    import sqlite3

    n = sqlite3.connect(fixture_archive).execute("SELECT count(*) FROM posts").fetchone()[0]
    outputs = []
    for i, size in enumerate([1, 7, 999, 1000, 1001, n + 5, 1000]):
        out = tmp_path / f"o{i}"
        pipeline.export(fixture_archive, out, formats=["csv", "json", "ndjson"], batch_size=size)
        outputs.append(_data_files(out))
    for other in outputs[1:]:
        assert other == outputs[0]
    m1 = json.loads((tmp_path / "o3" / "manifest.json").read_text())
    m2 = json.loads((tmp_path / "o6" / "manifest.json").read_text())
    m1.pop("exported_at"), m2.pop("exported_at")
    assert m1 == m2


def test_every_cut_of_the_runner_gives_the_same_bytes(fixture_archive, tmp_path, monkeypatch):
    """Pages of exactly --batch-size rows, many sort buckets, bucket files in parts, small writes:
    the bytes are those of an export with the defaults (one page, one bucket), and match the oracle."""
    import sqlite3

    n = sqlite3.connect(fixture_archive).execute("SELECT count(*) FROM posts").fetchone()[0]
    formats = ["csv", "json", "ndjson"]
    pipeline.export(fixture_archive, tmp_path / "default", formats=formats)
    want = _data_files(tmp_path / "default")
    # ~30 rows a bucket, 3 bucket files open at once, pages of --batch-size rows, chunks of 13
    tuning = pipeline.Tuning(page_rows=0, bucket_bytes=40_000, open_files=3, write_rows=13)
    for size in [1, 7, 999, 1000, 1001, n + 5]:
        out = tmp_path / f"cut{size}"
        pipeline.export(fixture_archive, out, formats=formats, batch_size=size, tuning=tuning)
        assert _data_files(out) == want, size
    check_export(tmp_path / "cut7", fixture_archive, formats)


def test_empty_result_is_valid(fixture_archive, tmp_path):
    out = tmp_path / "empty"
    pipeline.export(fixture_archive, out, formats=["csv", "json", "ndjson"], did="did:plc:nobody")
    assert (out / "posts.json").read_bytes() == b"[]\n"
    assert (out / "posts.ndjson").read_bytes() == b""
    rows = read_csv(out / "posts.csv")
    assert rows == [expected_posts(str(fixture_archive)).csv_rows[0]]


CSV_CONVERTED = {"created_at", "indexed_at", "has_media", "like_count", "repost_count", "reply_count", "quote_count"}
CSV_CONVERTED |= {"is_reply", "embed_data"}


def test_csv_only_reports_rejects_of_what_it_writes(fixture_archive, tmp_path):
    """A CSV-only export writes no labels or archived_at, so it reports no rejects there."""
    import sqlite3

    db = tmp_path / "archive.db"
    db.write_bytes(fixture_archive.read_bytes())
    con = sqlite3.connect(db)
    con.execute("UPDATE posts SET labels = '[{\"val\": ' WHERE rowid % 97 = 0")
    con.execute("UPDATE posts SET archived_at = 'yesterday' WHERE rowid % 89 = 0")
    con.execute("UPDATE posts SET embed_data = '{\"images\": [' WHERE rowid % 83 = 0")
    con.commit()
    con.close()
    out = tmp_path / "csv"
    pipeline.export(db, out, formats=["csv"])
    rows = read_csv(out / "posts.csv")
    exp = expected_posts(str(db))
    assert rows == exp.csv_rows
    got = [json.loads(x) for x in (out / "rejects.ndjson").read_text().splitlines()]
    # embed_data is not written to CSV: it is only read (and so checked) for MediaFiles, when has_media
    con = sqlite3.connect(db)
    with_media = {u for (u,) in con.execute("SELECT uri FROM posts WHERE CAST(has_media AS INTEGER) != 0")}
    con.close()
    want = [
        r
        for r in exp.rejects
        if r["column"] in CSV_CONVERTED and (r["column"] != "embed_data" or r["key"] in with_media)
    ]
    assert sorted((r["key"], r["column"], r["value"]) for r in got) == sorted(
        (r["key"], r["column"], r["value"]) for r in want
    )
    assert {r["column"] for r in exp.rejects} - CSV_CONVERTED, "the fixture should have rejects CSV does not write"
    assert len(want) < len([r for r in exp.rejects if r["column"] in CSV_CONVERTED]), "embed_data without has_media"


def _broken_copy(src: Path, dst: Path) -> Path:
    """The fixture with unreadable times in likes, follows and ops, a malformed op record,
    and ops of a collection that is none of ours and of one unsafe as a file name."""
    import shutil
    import sqlite3

    shutil.copy(src, dst)
    con = sqlite3.connect(dst)
    con.execute("UPDATE likes SET created_at = 'last week' WHERE rowid IN (SELECT rowid FROM likes LIMIT 3)")
    con.execute(
        "UPDATE follows SET indexed_at = '2024-02-30T00:00:00Z' WHERE rowid IN (SELECT rowid FROM follows LIMIT 2)"
    )
    seqs = [r[0] for r in con.execute("SELECT seq FROM ops WHERE action = 'create' ORDER BY seq LIMIT 6")]
    con.execute("UPDATE ops SET time = 'soon' WHERE seq IN (?, ?)", seqs[:2])
    con.execute("UPDATE ops SET record = '{\"$type\": ' WHERE seq = ?", seqs[2:3])
    con.execute("UPDATE ops SET collection = 'app.bsky.feed.repost' WHERE seq = ?", seqs[3:4])
    con.execute("UPDATE ops SET collection = '../x/y' WHERE seq = ?", seqs[4:5])
    con.commit()
    con.close()
    return dst


@pytest.mark.parametrize("opts", [{}, {"since": "2023-06-01"}])
def test_rejects_of_every_type(fixture_archive, tmp_path, opts):
    db = _broken_copy(fixture_archive, tmp_path / "broken.db")
    out = tmp_path / "out"
    pipeline.export(db, out, formats=["csv", "json", "ndjson"], **opts)
    check_export(out, db, ["csv", "json", "ndjson"], ALL_TYPES, **_oracle_bounds(opts))
    types = [json.loads(x)["type"] for x in (out / "rejects.ndjson").read_text().splitlines()]
    assert types == sorted(types, key=ALL_TYPES.index)  # one type after another, in type order
    assert {"likes", "follows"} <= set(types)


def test_types_option_and_missing_tables(fixture_archive, tmp_path):
    import sqlite3

    out = tmp_path / "likes-only"
    result = pipeline.export(fixture_archive, out, formats=["csv"], types=["likes"])
    assert sorted(p.name for p in out.iterdir()) == ["likes.csv", "manifest.json", "metrics.json"]
    assert list(result.records) == ["likes"] and result.notices == []
    check_export(out, fixture_archive, ["csv"], ("likes",))

    db = tmp_path / "nofollows.db"
    db.write_bytes(fixture_archive.read_bytes())
    con = sqlite3.connect(db)
    con.execute("DROP TABLE follows")
    con.commit()
    con.close()
    result = pipeline.export(db, tmp_path / "all", formats=["ndjson"])
    assert list(result.records) == ["posts", "likes"]
    assert result.notices == ["the archive has no 'follows' table; follows skipped"]
    with pytest.raises(pipeline.ArchiveError, match="no 'follows' table"):
        pipeline.export(db, tmp_path / "named", types="posts,follows")
    assert not (tmp_path / "named").exists()
    with pytest.raises(pipeline.UsageError, match="unknown record type"):
        pipeline.export(db, tmp_path / "bad", types=["reposts"])


@pytest.mark.parametrize("name", list(FILTERS))
@pytest.mark.parametrize("which", ["fixture", "20k"])
def test_ops_match_oracle(name, which, fixture_archive, archive_20k, tmp_path):
    db = fixture_archive if which == "fixture" else archive_20k
    opts = {k: (_dids(db)[0] if v == "__first_did__" else v) for k, v in FILTERS[name].items()}
    out = tmp_path / "out"
    formats = ["csv", "json", "ndjson"]
    result = pipeline.export(db, out, formats=formats, types=["follows"], ops=True, **opts)
    files, rejects = expected_ops(str(db), **_oracle_bounds(opts))
    if name == "none":
        assert len(files) >= 6, "the archive should have ops of several types and actions"
    found = sorted(p.name for p in (out / "ops").iterdir()) if (out / "ops").exists() else []
    assert found == sorted(f"{s}.{f}" for s in files for f in formats)
    manifest = json.loads((out / "manifest.json").read_text())
    by_path = {f["path"]: f for f in manifest["files"]}
    for stem, exp in files.items():
        _check_type(out / "ops", stem, formats, exp, {k.removeprefix("ops/"): v for k, v in by_path.items()})
    assert result.records["ops"] == sum(len(e.objects) for e in files.values())
    got = []
    if (out / "rejects.ndjson").exists():
        got = [json.loads(x) for x in (out / "rejects.ndjson").read_text().splitlines()]
    got_ops = [(r["key"], r["column"], r["value"]) for r in got if r["type"] == "ops"]
    assert sorted(got_ops) == sorted((r["key"], r["column"], r["value"]) for r in rejects)


@pytest.mark.parametrize("opts", [{}, {"since": "2020-01-01"}])
def test_ops_rejects_and_odd_collections(fixture_archive, tmp_path, opts):
    db = _broken_copy(fixture_archive, tmp_path / "broken.db")
    out = tmp_path / "out"
    pipeline.export(db, out, formats=["csv", "ndjson"], types=["likes"], ops=True, **opts)
    files, rejects = expected_ops(str(db), **_oracle_bounds(opts))
    assert "other.create" in files  # app.bsky.feed.repost and '../x/y' both
    want = sorted(f"{s}.{f}" for s in files for f in ("csv", "ndjson"))
    assert sorted(p.name for p in (out / "ops").iterdir()) == want
    manifest = json.loads((out / "manifest.json").read_text())
    by_path = {f["path"].removeprefix("ops/"): f for f in manifest["files"]}
    for stem, exp in files.items():
        _check_type(out / "ops", stem, ["csv", "ndjson"], exp, by_path)
    got = [json.loads(x) for x in (out / "rejects.ndjson").read_text().splitlines()]
    got_ops = [(r["key"], r["column"], r["value"]) for r in got if r["type"] == "ops"]
    assert sorted(got_ops) == sorted((r["key"], r["column"], r["value"]) for r in rejects)
    assert len(got_ops) == 3


def test_ops_of_many_collections_share_the_other_files(fixture_archive, tmp_path):
    """Hundreds of unknown collections, one of 300 characters: a bounded set of short file names."""
    import sqlite3

    db = tmp_path / "many.db"
    db.write_bytes(fixture_archive.read_bytes())
    con = sqlite3.connect(db)
    top = con.execute("SELECT max(seq) FROM ops").fetchone()[0]
    rows = [(top + 1 + i, "did:plc:x", f"com.example.c{i}", "r", "create", "c", "{}", "2024-01-01T00:00:00Z")
            for i in range(400)]  # fmt: skip
    rows.append((top + 500, "did:plc:x", "com.example." + "a" * 300, "r", "delete", None, None, "2024-01-01T00:00:00Z"))
    con.executemany("INSERT INTO ops VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    con.commit()
    con.close()
    out = tmp_path / "out"
    pipeline.export(db, out, formats=["csv", "json", "ndjson"], types=["follows"], ops=True)
    files, _ = expected_ops(str(db))
    names = sorted(p.name for p in (out / "ops").iterdir())
    assert names == sorted(f"{s}.{f}" for s in files for f in ("csv", "json", "ndjson")) and len(files) <= 16
    assert len(files["other.create"].objects) == 400 and len(files["other.delete"].objects) == 1
