"""DuckDB as a Parquet peer: the posts loaded through ADBC (as Arrow), then one
``COPY (SELECT * ... ORDER BY created_at DESC, uri) TO 'x.parquet'``.

DuckDB's own SQLite scanner is an extension it downloads on first use; loading the
table through ADBC, as the Polars peer does, needs no network (the whole table is
in memory either way before the sort).

python benchmarks/peers_duckdb.py ARCHIVE SQL OUT parquet
"""

from __future__ import annotations

import sys

import adbc_driver_sqlite.dbapi as sqlite_dbapi
import duckdb


def export(db: str, sql: str, out: str, fmt: str) -> None:
    if fmt != "parquet":
        raise SystemExit(f"unknown format {fmt!r}")
    with sqlite_dbapi.connect(db) as con, con.cursor() as cur:
        cur.execute(sql)
        posts = cur.fetch_arrow_table()
    duck = duckdb.connect()
    duck.register("posts", posts)
    duck.execute(f"COPY (SELECT * FROM posts ORDER BY created_at DESC, uri) TO '{out}' (FORMAT parquet)")
    duck.close()


if __name__ == "__main__":
    export(*sys.argv[1:5])
