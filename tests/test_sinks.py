"""Sinks: bytes on disk, hashes and counts as they write, and byte identity across batch splits."""

from __future__ import annotations

import csv
import hashlib
import io
import json

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.sinks import CsvSink, JsonArraySink, NdjsonSink

texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)


def _json_batch(objs: list[dict]) -> pa.RecordBatch:
    lines = [json.dumps(o, ensure_ascii=False) for o in objs]
    return pa.RecordBatch.from_pydict({"json": pa.array(lines, pa.large_string())})


def _write(sink, batches):
    for b in batches:
        sink.write(b)
    return sink.close()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.dictionaries(texts, texts, max_size=3), max_size=30), st.lists(st.integers(1, 7), max_size=10))
def test_json_sinks_bytes_do_not_depend_on_batching(tmp_path_factory, objs, cuts):
    folder = tmp_path_factory.mktemp("s")
    whole = _json_batch(objs)
    pieces, start = [], 0
    for c in cuts:
        pieces.append(whole.slice(start, c))
        start += c
    pieces.append(whole.slice(start))
    for cls, name in ((JsonArraySink, "a.json"), (NdjsonSink, "a.ndjson")):
        r1 = _write(cls(folder, "one-" + name), [whole])
        r2 = _write(cls(folder, "many-" + name), pieces)
        one = (folder / ("one-" + name)).read_bytes()
        assert one == (folder / ("many-" + name)).read_bytes()
        assert r1.sha256 == r2.sha256 == hashlib.sha256(one).hexdigest()
        assert r1.size_bytes == len(one) and r1.records == len(objs)
        if cls is JsonArraySink:
            assert json.loads(one) == objs
            assert one == (
                b"[]\n"
                if not objs
                else ("[\n" + ",\n".join(json.dumps(o, ensure_ascii=False) for o in objs) + "\n]\n").encode()
            )
        else:
            assert [json.loads(x) for x in one.decode().split("\n")[:-1]] == objs


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), texts),
            st.one_of(st.none(), st.integers(-(2**62), 2**62)),
            st.one_of(st.none(), st.booleans()),
        ),
        max_size=20,
    )
)
def test_csv_sink_round_trips_through_csv_reader(tmp_path_factory, rows):
    folder = tmp_path_factory.mktemp("c")
    schema = pa.schema([("Text", pa.large_string()), ("Count", pa.int64()), ("Flag", pa.bool_())])
    batch = pa.RecordBatch.from_pylist([{"Text": t, "Count": n, "Flag": f} for t, n, f in rows], schema=schema)
    result = _write(CsvSink(folder, "x.csv", schema), [batch])
    data = (folder / "x.csv").read_bytes()
    assert data.startswith(b"\xef\xbb\xbf")
    assert result.sha256 == hashlib.sha256(data).hexdigest() and result.size_bytes == len(data)
    got = list(csv.reader(io.StringIO(data[3:].decode(), newline="")))
    assert got[0] == ["Text", "Count", "Flag"]
    want = [
        ["" if t is None else t, "" if n is None else str(n), "" if f is None else ("true" if f else "false")]
        for t, n, f in rows
    ]
    assert got[1:] == want
    if not any(t and ("\n" in t or "\r" in t) for t, _, _ in rows):  # one line per row
        for line, (_, n, _) in zip(data[3:].decode().split("\n")[1:], rows, strict=False):
            if n is not None:
                assert f",{n}," in line  # integers are written bare


def test_abort_removes_the_file(tmp_path):
    sink = NdjsonSink(tmp_path, "x.ndjson")
    sink.write(_json_batch([{"a": 1}]))
    sink.abort()
    assert not (tmp_path / "x.ndjson").exists()
