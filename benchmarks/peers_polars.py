"""Polars as a peer: the whole query result in memory (ADBC SQLite), then one
write_csv/write_json/write_ndjson/write_parquet.

python benchmarks/peers_polars.py ARCHIVE SQL OUT csv|json|ndjson|parquet
"""

from __future__ import annotations

import sys

import polars as pl


def export(db: str, sql: str, out: str, fmt: str) -> None:
    df = pl.read_database_uri(sql, f"sqlite:///{db}", engine="adbc")
    if fmt == "csv":
        df.write_csv(out)
    elif fmt == "json":
        df.write_json(out)
    elif fmt == "ndjson":
        df.write_ndjson(out)
    elif fmt == "parquet":
        df.write_parquet(out)
    else:
        raise SystemExit(f"unknown format {fmt!r}")


if __name__ == "__main__":
    export(*sys.argv[1:5])
