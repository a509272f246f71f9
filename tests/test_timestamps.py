"""Timestamp parsing and formatting against the stdlib oracle (property tests)."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta, timezone

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st
from oracle import instant, rfc3339

from pipeline.timestamps import format_instant
from pipeline.timestamps import parse_instants as parse_instant

instants = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC))
offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))


@st.composite
def spellings(draw) -> str:
    """An instant spelled the ways archives spell them (the oracle decides what it denotes)."""
    dt = draw(instants)
    style = draw(st.sampled_from(["Z", "offset", "offset-nocolon", "+00:00", "sqlite", "lower"]))
    if style.startswith("offset"):
        with contextlib.suppress(OverflowError):
            dt = dt.astimezone(draw(offsets))
    digits = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 9]))
    frac = f"{dt.microsecond:06d}" + draw(st.sampled_from(["000", "", "100"]))
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
@given(st.lists(instants, min_size=1, max_size=40))
def test_format_matches_oracle(dts):
    micros = [instant(d.strftime("%Y-%m-%dT%H:%M:%S.%f").rjust(26, "0") + "Z") for d in dts]
    df = pl.DataFrame({"u": micros}, schema={"u": pl.Int64})
    out = df.select(j=format_instant(pl.col("u"), fraction=True), c=format_instant(pl.col("u"), fraction=False))
    assert out["j"].to_list() == [rfc3339(m, fraction=True) for m in micros]
    assert out["c"].to_list() == [rfc3339(m, fraction=False) for m in micros]


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
    }
    for text, want in cases.items():
        micros = instant(text)
        assert micros is not None
        got = pl.select(format_instant(pl.lit(parse_instant(pl.Series([text]))[0]), fraction=True)).item()
        assert got == want == rfc3339(micros, fraction=True)
    bad_values = [
        "not a date", "2024-13-45T00:00:00Z", "2024-02-30T00:00:00Z", "2024-05-01T12:34:56.1234567Z", "",
        "2024-05-01T12:34:60Z", "2024-5-1", "0000-01-01T00:00:00Z", "2024-05-01T24:00:00Z",
        "2024-05-01T12:00:00+05:75", "\u0662\u0660\u0662\u0664-05-01", "\u00a02024-05-01",
    ]  # fmt: skip
    for bad in bad_values:
        assert parse_instant(pl.Series([bad])).to_list() == [None] == [instant(bad)]
