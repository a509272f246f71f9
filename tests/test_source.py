"""The source stage: fixed schema, export order, filters, bounded spill."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pyarrow as pa
import pytest
from oracle import expected_posts, instant

from pipeline import POSTS, Archive, Filters
from pipeline.errors import UsageError
from pipeline.source import RecordSource, parse_bound

STRING_SCHEMA = pa.schema([(c, pa.string()) for c in POSTS.column_names])


def _read(db, batch_size=1000, bucket_bytes=None, **filters):
    with Archive(db) as archive:
        kwargs = {} if bucket_bytes is None else {"bucket_bytes": bucket_bytes}
        source = RecordSource(archive, POSTS, Filters(**filters), batch_size, **kwargs)
        batches = list(source)
        total = source.total
        source.close()
    return batches, total


@pytest.mark.parametrize("bucket_bytes", [None, 20_000])  # in memory, and spilled to many buckets
def test_order_and_schema(fixture_archive, bucket_bytes):
    batches, total = _read(fixture_archive, batch_size=333, bucket_bytes=bucket_bytes)
    assert all(b.schema.remove_metadata() == STRING_SCHEMA for b in batches)
    assert [b.num_rows for b in batches[:-1]] == [333] * (len(batches) - 1)
    uris = [u for b in batches for u in b.column("uri").to_pylist()]
    want = [o["uri"] for o in expected_posts(str(fixture_archive)).objects]
    assert uris == want
    assert total == len(want)


def test_null_prefix_keeps_one_schema(archive_null_prefix):
    batches, _ = _read(archive_null_prefix, batch_size=1000, bucket_bytes=200_000)
    assert all(b.schema.remove_metadata() == STRING_SCHEMA for b in batches)
    first = pa.Table.from_batches(batches[:5])
    assert first.column("reply_parent").null_count == 5000
    later = pa.Table.from_batches(batches[5:])
    assert later.column("reply_parent").null_count < later.num_rows


def test_filters(fixture_archive):
    since = instant("2023-01-01T00:00:00Z")
    until = instant("2023-12-31T23:59:59.999999999Z")
    batches, total = _read(fixture_archive, since=since, until=until)
    uris = [u for b in batches for u in b.column("uri").to_pylist()]
    want = [o["uri"] for o in expected_posts(str(fixture_archive), since=since, until=until).objects]
    assert uris == want and total == len(want) > 0


def test_spill_folder_is_removed(fixture_archive, tmp_path):
    with Archive(fixture_archive) as archive:
        source = RecordSource(archive, POSTS, Filters(), 100, spill_dir=tmp_path, bucket_bytes=20_000)
        it = iter(source)
        next(it)
        assert any(tmp_path.iterdir()), "a small bucket size should spill"
        for _ in it:
            pass
        source.close()
    assert not any(tmp_path.iterdir())


def test_batch_metadata_names_key_range(fixture_archive):
    from pipeline.source import key_range

    batches, _ = _read(fixture_archive, batch_size=10)
    first = batches[0].column("uri").to_pylist()
    text = key_range(batches[0])
    assert first[0] in text and first[-1] in text


@pytest.mark.parametrize(
    ("text", "end_of_day", "want"),
    [
        ("2024-05-01", False, "2024-05-01T00:00:00+00:00"),
        ("2024-05-01", True, "2024-05-01T23:59:59.999999999+00:00"),
        ("20240501", True, "2024-05-01T23:59:59.999999999+00:00"),  # basic format is a date too
        ("2024-W18-3", True, "2024-05-01T23:59:59.999999999+00:00"),
        ("2024-05-01T12:00:00", True, "2024-05-01T12:00:00+00:00"),  # a time given is taken as is
        ("2024-05-01 12:00:00+02:00", True, "2024-05-01T10:00:00+00:00"),
        (" 2024-05-01T12:00Z ", False, "2024-05-01T12:00:00+00:00"),
    ],
)
def test_parse_bound(text, end_of_day, want):
    micros = parse_bound(text, end_of_day=end_of_day, option="--until")
    assert micros == instant(want)


@pytest.mark.parametrize("text", ["yesterday", "2024-13-01", "2024-05-01T25:00", "", "2024/05/01"])
def test_parse_bound_rejects(text):
    with pytest.raises(UsageError, match="--since: cannot read"):
        parse_bound(text, end_of_day=False, option="--since")


def test_plan_reads_every_spelling(fixture_archive, tmp_path):
    """Spellings SQLite's date functions cannot read (lower-case t/z, +HHMM) still spread over
    many buckets: the plan parses times as the pages do, so no bucket holds the whole table."""
    import shutil
    import sqlite3

    db = tmp_path / "spelled.db"
    shutil.copy(fixture_archive, db)
    con = sqlite3.connect(db)
    rows = con.execute("SELECT rowid, created_at FROM posts").fetchall()
    respelled = []
    for rowid, text in rows:
        micros = instant(text)
        if micros is not None:
            dt = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros // 1000)
            text = dt.astimezone(timezone(timedelta(hours=5, minutes=30))).strftime("%Y-%m-%dt%H:%M:%S.%f%z")
        respelled.append((text, rowid))
    con.executemany("UPDATE posts SET created_at = ? WHERE rowid = ?", respelled)
    con.commit()
    assert con.execute("SELECT count(unixepoch(created_at)) FROM posts").fetchone()[0] < 5  # SQLite reads ~none
    con.close()

    with Archive(db) as archive:
        source = RecordSource(archive, POSTS, Filters(), 100, bucket_bytes=200_000)
        want = [o["uri"] for o in expected_posts(str(db)).objects]
        assert source.total == len(want)
        rows_per_bucket = 200_000 // (db.stat().st_size // len(rows))
        assert len(source.plan.bounds) >= len(want) // rows_per_bucket - 1 > 5
        with source.sorter() as sorter:
            for page in source.pages():
                sorter.add(page)
            sizes = [t.num_rows for t in sorter.sorted()]
        assert max(sizes) <= 2 * rows_per_bucket and sum(sizes) == len(want)
        source.close()
    batches, _ = _read(db, batch_size=100, bucket_bytes=200_000)
    assert [u for b in batches for u in b.column("uri").to_pylist()] == want
