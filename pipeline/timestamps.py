"""Timestamp parsing and formatting as Polars expressions.

Archives spell instants in many ways (``Z``, ``+00:00``, other offsets, 0–9
fractional digits, SQLite's ``YYYY-MM-DD HH:MM:SS``). Each value is parsed once
into microseconds since the epoch (UTC). A value that does not denote an
instant, or that carries more precision than a microsecond (which the export's
0/3/6-digit form could not write without loss), parses to null; the caller
reports it as a reject.
"""

from __future__ import annotations

import polars as pl

# Everything ISO 8601-like we read: date, optional time (seconds and fraction
# optional), optional zone (Z, ±HH, ±HHMM, ±HH:MM). ASCII digits only, every
# field in range (no year 0000, no second 60: the export could not write them
# back as an instant), surrounding ASCII whitespace allowed. Values that do not
# match are not instants, whatever a lenient strptime would make of them.
_YEAR = r"(?:000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})"
_HOUR = r"(?:[01][0-9]|2[0-3])"
_SIXTY = r"[0-5][0-9]"
_PATTERN = (
    rf"^[ \t\n\r\f\v]*({_YEAR}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01]))"
    rf"(?:[Tt ]({_HOUR}:{_SIXTY})(?::({_SIXTY})(?:\.([0-9]{{1,9}}))?)?"
    rf"[ \t\n\r\f\v]*(?:[Zz]|([+-])({_HOUR})(?::?({_SIXTY}))?)?)?[ \t\n\r\f\v]*$"
)
_CANONICAL_FORMAT = "%Y-%m-%dT%H:%M:%S%.f%:z"
# More than six fractional digits, not all of them zero past the sixth.
_SUB_MICROSECOND = r"\.\d{6}\d*[1-9]"


def _strptime(text: pl.Expr, fmt: str, tz: str | None) -> pl.Expr:
    return text.str.to_datetime(fmt, time_unit="us", time_zone=tz, strict=False).dt.epoch("us")


def _canonical(groups: pl.Expr) -> pl.Expr:
    """The slow path's capture groups rewritten as ``YYYY-MM-DDTHH:MM:SS.ffffff±HH:MM``."""
    g = groups.struct
    return pl.concat_str(
        g.field("1"),
        pl.lit("T"),
        g.field("2").fill_null("00:00"),
        pl.lit(":"),
        g.field("3").fill_null("00"),
        pl.lit("."),
        g.field("4").fill_null("").str.slice(0, 6).str.pad_end(6, "0"),
        g.field("5").fill_null("+"),
        g.field("6").fill_null("00"),
        pl.lit(":"),
        g.field("7").fill_null("00"),
    )


def instant_steps(source: str, out: str) -> list[dict[str, pl.Expr]]:
    """Steps (for successive ``with_columns``) that parse column ``source`` into µs column ``out``.

    The common spellings go through one fast strptime each, in turn; each later
    parser only sees the values the earlier ones could not read: string kernels
    skip nulls, so masking the input keeps the slow paths cheap. Each step is
    its own column so nothing is computed twice. Helper columns start with
    ``_t_`` and are dropped by the caller (``drop_steps``).
    """
    raw = pl.col(source)
    valid, a, rest, b, rest2, groups = (f"_t_{out}_{x}" for x in ("valid", "a", "rest", "b", "rest2", "groups"))
    text = pl.col(valid)
    return [
        {valid: pl.when(raw.str.contains(_PATTERN)).then(raw)},
        {a: _strptime(text, "%Y-%m-%dT%H:%M:%S%.f%#z", "UTC")},
        {rest: pl.when(pl.col(a).is_null()).then(text)},
        {b: _strptime(pl.col(rest), "%Y-%m-%d %H:%M:%S%.f", None)},
        {rest2: pl.when(pl.col(b).is_null()).then(pl.col(rest))},
        {groups: pl.col(rest2).str.extract_groups(_PATTERN)},
        {
            out: pl.when(text.str.contains(_SUB_MICROSECOND))
            .then(None)
            .otherwise(pl.coalesce(a, b, _strptime(_canonical(pl.col(groups)), _CANONICAL_FORMAT, "UTC")))
        },
    ]


def apply_steps(frame: pl.LazyFrame, steps: list[list[dict[str, pl.Expr]]]) -> pl.LazyFrame:
    """Run several columns' steps side by side, one ``with_columns`` per step, then drop helpers."""
    for i in range(max((len(s) for s in steps), default=0)):
        exprs = [e.alias(name) for s in steps if i < len(s) for name, e in s[i].items()]
        if exprs:
            frame = frame.with_columns(exprs)
    return frame.select(pl.exclude("^_t_.*$"))


def parse_instants(values: pl.Series) -> pl.Series:
    """Parse a Series of timestamp text into µs since the epoch (null where not an instant)."""
    frame = values.cast(pl.String).to_frame("t").lazy()
    out = apply_steps(frame, [instant_steps("t", "us")]).select("us").collect()
    return out.to_series().alias(values.name)


def format_instant(micros: pl.Expr, *, fraction: bool, prefix: str = "", suffix: str = "") -> pl.Expr:
    """RFC 3339 UTC text with ``Z``; with ``fraction``, 0, 3 or 6 digits, the fewest exact.
    ``prefix``/``suffix`` are put around it in the same pass (e.g. a JSON key and quotes:
    the text needs no JSON escaping)."""
    dt = micros.cast(pl.Datetime("us"))
    if not fraction:
        return pl.concat_str(pl.lit(prefix), dt.dt.strftime("%Y-%m-%dT%H:%M:%SZ"), pl.lit(suffix))
    sub = micros.mod(1_000_000)
    digits = (
        pl.when(sub == 0)
        .then(pl.lit(""))
        .when(sub.mod(1000) == 0)
        .then(pl.lit(".") + (sub // 1000).cast(pl.String).str.zfill(3))
        .otherwise(pl.lit(".") + sub.cast(pl.String).str.zfill(6))
    )
    return pl.concat_str(pl.lit(prefix), dt.dt.strftime("%Y-%m-%dT%H:%M:%S"), digits, pl.lit("Z" + suffix))


def format_micros(micros: int) -> str:
    """One instant as export text with fraction (for messages, not hot paths)."""
    return pl.select(format_instant(pl.lit(micros, pl.Int64), fraction=True)).item()
