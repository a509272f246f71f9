"""Timestamp parsing and formatting as Polars expressions.

Archives spell instants in many ways: Go's ``time.Time.String()`` form that
bskyarchive stores (``2025-11-11 20:03:08.093296684 -0800 PST m=+514.016063271``),
RFC 3339 / ISO 8601 (``Z``, ``+00:00``, other offsets) and SQLite's
``YYYY-MM-DD HH:MM:SS``, with 0–9 fractional digits. Each value is parsed once
into an instant held as two integers: microseconds since the epoch (UTC) and
the nanoseconds past that microsecond (0–999). Microseconds cover every year
from 0001 to 9999 exactly, the nanoseconds keep what Go stores. A value that
does not denote an instant, or whose instant in UTC falls outside the years
0001–9999 (which RFC 3339 text with a ``Z`` cannot write), parses to null; the
caller reports it as a reject.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import polars as pl

# Everything we read: date, optional time (seconds and fraction optional), optional
# zone (Z, ±HH, ±HHMM, ±HH:MM); after a numeric offset, Go's zone abbreviation (UTC,
# PST, +0900, ...) and monotonic clock reading (m=+514.016063271), both ignored.
# ASCII digits only, every field in range (no second 60: the export could not write
# it back as an instant), surrounding ASCII whitespace allowed. Values that do not
# match are not instants, whatever a lenient strptime would make of them.
_YEAR = r"[0-9]{4}"
_HOUR = r"(?:[01][0-9]|2[0-3])"
_SIXTY = r"[0-5][0-9]"
_GO_ZONE = r"(?: [A-Za-z][A-Za-z0-9_+-]{0,15}| [+-][0-9]{2,4})(?: m=[+-][0-9]{1,20}(?:\.[0-9]{1,9})?)?"
PATTERN = (
    rf"^[ \t\n\r\f\v]*({_YEAR}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01]))"
    rf"(?:[Tt ]({_HOUR}:{_SIXTY})(?::({_SIXTY})(?:\.([0-9]{{1,9}}))?)?"
    rf"[ \t\n\r\f\v]*(?:[Zz]|([+-])({_HOUR})(?::?({_SIXTY}))?(?:{_GO_ZONE})?)?)?[ \t\n\r\f\v]*$"
)
# Go's form without the zone abbreviation and clock reading, for the fast path.
_GO_HEAD = r"^([0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})? [+-][0-9]{4})(?: |$)"
_CANONICAL_FORMAT = "%Y-%m-%dT%H:%M:%S%.f%:z"
# Nanosecond strptime is exact only inside Int64 nanoseconds (1677-09-21 to 2262-04-11)
# and wraps around outside it: only these years take the fast paths.
_NS_YEARS = (1678, 2261)
MIN_US = -62_135_596_800_000_000  # 0001-01-01T00:00:00Z
MAX_US = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z
_EPOCH = datetime(1970, 1, 1)
NS_PREFIX = "_ns_"  # column beside a parsed instant: its nanoseconds past the microsecond


def ns_column(name: str) -> str:
    """The name of the nanoseconds column that goes with the µs column ``name``."""
    return NS_PREFIX + name


def _strptime_ns(text: pl.Expr, fmt: str, tz: str | None) -> pl.Expr:
    return text.str.to_datetime(fmt, time_unit="ns", time_zone=tz, strict=False).dt.epoch("ns")


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


def instant_steps(source: str, out: str, *, checked: bool = True) -> list[dict[str, pl.Expr]]:
    """Steps (for successive ``with_columns``) that parse column ``source`` into µs column
    ``out`` and its nanoseconds column ``ns_column(out)``.

    The common spellings (RFC 3339, Go's, SQLite's) go through one nanosecond
    strptime each, in turn, for the years where that is exact; each later parser
    only sees the values the earlier ones could not read (string kernels skip
    nulls, so masking the input keeps the later paths cheap). The rest (other
    years, odd spellings) is rewritten from the pattern's groups and parsed in
    microseconds, its nanoseconds taken from the digits. Helper columns start
    with ``_t_`` and are dropped by the caller (``drop_steps``). ``checked``:
    instants outside the years 0001–9999 in UTC are null.
    """
    raw = pl.col(source)
    valid, fast, a, rest, b, rest2, c, rest3, groups = (
        f"_t_{out}_{x}" for x in ("valid", "fast", "a", "rest", "b", "rest2", "c", "rest3", "groups")
    )
    text = pl.col(valid)
    year = text.str.slice(0, 4).cast(pl.Int32, strict=False)
    slow = f"_t_{out}_slow"
    g = pl.col(groups).struct
    ns_total = pl.coalesce(a, b, c)
    us = pl.coalesce(ns_total // 1000, pl.col(slow))
    ns = pl.coalesce(ns_total.mod(1000), g.field("4").str.slice(6, 3).str.pad_end(3, "0").cast(pl.Int64))
    in_range = us.is_between(MIN_US, MAX_US) if checked else pl.lit(True)
    return [
        {valid: pl.when(raw.str.contains(PATTERN)).then(raw)},
        {fast: pl.when(year.is_between(*_NS_YEARS)).then(text)},
        {a: _strptime_ns(pl.col(fast), "%Y-%m-%dT%H:%M:%S%.f%#z", "UTC")},
        {rest: pl.when(pl.col(a).is_null()).then(pl.col(fast))},
        {b: _strptime_ns(pl.col(rest).str.extract(_GO_HEAD, 1), "%Y-%m-%d %H:%M:%S%.f %z", "UTC")},
        {rest2: pl.when(pl.col(b).is_null()).then(pl.col(rest))},
        {c: _strptime_ns(pl.col(rest2), "%Y-%m-%d %H:%M:%S%.f", None)},
        {rest3: pl.when(ns_total.is_null()).then(text)},
        {groups: pl.col(rest3).str.extract_groups(PATTERN)},
        {
            slow: _canonical(pl.col(groups))
            .str.to_datetime(_CANONICAL_FORMAT, time_unit="us", time_zone="UTC", strict=False)
            .dt.epoch("us")
        },
        {out: pl.when(in_range).then(us), ns_column(out): pl.when(in_range & us.is_not_null()).then(ns.fill_null(0))},
    ]


def apply_steps(frame: pl.LazyFrame, steps: list[list[dict[str, pl.Expr]]]) -> pl.LazyFrame:
    """Run several columns' steps side by side, one ``with_columns`` per step, then drop helpers."""
    for i in range(max((len(s) for s in steps), default=0)):
        exprs = [e.alias(name) for s in steps if i < len(s) for name, e in s[i].items()]
        if exprs:
            frame = frame.with_columns(exprs)
    return frame.select(pl.exclude("^_t_.*$"))


def parse_instants(values: pl.Series, *, checked: bool = True) -> tuple[pl.Series, pl.Series]:
    """Parse a Series of timestamp text into (µs since the epoch, ns past that µs), both
    null where the text is not an instant (or, ``checked``, not one in years 0001–9999 UTC)."""
    frame = values.cast(pl.String).to_frame("t").lazy()
    out = apply_steps(frame, [instant_steps("t", "us", checked=checked)]).collect()
    return out.get_column("us").alias(values.name), out.get_column(ns_column("us")).alias(values.name)


def out_of_range(values: pl.Series) -> pl.Series:
    """True where the text spells an instant that lies outside the years 0001–9999 in UTC."""
    us, _ = parse_instants(values, checked=False)
    return (us.is_not_null() & ~us.is_between(MIN_US, MAX_US)).fill_null(False)


def format_instant(
    micros: pl.Expr, nanos: pl.Expr | None = None, *, fraction: bool, prefix: str = "", suffix: str = ""
) -> pl.Expr:
    """RFC 3339 UTC text with ``Z``; with ``fraction``, 0, 3, 6 or 9 digits, the fewest exact
    (``nanos``: the nanoseconds past each microsecond, or None for none). ``prefix``/``suffix``
    are put around it in the same pass (e.g. a JSON key and quotes: the text needs no JSON
    escaping)."""
    dt = micros.cast(pl.Datetime("us"))
    if not fraction:
        return pl.concat_str(pl.lit(prefix), dt.dt.strftime("%Y-%m-%dT%H:%M:%SZ"), pl.lit(suffix))
    sub = micros.mod(1_000_000) * 1000
    if nanos is not None:
        sub = sub + nanos.fill_null(0)
    digits = (
        pl.when(sub == 0)
        .then(pl.lit(""))
        .when(sub.mod(1_000_000) == 0)
        .then(pl.lit(".") + (sub // 1_000_000).cast(pl.String).str.zfill(3))
        .when(sub.mod(1000) == 0)
        .then(pl.lit(".") + (sub // 1000).cast(pl.String).str.zfill(6))
        .otherwise(pl.lit(".") + sub.cast(pl.String).str.zfill(9))
    )
    return pl.concat_str(pl.lit(prefix), dt.dt.strftime("%Y-%m-%dT%H:%M:%S"), digits, pl.lit("Z" + suffix))


def format_micros(micros: int) -> str:
    """One instant as export text with fraction (for messages, not hot paths)."""
    return format_nanos(micros * 1000)


def format_nanos(nanos: int) -> str:
    """An instant in ns since the epoch as RFC 3339 UTC text, 0/3/6/9 digits, the fewest exact."""
    us, ns = divmod(nanos, 1000)
    dt = _EPOCH + timedelta(microseconds=us)
    base = dt.strftime("%Y-%m-%dT%H:%M:%S").rjust(19, "0")
    sub = dt.microsecond * 1000 + ns
    if sub == 0:
        return base + "Z"
    for digits, unit in ((3, 1_000_000), (6, 1000), (9, 1)):
        if sub % unit == 0:
            return f"{base}.{sub // unit:0{digits}d}Z"
    raise AssertionError("unreachable")


def to_nanos(dt: datetime) -> int:
    """A datetime (naive: UTC) as ns since the epoch; any year, no overflow."""
    offset = dt.utcoffset() or timedelta(0)
    delta = dt.replace(tzinfo=None) - _EPOCH - offset
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def day_nanos(day: date, *, end: bool) -> int:
    """The first (or, ``end``, the last) nanosecond of a UTC day."""
    start = to_nanos(datetime(day.year, day.month, day.day, tzinfo=UTC))
    return start + 86_400 * 1_000_000_000 - 1 if end else start


def in_range_nanos(nanos: int) -> bool:
    """Whether an instant lies in the years 0001–9999 (UTC), the range the export writes."""
    return MIN_US * 1000 <= nanos <= MAX_US * 1000 + 999
