"""The hardening issue's ten broken promises and its rough edges, each reproduced as it was reported."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest
from conftest import ROOT, altered, run_cli
from test_export import check_export

import pipeline
from pipeline import Tuning
from pipeline.errors import Interrupted, OutputError, UsageError

FORMATS = ("-f", "csv", "-f", "json", "-f", "ndjson")


def _tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _data(folder: Path) -> dict[str, str]:
    return {k: v for k, v in _tree(folder).items() if k not in ("manifest.json", "metrics.json")}


# 1. The input inside the output ------------------------------------------------------------------


def test_an_archive_inside_out_is_never_removed(fixture_archive, tmp_path):
    exp = tmp_path / "exp"
    pipeline.export(fixture_archive, exp, formats=["csv"])
    shutil.copy(fixture_archive, exp / "archive.db")
    before = _tree(exp)
    r = run_cli("run", "export", exp / "archive.db", "--out", exp, "-q")
    assert r.returncode == 4, r.stderr
    assert "holds the archive" in r.stderr and "Traceback" not in r.stderr
    assert _tree(exp) == before  # the archive and the earlier export, untouched
    nested = tmp_path / "outer"
    (nested / "data").mkdir(parents=True)
    shutil.copy(fixture_archive, nested / "data" / "archive.db")
    with pytest.raises(OutputError, match="holds the archive"):
        pipeline.export(nested / "data" / "archive.db", nested)
    assert (nested / "data" / "archive.db").read_bytes() == fixture_archive.read_bytes()


def test_media_read_from_inside_out_is_refused(fixture_archive, tmp_path):
    exp = tmp_path / "exp"
    pipeline.export(fixture_archive, exp, formats=["csv"])
    with pytest.raises(OutputError, match="holds the media root"):
        pipeline.export(fixture_archive, exp, include_media=True, media_root=exp)
    db = altered(fixture_archive, tmp_path / "archive.db", "UPDATE media SET file_path = 'exp/posts.csv'")
    before = _tree(exp)
    with pytest.raises(OutputError, match="lies in --out"):
        pipeline.export(db, exp, include_media=True, media_root=tmp_path)
    assert _tree(exp) == before


# 2. OUT names are names, not glob patterns -----------------------------------------------------------


def test_out_names_are_not_patterns(fixture_archive, tmp_path):
    killed = tmp_path / ".a1.staging-999999999"  # a killed run into x/a1: resumable
    (killed / ".checkpoint").mkdir(parents=True)
    (killed / ".checkpoint" / "run.json").write_text("{}")
    pipeline.export(fixture_archive, tmp_path / "a[1]", formats=["csv"])
    assert killed.exists()  # a[1] is not a pattern matching a1
    own = tmp_path / ".a[1].staging-999999999"
    own.mkdir()
    r = run_cli("clean", tmp_path / "a[1]")
    assert r.returncode == 0, r.stderr
    assert not own.exists() and killed.exists()


# 3. Bytes that are not UTF-8 ----------------------------------------------------------------------


def test_every_output_is_utf8_and_bad_bytes_are_rejects(fixture_archive, tmp_path):
    con = sqlite3.connect(fixture_archive)
    uri, uri2 = (r[0] for r in con.execute("SELECT uri FROM posts ORDER BY rowid LIMIT 2"))
    con.close()
    db = altered(
        fixture_archive,
        tmp_path / "bytes.db",
        f"UPDATE posts SET text = CAST(X'fffe41' AS TEXT), did = CAST(X'6469643aff' AS TEXT) WHERE uri = '{uri}'",
        f"UPDATE posts SET embed_data = CAST(X'7b7dff' AS TEXT), created_at = CAST(X'32303234ff' AS TEXT)"
        f" WHERE uri = '{uri2}'",
    )
    out = tmp_path / "out"
    pipeline.export(db, out, formats=["csv", "json", "ndjson"])
    for path in out.rglob("*"):
        if path.is_file():
            path.read_bytes().decode("utf-8")  # strict: every file
    objs = {o["uri"]: o for o in json.loads((out / "posts.json").read_text())}
    assert objs[uri]["text"] == "\ufffd\ufffdA" and objs[uri]["did"] == "did:\ufffd"
    rejects = [json.loads(x) for x in (out / "rejects.ndjson").read_text().splitlines()]
    hexed = {(r["key"], r["column"]): r["value"] for r in rejects if "not UTF-8" in r["reason"]}
    assert hexed == {
        (uri, "text"): "fffe41",
        (uri, "did"): "6469643aff",
        (uri2, "embed_data"): "7b7dff",
        (uri2, "created_at"): "32303234ff",
    }


# 4. Ties on (instant, uri) --------------------------------------------------------------------------


def test_ties_come_out_in_one_order(tmp_path):
    db = tmp_path / "ties.db"
    con = sqlite3.connect(db)
    con.execute(
        "CREATE TABLE posts (uri TEXT, cid TEXT, did TEXT, text TEXT, created_at TEXT, indexed_at TEXT,"
        " has_media INT, like_count INT, repost_count INT, reply_count INT, quote_count INT, is_reply INT,"
        " reply_parent TEXT, embed_type TEXT, embed_data TEXT, labels TEXT, archived_at TEXT)"
    )
    spellings = ["2024-05-01T12:00:00Z", "2024-05-01 12:00:00", "2024-05-01 14:00:00 +0200 +0200"]
    rows = [
        (None if i % 3 else "at://dup", f"c{i}", "did:x", f"t{i}", spellings[i % 3], spellings[0]) for i in range(600)
    ]
    con.executemany("INSERT INTO posts (uri, cid, did, text, created_at, indexed_at) VALUES (?,?,?,?,?,?)", rows)
    con.commit()
    con.close()
    outs = []
    for i, (jobs, size) in enumerate([(1, 1000), (4, 1000), (1, 7), (4, 1), (1, 1000), (4, 1000)]):
        out = tmp_path / f"o{i}"
        pipeline.export(db, out, formats=["csv", "ndjson"], jobs=jobs, batch_size=size, tuning=Tuning(page_rows=0))
        outs.append(_data(out))
    assert all(o == outs[0] for o in outs)
    texts = [json.loads(x)["text"] for x in (tmp_path / "o0" / "posts.ndjson").read_text().splitlines()]
    dup = [t for t in texts if int(t[1:]) % 3 == 0]
    null = [t for t in texts if int(t[1:]) % 3]
    assert texts == dup + null  # "at://dup" before NULL keys (nulls last), each group in rowid order
    assert dup == [f"t{i}" for i in range(0, 600, 3)] and null == [f"t{i}" for i in range(600) if i % 3]


# 5. A signal after the swap -------------------------------------------------------------------------


def test_an_interrupt_after_the_swap_is_a_published_export(fixture_archive, tmp_path, monkeypatch):
    from pipeline import publish

    out = tmp_path / "out"
    pipeline.export(fixture_archive, out, formats=["csv"])
    real_rmtree = shutil.rmtree

    def interrupted(path, *a, **k):
        if ".staging-" in str(path) and (Path(path) / "manifest.json").exists():
            raise Interrupted(15)  # SIGTERM while the earlier export is being removed
        return real_rmtree(path, *a, **k)

    monkeypatch.setattr(publish.shutil, "rmtree", interrupted)
    result = pipeline.export(fixture_archive, out, formats=["csv", "json"])
    assert (out / "posts.json").exists() and result.out == out.resolve()
    assert any("interrupted while removing the earlier export" in w for w in result.warnings)
    monkeypatch.undo()
    (left,) = tmp_path.glob(".out.staging-*")
    r = run_cli("clean", out)  # the process that left it is this one: it is still alive
    assert left.exists() and r.returncode == 0


# 6 and 7. Instants outside the years 0001-9999 -----------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"), [("--until", "0001-01-01T00:00:00+14:00"), ("--since", "9999-12-31T23:59:59-12:00")]
)
def test_bounds_outside_the_years_are_usage_errors(fixture_archive, tmp_path, option, value):
    r = run_cli("run", "export", fixture_archive, "--out", tmp_path / "o", option, value)
    assert r.returncode == 2, r.stderr
    assert "outside the years 0001-9999" in r.stderr and "Traceback" not in r.stderr


def test_stored_instants_outside_the_years_are_rejects(fixture_archive, tmp_path):
    far = {"9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+14:00", "9999-12-31 23:59:59 -0100 -01"}
    con = sqlite3.connect(fixture_archive)
    uris = [r[0] for r in con.execute("SELECT uri FROM posts ORDER BY rowid LIMIT 3")]
    con.close()
    sets = [f"UPDATE posts SET created_at = '{t}' WHERE uri = '{u}'" for t, u in zip(sorted(far), uris, strict=True)]
    db = altered(fixture_archive, tmp_path / "far.db", *sets)
    out = tmp_path / "out"
    pipeline.export(db, out, formats=["json"], types=["posts"])
    objs = {o["uri"]: o for o in json.loads((out / "posts.json").read_text())}
    assert {objs[u]["created_at"] for u in uris} == far  # written as stored, never as year 10000 or 0000
    reasons = {json.loads(x)["key"]: json.loads(x)["reason"] for x in (out / "rejects.ndjson").read_text().splitlines()}
    assert all("outside the years 0001-9999" in reasons[u] for u in uris)
    check_export(out, db, ["json"], ("posts",))


# 8. Command-line arguments that are not UTF-8 --------------------------------------------------------


def test_a_path_that_is_not_utf8_works_and_a_did_that_is_not_is_exit_2(fixture_archive, tmp_path):
    odd = tmp_path / os.fsdecode(b"na\xff.db")
    shutil.copy(fixture_archive, odd)
    r = run_cli("run", "export", odd, "--out", tmp_path / "out", "-q")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_bytes().decode("utf-8"))
    assert manifest["archive"]["path"].endswith("na\\xff.db")
    r = run_cli("run", "export", fixture_archive, "--out", tmp_path / "o2", "--did", os.fsdecode(b"did:\xff"))
    assert r.returncode == 2 and "not UTF-8" in r.stderr and "Traceback" not in r.stderr


# 9. A huge --batch-size, and a cleanup error never hides its cause -----------------------------------


def test_huge_batch_size_is_a_usage_error(fixture_archive, tmp_path):
    r = run_cli("run", "export", fixture_archive, "--out", tmp_path / "o", "--batch-size", "2147483648")
    assert r.returncode == 2 and "--batch-size must be between 1 and 1,048,576" in r.stderr
    with pytest.raises(UsageError, match="--batch-size"):
        pipeline.export(fixture_archive, tmp_path / "o", batch_size=2**31)


def test_a_failed_statement_option_is_the_error_reported(fixture_archive):
    import adbc_driver_manager as adbc

    from pipeline.source import Archive

    archive = Archive(fixture_archive)
    with pytest.raises(adbc.Error):
        archive.read_table("SELECT 1", rows=2**31)  # an invalid option: the driver's error, not a cleanup's
    archive.close()  # and the connection still closes


# 10. What counts as an earlier export ---------------------------------------------------------------


@pytest.mark.parametrize("extra", ["manifest-only", "unknown-file", "unknown-folder"])
def test_a_folder_is_an_earlier_export_only_if_it_looks_like_one(fixture_archive, tmp_path, extra):
    out = tmp_path / "out"
    if extra == "manifest-only":
        out.mkdir()
        (out / "manifest.json").write_text('{"tool": "pipeline"}')
        (out / "thesis.tex").write_text("years of work")
    else:
        pipeline.export(fixture_archive, out, formats=["csv"])
        if extra == "unknown-file":
            (out / "notes.txt").write_text("mine")
        else:
            (out / "photos").mkdir()
            (out / "photos" / "cat.jpg").write_bytes(b"\xff\xd8")
    before = _tree(out)
    r = run_cli("run", "export", fixture_archive, "--out", out, "-q")
    assert r.returncode == 4 and "is not an earlier export" in r.stderr, r.stderr
    assert _tree(out) == before


# Rough edges ------------------------------------------------------------------------------------------


def test_posts_without_rowid_or_as_a_view_say_so(tmp_path):
    cols = "uri TEXT PRIMARY KEY, cid TEXT, did TEXT, text TEXT, created_at TEXT, indexed_at TEXT, has_media INT,"
    cols += " like_count INT, repost_count INT, reply_count INT, quote_count INT, is_reply INT, reply_parent TEXT,"
    cols += " embed_type TEXT, embed_data TEXT, labels TEXT, archived_at TEXT"
    for name, sql, said in [
        ("norowid", f"CREATE TABLE posts ({cols}) WITHOUT ROWID", "WITHOUT ROWID"),
        ("view", f"CREATE TABLE p ({cols}); CREATE VIEW posts AS SELECT * FROM p", "is a view"),
    ]:
        db = tmp_path / f"{name}.db"
        con = sqlite3.connect(db)
        con.executescript(sql)
        con.close()
        r = run_cli("run", "export", db, "--out", tmp_path / f"o-{name}")
        assert r.returncode == 3 and said in r.stderr, r.stderr


def test_metrics_file_never_overwrites_the_archive(fixture_archive, tmp_path):
    db = tmp_path / "archive.db"
    shutil.copy(fixture_archive, db)
    for target in (db, tmp_path / "archive.db-wal"):
        r = run_cli("run", "export", db, "--out", tmp_path / "o", "--metrics-file", target)
        assert r.returncode == 2 and "is the archive" in r.stderr
    assert db.read_bytes() == fixture_archive.read_bytes() and not (tmp_path / "archive.db-wal").exists()


def test_out_names_too_long_for_the_staging_folder_fail_first(fixture_archive, tmp_path):
    r = run_cli("run", "export", fixture_archive, "--out", tmp_path / ("x" * 245), "-q")
    assert r.returncode == 4 and "too long" in r.stderr


def test_closed_stderr_and_a_bad_progress_interval_do_not_decide_the_export(fixture_archive, tmp_path):
    import subprocess

    out = tmp_path / "out"
    code = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "run", "export", str(fixture_archive), "--out", str(out)],
        stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL, pass_fds=(), close_fds=True,
        preexec_fn=lambda: os.close(2), timeout=300,
    ).returncode  # fmt: skip
    assert code == 0 and (out / "manifest.json").exists()
    r = run_cli("run", "export", fixture_archive, "--out", tmp_path / "o2", env={**os.environ,
                "PIPELINE_PROGRESS_INTERVAL": "abc"})  # fmt: skip
    assert r.returncode == 0 and "Traceback" not in r.stderr and "PIPELINE_PROGRESS_INTERVAL" in r.stderr


# Losing a row is never silent ------------------------------------------------------------------------


def test_a_stream_that_writes_fewer_rows_than_it_read_is_not_published(fixture_archive, tmp_path, monkeypatch):
    """A bug that drops rows between the sort and the files (as an early streaming prototype did) fails
    the export: the earlier export stays as it was, and the message says how many rows are missing."""
    from pipeline import record_stream
    from pipeline.errors import ExportError

    out = tmp_path / "out"
    pipeline.export(fixture_archive, out, formats=["csv", "json"])
    before = _tree(out)
    real = record_stream.write_chunk
    calls = []

    def lossy(sinks, formats, chunk, *a):
        calls.append(chunk.num_rows)
        if len(calls) != 2:  # the second chunk is lost
            real(sinks, formats, chunk, *a)

    monkeypatch.setattr(record_stream, "write_chunk", lossy)
    with pytest.raises(ExportError, match=r"has [\d,]+ records but [\d,]+ were read: the export is not published"):
        pipeline.export(fixture_archive, out, formats=["csv", "json"], tuning=Tuning(write_rows=100))
    assert _tree(out) == before and len(calls) > 2
