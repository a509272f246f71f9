"""Pure, vectorised batch transforms: source batch → typed frame → export batches.

Every expression is built once per record type (``_Plan``) and applied to each
batch. ``typed`` converts each column once (timestamps to µs, integers,
booleans, validated JSON) and keeps the stored text of converted columns beside
the value, as ``_raw_<name>``: a cell whose stored text is not null but whose
value is null could not be converted. It is a reject, written as stored.
``csv_batch``, ``json_batch`` and ``rejects`` each read the typed batch;
``transform`` computes all a runner needs from one source batch.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from .frames import frame, series
from .records import Column, RecordType
from .sort import NINST, NSUB, UNPLACED, UTF8
from .timestamps import apply_steps, format_instant, instant_steps, ns_column, out_of_range

RAW = "_raw_"
REJECT_SCHEMA = pa.schema(
    [
        ("type", pa.string()),
        ("key", pa.string()),
        ("column", pa.string()),
        ("value", pa.string()),
        ("reason", pa.string()),
    ]
)
_REASONS = {
    "timestamp": "not a timestamp (Go time.Time.String(), RFC 3339 / ISO 8601 or SQLite date-time, at most 9"
    " fractional digits)",
    "int": "not an integer",
    "bool": "not a boolean (0/1)",
    "json": "malformed JSON",
}
OUT_OF_RANGE = "a timestamp outside the years 0001-9999 in UTC (RFC 3339 with Z cannot write it)"
_IMAGES = pa.list_(pa.struct([("fullsize", pa.string())]))
_MEDIA_TYPE = pa.struct(
    [
        ("images", _IMAGES),
        ("media", pa.struct([("images", _IMAGES)])),
        ("external", pa.struct([("thumb", pa.string())])),
    ]
)
_ROW_IN_ERROR = re.compile(r"in row (\d+)")
# Parquet timestamps are nanoseconds in an int64: the whole years they hold (as timestamps.py's fast path)
PARQUET_MIN_US = -9_214_560_000_000_000  # 1678-01-01T00:00:00Z
PARQUET_MAX_US = 9_214_646_399_999_999  # 2261-12-31T23:59:59.999999Z (any nanoseconds past it)
BEYOND_PARQUET = (
    "an instant outside the years 1678-2261, which Parquet's nanosecond timestamps hold: null in the .parquet"
    " file (the other formats write it)"
)


@dataclass(frozen=True)
class Outputs:
    """What one source batch becomes: the batch per format asked for, and its rejects
    (with ``_row``, the row's index in the batch, and ``_col``, the column's index)."""

    csv: pa.RecordBatch | None
    json: pa.RecordBatch | None
    rejects: pa.RecordBatch
    parquet: pa.RecordBatch | None = None  # typed columns, named as in the archive


# --- the plan: expressions built once per record type ------------------------------


ALL_FORMATS = frozenset({"csv", "json", "ndjson"})
WHOLE_ROW = frozenset({"json", "ndjson", "parquet"})  # formats that write every column


@dataclass(frozen=True)
class _Plan:
    converted: tuple[Column, ...]  # the columns the formats need typed; others stay text
    typed_steps: tuple[tuple[dict[str, pl.Expr], ...], ...]
    csv: tuple[pl.Expr, ...]
    json: pl.Expr
    rejected: pl.Expr  # true if the batch has any reject
    parquet: tuple[pl.Expr, ...]  # the typed columns a Parquet file holds
    parquet_range: bool  # instants Parquet cannot hold are rejects (Parquet asked for)


_DERIVED_FROM = {"media_files": ("has_media", "embed_data")}


def reads(rtype: RecordType, formats: frozenset[str]) -> tuple[frozenset[str] | None, tuple[tuple[str, str], ...]]:
    """What ``formats`` need read: (columns or None for all, (column, only where column is true)).

    A CSV-only export reads neither ``labels`` nor ``archived_at``, and ``embed_data``
    only where ``has_media`` (it is there for MediaFiles alone).
    """
    if formats & WHOLE_ROW:
        return None, ()
    needed = frozenset(n for c in rtype.csv for n in _DERIVED_FROM.get(c.source, (c.source,)))
    return needed, tuple((_MEDIA_SOURCE, "has_media") for c in rtype.csv if c.source == "media_files")


@functools.cache
def _plan(rtype: RecordType, formats: frozenset[str] = ALL_FORMATS, with_instant: bool = False) -> _Plan:
    """The expressions for ``rtype``, built once: only what ``formats`` write is converted
    (a CSV export neither parses ``labels`` nor reports rejects in it). ``with_instant``:
    the batch carries the source's ``_ninst`` and ``_nsub``, so the time column is not
    parsed again."""
    media = "csv" in formats
    if formats & WHOLE_ROW:
        needed = set(rtype.column_names)
    else:
        needed = {n for c in rtype.csv for n in _DERIVED_FROM.get(c.source, (c.source,))}
    converted = tuple(c for c in rtype.columns if c.kind != "text" and c.name in needed)
    # Step 0 keeps the stored text of every converted column; conversions follow.
    steps: list[list[dict[str, pl.Expr]]] = [[{RAW + c.name: pl.col(c.name) for c in converted}]]
    for c in converted:
        if c.kind == "timestamp" and with_instant and c.name == rtype.time:
            placed = pl.col(NINST) != UNPLACED
            steps.append([{}, {c.name: pl.when(placed).then(-pl.col(NINST)), ns_column(c.name): -pl.col(NSUB)}])
        elif c.kind == "timestamp":
            steps.append([{}, *instant_steps(RAW + c.name, c.name)])
        elif c.kind == "json" and media and c.name == _MEDIA_SOURCE:
            # One parse checks the JSON and extracts the media hashes.
            parse = functools.partial(_json_and_media, validate_all=bool(formats & WHOLE_ROW))
            source = pl.struct(pl.col(RAW + c.name).alias("json"), pl.col(RAW + "has_media").alias("has_media"))
            parsed = source.map_batches(parse, return_dtype=_JSON_AND_MEDIA)
            steps.append([{}, {_MEDIA: parsed}, {c.name: pl.col(_MEDIA).struct.field("json")}])
        else:
            steps.append([{}, {c.name: _convert(c, pl.col(RAW + c.name))}])
    by_name = {c.name: c for c in rtype.columns}
    csv = tuple(
        (_media_files() if c.source == "media_files" else _csv_value(by_name[c.source], c.null_as)).alias(c.header)
        for c in rtype.csv
    )
    fragments = [_json_fragment(c) for c in rtype.columns]
    obj = pl.concat_str([pl.lit("{"), pl.concat_str(fragments, separator=",", ignore_nulls=True), pl.lit("}")])
    obj = escape_line_separators(obj)
    parquet_range = "parquet" in formats
    masks = [_rejected(c, parquet_range) for c in converted]
    return _Plan(
        converted=converted,
        typed_steps=tuple(tuple(s) for s in steps),
        csv=csv,
        json=obj.alias("json"),
        rejected=pl.any_horizontal(masks).any() if masks else pl.lit(False),
        parquet=tuple(_parquet_value(c).alias(c.name) for c in rtype.columns),
        parquet_range=parquet_range,
    )


def escape_line_separators(text: pl.Expr) -> pl.Expr:
    """JSON text with U+2028/U+2029 written as ``\\u2028``/``\\u2029``: valid in JSON strings (and only
    there), they end lines for readers that split on Unicode line breaks; the decoded value is the same."""
    return text.str.replace_all("\u2028", "\\u2028", literal=True).str.replace_all("\u2029", "\\u2029", literal=True)


def _rejected(col: Column, parquet_range: bool = False) -> pl.Expr:
    """Whether a cell of ``col`` is a reject: stored but not converted (with ``parquet_range``,
    also an instant that Parquet's nanosecond timestamps cannot hold)."""
    failed = pl.col(RAW + col.name).is_not_null() & pl.col(col.name).is_null()
    if parquet_range and col.kind == "timestamp":
        return failed | _beyond_parquet(col)
    return failed


def _beyond_parquet(col: Column) -> pl.Expr:
    """An instant of timestamp column ``col`` outside the years Parquet's nanoseconds hold."""
    return pl.col(col.name).is_not_null() & ~pl.col(col.name).is_between(PARQUET_MIN_US, PARQUET_MAX_US)


def _convert(col: Column, raw: pl.Expr) -> pl.Expr:
    if col.kind == "int":
        return raw.str.strip_chars().cast(pl.Int64, strict=False)
    if col.kind == "bool":
        return raw.str.strip_chars().cast(pl.Int64, strict=False) != 0
    if col.kind == "json":
        return raw.map_batches(valid_json, return_dtype=pl.String)
    raise ValueError(f"no conversion for column kind {col.kind!r}")


# --- typed ------------------------------------------------------------------------


def to_batch(df: pl.DataFrame) -> pa.RecordBatch:
    """A Polars frame as one Arrow record batch (also when it has no rows)."""
    table = df.to_arrow()
    if table.num_rows == 0:
        return pa.RecordBatch.from_arrays([pa.array([], t) for t in table.schema.types], schema=table.schema)
    return table.combine_chunks().to_batches(max_chunksize=None)[0]


def _typed_frame(plan: _Plan, rtype: RecordType, batch: pa.RecordBatch | pa.Table) -> pl.DataFrame:
    lazy = frame(batch).lazy().with_columns(pl.col(c).cast(pl.String) for c in rtype.column_names)
    return apply_steps(lazy, [list(s) for s in plan.typed_steps]).collect()


def _has_instant(batch: pa.RecordBatch | pa.Table) -> bool:
    return NINST in batch.schema.names


def typed(rtype: RecordType, batch: pa.RecordBatch) -> pa.RecordBatch:
    """Convert each column of a source batch to its kind; keep stored text of converted ones."""
    return to_batch(_typed_frame(_plan(rtype), rtype, batch))


def transform(rtype: RecordType, batch: pa.RecordBatch | pa.Table, formats: set[str] | frozenset[str]) -> Outputs:
    """Everything the runner writes for one source batch, converting each column once.

    A batch may carry the source's ``_ninst`` column (its time column's instant,
    already parsed); it is used instead of parsing again, and not written.
    """
    plan = _plan(rtype, frozenset(formats), _has_instant(batch))
    df = _typed_frame(plan, rtype, batch)
    csv = to_batch(df.select(plan.csv)) if "csv" in formats else None
    js = to_batch(df.select(plan.json)) if formats & {"json", "ndjson"} else None
    pq = to_batch(df.select(plan.parquet)) if "parquet" in formats else None
    bad = _rejects(plan, rtype, df) if df.select(plan.rejected).item() else _rejects(plan, rtype, df.clear())
    if UTF8 in batch.schema.names and batch.column(UTF8).null_count < batch.num_rows:
        bad = _with_utf8_rejects(rtype, batch, bad)
    return Outputs(csv, js, bad, pq)


NOT_UTF8 = "not UTF-8 text: written with U+FFFD for the bytes that are not; the value here is the stored bytes in hex"


def _with_utf8_rejects(rtype: RecordType, batch: pa.RecordBatch | pa.Table, bad: pa.RecordBatch) -> pa.RecordBatch:
    """``bad`` with a reject for every cell the source found not UTF-8 (``_bad_utf8``), first in
    its row (``_col`` -1), so the order does not depend on batching."""
    notes, keys = batch.column(UTF8).to_pylist(), batch.column(rtype.key).to_pylist()
    rows = [
        {"_row": i, "_col": -1, "type": rtype.name, "key": None if keys[i] is None else str(keys[i]),
         "column": column, "value": hexed, "reason": NOT_UTF8}
        for i, note in enumerate(notes) if note is not None for column, hexed in json.loads(note)
    ]  # fmt: skip
    table = pa.Table.from_batches([bad, pa.RecordBatch.from_pylist(rows, bad.schema)])
    ordered = table.take(pc.sort_indices(table, sort_keys=[("_row", "ascending"), ("_col", "ascending")]))
    return ordered.combine_chunks().to_batches(max_chunksize=None)[0]


# --- JSON validation ----------------------------------------------------------------


def valid_json(s: pl.Series) -> pl.Series:
    """Each stored JSON text on one line, or null where it is not one valid JSON document.

    Each value is parsed on its own, as a whole document (Polars' JSON path
    matcher, serde_json): RFC 8259 JSON whose numbers fit a double, whose
    escapes are valid Unicode and which nests at most 127 levels deep. The text
    itself is kept as stored, so nested values come out exactly as the archive
    has them (no invented, reordered or dropped keys); only after it is known
    valid are its line breaks, which can then only be whitespace between
    tokens, turned into spaces, and JSON whitespace around it trimmed.

    The matcher parses the whole document whatever the path. Bluesky values
    are objects with a ``$type`` string, and matching ``$type`` copies out far
    less than ``$`` (the whole value), 40% faster; only values it does not
    find go on to ``$``.
    """
    ok = s.str.json_path_match("$['$type']").is_not_null()
    rest = (~ok & s.is_not_null()).arg_true()
    if len(rest):
        others = s.gather(rest)
        valid = others.str.json_path_match("$").is_not_null() | others.str.contains(r"^[ \t\r\n]*null[ \t\r\n]*$")
        ok = ok.scatter(rest, valid)
    line = s.set(~ok, None)
    broken = line.str.contains(r"[\r\n]").fill_null(False)
    if broken.any():
        idx = broken.arg_true()
        line = line.scatter(idx, line.gather(idx).str.replace_all(r"[\r\n]", " "))
    return line.str.strip_chars(" \t")


_BLOCK_LINES = 4096  # validated input: a restart (a value of another shape) is rare


def _parse_json(values: pl.Series, value_type: pa.DataType) -> tuple[pl.Series, pa.Table | None]:
    """Parse valid one-line JSON values into ``value_type`` with pyarrow's JSON reader.

    Values go through as ``{"v": <text>}`` lines, a block of lines per call
    (``valid_json`` first, so no text can close the wrapper early). A value
    whose shape does not fit the type fails its block with an error naming its
    row: that row is marked not ok and parsing resumes after it. Returns (ok
    mask, column ``v`` of the ok rows in order, or None if there are none).
    """
    wrapped = values.to_frame("v").select(pl.lit('{"v":') + pl.col("v") + pl.lit("}\n")).to_series()
    arr = wrapped.to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = arr.cast(pa.large_string())
    data = arr.buffers()[2]
    offsets = memoryview(arr.buffers()[1]).cast("q")[arr.offset : arr.offset + len(arr) + 1]
    options = pa_json.ParseOptions(explicit_schema=pa.schema([("v", value_type)]), unexpected_field_behavior="ignore")

    def read(first: int, last: int) -> pa.Table:
        chunk = data.slice(offsets[first], offsets[last] - offsets[first])
        opts = pa_json.ReadOptions(use_threads=False, block_size=chunk.size + 1)
        return pa_json.read_json(pa.BufferReader(chunk), read_options=opts, parse_options=options)

    ok = [True] * len(arr)
    tables: list[pa.Table] = []
    for first in range(0, len(arr), _BLOCK_LINES):
        last = min(first + _BLOCK_LINES, len(arr))
        row = first
        while row < last:
            try:
                table = read(row, last)
            except pa.ArrowInvalid as e:
                m = _ROW_IN_ERROR.search(str(e))
                if not m:  # cannot tell which row: leave these to the slow path
                    ok[row:last] = [False] * (last - row)
                    break
                bad = row + int(m.group(1))
                ok[bad] = False
                if bad > row:
                    tables.append(read(row, bad))
                row = bad + 1
                continue
            if table.num_rows != last - row:
                raise AssertionError("a validated JSON value parsed as more than one row")
            tables.append(table)
            break
    parsed = pa.concat_tables(tables) if tables else None
    return pl.Series(ok, dtype=pl.Boolean), parsed


# --- rejects -----------------------------------------------------------------------


REJECT_ORDER = ("_row", "_col")


def _rejects(plan: _Plan, rtype: RecordType, df: pl.DataFrame) -> pa.RecordBatch:
    """Rejects in row order, then column order, so the file does not depend on batching."""
    df = df.with_row_index("_row")
    parts = []
    for i, col in enumerate(plan.converted):
        bad = df.filter(_rejected(col, plan.parquet_range))
        if bad.height:
            parts.append(
                bad.select(
                    pl.col("_row").cast(pl.Int64),
                    _col=pl.lit(i, pl.Int64),
                    type=pl.lit(rtype.name),
                    key=pl.col(rtype.key),
                    column=pl.lit(col.name),
                    value=pl.col(RAW + col.name),
                    reason=_reason(col, plan.parquet_range),
                )
            )
    schema = pa.schema([("_row", pa.int64()), ("_col", pa.int64()), *REJECT_SCHEMA])
    if not parts:
        return pa.RecordBatch.from_pylist([], schema)
    return to_batch(pl.concat(parts).sort("_row", "_col")).cast(schema)


def _reason(col: Column, parquet_range: bool = False) -> pl.Expr:
    """Why a cell of ``col`` is a reject (for a timestamp: not one, or out of range)."""
    if col.kind != "timestamp":
        return pl.lit(_REASONS[col.kind])
    far = pl.col(RAW + col.name).map_batches(out_of_range, return_dtype=pl.Boolean)
    reason = pl.when(far).then(pl.lit(OUT_OF_RANGE)).otherwise(pl.lit(_REASONS[col.kind]))
    if parquet_range:
        return pl.when(_beyond_parquet(col)).then(pl.lit(BEYOND_PARQUET)).otherwise(reason)
    return reason


def rejects(rtype: RecordType, typed_batch: pa.RecordBatch) -> pa.RecordBatch:
    """One row per cell that could not be converted: its row key, column, stored value, reason."""
    return _rejects(_plan(rtype), rtype, frame(typed_batch)).drop_columns(list(REJECT_ORDER))


# --- CSV ------------------------------------------------------------------------------


def _csv_value(col: Column, null_as: int | str | None) -> pl.Expr:
    """One CSV column. Integers and booleans stay typed so pyarrow writes them bare
    (it quotes every string); a cell of theirs that is a reject is left empty here
    and its stored text goes to rejects. Timestamps and JSON are text, so a reject
    there is written as stored."""
    v = pl.col(col.name)
    if col.kind == "text":
        out = v
    elif col.kind == "timestamp":
        out = pl.when(v.is_null()).then(pl.col(RAW + col.name)).otherwise(format_instant(v, fraction=False))
    elif col.kind in ("int", "bool"):
        out = v
    else:  # json: as stored
        out = pl.col(RAW + col.name)
    if null_as is not None:
        stored = v if col.kind == "text" else pl.col(RAW + col.name)
        out = pl.when(stored.is_null()).then(pl.lit(null_as)).otherwise(out)
    return out


@functools.cache
def csv_schema(rtype: RecordType) -> pa.Schema:
    """The Arrow schema of ``csv_batch`` output (what a CsvSink needs before the first batch)."""
    empty = pa.RecordBatch.from_pylist([], pa.schema([(c, pa.string()) for c in rtype.column_names]))
    return csv_batch(rtype, typed(rtype, empty)).schema


def csv_batch(rtype: RecordType, typed_batch: pa.RecordBatch) -> pa.RecordBatch:
    """The CSV columns of ``rtype`` (headers as names): text, integers and booleans."""
    return to_batch(frame(typed_batch).select(_plan(rtype).csv))


_MEDIA_SOURCE = "embed_data"
_MEDIA = "_media"  # struct {json, media} of embed_data, kept for the CSV select
_JSON_AND_MEDIA = pl.Struct({"json": pl.String, "media": pl.String})


def _media_files() -> pl.Expr:
    """MediaFiles: media hashes from ``embed_data`` when ``has_media``, ``;``-separated (each
    URL's last path segment up to its first ``@``, as bskyarchive's export cuts it)."""
    return pl.when(pl.col("has_media")).then(pl.col(_MEDIA).struct.field("media")).otherwise(pl.lit(""))


def _json_and_media(source: pl.Series, validate_all: bool) -> pl.Series:
    """Checked JSON text and media hashes of each embed (struct of stored text and has_media).

    Only rows with ``has_media`` need hashes. Without a JSON format, nothing else
    reads ``embed_data``, so only those rows are checked (the others pass as
    stored, unchecked); with one, every row is. Validating before the typed
    parse keeps that parse free of errors (restarting it would mean parsing the
    rows before the error again).
    """
    raw = source.struct.field("json")
    has_media = (source.struct.field("has_media").str.strip_chars().cast(pl.Int64, strict=False) != 0).fill_null(False)
    wanted = has_media & raw.is_not_null()
    if validate_all:
        line = valid_json(raw)
    else:
        line = raw.scatter(wanted.arg_true(), valid_json(raw.filter(wanted))) if wanted.any() else raw
    media = pl.Series("media", [""] * len(raw), pl.String)
    idx = (wanted & line.is_not_null()).arg_true()
    if len(idx):
        ok, parsed = _parse_json(line.gather(idx), _MEDIA_TYPE)
        if parsed is not None and parsed.num_rows:
            media = media.scatter(idx.filter(ok), _hashes(parsed.column("v")))
        odd = idx.filter(~ok)  # valid JSON of a shape the type does not fit (rare)
        if len(odd):
            media = media.scatter(odd, [";".join(media_hashes(json.loads(t))) for t in line.gather(odd).to_list()])
    return pl.DataFrame({"json": line, "media": media}).to_struct("embed")


def _hashes(embeds: pa.ChunkedArray) -> pl.Series:
    """The spec's MediaFiles for parsed embeds: each URL's last path segment without ``@ext``.

    URLs are cut in Arrow on the flat arrays of values (no per-row lists built
    by expression), then joined per row in Polars: images, media images, thumb.
    """
    e = embeds.combine_chunks()
    images = _fullsize_hashes(pc.struct_field(e, "images"))
    media_images = _fullsize_hashes(pc.struct_field(pc.struct_field(e, "media"), "images"))
    thumb = _hash_of(pc.struct_field(pc.struct_field(e, "external"), "thumb"))
    df = frame(pa.table({"a": images, "b": media_images, "c": thumb}))

    def joined(name: str) -> pl.Expr:
        urls = pl.col(name).list.drop_nulls()
        return pl.when(urls.list.len() > 0).then(urls.list.join(";"))

    out = pl.concat_str([joined("a"), joined("b"), pl.col("c")], separator=";", ignore_nulls=True)
    return df.select(out.fill_null("")).to_series()


def _fullsize_hashes(lists: pa.Array) -> pa.Array:
    """``list<struct<fullsize>>`` → ``list<string>`` of hashes, same rows and nulls."""
    values = _hash_of(pc.struct_field(lists.values, "fullsize"))
    return pa.ListArray.from_arrays(lists.offsets, values, mask=lists.is_null())


def _hash_of(urls: pa.Array) -> pa.Array:
    """A URL's media hash as bskyarchive cuts it: its last path segment up to the first ``@``;
    null (no hash) for a URL without ``/`` or an empty hash. (Two anchored Polars replaces:
    a third of the time of one regex with a capture group in Arrow.)"""
    url = series(urls)
    cut = url.str.replace(r"(?s)^.*/", "").str.replace(r"(?s)@.*$", "")
    keep = url.str.contains("/", literal=True) & (cut != "")
    return pl.select(pl.when(keep).then(cut)).to_series().to_arrow().cast(pa.string())


def media_hashes(embed: object) -> list[str]:
    """The spec's MediaFiles rule for one decoded embed (the slow path)."""

    def fullsizes(images: object) -> list[str]:
        if not isinstance(images, list):
            return []
        return [i["fullsize"] for i in images if isinstance(i, dict) and isinstance(i.get("fullsize"), str)]

    if not isinstance(embed, dict):
        return []
    urls = fullsizes(embed.get("images"))
    media = embed.get("media")
    if isinstance(media, dict):
        urls += fullsizes(media.get("images"))
    external = embed.get("external")
    if isinstance(external, dict) and isinstance(external.get("thumb"), str):
        urls.append(external["thumb"])
    hashes = (u.rsplit("/", 1)[1].split("@", 1)[0] if "/" in u else "" for u in urls)
    return [h for h in hashes if h]


# --- Parquet --------------------------------------------------------------------------


def _parquet_value(col: Column) -> pl.Expr:
    """One typed Parquet column: text as stored; instants as UTC nanoseconds; integers and
    booleans typed (a NULL count is 0, as in the other formats); JSON as its checked one-line
    text. A reject is null here (its stored text is in the rejects)."""
    v = pl.col(col.name)
    if col.kind == "timestamp":
        nanos = v * 1000 + pl.col(ns_column(col.name)).fill_null(0)
        return pl.when(v.is_between(PARQUET_MIN_US, PARQUET_MAX_US)).then(nanos).cast(pl.Datetime("ns", "UTC"))
    if col.kind == "int" and col.null_as is not None:
        return pl.when(pl.col(RAW + col.name).is_null()).then(pl.lit(col.null_as, pl.Int64)).otherwise(v)
    return v


# --- JSON -----------------------------------------------------------------------------


def _json_string(expr: pl.Expr, key: str) -> pl.Expr:
    """``"key":"escaped text"`` (or ``"key":null``) using Polars' JSON encoder."""
    return pl.struct(expr.alias(key)).struct.json_encode().str.strip_prefix("{").str.strip_suffix("}")


def _json_fragment(col: Column) -> pl.Expr:
    """``"key":value`` for one column, or null where the key is left out."""
    v = pl.col(col.name)
    raw = v if col.kind == "text" else pl.col(RAW + col.name)
    name = json.dumps(col.name, ensure_ascii=False)
    key = pl.lit(name + ":")
    if col.kind == "text":
        frag = _json_string(v, col.name)
    elif col.kind == "timestamp":
        # An instant needs no escaping: key and quotes go on as it is formatted (the
        # encoder's pass cost 40% of the fragment). Only the stored text of a reject (or
        # null) is encoded: the other rows are masked so the encoder skips them.
        quoted = format_instant(v, pl.col(ns_column(col.name)), fraction=True, prefix=name + ':"', suffix='"')
        frag = pl.when(v.is_not_null()).then(quoted).otherwise(_json_string(pl.when(v.is_null()).then(raw), col.name))
    else:
        if col.kind == "int":
            literal = v.cast(pl.String)
        elif col.kind == "bool":
            literal = pl.when(v).then(pl.lit("true")).otherwise(pl.lit("false"))
        else:  # json: nested as stored
            literal = v
        # null stays null; a reject is written as the stored text, a JSON string
        null = "null" if col.null_as is None else json.dumps(col.null_as)
        frag = (
            pl.when(v.is_not_null())
            .then(key + literal)
            .when(raw.is_null())
            .then(key + pl.lit(null))
            .otherwise(_json_string(raw, col.name))
        )
    if col.omit == "null":
        frag = pl.when(raw.is_null()).then(None).otherwise(frag)
    elif col.omit == "null_or_empty":
        frag = pl.when(raw.is_null() | (raw == "")).then(None).otherwise(frag)
    return frag


def json_batch(rtype: RecordType, typed_batch: pa.RecordBatch) -> pa.RecordBatch:
    """One column, ``json``: each row as a compact JSON object in the spec's key order."""
    return to_batch(frame(typed_batch).select(_plan(rtype).json))
