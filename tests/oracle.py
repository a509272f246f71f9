"""An independent oracle: the export format computed with the stdlib only.

Reads the archive with ``sqlite3``, parses timestamps with ``re`` and
``datetime``, and builds the expected CSV cells and JSON objects straight from
``../shared/export-format.md``. Shares no code with ``pipeline``.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from dataclasses import dataclass
from datetime import date, datetime, timedelta

EPOCH = datetime(1970, 1, 1)
TS = re.compile(
    r"\s*(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?"
    r"\s*(?:([Zz])|([+-])(\d{2})(?::?(\d{2}))?"
    # Go's time.Time.String(): a zone name (or numeric zone) and a monotonic clock reading, ignored
    r"(?: (?:[A-Za-z][A-Za-z0-9_+-]{0,15}|[+-]\d{2,4})(?: m=[+-]\d{1,20}(?:\.\d{1,9})?)?)?"
    r")?)?\s*",
    re.ASCII,
)
MIN_NS = -62_135_596_800 * 10**9  # 0001-01-01T00:00:00Z
MAX_NS = 253_402_300_800 * 10**9 - 1  # 9999-12-31T23:59:59.999999999Z
POST_COLUMNS = [
    "uri", "cid", "did", "text", "created_at", "indexed_at", "has_media", "like_count", "repost_count",
    "reply_count", "quote_count", "is_reply", "reply_parent", "embed_type", "embed_data", "labels", "archived_at",
]  # fmt: skip
CSV_HEADER = [
    "URI", "CID", "DID", "Text", "CreatedAt", "LikeCount", "RepostCount", "ReplyCount", "QuoteCount",
    "IsReply", "ReplyParent", "HasMedia", "MediaFiles", "EmbedType", "IndexedAt",
]  # fmt: skip


def instant(value: object) -> int | None:
    """ns since the epoch, or None when ``value`` is not a timestamp whose instant lies
    in the years 0001-9999 (UTC)."""
    if not isinstance(value, str):
        return None
    m = TS.fullmatch(value)
    if not m:
        return None
    y, mo, d, hh, mm, ss, frac, z, sign, oh, om = m.groups()
    if int(hh or 0) > 23 or int(mm or 0) > 59 or int(ss or 0) > 59 or int(om or 0) > 59 or int(oh or 0) > 23:
        return None
    try:
        if int(y) == 0:  # datetime has no year 0: count from the same day 400 years on (same calendar)
            day = date(400, int(mo), int(d)).toordinal() - 146_097
        else:
            day = date(int(y), int(mo), int(d)).toordinal()
    except ValueError:
        return None
    seconds = (day - EPOCH.toordinal()) * 86400 + int(hh or 0) * 3600 + int(mm or 0) * 60 + int(ss or 0)
    if sign:
        offset = int(oh) * 3600 + int(om or 0) * 60
        seconds -= offset if sign == "+" else -offset
    ns = seconds * 10**9 + int((frac or "").ljust(9, "0"))
    return ns if MIN_NS <= ns <= MAX_NS else None


def rfc3339(nanos: int, *, fraction: bool) -> str:
    seconds, sub = divmod(nanos, 10**9)
    dt = EPOCH + timedelta(seconds=seconds)
    base = f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}"
    if not fraction or sub == 0:
        return base + "Z"
    if sub % 10**6 == 0:
        return f"{base}.{sub // 10**6:03d}Z"
    if sub % 1000 == 0:
        return f"{base}.{sub // 1000:06d}Z"
    return f"{base}.{sub:09d}Z"


@dataclass(frozen=True)
class Expected:
    csv_rows: list[list[str]]  # header first
    objects: list[dict[str, object]]
    rejects: list[dict[str, str]]


def as_text(v: object) -> str | None:
    """SQLite's own text rendering of a stored value (what CAST(v AS TEXT) gives)."""
    if v is None:
        return None
    if isinstance(v, str):
        return v
    if isinstance(v, bytes):  # a BLOB: CAST(... AS TEXT) reads its bytes as UTF-8
        return v.decode("utf-8", errors="replace")
    if isinstance(v, float):
        return repr(v) if v != int(v) or abs(v) >= 1e15 else f"{v:.1f}"
    return str(v)


def as_int(v: object) -> int | None:
    t = as_text(v)
    if t is None:
        return None
    try:
        return int(t.strip())
    except ValueError:
        return None


def media_hashes(embed: object) -> list[str]:
    def fullsizes(images: object) -> list[str]:
        out = []
        for i in images if isinstance(images, list) else []:
            if isinstance(i, dict) and isinstance(i.get("fullsize"), str):
                out.append(i["fullsize"])
        return out

    if not isinstance(embed, dict):
        return []
    urls = fullsizes(embed.get("images"))
    if isinstance(embed.get("media"), dict):
        urls += fullsizes(embed["media"].get("images"))
    if isinstance(embed.get("external"), dict) and isinstance(embed["external"].get("thumb"), str):
        urls.append(embed["external"]["thumb"])
    return [h for h in map(media_hash, urls) if h is not None]


def media_hash(url: str) -> str | None:
    """bskyarchive's cut: the last path segment up to its first @; None without a / or a hash."""
    if "/" not in url:
        return None
    return url.rsplit("/", 1)[1].split("@", 1)[0] or None


def load_json(text: str | None) -> tuple[bool, object]:
    """(valid, value): one RFC 8259 document whose numbers fit a double, whose
    strings are valid Unicode and which nests at most 127 levels (the export's rule)."""
    if text is None:
        return False, None

    def no_constant(name: str) -> object:
        raise ValueError(name)  # NaN, Infinity: not JSON

    try:
        value = json.loads(text, parse_constant=no_constant)
    except (ValueError, RecursionError):
        return False, None
    return (True, value) if _representable(value, 0) else (False, None)


def _representable(v: object, depth: int) -> bool:
    if isinstance(v, bool) or v is None:
        return True
    if isinstance(v, int | float):
        try:
            return math.isfinite(float(v))
        except OverflowError:
            return False
    if isinstance(v, str):
        return _unicode(v)
    if isinstance(v, list):
        return depth < 127 and all(_representable(x, depth + 1) for x in v)
    assert isinstance(v, dict)
    return depth < 127 and all(_unicode(k) and _representable(x, depth + 1) for k, x in v.items())


def _unicode(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:  # a lone surrogate escape
        return False


# Record types whose columns are text and timestamps only: (columns, CSV header).
SIMPLE_TYPES = {
    "likes": (
        ["uri", "cid", "did", "subject_uri", "subject_cid", "created_at", "indexed_at"],
        ["URI", "CID", "DID", "SubjectURI", "SubjectCID", "CreatedAt", "IndexedAt"],
    ),
    "follows": (
        ["uri", "cid", "did", "subject_did", "created_at", "indexed_at"],
        ["URI", "CID", "DID", "SubjectDID", "CreatedAt", "IndexedAt"],
    ),
}
TIMESTAMPS = ("created_at", "indexed_at", "archived_at")


def expected_records(db: str, rtype: str, **filters: object) -> Expected:
    """What the export of one record type must hold (posts, likes or follows)."""
    if rtype == "posts":
        return expected_posts(db, **filters)  # type: ignore[arg-type]
    cols, header = SIMPLE_TYPES[rtype]
    ordered, unplaced = _ordered_rows(db, rtype, cols, **filters)  # type: ignore[arg-type]
    csv_rows, objects, rejects = [header], [], []
    for r in ordered:
        row: list[str] = []
        obj: dict[str, object] = {}
        for c in cols:
            raw = as_text(r[c])
            if c in TIMESTAMPS:
                t = instant(raw)
                if raw is not None and t is None:
                    rejects.append({"key": r["uri"], "column": c, "value": raw, "kind": "timestamp"})
                    row.append(raw)
                    obj[c] = raw
                else:
                    row.append("" if t is None else rfc3339(t, fraction=False))
                    obj[c] = None if t is None else rfc3339(t, fraction=True)
            else:
                row.append("" if raw is None else raw)
                obj[c] = raw
        csv_rows.append(row)
        objects.append(obj)
    for r in unplaced:
        rejects.append({"key": r["uri"], "column": "created_at", "value": as_text(r["created_at"]), "kind": "unplaced"})
    return Expected(csv_rows, objects, rejects)


def _ordered_rows(
    db: str, table: str, cols: list[str], *, did: str | None = None, since: int | None = None, until: int | None = None
) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """The rows the filters keep, newest created_at first then uri (those without an
    instant last, by uri); and, under a time filter, the rows left out for having none."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    rows = [dict(zip(cols, r, strict=True)) for r in con.execute(f"SELECT {', '.join(cols)} FROM {table}")]
    con.close()
    if did is not None:
        rows = [r for r in rows if r["did"] == did]
    timed = since is not None or until is not None
    kept, unplaced = [], []
    for r in rows:
        t = instant(as_text(r["created_at"]))
        if t is None:
            (unplaced if timed else kept).append((None, r))
        elif (since is None or t >= since) and (until is None or t <= until):
            kept.append((t, r))
    placed = sorted([x for x in kept if x[0] is not None], key=lambda x: (-x[0], x[1]["uri"]))
    unp = sorted([x for x in kept if x[0] is None], key=lambda x: x[1]["uri"])
    return [r for _, r in placed + unp], sorted((r for _, r in unplaced), key=lambda r: r["uri"])


def expected_posts(db: str, *, did: str | None = None, since: int | None = None, until: int | None = None) -> Expected:
    ordered, unplaced = _ordered_rows(db, "posts", POST_COLUMNS, did=did, since=since, until=until)

    csv_rows = [CSV_HEADER]
    objects: list[dict[str, object]] = []
    rejects: list[dict[str, str]] = []

    def reject(r: dict[str, object], column: str, reason_kind: str) -> None:
        rejects.append({"key": r["uri"], "column": column, "value": as_text(r[column]), "kind": reason_kind})

    for r in ordered:
        # typed values
        ts: dict[str, tuple[str | None, str | None]] = {}
        for c in ("created_at", "indexed_at", "archived_at"):
            raw = as_text(r[c])
            t = instant(raw)
            if raw is not None and t is None:
                reject(r, c, "timestamp")
                ts[c] = (raw, raw)
            else:
                ts[c] = (None, None) if t is None else (rfc3339(t, fraction=False), rfc3339(t, fraction=True))
        ints: dict[str, int | None | str] = {}
        for c in ("has_media", "like_count", "repost_count", "reply_count", "quote_count", "is_reply"):
            raw = as_text(r[c])
            v = as_int(raw)
            if raw is not None and v is None:
                reject(r, c, "int" if c.endswith("count") else "bool")
            ints[c] = v
        jsons: dict[str, tuple[bool, object]] = {}
        for c in ("embed_data", "labels"):
            raw = as_text(r[c])
            ok, val = load_json(raw)
            if raw is not None and not ok:
                reject(r, c, "json")
            jsons[c] = (ok, val)

        def bool_text(c: str, ints: dict = ints) -> str:
            v = ints[c]
            return "" if v is None else ("true" if v else "false")

        def count_text(c: str, ints: dict = ints, r: dict = r) -> str:
            v = ints[c]
            if v is None:
                return "0" if r[c] is None else ""
            return str(v)

        has_media = ints["has_media"]
        ok, embed = jsons["embed_data"]
        media = ";".join(media_hashes(embed)) if has_media and ok else ""
        csv_rows.append([
            r["uri"], r["cid"], r["did"], "" if r["text"] is None else r["text"],
            ts["created_at"][0] or "",
            count_text("like_count"), count_text("repost_count"), count_text("reply_count"), count_text("quote_count"),
            bool_text("is_reply"),
            "" if r["reply_parent"] is None else r["reply_parent"],
            bool_text("has_media"),
            media,
            "" if r["embed_type"] is None else r["embed_type"],
            ts["indexed_at"][0] or "",
        ])  # fmt: skip

        o: dict[str, object] = {}
        for c in ("uri", "cid", "did", "text"):
            o[c] = as_text(r[c])
        o["created_at"] = ts["created_at"][1]
        o["indexed_at"] = ts["indexed_at"][1]
        for c in ("has_media", "like_count", "repost_count", "reply_count", "quote_count", "is_reply"):
            v = ints[c]
            if v is None and r[c] is None and c.endswith("_count"):
                o[c] = 0  # a NULL count is 0 in every format (bskyarchive writes 0)
            elif v is None:
                o[c] = as_text(r[c])  # null, or the stored text of a reject
            elif c in ("has_media", "is_reply"):
                o[c] = v != 0
            else:
                o[c] = v
        for c in ("reply_parent", "embed_type"):
            if r[c] is not None and r[c] != "":
                o[c] = as_text(r[c])
        for c in ("embed_data", "labels"):
            if r[c] is not None:
                ok, val = jsons[c]
                o[c] = val if ok else as_text(r[c])
        o["archived_at"] = ts["archived_at"][1]
        objects.append(o)
    for r in unplaced:
        rejects.append({"key": r["uri"], "column": "created_at", "value": as_text(r["created_at"]), "kind": "unplaced"})
    return Expected(csv_rows, objects, rejects)


OP_COLUMNS = ["seq", "did", "collection", "rkey", "action", "cid", "record", "time"]
OP_CSV_HEADER = ["Seq", "DID", "Collection", "RKey", "Action", "CID", "Time"]
OP_TYPES = {"app.bsky.feed.post": "posts", "app.bsky.feed.like": "likes", "app.bsky.graph.follow": "follows"}


def expected_ops(
    db: str, *, did: str | None = None, since: int | None = None, until: int | None = None
) -> tuple[dict[str, Expected], list[dict[str, str]]]:
    """The ops files (by stem ``<type>.<action>``) in seq order, and the ops' rejects."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    rows = [dict(zip(OP_COLUMNS, r, strict=True)) for r in con.execute(f"SELECT {', '.join(OP_COLUMNS)} FROM ops")]
    con.close()
    rows.sort(key=lambda r: r["seq"])
    timed = since is not None or until is not None
    files: dict[str, Expected] = {}
    rejects: list[dict[str, str]] = []
    for r in rows:
        if did is not None and r["did"] != did:
            continue
        key = str(r["seq"])
        raw_time = as_text(r["time"])
        t = instant(raw_time)
        if timed and (t is None or (since is not None and t < since) or (until is not None and t > until)):
            if t is None:
                rejects.append({"key": key, "column": "time", "value": raw_time, "kind": "unplaced"})
            continue
        if raw_time is not None and t is None:
            rejects.append({"key": key, "column": "time", "value": raw_time, "kind": "timestamp"})
        ok, record = load_json(as_text(r["record"]))
        if r["record"] is not None and not ok:
            rejects.append({"key": key, "column": "record", "value": as_text(r["record"]), "kind": "json"})
        kind = OP_TYPES.get(r["collection"], "other")
        stem = f"{kind}.{r['action'] if r['action'] in ('create', 'update', 'delete') else 'other'}"
        exp = files.setdefault(stem, Expected([OP_CSV_HEADER], [], []))
        time_csv = "" if raw_time is None else (rfc3339(t, fraction=False) if t is not None else raw_time)
        time_json = None if raw_time is None else (rfc3339(t, fraction=True) if t is not None else raw_time)
        text = {c: as_text(r[c]) for c in ("did", "collection", "rkey", "action", "cid")}
        exp.csv_rows.append([key, *("" if text[c] is None else text[c] for c in text), time_csv])
        exp.objects.append({
            "seq": r["seq"], **text,
            "record": None if r["record"] is None else (record if ok else as_text(r["record"])),
            "time": time_json,
        })  # fmt: skip
    return files, rejects


# --- Parquet: typed values -------------------------------------------------------------

# Parquet timestamps are int64 nanoseconds; the export writes the whole years they hold.
PARQUET_MIN_NS = -9_214_560_000 * 10**9  # 1678-01-01T00:00:00Z
PARQUET_MAX_NS = 9_214_646_400 * 10**9 - 1  # 2261-12-31T23:59:59.999999999Z
POST_KINDS = {
    "created_at": "timestamp", "indexed_at": "timestamp", "archived_at": "timestamp", "has_media": "bool",
    "is_reply": "bool", "like_count": "count", "repost_count": "count", "reply_count": "count",
    "quote_count": "count", "embed_data": "json", "labels": "json",
}  # fmt: skip


def typed_value(kind: str, stored: object) -> object:
    """A stored value as a typed (Parquet) column holds it: text as stored, an instant as ns
    since the epoch (None outside Parquet's years or not an instant), a count (NULL is 0) or
    boolean as such, JSON decoded (None when the stored text is not JSON: the column is null)."""
    raw = as_text(stored)
    if kind == "text":
        return raw
    if kind == "timestamp":
        t = instant(raw)
        return t if t is not None and PARQUET_MIN_NS <= t <= PARQUET_MAX_NS else None
    if kind == "count":
        return 0 if raw is None else as_int(raw)
    if kind == "int":
        return as_int(raw)
    if kind == "bool":
        v = as_int(raw)
        return None if v is None else v != 0
    assert kind == "json"
    ok, value = load_json(raw)
    return value if ok else None


def parquet_rejects(rows: list[dict[str, object]], key: str, kinds: dict[str, str]) -> list[tuple[str, str, str]]:
    """(key, column, stored) of the instants Parquet cannot hold (other rejects are the other formats')."""
    out = []
    for r in rows:
        for c, kind in kinds.items():
            t = instant(as_text(r[c])) if kind == "timestamp" else None
            if t is not None and not PARQUET_MIN_NS <= t <= PARQUET_MAX_NS:
                out.append((str(r[key]), c, as_text(r[c])))
    return out


def expected_parquet(db: str, rtype: str, **filters: object) -> tuple[list[dict[str, object]], list[tuple]]:
    """The typed rows of one record type's Parquet file, in export order, and its Parquet-only rejects."""
    cols = POST_COLUMNS if rtype == "posts" else SIMPLE_TYPES[rtype][0]
    kinds = POST_KINDS if rtype == "posts" else {c: "timestamp" for c in cols if c in TIMESTAMPS}
    ordered, _ = _ordered_rows(db, rtype, cols, **filters)  # type: ignore[arg-type]
    rows = [{c: typed_value(kinds.get(c, "text"), r[c]) for c in cols} for r in ordered]
    return rows, parquet_rejects(ordered, "uri", kinds)


def expected_parquet_ops(db: str) -> tuple[dict[str, list[dict[str, object]]], list[tuple]]:
    """The ops' Parquet files (by stem), typed, and their Parquet-only rejects (no filters)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    rows = [dict(zip(OP_COLUMNS, r, strict=True)) for r in con.execute(f"SELECT {', '.join(OP_COLUMNS)} FROM ops")]
    con.close()
    rows.sort(key=lambda r: r["seq"])
    kinds = {"seq": "int", "record": "json", "time": "timestamp"}
    files: dict[str, list[dict[str, object]]] = {}
    for r in rows:
        kind = OP_TYPES.get(r["collection"], "other")  # type: ignore[arg-type]
        stem = f"{kind}.{r['action'] if r['action'] in ('create', 'update', 'delete') else 'other'}"
        files.setdefault(stem, []).append({c: typed_value(kinds.get(c, "text"), r[c]) for c in OP_COLUMNS})
    return files, parquet_rejects(rows, "seq", {"time": "timestamp"})
