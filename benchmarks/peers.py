"""The peers timed against ``pipeline run export``: the same posts in the same order, one format each."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Issue 17's order: created_at as stored (text), newest first, then uri. The same sorting work as ours, not
# quite the same order: rows stored with a UTC offset other than +0000 sort by their local time. julianday()
# reads no Go time string (bskyarchive's storage), so ORDER BY julianday(created_at) would sort by uri alone.
ORDER = " FROM posts ORDER BY created_at DESC, uri"
# posts.csv's columns; embed_data stands in for MediaFiles, which SQL cannot compute
# (it writes more bytes than we do, not fewer).
CSV_SQL = (
    "SELECT uri, cid, did, text, created_at, like_count, repost_count, reply_count, quote_count,"
    " is_reply, reply_parent, has_media, embed_data, embed_type, indexed_at" + ORDER
)
# posts.json/.ndjson carry every column (embed_data and labels parsed; the peers copy the text).
JSON_SQL = "SELECT *" + ORDER
# Parquet: every column; DuckDB sorts the loaded table itself (COPY (SELECT ... ORDER BY ...)), Polars takes it sorted.
SQL = {"csv": CSV_SQL, "json": JSON_SQL, "ndjson": JSON_SQL, "parquet": JSON_SQL}
SQL_UNSORTED = {"duckdb": "SELECT * FROM posts"}


@dataclass(frozen=True)
class Peer:
    name: str  # e.g. "sqlite3 -csv"
    family: str  # what --skip-peers matches: sqlite3, sqlite-utils, stdlib, polars, duckdb
    format: str
    whole_table: bool = False  # holds the whole result in memory

    def command(self, db: Path, out: Path) -> tuple[list[str], Path | None]:
        """The command and the file its stdout goes to (None: it writes ``out`` itself)."""
        sql = SQL_UNSORTED.get(self.family, SQL[self.format])
        if self.family == "sqlite3":
            return [
                _exe("sqlite3"),
                "-readonly",
                f"-{self.format}",
                *(["-header"] * (self.format == "csv")),
                str(db),
                sql,
            ], out
        if self.family == "sqlite-utils":
            flag = {"csv": "--csv", "ndjson": "--nl"}[self.format]
            return [_exe("sqlite-utils"), "query", str(db), sql, flag], out
        script = HERE / f"peers_{self.family}.py"
        return [sys.executable, str(script), str(db), sql, str(out), self.format], None


def _exe(name: str) -> str:
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(
            f"peer {name!r} not found (sqlite3: apt-get install sqlite3; sqlite-utils: pip install -e '.[bench]')"
        )
    return found


PEERS = [
    Peer("sqlite3 -csv -header", "sqlite3", "csv"),
    Peer("sqlite3 -json", "sqlite3", "json"),
    Peer("sqlite-utils --csv", "sqlite-utils", "csv"),
    Peer("sqlite-utils --nl", "sqlite-utils", "ndjson"),
    Peer("stdlib csv.writer", "stdlib", "csv"),
    Peer("stdlib json.dumps (array)", "stdlib", "json"),
    Peer("stdlib json.dumps (lines)", "stdlib", "ndjson"),
    Peer("polars write_csv", "polars", "csv", whole_table=True),
    Peer("polars write_json", "polars", "json", whole_table=True),
    Peer("polars write_ndjson", "polars", "ndjson", whole_table=True),
    Peer("polars write_parquet", "polars", "parquet", whole_table=True),
    Peer("duckdb COPY TO parquet", "duckdb", "parquet", whole_table=True),
]
FAMILIES = sorted({p.family for p in PEERS})


def select(formats: list[str], skip: set[str]) -> list[Peer]:
    """The peers of ``formats`` not named in ``skip`` (a family, or a peer's name)."""
    return [p for p in PEERS if p.format in formats and p.family not in skip and p.name not in skip]
