"""Timestamp parsing and formatting against the stdlib oracle (property tests)."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta, timezone

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st
from oracle import instant, rfc3339

from pipeline.timestamps import format_instant, format_nanos, parse_instants


def parse_instant(values: pl.Series) -> pl.Series:
    """ns since the epoch (µs and ns columns joined; Python ints: no overflow)."""
    us, ns = parse_instants(values)
    assert (us.is_null() == ns.is_null()).all()
    return pl.Series([None if u is None else u * 1000 + n for u, n in zip(us, ns, strict=True)], dtype=pl.Object)


instants = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC))
offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))


@st.composite
def spellings(draw) -> str:
    """An instant spelled the ways archives spell them (the oracle decides what it denotes)."""
    dt = draw(instants)
    style = draw(st.sampled_from(["Z", "offset", "offset-nocolon", "+00:00", "sqlite", "lower", "go", "go-now"]))
    if style.startswith("offset"):
        with contextlib.suppress(OverflowError):
            dt = dt.astimezone(draw(offsets))
    if style.startswith("go"):
        with contextlib.suppress(OverflowError):
            dt = dt.astimezone(draw(offsets))
    digits = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]))
    frac = f"{dt.microsecond:06d}" + draw(st.sampled_from(["000", "", "100", "789", "001"]))
    text = f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}"
    if digits:
        text += "." + frac[:digits].ljust(digits, "0")
    if style == "Z":
        return text + "Z"
    if style == "lower":
        return text.replace("T", "t") + "z"
    if style == "+00:00":
        return text + "+00:00"
    if style == "sqlite":
        return text.replace("T", " ")
    off = dt.utcoffset() or timedelta(0)
    sign = "-" if off < timedelta(0) else "+"
    mins = abs(int(off.total_seconds())) // 60
    if style.startswith("go"):  # Go's time.Time.String(): fraction trimmed, zone name, monotonic clock
        text = text.replace("T", " ").rstrip("0").rstrip(".") if "." in text else text.replace("T", " ")
        zone = f"{sign}{mins // 60:02d}{mins % 60:02d}"
        name = draw(st.sampled_from(["UTC", "PST", "PDT", "CEST", zone, "+09", "-03"]))
        clock = f" m=+{draw(st.integers(0, 10**6))}.{draw(st.integers(0, 10**9 - 1)):09d}" if style == "go-now" else ""
        return f"{text} {zone} {name}{clock}"
    sep = ":" if style == "offset" else ""
    return f"{text}{sign}{mins // 60:02d}{sep}{mins % 60:02d}"


@settings(max_examples=300, deadline=None)
@given(st.lists(spellings(), min_size=1, max_size=40))
def test_parse_matches_oracle(values):
    got = parse_instant(pl.Series(values)).to_list()
    assert got == [instant(v) for v in values]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=30), max_size=20))
def test_garbage_never_crashes_and_agrees(values):
    got = parse_instant(pl.Series(values, dtype=pl.String)).to_list()
    assert got == [instant(v) for v in values]  # what the oracle rejects, we reject


@st.composite
def near_misses(draw) -> str:
    """A valid spelling with one character replaced, inserted or deleted."""
    text = draw(spellings())
    i = draw(st.integers(min_value=0, max_value=len(text)))
    ch = draw(st.sampled_from(list("0123456789:-+.TtZz \t\n٣\u00a0") + ["60", "24", "0000"]))
    op = draw(st.sampled_from(["replace", "insert", "delete"]))
    if op == "insert":
        return text[:i] + ch + text[i:]
    if op == "delete":
        return text[:i] + text[i + 1 :]
    return text[:i] + ch + text[i + len(ch) :]


@settings(max_examples=500, deadline=None)
@given(st.lists(near_misses(), min_size=1, max_size=40))
def test_near_misses_agree_with_oracle(values):
    got = parse_instant(pl.Series(values, dtype=pl.String)).to_list()
    assert got == [instant(v) for v in values]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(instants, st.sampled_from([0, 1, 500, 999])), min_size=1, max_size=40))
def test_format_matches_oracle(values):
    nanos = [instant(d.strftime("%Y-%m-%dT%H:%M:%S.%f").rjust(26, "0") + f"{ns:03d}Z") for d, ns in values]
    df = pl.DataFrame({"u": [n // 1000 for n in nanos], "n": [n % 1000 for n in nanos]})
    us, ns = pl.col("u"), pl.col("n")
    out = df.select(j=format_instant(us, ns, fraction=True), c=format_instant(us, ns, fraction=False))
    assert out["j"].to_list() == [rfc3339(n, fraction=True) for n in nanos] == [format_nanos(n) for n in nanos]
    assert out["c"].to_list() == [rfc3339(n, fraction=False) for n in nanos]


def test_known_spellings():
    cases = {
        "2024-05-01T12:34:56.789Z": "2024-05-01T12:34:56.789Z",
        "2024-05-01T14:34:56.789+02:00": "2024-05-01T12:34:56.789Z",
        "2024-05-01 12:34:56": "2024-05-01T12:34:56Z",
        "2024-05-01T12:34:56.5Z": "2024-05-01T12:34:56.500Z",
        "2024-05-01T12:34:56.000120Z": "2024-05-01T12:34:56.000120Z",
        "2024-05-01T12:34:56.123456000Z": "2024-05-01T12:34:56.123456Z",
        "2024-05-01T07:34:56-05:00": "2024-05-01T12:34:56Z",
        "1969-12-31T23:59:59.5Z": "1969-12-31T23:59:59.500Z",
        "2024-05-01T12:34:56.1234567Z": "2024-05-01T12:34:56.123456700Z",
        # Go's time.Time.String(), as bskyarchive stores it
        "2024-05-01 12:34:56.789 +0000 UTC": "2024-05-01T12:34:56.789Z",
        "2024-05-01 21:34:56 +0900 +0900": "2024-05-01T12:34:56Z",
        "2024-05-01 12:34:56 +0000 +0000": "2024-05-01T12:34:56Z",
        "2025-11-11 20:03:08.093296684 -0800 PST m=+514.016063271": "2025-11-12T04:03:08.093296684Z",
        "2025-07-11 20:03:08.0932 -0700 PDT m=+0.000000001": "2025-07-12T03:03:08.093200Z",
        "0001-01-01 00:00:00 +0000 UTC": "0001-01-01T00:00:00Z",
        "0000-12-31 23:00:00 -0100 -01": "0001-01-01T00:00:00Z",
        "0500-06-01 01:02:03.123456789 -0300 -03": "0500-06-01T04:02:03.123456789Z",
        "9999-12-31 23:59:59.999999999 +0000 UTC": "9999-12-31T23:59:59.999999999Z",
    }
    for text, want in cases.items():
        nanos = instant(text)
        assert nanos is not None, text
        us, ns = parse_instants(pl.Series([text]))
        got = pl.select(format_instant(pl.lit(us[0]), pl.lit(ns[0]), fraction=True)).item()
        assert got == want == rfc3339(nanos, fraction=True), text
    bad_values = [
        "not a date", "2024-13-45T00:00:00Z", "2024-02-30T00:00:00Z", "2024-05-01T12:34:56.1234567891Z", "",
        "2024-05-01T12:34:60Z", "2024-5-1", "0000-01-01T00:00:00Z", "2024-05-01T24:00:00Z",
        "2024-05-01T12:00:00+05:75", "\u0662\u0660\u0662\u0664-05-01", "\u00a02024-05-01",
        # outside the years 0001-9999 once in UTC
        "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-12:00", "9999-12-31 23:00:00 -0100 -01",
        # Go's form needs its numeric offset; a zone name alone, or a clock reading alone, is not it
        "2024-05-01 12:34:56 UTC", "2024-05-01 12:34:56 +0000 m=+1.5", "2024-05-01 12:34:56 +0000 UTC m=",
        "2024-02-30 10:00:00 +0000 UTC", "2024-05-01 12:34:60 +0000 UTC",
    ]  # fmt: skip
    for bad in bad_values:
        assert parse_instant(pl.Series([bad])).to_list() == [None] == [instant(bad)]
