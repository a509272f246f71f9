"""The contract's latest small rules, checked on the bytes (export-format.md)."""

from __future__ import annotations

import json
import sqlite3

import pipeline

HEADER = (
    "URI,CID,DID,Text,CreatedAt,LikeCount,RepostCount,ReplyCount,QuoteCount,IsReply,ReplyParent,HasMedia,"
    "MediaFiles,EmbedType,IndexedAt"
)


def test_csv_header_is_unquoted_after_the_bom(fixture_archive, tmp_path):
    pipeline.export(fixture_archive, tmp_path / "o", formats=["csv"])
    first = (tmp_path / "o" / "posts.csv").read_bytes().split(b"\n", 1)[0]
    assert first == b"\xef\xbb\xbf" + HEADER.encode()
    likes = (tmp_path / "o" / "likes.csv").read_bytes().split(b"\n", 1)[0]
    assert likes == b"\xef\xbb\xbfURI,CID,DID,SubjectURI,SubjectCID,CreatedAt,IndexedAt"


def test_line_separators_are_escaped_and_null_counts_are_0(fixture_archive, tmp_path):
    con = sqlite3.connect(fixture_archive)
    seps = con.execute("SELECT count(*) FROM posts WHERE instr(text, char(8232)) OR instr(text, char(8233))").fetchone()
    nulls = con.execute("SELECT count(*) FROM posts WHERE like_count IS NULL").fetchone()[0]
    con.close()
    assert seps[0] > 0 and nulls > 0  # the fixture has both
    out = tmp_path / "o"
    pipeline.export(fixture_archive, out, formats=["json", "ndjson"])
    for name in ("posts.json", "posts.ndjson", "rejects.ndjson"):
        text = (out / name).read_text(encoding="utf-8")
        assert "\u2028" not in text and "\u2029" not in text, name
    objs = [json.loads(line) for line in (out / "posts.ndjson").read_text(encoding="utf-8").split("\n")[:-1]]
    assert sum("\u2028" in (o["text"] or "") or "\u2029" in (o["text"] or "") for o in objs) == seps[0]
    assert all(o[c] is not None for o in objs for c in ("like_count", "repost_count", "reply_count", "quote_count"))
