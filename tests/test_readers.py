"""The README's "Opening the files" recipes, run as written against every output of a realistic
archive and compared with the stdlib oracle: a recipe that stops working fails here.

Each recipe is one expression, kept in ``RECIPES`` and found verbatim in the README
section; it is evaluated in the export folder. The archive is the bundled
bskyarchive-style one, with texts that readers like to turn into missing values,
numbers or dates (``NA``, ``None``, ``NaN``, ``007``, ``TRUE``, ``2024-01-01``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.csv as pv
import pyarrow.json as pj
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, altered
from oracle import SIMPLE_TYPES, expected_parquet, expected_records

import pipeline

ARCHIVE = ROOT / "data" / "fixtures" / "bskyarchive" / "data" / "archive.db"
TRICKY = ["NA", "N/A", "None", "NaN", "null", "nan", "#N/A", "007", "TRUE", "2024-01-01", "=1+1", "-", ""]
TYPES = ("posts", "likes", "follows")
POST_COLUMNS_DUCKDB = (
    "{uri: 'VARCHAR', cid: 'VARCHAR', did: 'VARCHAR', text: 'VARCHAR', created_at: 'VARCHAR', "
    "indexed_at: 'VARCHAR', has_media: 'BOOLEAN', like_count: 'BIGINT', repost_count: 'BIGINT', "
    "reply_count: 'BIGINT', quote_count: 'BIGINT', is_reply: 'BOOLEAN', reply_parent: 'VARCHAR', "
    "embed_type: 'VARCHAR', embed_data: 'JSON', labels: 'JSON', archived_at: 'VARCHAR'}"
)
# (reader, format) -> the README's expression; {f} is the file (posts.csv, ...)
RECIPES = {
    ("pandas", "csv"): 'pd.read_csv("{f}", keep_default_na=False, dtype=str)',
    ("pandas", "json"): 'pd.read_json("{f}", dtype=False)',
    ("pandas", "ndjson"): 'pd.read_json("{f}", lines=True, dtype=False)',
    ("pandas", "parquet"): 'pd.read_parquet("{f}")',
    ("polars", "csv"): 'pl.read_csv("{f}", infer_schema=False)',
    ("polars", "json"): 'pl.read_json("{f}", infer_schema_length=None)',
    ("polars", "ndjson"): 'pl.read_ndjson("{f}", infer_schema_length=None)',
    ("polars", "parquet"): 'pl.read_parquet("{f}")',
    ("pyarrow", "csv"): 'pv.read_csv("{f}", parse_options=pv.ParseOptions(newlines_in_values=True), '
    "convert_options=pv.ConvertOptions(column_types=dict.fromkeys(header, pa.string())))",
    ("pyarrow", "ndjson"): 'pj.read_json("{f}")',
    ("pyarrow", "parquet"): 'pq.read_table("{f}")',
    ("duckdb", "csv"): "duckdb.sql(\"SELECT * FROM read_csv('{f}', all_varchar = true)\")",
    ("duckdb", "json"): 'duckdb.sql("SELECT * FROM read_json(\'{f}\', columns = " + columns + ")")',
    ("duckdb", "ndjson"): 'duckdb.sql("SELECT * FROM read_json(\'{f}\', columns = " + columns + ")")',
    ("duckdb", "parquet"): "duckdb.sql(\"SELECT * FROM '{f}'\")",
}
README_SNIPPETS = [
    'header = open("posts.csv", encoding="utf-8-sig").readline().rstrip("\\n").split(",")',
    f'columns = "{POST_COLUMNS_DUCKDB}"',
]


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> tuple[Path, Path]:
    """(archive, export folder): the demo archive with tricky texts, in every format."""
    folder = tmp_path_factory.mktemp("readers")
    db = folder / "archive.db"
    rowids = ", ".join(str(7 + 13 * i) for i in range(len(TRICKY)))
    sql = [
        "UPDATE posts SET text = CASE rowid "
        + " ".join(f"WHEN {7 + 13 * i} THEN '{t}'" for i, t in enumerate(TRICKY))
        + f" ELSE text END WHERE rowid IN ({rowids})"
    ]
    # the newest posts without labels and embeds: keys the first objects lack (a reader that infers
    # its schema from the first rows drops them)
    sql.append(
        "UPDATE posts SET labels = NULL, embed_data = NULL WHERE rowid IN "
        "(SELECT rowid FROM posts ORDER BY created_at DESC LIMIT 150)"
    )
    altered(ARCHIVE, db, *sql)
    out = folder / "out"
    pipeline.export(db, out, formats=["csv", "json", "ndjson", "parquet"], types=list(TYPES))
    return db, out


def test_every_recipe_is_in_the_readme():
    section = (ROOT / "README.md").read_text().split("## Opening the files", 1)[1].split("\n## ", 1)[0]
    for (reader, fmt), recipe in RECIPES.items():
        assert recipe.format(f=f"posts.{fmt}") in section, (reader, fmt)
    for snippet in README_SNIPPETS:
        assert snippet in section, snippet


def test_the_archive_has_what_readers_trip_on(export):
    db, _ = export
    objects = expected_records(str(db), "posts").objects
    texts = {o["text"] for o in objects}
    assert set(TRICKY) <= texts and any("\r\n" in t for t in texts if t)
    with_labels = [i for i, o in enumerate(objects) if "labels" in o]
    assert with_labels and with_labels[0] >= 100  # a key the first 100 objects lack (polars' default inference)
    assert not expected_records(str(db), "posts").rejects  # realistic: bskyarchive writes no broken values


def _run(reader: str, fmt: str, rtype: str, out: Path) -> object:
    """A recipe's result, evaluated in the export folder (``header``, ``columns`` as the README makes them)."""
    cwd = Path.cwd()
    os.chdir(out)
    try:
        with open(f"{rtype}.csv", encoding="utf-8-sig") as f:  # the README's line, for this type's file
            header = f.readline().rstrip("\n").split(",")
        columns = POST_COLUMNS_DUCKDB if rtype == "posts" else _varchar_columns(rtype)
        names = {"pd": pd, "pl": pl, "pa": pa, "pv": pv, "pj": pj, "pq": pq, "duckdb": duckdb}
        result = eval(RECIPES[reader, fmt].format(f=f"{rtype}.{fmt}"), {**names, "header": header, "columns": columns})
        if reader == "duckdb":
            result = (result.columns, result.fetchall())
        return result
    finally:
        os.chdir(cwd)


def _varchar_columns(rtype: str) -> str:
    return "{" + ", ".join(f"{c}: 'VARCHAR'" for c in SIMPLE_TYPES[rtype][0]) + "}"


def _rows(reader: str, result: object) -> list[dict[str, object]]:
    if reader == "pandas":
        return result.to_dict("records")  # type: ignore[union-attr]
    if reader == "polars":
        return result.to_dicts()  # type: ignore[union-attr]
    if reader == "pyarrow":
        return result.to_pylist()  # type: ignore[union-attr]
    names, rows = result  # type: ignore[misc]
    return [dict(zip(names, r, strict=True)) for r in rows]


def _top(row: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in row.items() if v is not None}


def _present(value: object) -> object:
    """A value with null members left out, recursively (NaN is pandas' null): readers that
    merge nested objects into one struct type give every object every key, null where absent."""
    if isinstance(value, dict):
        return {k: _present(v) for k, v in value.items() if _present(v) is not None}
    if isinstance(value, list):
        return [_present(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


READERS_CSV = ["pandas", "polars", "pyarrow", "duckdb"]


@pytest.mark.parametrize("rtype", TYPES)
@pytest.mark.parametrize("reader", READERS_CSV)
def test_csv_recipes(export, reader, rtype):
    db, out = export
    want = expected_records(str(db), rtype).csv_rows
    result = _run(reader, "csv", rtype, out)
    rows = _rows(reader, result)
    assert list(rows[0]) == want[0]  # the header: no BOM in the first name
    # polars and DuckDB read an empty field as null (NULL and '' are both empty in CSV)
    got = [["" if v is None else v for v in r.values()] for r in rows]
    assert got == want[1:]


@pytest.mark.parametrize("fmt", ["json", "ndjson"])
@pytest.mark.parametrize("rtype", TYPES)
@pytest.mark.parametrize("reader", ["pandas", "polars", "pyarrow", "duckdb"])
def test_json_recipes(export, reader, rtype, fmt):
    if (reader, fmt) not in RECIPES:
        pytest.skip(f"{reader} reads no {fmt} (the README says so)")
    db, out = export
    want = expected_records(str(db), rtype).objects
    rows = _rows(reader, _run(reader, fmt, rtype, out))
    if reader == "duckdb":
        for r in rows:
            for k in ("embed_data", "labels"):
                if r.get(k) is not None:
                    r[k] = json.loads(r[k])  # JSON columns come back as their text
    assert len(rows) == len(want)
    if reader == "duckdb":  # exact at the top: an absent key and a JSON null are NULL
        assert [_top(r) for r in rows] == [_top(w) for w in want]
    else:  # absent keys (and members of nested objects) are null
        assert [_present(r) for r in rows] == [_present(w) for w in want]


@pytest.mark.parametrize("rtype", TYPES)
@pytest.mark.parametrize("reader", ["pandas", "polars", "pyarrow", "duckdb"])
def test_parquet_recipes(export, reader, rtype):
    db, out = export
    want, _ = expected_parquet(str(db), rtype)
    result = _run(reader, "parquet", rtype, out)
    if reader == "polars":  # Python datetimes hold microseconds: compare nanoseconds
        result = result.with_columns(pl.col(pl.Datetime).dt.epoch("ns"))  # type: ignore[union-attr]
    elif reader == "pyarrow":
        result = result.cast(  # type: ignore[union-attr]
            pa.schema([(f.name, pa.int64() if pa.types.is_timestamp(f.type) else f.type) for f in result.schema])
        )
    elif reader == "duckdb":
        cols = ", ".join(
            f'epoch_ns("{c}") AS "{c}"' if c.endswith("_at") else f'"{c}"' for c in want[0] if want
        )  # fmt: skip
        con = duckdb.connect()
        rel = con.execute(f"SELECT {cols} FROM '{out / f'{rtype}.parquet'}'")
        result = ([d[0] for d in rel.description], rel.fetchall())
    rows = _rows(reader, result)
    for r in rows:
        for k, v in r.items():
            if isinstance(v, pd.Timestamp):
                r[k] = v.value  # ns since the epoch
            elif k in ("embed_data", "labels") and v is not None:
                r[k] = json.loads(v)
            elif isinstance(v, float) and math.isnan(v):
                r[k] = None
    assert rows == want
