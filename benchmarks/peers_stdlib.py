"""A hand-written exporter with the standard library only: sqlite3 + csv.writer / json.dumps, streamed.

    python benchmarks/peers_stdlib.py ARCHIVE SQL OUT csv|json|ndjson

A peer of ``pipeline run export``: it dumps what the query returns as it comes
(no validation, no conversion), reading 100 rows at a time (1,000 rows of
~1.5 MB each held past 8 GiB on the huge-row archive).
"""

from __future__ import annotations

import csv
import json
import sqlite3
import sys

BATCH = 100


def export(db: str, sql: str, out: str, fmt: str) -> None:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        cur = con.execute(sql)
        names = [d[0] for d in cur.description]
        with open(out, "w", encoding="utf-8", newline="") as f:
            if fmt == "csv":
                writer = csv.writer(f)
                writer.writerow(names)
                while rows := cur.fetchmany(BATCH):
                    writer.writerows(rows)
            elif fmt == "ndjson":
                dumps = json.dumps
                while rows := cur.fetchmany(BATCH):
                    f.writelines(dumps(dict(zip(names, row, strict=True)), ensure_ascii=False) + "\n" for row in rows)
            elif fmt == "json":
                dumps = json.dumps
                sep = "[\n"
                while rows := cur.fetchmany(BATCH):
                    for row in rows:
                        f.write(sep)
                        f.write(dumps(dict(zip(names, row, strict=True)), ensure_ascii=False))
                        sep = ",\n"
                f.write("[]\n" if sep == "[\n" else "\n]\n")
            else:
                raise SystemExit(f"unknown format {fmt!r}")
    finally:
        con.close()


if __name__ == "__main__":
    export(*sys.argv[1:5])
