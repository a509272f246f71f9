"""One declaration per record type: table, key, time column, columns, export columns.

Adding a record type means adding a ``RecordType`` here; source, transforms and
sinks are driven by these declarations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["text", "int", "bool", "timestamp", "json"]
Omit = Literal["never", "null", "null_or_empty"]


@dataclass(frozen=True)
class Column:
    """An archive column and how it is typed and written in JSON."""

    name: str
    kind: Kind = "text"
    omit: Omit = "never"  # when the JSON key is left out
    null_as: int | None = None  # written instead of NULL in JSON (the counts: bskyarchive writes 0)


@dataclass(frozen=True)
class CsvColumn:
    """A CSV column: its header and the column (or derived value) it comes from."""

    header: str
    source: str
    null_as: int | str | None = None  # written instead of NULL


@dataclass(frozen=True)
class RecordType:
    name: str
    table: str
    key: str  # unique; the keyset tie-breaker
    time: str  # the instant rows are ordered and filtered by
    columns: tuple[Column, ...]  # in JSON key order
    csv: tuple[CsvColumn, ...]
    by_key: bool = False  # exported in key order (an integer rowid key), not newest instant first

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


POSTS = RecordType(
    name="posts",
    table="posts",
    key="uri",
    time="created_at",
    columns=(
        Column("uri"),
        Column("cid"),
        Column("did"),
        Column("text"),
        Column("created_at", "timestamp"),
        Column("indexed_at", "timestamp"),
        Column("has_media", "bool"),
        Column("like_count", "int", null_as=0),
        Column("repost_count", "int", null_as=0),
        Column("reply_count", "int", null_as=0),
        Column("quote_count", "int", null_as=0),
        Column("is_reply", "bool"),
        Column("reply_parent", omit="null_or_empty"),
        Column("embed_type", omit="null_or_empty"),
        Column("embed_data", "json", omit="null"),
        Column("labels", "json", omit="null"),
        Column("archived_at", "timestamp"),
    ),
    csv=(
        CsvColumn("URI", "uri"),
        CsvColumn("CID", "cid"),
        CsvColumn("DID", "did"),
        CsvColumn("Text", "text"),
        CsvColumn("CreatedAt", "created_at"),
        CsvColumn("LikeCount", "like_count", null_as=0),
        CsvColumn("RepostCount", "repost_count", null_as=0),
        CsvColumn("ReplyCount", "reply_count", null_as=0),
        CsvColumn("QuoteCount", "quote_count", null_as=0),
        CsvColumn("IsReply", "is_reply"),
        CsvColumn("ReplyParent", "reply_parent"),
        CsvColumn("HasMedia", "has_media"),
        CsvColumn("MediaFiles", "media_files"),
        CsvColumn("EmbedType", "embed_type"),
        CsvColumn("IndexedAt", "indexed_at"),
    ),
)

LIKES = RecordType(
    name="likes",
    table="likes",
    key="uri",
    time="created_at",
    columns=(
        Column("uri"),
        Column("cid"),
        Column("did"),
        Column("subject_uri"),
        Column("subject_cid"),
        Column("created_at", "timestamp"),
        Column("indexed_at", "timestamp"),
    ),
    csv=(
        CsvColumn("URI", "uri"),
        CsvColumn("CID", "cid"),
        CsvColumn("DID", "did"),
        CsvColumn("SubjectURI", "subject_uri"),
        CsvColumn("SubjectCID", "subject_cid"),
        CsvColumn("CreatedAt", "created_at"),
        CsvColumn("IndexedAt", "indexed_at"),
    ),
)

FOLLOWS = RecordType(
    name="follows",
    table="follows",
    key="uri",
    time="created_at",
    columns=(
        Column("uri"),
        Column("cid"),
        Column("did"),
        Column("subject_did"),
        Column("created_at", "timestamp"),
        Column("indexed_at", "timestamp"),
    ),
    csv=(
        CsvColumn("URI", "uri"),
        CsvColumn("CID", "cid"),
        CsvColumn("DID", "did"),
        CsvColumn("SubjectDID", "subject_did"),
        CsvColumn("CreatedAt", "created_at"),
        CsvColumn("IndexedAt", "indexed_at"),
    ),
)

# The sync stream's operations: in ``seq`` order, split into files by record
# type and action (``ops/<type>.<action>.<ext>``) by the runner.
OPS = RecordType(
    name="ops",
    table="ops",
    key="seq",
    time="time",
    columns=(
        Column("seq", "int"),
        Column("did"),
        Column("collection"),
        Column("rkey"),
        Column("action"),
        Column("cid"),
        Column("record", "json"),
        Column("time", "timestamp"),
    ),
    csv=(
        CsvColumn("Seq", "seq"),
        CsvColumn("DID", "did"),
        CsvColumn("Collection", "collection"),
        CsvColumn("RKey", "rkey"),
        CsvColumn("Action", "action"),
        CsvColumn("CID", "cid"),
        CsvColumn("Time", "time"),
    ),
    by_key=True,
)

# Which record type an op's collection is, for its file name (others go to ``other``).
COLLECTION_TYPES = {"app.bsky.feed.post": "posts", "app.bsky.feed.like": "likes", "app.bsky.graph.follow": "follows"}
OP_ACTIONS = ("create", "update", "delete")

# In export order: the order files are written and listed in the manifest.
RECORD_TYPES: dict[str, RecordType] = {r.name: r for r in (POSTS, LIKES, FOLLOWS)}
